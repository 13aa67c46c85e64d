//! Tests for the WAL over real files (glommio executor via `crate::runtime::block_on`).
//! Damage is applied with `std::fs` between runs, as a crash or a bad disk would.

use super::record::{self, Record, Stop};
use super::*;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A WAL directory under the temp dir, removed (with its parents made here) on drop.
pub(crate) struct TestDir {
    root: PathBuf,
    wal: PathBuf,
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.wal
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.wal
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(crate) fn test_dir(name: &str) -> TestDir {
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir()
        .join("keel-wal-tests")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let wal = root.join("member").join("wal");
    TestDir { root, wal }
}

fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 8 << 10,
        ..WalOptions::default()
    }
}

fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn entry(term: u64, index: u64, data_bytes: usize) -> Entry {
    let data: Vec<u8> = (0..data_bytes)
        .map(|i| (index as usize * 31 + i) as u8)
        .collect();
    Entry {
        entry_type: (index % 3) as u8,
        term,
        index,
        data: data.into(),
        context: vec![term as u8; 3].into(),
    }
}

/// What a raft log should look like: the entries, the hard state and the snapshot marker.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    log: BTreeMap<u64, Entry>,
    hard_state: HardState,
    snapshot: SnapshotMarker,
}

impl Model {
    fn append(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        self.log.retain(|&i, _| i < first);
        for e in entries {
            self.log.insert(e.index, e.clone());
        }
    }
    fn last_index(&self) -> u64 {
        self.log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.snapshot.index)
    }
    fn effective(&self) -> Vec<Entry> {
        self.log
            .range(self.snapshot.index + 1..)
            .map(|(_, e)| e.clone())
            .collect()
    }
    fn check(&self, rec: &Recovered) {
        assert_eq!(rec.hard_state, self.hard_state);
        assert_eq!(rec.snapshot, self.snapshot);
        let want = self.effective();
        assert_eq!(rec.entries.len(), want.len());
        assert!(
            rec.entries == want,
            "recovered entries differ from the model"
        );
    }
}

