//! The durability model without FUSE.

use super::model::{CutReport, Kind, Loss, Model, ROOT, SECTOR};
use crate::rng::Rng;
use std::ffi::OsStr;

const LOSSES: [Loss; 5] = [
    Loss::All,
    Loss::Prefix,
    Loss::Torn,
    Loss::Subset,
    Loss::Mixed,
];

fn ino(m: &Model, path: &str) -> Option<u64> {
    let mut at = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at = m.lookup(at, OsStr::new(part)).ok()?.ino;
    }
    Some(at)
}

fn content(m: &Model, path: &str) -> Option<Vec<u8>> {
    let i = ino(m, path)?;
    Some(m.read(i, 0, u64::MAX).expect("a file"))
}

/// A file `name` in the root whose name is durable (created, dir fsynced).
fn durable_file(m: &mut Model, name: &str) -> u64 {
    let a = m.create(ROOT, OsStr::new(name), 0o644, 0, 0).unwrap();
    m.fsync(ROOT).unwrap();
    a.ino
}

fn cut(m: &mut Model, loss: Loss, seed: u64) -> CutReport {
    m.cut(loss, &mut Rng::new(seed))
}

#[test]
fn synced_data_survives_every_loss() {
    for loss in LOSSES {
        for seed in 0..20 {
            let mut m = Model::new();
            let f = durable_file(&mut m, "a");
            m.write(f, 0, b"hello", false).unwrap();
            m.write(f, 4096 * 3 + 10, b"world", false).unwrap();
            m.fsync(f).unwrap();
            m.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap();
            m.fsync(ROOT).unwrap();
            cut(&mut m, loss, seed);
            let got = content(&m, "a").unwrap();
            assert_eq!(got.len(), 4096 * 3 + 15, "{loss} seed {seed}");
            assert_eq!(&got[..5], b"hello");
            assert_eq!(&got[4096 * 3 + 10..], b"world");
            assert!(got[5..4096 * 3 + 10].iter().all(|&b| b == 0));
            assert_eq!(m.attr(ino(&m, "d").unwrap()).unwrap().kind, Kind::Dir);
        }
    }
}

#[test]
fn unsynced_data_is_dropped_under_all() {
    let mut m = Model::new();
    let f = durable_file(&mut m, "a");
    m.write(f, 0, b"synced", false).unwrap();
    m.fsync(f).unwrap();
    m.write(f, 0, b"SYNCED", false).unwrap();
    m.write(f, 100, b"tail", false).unwrap();
    m.set_size(f, 50).unwrap();
    assert_eq!(m.read(f, 0, 6).unwrap(), b"SYNCED");
    let r = cut(&mut m, Loss::All, 1);
    assert_eq!(content(&m, "a").unwrap(), b"synced");
    assert_eq!(r.files, 1);
    assert_eq!(r.ops_dropped, 3);
    assert_eq!(r.bytes_dropped, 10);
    assert_eq!(r.torn_writes, 0);
    // Nothing pending afterwards: a second cut changes nothing.
    let r = cut(&mut m, Loss::All, 2);
    assert_eq!(r, CutReport::default());
    assert_eq!(content(&m, "a").unwrap(), b"synced");
}

/// Every state a prefix of `writes` leaves, from an empty durable file.
fn prefix_states(writes: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
    let mut m = Model::new();
    let f = durable_file(&mut m, "a");
    let mut out = vec![m.read(f, 0, u64::MAX).unwrap()];
    for (off, data) in writes {
        m.write(f, *off, data, false).unwrap();
        out.push(m.read(f, 0, u64::MAX).unwrap());
    }
    out
}

#[test]
fn prefix_keeps_only_prefixes() {
    let writes: [(u64, &[u8]); 4] = [(0, b"aaaa"), (2, b"bbbb"), (10, b"cc"), (1, b"d")];
    let states = prefix_states(&writes);
    let mut seen = vec![false; states.len()];
    for seed in 0..200 {
        let mut m = Model::new();
        let f = durable_file(&mut m, "a");
        for (off, data) in writes {
            m.write(f, off, data, false).unwrap();
        }
        cut(&mut m, Loss::Prefix, seed);
        let got = content(&m, "a").unwrap();
        let k = states
            .iter()
            .position(|s| *s == got)
            .unwrap_or_else(|| panic!("seed {seed}: {got:?} is no prefix state"));
        seen[k] = true;
    }
    assert!(
        seen.iter().all(|&s| s),
        "every prefix length occurs: {seen:?}"
    );
}

