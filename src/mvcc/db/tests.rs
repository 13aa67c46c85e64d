//! Tests of `Db`: a model test against `BTreeMap`, injected I/O errors, crash images,
//! bit flips, readers across reuse and threads, and space use under compaction.

use super::*;
use crate::mvcc::Revision;
use crate::runtime::block_on;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::test_rng::Rng;

type Model = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

fn tmp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("keel-db-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn small_options() -> DbOptions {
    DbOptions {
        map_bytes_max: 1 << 30,
        grow_step_bytes: 64 * 1024,
    }
}

fn empty_model() -> Model {
    vec![BTreeMap::new(); TREE_COUNT]
}

thread_local! {
    static KEY_SPACE: std::cell::Cell<u64> = const { std::cell::Cell::new(1500) };
}

fn key_for(rng: &mut Rng) -> Vec<u8> {
    let id = rng.below(KEY_SPACE.with(|k| k.get()));
    match id % 4 {
        // Fixed 8-byte keys (the common shape) and longer, variable ones.
        0..=2 => id.to_be_bytes().to_vec(),
        _ => {
            let mut k = format!("key/{id:06}/").into_bytes();
            k.resize(k.len() + (id as usize * 7) % 300, b'x');
            k
        }
    }
}

fn value_for(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(100) {
        0..=69 => rng.below(64),
        70..=89 => rng.below(1100),
        90..=97 => 1000 + rng.below(40), // around the inline limit
        _ => 1025 + rng.below(12_000),   // overflow runs
    } as usize;
    let b = rng.next() as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

fn keep_rule(k: &[u8]) -> bool {
    !(k.iter().map(|&b| b as usize).sum::<usize>() + k.len()).is_multiple_of(3)
}

fn assert_same(db: &Db, model: &Model) {
    for t in TreeId::ALL {
        let m = &model[t as usize];
        assert_eq!(db.len(t), m.len() as u64, "len of {t:?}");
        let got: Vec<_> = db.range(t, &[], &[]).map(Result::unwrap).collect();
        assert_eq!(got.len(), m.len(), "range length of {t:?}");
        for ((gk, gv), (mk, mv)) in got.iter().zip(m.iter()) {
            assert_eq!(gk, &&mk[..]);
            assert_eq!(gv, &&mv[..], "value of {mk:?}");
        }
    }
}

fn assert_snapshot(snap: &ReadSnapshot, model: &Model) {
    for t in TreeId::ALL {
        let m = &model[t as usize];
        assert_eq!(snap.len(t), m.len() as u64);
        let got: Vec<_> = snap.range(t, &[], &[]).map(Result::unwrap).collect();
        let want: Vec<_> = m.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, want, "snapshot of {t:?}");
    }
}

fn check_range(rng: &mut Rng, db: &Db, model: &Model) {
    let t = TreeId::ALL[rng.below(TREE_COUNT as u64) as usize];
    let a = key_for(rng);
    let b = if rng.below(4) == 0 {
        Vec::new()
    } else {
        key_for(rng)
    };
    let got: Vec<_> = db
        .range(t, &a, &b)
        .map(Result::unwrap)
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let want: Vec<_> = model[t as usize]
        .iter()
        .filter(|(k, _)| **k >= a && (b.is_empty() || **k < b))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want, "range {a:?}..{b:?} of {t:?}");
}

/// Runs a seeded random op sequence; returns the tallest tree height seen.
fn run_model(seed: u64, steps: usize, key_space: u64) -> u32 {
    KEY_SPACE.with(|k| k.set(key_space));
    block_on(async move {
        let mut height_max = 0;
        let path = tmp_path(&format!("model-{seed}"));
        let mut rng = Rng(seed);
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut model = empty_model();
        let mut committed = model.clone();
        let mut snaps: Vec<(ReadSnapshot, Model)> = Vec::new();
        let mut published = model.clone();
        let mut published_txn = db.published.txn;
        for step in 0..steps {
            let tree = if rng.below(2) == 0 {
                TreeId::Revision
            } else {
                TreeId::ALL[rng.below(TREE_COUNT as u64) as usize]
            };
            let t = tree as usize;
            match rng.below(100) {
                0..=54 => {
                    let (k, v) = (key_for(&mut rng), value_for(&mut rng));
                    db.insert(tree, &k, &v).unwrap();
                    assert_eq!(db.get(tree, &k).unwrap(), Some(&v[..]));
                    model[t].insert(k, v);
                }
                55..=79 => {
                    let k = key_for(&mut rng);
                    let had = model[t].remove(&k).is_some();
                    assert_eq!(db.remove(tree, &k).unwrap(), had, "remove {k:?}");
                    assert_eq!(db.get(tree, &k).unwrap(), None);
                }
                80..=82 => {
                    let (mut a, mut b) = (key_for(&mut rng), key_for(&mut rng));
                    if a > b {
                        std::mem::swap(&mut a, &mut b);
                    }
                    if rng.below(4) == 0 {
                        b.clear();
                    }
                    let removed = db.retain(tree, &a, &b, &mut keep_rule).unwrap();
                    let before = model[t].len();
                    model[t].retain(|k, _| *k < a || (!b.is_empty() && *k >= b) || keep_rule(k));
                    assert_eq!(removed as usize, before - model[t].len(), "retain count");
                }
                83..=89 => db.publish(),
                90..=94 => {
                    let meta = AppMeta {
                        consistent_index: step as u64,
                        ..db.app_meta()
                    };
                    db.set_app_meta(meta);
                    db.commit().await.unwrap();
                    committed = model.clone();
                }
                95..=96 => {
                    // Crash without commit: reopen must show the last commit.
                    for (snap, m) in snaps.drain(..) {
                        assert_snapshot(&snap, &m);
                    }
                    drop(db);
                    db = Db::open(&path, small_options()).await.unwrap();
                    model = committed.clone();
                    published = model.clone();
                    published_txn = db.published.txn;
                    assert_same(&db, &model);
                    db.check().unwrap();
                }
                97 => {
                    // Keep a few snapshots alive across later writes, commits and reuse.
                    if snaps.len() >= 3 {
                        snaps.remove(rng.below(3) as usize);
                    }
                    snaps.push((db.snapshot(), published.clone()));
                }
                _ => check_range(&mut rng, &db, &model),
            }
            if matches!(db.published.txn, t if t != published_txn) {
                published_txn = db.published.txn;
                published = model.clone();
            }
            for (snap, m) in &snaps {
                let t = TreeId::ALL[rng.below(TREE_COUNT as u64) as usize];
                let k = key_for(&mut rng);
                assert_eq!(
                    snap.get(t, &k).unwrap(),
                    m[t as usize].get(&k).map(|v| &v[..])
                );
            }
            height_max = height_max.max(db.roots.iter().map(|r| r.height).max().unwrap());
            if step % 64 == 0 {
                assert_same(&db, &model);
                db.check().unwrap();
                for (snap, m) in &snaps {
                    assert_snapshot(snap, m);
                }
            }
        }
        db.commit().await.unwrap();
        assert_same(&db, &model);
        db.check().unwrap();
        db.close().await.unwrap();
        let db = Db::open(&path, small_options()).await.unwrap();
        assert_same(&db, &model);
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
        height_max
    })
}

#[test]
fn model_random_ops_match_btreemap() {
    for seed in 1..=6 {
        assert!(run_model(seed, 3000, 1500) >= 2);
    }
}

#[test]
fn model_large_key_space_grows_tall_trees() {
    let height = run_model(100, 20_000, 60_000);
    assert!(height >= 3, "height {height}");
}

#[test]
fn model_sequential_appends_pack_leaves() {
    block_on(async {
        let path = tmp_path("append");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let value = [7u8; 256];
        let n = 20_000u64;
        for i in 0..n {
            db.insert(
                TreeId::Revision,
                &Revision::new(i as i64 + 1, 0).encode(),
                &value,
            )
            .unwrap();
        }
        db.commit().await.unwrap();
        db.check().unwrap();
        let s = db.stats();
        let per_leaf = (PAGE_BYTES - 32) / (6 + 16 + 256 + 2);
        let leaves = n.div_ceil(per_leaf as u64);
        // Right-edge appends fill leaves completely: at most a few percent of branches.
        assert!(
            s.pages_in_use <= leaves + leaves / 20 + 2,
            "{s:?} for {leaves} leaves"
        );
        let got: Vec<_> = db
            .range(TreeId::Revision, &[], &[])
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len() as u64, n);
        let _ = std::fs::remove_file(&path);
    });
}

fn fill(db: &mut Db, model: &mut Model, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let t = TreeId::ALL[rng.below(TREE_COUNT as u64) as usize];
        let (k, v) = (key_for(rng), value_for(rng));
        db.insert(t, &k, &v).unwrap();
        model[t as usize].insert(k, v);
    }
}

