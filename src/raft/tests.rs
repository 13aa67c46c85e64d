//! The raft core on a real WAL and db in a temp dir, driven by hand (no server, no
//! other cores): bootstrap, writes, linearizable reads, restart, and refusal of a data
//! dir that is not this member's.

use super::*;
use crate::mvcc::{PutRequest, RangeRequest};
use crate::runtime::block_on;
use std::cell::RefCell;
use std::path::Path;

struct Collect(RefCell<Vec<(CoreId, Reply)>>);

impl ReplySink for Collect {
    fn send(&self, to: CoreId, reply: Reply) {
        self.0.borrow_mut().push((to, reply));
    }

    fn applied(&self, _round: Applied, replies: Vec<(CoreId, Reply)>) {
        self.0.borrow_mut().extend(replies);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-raft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(dir: &Path, member_id: u64) -> RaftOptions {
    RaftOptions {
        peer_tls: None,
        member_id,
        cluster_id: 7,
        wal_dir: dir.join("member/wal"),
        db_path: dir.join("member/snap/db"),
        initial_members: vec![MemberInfo {
            id: member_id,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        }],
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        snapshot_count: 100_000,
        snapshot_bytes: 64 << 20,
        max_txn_ops: 128,
        shards: 1,
        shard_splits: Vec::new(),
        shard_rebalance: true,
        idle_spin: Duration::ZERO,
        lease_checkpoint_interval: None,
        corrupt_check_interval: None,
        initial_corrupt_check: false,
        join_existing: false,
        advertise_peer_urls: Vec::new(),
        publish: None,
        strict_reconfig_check: true,
        auto_compaction: None,
        force_new_cluster: false,
    }
}

fn put(key: &str, value: &str) -> Bytes {
    super::entry::encode_raft_request(&Op::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }))
}