#[test]
fn torn_keeps_sector_aligned_pieces() {
    let old = vec![b'o'; 8192];
    let new = vec![b'n'; 3000];
    let off = 700; // not sector-aligned: pieces [700,1024), [1024,1536), …, [3584,3700)
    let mut torn = 0;
    for seed in 0..300 {
        let mut m = Model::new();
        let f = durable_file(&mut m, "a");
        m.write(f, 0, &old, false).unwrap();
        m.fsync(f).unwrap();
        m.write(f, off, &new, false).unwrap();
        m.write(f, 9000, b"later", false).unwrap();
        let r = cut(&mut m, Loss::Torn, seed);
        let got = content(&m, "a").unwrap();
        let end = off as usize + new.len();
        // The later write survives only if the first one survived whole.
        if got.len() > 8192 {
            assert_eq!(&got[off as usize..end], &new[..], "seed {seed}");
            assert_eq!(&got[9000..], b"later");
            continue;
        }
        assert_eq!(got.len(), 8192);
        // Each sector (cut at absolute 512-byte boundaries) is all old or all new.
        let mut lo = off as usize;
        let mut pieces = (0, 0);
        while lo < end {
            let hi = ((lo / SECTOR as usize + 1) * SECTOR as usize).min(end);
            let piece = &got[lo..hi];
            if piece.iter().all(|&b| b == b'n') {
                pieces.0 += 1;
            } else {
                assert!(
                    piece.iter().all(|&b| b == b'o'),
                    "seed {seed}: mixed sector at {lo}"
                );
                pieces.1 += 1;
            }
            lo = hi;
        }
        assert!(got[..off as usize].iter().all(|&b| b == b'o'));
        assert!(got[end..].iter().all(|&b| b == b'o'));
        if pieces.0 > 0 && pieces.1 > 0 {
            torn += 1;
            assert_eq!(r.torn_writes, 1, "seed {seed}");
        }
    }
    assert!(torn > 10, "torn writes are produced ({torn})");
}

#[test]
fn subset_drops_sectors_of_any_write_independently() {
    // Two writes; Subset may keep the second and drop the first (no order promised).
    let mut second_without_first = false;
    for seed in 0..100 {
        let mut m = Model::new();
        let f = durable_file(&mut m, "a");
        m.write(f, 0, &[1u8; 512], false).unwrap();
        m.write(f, 512, &[2u8; 512], false).unwrap();
        cut(&mut m, Loss::Subset, seed);
        let got = content(&m, "a").unwrap();
        if got.len() == 1024
            && got[..512].iter().all(|&b| b == 0)
            && got[512..].iter().all(|&b| b == 2)
        {
            second_without_first = true;
        }
    }
    assert!(second_without_first);
}

#[test]
fn dsync_write_is_durable_at_once_and_keeps_its_place() {
    for loss in LOSSES {
        for seed in 0..30 {
            let mut m = Model::new();
            let f = durable_file(&mut m, "a");
            m.write(f, 0, b"old-old-", false).unwrap();
            m.fsync(f).unwrap();
            m.write(f, 0, b"pending-", false).unwrap();
            m.write(f, 4, b"DSYN", true).unwrap();
            m.write(f, 100, b"after", false).unwrap();
            cut(&mut m, loss, seed);
            let got = content(&m, "a").unwrap();
            // The O_DSYNC bytes survive, and an older pending write never lands over them.
            assert_eq!(&got[4..8], b"DSYN", "{loss} seed {seed}: {got:?}");
            assert!(
                &got[..4] == b"old-" || &got[..4] == b"pend",
                "{loss} seed {seed}"
            );
        }
    }
}

#[test]
fn with_a_journal_a_file_fsync_also_keeps_every_pending_name() {
    let mut m = Model::new();
    m.journal = true;
    let d = m.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino;
    let f = m.create(d, OsStr::new("a"), 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"data", false).unwrap();
    let g = m.create(ROOT, OsStr::new("b"), 0o644, 0, 0).unwrap().ino;
    m.write(g, 0, b"unsynced", false).unwrap();
    m.fsync(f).unwrap();
    cut(&mut m, Loss::All, 1);
    assert_eq!(
        content(&m, "d/a").expect("d/a kept by the journal commit"),
        b"data"
    );
    // b's name was in the same transaction; its data was not synced.
    assert_eq!(content(&m, "b").unwrap(), b"");
}

