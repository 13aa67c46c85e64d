//! Write-ahead log: `<data-dir>/member/wal/`.
//!
//! Runs on: the raft core only (one `Wal` per member; `!Send`, it owns glommio files).
//! The raft driver appends a `Ready`'s entries, hard state and snapshot marker, then calls
//! [`Wal::sync`] once: one write and one fdatasync (group commit) before any of it is
//! acknowledged or sent.
//!
//! # Files
//! Segments are named like etcd's, `{seq:016x}-{first_index:016x}.wal`, where `first_index`
//! is the index after the last entry written when the segment was cut (entries appended
//! later may overwrite lower indexes). The next segment is prepared in the background as
//! `{seq:016x}-next.wal.tmp`, preallocated to `segment_bytes` and fdatasynced (etcd's file
//! pipeline). A cut writes its header records at offset 0, fdatasyncs, renames it into
//! place and fsyncs the directory. So every segment with a final name starts with four durable
//! records that make it self-sufficient once older segments are released:
//! `SegmentHeader { seq, first_index, prev_crc }`, `Metadata`, the latest `HardState`, the
//! latest `SnapshotMarker`. The record byte layout is drawn in [`record`].
//!
//! # Invariants
//! - Records are only appended, 8-aligned, each crc chained from the previous record's crc;
//!   the chain continues across segments through `SegmentHeader::prev_crc`.
//! - At most `batch_bytes_max` bytes are ever written and not yet fdatasynced: `sync`
//!   writes at most that much per `write_at` and fdatasyncs after each write. (A single
//!   fdatasync after several writes would let a crash persist a later write but not an
//!   earlier one, and recovery could not tell that from corruption.)
//! - Every byte after the last valid record of every segment reads as zero: new segments
//!   are fallocated or zero-filled ([`Preallocation`]), a write reaching unwritten space
//!   carries only zeros after its records (`WalOptions::zero_ahead_bytes`), and `open`
//!   zeroes a torn tail before appending after it.
//! - After a failed write or fdatasync the `Wal` is poisoned: every later call returns
//!   [`Error::Poisoned`]. An fsync is never retried (the page cache can no longer be
//!   trusted to hold what we wrote). `sync` counts as poisoned until it returns `Ok`, so
//!   dropping its future half-way (cancellation) poisons too; a failed removal of released
//!   segments (a task of its own, `start_release_to`) poisons the log at the next call.
//! - The `wal-write` and `wal-fsync` failpoints ([`crate::failpoint`], feature
//!   `failpoints`) fail a segment write and the call that makes it durable as a disk would,
//!   so the log is poisoned like above.
//! - Every record is checked before it is written (debug builds decode each batch back) and
//!   when it is replayed (crc, lengths, types, padding).
//!
//! # Recovery rules (`open`)
//! 1. `*.wal.tmp` files (an interrupted cut) are deleted. Segment names are sorted by seq;
//!    the seqs must be consecutive, else `Corrupt` naming the segment after the gap.
//! 2. Each segment is scanned from offset 0: the first record must be a `SegmentHeader`
//!    whose seq and first_index match the file name and whose `prev_crc` equals the
//!    previous segment's last crc (the chain). The first four records (header, metadata,
//!    hard state, snapshot marker) were durable before the rename, so damage there is
//!    `Corrupt` in any segment. The metadata must be the same in every segment.
//! 3. The end of valid data is the first zero record header (preallocated space) or the
//!    end of the file.
//! 4. A bad record (crc mismatch, impossible length, unknown type, non-zero padding, short
//!    read) at offset X, or non-zero bytes after the end of valid data at X:
//!    - in a segment that is not the last: `Corrupt { path, offset: X }`;
//!    - in the last segment: `Corrupt` if the bad record's length is plausible and the next
//!      record validates when chained from the bad record's original crc (its stored crc,
//!      or the crc recomputed over it when the crc field itself is hit), unless the bad
//!      record holds a whole aligned 512-byte sector of zeros (a sector a torn write lost:
//!      unwritten WAL space is always zero); see [`record::is_middle_damage`]. Also
//!      `Corrupt` if any non-zero byte lies beyond `X + batch_bytes_max` (a torn write can
//!      only damage the last, unsynced write). Otherwise it is a torn tail: the bytes from
//!      X to the last non-zero byte are overwritten with zeros and fdatasynced, and
//!      reported in [`Recovered::truncated_tail`].
//!
//!    Inherent ambiguity: damage to the *final* record of the last segment (a bit flip on
//!    disk), to a length field within the last `batch_bytes_max` bytes, or to a record
//!    there that holds a zero sector, looks exactly like a torn write and is repaired as a
//!    torn tail. Those records were, or were about to be, the newest writes; acknowledged
//!    entries among them are still held by raft's quorum and re-sent by the leader. (A lost
//!    final `HardState` can forget a vote; etcd's WAL has the same exposure.)
//! 5. Replay: `HardState` and `SnapshotMarker` keep the latest value; an `Entry` with index
//!    i first drops every entry with index >= i (raft log overwrite: later records win,
//!    as in etcd's WAL reader), then is pushed. Finally entries with index <=
//!    `snapshot.index` are dropped; the rest must be consecutive from `snapshot.index + 1`,
//!    else `Corrupt` at the entry that leaves a gap.
//!
//! Open lists the directory with `std::fs::read_dir` (glommio has no async listing); that
//! is boot-time only. The batch writes (the hot path) run on the log's own unpinned thread
//! ([`segment::AppendThread`]: through io_uring they were punted to io-wq workers pinned to
//! the raft core's CPU); everything else on the write path (segment preparation, the
//! preamble, renames, directory fsyncs, removals) goes through glommio (io_uring).

