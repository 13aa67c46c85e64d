//! The disk that forgets, mounted for real: syscalls in, power cuts, what comes back.
//!
//! Needs root and /dev/fuse (CI runs these as root); without them every test fails,
//! saying so, rather than skipping.

use chaos::disk::{Disk, Loss};
use chaos::rng::Rng;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

struct Fixture {
    disk: Disk,
    dir: PathBuf,
    seed: u64,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        // SAFETY: no arguments.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the disk tests mount a FUSE filesystem with mount(2) and must run as root (euid is {euid})"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "the disk tests need /dev/fuse (the fuse kernel module)"
        );
        let dir = std::env::temp_dir().join(format!("keel-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        let disk = Disk::mount(&dir).unwrap_or_else(|e| panic!("mount at {}: {e}", dir.display()));
        Fixture { disk, dir, seed: 1 }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Cuts the power (all open files must be closed) and mounts what survived.
    fn cut(&mut self, loss: Loss) {
        self.disk.freeze();
        self.seed += 1;
        let report = self
            .disk
            .power_on(loss, &mut Rng::new(self.seed))
            .unwrap_or_else(|e| panic!("power_on: {e}"));
        eprintln!("{report}");
    }

    fn sync_dir(&self, rel: &str) {
        File::open(self.path(rel)).unwrap().sync_all().unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.disk.unmount();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn fsynced_write_survives_a_cut_and_an_unsynced_one_does_not() {
    let mut fx = Fixture::new("fsync");
    let mut f = rw(&fx.path("a"));
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    fx.sync_dir("");
    f.write_at(b"-unsynced", 6).unwrap();
    let mut g = rw(&fx.path("b"));
    g.write_all(b"never named durably").unwrap();
    g.sync_data().unwrap();
    assert_eq!(std::fs::read(fx.path("a")).unwrap(), b"synced-unsynced");
    drop((f, g));

    fx.disk.freeze();
    assert_eq!(
        errno(std::fs::read(fx.path("a"))),
        libc::EIO,
        "a frozen disk answers EIO"
    );
    assert_eq!(errno(std::fs::metadata(fx.path("c"))), libc::EIO);
    fx.cut(Loss::All);
    assert_eq!(std::fs::read(fx.path("a")).unwrap(), b"synced");
    assert_eq!(
        errno(std::fs::metadata(fx.path("b"))),
        libc::ENOENT,
        "fsync of a file does not make its name durable"
    );
    let names: Vec<_> = std::fs::read_dir(&fx.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a"]);
    assert!(
        fx.disk.stats().contains("1 power cuts"),
        "{}",
        fx.disk.stats()
    );
}

#[test]
fn o_dsync_write_survives_without_fsync() {
    let mut fx = Fixture::new("dsync");
    for name in ["d", "plain"] {
        File::create(fx.path(name)).unwrap();
    }
    fx.sync_dir("");
    let d = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(fx.path("d"))
        .unwrap();
    d.write_at(b"dsync data", 0).unwrap();
    let plain = OpenOptions::new()
        .write(true)
        .open(fx.path("plain"))
        .unwrap();
    plain.write_at(b"plain data", 0).unwrap();
    drop((d, plain));
    fx.cut(Loss::All);
    assert_eq!(std::fs::read(fx.path("d")).unwrap(), b"dsync data");
    assert_eq!(std::fs::read(fx.path("plain")).unwrap(), b"");
    assert!(
        fx.disk.stats().contains(" 1 O_DSYNC"),
        "{}",
        fx.disk.stats()
    );
}

/// Runs `child` in a forked process and returns its exit code. A program using the disk
/// must not be the process serving it: a shared mapping of one of its files deadlocks
/// (munmap and page faults hold the address space's mmap_lock while they wait for the
/// server thread, whose allocator may need that lock). `child` must only make syscalls
/// (no allocation, no locks: the fork copied one thread of a multi-threaded process).
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `child` (syscalls only) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// A shared writable mapping longer than the file (as Keel's db maps its file), the file
/// grown with ftruncate, written through the mapping, fdatasynced; then another write
/// through the mapping that is never synced.
#[test]
fn shared_mmap_writes_survive_fdatasync_only() {
    const PAGE: usize = 4096;
    const MAP: usize = 16 * PAGE;
    let mut fx = Fixture::new("mmap");
    let f = rw(&fx.path("db"));
    f.set_len(PAGE as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fx.sync_dir("");
    let path = std::ffi::CString::new(fx.path("db").into_os_string().into_encoded_bytes()).unwrap();
    let code = in_child(|| {
        // SAFETY: syscalls on our own file and mapping; only the two pages inside the
        // file (after ftruncate) are touched.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                return 10;
            }
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let map = libc::mmap(std::ptr::null_mut(), MAP, prot, libc::MAP_SHARED, fd, 0);
            if map == libc::MAP_FAILED {
                return 11;
            }
            if libc::ftruncate(fd, 2 * PAGE as libc::off_t) != 0 {
                return 12;
            }
            let bytes = map.cast::<u8>();
            std::ptr::write_bytes(bytes, b'a', PAGE);
            std::ptr::write_bytes(bytes.add(PAGE), b'b', PAGE);
            if libc::fdatasync(fd) != 0 {
                return 13;
            }
            std::ptr::write_bytes(bytes, b'X', 100);
            if libc::munmap(map, MAP) != 0 {
                return 14;
            }
            if libc::close(fd) != 0 {
                return 15;
            }
            0
        }
    });
    assert_eq!(code, 0, "the mmap child failed (see its exit codes)");
    // The unsynced page reached the file system (closing the file wrote it back) ...
    assert_eq!(&std::fs::read(fx.path("db")).unwrap()[..100], &[b'X'; 100]);
    fx.cut(Loss::All);
    // ... but not the disk.
    let got = std::fs::read(fx.path("db")).unwrap();
    assert_eq!(got.len(), 2 * PAGE);
    assert!(
        got[..PAGE].iter().all(|&b| b == b'a'),
        "the unsynced mmap write was dropped"
    );
    assert!(got[PAGE..].iter().all(|&b| b == b'b'));
}

#[test]
fn fallocate_and_sizes() {
    let mut fx = Fixture::new("fallocate");
    let f = rw(&fx.path("seg"));
    fx.sync_dir("");
    let fd = f.as_raw_fd();
    // SAFETY: plain syscalls on a valid fd.
    let fallocate = |mode, off, len| unsafe {
        if libc::fallocate(fd, mode, off, len) == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        }
    };
    assert_eq!(fallocate(0, 0, 1 << 20), 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert_eq!(fallocate(libc::FALLOC_FL_KEEP_SIZE, 0, 4 << 20), 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert_eq!(
        fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096
        ),
        libc::EOPNOTSUPP
    );
    let mut buf = Vec::new();
    File::open(fx.path("seg"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert!(buf.len() == 1 << 20 && buf.iter().all(|&b| b == 0));
    f.sync_data().unwrap();
    // Sizes the kernel sees after writes, truncates and fallocate, through another path.
    let seg = fx.path("seg");
    let size = || std::fs::metadata(&seg).unwrap().len();
    f.write_at(b"end", (2 << 20) - 3).unwrap();
    assert_eq!(size(), 2 << 20);
    f.set_len(5000).unwrap();
    assert_eq!(size(), 5000);
    assert_eq!(std::fs::read(fx.path("seg")).unwrap().len(), 5000);
    f.set_len(3 << 20).unwrap();
    assert_eq!(size(), 3 << 20);
    assert_eq!(fallocate(0, 0, 4 << 20), 0);
    assert_eq!(size(), 4 << 20);
    drop(f);
    fx.cut(Loss::All);
    assert_eq!(
        size(),
        1 << 20,
        "the fsynced preallocation survives, the rest does not"
    );
    let meta = std::fs::metadata(fx.path("seg")).unwrap();
    assert_eq!(meta.blocks(), 0, "zeros are not stored");
}

#[test]
fn flock_and_ofd_locks_work_on_files_and_directories() {
    let fx = Fixture::new("flock");
    std::fs::create_dir(fx.path("data")).unwrap();
    File::create(fx.path("data/f")).unwrap();
    for rel in ["data", "data/f"] {
        let open = || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(fx.path(rel))
                .unwrap()
        };
        let (a, b) = (open(), open());
        // SAFETY: valid fds.
        let flock = |f: &File, op| unsafe {
            if libc::flock(f.as_raw_fd(), op) == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            }
        };
        assert_eq!(flock(&a, libc::LOCK_EX | libc::LOCK_NB), 0, "{rel}");
        assert_eq!(
            flock(&b, libc::LOCK_EX | libc::LOCK_NB),
            libc::EWOULDBLOCK,
            "{rel}"
        );
        // /proc/locks names it by the mount's device and the inode (Keel looks it up so).
        let meta = a.metadata().unwrap();
        let key = format!(
            "{:02x}:{:02x}:{} ",
            libc::major(meta.dev()),
            libc::minor(meta.dev()),
            meta.ino()
        );
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert!(
            locks
                .lines()
                .any(|l| l.contains("FLOCK") && l.contains(&key)),
            "{rel}: no FLOCK line with {key} in\n{locks}"
        );
        assert_eq!(flock(&a, libc::LOCK_UN), 0);
        assert_eq!(flock(&b, libc::LOCK_EX | libc::LOCK_NB), 0);
        if rel == "data/f" {
            // Open file description locks (etcd locks its WAL files with them).
            let (c, d) = (rw(&fx.path(rel)), rw(&fx.path(rel)));
            let ofd = |f: &File| {
                // SAFETY: zeroed flock is a valid argument; valid fd.
                let mut l: libc::flock = unsafe { std::mem::zeroed() };
                l.l_type = libc::F_WRLCK as i16;
                l.l_whence = libc::SEEK_SET as i16;
                // SAFETY: as above.
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) }
            };
            assert_eq!(ofd(&c), 0, "{}", std::io::Error::last_os_error());
            assert_eq!(ofd(&d), -1);
        }
    }
}

#[test]
fn rename_is_durable_after_the_directory_fsync() {
    let mut fx = Fixture::new("rename");
    std::fs::create_dir(fx.path("d")).unwrap();
    fx.sync_dir("");
    let dir = fx.dir.clone();
    let write_synced = |rel: &str, data: &[u8]| {
        let mut f = File::create(dir.join(rel)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    };
    write_synced("d/name", b"v1");
    fx.sync_dir("d");
    write_synced("d/tmp", b"v2");
    std::fs::rename(fx.path("d/tmp"), fx.path("d/name")).unwrap();
    assert_eq!(std::fs::read(fx.path("d/name")).unwrap(), b"v2");
    fx.cut(Loss::All);
    assert_eq!(
        std::fs::read(fx.path("d/name")).unwrap(),
        b"v1",
        "the rename was lost"
    );
    assert!(!fx.path("d/tmp").exists());

    write_synced("d/tmp", b"v2");
    std::fs::rename(fx.path("d/tmp"), fx.path("d/name")).unwrap();
    fx.sync_dir("d");
    fx.cut(Loss::All);
    assert_eq!(std::fs::read(fx.path("d/name")).unwrap(), b"v2");
    assert!(!fx.path("d/tmp").exists());
    // RENAME_NOREPLACE is honoured.
    write_synced("d/other", b"x");
    let (from, to) = (
        std::ffi::CString::new(fx.path("d/other").into_os_string().into_encoded_bytes()).unwrap(),
        std::ffi::CString::new(fx.path("d/name").into_os_string().into_encoded_bytes()).unwrap(),
    );
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EEXIST))
    );
}
