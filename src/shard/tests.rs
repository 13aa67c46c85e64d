//! Shards against a reference: the same random history applied to one store and to
//! shard replicas (split at chosen keys); every Range, scattered and merged, must equal
//! the single store's answer.

use super::*;
use crate::mvcc::db::DbOptions;
use crate::mvcc::{DeleteRangeRequest, Op, PutRequest, Store, StoreOptions};
use crate::runtime::block_on;

#[test]
fn split_keys_follow_the_data() {
    let mut index = KeyIndex::new();
    for i in 0..100 {
        index.put(
            format!("/registry/pods/{i:03}").as_bytes(),
            Revision::new(i + 2, 0),
        );
    }
    let s = split_keys(&index, 4, &[]);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0], b"/registry/pods/025");
    assert_eq!(s[1], b"/registry/pods/050");
    assert_eq!(s[2], b"/registry/pods/075");
    assert_eq!(split_keys(&index, 1, &[]), Vec::<Vec<u8>>::new());
    let configured = vec![b"m".to_vec()];
    assert_eq!(split_keys(&index, 2, &configured), configured);
    // Empty store: spread over printable ASCII.
    let s = split_keys(&KeyIndex::new(), 2, &[]);
    assert_eq!(s.len(), 1);
}

#[test]
fn routing_covers_exactly_the_touched_shards() {
    let splits = vec![b"g".to_vec(), b"p".to_vec()];
    assert_eq!(shard_of(&splits, b"a"), 0);
    assert_eq!(shard_of(&splits, b"g"), 1);
    assert_eq!(shard_of(&splits, b"zz"), 2);
    assert_eq!(shards_for(&splits, b"a", b""), 0..1);
    assert_eq!(shards_for(&splits, b"a", b"g"), 0..1);
    assert_eq!(shards_for(&splits, b"a", b"g\0"), 0..2);
    assert_eq!(shards_for(&splits, b"h", b"\0"), 1..3);
    assert_eq!(shards_for(&splits, b"", b"\0"), 0..3);
    assert_eq!(shards_for(&splits, b"q", b"b"), 2..3);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(r: &mut Rng) -> Vec<u8> {
    format!(
        "{}{:02}",
        ["a", "k", "q", "z"][r.below(4) as usize],
        r.below(30)
    )
    .into_bytes()
}

#[test]
fn scattered_ranges_equal_the_single_store() {
    let dir = std::env::temp_dir().join(format!("keel-shard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    block_on(async move {
        let opts = StoreOptions {
            db: DbOptions::default(),
            ..StoreOptions::default()
        };
        let mut store = Store::open(&dir.join("db"), opts).await.unwrap();
        store.capture_changes(true);
        store.publish();
        let mut splits = Arc::new(vec![b"k".to_vec(), b"q05".to_vec(), b"z".to_vec()]);
        let mut moved = 0;
        let snap = store.backend().snapshot();
        let mut shards: Vec<Shard> = (0..4)
            .map(|i| Shard::boot(i, splits.clone(), snap.clone(), 0, 1, 0).unwrap())
            .collect();
        let mut r = Rng(0x9e3779b97f4a7c15);
        let mut checked = 0;
        for round in 0..60 {
            for _ in 0..10 {
                let op = match r.below(10) {
                    0 => Op::DeleteRange(DeleteRangeRequest {
                        key: key(&mut r),
                        range_end: if r.below(2) == 0 {
                            Vec::new()
                        } else {
                            key(&mut r)
                        },
                        ..Default::default()
                    }),
                    _ => Op::Put(PutRequest {
                        key: key(&mut r),
                        value: format!("v{}", r.below(1000)).into_bytes(),
                        ..Default::default()
                    }),
                };
                let _ = store.apply(&op);
            }
            if round % 20 == 19 {
                let at = store.current_revision() - 5;
                store.compact(at).unwrap();
            }
            // Sweeps go on a little each round, on the store and on the replicas.
            store.compact_step(r.below(20) as usize + 1).unwrap();
            for s in &mut shards {
                if r.below(2) == 0 {
                    s.compact_step(r.below(8) as usize + 1);
                }
            }
            store.publish();
            let snap = store.backend().snapshot();
            let changes = store.take_changes();
            // A rebalance step after the round's changes, most rounds: a random split key
            // a random way, over a few keys.
            let step = (r.below(4) != 0)
                .then(|| {
                    let boundary = r.below(3) as usize;
                    let d = r.below(40) as i64 - 20;
                    let max = r.below(12) as usize + 1;
                    Move::plan(store.index(), &splits, boundary, d, max)
                })
                .flatten();
            for s in &mut shards {
                s.apply_changes(&changes);
                if let Some(m) = &step {
                    s.take_move(m);
                }
                s.advance(
                    snap.clone(),
                    round + 1,
                    store.current_revision(),
                    store.compact_revision(),
                );
            }
            if let Some(m) = step {
                // Parts routed by the split keys before the step are refused by the two
                // shards it changed, and only by them.
                for s in &shards {
                    assert_eq!(s.serves_as(&splits), s.id() != m.from && s.id() != m.to);
                }
                moved += m.keys.len();
                splits = m.splits.clone();
            }
            let current = store.current_revision();
            for _ in 0..30 {
                let mut req = RangeRequest {
                    key: key(&mut r),
                    range_end: match r.below(3) {
                        0 => vec![0],
                        1 => key(&mut r),
                        _ => Vec::new(),
                    },
                    limit: r.below(4) as i64 * 3,
                    revision: if r.below(3) == 0 {
                        current - r.below(8) as i64
                    } else {
                        0
                    },
                    sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                        [r.below(3) as usize],
                    sort_target: [
                        SortTarget::Key,
                        SortTarget::Version,
                        SortTarget::Create,
                        SortTarget::Mod,
                        SortTarget::Value,
                    ][r.below(5) as usize],
                    keys_only: r.below(4) == 0,
                    count_only: r.below(8) == 0,
                    ..Default::default()
                };
                if r.below(5) == 0 {
                    req.min_mod_revision = current - 10;
                }
                let want = store.range(&req);
                let touched = shards_for(&splits, &req.key, &req.range_end);
                let part = if touched.len() == 1 {
                    req.clone()
                } else {
                    part_request(&req)
                };
                let parts: Result<Vec<_>, _> =
                    touched.map(|i| shards[i].range(&part, current)).collect();
                let got = parts.map(|mut p| {
                    if p.len() == 1 {
                        p.pop().unwrap()
                    } else {
                        merge(&req, p, current)
                    }
                });
                match (&want, &got) {
                    (Ok(w), Ok(g)) => {
                        // Ties in a non-key sort are in key order in both.
                        assert_eq!(w.kvs, g.kvs, "{req:?}");
                        assert_eq!((w.count, w.more), (g.count, g.more), "{req:?}");
                        assert_eq!(w.header.revision, g.header.revision);
                    }
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    _ => panic!("{req:?}: {want:?} vs {got:?}"),
                }
                checked += 1;
            }
        }
        // Once every sweep is through, the replicas hold exactly the store's keys, which
        // are fewer than before: keys deleted at or below the compact revision are gone.
        let before = store.index().key_count();
        store.finish_compaction().unwrap();
        for s in &mut shards {
            while s.compact_step(3) {}
        }
        let keys: usize = shards.iter().map(|s| s.key_count()).sum();
        assert_eq!(keys, store.index().key_count());
        // Each replica is the store's index restricted to its range.
        for s in &shards {
            assert!(store.index().keys().filter(|k| s.owns(k)).count() == s.key_count());
        }
        assert!(moved > 50, "only {moved} keys moved");
        assert!(keys < before, "{keys} keys of {before}");
        assert!(checked >= 1800);
    });
}
/// An empty temp dir of this test process.
pub(crate) fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-shard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new store in `dir` that keeps its changes for rounds, its empty state published.
pub(crate) async fn capturing_store(dir: &std::path::Path) -> Store {
    let mut store = Store::open(&dir.join("db"), StoreOptions::default())
        .await
        .unwrap();
    store.capture_changes(true);
    store.publish();
    store
}

/// Every page of `db` past the meta pages with one byte flipped, written through the file
/// (the open mapping sees it at once, as pages read back damaged from the disk).
fn rot_every_page(db: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    let pages = f.metadata().unwrap().len() / crate::mvcc::db::PAGE_BYTES as u64;
    for id in 2..pages {
        let at = id * crate::mvcc::db::PAGE_BYTES as u64 + 100;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }
}

/// Bit rot after boot: a Range served by shards (and by the raft core's store) over
/// damaged pages answers etcd's corrupt error (DataLoss, "etcdserver: corrupt cluster"),
/// whether it touches one shard or merges several; a write over them fails with the
/// db's `Corrupt` naming the file; nothing panics.
#[test]
fn range_over_a_corrupt_page_answers_etcds_corrupt_error() {
    let dir = fresh_dir("rot");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        for i in 0..300 {
            let req = PutRequest {
                key: format!("{}{i:03}", ["a", "k", "r"][i % 3]).into_bytes(),
                value: vec![b'v'; 200],
                ..Default::default()
            };
            store.put(&req).unwrap();
        }
        store.publish();
        store.commit().await.unwrap();
        let splits = Arc::new(vec![b"k".to_vec(), b"r".to_vec()]);
        let snap = store.backend().snapshot();
        let current = store.current_revision();
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::boot(i, splits.clone(), snap.clone(), 1, current, 0).unwrap())
            .collect();
        rot_every_page(&dir.join("db"));
        // (api::errors maps these to etcd's DataLoss "etcdserver: corrupt cluster".)
        let corrupt = |e: &mvcc::Error| {
            assert!(
                matches!(e, mvcc::Error::Db(crate::mvcc::db::Error::Corrupt { .. })),
                "{e}"
            );
            assert!(e.to_string().contains("corrupt at offset"), "{e}");
        };
        let one = RangeRequest {
            key: b"k001".to_vec(),
            ..Default::default()
        };
        corrupt(&shards[1].range(&one, current).unwrap_err());
        corrupt(&shards[1].get(b"k001", current).unwrap_err());
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            sort_target: SortTarget::Value,
            limit: 10,
            ..Default::default()
        };
        let part = part_request(&all);
        for s in &shards {
            corrupt(&s.range(&part, current).unwrap_err());
        }
        corrupt(&store.range(&all).unwrap_err());
        let put = PutRequest {
            key: b"k000".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        };
        corrupt(&store.put(&put).unwrap_err());
        // A count reads only the in-memory index: still answered.
        let count = RangeRequest {
            count_only: true,
            ..all.clone()
        };
        assert_eq!(shards[0].range(&count, current).unwrap().count, 100);
    });
}