pub mod record;
pub mod segment;

#[cfg(test)]
pub(crate) mod tests;

pub use record::{decode_segment_bytes, SegmentScan};

use glommio::io::{BufferedFile, Directory};
use record::{Record, SegmentHeader, Stop};
use segment::{io_error, SegmentName};
use std::fmt;
use std::path::{Path, PathBuf};

/// A raft log entry; mirrors raft's `eraftpb::Entry`. Its bytes are shared with raft's
/// entry (issue 22: copying them for the log was two allocations and copies per put on
/// the raft core).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub entry_type: u8,
    pub term: u64,
    pub index: u64,
    pub data: bytes::Bytes,
    pub context: bytes::Bytes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// The index and term of the latest snapshot; entries at or below `index` are not replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
}

/// How a new segment's space is reserved. Either way unwritten space reads as zeros, which
/// recovery relies on.
///
/// Measured on the dev VM (ext4 on virtio, 2 cores shared, 64 MiB segments; 7 runs of
/// `tests::measure_preallocation`, noisy): fdatasync p50 for one 100-byte entry ZeroFill
/// ~250 us (226–293), Fallocate ~230 us (210–275), None ~310 us (214–361); records/s at 64
/// entries per sync ZeroFill ~160k (151–186k), Fallocate ~172k (129–200k), None ~150k.
/// Preparing a 64 MiB segment: ZeroFill 250–310 ms and 64 MiB of extra writes, Fallocate
/// ~2 ms. The expected cost of converting unwritten extents on each fdatasync did not show
/// here, so Fallocate is the default; re-measure on production disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocation {
    /// Write zeros over the whole segment (one fdatasync) before it is used.
    ZeroFill,
    /// `fallocate` (unwritten extents: every append then also converts extents, a metadata
    /// update that fdatasync must journal).
    Fallocate,
    /// No preallocation: appends extend the file (the size changes on every append).
    None,
}

#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Preallocated size of a segment; a new segment is cut when a batch does not fit.
    pub segment_bytes: u64,
    /// One write is at most this big; also the largest record and the largest torn tail
    /// recovery accepts. Never lower it across restarts below the largest record written.
    pub batch_bytes_max: usize,
    pub preallocation: Preallocation,
    /// Open segments with O_DSYNC: each batch write is durable when it completes, one
    /// io_uring operation instead of a write and an fdatasync. Measured on the dev VM
    /// (ext4, fallocated segment, 256-byte appends, 2,000 each, two runs): write +
    /// fdatasync p50 219–233 µs, p99 447 µs; O_DSYNC write p50 143–162 µs, p99 271–349 µs.
    pub dsync_writes: bool,
    /// When a batch write reaches space of the segment that was never written (fallocated,
    /// or past the end without preallocation), the same write also zeroes ahead, to the
    /// next multiple of this many bytes (0: never). Later batches then overwrite written
    /// blocks, and their syncs journal no extent conversion or size change: the ext4 work
    /// of converting unwritten extents is paid once per this many bytes instead of once
    /// per sync, without zero-filling whole segments (`Preallocation::ZeroFill`, which
    /// zeroes 64 MiB in one go beside the log's syncs). A python loop of 3,000-byte O_DSYNC
    /// appends into a fallocated file on the dev VM: p50 120 µs and 43 µs of CPU per write
    /// plain, 69–77 µs and 29–32 µs zeroing 1 MiB ahead (tuning.md, issue 22).
    pub zero_ahead_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            batch_bytes_max: 4 << 20,
            // Chosen by measurement, see `Preallocation`.
            preallocation: Preallocation::Fallocate,
            dsync_writes: true,
            zero_ahead_bytes: 1 << 20,
        }
    }
}

/// What `open` found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub metadata: Vec<u8>,
    pub hard_state: HardState,
    pub snapshot: SnapshotMarker,
    /// The effective log after overwrites, entries with index > `snapshot.index`.
    pub entries: Vec<Entry>,
    /// A torn tail that was zeroed: (segment path, offset, bytes zeroed).
    pub truncated_tail: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug)]
