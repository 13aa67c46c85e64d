//! Durability of the real server process: a clean restart keeps everything, kill -9 under
//! write load loses no acknowledged write, and a damaged data dir is refused with a clear
//! message. Bounded: a few seconds of load per cycle, a fixed number of cycles.

mod common;

use common::{is_keel, runtime, wal_files, Server};
use etcd_client::{Client, GetOptions};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

async fn all_kvs(c: &mut Client, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect()
}

#[test]
fn clean_restart_keeps_everything() {
    let mut s = Server::start("dur-clean", &[]);
    let rt = runtime();
    let before = rt.block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for i in 0..300 {
            c.put(format!("key/{i:04}"), format!("value-{i}"), None)
                .await
                .unwrap();
        }
        c.delete("key/0007", None).await.unwrap();
        all_kvs(&mut c, "key/").await
    });
    assert_eq!(before.len(), 299);
    let code = s.stop();
    if is_keel() {
        // etcd exits non-zero on SIGTERM; Keel drains, commits and exits 0.
        assert_eq!(code, 0, "SIGTERM stops cleanly:\n{}", s.log());
    }
    s.restart();
    rt.block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        assert_eq!(all_kvs(&mut c, "key/").await, before);
        // History survives too, and revisions continue where they stopped.
        let r = c
            .get("key/0007", Some(GetOptions::new().with_revision(100)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"value-7");
        let put = c.put("after", "restart", None).await.unwrap();
        assert_eq!(put.header().unwrap().revision(), 303);
    });
}

/// Writers put unique keys as fast as they can; the server is killed with SIGKILL in the
/// middle; after a restart every acknowledged key must be there with its value.
#[test]
fn kill9_under_write_load_loses_no_acknowledged_write() {
    const CYCLES: usize = 4;
    const WRITERS: usize = 16;
    let mut s = Server::start("dur-kill9", &[]);
    let rt = runtime();
    let mut acked_total: BTreeMap<String, String> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let acked: Rc<RefCell<Vec<(String, String)>>> = Rc::default();
        let endpoint = s.endpoint();
        let pid = s.pid();
        rt.block_on(async {
            let c = Client::connect([endpoint], None).await.unwrap();
            let local = tokio::task::LocalSet::new();
            for w in 0..WRITERS {
                let mut c = c.clone();
                let acked = acked.clone();
                local.spawn_local(async move {
                    for i in 0.. {
                        let (k, v) = (format!("c{cycle}/w{w}/{i}"), format!("v{i}-{w}"));
                        match c.put(k.clone(), v.clone(), None).await {
                            Ok(_) => acked.borrow_mut().push((k, v)),
                            Err(_) => break, // the server is gone
                        }
                    }
                });
            }
            local
                .run_until(async {
                    // Let the load run, then kill -9 while puts are in flight.
                    tokio::time::sleep(Duration::from_millis(700 + 150 * cycle as u64)).await;
                    let killed = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap();
                    assert!(killed.success());
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline && !acked.borrow().is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if Rc::strong_count(&acked) == 1 {
                            break; // every writer has stopped
                        }
                    }
                })
                .await;
        });
        s.kill9(); // reap the child
        let acked = acked.take();
        assert!(
            acked.len() > 50,
            "cycle {cycle}: only {} puts acknowledged",
            acked.len()
        );
        acked_total.extend(acked);
        s.restart();
        rt.block_on(async {
            let mut c = Client::connect([s.endpoint()], None).await.unwrap();
            let present = all_kvs(&mut c, "c").await;
            let lost: Vec<&String> = acked_total
                .iter()
                .filter(|(k, v)| present.get(*k).map(|(pv, _)| pv) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            assert!(
                lost.is_empty(),
                "cycle {cycle}: {} of {} acknowledged writes lost, e.g. {:?}",
                lost.len(),
                acked_total.len(),
                &lost[..lost.len().min(5)]
            );
            eprintln!(
                "kill -9 cycle {cycle}: {} acknowledged so far, {} present, 0 lost",
                acked_total.len(),
                present.len()
            );
        });
    }
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
    f.sync_all().unwrap();
}

fn populated(tag: &str) -> Server {
    let mut s = Server::start(tag, &[]);
    runtime().block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for i in 0..400 {
            c.put(format!("k{i:04}"), "x".repeat(100), None)
                .await
                .unwrap();
        }
    });
    s.stop();
    s
}

#[test]
fn a_damaged_wal_is_refused_naming_the_file() {
    if !is_keel() {
        return; // etcd's WAL layout differs
    }
    let mut s = populated("dur-wal");
    let wal = wal_files(&s.data_dir.join("member/wal"));
    assert!(!wal.is_empty());
    // Well inside the records written, far from the tail: damage, not a torn write.
    flip_byte(&wal[0], 8 * 1024);
    let (code, log) = s
        .run_expecting_exit(Duration::from_secs(10))
        .expect("the server refuses to start");
    assert_ne!(code, 0);
    let name = wal[0].file_name().unwrap().to_str().unwrap();
    assert!(log.contains(name), "the message names the segment: {log}");
}

#[test]
fn a_damaged_db_is_refused_naming_the_file() {
    if !is_keel() {
        return; // etcd's db is a bbolt file
    }
    let mut s = populated("dur-db");
    let db = s.data_dir.join("member/snap/db");
    // Pages 2.. hold the trees; damage the header area of several of them.
    for page in 2..12u64 {
        flip_byte(&db, page * 4096 + 8);
    }
    let (code, log) = s
        .run_expecting_exit(Duration::from_secs(10))
        .expect("the server refuses to start");
    assert_ne!(code, 0);
    assert!(
        log.contains("member/snap/db"),
        "the message names the db: {log}"
    );
}

#[test]
fn a_second_server_on_a_used_port_exits_with_etcds_bind_error() {
    let first = Server::start("dur-port-a", &[]);
    let mut second = Server::unstarted("dur-port-b");
    // The first server's client port: both run, so without the check the kernel would
    // share it between them (every core binds with SO_REUSEPORT).
    second.client_port = first.client_port;
    let (code, log) = second
        .run_expecting_exit(Duration::from_secs(10))
        .expect("the second server stops at once");
    assert_ne!(code, 0);
    let want = format!("listen tcp 127.0.0.1:{}: bind: ", first.client_port);
    assert!(
        log.contains(&want) && log.to_lowercase().contains("address already in use"),
        "{log}"
    );
}