#[test]
fn failed_fdatasync_poisons_and_reopen_shows_last_commit() {
    block_on(async {
        let path = tmp_path("sync-fault");
        let mut rng = Rng(77);
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut model = empty_model();
        fill(&mut db, &mut model, &mut rng, 300);
        db.commit().await.unwrap();
        let committed = model.clone();
        fill(&mut db, &mut model, &mut rng, 300);
        db.faults.sync_fail_at = Some(db.faults.sync_count + 1);
        assert!(matches!(db.commit().await, Err(Error::Io { .. })));
        assert!(matches!(
            db.insert(TreeId::Lease, b"k", b"v"),
            Err(Error::Poisoned)
        ));
        assert!(matches!(
            db.remove(TreeId::Lease, b"k"),
            Err(Error::Poisoned)
        ));
        assert!(matches!(db.commit().await, Err(Error::Poisoned)));
        drop(db);
        let db = Db::open(&path, small_options()).await.unwrap();
        assert_same(&db, &committed);
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn failed_grow_poisons_and_reopen_shows_last_commit() {
    block_on(async {
        let path = tmp_path("grow-fault");
        let mut rng = Rng(78);
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut model = empty_model();
        fill(&mut db, &mut model, &mut rng, 100);
        db.commit().await.unwrap();
        let committed = model.clone();
        db.w.grow_fail_at = Some(db.w.grow_count + 1);
        let big = vec![1u8; 100_000];
        let mut failed = false;
        for i in 0..100u32 {
            match db.insert(TreeId::Meta, &i.to_be_bytes(), &big) {
                Ok(()) => {}
                Err(Error::Io { .. }) => {
                    failed = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(failed, "the file never had to grow");
        assert!(matches!(
            db.insert(TreeId::Meta, b"x", b"y"),
            Err(Error::Poisoned)
        ));
        assert!(matches!(db.commit().await, Err(Error::Poisoned)));
        drop(db);
        let db = Db::open(&path, small_options()).await.unwrap();
        assert_same(&db, &committed);
        let _ = std::fs::remove_file(&path);
    });
}

fn open_image(image: &Path) -> Db {
    let image = image.to_path_buf();
    block_on(async move { Db::open(&image, small_options()).await.unwrap() })
}

#[test]
fn crash_images_reopen_to_last_commit() {
    let path = tmp_path("crash");
    let images: Vec<PathBuf> = (0..3).map(|i| tmp_path(&format!("crash-img{i}"))).collect();
    let (committed, last) = {
        let (path, images) = (path.clone(), images.clone());
        block_on(async move {
            let mut rng = Rng(5);
            let mut db = Db::open(&path, small_options()).await.unwrap();
            let mut model = empty_model();
            for _ in 0..5 {
                fill(&mut db, &mut model, &mut rng, 200);
                db.commit().await.unwrap();
            }
            let committed = model.clone();
            std::fs::copy(&path, &images[0]).unwrap();
            // Writes and publishes without commit: page cache holds them, meta does not.
            for _ in 0..5 {
                fill(&mut db, &mut model, &mut rng, 200);
                for _ in 0..50 {
                    let t = TreeId::ALL[rng.below(5) as usize];
                    let k = key_for(&mut rng);
                    db.remove(t, &k).unwrap();
                    model[t as usize].remove(&k);
                }
                db.publish();
            }
            std::fs::copy(&path, &images[1]).unwrap();
            let img = images[2].clone();
            db.faults.before_meta = Some(Box::new(move |p: &Path| {
                std::fs::copy(p, &img).unwrap();
            }));
            db.commit().await.unwrap();
            (committed, model)
        })
    };
    for image in &images {
        let db = open_image(image);
        assert_same(&db, &committed);
        db.check().unwrap();
        drop(db);
        let _ = std::fs::remove_file(image);
    }
    let db = open_image(&path);
    assert_same(&db, &last);
    let _ = std::fs::remove_file(&path);
}

/// Builds a committed file with two valid metas; returns (model at the older meta,
/// model at the newer meta).
fn build_for_flips(path: &Path) -> (Model, Model) {
    let path = path.to_path_buf();
    block_on(async move {
        let mut rng = Rng(9);
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut model = empty_model();
        fill(&mut db, &mut model, &mut rng, 400);
        db.commit().await.unwrap();
        let older = model.clone();
        fill(&mut db, &mut model, &mut rng, 50);
        db.commit().await.unwrap();
        (older, model)
    })
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn try_open(path: &Path) -> Result<Db> {
    let path = path.to_path_buf();
    block_on(async move { Db::open(&path, small_options()).await })
}

#[test]
fn bit_flips_are_detected_or_harmless() {
    let path = tmp_path("flips");
    let (older, newer) = build_for_flips(&path);
    let clean = std::fs::read(&path).unwrap();
    let map_meta = |slot: u64| {
        let p = &clean[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
        decode_meta(p, slot, (clean.len() / PAGE_BYTES) as u64)
    };
    let (m0, m1) = (map_meta(0).unwrap(), map_meta(1).unwrap());
    let newest = if m0.txn > m1.txn { m0 } else { m1 };
    let root = newest.roots[TreeId::Revision as usize].page;
    assert_ne!(root, 0);

    // A flipped byte in a reachable page: Corrupt, naming that page's offset.
    flip(&path, root * PAGE_BYTES as u64 + 1000);
    match try_open(&path) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, root * PAGE_BYTES as u64),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("flip in root page not detected"),
    }

    // Every page: a flip is either detected as Corrupt or the page was unreachable.
    let mut rng = Rng(3);
    let mut detected = 0;
    for id in 2..newest.high_water {
        std::fs::write(&path, &clean).unwrap();
        flip(&path, id * PAGE_BYTES as u64 + rng.below(PAGE_BYTES as u64));
        match try_open(&path) {
            Err(Error::Corrupt { offset, .. }) => {
                // The damaged page itself, or the overflow run it belongs to.
                let at = offset as usize;
                let first = &clean[at..at + PAGE_BYTES];
                let in_run = page::kind(first) == page::KIND_OVERFLOW
                    && offset / PAGE_BYTES as u64 + page::overflow_pages(first) > id;
                assert!(
                    offset == id * PAGE_BYTES as u64 || in_run,
                    "page {id}: {offset}"
                );
                detected += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(db) => db.check().unwrap(),
        }
    }
    assert!(detected > 10, "only {detected} flips detected");

    // The newest meta damaged: the older one is used.
    std::fs::write(&path, &clean).unwrap();
    flip(&path, (newest.txn % 2) * PAGE_BYTES as u64 + 60);
    let db = try_open(&path).unwrap();
    assert_same(&db, &older);
    drop(db);
    // The older meta damaged: the newer one is used.
    std::fs::write(&path, &clean).unwrap();
    flip(&path, (1 - newest.txn % 2) * PAGE_BYTES as u64 + 60);
    let db = try_open(&path).unwrap();
    assert_same(&db, &newer);
    drop(db);
    // Both damaged: Corrupt.
    flip(&path, (newest.txn % 2) * PAGE_BYTES as u64 + 100);
    assert!(matches!(
        try_open(&path),
        Err(Error::Corrupt { offset: 0, .. })
    ));
    let _ = std::fs::remove_file(&path);
}

/// A power cut can leave the file a few sectors past a whole page (its growth lost, part
/// of a later write kept). Past the newest meta's high-water mark that tail is cut off and
/// the db opens whole; a file too short for a meta's pages falls back to the older meta or
/// is refused, never read past its end.
#[test]
fn a_torn_last_page_past_the_high_water_mark_is_cut_off() {
    let path = tmp_path("torn-tail");
    let (older, newer) = build_for_flips(&path);
    let clean = std::fs::read(&path).unwrap();
    let pages = |slot: u64| {
        let p = &clean[slot as usize * PAGE_BYTES..(slot as usize + 1) * PAGE_BYTES];
        decode_meta(p, slot, (clean.len() / PAGE_BYTES) as u64).unwrap()
    };
    let (m0, m1) = (pages(0), pages(1));
    let newest = if m0.txn > m1.txn { m0 } else { m1 };
    let oldest = if m0.txn > m1.txn { m1 } else { m0 };
    let hw = newest.high_water.max(oldest.high_water) * PAGE_BYTES as u64;
    let set_len = |len: u64| {
        std::fs::write(&path, &clean).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len).unwrap();
    };

    // Torn tails past both high-water marks: the newest state, a whole file afterwards,
    // and writes and a reopen work.
    for tail in [512, 1536, PAGE_BYTES as u64 - 512] {
        for len in [hw + tail, hw + PAGE_BYTES as u64 + tail] {
            set_len(len);
            let p = path.clone();
            let newer = newer.clone();
            block_on(async move {
                let mut db = Db::open(&p, small_options()).await.unwrap();
                assert_same(&db, &newer);
                assert_eq!(std::fs::metadata(&p).unwrap().len() % PAGE_BYTES as u64, 0);
                let mut model = newer.clone();
                fill(&mut db, &mut model, &mut Rng(len), 50);
                db.commit().await.unwrap();
                drop(db);
                let db = Db::open(&p, small_options()).await.unwrap();
                assert_same(&db, &model);
                db.check().unwrap();
            });
        }
    }

    // Cut inside the newest meta's pages: its state cannot be opened.
    let newest_end = newest.high_water * PAGE_BYTES as u64;
    for len in [newest_end - 512, newest_end - PAGE_BYTES as u64 + 512] {
        set_len(len);
        match try_open(&path) {
            Ok(db) => {
                assert!(oldest.high_water * PAGE_BYTES as u64 <= len - len % PAGE_BYTES as u64);
                assert_same(&db, &older);
            }
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // Less than two whole pages: refused.
    for len in [512, PAGE_BYTES as u64 + 3584] {
        set_len(len);
        assert!(matches!(try_open(&path), Err(Error::Corrupt { .. })));
    }
    let _ = std::fs::remove_file(&path);
}

/// Damage that keeps checksums valid (a buggy writer, not the disk): structure checks
/// must catch it or the file must read without panicking.
#[test]
fn resealed_damage_is_detected_or_readable() {
    let path = tmp_path("reseal");
    build_for_flips(&path);
    let clean = std::fs::read(&path).unwrap();
    let pages = (clean.len() / PAGE_BYTES) as u64;
    let mut rng = Rng(17);
    let (mut corrupt, mut readable) = (0, 0);
    for _ in 0..400 {
        let mut bytes = clean.clone();
        let id = 2 + rng.below(pages - 2);
        let at = id as usize * PAGE_BYTES;
        let page = &mut bytes[at..at + PAGE_BYTES];
        if page::kind(page) != page::KIND_LEAF && page::kind(page) != page::KIND_BRANCH {
            continue;
        }
        for _ in 0..1 + rng.below(3) {
            // Mostly the header and slot array, where structure lives.
            let off = if rng.below(2) == 0 {
                rng.below(96)
            } else {
                rng.below(4096)
            };
            page[off as usize] ^= 1 << rng.below(8);
        }
        page::seal(page);
        std::fs::write(&path, &bytes).unwrap();
        match try_open(&path) {
            Err(Error::Corrupt { .. }) => corrupt += 1,
            Err(e) => panic!("unexpected error {e}"),
            Ok(db) => {
                let _ = db.check();
                for t in TreeId::ALL {
                    let n = db.range(t, &[], &[]).map(Result::unwrap).count();
                    assert_eq!(n as u64, db.len(t));
                }
                readable += 1;
            }
        }
    }
    assert!(corrupt > 50, "{corrupt} corrupt, {readable} readable");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn check_page_bytes_never_panics() {
    let mut rng = Rng(11);
    let mut page = vec![0u8; PAGE_BYTES];
    for round in 0..3000 {
        if round % 3 == 0 {
            page.iter_mut().for_each(|b| *b = rng.next() as u8);
        } else {
            // A plausible header with random cells.
            page[4] = [page::KIND_LEAF, page::KIND_BRANCH, page::KIND_OVERFLOW][round % 3];
            page[5] = (round % 2) as u8;
            page[6] = rng.below(20) as u8;
            page[7] = 0;
            let at = rng.below(PAGE_BYTES as u64) as usize;
            page[at] = rng.next() as u8;
        }
        let _ = check_page_bytes(&page);
        page::seal(&mut page);
        let _ = check_page_bytes(&page);
    }
    assert!(check_page_bytes(&page[..100]).is_err());
}

#[test]
fn snapshot_survives_reuse_and_crosses_threads() {
    block_on(async {
        let path = tmp_path("readers");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let keys: Vec<[u8; 8]> = (0..2000u64).map(|i| i.to_be_bytes()).collect();
        for k in &keys {
            db.insert(TreeId::Revision, k, &[1u8; 100]).unwrap();
        }
        db.insert(TreeId::Auth, b"big", &vec![9u8; 20_000]).unwrap();
        db.commit().await.unwrap();
        let snap = db.snapshot();
        let thread_snap = snap.clone();
        let reader = std::thread::spawn(move || {
            for _ in 0..50 {
                assert_eq!(thread_snap.len(TreeId::Revision), 2000);
                for (i, (k, v)) in thread_snap
                    .range(TreeId::Revision, &[], &[])
                    .map(Result::unwrap)
                    .enumerate()
                {
                    assert_eq!(k, &(i as u64).to_be_bytes()[..]);
                    assert_eq!(v, &[1u8; 100][..]);
                }
                assert_eq!(
                    thread_snap.get(TreeId::Auth, b"big").unwrap(),
                    Some(&vec![9u8; 20_000][..])
                );
            }
        });
        let mut file_after_first = 0;
        for round in 2..40u8 {
            for k in &keys {
                db.insert(TreeId::Revision, k, &[round; 100]).unwrap();
            }
            db.insert(TreeId::Auth, b"big", &vec![round; 20_000])
                .unwrap();
            db.commit().await.unwrap();
            if round == 3 {
                file_after_first = db.stats().file_bytes;
            }
        }
        assert!(
            db.stats().pages_pending > 0,
            "old pages must wait for the snapshot"
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                snap.get(TreeId::Revision, k).unwrap(),
                Some(&[1u8; 100][..]),
                "key {i}"
            );
            assert_eq!(db.get(TreeId::Revision, k).unwrap(), Some(&[39u8; 100][..]));
        }
        reader.join().unwrap();
        drop(snap);
        // With the snapshot gone, pages are reused: the file stops growing.
        for round in 40..60u8 {
            for k in &keys {
                db.insert(TreeId::Revision, k, &[round; 100]).unwrap();
            }
            db.commit().await.unwrap();
        }
        let grown = db.stats().file_bytes;
        for round in 60..80u8 {
            for k in &keys {
                db.insert(TreeId::Revision, k, &[round; 100]).unwrap();
            }
            db.commit().await.unwrap();
            // Snapshots taken and dropped at once do not hold pages back.
            let s = db.snapshot();
            assert_eq!(
                s.get(TreeId::Revision, &keys[5]).unwrap(),
                Some(&[round; 100][..])
            );
        }
        db.check().unwrap();
        assert!(file_after_first > 0);
        assert_eq!(
            db.stats().file_bytes,
            grown,
            "file grew although pages were free"
        );
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn young_pages_are_reused_between_commits_unless_a_reader_holds_them() {
    block_on(async {
        let path = tmp_path("young");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let key = |i: u64| i.to_be_bytes();
        for i in 0..2000u64 {
            db.insert(TreeId::Revision, &key(i), &[1u8; 100]).unwrap();
        }
        db.commit().await.unwrap();
        let base = db.size_bytes();
        // Appends, each published as its own round (as the raft core does), no commit:
        // every round copies the rightmost path; the copies of earlier rounds are young
        // (no meta on disk reaches them) and come back once published past.
        for i in 2000..2300u64 {
            db.insert(TreeId::Revision, &key(i), &[2u8; 100]).unwrap();
            db.publish();
        }
        let grown = db.size_bytes() - base;
        // 300 × 100-byte values fill ~8 new leaves; 300 rounds of path copies without
        // reuse would be ~600 pages.
        assert!(
            grown <= 64 * PAGE_BYTES as u64,
            "grew {} pages in 300 rounds",
            grown / PAGE_BYTES as u64
        );
        // A reader holding a round keeps its pages: later rounds must not reuse them.
        let snap = db.snapshot();
        for i in 2300..2600u64 {
            db.insert(TreeId::Revision, &key(i), &[3u8; 100]).unwrap();
            db.insert(TreeId::Revision, &key(i - 2300), &[3u8; 100])
                .unwrap();
            db.publish();
        }
        assert_eq!(snap.len(TreeId::Revision), 2300);
        for i in 0..2300u64 {
            let want: &[u8] = if i < 2000 { &[1u8; 100] } else { &[2u8; 100] };
            assert_eq!(snap.get(TreeId::Revision, &key(i)).unwrap(), Some(want));
        }
        drop(snap);
        db.check().unwrap();
        db.commit().await.unwrap();
        db.close().await.unwrap();
        let db = Db::open(&path, small_options()).await.unwrap();
        db.check().unwrap();
        assert_eq!(db.len(TreeId::Revision), 2600);
        assert_eq!(
            db.get(TreeId::Revision, &key(5)).unwrap(),
            Some(&[3u8; 100][..])
        );
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn compaction_keeps_file_within_twice_payload() {
    block_on(async {
        let path = tmp_path("space");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let key_count = 1000u64;
        let batch = 100u64;
        let mut latest = vec![Revision::default(); key_count as usize];
        let mut value = [0u8; 256];
        for main in 1..=300i64 {
            for j in 0..batch {
                let id = ((main as u64 - 1) * batch + j) % key_count;
                let rev = Revision::new(main, j as i64);
                value[..8].copy_from_slice(&id.to_be_bytes());
                db.insert(TreeId::Revision, &rev.encode(), &value).unwrap();
                latest[id as usize] = rev;
            }
            // Compaction at `main`: drop every revision that is not its key's latest.
            let end = Revision::new(main, 0).encode();
            let mut latest_set = latest.clone();
            latest_set.sort();
            db.retain(TreeId::Revision, &[], &end, &mut |k| {
                latest_set
                    .binary_search(&Revision::decode(k).unwrap())
                    .is_ok()
            })
            .unwrap();
            db.commit().await.unwrap();
            let s = db.stats();
            if main > 10 {
                assert_eq!(db.len(TreeId::Revision), key_count);
            }
            assert!(
                s.file_bytes <= 2 * s.payload_bytes + 256 * 1024,
                "round {main}: {s:?}"
            );
            if main % 50 == 0 {
                db.check().unwrap();
            }
        }
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn limits_and_long_range_ends() {
    block_on(async {
        let path = tmp_path("limits");
        // Sizes that are not whole pages are rounded down to pages.
        let options = DbOptions {
            map_bytes_max: (1 << 30) + 100,
            grow_step_bytes: 10_000,
        };
        let mut db = Db::open(&path, options.clone()).await.unwrap();
        let long = vec![b'a'; KEY_BYTES_MAX + 1];
        assert!(matches!(
            db.insert(TreeId::Meta, &long, b""),
            Err(Error::KeyTooLarge { .. })
        ));
        let max_key = vec![b'a'; KEY_BYTES_MAX];
        db.insert(TreeId::Meta, &max_key, b"max").unwrap();
        db.insert(TreeId::Meta, b"a", b"short").unwrap();
        db.insert(TreeId::Meta, b"b", b"after").unwrap();
        // `end` longer than any key: the longest key that is its prefix is still < end.
        let got: Vec<_> = db
            .range(TreeId::Meta, b"", &long)
            .map(Result::unwrap)
            .map(|(k, _)| k.len())
            .collect();
        assert_eq!(got, vec![1, KEY_BYTES_MAX]);
        assert!(!db.remove(TreeId::Meta, &long).unwrap());
        db.insert(TreeId::Meta, b"", b"empty key").unwrap();
        assert_eq!(db.get(TreeId::Meta, b"").unwrap(), Some(&b"empty key"[..]));
        assert_eq!(
            db.range(TreeId::Meta, b"", b"").map(Result::unwrap).count(),
            4
        );
        db.commit().await.unwrap();
        db.check().unwrap();
        assert_eq!(db.stats().file_bytes % PAGE_BYTES as u64, 0);
        drop(db);
        let db = Db::open(&path, options).await.unwrap();
        assert_eq!(db.get(TreeId::Meta, &max_key).unwrap(), Some(&b"max"[..]));
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn map_full_is_clean_and_recoverable() {
    block_on(async {
        let path = tmp_path("mapfull");
        let options = DbOptions {
            map_bytes_max: 256 * 1024,
            grow_step_bytes: 64 * 1024,
        };
        let mut db = Db::open(&path, options.clone()).await.unwrap();
        let mut model = empty_model();
        let mut i = 0u64;
        loop {
            let v = vec![i as u8; 300 + (i as usize % 3) * 1000];
            match db.insert(TreeId::Revision, &i.to_be_bytes(), &v) {
                Ok(()) => {
                    model[0].insert(i.to_be_bytes().to_vec(), v);
                }
                Err(Error::MapFull) => break,
                Err(e) => panic!("unexpected {e}"),
            }
            i += 1;
            assert!(i < 10_000, "never full");
        }
        assert_same(&db, &model);
        db.check().unwrap();
        db.commit().await.unwrap();
        // A remove also needs fresh pages (copy-on-write): refused cleanly too.
        match db.remove(TreeId::Revision, &0u64.to_be_bytes()) {
            Ok(true) => {
                model[0].remove(&0u64.to_be_bytes()[..]);
            }
            Err(Error::MapFull) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_same(&db, &model);
        db.commit().await.unwrap();
        drop(db);
        // The remedy: reopen with a larger map; everything committed is there.
        let options = DbOptions {
            map_bytes_max: 1 << 20,
            ..options
        };
        let mut db = Db::open(&path, options.clone()).await.unwrap();
        assert_same(&db, &model);
        db.insert(TreeId::Lease, b"after", &[1; 500]).unwrap();
        model[1].insert(b"after".to_vec(), vec![1; 500]);
        db.commit().await.unwrap();
        db.check().unwrap();
        drop(db);
        let db = Db::open(&path, options).await.unwrap();
        assert_same(&db, &model);
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn removing_everything_frees_every_page() {
    block_on(async {
        let path = tmp_path("shrink");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut rng = Rng(21);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for i in 0..6000u64 {
            let mut k = (rng.next() | 1).to_be_bytes().to_vec();
            k.resize(8 + (i % 200) as usize, b'k');
            let v = vec![i as u8; (rng.below(40) + if i % 50 == 0 { 3000 } else { 0 }) as usize];
            db.insert(TreeId::Lease, &k, &v).unwrap();
            keys.push(k);
        }
        db.commit().await.unwrap();
        assert!(db.roots[TreeId::Lease as usize].height >= 3);
        // Remove in random order, across publishes and commits.
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (n, k) in keys.iter().enumerate() {
            assert!(db.remove(TreeId::Lease, k).unwrap());
            if n % 500 == 0 {
                db.check().unwrap();
                db.commit().await.unwrap();
            }
        }
        assert_eq!(db.roots[TreeId::Lease as usize], TreeRoot::default());
        assert_eq!(db.stats().pages_in_use, 0);
        db.check().unwrap();
        // Same with retain: everything in range dropped.
        for i in 0..3000u64 {
            db.insert(TreeId::Revision, &i.to_be_bytes(), &[1; 200])
                .unwrap();
        }
        db.commit().await.unwrap();
        let removed = db
            .retain(TreeId::Revision, &[], &[], &mut |_| false)
            .unwrap();
        assert_eq!(removed, 3000);
        assert_eq!(db.roots[TreeId::Revision as usize], TreeRoot::default());
        db.commit().await.unwrap();
        db.check().unwrap();
        assert_eq!(db.stats().pages_in_use, 0);
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn retain_of_a_prefix_rewrites_only_its_pages() {
    block_on(async {
        let path = tmp_path("retain-prefix");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let n = 60_000i64;
        for main in 1..=n {
            db.insert(
                TreeId::Revision,
                &Revision::new(main, 0).encode(),
                &[5; 200],
            )
            .unwrap();
        }
        db.commit().await.unwrap();
        assert_eq!(db.roots[0].height, 3);
        let end = Revision::new(1001, 0).encode();
        // Keep every 7th revision below 1001: the first leaves are rewritten packed.
        let removed = db
            .retain(TreeId::Revision, &[], &end, &mut |k| {
                Revision::decode(k).unwrap().main % 7 == 0
            })
            .unwrap();
        assert_eq!(removed, 1000 - 1000 / 7);
        let written = db.w.dirty.len();
        // ~56 leaves lost entries and pack into ~8; of ~23 branches only the first and
        // the root are new.
        assert!(written <= 12, "{written} pages written");
        db.check().unwrap();
        assert_eq!(db.len(TreeId::Revision), (n - 1000 + 1000 / 7) as u64);
        let first: Vec<_> = db
            .range(TreeId::Revision, &[], &[])
            .map(Result::unwrap)
            .take(3)
            .map(|(k, _)| Revision::decode(k))
            .collect();
        assert_eq!(first, [7, 14, 21].map(|m| Some(Revision::new(m, 0))));
        db.commit().await.unwrap();
        drop(db);
        let db = Db::open(&path, small_options()).await.unwrap();
        assert_eq!(db.len(TreeId::Revision), (n - 1000 + 1000 / 7) as u64);
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn snapshots_stream_to_a_reader_thread_while_pages_are_reused() {
    block_on(async {
        let path = tmp_path("stream");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u8, ReadSnapshot)>(2);
        let reader = std::thread::spawn(move || {
            let mut seen = 0;
            for (round, snap) in rx {
                // Each snapshot is one round: every key holds that round's value. Read it
                // slowly, so the writer runs ahead and frees (and would reuse) its pages.
                assert_eq!(snap.len(TreeId::Revision), 500);
                for _ in 0..3 {
                    for (k, v) in snap.range(TreeId::Revision, &[], &[]).map(Result::unwrap) {
                        assert_eq!(k.len(), 8);
                        assert!(v.iter().all(|&b| b == round), "round {round}");
                        assert_eq!(v.len(), 64 + round as usize * 10);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                seen += 1;
            }
            seen
        });
        for round in 0..=250u8 {
            let value = vec![round; 64 + round as usize * 10];
            for k in 0..500u64 {
                db.insert(TreeId::Revision, &k.to_be_bytes(), &value)
                    .unwrap();
            }
            if round % 4 == 0 {
                db.publish();
            } else {
                db.commit().await.unwrap();
            }
            let snap = db.snapshot();
            // Keep at most a few in flight: older ones are dropped by the reader, and
            // their pages become reusable while newer ones are still being read.
            tx.send((round, snap)).unwrap();
        }
        drop(tx);
        assert_eq!(reader.join().unwrap(), 251);
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn overwriting_large_values_reuses_runs() {
    block_on(async {
        let path = tmp_path("runs");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut rng = Rng(8);
        let mut settled = 0;
        for round in 0..120u32 {
            for k in 0..200u32 {
                let len = 5_000 + rng.below(20_000) as usize;
                db.insert(TreeId::Revision, &k.to_be_bytes(), &vec![round as u8; len])
                    .unwrap();
            }
            db.commit().await.unwrap();
            let s = db.stats();
            // Everything is rewritten each commit, and freed pages wait two commits (the
            // older meta stays openable): live + 2 rounds pending + slack.
            assert!(
                s.file_bytes <= 4 * s.payload_bytes + (1 << 20),
                "round {round}: {s:?}"
            );
            if round == 30 {
                settled = s.file_bytes;
            }
        }
        // Freed runs are found again: the file stops growing.
        assert!(
            db.stats().file_bytes <= settled + settled / 10,
            "{:?}",
            db.stats()
        );
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

/// Rough single-core numbers (run with `--ignored --nocapture`; dev profile is opt-level 1).
#[test]
#[ignore]
fn bench_appends_and_point_gets() {
    block_on(async {
        let path = tmp_path("bench");
        let mut db = Db::open(&path, DbOptions::default()).await.unwrap();
        let n = 1_000_000u64;
        let value = [3u8; 256];
        let t0 = std::time::Instant::now();
        for i in 0..n {
            db.insert(TreeId::Revision, &i.to_be_bytes(), &value)
                .unwrap();
            if i % 1000 == 999 {
                db.publish();
            }
        }
        let appends = t0.elapsed();
        db.commit().await.unwrap();
        let mut rng = Rng(1);
        let snap = db.snapshot();
        let t0 = std::time::Instant::now();
        let mut found = 0;
        for _ in 0..n {
            found += snap
                .get(TreeId::Revision, &rng.below(n).to_be_bytes())
                .unwrap()
                .is_some() as u64;
        }
        let gets = t0.elapsed();
        assert_eq!(found, n);
        println!(
            "appends: {:.0}/s, point gets: {:.0}/s, {:?}",
            n as f64 / appends.as_secs_f64(),
            n as f64 / gets.as_secs_f64(),
            db.stats()
        );
        let _ = std::fs::remove_file(&path);
    });
}

// ---- bit rot after open ---------------------------------------------------------------

/// Writes `bytes` at `offset` of the file through a second handle. The mapping is shared
/// with the page cache, so the open `Db` sees them at once: a page read back damaged from
/// the disk after the page cache dropped it.
fn write_through(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// The first page of the overflow run or the page itself that holds byte `offset` of a
/// clean image, for checking where an error points.
fn page_start_of(clean: &[u8], offset: u64) -> impl Fn(u64) -> bool + '_ {
    let id = offset / PAGE_BYTES as u64;
    move |reported: u64| {
        if reported == id * PAGE_BYTES as u64 {
            return true;
        }
        let at = reported as usize;
        let first = &clean[at..at + PAGE_BYTES];
        page::kind(first) == page::KIND_OVERFLOW
            && reported / PAGE_BYTES as u64 + page::overflow_pages(first) > id
    }
}

/// A read's answer as owned bytes, and a whole range's entries.
type Got = Result<Option<Vec<u8>>>;
type Entries = Vec<Result<(Vec<u8>, Vec<u8>)>>;

/// Every read through `get` and `range` either answers as `model` says or fails with `Corrupt`, for
/// which `blame` must hold; never a panic, never wrong data. Returns the errors seen.
fn reads_are_right_or_corrupt(
    get: &dyn Fn(TreeId, &[u8]) -> Got,
    range: &dyn Fn(TreeId) -> Entries,
    model: &Model,
    blame: &dyn Fn(&Error) -> bool,
) -> usize {
    let mut errors = 0;
    for t in TreeId::ALL {
        let m = &model[t as usize];
        for (k, v) in m {
            match get(t, k) {
                Ok(got) => assert_eq!(got.as_ref(), Some(v), "get {k:?} of {t:?}"),
                Err(e) => {
                    assert!(blame(&e), "get {k:?} of {t:?}: {e}");
                    errors += 1;
                }
            }
        }
        let got = range(t);
        let ok = got.iter().take_while(|r| r.is_ok()).count();
        assert!(got.len() <= ok + 1, "range of {t:?} goes on after an error");
        for (r, (mk, mv)) in got.iter().zip(m.iter()) {
            match r {
                Ok((k, v)) => assert_eq!((k, v), (mk, mv), "range of {t:?}"),
                Err(e) => {
                    assert!(blame(e), "range of {t:?}: {e}");
                    errors += 1;
                }
            }
        }
        if got.len() == ok {
            assert_eq!(ok, m.len(), "range of {t:?} ended early without an error");
        }
    }
    errors
}

fn snapshot_get(snap: &ReadSnapshot) -> impl Fn(TreeId, &[u8]) -> Got + '_ {
    move |t, k| snap.get(t, k).map(|v| v.map(<[u8]>::to_vec))
}

fn snapshot_range(snap: &ReadSnapshot) -> impl Fn(TreeId) -> Entries + '_ {
    move |t| {
        snap.range(t, &[], &[])
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }
}

fn writer_get(db: &Db) -> impl Fn(TreeId, &[u8]) -> Got + '_ {
    move |t, k| db.get(t, k).map(|v| v.map(<[u8]>::to_vec))
}

fn writer_range(db: &Db) -> impl Fn(TreeId) -> Entries + '_ {
    move |t| {
        db.range(t, &[], &[])
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }
}

/// A page damaged after open (written through the file) is an error on the reads that
/// visit it: `get`, `range`, the writer's own reads and writes, and `check`, each naming
/// the file and the page's offset; a read elsewhere still answers, and repairing the
/// page makes it readable again. Nothing panics.
#[test]
fn flipped_page_after_open_is_corrupt_on_read() {
    let path = tmp_path("rot");
    let (_, model) = build_for_flips(&path);
    block_on(async move {
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let snap = db.snapshot();
        // A leaf of the Revision tree: the leftmost one, and its first key.
        let root = db.roots[TreeId::Revision as usize];
        assert!(root.height >= 2, "want a branch above the leaf: {root:?}");
        let map = db.w.map.map().clone();
        let mut leaf = root.page;
        for _ in 1..root.height {
            leaf = page::branch_child(map.page(leaf), 0);
        }
        let key = page::leaf_key(map.page(leaf), 0).to_vec();
        let last_key = model[TreeId::Revision as usize]
            .keys()
            .last()
            .unwrap()
            .clone();
        let offset = leaf * PAGE_BYTES as u64;
        let clean = map.page(leaf)[3000];
        let before = corruptions_found();
        write_through(&path, offset + 3000, &[clean ^ 0x08]);

        let is_this_page = |e: &Error| {
            matches!(e, Error::Corrupt { path: p, offset: o, what }
                if p == &path && *o == offset && what.contains("checksum"))
        };
        let e = snap.get(TreeId::Revision, &key).unwrap_err();
        assert!(is_this_page(&e), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains(&format!("offset {offset}")), "{e}");
        let e = db.get(TreeId::Revision, &key).unwrap_err();
        assert!(is_this_page(&e), "{e}");
        // The range stops at the damaged leaf: one error, then nothing.
        let got: Vec<_> = snap.range(TreeId::Revision, &[], &[]).collect();
        assert_eq!(got.len(), 1);
        assert!(is_this_page(got[0].as_ref().unwrap_err()));
        // A key in another leaf still reads.
        let want = &model[TreeId::Revision as usize][&last_key];
        assert_eq!(
            snap.get(TreeId::Revision, &last_key).unwrap(),
            Some(&want[..])
        );
        // The writer refuses to copy the damaged page into a new version of it.
        let e = db.insert(TreeId::Revision, &key, b"new").unwrap_err();
        assert!(is_this_page(&e), "{e}");
        let e = db.remove(TreeId::Revision, &key).unwrap_err();
        assert!(is_this_page(&e), "{e}");
        assert!(matches!(db.check(), Err(Error::Corrupt { offset: o, .. }) if o == offset));
        assert!(corruptions_found() >= before + 5);

        write_through(&path, offset + 3000, &[clean]);
        let want = &model[TreeId::Revision as usize][&key];
        assert_eq!(snap.get(TreeId::Revision, &key).unwrap(), Some(&want[..]));
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

/// Every page of the file in turn, a byte flipped after open: every get and range of
/// every tree, through a snapshot and through the writer, answers right or fails with
/// `Corrupt` naming that page (or the overflow run it belongs to).
#[test]
fn flip_in_any_page_after_open_is_detected_or_harmless_on_read() {
    let path = tmp_path("rot-every");
    let (_, model) = build_for_flips(&path);
    let clean = std::fs::read(&path).unwrap();
    block_on(async move {
        let db = Db::open(&path, small_options()).await.unwrap();
        let snap = db.snapshot();
        let mut rng = Rng(23);
        let mut detected = 0;
        for id in 2..db.w.high_water {
            let offset = id * PAGE_BYTES as u64 + rng.below(PAGE_BYTES as u64);
            let byte = clean[offset as usize];
            write_through(&path, offset, &[byte ^ (1 << rng.below(8))]);
            let here = page_start_of(&clean, offset);
            let blame = |e: &Error| matches!(e, Error::Corrupt { offset: o, .. } if here(*o));
            let errors = reads_are_right_or_corrupt(
                &snapshot_get(&snap),
                &snapshot_range(&snap),
                &model,
                &blame,
            ) + reads_are_right_or_corrupt(
                &writer_get(&db),
                &writer_range(&db),
                &model,
                &blame,
            );
            detected += (errors > 0) as usize;
            write_through(&path, offset, &[byte]);
        }
        // Most pages of this file are reachable.
        assert!(
            detected * 2 > db.w.high_water as usize,
            "{detected} detected"
        );
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

/// Bit rot fuzzing: random bytes of random pages overwritten after open, then random
/// reads and writes. Nothing panics; a read answers as the model says or fails with
/// `Corrupt`; a failed write leaves the Db usable (or, after a remove or retain that had
/// begun changing it, poisoned). `KEEL_BITROT_SEEDS` runs more seeds.
#[test]
fn random_bit_rot_never_panics_and_never_reads_wrong_data() {
    let path = tmp_path("rot-fuzz");
    let (_, clean_model) = build_for_flips(&path);
    let clean = std::fs::read(&path).unwrap();
    let seeds: u64 = std::env::var("KEEL_BITROT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let (mut corrupt, mut poisoned) = (0, 0);
    for seed in 0..seeds {
        std::fs::write(&path, &clean).unwrap();
        let path = path.clone();
        let mut model = clean_model.clone();
        let (c, p) = block_on(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9) + 1);
            let mut db = Db::open(&path, small_options()).await.unwrap();
            let pages = db.w.file_pages();
            for _ in 0..1 + rng.below(4) {
                let id = 2 + rng.below(pages - 2);
                let off = match rng.below(3) {
                    0 => rng.below(64),  // the header
                    1 => rng.below(256), // the slot array
                    _ => rng.below(PAGE_BYTES as u64),
                };
                write_through(&path, id * PAGE_BYTES as u64 + off, &[rng.next() as u8]);
            }
            let mut snap = db.snapshot();
            let mut snap_model = model.clone();
            let (mut corrupt, mut poisoned) = (0, false);
            let any = |e: &Error| matches!(e, Error::Corrupt { .. });
            for _ in 0..60 {
                let t = TreeId::ALL[rng.below(TREE_COUNT as u64) as usize];
                let k = key_for(&mut rng);
                match rng.below(10) {
                    0..=2 => match snap.get(t, &k) {
                        Ok(v) => assert_eq!(v, snap_model[t as usize].get(&k).map(|v| &v[..])),
                        Err(e) => {
                            assert!(any(&e), "{e}");
                            corrupt += 1;
                        }
                    },
                    3 => {
                        corrupt += reads_are_right_or_corrupt(
                            &snapshot_get(&snap),
                            &snapshot_range(&snap),
                            &snap_model,
                            &any,
                        );
                    }
                    4 if !poisoned => {
                        corrupt += reads_are_right_or_corrupt(
                            &writer_get(&db),
                            &writer_range(&db),
                            &model,
                            &any,
                        );
                    }
                    5 | 6 => {
                        let v = value_for(&mut rng);
                        match db.insert(t, &k, &v) {
                            Ok(()) => {
                                model[t as usize].insert(k, v);
                            }
                            Err(Error::Poisoned) => assert!(poisoned),
                            Err(e) => {
                                assert!(any(&e), "{e}");
                                corrupt += 1;
                            }
                        }
                    }
                    7 => match db.remove(t, &k) {
                        Ok(had) => {
                            assert_eq!(had, model[t as usize].remove(&k).is_some());
                        }
                        Err(Error::Poisoned) => assert!(poisoned),
                        Err(e) => {
                            assert!(any(&e), "{e}");
                            corrupt += 1;
                            poisoned = db.w.poisoned;
                        }
                    },
                    8 => {
                        let end = key_for(&mut rng);
                        let (a, b) = if k <= end { (k, end) } else { (end, k) };
                        match db.retain(t, &a, &b, &mut keep_rule) {
                            Ok(_) => {
                                model[t as usize].retain(|k, _| *k < a || *k >= b || keep_rule(k))
                            }
                            Err(Error::Poisoned) => assert!(poisoned),
                            Err(e) => {
                                assert!(any(&e), "{e}");
                                corrupt += 1;
                                poisoned = true;
                            }
                        }
                    }
                    _ => {
                        db.publish();
                        if !poisoned {
                            snap = db.snapshot();
                            snap_model = model.clone();
                        }
                    }
                }
            }
            let _ = db.check();
            (corrupt, poisoned)
        });
        corrupt += c;
        poisoned += p as usize;
    }
    // Most seeds hit a reachable page.
    assert!(
        corrupt > seeds as usize,
        "{corrupt} corrupt reads in {seeds} seeds"
    );
    eprintln!("{seeds} seeds: {corrupt} corrupt reads, {poisoned} poisoned");
    let _ = std::fs::remove_file(&path);
}

/// What verifying pages on read costs, A/B in one process (run with `cargo test
/// --release --lib -- --ignored read_verification_cost --nocapture`): the same random
/// point gets (alone, and 100 sharing one `VerifiedPages` as a Range's lookups do) and
/// full scans through the snapshot's reader, which verifies every page, and through one
/// that takes every page for the writer's own dirty page, which verifies none.
/// Interleaved rounds; the best of each is printed.
#[test]
#[ignore]
fn read_verification_cost() {
    use super::btree::{self, DirtyPages, Reader};
    for n in [100_000u64, 1_000_000] {
        block_on(async move {
            let path = tmp_path(&format!("verify-cost-{n}"));
            let mut db = Db::open(&path, DbOptions::default()).await.unwrap();
            let value = [7u8; 256];
            for i in 0..n {
                let rev = Revision::new(i as i64 + 1, 0).encode();
                db.insert(TreeId::Revision, &rev, &value).unwrap();
                if i % 1000 == 999 {
                    db.publish();
                }
            }
            db.commit().await.unwrap();
            let snap = db.snapshot();
            let root = snap.roots[TreeId::Revision as usize];
            let mut all = DirtyPages::default();
            for id in 0..db.w.high_water {
                all.insert(id);
            }
            let readers = [
                ("verified", snap.reader()),
                (
                    "trusted",
                    Reader {
                        map: &snap.map,
                        txn_max: snap.txn,
                        dirty: Some(&all),
                    },
                ),
            ];
            let mut rng = Rng(5);
            let keys: Vec<_> = (0..1_000_000)
                .map(|_| Revision::new(rng.below(n) as i64 + 1, 0).encode())
                .collect();
            let mut best = [[f64::MAX; 3]; 2];
            for _round in 0..5 {
                for (m, (_, r)) in readers.iter().enumerate() {
                    let t = std::time::Instant::now();
                    for k in &keys {
                        let memo = VerifiedPages::default();
                        assert!(btree::get(*r, &memo, &root, k).unwrap().is_some());
                    }
                    best[m][0] = best[m][0].min(t.elapsed().as_nanos() as f64 / 1e6);
                    let t = std::time::Instant::now();
                    for chunk in keys.chunks(100) {
                        let memo = VerifiedPages::default();
                        for k in chunk {
                            assert!(btree::get(*r, &memo, &root, k).unwrap().is_some());
                        }
                    }
                    best[m][1] = best[m][1].min(t.elapsed().as_nanos() as f64 / 1e6);
                    let t = std::time::Instant::now();
                    let count = btree::Iter::new(*r, &root, &[], &[]).count() as u64;
                    assert_eq!(count, n);
                    best[m][2] = best[m][2].min(t.elapsed().as_nanos() as f64 / n as f64);
                }
            }
            println!(
                "{n} keys of 256 B, height {}, file {} MiB:",
                root.height,
                db.stats().file_bytes >> 20
            );
            for (m, (name, _)) in readers.iter().enumerate() {
                println!(
                    "  {name:>8}: point get {:.0} ns, get as 1 of 100 in a Range {:.0} ns, \
                     scan {:.0} ns/entry",
                    best[m][0], best[m][1], best[m][2]
                );
            }
            let _ = std::fs::remove_file(&path);
        });
    }
}

// ---- file size and defragmentation -------------------------------------------------

#[test]
fn empty_file_is_small_and_grows_with_its_data() {
    block_on(async {
        let path = tmp_path("small-file");
        let mut db = Db::open(&path, DbOptions::default()).await.unwrap();
        assert!(db.file_bytes() <= 64 * 1024, "{}", db.file_bytes());
        assert_eq!(db.file_bytes(), std::fs::metadata(&path).unwrap().len());
        assert_eq!(db.in_use_bytes(), 2 * PAGE_BYTES as u64);
        assert_eq!(db.snapshot().file_bytes(), db.file_bytes());
        let mut sizes = Vec::new();
        for round in 0..40u64 {
            for i in 0..500u64 {
                let k = (round * 500 + i).to_be_bytes();
                db.insert(TreeId::Revision, &k, &[round as u8; 200])
                    .unwrap();
            }
            db.commit().await.unwrap();
            let s = db.stats();
            assert_eq!(s.file_bytes, db.file_bytes());
            assert_eq!(s.in_use_bytes, (s.pages_in_use + 2) * PAGE_BYTES as u64);
            // Steps proportional to the data: the file is at most about twice it.
            assert!(
                s.file_bytes <= 2 * s.in_use_bytes + 64 * 1024,
                "round {round}: {s:?}"
            );
            sizes.push(s.file_bytes);
        }
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        db.close().await.unwrap();
        let db = Db::open(&path, DbOptions::default()).await.unwrap();
        assert_eq!(db.file_bytes(), *sizes.last().unwrap());
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn defrag_of_a_compact_file_is_a_noop() {
    block_on(async {
        let path = tmp_path("defrag-compact");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        for i in 0..3000u64 {
            db.insert(TreeId::Revision, &i.to_be_bytes(), &[1; 100])
                .unwrap();
        }
        db.insert(TreeId::Lease, b"big", &[2; 9000]).unwrap();
        db.commit().await.unwrap();
        // A file written in order has nothing to move; the first defragmentation only
        // cuts the growth's headroom (up to a step) to the half step it keeps.
        let first = db.defrag_all().await.unwrap();
        assert!(first.done && first.moved_pages == 0, "{first:?}");
        let (file, txn) = (db.file_bytes(), db.published.txn);
        let p = db.defrag_step(16).unwrap();
        assert!(p.done, "{p:?}");
        assert_eq!((p.moved_pages, p.copied_pages, p.file_bytes), (0, 0, file));
        assert!(p.target_bytes >= db.in_use_bytes());
        db.commit().await.unwrap();
        assert_eq!(db.published.txn, txn, "a no-op defrag changed nothing");
        let all = db.defrag_all().await.unwrap();
        assert!(all.done && all.moved_pages == 0, "{all:?}");
        assert_eq!(db.file_bytes(), file);
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}

/// A big value rewritten a few times sits at the top of a small file, with the pages of
/// its old copies still pending below: defragmentation moves it down once they come back
/// (it used to count the run as done and leave it, and the file at its size: etcd's e2e
/// TestCtlV3Alarm, a 13-page file under a 13-page quota), and cuts the file to the live
/// pages plus half a grow step.
#[test]
fn defrag_moves_an_overflow_run_down_once_pages_below_come_back() {
    block_on(async {
        let path = tmp_path("defrag-run");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        db.insert(TreeId::Meta, b"m", &[0; 10]).unwrap();
        // Revisions of one big value, then a compaction of all but the last: the last
        // run is at the top, the old ones' pages pending when the defragmentation starts.
        for round in 0..6u8 {
            db.insert(TreeId::Revision, &[round], &[round; 4096])
                .unwrap();
            db.publish();
            db.commit().await.unwrap();
        }
        for round in 0..5u8 {
            db.remove(TreeId::Revision, &[round]).unwrap();
        }
        db.publish();
        let before = db.file_bytes();
        let all = db.defrag_all().await.unwrap();
        assert!(all.done, "{all:?}");
        db.check().unwrap();
        let hw = db.w.high_water;
        assert!(
            hw * PAGE_BYTES as u64 <= all.target_bytes,
            "high water {hw} pages, target {} pages: {all:?}",
            all.target_bytes / PAGE_BYTES as u64
        );
        let half_step = db.w.step_pages(hw).div_ceil(2);
        assert!(
            db.file_bytes() <= (hw + half_step) * PAGE_BYTES as u64 && db.file_bytes() < before,
            "file {} -> {} bytes, high water {hw}",
            before,
            db.file_bytes()
        );
        assert_eq!(
            db.get(TreeId::Revision, &[5]).unwrap(),
            Some(&[5u8; 4096][..])
        );
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn defrag_when_poisoned_is_refused() {
    block_on(async {
        let path = tmp_path("defrag-poisoned");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        db.insert(TreeId::Meta, b"k", b"v").unwrap();
        db.commit().await.unwrap();
        db.faults.sync_fail_at = Some(db.faults.sync_count + 1);
        db.insert(TreeId::Meta, b"k2", b"v").unwrap();
        assert!(db.commit().await.is_err());
        assert!(matches!(db.defrag_step(10), Err(Error::Poisoned)));
        assert!(matches!(db.defrag_all().await, Err(Error::Poisoned)));
        let _ = std::fs::remove_file(&path);
    });
}

/// The highest page id `snap` can reach (walks its trees).
fn snapshot_page_max(db: &Db, snap: &ReadSnapshot) -> u64 {
    let hw = db.w.high_water.max(db.published.high_water);
    let mut seen = vec![0u64; (hw as usize).div_ceil(64)];
    let mut lim = btree::WalkLimits {
        high_water: hw,
        txn_max: snap.txn,
        crc_below_txn: u64::MAX,
        seen: &mut seen,
    };
    for root in &snap.roots {
        btree::check_tree(&snap.map, root, &mut lim).unwrap();
    }
    let (w, word) = seen
        .iter()
        .enumerate()
        .rev()
        .find(|(_, &x)| x != 0)
        .unwrap();
    w as u64 * 64 + 63 - word.leading_zeros() as u64
}

/// A file filled with ~50k entries (some overflow values), ~90% removed, defragmented
/// in small slices interleaved with writes, publishes and commits, while a snapshot taken
/// before is read on another thread; crash images taken on the way all open to their
/// last commit; at the end the file is near the live size and reopens the same.
#[test]
fn defrag_in_slices_beside_writes_readers_and_crashes() {
    KEY_SPACE.with(|k| k.set(1 << 40));
    let path = tmp_path("defrag-slices");
    let (model, images) = {
        let path = path.clone();
        block_on(async move {
            let mut images: Vec<(PathBuf, Model)> = Vec::new();
            let mut rng = Rng(4242);
            let mut db = Db::open(&path, small_options()).await.unwrap();
            let mut model = empty_model();
            for _ in 0..10 {
                fill(&mut db, &mut model, &mut rng, 5000);
                db.commit().await.unwrap();
            }
            let entries: u64 = model.iter().map(|m| m.len() as u64).sum();
            assert!(entries > 45_000, "{entries}");
            for t in TreeId::ALL {
                let doomed: Vec<Vec<u8>> = model[t as usize]
                    .keys()
                    .filter(|_| !rng.chance(10))
                    .cloned()
                    .collect();
                for k in doomed {
                    assert!(db.remove(t, &k).unwrap());
                    model[t as usize].remove(&k);
                }
                db.commit().await.unwrap();
            }
            db.commit().await.unwrap();
            db.check().unwrap();
            let before = db.stats();
            assert!(before.file_bytes > 5 * before.in_use_bytes, "{before:?}");

            // A snapshot of the fragmented state, read on another thread throughout.
            let snap = db.snapshot();
            let snap_model = model.clone();
            let snap_page_max = snapshot_page_max(&db, &snap);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (snap, want, stop) = (snap.clone(), snap_model.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rounds = 0;
                    while !stop.load(Ordering::Relaxed) || rounds == 0 {
                        assert_snapshot(&snap, &want);
                        rounds += 1;
                    }
                    rounds
                })
            };
            let mut committed = model.clone();
            let mut total_moved = 0;
            let mut done = false;
            let mut snap = Some(snap);
            let mut steps = 0;
            let (mut last_file_bytes, mut cut_images) = (db.file_bytes(), 0);
            for step in 0..5000u64 {
                steps = step + 1;
                let p = db.defrag_step(32).unwrap();
                total_moved += p.moved_pages;
                if p.done {
                    done = true;
                    break;
                }
                // Writes between slices: new keys, overwrites, removes.
                fill(&mut db, &mut model, &mut rng, 5);
                for _ in 0..3 {
                    let t = TreeId::ALL[rng.below(5) as usize];
                    let k = model[t as usize]
                        .keys()
                        .nth(rng.below(50) as usize)
                        .cloned();
                    if let Some(k) = k {
                        assert!(db.remove(t, &k).unwrap());
                        model[t as usize].remove(&k);
                    }
                }
                if step % 23 == 3 && images.len() < 16 {
                    // Crash after a publish, before its commit: the last commit opens.
                    db.publish();
                    let img = tmp_path(&format!("defrag-img{}", images.len()));
                    std::fs::copy(&path, &img).unwrap();
                    images.push((img, committed.clone()));
                }
                let cut = db.file_bytes() < last_file_bytes;
                last_file_bytes = db.file_bytes();
                if (step % 29 == 5 || cut) && images.len() < 16 {
                    cut_images += cut as u32;
                    // Crash after the data sync, before the meta page is written.
                    let img = tmp_path(&format!("defrag-img{}", images.len()));
                    let img2 = img.clone();
                    db.faults.before_meta = Some(Box::new(move |p: &Path| {
                        std::fs::copy(p, &img2).unwrap();
                    }));
                    images.push((img, committed.clone()));
                }
                db.commit().await.unwrap();
                db.faults.before_meta = None;
                committed = model.clone();
                if let Some(s) = &snap {
                    // The file is never cut below what the snapshot reaches.
                    let end = std::fs::metadata(&path).unwrap().len();
                    assert!(end > snap_page_max * PAGE_BYTES as u64, "step {step}");
                    assert!(db.file_bytes() > snap_page_max * PAGE_BYTES as u64);
                    if step % 50 == 0 {
                        assert_snapshot(s, &snap_model);
                    }
                    if step == 150 {
                        assert_snapshot(s, &snap_model);
                        snap = None;
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if step % 100 == 0 {
                    db.check().unwrap();
                    assert_same(&db, &model);
                }
            }
            assert!(done, "defrag never finished");
            assert!(cut_images > 0, "no crash image right after a cut");
            assert!(snap.is_none());
            let rounds = reader.join().unwrap();
            assert!(rounds > 0);
            db.commit().await.unwrap();
            db.check().unwrap();
            assert_same(&db, &model);
            let after = db.stats();
            let on_disk = std::fs::metadata(&path).unwrap().len();
            assert_eq!(on_disk, after.file_bytes);
            assert!(total_moved > 0);
            println!(
                "defrag: {} -> {} bytes (in use {} -> {}), moved {total_moved} pages in {steps} steps",
                before.file_bytes, after.file_bytes, before.in_use_bytes, after.in_use_bytes
            );
            let top = snapshot_page_max(&db, &db.snapshot());
            assert!(
                after.file_bytes <= after.in_use_bytes + after.in_use_bytes / 8 + 128 * 1024,
                "{after:?}, high-water {}, highest live page {top} kind {} txn {} (txn now {})",
                db.w.high_water,
                page::kind(db.w.map.map().page(top)),
                page::txn(db.w.map.map().page(top)),
                db.w.txn,
            );
            // Another full defrag has nothing left to do.
            let again = db.defrag_all().await.unwrap();
            assert!(again.done, "{again:?}");
            assert!(db.file_bytes() <= after.file_bytes);
            db.close().await.unwrap();
            let db = Db::open(&path, small_options()).await.unwrap();
            db.check().unwrap();
            assert_same(&db, &model);
            (model, images)
        })
    };
    assert!(!images.is_empty());
    for (image, want) in &images {
        let db = open_image(image);
        assert_same(&db, want);
        db.check().unwrap();
        drop(db);
        let _ = std::fs::remove_file(image);
    }
    let db = open_image(&path);
    assert_same(&db, &model);
    drop(db);
    let _ = std::fs::remove_file(&path);
}

/// A defragmentation that cannot finish while a snapshot pins the pages it waits for:
/// `defrag_all` reports not done and the file keeps what the snapshot reaches; once the
/// snapshot is dropped it finishes, and a reopen sees the same data.
#[test]
fn defrag_all_waits_for_a_pinned_snapshot() {
    block_on(async {
        let path = tmp_path("defrag-pinned");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let mut model = empty_model();
        for i in 0..20_000u64 {
            let v = vec![i as u8; if i % 97 == 0 { 5000 } else { 150 }];
            db.insert(TreeId::Revision, &i.to_be_bytes(), &v).unwrap();
            model[0].insert(i.to_be_bytes().to_vec(), v);
        }
        db.commit().await.unwrap();
        for i in (0..20_000u64).filter(|i| i % 10 != 0) {
            db.remove(TreeId::Revision, &i.to_be_bytes()).unwrap();
            model[0].remove(&i.to_be_bytes()[..]);
        }
        db.commit().await.unwrap();
        let snap = db.snapshot();
        let page_max = snapshot_page_max(&db, &snap);
        let before = db.file_bytes();
        let p = db.defrag_all().await.unwrap();
        assert!(!p.done, "{p:?}");
        assert!(db.file_bytes() > page_max * PAGE_BYTES as u64);
        assert_snapshot(&snap, &model);
        drop(snap);
        let p = db.defrag_all().await.unwrap();
        assert!(p.done, "{p:?}");
        let in_use = db.in_use_bytes();
        assert!(before > 2 * in_use, "{before} {in_use}");
        assert!(
            db.file_bytes() <= in_use + in_use / 8 + 128 * 1024,
            "{before} -> {p:?}, in use {in_use}"
        );
        db.check().unwrap();
        assert_same(&db, &model);
        drop(db); // no close: a crash after the last commit
        let db = Db::open(&path, small_options()).await.unwrap();
        db.check().unwrap();
        assert_same(&db, &model);
        let _ = std::fs::remove_file(&path);
    });
}

/// Numbers for the module doc (release: `cargo nextest run --release -p keel --lib
/// defrag_cost --run-ignored only --no-capture`): a ~200 MB file of which a compaction
/// (`retain`, which repacks the leaves it rewrites) dropped 90%, defragmented with three
/// step budgets; each step is followed by a commit, like the raft core does.
#[test]
#[ignore]
fn defrag_cost() {
    for budget in [256u64, 1024, 4096] {
        block_on(async move {
            let path = tmp_path(&format!("defrag-cost-{budget}"));
            let mut db = Db::open(&path, DbOptions::default()).await.unwrap();
            let n = 400_000u64;
            for i in 0..n {
                let len = if i % 100 == 0 { 6000 } else { 400 };
                let rev = Revision::new(i as i64 + 1, 0).encode();
                db.insert(TreeId::Revision, &rev, &vec![i as u8; len])
                    .unwrap();
                if i % 10_000 == 9_999 {
                    db.commit().await.unwrap();
                }
            }
            // Compaction keeps one revision in ten, spread over the whole key range.
            let mut rng = Rng(3);
            db.retain(TreeId::Revision, &[], &[], &mut |_| rng.chance(10))
                .unwrap();
            db.commit().await.unwrap();
            db.commit().await.unwrap();
            let before = db.stats();
            let live = db.len(TreeId::Revision);
            let t0 = std::time::Instant::now();
            let (mut steps, mut moved) = (0, 0);
            let (mut step_max, mut commit_max) = (0f64, 0f64);
            loop {
                let t = std::time::Instant::now();
                let p = db.defrag_step(budget).unwrap();
                step_max = step_max.max(t.elapsed().as_secs_f64() * 1e3);
                let t = std::time::Instant::now();
                db.commit().await.unwrap();
                commit_max = commit_max.max(t.elapsed().as_secs_f64() * 1e3);
                steps += 1;
                moved += p.moved_pages;
                if p.done {
                    break;
                }
                assert!(steps < 100_000);
            }
            let total = t0.elapsed().as_secs_f64();
            let after = db.stats();
            println!(
                "budget {budget} pages: {steps} steps, moved {moved} pages, total {total:.2} s \
                 ({:.2} ms/step incl. commit), step max {step_max:.2} ms, commit max \
                 {commit_max:.2} ms; file {} -> {} MiB, in use {} -> {} MiB, {live} keys",
                total * 1e3 / steps as f64,
                before.file_bytes >> 20,
                after.file_bytes >> 20,
                before.in_use_bytes >> 20,
                after.in_use_bytes >> 20,
            );
            db.check().unwrap();
            let _ = std::fs::remove_file(&path);
        });
    }
}

/// This process's resident file-backed memory (`RssFile`), in KiB.
fn rss_file_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Pages the writer wrote leave the process's resident set once their commit is on the
/// disk (the page cache keeps them, as it keeps etcd's `pwrite`s), and read back the
/// same. (nextest runs each test in its own process, so RssFile is this test's.)
#[test]
fn written_pages_leave_the_resident_set_once_committed() {
    block_on(async {
        let path = tmp_path("release");
        let mut db = Db::open(&path, small_options()).await.unwrap();
        let value = [9u8; 1000];
        let n = 48_000u64; // ~48 MiB of records
        for i in 0..n {
            let rev = Revision::new(i as i64 + 1, 0).encode();
            db.insert(TreeId::Revision, &rev, &value).unwrap();
        }
        db.publish();
        let written = rss_file_kib();
        db.commit().await.unwrap();
        let committed = rss_file_kib();
        assert!(
            committed + 40 * 1024 < written,
            "RssFile {written} KiB before the commit, {committed} KiB after"
        );
        let mut seen = 0u64;
        for (i, entry) in db.range(TreeId::Revision, &[], &[]).enumerate() {
            let (k, v) = entry.unwrap();
            assert_eq!(k, Revision::new(i as i64 + 1, 0).encode());
            assert_eq!(v, value);
            seen += 1;
        }
        assert_eq!(seen, n);
        db.check().unwrap();
        // More writes after the release: the copies of released pages are right too.
        for i in 0..1000u64 {
            let rev = Revision::new((n + i) as i64 + 1, 0).encode();
            db.insert(TreeId::Revision, &rev, &value).unwrap();
        }
        db.commit().await.unwrap();
        drop(db);
        let db = Db::open(&path, small_options()).await.unwrap();
        assert_eq!(db.len(TreeId::Revision), n + 1000);
        db.check().unwrap();
        let _ = std::fs::remove_file(&path);
    });
}
