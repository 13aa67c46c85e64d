//! Segment files: naming, creation (temp file → preallocate → header → fdatasync → rename →
//! directory fsync), and whole-file reads at open. All I/O goes through glommio.

use super::{Error, Preallocation, Result};
use crate::failpoint::{self, Point};
use glommio::io::{BufferedFile, Directory, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Suffix of a finished segment file.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being created; such files are deleted at open.
pub const TEMP_SUFFIX: &str = ".wal.tmp";
/// Largest segment file we agree to read into memory at open.
pub const SEGMENT_FILE_BYTES_MAX: u64 = 1 << 30;
/// Size of the zero buffers used to fill a new segment and to read one back.
const CHUNK_BYTES: usize = 1 << 20;

/// The sequence number and first raft index encoded in a segment's file name, like etcd:
/// `{seq:016x}-{first_index:016x}.wal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!(
            "{:016x}-{:016x}{SEGMENT_SUFFIX}",
            self.seq, self.first_index
        )
    }

    /// Parses a finished segment's file name; anything else (temp files included) is `None`.
    pub fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(SEGMENT_SUFFIX)?;
        let (seq, first_index) = stem.split_once('-')?;
        if seq.len() != 16 || first_index.len() != 16 {
            return None;
        }
        Some(SegmentName {
            seq: u64::from_str_radix(seq, 16).ok()?,
            first_index: u64::from_str_radix(first_index, 16).ok()?,
        })
    }
}

pub fn io_error(path: &Path, op: &'static str, source: impl Into<std::io::Error>) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        op,
        source: source.into(),
    }
}

/// Segment names found in `dir` (sorted by seq) and temp files left by an interrupted cut.
/// Boot-time only: uses `std::fs::read_dir` (glommio has no async directory listing).
pub fn list_dir(dir: &Path) -> Result<(Vec<SegmentName>, Vec<PathBuf>)> {
    let mut names = Vec::new();
    let mut temps = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, "listing", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, "listing", e))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Some(name) = SegmentName::parse(file_name) {
            names.push(name);
        } else if file_name.ends_with(TEMP_SUFFIX) {
            temps.push(entry.path());
        }
    }
    names.sort();
    Ok((names, temps))
}

/// Writes `buf` at `pos`. A short write is an error, not a retry: on a regular file it only
/// happens when the disk is full, and the caller poisons the log either way.
pub async fn write_all_at(file: &BufferedFile, path: &Path, buf: Vec<u8>, pos: u64) -> Result<()> {
    let len = buf.len();
    if let Some(e) = failpoint::check_io(Point::WalWrite) {
        return Err(io_error(path, "write", e)); // nothing reached the file
    }
    let written = file
        .write_at(buf, pos)
        .await
        .map_err(|e| io_error(path, "write", e))?;
    if written < len {
        let what = format!("short write: {written} of {len} bytes at offset {pos}");
        let source = std::io::Error::new(std::io::ErrorKind::WriteZero, what);
        return Err(io_error(path, "write", source));
    }
    Ok(())
}

/// A segment's open file, duplicated for the WAL's append thread ([`AppendThread`]).
#[derive(Clone)]
pub struct Appender(Arc<std::fs::File>);

impl Appender {
    /// Duplicates `file`'s descriptor: same open file, same flags (`O_DSYNC`), and it
    /// stays valid after `file` closes, so a write still running on the append thread
    /// never lands in whatever file reuses the number.
    #[allow(unsafe_code)]
    pub fn new(file: &BufferedFile, path: &Path) -> Result<Appender> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: `file` is open for as long as this borrow, which ends in this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(file.as_raw_fd()) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|e| io_error(path, "dup", e))?;
        Ok(Appender(Arc::new(std::fs::File::from(owned))))
    }
}

struct Append {
    file: Arc<std::fs::File>,
    buf: Vec<u8>,
    pos: u64,
    /// How long to poll for the next job after this one before sleeping.
    spin: std::time::Duration,
    done: flume::Sender<std::io::Result<()>>,
}

/// The WAL's append thread: every batch write of the log runs here, not through io_uring.
///
/// Why: ext4 cannot complete a buffered `O_DSYNC` write without blocking, so io_uring
/// punts every WAL append to an io-wq worker, and those workers inherit the CPU the raft
/// core's executor is pinned to (Linux keeps a clone within its parent's
/// `sched_setaffinity` mask; `IORING_REGISTER_IOWQ_AFF` cannot widen it). The write's
/// copy, its sync and the inode update then ran on the raft core's CPU between its turns
/// while the other CPU could be idle. This thread is not pinned (`unpin_current_thread`),
/// and it is the log's own: glommio's blocking pool is shared with bcrypt, whose logins
/// could hold every pool thread for tens of milliseconds. put c64: +14% throughput, −10%
/// server CPU per put; put c1: ~11 µs more per sync, the hand-off and the wake back
/// (tuning.md, issue 22).
///
/// After a write whose job asks for it, the thread polls its queue (yielding the CPU to
/// any other runnable thread) for that long before it sleeps: waking a sleeping thread
/// costs tens of microseconds on a VM, a good part of one client's put (`raft::persist`,
/// idle spin).
///
/// One write at a time, in order (the `Wal` awaits each). Dropping it ends the thread
/// once the writes already queued are done; nothing waits for that.
pub struct AppendThread {
    jobs: flume::Sender<Append>,
}