#[test]
fn file_name_is_durable_only_with_the_dir_fsync() {
    for loss in LOSSES {
        for seed in 0..10 {
            // fsync of the file alone: the name is pending in the root → gone under All.
            let mut m = Model::new();
            let f = m.create(ROOT, OsStr::new("a"), 0o644, 0, 0).unwrap().ino;
            m.write(f, 0, b"data", false).unwrap();
            m.fsync(f).unwrap();
            cut(&mut m, Loss::All, seed);
            assert_eq!(ino(&m, "a"), None);
            assert_eq!(m.usage().0, 1, "the unreachable inode is dropped");
            // With the dir fsynced as well: present with its data under every loss.
            let mut m = Model::new();
            let f = m.create(ROOT, OsStr::new("a"), 0o644, 0, 0).unwrap().ino;
            m.write(f, 0, b"data", false).unwrap();
            m.fsync(f).unwrap();
            m.fsync(ROOT).unwrap();
            cut(&mut m, loss, seed);
            assert_eq!(content(&m, "a").unwrap(), b"data");
            // Dir fsynced but not the file: the name survives, the data need not.
            let mut m = Model::new();
            let f = m.create(ROOT, OsStr::new("a"), 0o644, 0, 0).unwrap().ino;
            m.write(f, 0, b"data", false).unwrap();
            m.fsync(ROOT).unwrap();
            cut(&mut m, Loss::All, seed);
            assert_eq!(content(&m, "a").unwrap(), b"");
        }
    }
}

#[test]
fn a_file_in_a_new_dir_needs_both_dirs_synced() {
    let mut m = Model::new();
    let d = m.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino;
    let f = m.create(d, OsStr::new("a"), 0o644, 0, 0).unwrap().ino;
    m.write(f, 0, b"x", false).unwrap();
    m.fsync(f).unwrap();
    m.fsync(d).unwrap();
    let r = cut(&mut m, Loss::All, 3);
    assert_eq!(ino(&m, "d"), None);
    assert_eq!(r.entries_dropped, 1);
    assert_eq!(m.usage().0, 1);
}

#[test]
fn rename_is_durable_only_after_the_dir_fsync() {
    let setup = || {
        let mut m = Model::new();
        let f = durable_file(&mut m, "old");
        m.write(f, 0, b"v1", false).unwrap();
        m.fsync(f).unwrap();
        let t = m.create(ROOT, OsStr::new("tmp"), 0o644, 0, 0).unwrap().ino;
        m.write(t, 0, b"v2", false).unwrap();
        m.fsync(t).unwrap();
        m.rename(ROOT, OsStr::new("tmp"), ROOT, OsStr::new("old"), false)
            .unwrap();
        assert_eq!(content(&m, "old").unwrap(), b"v2");
        m
    };
    let mut m = setup();
    cut(&mut m, Loss::All, 1);
    assert_eq!(content(&m, "old").unwrap(), b"v1", "the old name survives");
    assert_eq!(ino(&m, "tmp"), None);
    // A prefix of the root's changes: [create tmp, rename tmp→old] → one of three states,
    // never one without "old".
    for seed in 0..50 {
        let mut m = setup();
        cut(&mut m, Loss::Prefix, seed);
        match (content(&m, "old").unwrap().as_slice(), content(&m, "tmp")) {
            (b"v1", None) | (b"v1", Some(_)) | (b"v2", None) => {}
            other => panic!("seed {seed}: {other:?}"),
        }
    }
    let mut m = setup();
    m.fsync(ROOT).unwrap();
    cut(&mut m, Loss::All, 1);
    assert_eq!(content(&m, "old").unwrap(), b"v2");
    assert_eq!(ino(&m, "tmp"), None);
}

#[test]
fn rename_between_dirs_is_two_independent_changes() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut m = Model::new();
        let a = m.mkdir(ROOT, OsStr::new("a"), 0o755, 0, 0).unwrap().ino;
        let b = m.mkdir(ROOT, OsStr::new("b"), 0o755, 0, 0).unwrap().ino;
        m.fsync(ROOT).unwrap();
        let f = m.create(a, OsStr::new("f"), 0o644, 0, 0).unwrap().ino;
        m.write(f, 0, b"x", false).unwrap();
        m.fsync(f).unwrap();
        m.fsync(a).unwrap();
        m.rename(a, OsStr::new("f"), b, OsStr::new("g"), false)
            .unwrap();
        cut(&mut m, Loss::Prefix, seed);
        let in_a = content(&m, "a/f").is_some();
        let in_b = content(&m, "b/g").is_some();
        if in_a && in_b {
            assert_eq!(m.attr(ino(&m, "a/f").unwrap()).unwrap().nlink, 2);
        }
        outcomes.insert((in_a, in_b));
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
}

