//! A disk that forgets: an in-memory FUSE filesystem that keeps durable exactly what
//! Linux promises (see [`model`]) and, at a power cut, loses the rest in a seeded way.
//!
//! ```text
//!  program (Keel, etcd) ──syscalls──► kernel (VFS, page cache, flock) ──/dev/fuse──►
//!      fuser session thread ──► Fs (this file) ──Mutex──► model::Model (durable/pending)
//! ```
//!
//! - Writes are write-through (no writeback cache, no direct_io): every write(2) reaches
//!   the model as it happens; pages dirtied through a shared mmap reach it when the
//!   kernel writes them back (fsync, msync, close, or its own writeback) and are pending
//!   like any write until fsync.
//! - Locks: neither FUSE_POSIX_LOCKS nor FUSE_FLOCK_LOCKS is negotiated, so flock(2) and
//!   fcntl locks are handled by the kernel on its own, files and directories alike.
//! - Attributes and entries are cached by the kernel for [`TTL`]: the kernel is the only
//!   client and every change goes through it (it updates a file's size itself after a
//!   write, truncate or fallocate), so the cache cannot go stale; a power cut starts a
//!   new superblock with empty caches.
//! - [`Disk::freeze`] makes every request fail with EIO, under the model's lock, so no
//!   request that started before it can make anything durable after it returns.
//! - [`Disk::power_on`] detaches the old mount (`umount2(MNT_DETACH)`): the kernel tears
//!   the old superblock down once its last user is gone, writing back any dirty pages
//!   to the old session, which answers EIO to all of it; that session's thread then ends
//!   on its own (it is not waited for beyond a moment, so a lingering user of the old
//!   mount cannot hang the harness; if the fuse control fs is mounted the connection is
//!   aborted when the thread outlives [`ZOMBIE_WAIT`]).
//! - The programs using the disk must be other processes than the one serving it: a
//!   shared mapping of a file on the disk, made in the serving process, deadlocks (munmap
//!   and page faults hold the process's mmap_lock while they wait for the session thread,
//!   whose allocator may need that lock).
//! - The kernel itself sends FSYNC after every write through an O_DSYNC/O_SYNC
//!   description (`generic_write_sync`); the model makes such a write durable at the
//!   WRITE already, so the FSYNC only adds what was pending before it.
//!
//! What the model cannot see: the kernel page cache above it. Pages dirtied through a
//! mapping exist only there until written back, so a cut loses them whole (never torn);
//! the kernel splits and merges writes (max_write chunks, whole pages from a mapping)
//! before they arrive; and anything the kernel keeps for itself (flock and fcntl locks,
//! attribute caches) simply ends with the old mount.

pub mod model;
#[cfg(test)]
mod tests;

pub use model::{CutReport, Loss};

use crate::rng::Rng;
use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    Session, SessionACL, TimeOrNow, WriteFlags,
};
use model::{Attr, DirEntry, Ino, Kind, Model};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How long the kernel may cache attributes and entries.
pub const TTL: Duration = Duration::from_secs(1);
/// How long an old session's thread is waited for before its connection is aborted.
pub const ZOMBIE_WAIT: Duration = Duration::from_secs(2);
/// What statfs reports as the size of the disk.
pub const DISK_BYTES: u64 = 64 << 30;

/// Totals since [`Disk::mount`], over all sessions.
#[derive(Debug, Default)]
struct Stats {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    dsync_writes: AtomicU64,
    fsyncs: AtomicU64,
    dir_fsyncs: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
}

struct Handle {
    ino: Ino,
    flags: i32,
    /// A directory's entries as of opendir (or the last readdir from offset 0).
    entries: Option<Vec<DirEntry>>,
}

struct State {
    model: Model,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// The name each inode was last looked up, created or renamed by (for [`Arm`]).
    names: HashMap<Ino, std::ffi::OsString>,
    arm: Option<Arm>,
}

/// A power cut that comes at the `left`th durability request (fsync, fdatasync, directory
/// fsync, O_DSYNC write) from now on a file whose name ends with `suffix` (any file when
/// `None`): the request is refused and nothing of it becomes durable.
struct Arm {
    left: u64,
    suffix: Option<String>,
}

impl State {
    fn named(&mut self, ino: Ino, name: &OsStr) {
        self.names.insert(ino, name.to_os_string());
    }

    /// Whether this durability request on `ino` is the one the power goes off at.
    fn trips(&mut self, ino: Ino) -> bool {
        let Some(arm) = self.arm.as_mut() else {
            return false;
        };
        if let Some(suffix) = &arm.suffix {
            let name = self.names.get(&ino).map(|n| n.as_bytes()).unwrap_or(b"");
            if !name.ends_with(suffix.as_bytes()) {
                return false;
            }
        }
        arm.left = arm.left.saturating_sub(1);
        if arm.left == 0 {
            self.arm = None;
            return true;
        }
        false
    }
}