impl AppendThread {
    pub fn start(dir: &Path) -> Result<AppendThread> {
        let (jobs, queue) = flume::unbounded::<Append>();
        std::thread::Builder::new()
            .name("keel-wal-append".into())
            .spawn(move || {
                crate::runtime::unpin_current_thread();
                let mut next = queue.recv().ok();
                while let Some(job) = next {
                    use std::os::unix::fs::FileExt;
                    let _ = job.done.send(job.file.write_all_at(&job.buf, job.pos));
                    next = spin_recv(&queue, job.spin).or_else(|| queue.recv().ok());
                }
            })
            .map_err(|e| io_error(dir, "start the append thread", e))?;
        Ok(AppendThread { jobs })
    }

    /// [`write_all_at`] on the append thread, which then polls for the next job for
    /// `spin` before it sleeps.
    pub async fn write_all_at(
        &self,
        appender: &Appender,
        path: &Path,
        buf: Vec<u8>,
        pos: u64,
        spin: std::time::Duration,
    ) -> Result<()> {
        if let Some(e) = failpoint::check_io(Point::WalWrite) {
            return Err(io_error(path, "write", e)); // nothing reached the file
        }
        let (done, result) = flume::bounded(1);
        let job = Append {
            file: appender.0.clone(),
            buf,
            pos,
            spin,
            done,
        };
        let gone = || {
            io_error(
                path,
                "write",
                std::io::Error::other("the append thread is gone"),
            )
        };
        self.jobs.send(job).map_err(|_| gone())?;
        result
            .recv_async()
            .await
            .map_err(|_| gone())?
            .map_err(|e| io_error(path, "write", e))
    }
}

/// The next job if one arrives within `spin`, polling and yielding the CPU meanwhile.
fn spin_recv<T>(queue: &flume::Receiver<T>, spin: std::time::Duration) -> Option<T> {
    if spin.is_zero() {
        return None;
    }
    let started = std::time::Instant::now();
    loop {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(flume::TryRecvError::Disconnected) => return None,
            Err(flume::TryRecvError::Empty) if started.elapsed() >= spin => return None,
            Err(flume::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// Makes what was written to a segment durable: an fdatasync, or nothing for a file opened
/// with O_DSYNC (`dsync`), whose writes were durable when they completed. The `wal-fsync`
/// failpoint fails whichever of the two made the data durable, after the write, as a
/// failed flush to the disk would: the bytes may or may not be on the disk.
pub async fn fdatasync(file: &BufferedFile, path: &Path, dsync: bool) -> Result<()> {
    if let Some(e) = failpoint::check_io(Point::WalFsync) {
        return Err(io_error(path, if dsync { "write" } else { "fdatasync" }, e));
    }
    if dsync || failpoint::is_on(Point::SkipWalSync) {
        return Ok(());
    }
    file.fdatasync()
        .await
        .map_err(|e| io_error(path, "fdatasync", e))
}

/// Opens an existing segment for reading and appending; with `dsync`, every write is
/// durable when it completes (O_DSYNC), so appends need no separate fdatasync.
pub async fn open_rw(path: &Path, dsync: bool) -> Result<BufferedFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(dsync_flag(dsync))
        .buffered_open(path)
        .await
        .map_err(|e| io_error(path, "open", e))
}

fn dsync_flag(dsync: bool) -> i32 {
    // The `skip-wal-sync` mutant (keel-chaos powercut's proof that it bites).
    if dsync && !failpoint::is_on(Point::SkipWalSync) {
        libc::O_DSYNC
    } else {
        0
    }
}

/// A whole segment file read into memory (see [`read_all`]).
pub struct SegmentBytes {
    map: memmap2::MmapMut,
    len: usize,
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

/// Reads a whole segment file into memory: into an anonymous mapping of its own, not the
/// heap, so the memory goes back to the system when the scan drops it. A segment is 64
/// MiB, and from a heap buffer the allocator kept those pages resident for the life of
/// the process: every restart held ~50 MiB more than a first boot, even with an empty
/// log (tuning.md, issue 23).
pub async fn read_all(path: &Path) -> Result<SegmentBytes> {
    let file = BufferedFile::open(path)
        .await
        .map_err(|e| io_error(path, "open", e))?;
    let size_bytes = file
        .file_size()
        .await
        .map_err(|e| io_error(path, "stat", e))?;
    if size_bytes > SEGMENT_FILE_BYTES_MAX {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            what: format!("segment file is {size_bytes} bytes, over {SEGMENT_FILE_BYTES_MAX}"),
        });
    }
    // A mapping cannot be empty; `len` says how much of it holds the file.
    let mut map = memmap2::MmapMut::map_anon((size_bytes as usize).max(1))
        .map_err(|e| io_error(path, "map memory to read", e))?;
    let mut len = 0;
    while (len as u64) < size_bytes {
        let want = (size_bytes - len as u64).min(CHUNK_BYTES as u64) as usize;
        let got = file
            .read_at(len as u64, want)
            .await
            .map_err(|e| io_error(path, "read", e))?;
        if got.is_empty() {
            break; // the file shrank under us; scan what we have
        }
        let got = &got[..got.len().min(want)];
        map[len..len + got.len()].copy_from_slice(got);
        len += got.len();
    }
    file.close().await.map_err(|e| io_error(path, "close", e))?;
    Ok(SegmentBytes { map, len })
}

/// The temp file a segment with `seq` is prepared in before its first index is known.
pub fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}-next{TEMP_SUFFIX}"))
}

