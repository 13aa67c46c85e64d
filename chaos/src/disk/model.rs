//! The durability model behind [`super::Disk`], with no FUSE in it: a tree of inodes whose
//! every change is either durable or pending, and the power cut that decides which
//! pending changes made it.
//!
//! What is durable is exactly what Linux promises (fsync(2), fdatasync(2), open(2)
//! `O_DSYNC`, rename(2)):
//! - a regular file has a durable image and a current image (what reads see). A write,
//!   truncate or size-changing fallocate is applied to the current image and appended to
//!   the file's pending list; fsync/fdatasync of the file makes the whole list durable. A
//!   write through an `O_DSYNC`/`O_SYNC` description is durable when it is done (it stays
//!   in the list, marked, so a cut replays it in order after whatever older changes
//!   survive);
//! - a directory has durable and current entries; create, mkdir, link, symlink, unlink,
//!   rmdir and rename are pending in the directory they change until that directory is
//!   fsynced. A rename inside one directory is one atomic change there; a rename between
//!   two directories is two independent changes (the removal in one, the insertion in the
//!   other). fsync of a file does not make its name durable;
//! - mode, owner and times are not modelled as volatile (they change at once and stay);
//! - a cut ([`Model::cut`]) applies a [`Loss`] to every file and directory on its own,
//!   then keeps only the inodes reachable from the root through durable entries.
//!
//! Storage: content is sparse, 4 KiB blocks in a `BTreeMap` (absent = zeros; a block
//! that becomes all zeros is dropped), shared copy-on-write between the durable and the
//! current image, so a synced file costs its data once and an fsync costs the blocks its
//! pending changes touched. An all-zero write is kept pending as a length, not bytes.
//! An inode is freed as soon as nothing can reach it any more: no current entry, no
//! durable entry, no pending directory change naming it, no open handle.

use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub type Ino = u64;
/// An errno value (libc constant).
pub type Errno = i32;
pub type Res<T> = Result<T, Errno>;

pub const ROOT: Ino = 1;
/// The unit a torn write is torn in (aligned to absolute file offsets).
pub const SECTOR: u64 = 512;
/// The storage block; also what `st_blksize` reports.
pub const BLOCK: u64 = 4096;
/// Largest file size accepted (the kernel's own `s_maxbytes` for FUSE is larger).
pub const MAX_SIZE: u64 = 1 << 44;
const NAME_MAX: usize = 255;

/// What a power cut does to each file's and each directory's pending changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Every pending change is lost.
    All,
    /// A random prefix of each pending list survives, in order.
    Prefix,
    /// A random prefix, then of the next change, if it is a write, a random subset of its
    /// 512-byte sectors. Directories: as `Prefix`.
    Torn,
    /// Each pending write's sectors survive or not independently (no order between
    /// unsynced writes); size changes survive with probability 1/2, in order.
    /// Directories: as `Prefix`.
    Subset,
    /// Each file and directory picks one of the above.
    Mixed,
}