#[test]
fn truncate_is_pending_like_a_write() {
    let mut m = Model::new();
    let f = durable_file(&mut m, "a");
    m.write(f, 0, &[7u8; 10000], false).unwrap();
    m.fsync(f).unwrap();
    m.set_size(f, 5000).unwrap();
    assert_eq!(m.attr(f).unwrap().size, 5000);
    m.set_size(f, 6000).unwrap();
    assert_eq!(
        m.read(f, 4990, 20).unwrap(),
        [[7u8; 10], [0u8; 10]].concat()
    );
    cut(&mut m, Loss::All, 1);
    assert_eq!(
        content(&m, "a").unwrap(),
        vec![7u8; 10000],
        "the truncate was lost"
    );
    let f = ino(&m, "a").unwrap();
    m.set_size(f, 5000).unwrap();
    m.fsync(f).unwrap();
    cut(&mut m, Loss::All, 1);
    assert_eq!(content(&m, "a").unwrap(), vec![7u8; 5000]);
    // Prefix over [truncate to 0, write]: never the write without the truncate.
    for seed in 0..50 {
        let mut m = Model::new();
        let f = durable_file(&mut m, "a");
        m.write(f, 0, b"0123456789", false).unwrap();
        m.fsync(f).unwrap();
        m.set_size(f, 0).unwrap();
        m.write(f, 0, b"ab", false).unwrap();
        cut(&mut m, Loss::Prefix, seed);
        let got = content(&m, "a").unwrap();
        assert!(
            got == b"0123456789" || got.is_empty() || got == b"ab",
            "seed {seed}: {got:?}"
        );
    }
}

#[test]
fn fallocate_grows_pending_and_keep_size_does_not() {
    let mut m = Model::new();
    let f = durable_file(&mut m, "a");
    m.fallocate(f, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(m.attr(f).unwrap().size, 0);
    m.fallocate(f, 0, 64 << 20, 0).unwrap();
    assert_eq!(m.attr(f).unwrap().size, 64 << 20);
    assert_eq!(m.attr(f).unwrap().blocks, 0, "preallocation stores nothing");
    assert_eq!(
        m.fallocate(
            f,
            0,
            10,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        ),
        Err(libc::EOPNOTSUPP)
    );
    cut(&mut m, Loss::All, 1);
    assert_eq!(m.attr(ino(&m, "a").unwrap()).unwrap().size, 0);
    let f = ino(&m, "a").unwrap();
    m.fallocate(f, 0, 64 << 20, 0).unwrap();
    // A preallocated segment zero-filled by writes costs no blocks and no pending bytes.
    for i in 0..64 {
        m.write(f, i << 20, &vec![0u8; 1 << 20], false).unwrap();
    }
    m.write(f, 4096, b"record", false).unwrap();
    m.fsync(f).unwrap();
    cut(&mut m, Loss::All, 1);
    let a = m.attr(f).unwrap();
    assert_eq!((a.size, a.blocks), (64 << 20, 8));
    assert_eq!(m.read(f, 4096, 6).unwrap(), b"record");
}

#[test]
fn an_unlinked_inode_is_freed_when_nothing_can_bring_it_back() {
    let mut m = Model::new();
    let f = durable_file(&mut m, "a");
    m.write(f, 0, b"x", false).unwrap();
    m.fsync(f).unwrap();
    m.open(f).unwrap();
    m.unlink(ROOT, OsStr::new("a")).unwrap();
    m.release(f);
    // The durable entry still names it: a cut before the dir fsync brings it back.
    assert_eq!(m.usage().0, 2);
    m.fsync(ROOT).unwrap();
    assert_eq!(m.usage().0, 1, "freed once the removal is durable");
    // Created and removed without a dir fsync: freed at the fsync that settles both.
    let t = m.create(ROOT, OsStr::new("t"), 0o644, 0, 0).unwrap().ino;
    m.write(t, 0, b"y", false).unwrap();
    m.unlink(ROOT, OsStr::new("t")).unwrap();
    assert_eq!(
        m.usage().0,
        2,
        "a prefix of the root's changes could still name it"
    );
    m.fsync(ROOT).unwrap();
    assert_eq!(m.usage().0, 1);
}

#[test]
fn dir_ops_keep_posix_errors() {
    let mut m = Model::new();
    let d = m.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino;
    m.create(d, OsStr::new("f"), 0o644, 0, 0).unwrap();
    durable_file(&mut m, "g");
    let n = OsStr::new;
    assert_eq!(m.rmdir(ROOT, n("d")), Err(libc::ENOTEMPTY));
    assert_eq!(m.unlink(ROOT, n("d")), Err(libc::EISDIR));
    assert_eq!(m.rmdir(ROOT, n("g")), Err(libc::ENOTDIR));
    assert_eq!(m.rename(ROOT, n("d"), d, n("x"), false), Err(libc::EINVAL));
    assert_eq!(
        m.rename(ROOT, n("g"), ROOT, n("d"), false),
        Err(libc::EISDIR)
    );
    assert_eq!(m.rename(d, n("f"), ROOT, n("g"), true), Err(libc::EEXIST));
    assert_eq!(
        m.create(ROOT, n("g"), 0o644, 0, 0).map(|_| ()),
        Err(libc::EEXIST)
    );
    m.rename(d, n("f"), ROOT, n("g"), false).unwrap();
    m.unlink(ROOT, n("g")).unwrap();
    m.rmdir(ROOT, n("d")).unwrap();
    let names: Vec<_> = m
        .readdir(ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [".", ".."]);
}