/// Drives `wal` and `model` through `syncs` random batches: appends, overwrites of a
/// conflicting suffix, hard states and snapshot markers.
async fn drive(wal: &mut Wal, model: &mut Model, seed: &mut u64, syncs: usize) {
    for _ in 0..syncs {
        let r = next_rand(seed);
        let mut first = model.last_index() + 1;
        if r.is_multiple_of(7) && model.last_index() > model.snapshot.index + 3 {
            // Overwrite: a new leader replaces a suffix after the snapshot.
            first = model.last_index() - (r >> 8) % 3;
        }
        let term = model.hard_state.term + u64::from(r.is_multiple_of(11));
        let count = 1 + (r >> 16) % 5;
        let entries: Vec<Entry> = (0..count)
            .map(|k| entry(term, first + k, ((r >> 24) % 900) as usize))
            .collect();
        wal.append_entries(&entries);
        model.append(&entries);
        let commit = model
            .last_index()
            .saturating_sub(2)
            .max(model.hard_state.commit);
        let hs = HardState {
            term,
            vote: r % 3,
            commit,
        };
        wal.set_hard_state(hs);
        model.hard_state = hs;
        if r.is_multiple_of(29) && commit > model.snapshot.index {
            let m = SnapshotMarker {
                index: commit,
                term,
            };
            wal.save_snapshot_marker(m);
            model.snapshot = m;
        }
        assert_eq!(wal.last_index(), model.last_index());
        wal.sync().await.unwrap();
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let (names, _) = segment::list_dir(dir).unwrap();
    names.iter().map(|n| dir.join(n.file_name())).collect()
}

#[test]
fn round_trip_with_rotation_overwrite_and_release() {
    crate::runtime::block_on(async {
        let dir = test_dir("round-trip");
        let mut wal = Wal::create(&dir, b"cluster-id=7", small_opts())
            .await
            .unwrap();
        assert!(matches!(
            Wal::create(&dir, b"x", small_opts()).await,
            Err(Error::AlreadyExists { .. })
        ));
        let mut model = Model::default();
        let mut seed = 42;
        drive(&mut wal, &mut model, &mut seed, 400).await;
        // A batch much larger than batch_bytes_max is split into several writes.
        let big: Vec<Entry> = (0..40)
            .map(|k| entry(model.hard_state.term, model.last_index() + 1 + k, 700))
            .collect();
        wal.append_entries(&big);
        model.append(&big);
        wal.sync().await.unwrap();
        drop(wal);
        let segments_before = segment_files(&dir);
        assert!(
            segments_before.len() >= 4,
            "rotation expected: {segments_before:?}"
        );

        let (mut wal, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        assert_eq!(rec.metadata, b"cluster-id=7");
        assert_eq!(rec.truncated_tail, None);
        model.check(&rec);
        assert_eq!(wal.last_index(), model.last_index());

        // Snapshot, then release: only segments wholly below the marker may go.
        let m = mark_snapshot(&mut wal, &mut model, 5).await;
        let maxes: Vec<Option<u64>> = wal.segments.iter().map(|s| s.entry_index_max).collect();
        wal.release_to(m.index + 1).await.unwrap();
        let kept = segment_files(&dir);
        let deleted = segments_before.len() - kept.len();
        assert!(deleted >= 1, "release_to deleted nothing");
        for (i, max) in maxes.iter().enumerate() {
            let should_delete =
                i + 1 < maxes.len() && maxes[..=i].iter().all(|m2| m2.is_none_or(|x| x <= m.index));
            assert_eq!(
                i < deleted,
                should_delete,
                "segment {i} (max entry {max:?})"
            );
        }
        drive(&mut wal, &mut model, &mut seed, 50).await;
        drop(wal);

        let (mut wal, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        model.check(&rec);
        assert_eq!(rec.truncated_tail, None);
        drive(&mut wal, &mut model, &mut seed, 20).await;
        drop(wal);
        let (_wal, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        model.check(&rec);
    });
}

/// Writes and syncs a snapshot marker `back` entries below the last index, in the model too.
async fn mark_snapshot(wal: &mut Wal, model: &mut Model, back: u64) -> SnapshotMarker {
    let m = SnapshotMarker {
        index: model.last_index() - back,
        term: model.hard_state.term,
    };
    wal.save_snapshot_marker(m);
    model.snapshot = m;
    wal.sync().await.unwrap();
    m
}

/// The raft loop's release (issue 22): segments leave the log at once and a task removes
/// their files while appends, syncs and segment cuts go on; a later release queues behind
/// it, and the directory always reopens to the model.
#[test]
fn release_in_the_background_while_the_log_goes_on() {
    crate::runtime::block_on(async {
        let dir = test_dir("release-background");
        let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
        let mut model = Model::default();
        let mut seed = 7;
        drive(&mut wal, &mut model, &mut seed, 400).await;
        let before = segment_files(&dir);
        assert!(before.len() >= 3, "rotation expected: {before:?}");
        let m = mark_snapshot(&mut wal, &mut model, 3).await;
        let in_log = wal.segments.len();
        wal.start_release_to(m.index + 1).await.unwrap();
        assert!(wal.segments.len() < in_log, "no segment left the log");
        // The log goes on (appends, syncs, cuts) while the files are being removed.
        drive(&mut wal, &mut model, &mut seed, 200).await;
        // A second release, while the first may still run, queues behind it (the writer
        // does not wait); once it is finished the files are those of the log.
        let m = mark_snapshot(&mut wal, &mut model, 3).await;
        wal.start_release_to(m.index + 1).await.unwrap();
        wal.finish_release().await.unwrap();
        let files = segment_files(&dir);
        let in_log: Vec<PathBuf> = wal.segments.iter().map(|s| s.path.clone()).collect();
        assert_eq!(files, in_log);
        assert!(
            !files.contains(&before[0]),
            "the oldest segment is still there"
        );
        drop(wal);
        let (_wal, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        model.check(&rec);
    });
}

#[test]
fn overwrite_resolves_like_raft() {
    crate::runtime::block_on(async {
        let dir = test_dir("overwrite");
        let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
        wal.append_entries(&(1..=10).map(|i| entry(1, i, 10)).collect::<Vec<_>>());
        wal.sync().await.unwrap();
        // A new leader at term 2 overwrites from index 6; then term 3 from index 8.
        wal.append_entries(&(6..=9).map(|i| entry(2, i, 10)).collect::<Vec<_>>());
        wal.sync().await.unwrap();
        wal.append_entries(&[entry(3, 8, 10)]);
        assert_eq!(wal.last_index(), 8);
        wal.sync().await.unwrap();
        drop(wal);
        let (wal, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        let terms: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
        let want: Vec<(u64, u64)> = vec![
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 2),
            (7, 2),
            (8, 3),
        ];
        assert_eq!(terms, want);
        assert_eq!(wal.last_index(), 8);
    });
}

#[test]
fn snapshot_install_restarts_log_after_marker() {
    crate::runtime::block_on(async {
        let dir = test_dir("snapshot-install");
        let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
        wal.append_entries(&(1..=5).map(|i| entry(1, i, 10)).collect::<Vec<_>>());
        wal.sync().await.unwrap();
        // A follower installs a snapshot at 100; its log continues from 101.
        wal.save_snapshot_marker(SnapshotMarker {
            index: 100,
            term: 4,
        });
        assert_eq!(wal.last_index(), 100);
        wal.append_entries(&(101..=103).map(|i| entry(4, i, 10)).collect::<Vec<_>>());
        wal.sync().await.unwrap();
        drop(wal);
        let (_, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        assert_eq!(
            rec.snapshot,
            SnapshotMarker {
                index: 100,
                term: 4
            }
        );
        let idx: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![101, 102, 103]);
    });
}

#[test]
fn open_errors_name_the_problem() {
    crate::runtime::block_on(async {
        let dir = test_dir("open-errors");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!Wal::exists(&dir));
        assert!(matches!(
            Wal::open(&dir, small_opts()).await,
            Err(Error::NotFound { .. })
        ));
        // A leftover temp file from an interrupted cut is removed.
        let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
        let mut model = Model::default();
        drive(&mut wal, &mut model, &mut 7, 300).await;
        drop(wal);
        let temp = dir.join("00000000000000ff-0000000000000001.wal.tmp");
        std::fs::write(&temp, b"half a segment").unwrap();
        let (_, rec) = Wal::open(&dir, small_opts()).await.unwrap();
        model.check(&rec);
        assert!(!temp.exists());
        // A missing middle segment is corruption, named after the segment after the gap.
        let files = segment_files(&dir);
        assert!(files.len() >= 3);
        std::fs::remove_file(&files[1]).unwrap();
        match Wal::open(&dir, small_opts()).await {
            Err(Error::Corrupt {
                path,
                offset: 0,
                what,
            }) => {
                assert_eq!(path, files[2]);
                assert!(what.contains("missing"), "{what}");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    });
}

/// Byte image of every file in `dir`.
fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    files
}

fn restore_dir(dir: &Path, image: &[(PathBuf, Vec<u8>)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, b) in image {
        std::fs::write(p, b).unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The file ends at the offset (a crash before the size update reached the disk).
    Truncate,
    /// Everything from the offset on is lost (zeros, as preallocated space reads).
    Zero,
    /// Everything from the offset to the batch end holds garbage (a torn sector).
    Garble,
    /// Only the two sectors from the one holding the offset are lost (read as zeros), later
    /// sectors of the batch persisted.
    Hole,
    /// Only the 512-byte sector holding the offset is lost (reads as zeros).
    LostSector,
}

#[test]
fn torn_tail_at_many_offsets_is_repaired() {
    crate::runtime::block_on(async {
        let dir = test_dir("torn-tail");
        let opts = small_opts();
        let mut wal = Wal::create(&dir, b"meta", opts).await.unwrap();
        let mut model = Model::default();
        let mut seed = 3;
        drive(&mut wal, &mut model, &mut seed, 120).await;
        let synced_model = model.clone();
        let batch_start_offset = wal.write_offset;
        // The last batch: several entries in one write.
        // Two records span several sectors, so a lost sector can sit inside one of them.
        let sizes_bytes = [500, 2500, 500, 500, 2500, 500];
        let last: Vec<Entry> = (1..=6)
            .map(|k| {
                entry(
                    model.hard_state.term,
                    model.last_index() + k,
                    sizes_bytes[k as usize - 1],
                )
            })
            .collect();
        let before_segments = wal.segments.len();
        wal.append_entries(&last);
        model.append(&last);
        wal.sync().await.unwrap();
        assert_eq!(
            wal.segments.len(),
            before_segments,
            "pick a seed where no cut happens"
        );
        let batch_end_offset = wal.write_offset;
        let last_path = wal.current_path().to_path_buf();
        drop(wal);
        let image = snapshot_dir(&dir);
        let full = model.effective();
        let synced = synced_model.effective();

        let mut cases = 0;
        for offset in (batch_start_offset..batch_end_offset).step_by(53) {
            for damage in [
                Damage::Truncate,
                Damage::Zero,
                Damage::Garble,
                Damage::Hole,
                Damage::LostSector,
            ] {
                restore_dir(&dir, &image);
                let mut bytes = std::fs::read(&last_path).unwrap();
                let (o, e) = (offset as usize, batch_end_offset as usize);
                match damage {
                    Damage::Truncate => bytes.truncate(o),
                    Damage::Zero => bytes[o..e].fill(0),
                    Damage::Garble => bytes[o..e]
                        .iter_mut()
                        .for_each(|b| *b = next_rand(&mut seed) as u8 | 1),
                    Damage::Hole => {
                        let s = (o / 512 * 512).max(batch_start_offset as usize);
                        bytes[s..(s + 1024).min(e)].fill(0)
                    }
                    Damage::LostSector => {
                        let s = o / 512 * 512;
                        bytes[s.max(batch_start_offset as usize)..(s + 512).min(e)].fill(0)
                    }
                }
                std::fs::write(&last_path, &bytes).unwrap();

                let (mut wal, rec) = Wal::open(&dir, opts).await.unwrap_or_else(|e| {
                    panic!("open failed after {damage:?} at {offset}: {e}");
                });
                assert!(
                    rec.entries.len() >= synced.len(),
                    "{damage:?} at {offset}: lost synced"
                );
                assert_eq!(rec.entries[..], full[..rec.entries.len()], "not a prefix");
                if matches!(damage, Damage::Garble | Damage::Hole | Damage::LostSector) {
                    // Up to the next 8-aligned offset: damage that only zeroes a record's
                    // zero padding changes nothing, and the tail starts at the next record.
                    let (path, tail_offset, _) = rec.truncated_tail.clone().unwrap();
                    assert_eq!(path, last_path);
                    let damage_start = match damage {
                        Damage::LostSector | Damage::Hole => {
                            (offset / 512 * 512).max(batch_start_offset)
                        }
                        _ => offset,
                    };
                    assert!(
                        tail_offset >= batch_start_offset
                            && tail_offset <= damage_start.next_multiple_of(8),
                        "{damage:?} at {offset}: tail at {tail_offset}, \
                         batch {batch_start_offset}..{batch_end_offset}"
                    );
                }
                // Append after the repair: the crc chain must continue.
                let next = entry(9, rec.entries.last().unwrap().index + 1, 40);
                wal.append_entries(std::slice::from_ref(&next));
                wal.sync().await.unwrap();
                drop(wal);
                let (_, again) = Wal::open(&dir, opts).await.unwrap();
                assert_eq!(
                    again.truncated_tail, None,
                    "{damage:?} at {offset}: not clean"
                );
                assert_eq!(again.entries[..rec.entries.len()], rec.entries[..]);
                assert_eq!(again.entries.last(), Some(&next));
                cases += 1;
            }
        }
        assert!(cases > 100, "{cases}");
    });
}

/// Valid record offsets and payload sizes of a segment file.
fn record_offsets(path: &Path, opts: WalOptions) -> Vec<(u64, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let scan = record::scan_segment(&bytes, opts.batch_bytes_max);
    assert_eq!(scan.stop, Stop::Clean);
    scan.records
        .iter()
        .map(|(off, r)| (*off, r.encoded_bytes() - record::HEADER_BYTES))
        .collect()
}

fn flip_bit(path: &Path, byte_offset: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte_offset as usize] ^= 1 << bit;
    std::fs::write(path, &bytes).unwrap();
}

fn expect_corrupt(r: Result<(Wal, Recovered)>, want_path: &Path, want_offset: u64) {
    match r {
        Err(Error::Corrupt { path, offset, what }) => {
            assert_eq!((path.as_path(), offset), (want_path, want_offset), "{what}");
            let msg = Error::Corrupt { path, offset, what }.to_string();
            assert!(msg.contains(&want_path.display().to_string()));
            assert!(msg.contains(&format!("offset {want_offset}")));
        }
        Err(e) => panic!("expected Corrupt at {want_offset}, got {e}"),
        Ok(_) => panic!(
            "expected Corrupt at {}:{want_offset}, open succeeded",
            want_path.display()
        ),
    }
}

#[test]
fn bit_flips_are_corruption_except_in_the_final_record() {
    crate::runtime::block_on(async {
        let dir = test_dir("bit-flips");
        let opts = small_opts();
        let mut wal = Wal::create(&dir, b"meta", opts).await.unwrap();
        let mut model = Model::default();
        drive(&mut wal, &mut model, &mut 11, 250).await;
        drop(wal);
        let image = snapshot_dir(&dir);
        let files = segment_files(&dir);
        assert!(files.len() >= 3);
        let (last, older) = files.split_last().unwrap();

        let mut flips = 0;
        // Every record of every non-last segment, in its header and in its payload.
        for path in older {
            for (i, (offset, payload_bytes)) in record_offsets(path, opts).into_iter().enumerate() {
                let at = [
                    offset + (i as u64 % 12),
                    offset + 12 + payload_bytes as u64 / 2,
                ];
                for (k, byte) in at.into_iter().enumerate() {
                    restore_dir(&dir, &image);
                    flip_bit(path, byte, (i + k) as u8 % 8);
                    expect_corrupt(Wal::open(&dir, opts).await, path, offset);
                    flips += 1;
                }
            }
        }
        // The last segment: a flip in the payload, type or crc of any record but the final
        // one is corruption.
        let records = record_offsets(last, opts);
        let (final_record, middle) = records.split_last().unwrap();
        for (i, (offset, payload_bytes)) in middle.iter().enumerate() {
            let at = [
                offset + 12 + *payload_bytes as u64 / 2,
                offset + 4,
                offset + 8 + i as u64 % 4,
            ];
            for byte in at {
                restore_dir(&dir, &image);
                flip_bit(last, byte, i as u8 % 8);
                expect_corrupt(Wal::open(&dir, opts).await, last, *offset);
                flips += 1;
            }
        }
        // A header flip far (more than one batch) before the end is corruption too.
        let data_end = final_record.0 + record::record_bytes(final_record.1) as u64;
        let far = middle
            .iter()
            .skip(4)
            .find(|(off, _)| off + (opts.batch_bytes_max as u64) < data_end)
            .expect("last segment holds more than one batch");
        restore_dir(&dir, &image);
        flip_bit(last, far.0 + 2, 7); // length field: the header becomes implausible
        expect_corrupt(Wal::open(&dir, opts).await, last, far.0);
        // The final record: indistinguishable from a torn write, repaired as a torn tail.
        restore_dir(&dir, &image);
        flip_bit(last, final_record.0 + 12 + final_record.1 as u64 / 2, 3);
        let (_, rec) = Wal::open(&dir, opts).await.unwrap();
        let (path, offset, _) = rec.truncated_tail.unwrap();
        assert_eq!((path.as_path(), offset), (last.as_path(), final_record.0));
        assert!(flips > 200, "{flips}");
    });
}

#[test]
fn injected_write_failure_poisons() {
    for fail_point in [FailPoint::Write, FailPoint::Fdatasync] {
        crate::runtime::block_on(async move {
            let dir = test_dir("poison");
            let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
            wal.append_entries(&[entry(1, 1, 10)]);
            wal.sync().await.unwrap();
            wal.fail_point = Some(fail_point);
            wal.append_entries(&[entry(1, 2, 10)]);
            match wal.sync().await {
                Err(Error::Io { op, .. }) => {
                    let want = if fail_point == FailPoint::Write {
                        "write"
                    } else {
                        "fdatasync"
                    };
                    assert_eq!(op, want);
                }
                other => panic!("expected Io error, got {other:?}"),
            }
            // The failure is sticky, even once the disk "recovers".
            wal.fail_point = None;
            assert!(matches!(wal.sync().await, Err(Error::Poisoned)));
            wal.append_entries(&[entry(1, 3, 10)]);
            assert!(matches!(wal.sync().await, Err(Error::Poisoned)));
            assert!(matches!(wal.release_to(1).await, Err(Error::Poisoned)));
            drop(wal);
            let (_, rec) = Wal::open(&dir, small_opts()).await.unwrap();
            assert_eq!(rec.entries[0], entry(1, 1, 10));
        });
    }
}

#[test]
fn decode_segment_bytes_survives_mutated_real_segments() {
    crate::runtime::block_on(async {
        let dir = test_dir("fuzz-seed");
        let mut wal = Wal::create(&dir, b"meta", small_opts()).await.unwrap();
        drive(&mut wal, &mut Model::default(), &mut 5, 60).await;
        drop(wal);
        let valid = std::fs::read(&segment_files(&dir)[0]).unwrap();
        let end = decode_segment_bytes(&valid).end_offset as usize;
        let valid = &valid[..end + 64];
        let mut seed = 99;
        for _ in 0..2000 {
            let mut b = valid.to_vec();
            for _ in 0..1 + next_rand(&mut seed) % 8 {
                let i = next_rand(&mut seed) as usize % b.len();
                b[i] = next_rand(&mut seed) as u8;
            }
            let cut = next_rand(&mut seed) as usize % (b.len() + 1);
            b.truncate(cut);
            let scan = decode_segment_bytes(&b);
            assert!(scan.end_offset as usize <= b.len());
            let records: usize = scan.records.iter().map(|(_, r)| r.encoded_bytes()).sum();
            assert_eq!(records as u64, scan.end_offset);
            if let Some(Record::SegmentHeader(h)) = scan.records.first().map(|(_, r)| r) {
                assert_eq!(h.seq, 0);
            }
        }
    });
}

/// Measures fdatasync latency of small appends into zero-filled, fallocated and
/// non-preallocated segments, records/s at 64 entries per sync, and the worst sync when
/// segments rotate (8 MiB segments, so a few cuts happen). Run with
/// `cargo test --lib measure_preallocation -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_preallocation() {
    for mode in [
        Preallocation::ZeroFill,
        Preallocation::Fallocate,
        Preallocation::None,
    ] {
        crate::runtime::block_on(async move {
            let dir = test_dir("measure");
            let opts = WalOptions {
                preallocation: mode,
                ..WalOptions::default()
            };
            let t = std::time::Instant::now();
            let mut wal = Wal::create(&dir, b"m", opts).await.unwrap();
            let create_ms = t.elapsed().as_secs_f64() * 1e3;
            // Let the background preparation of the next segment finish first.
            glommio::timer::sleep(std::time::Duration::from_millis(500)).await;
            let mut lat_us = Vec::new();
            let mut index = 0;
            for _ in 0..2000 {
                index += 1;
                wal.append_entries(&[entry(1, index, 100)]);
                let t = std::time::Instant::now();
                wal.sync().await.unwrap();
                lat_us.push(t.elapsed().as_micros() as u64);
            }
            lat_us.sort_unstable();
            let p = |q: f64| lat_us[((lat_us.len() as f64 * q) as usize).min(lat_us.len() - 1)];
            let (p50, p90, p99) = (p(0.5), p(0.9), p(0.99));
            let t = std::time::Instant::now();
            let batches = 500;
            for _ in 0..batches {
                let es: Vec<Entry> = (1..=64).map(|k| entry(1, index + k, 100)).collect();
                index += 64;
                wal.append_entries(&es);
                wal.sync().await.unwrap();
            }
            let rate = (batches * 64) as f64 / t.elapsed().as_secs_f64();
            drop(wal);
            let _ = std::fs::remove_dir_all(&dir);

            let dir = test_dir("measure-rotation");
            let opts = WalOptions {
                segment_bytes: 8 << 20,
                ..opts
            };
            let mut wal = Wal::create(&dir, b"m", opts).await.unwrap();
            let mut worst_us = 0;
            let mut index = 0;
            for _ in 0..2000 {
                let es: Vec<Entry> = (1..=64).map(|k| entry(1, index + k, 100)).collect();
                index += 64;
                wal.append_entries(&es);
                let t = std::time::Instant::now();
                wal.sync().await.unwrap();
                worst_us = worst_us.max(t.elapsed().as_micros() as u64);
            }
            let cuts = wal.segments.len() - 1;
            drop(wal);
            let _ = std::fs::remove_dir_all(&dir);
            println!(
                "{mode:?}: create {create_ms:.1} ms; 1x100B sync p50 {p50} us p90 {p90} us \
                 p99 {p99} us; batch 64x100B: {rate:.0} records/s; worst sync over {cuts} \
                 cuts of 8 MiB segments: {worst_us} us"
            );
        });
    }
}

#[test]
fn segment_names_round_trip_and_reject_junk() {
    let name = SegmentName {
        seq: 0x1f,
        first_index: 0xabcdef,
    };
    assert_eq!(name.file_name(), "000000000000001f-0000000000abcdef.wal");
    assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
    for junk in [
        "x.wal",
        "1f-abcdef.wal",
        "000000000000001f-0000000000abcdef.wal.tmp",
        "",
    ] {
        assert_eq!(SegmentName::parse(junk), None, "{junk}");
    }
    assert_eq!(
        SegmentName::parse("000000000000001g-0000000000abcdef.wal"),
        None
    );
}

#[test]
fn broken_chain_and_garbage_after_records_are_corruption() {
    crate::runtime::block_on(async {
        // Two logs identical but for the metadata's content: same sizes, same segment
        // names, different crc chains.
        let dir_a = test_dir("chain-a");
        let dir_b = test_dir("chain-b");
        for (dir, meta) in [(&dir_a, b"meta-A"), (&dir_b, b"meta-B")] {
            let mut wal = Wal::create(dir, meta, small_opts()).await.unwrap();
            drive(&mut wal, &mut Model::default(), &mut 17, 200).await;
        }
        let files_a = segment_files(&dir_a);
        let files_b = segment_files(&dir_b);
        assert_eq!(files_a.len(), files_b.len());
        assert!(files_a.len() >= 3);
        let image = snapshot_dir(&dir_a);

        // Segment 1 of B after segment 0 of A: the chain is broken at its header.
        std::fs::copy(&files_b[1], &files_a[1]).unwrap();
        match Wal::open(&dir_a, small_opts()).await {
            Err(Error::Corrupt {
                path,
                offset: 0,
                what,
            }) => {
                assert_eq!(path, files_a[1]);
                assert!(what.contains("chain"), "{what}");
            }
            other => panic!("expected a broken chain, got {:?}", other.map(|_| ())),
        }

        // A non-zero byte in the zeroed tail of a segment that is not the last.
        restore_dir(&dir_a, &image);
        let bytes = std::fs::read(&files_a[0]).unwrap();
        let end = decode_segment_bytes(&bytes).end_offset;
        flip_bit(&files_a[0], end + 100, 0);
        expect_corrupt(Wal::open(&dir_a, small_opts()).await, &files_a[0], end);

        // Untouched, it opens.
        restore_dir(&dir_a, &image);
        let (_, rec) = Wal::open(&dir_a, small_opts()).await.unwrap();
        assert_eq!(rec.metadata, b"meta-A");
    });
}

#[test]
fn dropped_sync_future_poisons() {
    crate::runtime::block_on(async {
        let dir = test_dir("cancel");
        let mut wal = Wal::create(&dir, b"m", small_opts()).await.unwrap();
        wal.append_entries(&[entry(1, 1, 10)]);
        {
            // Poll once (the write is submitted), then drop: a cancelled sync.
            let mut fut = std::pin::pin!(wal.sync());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert!(matches!(wal.sync().await, Err(Error::Poisoned)));
    });
}

#[test]
fn batches_larger_than_a_segment_rotate_and_replay() {
    crate::runtime::block_on(async {
        let dir = test_dir("tiny-segments");
        // Segments smaller than one batch: a fresh segment takes what fits (at least one
        // record, even one bigger than the segment), then the next one is cut.
        let opts = WalOptions {
            segment_bytes: 4096,
            batch_bytes_max: 16 << 10,
            ..small_opts()
        };
        let mut wal = Wal::create(&dir, b"tiny", opts).await.unwrap();
        assert!(Wal::exists(&dir));
        let mut model = Model::default();
        for (round, sizes) in [[3000, 3000, 10], [7000, 10, 10], [100, 5000, 2000]]
            .iter()
            .enumerate()
        {
            let first = model.last_index() + 1;
            let es: Vec<Entry> = sizes
                .iter()
                .enumerate()
                .map(|(k, &n)| entry(1, first + k as u64, n))
                .collect();
            wal.append_entries(&es);
            model.append(&es);
            model.hard_state = HardState {
                term: 1,
                vote: 1,
                commit: round as u64,
            };
            wal.set_hard_state(model.hard_state);
            wal.sync().await.unwrap();
        }
        let files = segment_files(&dir);
        assert!(files.len() >= 5, "{files:?}");
        assert!(files
            .iter()
            .any(|f| std::fs::metadata(f).unwrap().len() > 4096));
        drop(wal);
        let (_, rec) = Wal::open(&dir, opts).await.unwrap();
        model.check(&rec);
        assert_eq!(rec.truncated_tail, None);
    });
}

/// The append thread of a log opened on a pinned executor may run on every CPU the
/// process may use, not only on the executor's (where io-wq's workers were stuck).
#[test]
fn the_append_thread_is_not_pinned_to_the_raft_core() {
    fn allowed(task: &str) -> String {
        let status = std::fs::read_to_string(format!("{task}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"));
        line.unwrap().split(':').nth(1).unwrap().trim().to_string()
    }
    let main = allowed(&format!("/proc/self/task/{}", std::process::id()));
    let dir = test_dir("append-unpinned");
    let path = dir.to_path_buf();
    let seen = crate::runtime::executor_builder("wal-pinned", glommio::Placement::Fixed(0))
        .spawn(move || async move {
            let mut wal = Wal::create(&path, b"m", small_opts()).await.unwrap();
            wal.append_entries(&[entry(1, 1, 10)]);
            wal.sync().await.unwrap();
            let mut seen = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let task = task.unwrap().file_name().into_string().unwrap();
                let comm = std::fs::read_to_string(format!("/proc/self/task/{task}/comm"));
                if comm.is_ok_and(|c| c.trim() == "keel-wal-append") {
                    seen.push(allowed(&format!("/proc/self/task/{task}")));
                }
            }
            (allowed("/proc/thread-self"), seen)
        })
        .unwrap()
        .join()
        .unwrap();
    let (executor, appenders) = seen;
    assert_eq!(executor, "0", "the executor is pinned");
    assert!(!appenders.is_empty(), "no keel-wal-append thread");
    for a in appenders {
        assert_eq!(a, main, "the append thread runs where the process may");
    }
}

/// The append thread's idle spin (`set_append_spin`): a write that arrives while it
/// polls, one that arrives after the spin ran out (it sleeps, then wakes), a cut to a new
/// segment in between, and the spin turned off again: every entry is written, in order,
/// and read back after a reopen. On a pinned executor spinning too, as the raft core does.
#[test]
fn writes_during_and_after_the_append_threads_spin_are_all_durable() {
    use std::time::Duration;
    let dir = test_dir("append-spin");
    let path = dir.to_path_buf();
    let written = crate::runtime::executor_builder("wal-spin", glommio::Placement::Fixed(0))
        .spawn(move || async move {
            glommio::executor().set_spin_before_park(Some(Duration::from_millis(2)));
            let mut wal = Wal::create(&path, b"m", small_opts()).await.unwrap();
            let mut index = 0;
            for (spin_ms, pause_ms) in [(50, 0), (50, 1), (5, 30), (0, 5), (20, 0)] {
                wal.set_append_spin(Duration::from_millis(spin_ms));
                for _ in 0..8 {
                    index += 1;
                    // 3 KiB entries: a 64 KiB segment is cut every ~20 of them.
                    wal.append_entries(&[entry(1, index, 3 << 10)]);
                    wal.sync().await.unwrap();
                    glommio::timer::sleep(Duration::from_millis(pause_ms)).await;
                }
            }
            index
        })
        .unwrap()
        .join()
        .unwrap();
    let (_wal, recovered) = block_on_wal(&dir);
    let expected: Vec<Entry> = (1..=written).map(|i| entry(1, i, 3 << 10)).collect();
    assert_eq!(recovered.entries, expected);
}

fn block_on_wal(dir: &Path) -> (Wal, Recovered) {
    let dir = dir.to_path_buf();
    crate::runtime::block_on(async move { Wal::open(&dir, small_opts()).await.unwrap() })
}

/// Zeroing ahead (`WalOptions::zero_ahead_bytes`): a write that reaches unwritten space
/// carries zeros to the next step, so on a segment that is not preallocated the file is
/// always exactly that long (capped at the segment's size); without it, exactly as long
/// as its records. Either way the log reads back to the model, across cuts and reopens.
#[test]
fn zeroing_ahead_writes_each_step_once_and_the_log_reads_back() {
    crate::runtime::block_on(async {
        for step in [16u64 << 10, 0] {
            let dir = test_dir(&format!("zero-ahead-{step}"));
            let opts = WalOptions {
                preallocation: Preallocation::None,
                zero_ahead_bytes: step,
                ..small_opts()
            };
            let mut wal = Wal::create(&dir, b"m", opts).await.unwrap();
            let mut model = Model::default();
            let mut seed = 7;
            let mut seqs = std::collections::BTreeSet::new();
            for _ in 0..150 {
                drive(&mut wal, &mut model, &mut seed, 1).await;
                seqs.insert(wal.segments.last().unwrap().name.seq);
                let len = std::fs::metadata(wal.current_path()).unwrap().len();
                let want = match step {
                    0 => wal.write_offset,
                    _ => (wal.write_offset.div_ceil(step) * step).min(opts.segment_bytes),
                };
                assert_eq!(len, want, "step {step}, write offset {}", wal.write_offset);
            }
            assert!(seqs.len() >= 3, "cuts expected: {seqs:?}");
            drop(wal);
            let (mut wal, rec) = Wal::open(&dir, opts).await.unwrap();
            model.check(&rec);
            assert_eq!(rec.truncated_tail, None);
            drive(&mut wal, &mut model, &mut seed, 10).await;
            drop(wal);
            let (_wal, rec) = Wal::open(&dir, opts).await.unwrap();
            model.check(&rec);
        }
    });
}
