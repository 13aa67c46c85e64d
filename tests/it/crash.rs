//! Crash test: a writer process is killed with SIGKILL at random moments while it
//! appends to the WAL, applies to the MVCC store and commits; after each kill the
//! store is reopened and recovered (WAL replay after the store's consistent index) and
//! must hold every write whose WAL sync had returned ("ack"), and pass its own check.
//!
//! The writer is this test binary run again (the ignored test `crash_child`), so the
//! code under test is exactly the library's. Ops are a pure function of the seed and
//! the raft index, so the parent can rebuild the expected state for any log length.

use keel::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, Store, StoreOptions};
use keel::runtime::block_on;
use keel::wal::{Entry, SnapshotMarker, Wal, WalOptions};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY_COUNT: u64 = 64;
const CHILD_RUN_MAX: Duration = Duration::from_secs(20);

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put {
        key: u64,
        value_seed: u64,
        value_bytes: usize,
    },
    Delete {
        key: u64,
    },
    /// Compact to `current - keep_revisions` if that is above the compacted revision.
    Compact {
        keep_revisions: i64,
    },
}

/// The op at raft index `index`: a pure function, so parent and child agree.
fn op_at(seed: u64, index: u64) -> Op {
    let r = splitmix64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let key = (r >> 8) % KEY_COUNT;
    match r % 100 {
        0..=79 => Op::Put {
            key,
            value_seed: r,
            value_bytes: [8, 200, 3000][((r >> 40) % 3) as usize],
        },
        80..=97 => Op::Delete { key },
        _ => Op::Compact {
            keep_revisions: 1 + ((r >> 20) % 40) as i64,
        },
    }
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("/crash/key/{key:04}").into_bytes()
}

fn value_bytes(index: u64, value_seed: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{index}:").into_bytes();
    let mut x = value_seed;
    while v.len() < len {
        x = splitmix64(x);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn encode_index(index: u64) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

/// Applies the entry at `index` to the store (the role the raft core plays).
fn apply(store: &mut Store, seed: u64, index: u64, term: u64) {
    match op_at(seed, index) {
        Op::Put {
            key,
            value_seed,
            value_bytes: len,
        } => {
            let req = PutRequest {
                key: key_bytes(key),
                value: value_bytes(index, value_seed, len),
                ..Default::default()
            };
            store.put(&req).expect("put");
        }
        Op::Delete { key } => {
            let req = DeleteRangeRequest {
                key: key_bytes(key),
                ..Default::default()
            };
            store.delete_range(&req).expect("delete");
        }
        Op::Compact { keep_revisions } => {
            let target = store.current_revision() - keep_revisions;
            if target > store.compact_revision() {
                store.compact(target).expect("compact");
            }
        }
    }
    store.set_consistent_index(index, term);
}

/// The expected state after applying indexes 1..=last: key → value, revision, compacted.
fn model(seed: u64, last: u64) -> (BTreeMap<Vec<u8>, Vec<u8>>, i64, i64) {
    let mut state = BTreeMap::new();
    let (mut rev, mut compacted) = (1i64, 0i64);
    for index in 1..=last {
        match op_at(seed, index) {
            Op::Put {
                key,
                value_seed,
                value_bytes: len,
            } => {
                state.insert(key_bytes(key), value_bytes(index, value_seed, len));
                rev += 1;
            }
            Op::Delete { key } => {
                if state.remove(&key_bytes(key)).is_some() {
                    rev += 1;
                }
            }
            Op::Compact { keep_revisions } => {
                if rev - keep_revisions > compacted {
                    compacted = rev - keep_revisions;
                }
            }
        }
    }
    (state, rev, compacted)
}

struct Opened {
    wal: Wal,
    store: Store,
    /// Last index in the store after replay.
    last_index: u64,
}

/// Opens (or creates) WAL and store under `dir` and replays the WAL into the store.
async fn open_and_recover(dir: &Path, seed: u64) -> Opened {
    let wal_dir = dir.join("member/wal");
    let db_path = dir.join("member/snap/db");
    std::fs::create_dir_all(db_path.parent().unwrap()).unwrap();
    let mut store = Store::open(&db_path, StoreOptions::default())
        .await
        .expect("store open");
    let (wal, entries) = if Wal::exists(&wal_dir) {
        let (wal, recovered) = Wal::open(&wal_dir, WalOptions::default())
            .await
            .expect("wal open");
        (wal, recovered.entries)
    } else {
        std::fs::create_dir_all(&wal_dir).unwrap();
        (
            Wal::create(&wal_dir, b"crash-test", WalOptions::default())
                .await
                .unwrap(),
            vec![],
        )
    };
    let mut last_index = store.consistent_index();
    for e in &entries {
        if e.index <= last_index {
            continue; // already in the store: replay is idempotent by index
        }
        assert_eq!(
            e.index,
            last_index + 1,
            "gap in the WAL after index {last_index}"
        );
        assert_eq!(
            e.data,
            encode_index(e.index),
            "entry {} carries the wrong data",
            e.index
        );
        apply(&mut store, seed, e.index, e.term);
        last_index = e.index;
    }
    Opened {
        wal,
        store,
        last_index,
    }
}

/// The writer: runs until killed (or, bounded, for CHILD_RUN_MAX).
async fn child(dir: PathBuf, seed: u64) {
    let Opened {
        mut wal,
        mut store,
        mut last_index,
    } = open_and_recover(&dir, seed).await;
    println!("ready {last_index}");
    let started = Instant::now();
    let mut batch_no = 0u64;
    while started.elapsed() < CHILD_RUN_MAX {
        let batch_len = 1 + splitmix64(seed ^ last_index) % 48;
        let entries: Vec<Entry> = (last_index + 1..=last_index + batch_len)
            .map(|index| Entry {
                entry_type: 0,
                term: 1,
                index,
                data: encode_index(index).into(),
                context: bytes::Bytes::new(),
            })
            .collect();
        wal.append_entries(&entries);
        wal.sync().await.expect("wal sync");
        println!("ack {}", last_index + batch_len);
        for e in &entries {
            apply(&mut store, seed, e.index, e.term);
        }
        last_index += batch_len;
        store.publish();
        batch_no += 1;
        if batch_no.is_multiple_of(4) {
            store.commit().await.expect("store commit");
        }
        if batch_no.is_multiple_of(32) {
            // Everything up to the committed consistent index is in the db file: the WAL
            // before it may go, as after a raft snapshot.
            let index = store.consistent_index();
            wal.save_snapshot_marker(SnapshotMarker { index, term: 1 });
            wal.sync().await.expect("wal sync");
            wal.release_to(index).await.expect("wal release");
        }
    }
}

#[test]
#[ignore = "the child process of crash_kill9_loses_no_acknowledged_write"]
fn crash_child() {
    let dir = PathBuf::from(std::env::var("KEEL_CRASH_DIR").expect("KEEL_CRASH_DIR"));
    let seed: u64 = std::env::var("KEEL_CRASH_SEED").unwrap().parse().unwrap();
    block_on(child(dir, seed));
}

/// Verifies the recovered store against the model; returns the last index present.
fn verify(dir: &Path, seed: u64, acked: u64) -> u64 {
    let dir = dir.to_path_buf();
    block_on(async move {
        let Opened {
            store, last_index, ..
        } = open_and_recover(&dir, seed).await;
        assert!(
            last_index >= acked,
            "lost acknowledged writes: acked {acked}, recovered {last_index}"
        );
        store.check().expect("store consistency check");
        let (state, rev, compacted) = model(seed, last_index);
        assert_eq!(
            store.current_revision(),
            rev,
            "revision after index {last_index}"
        );
        assert_eq!(store.compact_revision(), compacted, "compacted revision");
        let all = store
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .expect("range all");
        let got: BTreeMap<Vec<u8>, Vec<u8>> =
            all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert!(
            got == state,
            "state differs from the model after index {last_index}"
        );
        last_index
    })
}

/// `crash_child`'s name as libtest knows it in this binary: with the module path
/// (`module_path!()` less the crate name), "crash::crash_child" in the `it` binary.
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::crash_child"),
        None => "crash_child".to_string(),
    }
}