/// Creates `temp`, preallocates it to `segment_bytes` and fdatasyncs it, so the slow part
/// of cutting a segment can run in the background before the segment is needed.
pub async fn prepare(
    temp: PathBuf,
    segment_bytes: u64,
    preallocation: Preallocation,
    dsync: bool,
) -> Result<BufferedFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(dsync_flag(dsync))
        .buffered_open(&temp)
        .await
        .map_err(|e| io_error(&temp, "create", e))?;
    preallocate(&file, &temp, segment_bytes, preallocation).await?;
    file.fdatasync()
        .await
        .map_err(|e| io_error(&temp, "fdatasync", e))?;
    Ok(file)
}

/// Turns a prepared temp file into segment `path`: `preamble` (the self-sufficiency
/// records) is written at offset 0 and fdatasynced, then the file is renamed into place
/// and the directory fsynced. A crash at any point leaves either no segment or a complete
/// preamble under the final name.
pub async fn install(
    file: &BufferedFile,
    temp: &Path,
    path: &Path,
    dir_handle: &Directory,
    preamble: Vec<u8>,
) -> Result<()> {
    write_all_at(file, temp, preamble, 0).await?;
    // `install` does not know whether `file` was opened O_DSYNC: always fdatasync.
    fdatasync(file, temp, false).await?;
    glommio::io::rename(temp, path)
        .await
        .map_err(|e| io_error(path, "rename", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    dir_handle
        .sync()
        .await
        .map_err(|e| io_error(dir, "directory fsync", e))
}

async fn preallocate(
    file: &BufferedFile,
    path: &Path,
    segment_bytes: u64,
    preallocation: Preallocation,
) -> Result<()> {
    match preallocation {
        Preallocation::None => Ok(()),
        Preallocation::Fallocate => file
            .pre_allocate(segment_bytes, false)
            .await
            .map_err(|e| io_error(path, "fallocate", e)),
        Preallocation::ZeroFill => {
            let mut pos = 0u64;
            while pos < segment_bytes {
                let n = (segment_bytes - pos).min(CHUNK_BYTES as u64) as usize;
                write_all_at(file, path, vec![0u8; n], pos).await?;
                pos += n as u64;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spin_recv;
    use std::time::{Duration, Instant};

    #[test]
    fn spin_recv_takes_a_job_that_comes_while_it_polls_and_never_waits_without_a_spin() {
        let (tx, rx) = flume::unbounded::<u32>();
        assert_eq!(
            spin_recv(&rx, Duration::ZERO),
            None,
            "no spin: returns at once"
        );
        tx.send(1).unwrap();
        assert_eq!(
            spin_recv(&rx, Duration::ZERO),
            None,
            "no spin: not even a queued job"
        );
        assert_eq!(rx.try_recv(), Ok(1));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(2).unwrap();
            tx
        });
        assert_eq!(spin_recv(&rx, Duration::from_secs(30)), Some(2));
        let tx = sender.join().unwrap();
        let started = Instant::now();
        assert_eq!(
            spin_recv(&rx, Duration::from_millis(30)),
            None,
            "nothing came"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "it polled the whole spin"
        );
        drop(tx);
        assert_eq!(
            spin_recv(&rx, Duration::from_secs(30)),
            None,
            "disconnected"
        );
    }
}