impl Loss {
    pub const NAMES: [&'static str; 5] = ["all", "prefix", "torn", "subset", "mixed"];

    fn for_file(self, rng: &mut Rng) -> Loss {
        match self {
            Loss::Mixed => {
                [Loss::All, Loss::Prefix, Loss::Torn, Loss::Subset][rng.below(4) as usize]
            }
            l => l,
        }
    }

    fn for_dir(self, rng: &mut Rng) -> Loss {
        match self {
            Loss::All => Loss::All,
            Loss::Mixed if rng.below(2) == 0 => Loss::All,
            _ => Loss::Prefix,
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = String;

    fn from_str(s: &str) -> Result<Loss, String> {
        match s {
            "all" => Ok(Loss::All),
            "prefix" => Ok(Loss::Prefix),
            "torn" => Ok(Loss::Torn),
            "subset" => Ok(Loss::Subset),
            "mixed" => Ok(Loss::Mixed),
            _ => Err(format!(
                "unknown loss {s:?} (expected one of {})",
                Loss::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = [
            Loss::All,
            Loss::Prefix,
            Loss::Torn,
            Loss::Subset,
            Loss::Mixed,
        ]
        .iter()
        .position(|l| l == self)
        .expect("every loss is listed");
        f.write_str(Loss::NAMES[i])
    }
}

/// What one power cut dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Surviving files that had pending changes at the cut.
    pub files: usize,
    /// Pending file changes of which nothing survived.
    pub ops_dropped: u64,
    /// Written bytes that did not survive (whole writes and torn-off sectors).
    pub bytes_dropped: u64,
    /// Pending directory changes that did not survive.
    pub entries_dropped: u64,
    /// Writes of which some sectors survived and some did not.
    pub torn_writes: u64,
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut: {} files with unsynced changes, {} changes ({} bytes) dropped, {} torn writes, {} dir entries changes dropped",
            self.files, self.ops_dropped, self.bytes_dropped, self.torn_writes, self.entries_dropped
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// In 512-byte units.
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: Kind,
    pub name: OsString,
}

type Block = [u8; BLOCK as usize];

/// Sparse file content. Invariant: no byte at or past `size` is non-zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Content {
    size: u64,
    blocks: BTreeMap<u64, Arc<Block>>,
}

impl Content {
    fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = off;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = rest.len().min(BLOCK as usize - within);
            if rest[..n].iter().all(|&b| b == 0) {
                self.zero_in_block(idx, within, n);
            } else {
                let block = self
                    .blocks
                    .entry(idx)
                    .or_insert_with(|| Arc::new([0; BLOCK as usize]));
                Arc::make_mut(block)[within..within + n].copy_from_slice(&rest[..n]);
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        self.size = self.size.max(off + data.len() as u64);
    }

    fn zero_in_block(&mut self, idx: u64, within: usize, n: usize) {
        if let Some(block) = self.blocks.get_mut(&idx) {
            if n == BLOCK as usize {
                self.blocks.remove(&idx);
                return;
            }
            let b = Arc::make_mut(block);
            b[within..within + n].fill(0);
            if b.iter().all(|&x| x == 0) {
                self.blocks.remove(&idx);
            }
        }
    }

    /// Writes zeros over `[off, off + len)`.
    fn zero(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = off + len;
        let present: Vec<u64> = self
            .blocks
            .range(off / BLOCK..=(end - 1) / BLOCK)
            .map(|(k, _)| *k)
            .collect();
        for k in present {
            let start = k * BLOCK;
            let lo = off.max(start);
            let hi = end.min(start + BLOCK);
            self.zero_in_block(k, (lo - start) as usize, (hi - lo) as usize);
        }
        self.size = self.size.max(end);
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            let keep = size.div_ceil(BLOCK);
            self.blocks.split_off(&keep);
            if !size.is_multiple_of(BLOCK) {
                let idx = size / BLOCK;
                let within = (size % BLOCK) as usize;
                self.zero_in_block(idx, within, BLOCK as usize - within);
            }
        }
        self.size = size;
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size || len == 0 {
            return Vec::new();
        }
        let end = self.size.min(off.saturating_add(len));
        let mut out = vec![0u8; (end - off) as usize];
        for (&k, block) in self.blocks.range(off / BLOCK..=(end - 1) / BLOCK) {
            let start = k * BLOCK;
            let lo = off.max(start);
            let hi = end.min(start + BLOCK);
            out[(lo - off) as usize..(hi - off) as usize]
                .copy_from_slice(&block[(lo - start) as usize..(hi - start) as usize]);
        }
        out
    }
}

/// One pending change to a file's content or size.
#[derive(Clone, Debug)]
enum Change {
    Write {
        off: u64,
        data: Vec<u8>,
    },
    /// A write of `len` zero bytes.
    Zero {
        off: u64,
        len: u64,
    },
    /// truncate / setattr size (shrinks or extends).
    SetSize(u64),
    /// fallocate without KEEP_SIZE past the end: the size becomes at least this.
    Grow(u64),
}

impl Change {
    fn apply(&self, c: &mut Content) {
        match self {
            Change::Write { off, data } => c.write(*off, data),
            Change::Zero { off, len } => c.zero(*off, *len),
            Change::SetSize(n) => c.set_size(*n),
            Change::Grow(n) => c.size = c.size.max(*n),
        }
    }

    /// The written byte range, for writes.
    fn span(&self) -> Option<(u64, u64)> {
        match self {
            Change::Write { off, data } => Some((*off, off + data.len() as u64)),
            Change::Zero { off, len } => Some((*off, off + len)),
            _ => None,
        }
    }

    /// Applies the part of a write inside `[lo, hi)`.
    fn apply_range(&self, c: &mut Content, lo: u64, hi: u64) {
        match self {
            Change::Write { off, data } => {
                c.write(lo, &data[(lo - off) as usize..(hi - off) as usize])
            }
            Change::Zero { .. } => c.zero(lo, hi - lo),
            _ => unreachable!("apply_range of a size change"),
        }
    }

    /// Applies each sector of a write with probability 1/2 (adjacent survivors merged).
    /// Returns (sectors kept, sectors in all, bytes dropped).
    fn apply_sectors(&self, c: &mut Content, rng: &mut Rng) -> (u64, u64, u64) {
        let (off, end) = self.span().expect("apply_sectors of a write");
        let (mut kept, mut total, mut dropped) = (0, 0, 0);
        let mut run: Option<(u64, u64)> = None;
        let mut lo = off;
        while lo < end {
            let hi = ((lo / SECTOR + 1) * SECTOR).min(end);
            total += 1;
            if rng.chance(0.5) {
                kept += 1;
                run = match run {
                    Some((a, b)) if b == lo => Some((a, hi)),
                    Some((a, b)) => {
                        self.apply_range(c, a, b);
                        Some((lo, hi))
                    }
                    None => Some((lo, hi)),
                };
            } else {
                dropped += hi - lo;
            }
            lo = hi;
        }
        if let Some((a, b)) = run {
            self.apply_range(c, a, b);
        }
        (kept, total, dropped)
    }

    fn bytes(&self) -> u64 {
        self.span().map_or(0, |(a, b)| b - a)
    }
}

#[derive(Clone, Debug)]
struct Pending {
    change: Change,
    /// Durable already (an O_DSYNC write): every cut keeps it.
    sticky: bool,
}

#[derive(Debug, Default)]
struct FileData {
    cur: Content,
    dur: Content,
    pending: Vec<Pending>,
}

impl FileData {
    /// fsync: the durable image becomes the current one. Only the blocks the pending
    /// changes touched are looked at (shared with the current image, not copied).
    fn sync(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut touched = BTreeSet::new();
        for p in self.pending.drain(..) {
            match &p.change {
                Change::Write { .. } | Change::Zero { .. } => {
                    let (a, b) = p.change.span().expect("a write");
                    touched.extend(a / BLOCK..=(b - 1) / BLOCK);
                }
                Change::SetSize(n) => {
                    self.dur.set_size(*n);
                    touched.insert(n / BLOCK);
                }
                Change::Grow(n) => self.dur.size = self.dur.size.max(*n),
            }
        }
        for k in touched {
            match self.cur.blocks.get(&k) {
                Some(b) => {
                    self.dur.blocks.insert(k, b.clone());
                }
                None => {
                    self.dur.blocks.remove(&k);
                }
            }
        }
        self.dur.size = self.cur.size;
        #[cfg(test)]
        assert_eq!(self.dur, self.cur, "fsync left the durable image behind");
    }

    /// Applies `loss` to the pending list; afterwards current = durable = what survived.
    fn cut(&mut self, loss: Loss, rng: &mut Rng, report: &mut CutReport) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        report.files += 1;
        let n = pending.len() as u64;
        let prefix = match loss {
            Loss::All => 0,
            Loss::Prefix | Loss::Torn => rng.below(n + 1),
            Loss::Subset => n,
            Loss::Mixed => unreachable!("resolved per file"),
        };
        for (i, p) in pending.iter().enumerate() {
            let i = i as u64;
            if p.sticky || (i < prefix && loss != Loss::Subset) {
                p.change.apply(&mut self.dur);
            } else if loss == Loss::Subset || (loss == Loss::Torn && i == prefix) {
                if p.change.span().is_some() {
                    let (kept, total, dropped) = p.change.apply_sectors(&mut self.dur, rng);
                    report.bytes_dropped += dropped;
                    if kept == 0 {
                        report.ops_dropped += 1;
                    } else if kept < total {
                        report.torn_writes += 1;
                    }
                } else if loss == Loss::Subset && rng.chance(0.5) {
                    p.change.apply(&mut self.dur);
                } else {
                    report.ops_dropped += 1;
                }
            } else {
                report.ops_dropped += 1;
                report.bytes_dropped += p.change.bytes();
            }
        }
        self.cur = self.dur.clone();
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Insert(OsString, Ino),
    Remove(OsString),
    /// A rename inside this directory (atomic: the old name or the new one).
    Rename(OsString, OsString, Ino),
}

impl DirOp {
    fn target(&self) -> Option<Ino> {
        match self {
            DirOp::Insert(_, i) | DirOp::Rename(_, _, i) => Some(*i),
            DirOp::Remove(_) => None,
        }
    }

    /// Applies the change to `entries`; returns (inodes that lost an entry, inode that
    /// gained one).
    fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) -> (Vec<Ino>, Option<Ino>) {
        let mut lost = Vec::new();
        match self {
            DirOp::Insert(name, ino) => {
                lost.extend(entries.insert(name.clone(), *ino));
                (lost, Some(*ino))
            }
            DirOp::Remove(name) => {
                lost.extend(entries.remove(name));
                (lost, None)
            }
            DirOp::Rename(from, to, ino) => {
                lost.extend(entries.remove(from));
                lost.extend(entries.insert(to.clone(), *ino));
                (lost, Some(*ino))
            }
        }
    }
}

#[derive(Debug, Default)]
struct DirData {
    cur: BTreeMap<OsString, Ino>,
    dur: BTreeMap<OsString, Ino>,
    pending: Vec<DirOp>,
    /// The current parent (for `..`).
    parent: Ino,
}

#[derive(Debug)]
enum Node {
    File(FileData),
    Dir(DirData),
    Symlink(OsString),
}

#[derive(Debug)]
struct Inode {
    node: Node,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Current entries naming this inode.
    links: u32,
    /// Durable entries naming it (in any directory, reachable or not).
    dlinks: u32,
    /// Pending directory changes that would add an entry naming it.
    prefs: u32,
    /// Open handles (files and directories).
    opens: u32,
}

impl Inode {
    fn new(node: Node, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            node,
            perm: perm & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 0,
            dlinks: 0,
            prefs: 0,
            opens: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.node {
            Node::File(_) => Kind::File,
            Node::Dir(_) => Kind::Dir,
            Node::Symlink(_) => Kind::Symlink,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// The whole filesystem.
#[derive(Debug)]
pub struct Model {
    nodes: BTreeMap<Ino, Inode>,
    next: Ino,
    /// An ext4-like journal: fsync or fdatasync of a file also makes every pending
    /// directory change durable (ext4 commits the whole running transaction, which holds
    /// them). More than Linux promises; off by default (strict, see the module doc).
    pub journal: bool,
}

impl Default for Model {
    fn default() -> Model {
        Model::new()
    }
}

fn check_name(name: &OsStr) -> Res<()> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(libc::EINVAL);
    }
    Ok(())
}

impl Model {
    /// An empty filesystem (the root directory, durable, mode 0755, owned by root).
    pub fn new() -> Model {
        let mut root = Inode::new(
            Node::Dir(DirData {
                parent: ROOT,
                ..DirData::default()
            }),
            0o755,
            0,
            0,
        );
        root.links = 1;
        root.dlinks = 1;
        Model {
            nodes: BTreeMap::from([(ROOT, root)]),
            next: ROOT + 1,
            journal: false,
        }
    }

    fn node(&self, ino: Ino) -> Res<&Inode> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Res<&mut Inode> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Res<&DirData> {
        match &self.node(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Res<&mut DirData> {
        match &mut self.node_mut(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn file(&self, ino: Ino) -> Res<&FileData> {
        match &self.node(ino)?.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(libc::EISDIR),
            Node::Symlink(_) => Err(libc::EINVAL),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Res<&mut FileData> {
        match &mut self.node_mut(ino)?.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(libc::EISDIR),
            Node::Symlink(_) => Err(libc::EINVAL),
        }
    }

    pub fn attr(&self, ino: Ino) -> Res<Attr> {
        let n = self.node(ino)?;
        let (size, blocks, nlink) = match &n.node {
            Node::File(f) => (
                f.cur.size,
                f.cur.blocks.len() as u64 * (BLOCK / 512),
                n.links,
            ),
            Node::Dir(d) => {
                let subdirs = d
                    .cur
                    .values()
                    .filter(|i| matches!(self.nodes.get(i).map(|n| &n.node), Some(Node::Dir(_))))
                    .count() as u32;
                (BLOCK, BLOCK / 512, 2 + subdirs)
            }
            Node::Symlink(t) => (t.len() as u64, 0, n.links),
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            blocks,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Res<Attr> {
        if name.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        let ino = *self.dir(parent)?.cur.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    /// Changes what setattr may change. `size` is a pending change like a write.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &mut self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Res<Attr> {
        if let Some(size) = size {
            self.set_size(ino, size)?;
        }
        let n = self.node_mut(ino)?;
        if let Some(mode) = mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            n.uid = uid;
        }
        if let Some(gid) = gid {
            n.gid = gid;
        }
        if let Some(t) = atime {
            n.atime = t;
        }
        if let Some(t) = mtime {
            n.mtime = t;
        }
        n.ctime = SystemTime::now();
        self.attr(ino)
    }

    /// Adds the entry `name` → `ino` to `parent` (current, and pending for its durable
    /// image). The caller checked that `name` is free.
    fn add_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Res<()> {
        let d = self.dir_mut(parent)?;
        d.cur.insert(name.to_owned(), ino);
        d.pending.push(DirOp::Insert(name.to_owned(), ino));
        self.node_mut(parent)?.touch();
        let n = self.node_mut(ino)?;
        n.links += 1;
        n.prefs += 1;
        n.ctime = SystemTime::now();
        Ok(())
    }

    fn free_name(&self, parent: Ino, name: &OsStr) -> Res<()> {
        check_name(name)?;
        if self.dir(parent)?.cur.contains_key(name) {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    fn make(
        &mut self,
        parent: Ino,
        name: &OsStr,
        node: Node,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Res<Attr> {
        self.free_name(parent, name)?;
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Inode::new(node, perm, uid, gid));
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    /// Creates an empty regular file (the content is durable as empty; the name is
    /// pending in `parent`).
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Res<Attr> {
        self.make(
            parent,
            name,
            Node::File(FileData::default()),
            perm,
            uid,
            gid,
        )
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, perm: u16, uid: u32, gid: u32) -> Res<Attr> {
        let d = DirData {
            parent,
            ..DirData::default()
        };
        self.make(parent, name, Node::Dir(d), perm, uid, gid)
    }

    pub fn symlink(
        &mut self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Res<Attr> {
        self.make(
            parent,
            name,
            Node::Symlink(target.to_owned()),
            0o777,
            uid,
            gid,
        )
    }

    pub fn readlink(&self, ino: Ino) -> Res<OsString> {
        match &self.node(ino)?.node {
            Node::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// A hard link (not to a directory).
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Res<Attr> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.free_name(parent, name)?;
        self.add_entry(parent, name, ino)?;
        self.attr(ino)
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr, want_dir: bool) -> Res<()> {
        let ino = *self.dir(parent)?.cur.get(name).ok_or(libc::ENOENT)?;
        match (&self.node(ino)?.node, want_dir) {
            (Node::Dir(d), true) if !d.cur.is_empty() => return Err(libc::ENOTEMPTY),
            (Node::Dir(_), true) => {}
            (Node::Dir(_), false) => return Err(libc::EISDIR),
            (_, true) => return Err(libc::ENOTDIR),
            (_, false) => {}
        }
        let d = self.dir_mut(parent)?;
        d.cur.remove(name);
        d.pending.push(DirOp::Remove(name.to_owned()));
        self.node_mut(parent)?.touch();
        let n = self.node_mut(ino)?;
        n.links -= 1;
        n.ctime = SystemTime::now();
        self.maybe_free(ino);
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        self.remove_entry(parent, name, false)
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        self.remove_entry(parent, name, true)
    }

    /// rename(2) / renameat2(2) with or without RENAME_NOREPLACE.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        let src = *self.dir(parent)?.cur.get(name).ok_or(libc::ENOENT)?;
        check_name(newname)?;
        let dst = self.dir(newparent)?.cur.get(newname).copied();
        let src_is_dir = self.node(src)?.kind() == Kind::Dir;
        if src_is_dir {
            // Not into itself or below itself.
            let mut at = newparent;
            loop {
                if at == src {
                    return Err(libc::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            match (&self.node(dst)?.node, src_is_dir) {
                (Node::Dir(_), false) => return Err(libc::EISDIR),
                (Node::Dir(d), true) if !d.cur.is_empty() => return Err(libc::ENOTEMPTY),
                (Node::Dir(_), true) => {}
                (_, true) => return Err(libc::ENOTDIR),
                (_, false) => {}
            }
        }
        self.dir_mut(parent)?.cur.remove(name);
        self.dir_mut(newparent)?.cur.insert(newname.to_owned(), src);
        if parent == newparent {
            let d = self.dir_mut(parent)?;
            d.pending
                .push(DirOp::Rename(name.to_owned(), newname.to_owned(), src));
        } else {
            self.dir_mut(parent)?
                .pending
                .push(DirOp::Remove(name.to_owned()));
            self.dir_mut(newparent)?
                .pending
                .push(DirOp::Insert(newname.to_owned(), src));
            self.node_mut(parent)?.touch();
        }
        self.node_mut(newparent)?.touch();
        let n = self.node_mut(src)?;
        n.prefs += 1;
        n.ctime = SystemTime::now();
        if let Node::Dir(d) = &mut n.node {
            d.parent = newparent;
        }
        if let Some(dst) = dst {
            let n = self.node_mut(dst)?;
            n.links -= 1;
            n.ctime = SystemTime::now();
            self.maybe_free(dst);
        }
        Ok(())
    }

    pub fn open(&mut self, ino: Ino) -> Res<()> {
        self.node_mut(ino)?.opens += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
            self.maybe_free(ino);
        }
    }

    pub fn read(&self, ino: Ino, off: u64, len: u64) -> Res<Vec<u8>> {
        Ok(self.file(ino)?.cur.read(off, len))
    }

    fn change(&mut self, ino: Ino, change: Change, sticky: bool) -> Res<()> {
        let f = self.file_mut(ino)?;
        change.apply(&mut f.cur);
        f.pending.push(Pending { change, sticky });
        self.node_mut(ino)?.touch();
        Ok(())
    }

    /// A write; with `dsync` (O_DSYNC / O_SYNC) it is durable when this returns.
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8], dsync: bool) -> Res<usize> {
        self.file(ino)?;
        let end = off.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        if end > MAX_SIZE {
            return Err(libc::EFBIG);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let change = if data.iter().all(|&b| b == 0) {
            Change::Zero {
                off,
                len: data.len() as u64,
            }
        } else {
            Change::Write {
                off,
                data: data.to_vec(),
            }
        };
        self.change(ino, change, dsync)?;
        Ok(data.len())
    }

    /// truncate / ftruncate.
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Res<()> {
        if size > MAX_SIZE {
            return Err(libc::EFBIG);
        }
        let f = self.file(ino)?;
        if f.cur.size == size {
            return Ok(());
        }
        self.change(ino, Change::SetSize(size), false)
    }

    /// fallocate(2): mode 0 and FALLOC_FL_KEEP_SIZE (space is not modelled: both only
    /// change the size, if at all); other modes are EOPNOTSUPP.
    pub fn fallocate(&mut self, ino: Ino, off: u64, len: u64, mode: i32) -> Res<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let f = self.file(ino)?;
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        if end > MAX_SIZE {
            return Err(libc::EFBIG);
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 || end <= f.cur.size {
            return Ok(());
        }
        self.change(ino, Change::Grow(end), false)
    }

    /// fsync / fdatasync of a file, or fsync of a directory: everything pending in it is
    /// durable.
    pub fn fsync(&mut self, ino: Ino) -> Res<()> {
        match &mut self.node_mut(ino)?.node {
            Node::File(f) => {
                f.sync();
                if self.journal {
                    let dirs: Vec<Ino> = self
                        .nodes
                        .iter()
                        .filter(|(_, n)| matches!(&n.node, Node::Dir(d) if !d.pending.is_empty()))
                        .map(|(&i, _)| i)
                        .collect();
                    for d in dirs {
                        self.fsync(d)?;
                    }
                }
            }
            Node::Symlink(_) => {}
            Node::Dir(d) => {
                let ops = std::mem::take(&mut d.pending);
                let mut dur = std::mem::take(&mut d.dur);
                let mut touched = Vec::new();
                for op in &ops {
                    let (lost, gained) = op.apply(&mut dur);
                    for i in lost {
                        if let Some(n) = self.nodes.get_mut(&i) {
                            n.dlinks -= 1;
                        }
                        touched.push(i);
                    }
                    if let Some(i) = gained {
                        if let Some(n) = self.nodes.get_mut(&i) {
                            n.dlinks += 1;
                            n.prefs -= 1;
                        }
                        touched.push(i);
                    }
                }
                self.dir_mut(ino)?.dur = dur;
                for i in touched {
                    self.maybe_free(i);
                }
            }
        }
        Ok(())
    }

    /// `.`, `..` and the current entries, in name order.
    pub fn readdir(&self, ino: Ino) -> Res<Vec<DirEntry>> {
        let d = self.dir(ino)?;
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: d.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, &i) in &d.cur {
            out.push(DirEntry {
                ino: i,
                kind: self.node(i)?.kind(),
                name: name.clone(),
            });
        }
        Ok(out)
    }

    /// (inodes, blocks of current content) for statfs.
    pub fn usage(&self) -> (u64, u64) {
        let blocks = self
            .nodes
            .values()
            .map(|n| match &n.node {
                Node::File(f) => f.cur.blocks.len() as u64,
                _ => 1,
            })
            .sum();
        (self.nodes.len() as u64, blocks)
    }

    /// Frees `ino` (and what only it kept alive) if nothing can reach it any more.
    fn maybe_free(&mut self, ino: Ino) {
        let mut work = vec![ino];
        while let Some(i) = work.pop() {
            let Some(n) = self.nodes.get(&i) else {
                continue;
            };
            if i == ROOT || n.links != 0 || n.dlinks != 0 || n.prefs != 0 || n.opens != 0 {
                continue;
            }
            let n = self.nodes.remove(&i).expect("present");
            if let Node::Dir(d) = n.node {
                for c in d.dur.values().chain(d.cur.values()) {
                    work.push(*c);
                }
                for c in d.dur.values() {
                    if let Some(cn) = self.nodes.get_mut(c) {
                        cn.dlinks -= 1;
                    }
                }
                for c in d.cur.values() {
                    if let Some(cn) = self.nodes.get_mut(c) {
                        cn.links -= 1;
                    }
                }
                for op in &d.pending {
                    if let Some(c) = op.target() {
                        if let Some(cn) = self.nodes.get_mut(&c) {
                            cn.prefs -= 1;
                        }
                        work.push(c);
                    }
                }
            }
        }
    }

    /// The power cut: `loss` is applied to each directory's and each file's pending
    /// changes (independently, in inode order, so a seed repeats), then only what is
    /// reachable from the root through durable entries is kept. Afterwards nothing is
    /// pending and no handle is open.
    pub fn cut(&mut self, loss: Loss, rng: &mut Rng) -> CutReport {
        let mut report = CutReport::default();
        for n in self.nodes.values_mut() {
            if let Node::Dir(d) = &mut n.node {
                let ops = std::mem::take(&mut d.pending);
                if !ops.is_empty() {
                    let keep = match loss.for_dir(rng) {
                        Loss::All => 0,
                        _ => rng.below(ops.len() as u64 + 1) as usize,
                    };
                    for op in &ops[..keep] {
                        op.apply(&mut d.dur);
                    }
                    report.entries_dropped += (ops.len() - keep) as u64;
                }
                d.cur = d.dur.clone();
            }
        }
        // Reachability through durable entries (a directory may now have two parents
        // after a lost half of a cross-directory rename; the first found is `..`).
        let mut links: BTreeMap<Ino, u32> = BTreeMap::from([(ROOT, 1)]);
        let mut parent_of: BTreeMap<Ino, Ino> = BTreeMap::from([(ROOT, ROOT)]);
        let mut queue = vec![ROOT];
        while let Some(dir) = queue.pop() {
            let Some(Inode {
                node: Node::Dir(d), ..
            }) = self.nodes.get(&dir)
            else {
                continue;
            };
            for &child in d.dur.values() {
                if !self.nodes.contains_key(&child) {
                    continue;
                }
                let seen = links.contains_key(&child);
                *links.entry(child).or_insert(0) += 1;
                if !seen {
                    parent_of.insert(child, dir);
                    queue.push(child);
                }
            }
        }
        self.nodes.retain(|i, _| links.contains_key(i));
        for (&i, n) in self.nodes.iter_mut() {
            n.links = links[&i];
            n.dlinks = n.links;
            n.prefs = 0;
            n.opens = 0;
            match &mut n.node {
                Node::Dir(d) => {
                    d.parent = parent_of[&i];
                    d.dur.retain(|_, c| links.contains_key(c));
                    d.cur = d.dur.clone();
                }
                Node::File(f) => f.cut(loss.for_file(rng), rng, &mut report),
                Node::Symlink(_) => {}
            }
        }
        report
    }
}