struct Shared {
    state: Mutex<State>,
    frozen: AtomicBool,
    stats: Arc<Stats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fuser `Filesystem` of one session.
struct Fs(Arc<Shared>);

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: model::BLOCK as u32,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Fs {
    /// Runs `f` on the state unless the power is off (EIO).
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, i32>) -> Result<T, Errno> {
        let mut st = self.0.lock();
        if self.0.frozen.load(Ordering::SeqCst) {
            self.0.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Errno::EIO);
        }
        f(&mut st).map_err(Errno::from_i32)
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl State {
    fn new_handle(&mut self, ino: Ino, flags: i32, entries: Option<Vec<DirEntry>>) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                flags,
                entries,
            },
        );
        fh
    }

    fn close_handle(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            self.model.release(h.ino);
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(
            reply,
            self.with(|s| {
                let a = s.model.lookup(parent.0, name)?;
                s.named(a.ino, name);
                Ok(a)
            }),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.model.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|s| {
            s.model.setattr(
                ino.0,
                mode,
                uid,
                gid,
                size,
                atime.map(time),
                mtime.map(time),
            )
        });
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|s| s.model.readlink(ino.0)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = mode & libc::S_IFMT;
        if kind != 0 && kind != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let r = self.with(|s| {
            let a = s
                .model
                .create(parent.0, name, mode as u16, req.uid(), req.gid())?;
            s.named(a.ino, name);
            Ok(a)
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.with(|s| {
            let a = s
                .model
                .mkdir(parent.0, name, mode as u16, req.uid(), req.gid())?;
            s.named(a.ino, name);
            Ok(a)
        });
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Fs::empty(reply, self.with(|s| s.model.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Fs::empty(reply, self.with(|s| s.model.rmdir(parent.0, name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.with(|s| {
            s.model.symlink(
                parent.0,
                link_name,
                target.as_os_str(),
                req.uid(),
                req.gid(),
            )
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        Fs::empty(
            reply,
            self.with(|s| {
                s.model
                    .rename(parent.0, name, newparent.0, newname, noreplace)?;
                if let Ok(a) = s.model.lookup(newparent.0, newname) {
                    s.named(a.ino, newname);
                }
                Ok(())
            }),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            self.with(|s| s.model.link(ino.0, newparent.0, newname)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.with(|s| {
            s.model.attr(ino.0)?;
            s.model.open(ino.0)?;
            Ok(s.new_handle(ino.0, flags.0, None))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| s.model.read(ino.0, offset, size as u64)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.with(|s| {
            // O_SYNC includes the O_DSYNC bit. A write-back of cached (mmap) pages is not
            // a write through the description, whatever its flags.
            let from_cache = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
            let opened = s.handles.get(&fh.0).map_or(0, |h| h.flags);
            let dsync = !from_cache && (flags.0 | opened) & libc::O_DSYNC != 0;
            if dsync && s.trips(ino.0) {
                self.0.frozen.store(true, Ordering::SeqCst);
                return Err(libc::EIO);
            }
            let n = s.model.write(ino.0, offset, data, dsync)?;
            let st = &self.0.stats;
            st.writes.fetch_add(1, Ordering::Relaxed);
            st.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
            if dsync {
                st.dsync_writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        Fs::empty(reply, self.with(|_| Ok(())));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        Fs::empty(
            reply,
            self.with(|s| {
                s.close_handle(fh.0);
                Ok(())
            }),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.with(|s| {
            if s.trips(ino.0) {
                self.0.frozen.store(true, Ordering::SeqCst);
                return Err(libc::EIO);
            }
            s.model.fsync(ino.0)?;
            self.0.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        Fs::empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.with(|s| {
            let entries = s.model.readdir(ino.0)?;
            s.model.open(ino.0)?;
            Ok(s.new_handle(ino.0, flags.0, Some(entries)))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|s| {
            let fresh = if offset == 0 {
                Some(s.model.readdir(ino.0)?)
            } else {
                None
            };
            let h = s.handles.get_mut(&fh.0).ok_or(libc::EBADF)?;
            if let Some(entries) = fresh {
                h.entries = Some(entries);
            }
            let entries = h.entries.as_deref().unwrap_or_default();
            for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                    break;
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        Fs::empty(
            reply,
            self.with(|s| {
                s.close_handle(fh.0);
                Ok(())
            }),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.with(|s| {
            if s.trips(ino.0) {
                self.0.frozen.store(true, Ordering::SeqCst);
                return Err(libc::EIO);
            }
            s.model.fsync(ino.0)?;
            self.0.stats.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        Fs::empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|s| Ok(s.model.usage())) {
            Ok((inodes, used)) => {
                let blocks = DISK_BYTES / model::BLOCK;
                let free = blocks.saturating_sub(used);
                let files = 1 << 24;
                reply.statfs(
                    blocks,
                    free,
                    free,
                    files,
                    files - inodes.min(files),
                    model::BLOCK as u32,
                    255,
                    model::BLOCK as u32,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        Fs::empty(reply, self.with(|s| s.model.attr(ino.0).map(|_| ())));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let kind = mode & libc::S_IFMT;
        if kind != 0 && kind != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let r = self.with(|s| {
            let a = s
                .model
                .create(parent.0, name, mode as u16, req.uid(), req.gid())?;
            s.named(a.ino, name);
            s.model.open(a.ino)?;
            Ok((a.clone(), s.new_handle(a.ino, flags, None)))
        });
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Fs::empty(
            reply,
            self.with(|s| s.model.fallocate(ino.0, offset, length, mode)),
        );
    }
}

/// One mounted session.
struct Live {
    bg: fuser::BackgroundSession,
    shared: Arc<Shared>,
    /// The mount's id in /proc/self/mountinfo and its device ("0:53").
    mount_id: u64,
    dev: String,
}

/// One mounted filesystem (across power cuts: each [`Disk::power_on`] mounts a new
/// session at the same mountpoint).
pub struct Disk {
    mountpoint: PathBuf,
    stats: Arc<Stats>,
    live: Option<Live>,
    /// The model while no session serves it (a failed remount).
    parked: Option<Model>,
    /// Old sessions whose threads have not ended yet.
    zombies: Vec<(Live, Instant)>,
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The topmost mount at `mountpoint`: (mount id, "major:minor", fs type).
fn top_mount(mountpoint: &Path) -> Option<(u64, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.as_os_str().as_bytes();
    let mut top = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 || unescape(f[4]) != want {
            continue;
        }
        let fstype = f
            .iter()
            .position(|x| *x == "-")
            .and_then(|i| f.get(i + 1))
            .map_or(String::new(), |s| s.to_string());
        // Later lines are mounted on top of earlier ones.
        top = Some((f[0].parse().ok()?, f[2].to_string(), fstype));
    }
    top
}

fn start(mountpoint: &Path, shared: Arc<Shared>) -> Result<Live, String> {
    let path = c_path(mountpoint)?;
    // SAFETY: plain syscalls on valid C strings; the fd is owned right after.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("open /dev/fuse"));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: no arguments, cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let opts = CString::new(format!(
        "fd={},rootmode=40755,user_id={uid},group_id={gid},allow_other",
        fd.as_raw_fd()
    ))
    .expect("no NUL");
    // SAFETY: valid C strings; `data` is the NUL-terminated option string fuse expects.
    let rc = unsafe {
        libc::mount(
            c"keel-disk".as_ptr(),
            path.as_ptr(),
            c"fuse.keel-disk".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("mount fuse at {}", mountpoint.display())));
    }
    let (mount_id, dev, _) = top_mount(mountpoint)
        .ok_or_else(|| format!("{}: mounted, but not in mountinfo", mountpoint.display()))?;
    let detach = |e: String| {
        // SAFETY: valid C string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        e
    };
    // The kernel queued INIT at mount; from_fd answers it before returning.
    let session = Session::from_fd(Fs(shared.clone()), fd, SessionACL::All, Config::default())
        .map_err(|e| detach(format!("fuse handshake: {e}")))?;
    let bg = session
        .spawn()
        .map_err(|e| detach(format!("fuse session thread: {e}")))?;
    Ok(Live {
        bg,
        shared,
        mount_id,
        dev,
    })
}

impl Live {
    /// Detaches the mount if it is still the topmost one at `mountpoint`.
    fn detach(&self, mountpoint: &Path) {
        if top_mount(mountpoint).is_some_and(|(id, _, _)| id == self.mount_id) {
            if let Ok(path) = c_path(mountpoint) {
                // SAFETY: valid C string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    /// Aborts the fuse connection through the control fs, if that is mounted.
    fn abort(&self) {
        let Some((major, minor)) = self.dev.split_once(':') else {
            return;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            return;
        };
        let id = (major << 20) | minor;
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
    }
}

impl Disk {
    /// Mounts an empty filesystem at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path) -> Result<Disk, String> {
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a fuse filesystem needs root (the mount syscall)".into());
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing (modprobe fuse?)".into());
        }
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
        let mut disk = Disk {
            mountpoint,
            stats: Arc::new(Stats::default()),
            live: None,
            parked: Some(Model::new()),
            zombies: Vec::new(),
        };
        disk.start()?;
        Ok(disk)
    }

    fn start(&mut self) -> Result<(), String> {
        let model = self.parked.take().expect("a model to serve");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                model,
                handles: HashMap::new(),
                next_fh: 1,
                names: HashMap::new(),
                arm: None,
            }),
            frozen: AtomicBool::new(false),
            stats: self.stats.clone(),
        });
        match start(&self.mountpoint, shared.clone()) {
            Ok(live) => {
                self.live = Some(live);
                Ok(())
            }
            Err(e) => {
                self.parked = Some(std::mem::take(&mut shared.lock().model));
                Err(e)
            }
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes off: from this instant every request (reads too) fails with EIO and
    /// nothing else becomes durable. Cheap and immediate; call before SIGKILLing the process.
    pub fn freeze(&self) {
        if let Some(live) = &self.live {
            let _g = live.shared.lock();
            live.shared.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Journal mode (see [`model::Model::journal`]): a file's fsync also makes every
    /// pending directory change durable, as ext4's journal commit does in practice.
    pub fn set_journal(&mut self, on: bool) {
        if let Some(live) = &self.live {
            live.shared.lock().model.journal = on;
        } else if let Some(m) = self.parked.as_mut() {
            m.journal = on;
        }
    }

    /// Arms a power cut at the `n`th durability request from now (fsync, fdatasync,
    /// directory fsync, O_DSYNC write) on a file whose name ends with `suffix` (any file
    /// when `None`): that request fails with EIO, nothing of it becomes durable, and the
    /// disk is frozen from then on ([`Disk::frozen`] tells when).
    pub fn arm(&self, n: u64, suffix: Option<&str>) {
        if let Some(live) = &self.live {
            live.shared.lock().arm = Some(Arm {
                left: n.max(1),
                suffix: suffix.map(str::to_string),
            });
        }
    }

    /// Whether the power is off (by [`Disk::freeze`] or an armed cut).
    pub fn frozen(&self) -> bool {
        self.live
            .as_ref()
            .is_none_or(|l| l.shared.frozen.load(Ordering::SeqCst))
    }

    /// Power back on, after the processes using the disk have exited: detaches the old
    /// session, applies `loss` to the frozen state with `rng`, and mounts a fresh session
    /// at the same mountpoint serving only what survived.
    pub fn power_on(&mut self, loss: Loss, rng: &mut Rng) -> Result<CutReport, String> {
        self.freeze();
        if let Some(live) = self.live.take() {
            let model = std::mem::take(&mut live.shared.lock().model);
            self.parked = Some(model);
            live.detach(&self.mountpoint);
            self.zombies.push((live, Instant::now()));
        }
        self.reap(Duration::from_millis(500));
        let report = self
            .parked
            .as_mut()
            .ok_or("the disk was unmounted")?
            .cut(loss, rng);
        self.stats.cuts.fetch_add(1, Ordering::Relaxed);
        self.start()?;
        Ok(report)
    }

    /// Joins old sessions whose threads ended, waiting up to `wait`; aborts the
    /// connections of those older than [`ZOMBIE_WAIT`].
    fn reap(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let mut i = 0;
            while i < self.zombies.len() {
                let (live, since) = &self.zombies[i];
                if live.bg.guard.is_finished() {
                    let (live, _) = self.zombies.swap_remove(i);
                    let _ = live.bg.join();
                    continue;
                }
                if since.elapsed() > ZOMBIE_WAIT {
                    live.abort();
                }
                i += 1;
            }
            if self.zombies.is_empty() || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmount for good (also done on Drop).
    pub fn unmount(&mut self) {
        self.freeze();
        if let Some(live) = self.live.take() {
            live.detach(&self.mountpoint);
            self.zombies.push((live, Instant::now()));
        }
        self.parked = None;
        self.reap(ZOMBIE_WAIT + Duration::from_millis(500));
        // Threads still running end when the kernel lets go of their superblocks.
        self.zombies.clear();
    }

    /// Totals since mount (writes, fsyncs, bytes) for progress lines.
    pub fn stats(&self) -> String {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "disk: {} writes ({} bytes, {} O_DSYNC), {} fsyncs, {} dir fsyncs, {} power cuts, {} requests refused while off",
            get(&s.writes),
            get(&s.write_bytes),
            get(&s.dsync_writes),
            get(&s.fsyncs),
            get(&s.dir_fsyncs),
            get(&s.cuts),
            get(&s.refused),
        )
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.unmount();
    }
}
