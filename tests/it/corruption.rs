//! Bit rot after boot, through a real server and client: pages of the running member's db
//! file damaged on disk (written through the file, which the server's shared mapping sees
//! at once, as pages read back after the page cache dropped them). Reads over them answer
//! etcd's corrupt error (DataLoss, "etcdserver: corrupt cluster") and the member keeps
//! serving; a watch replaying that history is canceled with the same error; the log names
//! the file and offset. A write over them stops the member with a message naming the file
//! and offset, never a panic.
//! Keel only (it damages Keel's file format); skipped with `KEEL_TEST_SERVER`.

use crate::common;

use common::{grpc_status, is_keel, Server};
use etcd_client::{GetOptions, SortOrder, SortTarget, WatchOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const PAGE_BYTES: u64 = 4096;

/// Flips one byte in every page of `db` but the two meta pages.
fn rot_every_page(db: &std::path::Path) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    for id in 2..f.metadata().unwrap().len() / PAGE_BYTES {
        let at = id * PAGE_BYTES + 200;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    }
}

/// Waits up to 5 s for `etcdctl alarm list` to show a CORRUPT alarm (raised through raft).
fn wait_for_corrupt_alarm(s: &Server) {
    let mut listed = String::new();
    for _ in 0..50 {
        listed = s.etcdctl(&["alarm", "list"]).stdout;
        if listed.contains("alarm:CORRUPT") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no CORRUPT alarm listed: {listed}\n{}", s.log());
}

#[test]
fn reads_over_rotten_pages_answer_corrupt_and_a_write_stops_the_member() {
    if !is_keel() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if cores >= 2 { "2" } else { "1" };
    let mut s = Server::start("rot", &["--cores", cores, "--shard-split-keys", "m"]);
    let rt = common::runtime();
    let db = s.data_dir.join("member/snap/db");
    rt.block_on(async {
        let mut c = common::connect(&s).await;
        for i in 0..200 {
            let key = format!("{}{i:03}", ["a", "p"][i % 2]);
            c.put(key, vec![b'v'; 300], None).await.unwrap();
        }
        // Everything applied and published before the pages rot.
        c.get("a000", None).await.unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // First only the pages that hold values: the first read that meets one raises
        // CORRUPT through raft, and that entry's apply writes the Meta tree, which must
        // stay intact for the member to go on serving (the whole-file rot comes below).
        assert!(rot_pages_holding(&db, &[b'v'; 200]) >= 2);

        let all = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Value, SortOrder::None)
            .with_limit(10);
        for (key, opts) in [
            ("a000", None),
            ("p001", Some(GetOptions::new().with_serializable())),
            ("", Some(all)),
        ] {
            let e = c.get(key, opts).await.unwrap_err();
            assert_eq!(
                grpc_status(e),
                (tonic::Code::DataLoss, "etcdserver: corrupt cluster".into()),
                "get {key:?}"
            );
        }
        // A watch that replays history over the rotten pages is canceled with the error.
        let mut events = c
            .watch(
                "a",
                Some(WatchOptions::new().with_prefix().with_start_revision(1)),
            )
            .await
            .unwrap();
        let canceled = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), events.message())
                .await
                .expect("a watch response")
                .unwrap()
                .expect("the stream stays open");
            assert!(msg.events().is_empty(), "events read from rotten pages");
            if msg.canceled() {
                break msg;
            }
        };
        assert_eq!(canceled.cancel_reason(), "etcdserver: corrupt cluster");
    });
    assert!(
        s.is_running(),
        "a corrupt read stopped the member:\n{}",
        s.log()
    );
    let log = s.log();
    assert!(
        log.contains(&format!("db file {} is corrupt at offset", db.display())),
        "{log}"
    );
    wait_for_corrupt_alarm(&s);
    assert!(s.is_running(), "{}", s.log());

    // Now every page rots, the Meta tree's too: the raft core's apply of the next write
    // (the disarm, which removes the alarm's record) meets the damage, and the member
    // stops, saying where.
    rot_every_page(&db);
    let _ = s.etcdctl(&["alarm", "disarm", "--command-timeout=2s"]);
    let code = s.wait_exit(Duration::from_secs(10));
    let log = s.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("applying entry"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Flips a byte in every page of `db` that holds `marker` (and no other page).
fn rot_pages_holding(db: &std::path::Path, marker: &[u8]) -> usize {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    let mut rotted = 0;
    for id in 2..f.metadata().unwrap().len() / PAGE_BYTES {
        let mut page = vec![0u8; PAGE_BYTES as usize];
        f.read_exact_at(&mut page, id * PAGE_BYTES).unwrap();
        if page.windows(marker.len()).any(|w| w == marker) {
            let at = id * PAGE_BYTES + 100;
            f.write_all_at(&[page[100] ^ 0x01], at).unwrap();
            rotted += 1;
        }
    }
    rotted
}

/// A damaged page found by a read raises etcd's CORRUPT alarm for the member (through
/// raft, so every member refuses the same): `alarm list` shows it, and every
/// KV write is refused with "etcdserver: corrupt cluster" while reads of intact pages go
/// on; disarming it lets writes through again.
#[test]
fn a_damaged_page_raises_the_corrupt_alarm() {
    if !is_keel() {
        return;
    }
    let s = Server::start("rot-alarm", &["--cores", "1"]);
    // Far apart in the revision tree: the marker's leaf, then enough records after it
    // that the other keys and the Meta tree live on other pages.
    assert!(s.etcdctl(&["put", "rotme", &"R".repeat(2000)]).ok);
    for i in 0..40 {
        assert!(
            s.etcdctl(&["put", &format!("k{i:02}"), &"v".repeat(500)])
                .ok
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let db = s.data_dir.join("member/snap/db");
    assert!(rot_pages_holding(&db, &[b'R'; 1500]) >= 1);
    let got = s.etcdctl(&["get", "rotme"]);
    assert!(
        !got.ok && got.stderr.contains("corrupt cluster"),
        "{}{}",
        got.stdout,
        got.stderr
    );
    wait_for_corrupt_alarm(&s);
    let put = s.etcdctl(&["put", "k00", "x"]);
    assert!(
        !put.ok && put.stderr.contains("etcdserver: corrupt cluster"),
        "{}{}",
        put.stdout,
        put.stderr
    );
    let read = s.etcdctl(&["get", "k39", "--print-value-only"]);
    assert!(read.ok, "{}", read.stderr);
    // (A restart would not boot: open checks every page. The alarm's persistence is
    // tested with NOSPACE in tests/it/maintenance.rs.)
    assert!(s.etcdctl(&["alarm", "disarm"]).ok);
    assert!(s.etcdctl(&["put", "k00", "x"]).ok, "{}", s.log());
    assert!(s.is_running());
}