pub enum Error {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// A write or fdatasync failed earlier; the log refuses all further work.
    Poisoned,
    AlreadyExists {
        dir: PathBuf,
    },
    NotFound {
        dir: PathBuf,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "wal: {op} failed on {}: {source}", path.display())
            }
            Error::Corrupt { path, offset, what } => {
                write!(
                    f,
                    "wal: corrupt segment {} at offset {offset}: {what}",
                    path.display()
                )
            }
            Error::Poisoned => write!(f, "wal: poisoned by an earlier write or fdatasync failure"),
            Error::AlreadyExists { dir } => {
                write!(f, "wal: a WAL already exists in {}", dir.display())
            }
            Error::NotFound { dir } => write!(f, "wal: no WAL segments in {}", dir.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The records every segment starts with.
const SEGMENT_PREAMBLE_RECORD_COUNT: usize = 4;

#[derive(Clone, Debug)]
struct SegmentInfo {
    name: SegmentName,
    path: PathBuf,
    /// The largest entry index written to this segment, if any entry was.
    entry_index_max: Option<u64>,
}

/// Test hooks that make the next write or fdatasync fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailPoint {
    Write,
    Fdatasync,
}

pub struct Wal {
    dir: PathBuf,
    dir_handle: Directory,
    /// The removal of released segments, running beside the log (`start_release_to`).
    releasing: Option<glommio::Task<Result<()>>>,
    opts: WalOptions,
    metadata: Vec<u8>,
    /// Oldest first; the last one is open for appending in `file`.
    segments: Vec<SegmentInfo>,
    file: BufferedFile,
    /// The same open file as `file` (a duplicate descriptor), for the appends, which run
    /// on the log's own thread (see [`segment::AppendThread`]).
    appender: segment::Appender,
    appends: segment::AppendThread,
    /// How long the append thread polls for its next write after each write.
    append_spin: std::time::Duration,
    /// Offset of the next record in the current segment.
    write_offset: u64,
    /// Offset just past the current segment's preamble records.
    preamble_end_offset: u64,
    /// The current segment's bytes below this offset have been written (records or the
    /// zeros of `WalOptions::zero_ahead_bytes`); at or past it they may be unwritten.
    written_to: u64,
    /// The crc of the last record written.
    last_crc: u32,
    /// The latest hard state and snapshot marker written (what a new segment repeats).
    hard_state: HardState,
    snapshot: SnapshotMarker,
    /// The index of the last entry written (or the snapshot index).
    written_last_index: u64,
    /// Appended but not yet written, in order.
    pending: Vec<Record>,
    last_index: u64,
    poisoned: bool,
    /// The next segment being created and preallocated in the background (etcd's file
    /// pipeline), so a cut only writes the preamble, renames and fsyncs the directory.
    /// Dropping the `Wal` cancels it; `open` deletes the leftover temp file.
    next_segment: Option<(PathBuf, glommio::Task<Result<BufferedFile>>)>,
    #[cfg(test)]
    pub(crate) fail_point: Option<FailPoint>,
}

impl Wal {
    /// True when `dir` holds at least one segment. Boot-time only (`std::fs`).
    pub fn exists(dir: &Path) -> bool {
        segment::list_dir(dir)
            .map(|(names, _)| !names.is_empty())
            .unwrap_or(false)
    }

    /// Creates a new WAL in `dir` (created if missing) with one segment holding `metadata`.
    pub async fn create(dir: &Path, metadata: &[u8], opts: WalOptions) -> Result<Wal> {
        check_options(&opts);
        if Wal::exists(dir) {
            return Err(Error::AlreadyExists {
                dir: dir.to_path_buf(),
            });
        }
        // Boot-time: make the directory chain, each new entry fsynced in its parent so the
        // chain survives a power cut (`durable_dir`).
        crate::durable_dir::create_dir_all(dir, 0o700)
            .map_err(|e| io_error(dir, "create directory", e))?;
        let dir_handle = Directory::open(dir)
            .await
            .map_err(|e| io_error(dir, "open", e))?;
        let name = SegmentName {
            seq: 0,
            first_index: 1,
        };
        let mut wal = Wal::start(
            dir,
            dir_handle,
            opts,
            metadata.to_vec(),
            name,
            HardState::default(),
            SnapshotMarker::default(),
            0,
        )
        .await?;
        wal.written_last_index = 0;
        wal.spawn_next_segment();
        Ok(wal)
    }

