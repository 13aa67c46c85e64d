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

/// The split-key hint reads back as written; damaged, unordered or too long, it is
/// not used.
#[test]
fn the_split_key_hint_round_trips_and_damage_is_refused() {
    let splits = vec![b"a".to_vec(), b"m\0x".to_vec(), vec![0xff; 300]];
    let bytes = encode_splits(&splits).unwrap();
    assert_eq!(decode_splits(&bytes), Some(splits.clone()));
    assert_eq!(decode_splits(&[]), Some(Vec::new()));
    // Cut anywhere but at a key's end: refused.
    assert_eq!(decode_splits(&bytes[..bytes.len() - 1]), None);
    assert_eq!(decode_splits(&bytes[..2]), None);
    // Out of order, repeated or empty keys: refused.
    let unordered = encode_splits(&[b"m".to_vec(), b"a".to_vec()]).unwrap();
    assert_eq!(decode_splits(&unordered), None);
    let repeated = encode_splits(&[b"m".to_vec(), b"m".to_vec()]).unwrap();
    assert_eq!(decode_splits(&repeated), None);
    assert_eq!(decode_splits(&encode_splits(&[Vec::new()]).unwrap()), None);
    // Too long to keep.
    assert_eq!(encode_splits(&[vec![b'k'; 70_000]]), None);
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
                let op = random_write(&mut r);
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
            // A rebalance step after the round's changes, most rounds.
            let step = deliver_round(&mut store, &mut shards, &splits, round + 1, &mut r, 3);
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
                let req = random_request(&mut r, current);
                let want = store.range(&req);
                let got = scattered(&shards, &splits, &req, current);
                assert_same_answer(&req, &want, &got);
                // The same read answered with raw kvs (wire bytes), under a roomy or a
                // tight byte bound.
                let mut raw_req = req.clone();
                raw_req.raw_bytes_max = [usize::MAX, 2000, 150][r.below(3) as usize];
                let got = scattered(&shards, &splits, &raw_req, current);
                assert_same_raw_answer(&raw_req, &want, got);
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

/// A part read in slices (`Shard::range_slice`), as the node serves a large one: the
/// same answer as in one go.
fn sliced(
    shard: &Shard,
    req: &RangeRequest,
    at: i64,
    keys_max: usize,
) -> mvcc::Result<RangeResponse> {
    let mut read = mvcc::SliceRead::default();
    let mut from = None;
    loop {
        match shard.range_slice(req, at, from.as_deref(), keys_max, &mut read)? {
            Some(next) => from = Some(next),
            None => return Ok(read.finish(req, at)),
        }
    }
}

/// Issue 23: a read served a slice at a time, with rounds of writes, deletes and
/// rebalance steps applied between its slices, answers as one read at its revision did
/// before them; a compaction past that revision between two slices fails the next one
/// with `Compacted` (the node then reads again), and one below it changes nothing.
#[test]
fn a_read_in_slices_answers_as_of_its_revision_across_rounds() {
    let dir = std::env::temp_dir().join(format!("keel-shard-slices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    block_on(async move {
        let mut store = Store::open(&dir.join("db"), StoreOptions::default())
            .await
            .unwrap();
        store.capture_changes(true);
        store.publish();
        let mut splits = Arc::new(vec![b"k".to_vec(), b"q05".to_vec(), b"z".to_vec()]);
        let snap = store.backend().snapshot();
        let mut shards: Vec<Shard> = (0..4)
            .map(|i| Shard::boot(i, splits.clone(), snap.clone(), 0, 1, 0).unwrap())
            .collect();
        let mut r = Rng(0x51ce5);
        let mut round = 1;
        for _ in 0..200 {
            let op = random_write(&mut r);
            let _ = store.apply(&op);
        }
        deliver_round(&mut store, &mut shards, &splits, round, &mut r, 0);
        let (mut voided, mut whole) = (0, 0);
        for case in 0..600 {
            let at = store.current_revision();
            let mut req = random_request(&mut r, at);
            req.raw_bytes_max = usize::MAX;
            if r.below(2) == 0 {
                req.range_end = vec![0];
            }
            if r.below(2) == 0 {
                // Answered raw; else as random_request made it (sorted, filtered,
                // keys-only or count-only ones decoded or counted, in slices too).
                (req.sort_target, req.keys_only, req.count_only) = (SortTarget::Key, false, false);
                req.sort_order = [SortOrder::None, SortOrder::Ascend][r.below(2) as usize];
                req.min_mod_revision = 0;
                assert!(mvcc::RawKvs::serves(&req));
            }
            let i = r.below(4) as usize;
            let keys_max = r.below(3) as usize + 1;
            let want = shards[i].range(&req, at);
            // Unchanged shard: sliced equals whole.
            let got = sliced(&shards[i], &req, at, keys_max);
            assert_eq!(want.as_ref().ok(), got.as_ref().ok(), "{req:?}");
            // The first slice, then rounds (and perhaps a compaction), then the rest.
            let mut read = mvcc::SliceRead::default();
            let first = shards[i].range_slice(&req, at, None, keys_max, &mut read);
            let Ok(Some(mut from)) = first else { continue };
            let compact = case % 5 == 4;
            for _ in 0..3 {
                for _ in 0..5 {
                    let op = random_write(&mut r);
                    let _ = store.apply(&op);
                }
                if compact {
                    let current = store.current_revision();
                    store.compact(current).unwrap();
                }
                round += 1;
                if let Some(m) = deliver_round(&mut store, &mut shards, &splits, round, &mut r, 0) {
                    splits = m.splits.clone();
                }
                store.compact_step(1000).unwrap();
                for s in &mut shards {
                    while s.compact_step(1000) {}
                }
            }
            let rest = loop {
                match shards[i].range_slice(&req, at, Some(&from), keys_max, &mut read) {
                    Ok(Some(next)) => from = next,
                    Ok(None) => break Ok(read.finish(&req, at)),
                    Err(e) => break Err(e),
                }
            };
            let rev = if req.revision <= 0 { at } else { req.revision };
            if shards[i].compact_revision() > rev {
                assert!(
                    matches!(rest, Err(mvcc::Error::Compacted)),
                    "{req:?}: {rest:?}"
                );
                voided += 1;
            } else {
                assert_eq!(want.ok(), rest.ok(), "{req:?}");
                whole += 1;
            }
        }
        assert!(voided > 5 && whole > 20, "{voided} voided, {whole} whole");
    });
}

/// Publishes the store's state as round `index` and gives it to every shard, with a
/// random rebalance step (a random split key a random way, over a few keys) after its
/// changes in `step_in_4` rounds of 4. Returns the step (its split keys are the new ones).
fn deliver_round(
    store: &mut Store,
    shards: &mut [Shard],
    splits: &Arc<Vec<Vec<u8>>>,
    index: u64,
    r: &mut Rng,
    step_in_4: u64,
) -> Option<Move> {
    store.publish();
    let snap = store.backend().snapshot();
    let changes = store.take_changes();
    let step = (r.below(4) < step_in_4)
        .then(|| {
            let boundary = r.below(3) as usize;
            let d = r.below(40) as i64 - 20;
            let max = r.below(12) as usize + 1;
            Move::plan(&store.index(), splits, boundary, d, max)
        })
        .flatten();
    for s in shards.iter_mut() {
        s.apply_changes(&changes);
        if let Some(m) = &step {
            s.take_move(m);
        }
        s.advance(
            snap.clone(),
            index,
            store.current_revision(),
            store.compact_revision(),
        );
    }
    step
}

/// A random Range at `current` (or a few revisions below).
fn random_request(r: &mut Rng, current: i64) -> RangeRequest {
    let mut req = RangeRequest {
        key: key(r),
        range_end: match r.below(3) {
            0 => vec![0],
            1 => key(r),
            _ => Vec::new(),
        },
        limit: r.below(4) as i64 * 3,
        revision: if r.below(3) == 0 {
            current - r.below(8) as i64
        } else {
            0
        },
        sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][r.below(3) as usize],
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
    req
}

/// `req` served by the shards it touches under `splits`, merged, at `current`.
fn scattered(
    shards: &[Shard],
    splits: &[Vec<u8>],
    req: &RangeRequest,
    current: i64,
) -> mvcc::Result<RangeResponse> {
    let touched = shards_for(splits, &req.key, &req.range_end);
    let part = if touched.len() == 1 {
        req.clone()
    } else {
        part_request(req)
    };
    let parts: Result<Vec<_>, _> = touched.map(|i| shards[i].range(&part, current)).collect();
    parts.map(|mut p| {
        if p.len() == 1 {
            p.pop().unwrap()
        } else {
            merge(req, p, current)
        }
    })
}

fn assert_same_answer(
    req: &RangeRequest,
    want: &mvcc::Result<RangeResponse>,
    got: &mvcc::Result<RangeResponse>,
) {
    match (want, got) {
        (Ok(w), Ok(g)) => {
            // Ties in a non-key sort are in key order in both.
            assert_eq!(w.kvs, g.kvs, "{req:?}");
            assert_eq!((w.count, w.more), (g.count, g.more), "{req:?}");
            assert_eq!(w.header.revision, g.header.revision);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("{req:?}: {want:?} vs {got:?}"),
    }
}

/// `got`, for a request that may be answered raw, against the decoded answer `want`: raw
/// exactly when `RawKvs::serves`, the same kvs in wire bytes, or refused as too large only
/// when the kvs' wire bytes pass the bound.
fn assert_same_raw_answer(
    req: &RangeRequest,
    want: &mvcc::Result<RangeResponse>,
    got: mvcc::Result<RangeResponse>,
) {
    let (w, mut g) = match (want, got) {
        (Ok(w), Ok(g)) => (w, g),
        (want, got) => return assert_same_answer(req, want, &got),
    };
    let serves = mvcc::RawKvs::serves(req);
    assert_eq!(g.raw.is_some(), serves, "{req:?}");
    if let Some(raw) = g.raw.take() {
        assert!(g.kvs.is_empty());
        let bytes: usize = w
            .kvs
            .iter()
            .map(|kv| mvcc::RawKvs::entry_bytes(kv.as_ref().encoded_len()))
            .sum();
        assert_eq!(raw.len(), w.kvs.len(), "{req:?}");
        // A part that passed the bound was larger than it (each part keeps to it).
        if raw.passed_bound() {
            assert!(bytes > req.raw_bytes_max, "{req:?}: {bytes} bytes");
            assert!(raw.total_bytes() >= bytes as u64, "{req:?}");
            g.kvs = w.kvs.clone();
        } else {
            assert_eq!(raw.total_bytes(), bytes as u64, "{req:?}");
            g.kvs = raw.decode().unwrap();
        }
    }
    assert_same_answer(req, want, &Ok(g));
}

/// A random put (most often) or delete of the test's keys.
fn random_write(r: &mut Rng) -> Op {
    match r.below(10) {
        0 => Op::DeleteRange(DeleteRangeRequest {
            key: key(r),
            range_end: if r.below(2) == 0 { Vec::new() } else { key(r) },
            ..Default::default()
        }),
        _ => Op::Put(PutRequest {
            key: key(r),
            value: format!("v{}", r.below(1000)).into_bytes(),
            ..Default::default()
        }),
    }
}

/// The shard of the raft core's own core reads the raft core's index, which is ahead of
/// the shard's round: writes, compactions and rebalance steps the shard has not taken
/// yet are in it. Its reads (alone and merged with replicas' parts) must equal those of
/// a reference store holding exactly the rounds the shards took, and the compaction's
/// sweep must wait for the shard.
#[test]
fn a_shard_reading_the_raft_cores_index_answers_as_of_its_round() {
    let dir = fresh_dir("shared");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        let reference_dir = dir.join("reference");
        std::fs::create_dir_all(&reference_dir).unwrap();
        let mut reference = capturing_store(&reference_dir).await;
        let mut splits = Arc::new(vec![b"k".to_vec(), b"q05".to_vec(), b"z".to_vec()]);
        let snap = store.backend().snapshot();
        let mut shards = vec![Shard::shared(
            0,
            splits.clone(),
            store.shared_index(),
            snap.clone(),
            0,
            1,
            0,
        )];
        for i in 1..4 {
            shards.push(Shard::boot(i, splits.clone(), snap.clone(), 0, 1, 0).unwrap());
        }
        assert!(shards[0].is_shared() && !shards[1].is_shared());
        let mut r = Rng(0x2545f4914f6cdd1d);
        // Ops the store applied that the shards' next round brings (the reference
        // applies them then).
        let mut ahead: Vec<Op> = Vec::new();
        let (mut checked, mut waited) = (0, 0);
        for round in 0..80u64 {
            let last = round == 79;
            let step = deliver_round(&mut store, &mut shards, &splits, round + 1, &mut r, 1);
            for s in &mut shards {
                if r.below(2) == 0 {
                    s.compact_step(r.below(8) as usize + 1);
                }
            }
            if let Some(m) = step {
                splits = m.splits.clone();
            }
            for op in ahead.drain(..) {
                let _ = reference.apply(&op);
            }
            let current = store.current_revision();
            assert_eq!(reference.current_revision(), current);
            if last {
                break;
            }
            // The store goes on ahead of the shards: writes, now and then a compaction
            // (perhaps above the shards' revision), and slices of its sweep.
            for _ in 0..r.below(12) {
                ahead.push(random_write(&mut r));
            }
            if round % 4 == 3 {
                let now = store.current_revision() + ahead.len() as i64;
                ahead.push(Op::Compaction(crate::mvcc::CompactionRequest {
                    revision: now - r.below(6) as i64,
                    ..Default::default()
                }));
            }
            for op in &ahead {
                let _ = store.apply(op);
            }
            waited += usize::from(store.sweep_waits());
            // Now and then the whole sweep at once.
            let slice = [r.below(20) as usize + 1, usize::MAX][r.below(2) as usize];
            store.compact_step(slice).unwrap();
            for _ in 0..30 {
                let req = random_request(&mut r, current);
                let want = reference.range(&req);
                let got = scattered(&shards, &splits, &req, current);
                assert_same_answer(&req, &want, &got);
                checked += 1;
            }
        }
        assert!(waited > 3, "the sweep waited for the shard {waited} times");
        assert!(checked >= 2000);
        // The shards took every round: the sweep goes through.
        store.finish_compaction().unwrap();
        for s in &mut shards {
            while s.compact_step(3) {}
            let mine = store.index().keys().filter(|k| s.owns(k)).count();
            assert_eq!(s.key_count(), mine, "shard {}", s.id());
        }
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

/// A replica built at boot from the db as opened, under the kept split keys, then brought
/// up by the first round's changes and steps, equals one built from the round's snapshot
/// (and reads the same); under other split keys it is refused.
#[test]
fn a_replica_built_from_the_db_as_opened_catches_up_with_the_first_round() {
    let dir = fresh_dir("prebuilt");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        let mut r = Rng(0x6a09e667f3bcc908);
        for _ in 0..300 {
            let _ = store.apply(&random_write(&mut r));
        }
        store.compact(store.current_revision() - 40).unwrap();
        store.compact_step(5).unwrap();
        store.publish();
        let opened = store.backend().snapshot();
        store.take_changes();
        let splits = Arc::new(vec![b"k".to_vec(), b"q05".to_vec(), b"z".to_vec()]);
        let prebuilt: Vec<Prebuilt> = (0..4)
            .map(|i| prebuild(i, splits.to_vec(), &opened).unwrap())
            .collect();
        assert!(prebuilt[1].sweep_pending);
        let other = Arc::new(vec![b"k".to_vec(), b"q06".to_vec(), b"z".to_vec()]);
        let refused = Shard::from_prebuilt(
            1,
            prebuild(1, splits.to_vec(), &opened).unwrap(),
            &other,
            opened.clone(),
        );
        assert!(refused.is_err());
        // What the raft core applies before its first round: writes, a compaction, a
        // step of a rebalance.
        for _ in 0..100 {
            let _ = store.apply(&random_write(&mut r));
        }
        store.compact(store.current_revision() - 10).unwrap();
        store.finish_compaction().unwrap();
        let changes = Arc::new(store.take_changes());
        let step = Arc::new(Move::plan(&store.index(), &splits, 1, 6, 8).unwrap());
        for _ in 0..30 {
            let _ = store.apply(&random_write(&mut r));
        }
        let later = Arc::new(store.take_changes());
        store.publish();
        let round = store.backend().snapshot();
        let (current, compacted) = (store.current_revision(), store.compact_revision());
        let mut caught_up = Vec::new();
        for (i, p) in prebuilt.into_iter().enumerate() {
            let mut s = Shard::from_prebuilt(i, p, &splits, round.clone())
                .ok()
                .unwrap();
            s.apply_chunks(&[changes.clone(), later.clone()], &[(1, step.clone())]);
            s.advance(round.clone(), 7, current, compacted);
            while s.compact_step(4) {}
            caught_up.push(s);
        }
        let mut booted: Vec<Shard> = (0..4)
            .map(|i| {
                Shard::boot(i, step.splits.clone(), round.clone(), 7, current, compacted).unwrap()
            })
            .collect();
        for s in &mut booted {
            while s.compact_step(4) {}
        }
        for (a, b) in caught_up.iter().zip(&booted) {
            assert_eq!(a.key_count(), b.key_count(), "shard {}", a.id());
            assert!(a.serves_as(&step.splits) && a.splits() == b.splits());
        }
        for _ in 0..300 {
            let req = random_request(&mut r, current);
            let want = scattered(&booted, &step.splits, &req, current);
            let got = scattered(&caught_up, &step.splits, &req, current);
            assert_same_answer(&req, &want, &got);
        }
    });
}
