//! The data dir lock: one process per data dir (and per `--wal-dir`).
//!
//! Runs on: the main thread, at boot, before anything opens or creates a file in the data
//! dir and before the address checks.
//!
//! Two processes on one data dir each believe they own its WAL and db: a second start
//! with other ports elected itself leader beside the first, and the next restart had to
//! repair a torn WAL tail. etcd refuses this by locking its files (bbolt `flock`s the db,
//! the WAL segments are locked with OFD locks); Keel locks the directory itself, so no lock
//! file is added to the data dir:
//! - the dir is created if missing (mode 0700, as etcd does; durably, `durable_dir`), opened `O_RDONLY |
//!   O_DIRECTORY | O_CLOEXEC` and locked with `flock(LOCK_EX | LOCK_NB)`
//!   (`File::try_lock`), so a second process fails at once instead of waiting;
//! - the holder is named by its PID, found in `/proc/locks` by the directory's
//!   device and inode;
//! - a lock held by no live process (its holder is exiting right now) is retried for
//!   [`HOLDER_EXIT_WAIT`] before boot fails.
//!
//! Invariants:
//! - The lock lives as long as the process image: [`DirLock::keep_for_process_life`]
//!   leaks the descriptor. It is close-on-exec, so the image `main` re-execs after a
//!   snapshot install (same PID) finds it released and locks again.
//! - A process never holds two descriptions of one directory (flock locks conflict per
//!   open file description, even within one process): a WAL dir inside the data dir is
//!   not locked separately.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long boot retries a lock that no live process holds (a holder exiting right now).
pub const HOLDER_EXIT_WAIT: Duration = Duration::from_secs(2);
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub enum Error {
    /// The directory could not be created, opened or locked.
    Io {
        what: &'static str,
        dir: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// Another process holds the lock.
    InUse {
        what: &'static str,
        dir: PathBuf,
        holder_pid: Option<u32>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io {
                what,
                dir,
                op,
                source,
            } => write!(f, "{what} {}: cannot {op} it: {source}", dir.display()),
            Error::InUse {
                what,
                dir,
                holder_pid,
            } => {
                write!(
                    f,
                    "{what} {} is in use by another keel or etcd process",
                    dir.display()
                )?;
                if let Some(pid) = holder_pid {
                    write!(f, " (pid {pid})")?;
                }
                // strerror(EWOULDBLOCK), without io::Error's "(os error 11)".
                write!(f, ": cannot lock it: Resource temporarily unavailable")
            }
        }
    }
}

impl std::error::Error for Error {}

/// A held `flock` on a directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl DirLock {
    /// Creates `dir` if missing (mode 0700) and locks it. `what` names the directory in
    /// errors ("data dir", "wal dir").
    pub fn acquire(what: &'static str, dir: &Path) -> Result<DirLock, Error> {
        let io = |op: &'static str| {
            move |source| Error::Io {
                what,
                dir: dir.to_path_buf(),
                op,
                source,
            }
        };
        // Durably: a data dir whose entry a power cut drops boots as a new member.
        crate::durable_dir::create_dir_all(dir, 0o700).map_err(io("create"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        let deadline = Instant::now() + HOLDER_EXIT_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { file }),
                Err(std::fs::TryLockError::Error(e)) => return Err(io("lock")(e)),
                Err(std::fs::TryLockError::WouldBlock) => {}
            }
            let holder_pid = live_holder(&meta);
            if holder_pid.is_some() || Instant::now() >= deadline {
                return Err(Error::InUse {
                    what,
                    dir: dir.to_path_buf(),
                    holder_pid,
                });
            }
            // Boot-time, on the main thread before any executor starts.
            std::thread::sleep(RETRY_INTERVAL);
        }
    }

    /// Keeps the lock until the process exits or execs (the descriptor is close-on-exec).
    pub fn keep_for_process_life(self) {
        use std::os::fd::IntoRawFd;
        let _fd = self.file.into_raw_fd();
    }
}

/// Locks the data dir, then the WAL dir when it lies outside the data dir. Both paths must
/// be absolute.
pub fn lock_member_dirs(data_dir: &Path, wal_dir: &Path) -> Result<Vec<DirLock>, Error> {
    let mut locks = vec![DirLock::acquire("data dir", data_dir)?];
    if !inside(wal_dir, data_dir) {
        locks.push(DirLock::acquire("wal dir", wal_dir)?);
    }
    Ok(locks)
}

/// Whether `dir` is `root` or lies under it. Compares resolved paths where they exist
/// (symlinks, `..`), else the paths as given.
fn inside(dir: &Path, root: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let root = resolve(root);
    // The nearest existing ancestor of `dir` decides; the missing rest is plain names.
    let mut existing = dir.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
            break;
        };
        rest.push(name);
        if !existing.pop() {
            break;
        }
    }
    let mut resolved = resolve(&existing);
    resolved.extend(rest.iter().rev());
    resolved.starts_with(&root)
}