fn range(key: &str) -> Op {
    Op::Range(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
}

use bytes::Bytes;

/// A client's write proposed on this member, answered to core 0 under `seq`.
fn propose(core: &mut RaftCore, out: &Collect, seq: u64, data: Bytes) {
    let to = ReplyTo::new(CoreId(0), seq);
    core.handle(ToRaft::Propose { to, data }, out);
}

/// One loop turn's raft work, and the WAL's writer's syncs it needs (the loop takes those
/// as they come).
async fn turn(core: &mut RaftCore, out: &Collect) {
    core.process_ready(out).await.unwrap();
    core.settle(out).await.unwrap();
}

/// Found by the failpoints (a WAL fsync failing during a new member's first boot): the db
/// was made, the WAL was not, and every later start refused the "partial data dir". A db
/// that never applied an entry boots as new (also one torn in its creation); one that did
/// still refuses without its WAL.
#[test]
fn a_first_boot_that_died_before_its_wal_boots_again_and_a_lost_wal_is_refused() {
    let dir = temp_dir("first-boot");
    block_on({
        let dir = dir.clone();
        async move {
            // What the failed first boot left: an empty db, no WAL.
            let opts = options(&dir, 0x77);
            std::fs::create_dir_all(opts.db_path.parent().unwrap()).unwrap();
            drop(
                Store::open(&opts.db_path, StoreOptions::default())
                    .await
                    .unwrap(),
            );
            assert!(!Wal::exists(&opts.wal_dir));
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(opts).await.unwrap();
            turn(&mut core, &out).await;
            assert_eq!(core.node.raft.state, StateRole::Leader);
            core.maybe_commit(Instant::now(), true).await.unwrap();
        }
    });
    // A power cut during that first boot's creation of the db, before its sync: less
    // than its two meta pages (a torn one) and no WAL. It is made again.
    let torn = temp_dir("first-boot-torn");
    block_on({
        let torn = torn.clone();
        async move {
            let opts = options(&torn, 0x77);
            std::fs::create_dir_all(opts.db_path.parent().unwrap()).unwrap();
            std::fs::write(&opts.db_path, vec![0xab; 5120]).unwrap();
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(opts).await.unwrap();
            turn(&mut core, &out).await;
            assert_eq!(core.node.raft.state, StateRole::Leader);
        }
    });
    std::fs::remove_dir_all(&torn).unwrap();
    // The member applied entries; its WAL goes missing: refused.
    std::fs::remove_dir_all(dir.join("member/wal")).unwrap();
    let err = block_on({
        let dir = dir.clone();
        async move { RaftCore::open(options(&dir, 0x77)).await.err().unwrap() }
    });
    assert!(
        err.0.contains("refusing to start on a partial data dir"),
        "{}",
        err.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_new_member_elects_itself_applies_writes_and_survives_a_restart() {
    let dir = temp_dir("restart");
    block_on({
        let dir = dir.clone();
        async move {
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(options(&dir, 0x8e9e)).await.unwrap();
            turn(&mut core, &out).await;
            assert_eq!(core.node.raft.state, StateRole::Leader);
            assert_eq!(core.members().unwrap().len(), 1);
            for i in 0..10u64 {
                propose(&mut core, &out, i, put(&format!("k{i}"), "v"));
            }
            turn(&mut core, &out).await;
            let replies = out.0.take();
            assert_eq!(replies.len(), 10, "one reply per proposal");
            for (i, (_, r)) in replies.iter().enumerate() {
                assert_eq!(r.seq, i as u64);
                let Ok(crate::mesh::ReplyBody::Op(OpResponse::Put(p))) = &r.body else {
                    panic!("not a put reply: {:?}", r.body);
                };
                assert_eq!(p.header.revision, i as i64 + 2);
            }
            // A linearizable read waits for a ReadIndex, then sees every write.
            let read = ToRaft::Read {
                to: ReplyTo::new(CoreId(1), 99),
                op: range("k9"),
                linearizable: true,
            };
            core.handle(read, &out);
            assert!(out.0.borrow().is_empty(), "served before its ReadIndex");
            turn(&mut core, &out).await;
            let replies = out.0.take();
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].0, CoreId(1));
            let Ok(crate::mesh::ReplyBody::Op(OpResponse::Range(r))) = &replies[0].1.body else {
                panic!("not a range reply");
            };
            assert_eq!(r.kvs.len(), 1);
            // No clean shutdown: the db was never committed; the WAL alone brings it back.
        }
    });
    block_on({
        let dir = dir.clone();
        async move {
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(options(&dir, 0x8e9e)).await.unwrap();
            turn(&mut core, &out).await;
            assert_eq!(core.store().current_revision(), 11);
            assert_eq!(core.node.raft.state, StateRole::Leader);
            core.maybe_commit(Instant::now(), true).await.unwrap();
            propose(&mut core, &out, 1, put("after", "restart"));
            turn(&mut core, &out).await;
            assert_eq!(out.0.take().len(), 1);
            core.maybe_commit(Instant::now(), true).await.unwrap();
        }
    });
    block_on({
        let dir = dir.clone();
        async move {
            let core = RaftCore::open(options(&dir, 0x8e9e)).await.unwrap();
            assert_eq!(core.store().current_revision(), 12);
            assert_eq!(
                core.members().unwrap()[0].client_urls,
                vec!["http://localhost:2379"]
            );
        }
    });
    // Another member's data dir is refused, naming both IDs.
    let err = block_on({
        let dir = dir.clone();
        async move { RaftCore::open(options(&dir, 0x1234)).await.err().unwrap() }
    });
    assert!(err.0.contains("belongs to member 8e9e"), "{}", err.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--snapshot-bytes` (issue 23): with large values the log held in memory stays within
/// the bound (plus the entries of one round) long before `--snapshot-count` entries, the
/// entries kept for followers after a snapshot are at most a quarter of it, and a restart
/// still recovers every write.
#[test]
fn the_log_held_in_memory_is_bounded_by_snapshot_bytes() {
    let dir = temp_dir("snapshot-bytes");
    let mut opts = options(&dir, 5);
    opts.snapshot_bytes = 256 << 10;
    let value = "v".repeat(8 << 10);
    block_on({
        let opts = opts.clone();
        let value = value.clone();
        async move {
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(opts.clone()).await.unwrap();
            turn(&mut core, &out).await;
            let mut most = 0;
            for i in 0..200u64 {
                propose(&mut core, &out, i, put(&format!("k{i}"), &value));
                turn(&mut core, &out).await;
                core.maybe_commit(Instant::now(), false).await.unwrap();
                most = most.max(core.node.store().bytes());
            }
            assert_eq!(out.0.take().len(), 200);
            let entry = 9 << 10;
            assert!(most < opts.snapshot_bytes + entry, "{most} bytes held");
            assert!(
                core.snapshot_index > 100,
                "snapshot at {}",
                core.snapshot_index
            );
            // After the last snapshot: at most a quarter of the bound below its index.
            let held_below = core.snapshot_index + 1 - core.node.store().first_index_raw();
            assert!(held_below * entry <= opts.snapshot_bytes / 4 + entry);
        }
    });
    block_on(async move {
        let out = Collect(RefCell::new(Vec::new()));
        let mut core = RaftCore::open(opts).await.unwrap();
        turn(&mut core, &out).await;
        assert_eq!(core.store().current_revision(), 201);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

fn compact(revision: i64, physical: bool) -> Bytes {
    super::entry::encode_raft_request(&Op::Compaction(crate::mvcc::CompactionRequest {
        revision,
        physical,
    }))
}

/// A compaction is answered when applied and swept a slice at a time afterwards; a
/// physical one is answered only with the slice that ends the sweep. A restart mid-way
/// goes on from where the committed sweep stood.
#[test]
fn a_physical_compaction_is_answered_when_its_sweep_ends_and_a_restart_resumes_it() {
    let dir = temp_dir("sweep");
    let opts = options(&dir, 6);
    const KEYS: u64 = 5_000;
    block_on({
        let opts = opts.clone();
        async move {
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(opts.clone()).await.unwrap();
            turn(&mut core, &out).await;
            for round in 0..2 {
                for i in 0..KEYS {
                    propose(
                        &mut core,
                        &out,
                        round * KEYS + i,
                        put(&format!("k{i}"), "v"),
                    );
                }
                turn(&mut core, &out).await;
            }
            assert_eq!(out.0.take().len(), 2 * KEYS as usize);
            let rev = core.store().current_revision();
            // Half-way: not physical, answered at once; the sweep starts.
            propose(
                &mut core,
                &out,
                1_000_000,
                compact(rev - KEYS as i64 / 2, false),
            );
            turn(&mut core, &out).await;
            assert_eq!(out.0.take().len(), 1);
            assert!(core.store().compaction_pending());
            // A physical one that is refused (the revision is compacted) is answered at
            // once, sweep or not.
            propose(
                &mut core,
                &out,
                999_999,
                compact(rev - KEYS as i64 / 2, true),
            );
            turn(&mut core, &out).await;
            let refused = out.0.take();
            assert_eq!(refused.len(), 1);
            assert!(refused[0].1.body.is_err());
            core.compaction_turn(&out).unwrap();
            // Then all of it, physical: no answer until the sweep is through.
            propose(&mut core, &out, 1_000_001, compact(rev, true));
            turn(&mut core, &out).await;
            assert!(out.0.borrow().is_empty());
            // Turns before a slice is due do nothing (the pause after the last one).
            let mut slices = 0;
            while core.store().compaction_pending() {
                assert!(out.0.borrow().is_empty(), "answered before the sweep ended");
                let before = core.store().backend().len(TreeId::Revision);
                core.compaction_turn(&out).unwrap();
                slices += u32::from(core.store().backend().len(TreeId::Revision) != before);
            }
            let replies = out.0.take();
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].1.seq, 1_000_001);
            assert!(replies[0].1.body.is_ok());
            assert!(slices > 2, "{slices} slices");
            core.store().check().unwrap();
            // Another compaction, left mid-way at a commit.
            for i in 0..KEYS {
                propose(&mut core, &out, 2_000_000 + i, put(&format!("k{i}"), "w"));
            }
            turn(&mut core, &out).await;
            let rev = core.store().current_revision();
            propose(&mut core, &out, 3_000_000, compact(rev, false));
            turn(&mut core, &out).await;
            core.compaction_turn(&out).unwrap();
            assert!(core.store().compaction_pending());
            core.maybe_commit(Instant::now(), true).await.unwrap();
        }
    });
    block_on(async move {
        let out = Collect(RefCell::new(Vec::new()));
        let mut core = RaftCore::open(opts).await.unwrap();
        turn(&mut core, &out).await;
        assert!(core.store().compaction_pending());
        core.store().check().unwrap();
        while core.store().compaction_pending() {
            core.compaction_turn(&out).unwrap();
        }
        core.store().check().unwrap();
        let backend = core.store().backend();
        assert_eq!(backend.len(TreeId::Revision), KEYS);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snapshots_release_the_wal_and_recovery_resumes_after_them() {
    let dir = temp_dir("snapshot");
    let mut opts = options(&dir, 5);
    opts.snapshot_count = 50;
    block_on({
        let opts = opts.clone();
        async move {
            let out = Collect(RefCell::new(Vec::new()));
            let mut core = RaftCore::open(opts).await.unwrap();
            turn(&mut core, &out).await;
            for i in 0..200u64 {
                propose(&mut core, &out, i, put(&format!("k{i}"), "v"));
                turn(&mut core, &out).await;
                if i % 60 == 59 {
                    core.maybe_commit(Instant::now(), true).await.unwrap();
                }
            }
            assert_eq!(out.0.take().len(), 200);
            assert!(core.snapshot_index > 0);
        }
    });
    block_on(async move {
        let out = Collect(RefCell::new(Vec::new()));
        let mut core = RaftCore::open(opts).await.unwrap();
        // The db holds what was committed to it; the WAL after the snapshot the rest.
        assert!(core.store().current_revision() < 201);
        turn(&mut core, &out).await;
        assert_eq!(core.store().current_revision(), 201);
        assert!(out.0.borrow().is_empty(), "replayed entries answer no one");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
