//! `Db`: the mmap'd copy-on-write B+tree file, `<data-dir>/member/snap/db`.
//!
//! Runs on: the raft core owns the one `Db` and is its only writer. Other cores read
//! published pages through a [`ReadSnapshot`] (`Send`), without locks.
//!
//! (The byte layout, invariants and the publication protocol are drawn in `page.rs`
//! and below once implemented.)
//!
//! API contract (what `mvcc::Store` relies on):
//! - Several named trees live in one file ([`TreeId`]); keys and values are bytes,
//!   ordered by byte comparison. Keys are at most [`KEY_BYTES_MAX`]; values of any
//!   size up to [`VALUE_BYTES_MAX`] (large ones go to overflow pages).
//! - Writes (`insert`, `remove`, `retain`) change the writer's private working state
//!   (dirty pages no reader can reach). The writer's own reads (`get`, `range`) see them.
//! - `publish()` makes the working state visible to new `ReadSnapshot`s (no fsync).
//! - `commit()` = publish + write dirty pages + fdatasync + write the other meta page +
//!   fdatasync. After `commit` returns, a crash reopens to exactly that state (or a later
//!   committed one). Before it, a crash reopens to the previous commit.
//! - Pages freed by a transaction are reused only once that transaction is durable and
//!   no live `ReadSnapshot` is older than it.
//! - After a failed write or fdatasync the `Db` refuses every further write
//!   (`Error::Poisoned`); it never retries an fsync.

use std::fmt;
use std::path::{Path, PathBuf};

/// Page size in bytes; every page of the file has this size.
pub const PAGE_BYTES: usize = 4096;
/// Longest key a tree accepts.
pub const KEY_BYTES_MAX: usize = 512;
/// Largest value a tree accepts (etcd's default request limit is 1.5 MiB; values are
/// KeyValue records, so leave room above it).
pub const VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The trees of a Keel db file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TreeId {
    /// Revision (16 bytes, see `Revision::encode`) → flag byte + KeyValue record.
    Revision = 0,
    /// Lease ID (8 bytes BE) → lease record.
    Lease = 1,
    /// Member ID → member record.
    Member = 2,
    /// Auth users, roles and settings.
    Auth = 3,
    /// Misc metadata (cluster ID, versions, …).
    Meta = 4,
}

pub const TREE_COUNT: usize = 5;

impl TreeId {
    pub const ALL: [TreeId; TREE_COUNT] = [
        TreeId::Revision,
        TreeId::Lease,
        TreeId::Member,
        TreeId::Auth,
        TreeId::Meta,
    ];
}

/// Fields every meta page carries beside the tree roots. Set by the writer before
/// `commit`; read back at open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppMeta {
    /// Index of the last raft entry whose effects are in this state (WAL replay starts
    /// after it).
    pub consistent_index: u64,
    pub consistent_term: u64,
    /// MVCC: the store's current revision and the last compaction revision.
    pub current_revision: i64,
    pub compact_revision: i64,
}

#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Virtual address space reserved for the mapping; the file may grow up to it.
    pub map_bytes_max: u64,
    /// The file grows by at least this much at a time.
    pub grow_step_bytes: u64,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            map_bytes_max: 64 << 30,
            grow_step_bytes: 64 << 20,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The file is damaged: which file, where, and what was found.
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// A write or fsync failed earlier; the Db accepts no more writes.
    Poisoned,
    KeyTooLarge {
        len: usize,
    },
    ValueTooLarge {
        len: usize,
    },
    /// The file would grow past `map_bytes_max`.
    MapFull,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Corrupt { path, offset, what } => {
                write!(
                    f,
                    "db file {} is corrupt at offset {offset}: {what}",
                    path.display()
                )
            }
            Error::Poisoned => write!(f, "db refuses writes after an earlier I/O failure"),
            Error::KeyTooLarge { len } => write!(f, "db key of {len} bytes is too large"),
            Error::ValueTooLarge { len } => write!(f, "db value of {len} bytes is too large"),
            Error::MapFull => write!(f, "db file reached its maximum mapped size"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The single-writer handle. Not `Send`: it lives on the raft core.
pub struct Db {
    _private: (),
}

impl Db {
    /// Opens (or creates) the db file at `path`, checks both meta pages and every page
    /// reachable from the chosen one (checksums, structure), and rebuilds the free list.
    pub async fn open(path: &Path, options: DbOptions) -> Result<Db> {
        let _ = (path, options);
        todo!()
    }

    pub fn path(&self) -> &Path {
        todo!()
    }

    /// The meta fields of the working state.
    pub fn app_meta(&self) -> AppMeta {
        todo!()
    }

    pub fn set_app_meta(&mut self, meta: AppMeta) {
        let _ = meta;
        todo!()
    }

    pub fn insert(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<()> {
        let _ = (tree, key, value);
        todo!()
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, tree: TreeId, key: &[u8]) -> Result<bool> {
        let _ = (tree, key);
        todo!()
    }

    /// Keeps only the entries of `tree` in `[start, end)` for which `keep(key, value)`
    /// is true, repacking the leaves it rewrites (used by compaction). Entries outside
    /// the range are untouched. Returns the number removed.
    pub fn retain(
        &mut self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
        keep: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<u64> {
        let _ = (tree, start, end, keep);
        todo!()
    }

    /// The writer's view (includes uncommitted changes).
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Option<&[u8]> {
        let _ = (tree, key);
        todo!()
    }

    /// Entries of the writer's view with `start <= key < end` (`end` empty = no upper
    /// bound), ascending.
    pub fn range<'a>(
        &'a self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let _ = (tree, start, end);
        std::iter::empty::<(&[u8], &[u8])>()
    }

    /// Number of entries in `tree` (writer's view).
    pub fn len(&self, tree: TreeId) -> u64 {
        let _ = tree;
        todo!()
    }

    /// Makes the working state visible to snapshots taken from now on. No I/O wait.
    pub fn publish(&mut self) {
        todo!()
    }

    /// Durably commits the working state (see the module doc).
    pub async fn commit(&mut self) -> Result<()> {
        todo!()
    }

    /// A read-only view of the last published state, for any core.
    pub fn snapshot(&self) -> ReadSnapshot {
        todo!()
    }

    /// Walks every reachable page and checks checksums, ordering and counts.
    pub fn check(&self) -> Result<()> {
        todo!()
    }

    /// File size and page usage, for stats and the space tests.
    pub fn stats(&self) -> DbStats {
        todo!()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DbStats {
    pub file_bytes: u64,
    /// Pages reachable from the working state.
    pub pages_in_use: u64,
    /// Pages free now or waiting for readers / durability to be reused.
    pub pages_free: u64,
    pub pages_pending: u64,
    /// Sum of key + value bytes over all trees.
    pub payload_bytes: u64,
}

/// A consistent, immutable view of a published state. `Send` + `Clone`; while it lives,
/// no page it can reach is reused.
pub struct ReadSnapshot {
    _private: (),
}

impl ReadSnapshot {
    pub fn app_meta(&self) -> AppMeta {
        todo!()
    }

    pub fn get(&self, tree: TreeId, key: &[u8]) -> Option<&[u8]> {
        let _ = (tree, key);
        todo!()
    }

    pub fn range<'a>(
        &'a self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let _ = (tree, start, end);
        std::iter::empty::<(&[u8], &[u8])>()
    }
}