/// `part_request` asked each shard for `limit + 1` keys, which overflowed (a panic in
/// debug builds, a negative limit in release) for `limit = i64::MAX` with a sort target
/// but no sort order across shards.
#[test]
fn range_limit_i64_max_with_sort_across_shards_does_not_overflow() {
    let dir = fresh_dir("limit-max");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        for (i, k) in ["a1", "b2", "m3", "q4", "z5", "z6"].iter().enumerate() {
            let req = PutRequest {
                key: k.as_bytes().to_vec(),
                value: format!("{}", 9 - i).into_bytes(),
                ..Default::default()
            };
            store.put(&req).unwrap();
        }
        store.publish();
        let splits = Arc::new(vec![b"m".to_vec(), b"z".to_vec()]);
        let snap = store.backend().snapshot();
        let current = store.current_revision();
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::boot(i, splits.clone(), snap.clone(), 1, current, 0).unwrap())
            .collect();
        for target in [SortTarget::Value, SortTarget::Version, SortTarget::Mod] {
            let req = RangeRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                limit: i64::MAX,
                sort_target: target,
                sort_order: SortOrder::None,
                ..Default::default()
            };
            let part = part_request(&req);
            assert_eq!(part.limit, i64::MAX);
            let parts: Vec<_> = shards
                .iter()
                .map(|s| s.range(&part, current).unwrap())
                .collect();
            let got = merge(&req, parts, current);
            let want = store.range(&req).unwrap();
            assert_eq!(got.kvs, want.kvs, "{target:?}");
            assert_eq!((got.count, got.more), (6, false));
            assert_eq!((want.count, want.more), (6, false));
        }
    });
}
