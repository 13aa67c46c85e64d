//! Durability of the real server process: a clean restart keeps everything, kill -9 under
//! write load loses no acknowledged write, a damaged data dir is refused with a clear
//! message, and so is a second process on a data dir in use. Bounded: a few seconds of load per cycle, a fixed number of cycles.

use crate::common;

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
    // Well inside the records written, far from the tail, in a value's bytes (not a
    // record's length field: damage there, within the last batch of bytes, is
    // indistinguishable from a torn write, see the WAL's recovery rules, and how the
    // records fall depends on how the writes were batched): damage, not a torn write.
    let bytes = std::fs::read(&wal[0]).unwrap();
    let value = bytes[8 * 1024..]
        .windows(32)
        .position(|w| w.iter().all(|&b| b == b'x'))
        .expect("a value's bytes past 8 KiB");
    flip_byte(&wal[0], (8 * 1024 + value + 16) as u64);
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

/// Every path under `dir`, relative to it, sorted.
fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// Two processes ran on one data dir at once: a second start with other ports elected
/// itself leader beside the first, and the next restart repaired a torn WAL tail. Keel
/// locks the data dir at boot, so the second process exits at once, naming the dir and the
/// first's PID, before it writes anything.
///
/// etcd 3.4 (Debian's 3.4.23, checked by hand) does not exit: the second process blocks on
/// bbolt's flock of `member/snap/db`, logs after 10 s `another etcd process is using
/// "…/member/snap/db" and holds the file lock, or loading backend file is taking >10
/// seconds` and `waiting for it to exit before starting...`, and would start once the
/// first exits. Against etcd this test checks that it is still waiting, not serving, and
/// kills it.
#[test]
fn a_second_server_on_a_data_dir_in_use_is_refused_and_the_first_is_unharmed() {
    let mut first = Server::start("dur-lock-a", &[]);
    let rt = runtime();
    let put_all = |from: usize, to: usize| {
        rt.block_on(async {
            let mut c = Client::connect([first.endpoint()], None).await.unwrap();
            for i in from..to {
                c.put(format!("lock/{i:03}"), format!("v{i}"), None)
                    .await
                    .unwrap();
            }
            all_kvs(&mut c, "lock/").await
        })
    };
    put_all(0, 50);
    let files_before = tree(&first.data_dir);

    let mut second = Server::unstarted("dur-lock-b");
    // Other ports, the same member: it advertises the first's peer URL, so its member ID
    // matches the WAL's and nothing but the lock stops it from taking the data dir over.
    let (client, peer) = (second.client_url(), second.peer_url());
    let data = first.data_dir.to_str().unwrap().to_string();
    let first_peer = first.peer_url();
    let cluster = format!("it={first_peer}");
    let args = [
        "--name",
        "it",
        "--data-dir",
        &data,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &first_peer,
        "--initial-cluster",
        &cluster,
        "--initial-cluster-token",
        "keel-it",
    ];
    second.set_args(args.iter().map(|s| s.to_string()).collect());
    let started = Instant::now();
    let exited = second.run_expecting_exit(Duration::from_secs(5));
    if is_keel() {
        let (code, log) = exited.expect("the second server exits at once");
        eprintln!(
            "second server exited with {code} after {:?}",
            started.elapsed()
        );
        assert_eq!(code, 1, "{log}");
        let want = format!(
            "data dir {data} is in use by another keel or etcd process (pid {}): \
             cannot lock it: Resource temporarily unavailable",
            first.pid()
        );
        assert!(
            log.contains(&want),
            "the message names the dir and holder: {log}"
        );
        assert!(!log.contains("starting member"), "it opened nothing: {log}");
        assert_eq!(tree(&first.data_dir), files_before, "it created nothing");
    } else {
        assert!(exited.is_none(), "etcd 3.4 waits for bbolt's lock");
        assert!(!second.log().contains("ready to serve client requests"));
        second.kill9();
    }

    // The first serves reads and writes as before.
    let before_restart = put_all(50, 100);
    assert_eq!(before_restart.len(), 100);
    let got = first.etcdctl(&["get", "lock/042", "--print-value-only"]);
    got.expect_ok("v42\n");

    // Its data and WAL are intact: a clean restart repairs nothing and has every key.
    first.stop();
    first.restart();
    let log = first.log();
    assert!(
        !log.to_lowercase().contains("repair"),
        "WAL repaired at restart: {log}"
    );
    let after_restart = rt.block_on(async {
        let mut c = Client::connect([first.endpoint()], None).await.unwrap();
        all_kvs(&mut c, "lock/").await
    });
    assert_eq!(after_restart, before_restart);
}