/// The PID of a live process that holds a `flock` on the file `meta` describes, per
/// `/proc/locks`.
fn live_holder(meta: &std::fs::Metadata) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    flock_holders(&text, major, minor, meta.ino())
        .into_iter()
        .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The PIDs holding a `flock` on (device major:minor, inode) in `/proc/locks` text. Lines
/// look like `1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF`, the device in hex;
/// `1: -> FLOCK ...` lines are waiters, not holders. Never panics on odd lines.
fn flock_holders(text: &str, major: u32, minor: u32, inode: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, _, pid, file, ..] = cols.as_slice() else {
            continue;
        };
        if *kind != "FLOCK" {
            continue; // a waiter ("->"), or a POSIX / OFD lock, which flock ignores
        }
        let mut parts = file.split(':');
        let (Some(maj), Some(min), Some(ino), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let same_file = u32::from_str_radix(maj, 16) == Ok(major)
            && u32::from_str_radix(min, 16) == Ok(minor)
            && ino.parse::<u64>() == Ok(inode);
        // A holder in another PID namespace shows as 0 or -1: not a PID we can name.
        if let (true, Ok(pid @ 1..)) = (same_file, pid.parse::<u32>()) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-dirlock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn proc_locks_lines_name_flock_holders_only() {
        let text = "\
1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 fe:01:5678 0 EOF
2: POSIX  ADVISORY  WRITE 77 fe:01:5678 0 EOF
3: OFDLCK ADVISORY  WRITE -1 fe:01:5678 0 EOF
4: FLOCK  ADVISORY  WRITE 55 fe:01:5679 0 EOF
5: FLOCK  ADVISORY  WRITE 66 103:0a:5678 0 EOF
6: FLOCK  ADVISORY  WRITE 0 fe:01:5678 0 EOF
garbage
7: FLOCK  ADVISORY  WRITE 88 fe:01 0 EOF
";
        assert_eq!(flock_holders(text, 0xfe, 1, 5678), vec![1234]);
        assert_eq!(flock_holders(text, 0x103, 0x0a, 5678), vec![66]);
        assert!(flock_holders(text, 0xfe, 1, 1).is_empty());
        assert!(flock_holders("", 0xfe, 1, 5678).is_empty());
    }

    #[test]
    fn a_locked_dir_is_refused_naming_the_holder() {
        let dir = temp_dir("held").join("data");
        let first = DirLock::acquire("data dir", &dir).expect("first lock");
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "created like etcd's data dir");
        // flock locks conflict per open file description, so this process is a second
        // holder as far as the kernel is concerned, and /proc/locks names it.
        let started = Instant::now();
        let err = DirLock::acquire("data dir", &dir).expect_err("second lock");
        assert!(
            started.elapsed() < HOLDER_EXIT_WAIT,
            "a live holder fails at once"
        );
        let want = format!(
            "data dir {} is in use by another keel or etcd process (pid {}): \
             cannot lock it: Resource temporarily unavailable",
            dir.display(),
            std::process::id()
        );
        assert_eq!(err.to_string(), want);
        drop(first);
        DirLock::acquire("data dir", &dir).expect("free again once released");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_an_error_naming_it() {
        let root = temp_dir("file");
        std::fs::create_dir_all(&root).unwrap();
        let path = root.join("data");
        std::fs::write(&path, b"x").unwrap();
        let err = DirLock::acquire("data dir", &path).expect_err("not a directory");
        assert!(
            err.to_string()
                .starts_with(&format!("data dir {}: cannot ", path.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn the_wal_dir_is_locked_only_outside_the_data_dir() {
        let root = temp_dir("wal");
        let data = root.join("data");
        let inner = lock_member_dirs(&data, &data.join("member/wal")).unwrap();
        assert_eq!(inner.len(), 1);
        assert!(
            !data.join("member").exists(),
            "nothing created inside the data dir"
        );
        drop(inner);
        let same = lock_member_dirs(&data, &data).unwrap();
        assert_eq!(same.len(), 1, "one description per directory");
        drop(same);
        let wal = root.join("wal");
        let both = lock_member_dirs(&data, &wal).unwrap();
        assert_eq!(both.len(), 2);
        let err = DirLock::acquire("wal dir", &wal).expect_err("held");
        assert!(err.to_string().starts_with("wal dir "), "{err}");
        drop(both);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn inside_resolves_dot_dot_and_missing_parts() {
        let root = temp_dir("inside");
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        assert!(inside(&data.join("member/wal"), &data));
        assert!(inside(&data, &data));
        assert!(!inside(&data.join("../wal"), &data));
        assert!(!inside(&root.join("data2/wal"), &data));
        let _ = std::fs::remove_dir_all(root);
    }
}