#[test]
fn crash_kill9_loses_no_acknowledged_write() {
    let cycles: u64 = std::env::var("KEEL_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b65656c);
    let tmp = std::env::temp_dir().join(format!("keel-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let exe = std::env::current_exe().unwrap();
    // `--exact` with a name that matches no test would start no writer at all, and every
    // cycle would pass: the writers' "ready" lines are counted below.
    let child_test = child_test_name();
    let mut max_acked = 0u64;
    let (mut waited, mut writer_ready) = (0u64, 0u64);
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                child_test.as_str(),
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env("KEEL_CRASH_DIR", &tmp)
            .env("KEEL_CRASH_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ") {
                    let _ = tx.send(n.trim().parse().unwrap());
                } else if line.starts_with("ready ") {
                    let _ = tx.send(0);
                }
            }
        });
        let r = splitmix64(seed ^ cycle);
        // Mostly kill while writing; sometimes during open/replay.
        let delay = if r.is_multiple_of(8) {
            Duration::from_micros(r % 30_000)
        } else {
            waited += 1;
            if rx.recv_timeout(Duration::from_secs(30)).is_ok() {
                writer_ready += 1;
            }
            Duration::from_micros(2_000 + (r >> 8) % 60_000)
        };
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let acked = rx.try_iter().max().unwrap_or(0);
        assert!(
            status.code().is_none() || status.success(),
            "writer failed: {status}"
        );
        max_acked = max_acked.max(acked);
        let last = verify(&tmp, seed, max_acked);
        max_acked = max_acked.max(last);
    }
    assert!(
        waited == 0 || writer_ready > 0,
        "no writer said ready in {waited} cycles: is `{child_test}` the writer test's name?"
    );
    println!(
        "crash test: {cycles} kill -9 cycles, {max_acked} entries in the log, every acknowledged \
         write recovered (0 lost), seed {seed}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