    /// Builds a `Wal` around a freshly cut first segment.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        dir: &Path,
        dir_handle: Directory,
        opts: WalOptions,
        metadata: Vec<u8>,
        name: SegmentName,
        hard_state: HardState,
        snapshot: SnapshotMarker,
        prev_crc: u32,
    ) -> Result<Wal> {
        let (preamble, crc) = encode_preamble(name, prev_crc, &metadata, hard_state, snapshot);
        let preamble_end_offset = preamble.len() as u64;
        let temp = segment::temp_path(dir, name.seq);
        let file = segment::prepare(
            temp.clone(),
            opts.segment_bytes,
            opts.preallocation,
            opts.dsync_writes,
        )
        .await?;
        let path = dir.join(name.file_name());
        segment::install(&file, &temp, &path, &dir_handle, preamble).await?;
        let appender = segment::Appender::new(&file, &path)?;
        Ok(Wal {
            releasing: None,
            dir: dir.to_path_buf(),
            dir_handle,
            opts,
            metadata,
            segments: vec![SegmentInfo {
                name,
                path,
                entry_index_max: None,
            }],
            appender,
            appends: segment::AppendThread::start(dir)?,
            append_spin: std::time::Duration::ZERO,
            file,
            write_offset: preamble_end_offset,
            preamble_end_offset,
            written_to: preamble_end_offset,
            last_crc: crc,
            hard_state,
            snapshot,
            written_last_index: name.first_index - 1,
            pending: Vec::new(),
            last_index: name.first_index - 1,
            poisoned: false,
            next_segment: None,
            #[cfg(test)]
            fail_point: None,
        })
    }

    /// Opens the WAL in `dir`, applying the recovery rules in the module doc.
    pub async fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered)> {
        check_options(&opts);
        let dir_handle = Directory::open(dir)
            .await
            .map_err(|e| io_error(dir, "open", e))?;
        let (names, temps) = segment::list_dir(dir)?;
        for temp in &temps {
            glommio::io::remove(temp)
                .await
                .map_err(|e| io_error(temp, "remove", e))?;
        }
        if !temps.is_empty() {
            dir_handle
                .sync()
                .await
                .map_err(|e| io_error(dir, "directory fsync", e))?;
        }
        if names.is_empty() {
            return Err(Error::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(names.len());
        let mut tail = None;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name.file_name());
            if i > 0 && name.seq != names[i - 1].seq + 1 {
                let what = format!("segment seq {} is missing", names[i - 1].seq + 1);
                return Err(Error::Corrupt {
                    path,
                    offset: 0,
                    what,
                });
            }
            let bytes = segment::read_all(&path).await?;
            let scan = record::scan_segment(&bytes, opts.batch_bytes_max);
            drop(bytes);
            let is_last = i + 1 == names.len();
            check_segment(
                &path,
                *name,
                &scan,
                replay.last_crc,
                is_last,
                opts.batch_bytes_max,
            )?;
            if is_last {
                tail = torn_tail(&scan);
            }
            let entry_index_max = replay.apply(&path, i, &scan)?;
            segments.push((
                SegmentInfo {
                    name: *name,
                    path,
                    entry_index_max,
                },
                scan,
            ));
        }
        let entries = replay.effective_log(&segments)?;
        let (last_info, last_scan) = segments.last().expect("at least one segment");
        let last_path = last_info.path.clone();
        let file = segment::open_rw(&last_path, opts.dsync_writes).await?;
        let truncated_tail = match tail {
            Some((offset, bytes)) => {
                zero_range(&file, &last_path, offset, bytes).await?;
                Some((last_path.clone(), offset, bytes))
            }
            None => None,
        };
        let preamble_end_offset = last_scan
            .records
            .get(SEGMENT_PREAMBLE_RECORD_COUNT)
            .map_or(last_scan.end_offset, |(offset, _)| *offset);
        let last_index = entries.last().map_or(replay.snapshot.index, |e| e.index);
        let recovered = Recovered {
            metadata: replay.metadata.clone().unwrap_or_default(),
            hard_state: replay.hard_state,
            snapshot: replay.snapshot,
            entries,
            truncated_tail,
        };
        let mut wal = Wal {
            releasing: None,
            dir: dir.to_path_buf(),
            dir_handle,
            opts,
            metadata: recovered.metadata.clone(),
            write_offset: last_scan.end_offset,
            preamble_end_offset,
            written_to: last_scan.end_offset,
            last_crc: last_scan.last_crc,
            segments: segments.into_iter().map(|(info, _)| info).collect(),
            appender: segment::Appender::new(&file, &last_path)?,
            appends: segment::AppendThread::start(dir)?,
            append_spin: std::time::Duration::ZERO,
            file,
            hard_state: recovered.hard_state,
            snapshot: recovered.snapshot,
            written_last_index: last_index,
            pending: Vec::new(),
            last_index,
            poisoned: false,
            next_segment: None,
            #[cfg(test)]
            fail_point: None,
        };
        wal.spawn_next_segment();
        wal.invariants();
        Ok((wal, recovered))
    }

    /// Buffers `entries` (in memory until [`Wal::sync`]). Entries must be consecutive; the
    /// first may be at or below `last_index` (raft overwriting a conflicting suffix).
    pub fn append_entries(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            assert!(
                first.index >= 1 && first.index <= self.last_index + 1,
                "append at {} leaves a gap after last_index {}",
                first.index,
                self.last_index
            );
        }
        for w in entries.windows(2) {
            assert_eq!(w[0].index + 1, w[1].index, "entries must be consecutive");
        }
        for e in entries {
            let record = Record::Entry(e.clone());
            assert!(
                record.encoded_bytes() <= self.opts.batch_bytes_max,
                "entry {} is {} bytes, over batch_bytes_max {} (cap proposals lower)",
                e.index,
                record.encoded_bytes(),
                self.opts.batch_bytes_max
            );
            self.pending.push(record);
            self.last_index = e.index;
        }
    }

    /// How long the append thread polls for the next write after each of the following
    /// ones before it sleeps (zero: it sleeps at once); see `raft::persist` (idle spin).
    pub fn set_append_spin(&mut self, spin: std::time::Duration) {
        self.append_spin = spin;
    }

    /// Buffers a hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.pending.push(Record::HardState(hs));
    }

    /// Buffers a snapshot marker: on replay, entries at or below `m.index` are dropped.
    pub fn save_snapshot_marker(&mut self, m: SnapshotMarker) {
        self.pending.push(Record::SnapshotMarker(m));
        self.last_index = self.last_index.max(m.index);
    }

    /// The index of the last entry appended (buffered included), or the snapshot index.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Group commit: writes everything buffered since the last sync (one `write_at` per
    /// `batch_bytes_max`, cutting a new segment when a batch does not fit) and fdatasyncs
    /// after each write; normally that is one write and one fdatasync.
    ///
    /// Not cancel-safe by design: the log counts as poisoned from the first byte written
    /// until `sync` returns `Ok`, so an error or a dropped future leaves it refusing work.
    pub async fn sync(&mut self) -> Result<()> {
        self.check_release().await?;
        self.check_poisoned()?;
        self.poisoned = true;
        let pending = std::mem::take(&mut self.pending);
        let total_bytes: u64 = pending.iter().map(|r| r.encoded_bytes() as u64).sum();
        let mut start = 0;
        while start < pending.len() {
            let mut end = chunk_end(&pending[start..], self.opts.batch_bytes_max) + start;
            let chunk_bytes: u64 = pending[start..end]
                .iter()
                .map(|r| r.encoded_bytes() as u64)
                .sum();
            let room_bytes = self.opts.segment_bytes.saturating_sub(self.write_offset);
            if chunk_bytes > room_bytes {
                if self.write_offset > self.preamble_end_offset {
                    self.cut().await?;
                    continue;
                }
                // A fresh segment smaller than the batch: fill it, at least one record.
                end = start + chunk_end(&pending[start..end], room_bytes as usize).max(1);
            }
            self.write_chunk(&pending[start..end]).await?;
            start = end;
        }
        self.poisoned = false;
        crate::metrics::add(crate::metrics::Counter::WalWriteBytes, total_bytes);
        self.invariants();
        Ok(())
    }

    /// Removes the segments whose entries all lie below `index` and waits until their
    /// files are gone (see [`Wal::start_release_to`]).
    pub async fn release_to(&mut self, index: u64) -> Result<()> {
        self.start_release_to(index).await?;
        self.finish_release().await
    }

    /// Releases the segments whose entries all lie below `index` (a durable snapshot
    /// marker must cover them): they leave the log now, and a task of their own removes
    /// their files, oldest first, with a directory fsync after each, so the survivors are
    /// always a consecutive run of seqs whatever order the unlinks reach the disk in. The
    /// raft loop does not wait for it: one 64 MiB segment's unlink and fsync took ~30 ms
    /// on ext4 here, a stall of every write. A release still running is not waited for:
    /// the new one's task waits for it before removing anything (so files still go
    /// oldest first); a failed one poisons the log (this or the next call returns the
    /// error).
    pub async fn start_release_to(&mut self, index: u64) -> Result<()> {
        self.check_release().await?;
        self.check_poisoned()?;
        assert!(
            self.snapshot.index + 1 >= index,
            "release_to({index}) without a durable snapshot marker at or after {}",
            index.saturating_sub(1)
        );
        let mut paths = Vec::new();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.entry_index_max.is_some_and(|max| max >= index) {
                break;
            }
            paths.push(oldest.path.clone());
            self.segments.remove(0);
        }
        if paths.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let previous = self.releasing.take();
        self.releasing = Some(glommio::spawn_local(async move {
            if let Some(previous) = previous {
                previous.await?;
            }
            let handle = Directory::open(&dir)
                .await
                .map_err(|e| io_error(&dir, "open", e))?;
            for path in paths {
                glommio::io::remove(&path)
                    .await
                    .map_err(|e| io_error(&path, "remove", e))?;
                handle
                    .sync()
                    .await
                    .map_err(|e| io_error(&dir, "directory fsync", e))?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits for a release in flight; its failure poisons the log (a failed directory
    /// fsync is never retried: the directory's state on disk is unknown).
    pub async fn finish_release(&mut self) -> Result<()> {
        if let Some(task) = self.releasing.take() {
            if let Err(e) = task.await {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// A release in flight that has failed poisons the log now (never waits).
    async fn check_release(&mut self) -> Result<()> {
        let Some(task) = self.releasing.as_mut() else {
            return Ok(());
        };
        match futures_lite::future::poll_once(task).await {
            None => Ok(()),
            Some(Ok(())) => {
                self.releasing = None;
                Ok(())
            }
            Some(Err(e)) => {
                self.releasing = None;
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Encodes `records` chained from `last_crc`, writes them at `write_offset` and
    /// fdatasyncs.
    async fn write_chunk(&mut self, records: &[Record]) -> Result<()> {
        let bytes: usize = records.iter().map(Record::encoded_bytes).sum();
        let offset = self.write_offset;
        let zeros = self.zeros_ahead(offset + bytes as u64);
        let mut buf = Vec::with_capacity(bytes + zeros as usize);
        let mut crc = self.last_crc;
        for r in records {
            crc = record::encode_record(&mut buf, r, crc);
        }
        assert!(buf.len() <= self.opts.batch_bytes_max);
        #[cfg(debug_assertions)]
        check_encoded(&buf, records, self.last_crc, self.opts.batch_bytes_max);
        let len = buf.len() as u64;
        buf.resize(buf.len() + zeros as usize, 0);
        // On error the caller (`sync`) leaves the log poisoned.
        self.write_and_sync(buf, offset).await?;
        self.write_offset += len;
        self.written_to = self.written_to.max(offset + len + zeros);
        self.last_crc = crc;
        for r in records {
            match r {
                Record::Entry(e) => {
                    let seg = self.segments.last_mut().expect("current segment");
                    seg.entry_index_max =
                        Some(seg.entry_index_max.map_or(e.index, |m| m.max(e.index)));
                    self.written_last_index = e.index;
                }
                Record::HardState(hs) => self.hard_state = *hs,
                Record::SnapshotMarker(m) => {
                    self.snapshot = *m;
                    self.written_last_index = self.written_last_index.max(m.index);
                }
                Record::Metadata(_) | Record::SegmentHeader(_) => unreachable!("never pending"),
            }
        }
        Ok(())
    }

    /// How many zeros a write of records ending at `end` carries after them
    /// (`WalOptions::zero_ahead_bytes`): none while `end` lies in written space, else up to
    /// the next multiple of `zero_ahead_bytes`, never past the segment's size. Zeros over
    /// unwritten space change nothing recovery reads (it reads as zeros either way).
    fn zeros_ahead(&self, end: u64) -> u64 {
        let step = self.opts.zero_ahead_bytes;
        if step == 0 || self.opts.preallocation == Preallocation::ZeroFill || end <= self.written_to
        {
            return 0;
        }
        let target = end.div_ceil(step).saturating_mul(step);
        target.min(self.opts.segment_bytes).saturating_sub(end)
    }

    async fn write_and_sync(&mut self, buf: Vec<u8>, offset: u64) -> Result<()> {
        let path = self.current_path().to_path_buf();
        #[cfg(test)]
        if self.fail_point == Some(FailPoint::Write) {
            return Err(io_error(
                &path,
                "write",
                std::io::Error::other("injected write failure"),
            ));
        }
        self.appends
            .write_all_at(&self.appender, &path, buf, offset, self.append_spin)
            .await?;
        #[cfg(test)]
        if self.fail_point == Some(FailPoint::Fdatasync) {
            let source = std::io::Error::other("injected fdatasync failure");
            return Err(io_error(&path, "fdatasync", source));
        }
        segment::fdatasync(&self.file, &path, self.opts.dsync_writes).await
    }

    /// Finishes the current segment (its unused tail stays zero) and starts the next one.
    async fn cut(&mut self) -> Result<()> {
        let current = self.segments.last().expect("current segment").name;
        let name = SegmentName {
            seq: current.seq + 1,
            first_index: self.written_last_index + 1,
        };
        let (preamble, crc) = encode_preamble(
            name,
            self.last_crc,
            &self.metadata,
            self.hard_state,
            self.snapshot,
        );
        let preamble_end_offset = preamble.len() as u64;
        let (temp, file) = match self.next_segment.take() {
            Some((temp, task)) => {
                assert_eq!(temp, segment::temp_path(&self.dir, name.seq));
                let file = task.await?;
                (temp, file)
            }
            None => {
                let temp = segment::temp_path(&self.dir, name.seq);
                let opts = self.opts;
                let file = segment::prepare(
                    temp.clone(),
                    opts.segment_bytes,
                    opts.preallocation,
                    opts.dsync_writes,
                );
                (temp.clone(), file.await?)
            }
        };
        let path = self.dir.join(name.file_name());
        segment::install(&file, &temp, &path, &self.dir_handle, preamble).await?;
        self.appender = segment::Appender::new(&file, &path)?;
        let old = std::mem::replace(&mut self.file, file);
        let old_path = self.current_path().to_path_buf();
        self.segments.push(SegmentInfo {
            name,
            path,
            entry_index_max: None,
        });
        self.write_offset = preamble_end_offset;
        self.preamble_end_offset = preamble_end_offset;
        self.written_to = preamble_end_offset;
        self.last_crc = crc;
        self.spawn_next_segment();
        old.close()
            .await
            .map_err(|e| io_error(&old_path, "close", e))
    }

    /// Starts preparing the segment after the current one in the background.
    fn spawn_next_segment(&mut self) {
        assert!(self.next_segment.is_none());
        let seq = self.segments.last().expect("current segment").name.seq + 1;
        let temp = segment::temp_path(&self.dir, seq);
        let prepare = segment::prepare(
            temp.clone(),
            self.opts.segment_bytes,
            self.opts.preallocation,
            self.opts.dsync_writes,
        );
        self.next_segment = Some((temp, glommio::spawn_local(prepare)));
    }

    fn current_path(&self) -> &Path {
        &self.segments.last().expect("current segment").path
    }

    /// Checked at the end of every public mutation in debug and test builds.
    fn invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(!self.segments.is_empty());
        assert_eq!(self.write_offset % record::ALIGN_BYTES as u64, 0);
        assert!(self.preamble_end_offset <= self.write_offset);
        assert!(self.write_offset <= self.written_to);
        for w in self.segments.windows(2) {
            assert_eq!(w[0].name.seq + 1, w[1].name.seq);
        }
        if !self.poisoned && self.pending.is_empty() {
            assert_eq!(self.written_last_index, self.last_index);
        }
        if let Some((temp, _)) = &self.next_segment {
            let seq = self.segments.last().expect("current segment").name.seq + 1;
            assert_eq!(*temp, segment::temp_path(&self.dir, seq));
        }
    }
}

fn check_options(opts: &WalOptions) {
    assert!(opts.batch_bytes_max >= 4096, "batch_bytes_max too small");
    assert!(opts.batch_bytes_max.is_multiple_of(record::ALIGN_BYTES));
    assert!(opts.segment_bytes >= 4096, "segment_bytes too small");
}

/// How many records from the front of `records` fit in `bytes_max` bytes.
fn chunk_end(records: &[Record], bytes_max: usize) -> usize {
    let mut total = 0usize;
    records
        .iter()
        .take_while(|r| {
            total += r.encoded_bytes();
            total <= bytes_max
        })
        .count()
}

fn encode_preamble(
    name: SegmentName,
    prev_crc: u32,
    metadata: &[u8],
    hard_state: HardState,
    snapshot: SnapshotMarker,
) -> (Vec<u8>, u32) {
    let header = SegmentHeader {
        seq: name.seq,
        first_index: name.first_index,
        prev_crc,
    };
    let mut buf = Vec::new();
    let mut crc = record::encode_record(&mut buf, &Record::SegmentHeader(header), prev_crc);
    crc = record::encode_record(&mut buf, &Record::Metadata(metadata.to_vec()), crc);
    crc = record::encode_record(&mut buf, &Record::HardState(hard_state), crc);
    crc = record::encode_record(&mut buf, &Record::SnapshotMarker(snapshot), crc);
    (buf, crc)
}

/// Decodes a just-encoded batch and compares it with what was meant to be written.
#[cfg(debug_assertions)]
fn check_encoded(buf: &[u8], records: &[Record], prev_crc: u32, record_bytes_max: usize) {
    let mut offset = 0;
    let mut crc = prev_crc;
    for r in records {
        match record::decode_at(buf, offset, Some(crc), record_bytes_max) {
            record::Step::Record {
                record,
                crc: c,
                next_offset,
            } => {
                assert_eq!(&record, r);
                crc = c;
                offset = next_offset;
            }
            other => panic!("encoded record does not decode: {other:?}"),
        }
    }
    assert_eq!(offset, buf.len());
}

/// Applies rules 2–4 of the module doc to one scanned segment.
fn check_segment(
    path: &Path,
    name: SegmentName,
    scan: &SegmentScan,
    prev_last_crc: Option<u32>,
    is_last: bool,
    batch_bytes_max: usize,
) -> Result<()> {
    let corrupt = |offset: u64, what: String| {
        Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            what,
        })
    };
    let stop_offset = match &scan.stop {
        Stop::Bad { offset, .. } => *offset,
        Stop::Clean => scan.end_offset,
    };
    if scan.records.len() < SEGMENT_PREAMBLE_RECORD_COUNT {
        let what = match &scan.stop {
            Stop::Bad { what, .. } => format!("damaged segment preamble: {what}"),
            Stop::Clean => "segment preamble is incomplete".to_string(),
        };
        return corrupt(stop_offset, what);
    }
    let header = scan
        .segment_header()
        .expect("first record is the segment header");
    if header.seq != name.seq || header.first_index != name.first_index {
        let what = format!(
            "segment header says seq {} first_index {}, file name says seq {} first_index {}",
            header.seq, header.first_index, name.seq, name.first_index
        );
        return corrupt(0, what);
    }
    if let Some(prev) = prev_last_crc {
        if header.prev_crc != prev {
            let what = format!(
                "crc chain broken: segment starts from {:#010x}, \
                 previous segment ends at {prev:#010x}",
                header.prev_crc
            );
            return corrupt(0, what);
        }
    }
    let damaged = !matches!(scan.stop, Stop::Clean) || scan.last_nonzero_offset.is_some();
    if !damaged {
        return Ok(());
    }
    let what = match &scan.stop {
        Stop::Bad { what, .. } => what.clone(),
        Stop::Clean => "non-zero bytes after the last record".to_string(),
    };
    if !is_last {
        return corrupt(stop_offset, what);
    }
    if let Stop::Bad {
        middle_damage: true,
        ..
    } = scan.stop
    {
        return corrupt(stop_offset, format!("{what}; the record after it is valid"));
    }
    let last_nonzero = scan.last_nonzero_offset.unwrap_or(stop_offset);
    if last_nonzero >= stop_offset + batch_bytes_max as u64 {
        let what = format!(
            "{what}; non-zero bytes at offset {last_nonzero}, \
             beyond one batch ({batch_bytes_max} bytes)"
        );
        return corrupt(stop_offset, what);
    }
    Ok(())
}

/// The torn tail of the last segment, if `check_segment` accepted one: (offset, bytes).
fn torn_tail(scan: &SegmentScan) -> Option<(u64, u64)> {
    let offset = match &scan.stop {
        Stop::Bad { offset, .. } => *offset,
        Stop::Clean => scan.end_offset,
    };
    match (&scan.stop, scan.last_nonzero_offset) {
        (Stop::Clean, None) => None,
        (_, Some(last)) => Some((offset, last + 1 - offset)),
        (Stop::Bad { .. }, None) => Some((offset, 0)),
    }
}

/// Overwrites `[offset, offset + bytes)` with zeros and fdatasyncs (a repaired torn tail).
async fn zero_range(file: &BufferedFile, path: &Path, offset: u64, bytes: u64) -> Result<()> {
    if bytes > 0 {
        segment::write_all_at(file, path, vec![0u8; bytes as usize], offset).await?;
    }
    file.fdatasync()
        .await
        .map_err(|e| io_error(path, "fdatasync", e))
}

/// Replay state across segments (rule 5).
#[derive(Default)]
struct Replay {
    metadata: Option<Vec<u8>>,
    hard_state: HardState,
    snapshot: SnapshotMarker,
    /// The raw log after overwrites, with (segment position, offset) of each entry.
    log: Vec<(Entry, usize, u64)>,
    last_crc: Option<u32>,
}

impl Replay {
    /// Applies a checked segment's records; returns its largest entry index.
    fn apply(
        &mut self,
        path: &Path,
        segment_pos: usize,
        scan: &SegmentScan,
    ) -> Result<Option<u64>> {
        let mut entry_index_max = None;
        for (offset, r) in &scan.records {
            match r {
                Record::SegmentHeader(_) => {}
                Record::Metadata(m) => match &self.metadata {
                    None => self.metadata = Some(m.clone()),
                    Some(prev) if prev == m => {}
                    Some(_) => {
                        let what = "metadata differs from the earlier segments'".to_string();
                        return Err(Error::Corrupt {
                            path: path.to_path_buf(),
                            offset: *offset,
                            what,
                        });
                    }
                },
                Record::HardState(hs) => self.hard_state = *hs,
                Record::SnapshotMarker(m) => self.snapshot = *m,
                Record::Entry(e) => {
                    let keep = self.log.partition_point(|(x, _, _)| x.index < e.index);
                    // The log is sorted by index (an invariant of this loop), so this drops
                    // exactly the entries at or after e.index.
                    self.log.truncate(keep);
                    self.log.push((e.clone(), segment_pos, *offset));
                    entry_index_max =
                        Some(entry_index_max.map_or(e.index, |m: u64| m.max(e.index)));
                }
            }
        }
        self.last_crc = Some(scan.last_crc);
        Ok(entry_index_max)
    }

    fn effective_log(&mut self, segments: &[(SegmentInfo, SegmentScan)]) -> Result<Vec<Entry>> {
        let log = std::mem::take(&mut self.log);
        let mut out: Vec<Entry> = Vec::with_capacity(log.len());
        for (e, segment_pos, offset) in log {
            if e.index <= self.snapshot.index {
                continue;
            }
            let expected = out.last().map_or(self.snapshot.index + 1, |p| p.index + 1);
            if e.index != expected {
                let what = format!("entry index {} leaves a gap: expected {expected}", e.index);
                let path = segments[segment_pos].0.path.clone();
                return Err(Error::Corrupt { path, offset, what });
            }
            out.push(e);
        }
        Ok(out)
    }
}
