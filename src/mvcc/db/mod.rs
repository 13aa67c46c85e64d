//! `Db`: the mmap'd copy-on-write B+tree file, `<data-dir>/member/snap/db`.
//!
//! Runs on: the raft core owns the one `Db` and is its only writer. Other cores read
//! published pages through a [`ReadSnapshot`] (`Send`), without locks.
//!
//! Files: `page.rs` (byte layout of every page kind, drawn there; encode, decode,
//! checksums, `check_page_bytes` for fuzzing), `map.rs` (the mapping; the only `unsafe`),
//! `btree.rs` (copy-on-write algorithms, allocator, range iterator, structure walk),
//! `epoch.rs` (reader epochs), this file (`Db`, meta pages, open, publish, commit).
//!
//! File: page 0 and page 1 are meta pages; the meta of txn `t` lives in slot `t % 2`
//! (commit skips a txn number when needed so it never overwrites the durable meta).
//! Open takes the valid meta (checksum, magic, version, page size, slot) with the highest
//! txn; none valid is `Error::Corrupt`. Every other page is a leaf, branch or the first
//! page of an overflow run, each with a checksum, its own page id and the txn that wrote it.
//!
//! Mapping: the file is mapped once, `DbOptions::map_bytes_max` long, so its address never
//! changes; the file grows (glommio `pre_allocate`, io_uring fallocate) in steps as large
//! as its data (the high-water mark), at least 32 KiB and at most `grow_step_bytes`
//! (64 MiB): it doubles while small, an empty file is 32 KiB (etcd's is ~20 KiB, and
//! operators set `--quota-backend-bytes` against the file size). `commit` keeps half a
//! step of headroom; only if a single transaction outruns it does the allocator extend
//! the file synchronously (`ftruncate`, a metadata-only call) because `insert` is not
//! async. The file shrinks only as described under "Defragmentation", and no byte past
//! its usable end is touched (checked on every access).
//!
//! Sizes (etcd's words): [`Db::file_bytes`] is the file's length on disk (`dbSize`,
//! `etcd_mvcc_db_total_size_in_bytes`); [`Db::in_use_bytes`] is the pages reachable from
//! the working roots plus the two meta pages (`dbSizeInUse`), both also in [`DbStats`].
//!
//! Invariants:
//! - Published pages are immutable. The writer stores page bytes directly into the
//!   mapping only for pages no published root, live snapshot or on-disk meta can reach:
//!   fresh pages, reusable free pages, and dirty pages (header txn == working txn), which
//!   it mutates in place until `publish`. Changing a published page copies it and its
//!   path to the root (copy-on-write).
//! - `publish` checksums the dirty pages ("seal"), bumps the txn and makes the working
//!   roots the published ones: no I/O. `commit` = publish, fdatasync (the mapping's dirty
//!   pages are the file's page cache, so this writes them), write the meta page, fdatasync.
//! - A page freed by txn `T` is reused only when `T <=` the txn of the *older* of the two
//!   on-disk metas (so a crash, or a damaged newest meta, still opens a consistent older
//!   state) and no live `ReadSnapshot` pinned a txn `< T`. Pages allocated and freed
//!   inside one unpublished txn are reused at once. A *young* page, one written by a txn
//!   published after the newest durable commit, is reachable from no meta on disk (and,
//!   once freed, from no later state): it waits only until `T <=` the published txn and
//!   no live snapshot pinned a txn `< T` (`Writer::pending_young`). Without this, a page
//!   copied by every round (the revision tree's rightmost path, the meta tree) left one
//!   copy per round for the commit to write; now the copies are reused within a few rounds.
//! - Every page below the high-water mark is exactly one of: reachable from the working
//!   roots, free now, pending reuse (`check` verifies this).
//!
//! Free pages are not persisted. Open walks every page reachable from the chosen meta
//! (checksums, kinds, page ids, txns, key order and bounds, counts, overflow runs; depth
//! bounded by the height, memory bounded by the file size; damage is `Error::Corrupt`
//! naming file and offset, never a panic), and every page below the high-water mark it
//! did not reach is free. There is no free list to corrupt or to keep consistent, each
//! commit writes fewer pages, and open must scan the tree to verify it anyway. (After a
//! reopen the older meta is no longer protected until the next commit.) The price of
//! keeping the older meta openable: a page freed by commit N is reused only once commit
//! N+1 is durable, so a store that rewrites all of its data every commit holds up to
//! about three times its live pages; compaction-style churn (a small part per commit)
//! stays within twice the payload (tested).
//!
//! Reads verify (bit rot after open). Open checks every reachable page, but a page can
//! change later: the disk returns different bytes once the page cache has dropped it, or
//! memory flips a bit. So every read checks each page it visits before it uses a byte of
//! it: the CRC-32 over the whole page (the whole run for an overflow value), then that it
//! is the page its parent points at (page id, kind, level), not empty, and no newer than
//! the view (a snapshot's txn, or the working txn). A page that fails is
//! `Error::Corrupt { path, offset, what }`, passed to [`corruption_found`] (the log line,
//! and the hook for etcd's CORRUPT alarm), and returned: `get` returns it, a `range`
//! iterator yields it and ends. This covers snapshot reads on every core, the writer's
//! own reads, and the pages the writer descends through, copies or merges with when it
//! writes (a damaged page is never copied and sealed again under a fresh checksum).
//! `retain` decides by key, so it reads no overflow values.
//! - Guaranteed: every page a read operation visits has been verified during that
//!   operation, so a byte that differed from what was sealed before the operation began
//!   is an error, not a panic and not wrong data. "Operation": one `get`, one `range`
//!   iterator (each page is verified when the iterator enters it), or one
//!   [`VerifiedPages`] memo shared by the lookups of one `ReadView` call (a Range of N
//!   keys, whose N lookups pass the same root and branches). Page ids out of the file are
//!   errors too, so a read never touches a byte past the file's end.
//! - Not guaranteed: bytes that change *during* an operation, after their page was
//!   verified (the `&[u8]` a read returns is borrowed from the mapping, as always); the
//!   writer's own pages of the working txn (not sealed yet, so they have no checksum;
//!   known from a bitmap, never from a damaged header); damage that keeps the CRC-32
//!   valid (at most 2^-32 of random damage; CRC-32 catches every error of 3 bits or
//!   fewer in a page and every burst of 32 bits or fewer); a page that is an intact,
//!   older version of itself (a lost write: same id, valid checksum; parents carry no
//!   child checksums in this format). Pages a read does not visit are not checked
//!   until open or `check`.
//! - Cost, measured (`read_verification_cost` in `tests.rs`, release build, 256-byte
//!   values, a 2-vCPU VM shared with other builds): one CRC-32 of a 4 KiB page is
//!   ~0.1-0.2 µs in cache, ~1.5 µs from DRAM. A point get goes from 244 to 572 ns (100k
//!   keys, height 3, all cached) and from 505 to 1050 ns (1M keys, height 4, 384 MiB);
//!   a get that is one of a Range's lookups (sharing the memo, so the root is checked
//!   once) from 254 to 468 ns and from 491 to 931 ns; a scan costs the same (it reads
//!   each page whole anyway). Through the store (keel-bench store, noisy) point reads
//!   lose ~10% at 1M keys and ~30% at 100k. A Range request costs ~20 µs of server CPU
//!   (bench/results), so end to end it is a few percent. Cheaper schemes (verify a page
//!   once per snapshot or per core) were not taken: they would serve bytes that changed
//!   after the check, which is exactly what a page re-read from a rotting disk does.
//!
//! Values above `page::INLINE_VALUE_BYTES_MAX` (1 KiB) take whole pages in an overflow
//! run; a run is looked for among recently freed pages, else taken at the high-water mark.
//!
//! Defragmentation (`defrag.rs`; etcd's `Defragment`, which copies the whole db into a
//! new file while holding every lock, a multi-second write stall). Here it runs in
//! slices on the working txn, between the raft core's rounds, beside normal writes:
//! - [`Db::defrag_step`]`(budget_pages)` walks the leaves of every tree in key order from
//!   a cursor and moves each live page whose id is at or past a target (pages the live
//!   data needs: reachable pages + 2 metas + 16 + 1/64 slack, fixed for one pass over
//!   all trees) into the lowest free pages below it, copy-on-write: the page and its
//!   path to the root get new ids (`btree/defrag.rs`). Overflow runs move whole, to the
//!   lowest contiguous free pages that start below them. While a defragmentation runs,
//!   the free list is kept sorted lowest-first, so the caller's own writes fill the low
//!   pages too. A step moves at most `budget_pages` and visits at most 8 leaves per
//!   budget page (each visit verifies the leaf's path, like a write does). Passes repeat
//!   until one finds nothing to move. Then, and in every later step, the high-water mark
//!   drops past the free pages at the top of the file.
//! - The moved pages are ordinary copies in the working txn, so every rule above holds
//!   unchanged: published pages are never written, a moved-away page is reused (or cut
//!   off) only by the free-page rule (both on-disk metas past it, no snapshot pinning a
//!   txn before its free), a damaged page is an error before it is copied.
//! - The cut happens in `commit`, after the meta sync (`defrag.rs`, `shrink`): the new
//!   end is past the highest of the high-water marks of the working state, the
//!   published state and both on-disk metas (so the older meta still opens), plus half a
//!   grow step; it is taken only when the file is more than a whole step longer (no
//!   shrink-grow flapping). First the mapping's usable length is lowered (no new access
//!   passes it), then the file is cut (glommio `truncate`, an `ftruncate` on its blocking
//!   thread) once every snapshot that existed at the lowering is dropped: a reader that
//!   checked a *damaged* page id against the old length could still touch it. No live
//!   snapshot reaches a page past the working high-water mark: pages leave the mark only
//!   from the free list. A crash at any point opens either meta: metas never point past
//!   the file, and a longer file than needed is fine.
//! - [`Db::defrag_all`] loops step + commit until done (offline `keel defrag`, tests);
//!   it returns `done: false` when a live snapshot keeps it from progressing.
//! - Not done: repacking. Pages move whole, so a tree emptied to 10% keeps its leaves'
//!   fill (`remove` merges only pages under 1/4 full): the file shrinks to the
//!   reachable pages (`in_use_bytes`), not to the payload. Runs that find no contiguous
//!   free space lower stay where they are, and so does the file's end after them.
//! - Cost: each step is one slice of work on the raft core (the caller sizes it) plus
//!   the caller's commit; every live page past the target is copied once, its path
//!   copied once per pass, and every leaf is read and verified once per pass (usually
//!   2-3 passes). Measured (`defrag_cost` in `tests.rs`, release build, a 2-vCPU VM):
//!   a 285 MiB file, 400k revisions (1% with 6 KB values) of which a compaction
//!   kept 10% (20 MiB in use): 285 -> 30 MiB (20 MiB + half a step of headroom), 5075
//!   pages moved. Budget 256 pages: 25 steps, a step <= 2.5 ms, its commit <= 63 ms
//!   (fdatasync), 0.29 s in all; budget 1024: 10 steps of <= 8.4 ms, 0.14 s; budget
//!   4096: 7 steps of <= 31 ms, 0.13 s. Writes go on between the steps.
//!
//! Readers: a `ReadSnapshot` holds an `Arc` of the mapping, the published roots and
//! `AppMeta`, and a pin in the epoch table (`epoch.rs`): an `Arc<[AtomicU64]>`-style
//! table, the one cross-core shared structure beside the published pages. The writer
//! claims pins (CAS) in `snapshot()`; the last clone of a snapshot releases it on drop.
//!
//! Appends at the right edge (revision keys only grow) split a full rightmost leaf or
//! branch by moving only the new entry right, so sequentially written trees are packed
//! ~100%; other splits balance bytes 50/50. `remove` drops emptied pages from their
//! parents, merges underfull pages (< 1/4 used) on its path with a sibling when both fit,
//! and collapses single-child roots. `retain` (compaction) rewrites only the leaves in its
//! range that lose entries, packed full, keeps the others as they are (shared), keeps
//! every old branch page whose children all survived unchanged, and packs new branch
//! pages only over the changed spans. It reads every branch page of the tree (not the
//! leaves outside its range) to do so.
//!
//! Capacity: `insert` / `remove` check before changing anything that the worst case
//! (every level copied and split, a new root, the overflow run) fits in the mapping, so
//! `MapFull` leaves the Db usable; a `retain` that fails half way poisons it.
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
//!   (`Error::Poisoned`); it never retries an fsync. The `db-fsync` failpoint
//!   ([`crate::failpoint`], feature `failpoints`) fails an fdatasync the same way.

mod btree;
mod defrag;
mod epoch;
mod map;
mod page;

pub use btree::VerifiedPages;
use btree::{BadPage, Reader, TreeRoot, WalkLimits, Writer};
pub use defrag::DefragProgress;
use epoch::{EpochTable, Pin};
use map::{Map, MapWriter};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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
    /// MVCC: where the sweep of the Revision tree for `compact_revision` stands. 0: no
    /// sweep pending (etcd's finishedCompactRev = scheduledCompactRev); n >= 1: the
    /// records of main revision < n are swept, the rest up to `compact_revision` not yet.
    /// A file written before sweeps existed reads 0, as its compactions were whole.
    pub compact_sweep: i64,
    /// Keys in the store's key index when the meta was written: a hint to size the
    /// index once at open (0: unknown, as in files written before it existed).
    pub key_count: u64,
}

#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Virtual address space reserved for the mapping; the file may grow up to it.
    pub map_bytes_max: u64,
    /// The largest step the file grows by. Steps are as large as the data (the file
    /// doubles while small, from 32 KiB), up to this.
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
    /// A write, fsync or file growth failed earlier (or a `retain` failed half way); the
    /// Db accepts no more writes and its working view is unspecified: reopen.
    Poisoned,
    KeyTooLarge {
        len: usize,
    },
    ValueTooLarge {
        len: usize,
    },
    /// The file would grow past `map_bytes_max`. Returned by `insert` / `remove` before
    /// any change (the Db stays usable); by `retain`, it also poisons the Db.
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

impl Error {
    /// A page that failed its check when read after open: reported through
    /// [`corruption_found`], then returned.
    fn bad_page(path: &Path, b: BadPage) -> Error {
        let e = Error::Corrupt {
            path: path.to_path_buf(),
            offset: b.offset,
            what: b.what,
        };
        corruption_found(&e);
        e
    }
}

/// Corruptions found since boot (see [`corruption_found`]).
static CORRUPTIONS_FOUND: AtomicU64 = AtomicU64::new(0);

/// The one function every corruption found after open goes through: a page that failed
/// its checksum or header check on read (any core, any tree, reader or writer). It logs
/// the error, which names the file and offset. Logs are limited to the first 16 and then
/// every power of two, so a damaged hot page cannot flood the log.
///
/// Hook for etcd's CORRUPT alarm path (a later issue): raise `AlarmType::CORRUPT` and
/// refuse writes from here. The error itself still reaches the request that found it
/// (`etcdserver: corrupt cluster`, DataLoss) or stops the raft core's apply.
pub fn corruption_found(e: &Error) {
    let n = CORRUPTIONS_FOUND.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 16 || n.is_power_of_two() {
        crate::runtime::log::error("mvcc/backend", &format!("{e} (corruption #{n} since boot)"));
    }
}

/// How many corruptions [`corruption_found`] has seen since boot.
pub fn corruptions_found() -> u64 {
    CORRUPTIONS_FOUND.load(Ordering::Relaxed)
}

pub type Result<T> = std::result::Result<T, Error>;

/// The roots and meta fields of one transaction's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    txn: u64,
    high_water: u64,
    roots: [TreeRoot; TREE_COUNT],
    app: AppMeta,
}

fn encode_meta(p: &mut [u8], st: &State) {
    let slot = st.txn % 2;
    p.fill(0);
    page::init(p, page::KIND_META, 0, slot, st.txn);
    page::put_u64(p, 32, page::META_MAGIC);
    page::put_u32(p, 40, page::FORMAT_VERSION);
    page::put_u32(p, 44, PAGE_BYTES as u32);
    page::put_u64(p, 48, st.high_water);
    page::put_u64(p, 56, st.app.consistent_index);
    page::put_u64(p, 64, st.app.consistent_term);
    page::put_u64(p, 72, st.app.current_revision as u64);
    page::put_u64(p, 80, st.app.compact_revision as u64);
    page::put_u64(p, page::META_SWEEP_OFFSET, st.app.compact_sweep as u64);
    page::put_u64(p, page::META_KEYS_OFFSET, st.app.key_count);
    for (t, r) in st.roots.iter().enumerate() {
        let o = page::META_TREES_OFFSET + t * page::META_TREE_BYTES;
        page::put_u64(p, o, r.page);
        page::put_u32(p, o + 8, r.height);
        page::put_u64(p, o + 16, r.entries);
        page::put_u64(p, o + 24, r.payload_bytes);
    }
    page::seal(p);
}

/// Decodes and validates meta page `slot`; `file_pages` bounds the high-water mark.
fn decode_meta(p: &[u8], slot: u64, file_pages: u64) -> std::result::Result<State, String> {
    if !page::crc_ok(p) {
        return Err("meta checksum mismatch".into());
    }
    if page::kind(p) != page::KIND_META || page::page_id(p) != slot {
        return Err(format!(
            "meta page kind {} id {}",
            page::kind(p),
            page::page_id(p)
        ));
    }
    if page::u64_at(p, 32) != page::META_MAGIC {
        return Err("bad magic".into());
    }
    if page::u32_at(p, 40) != page::FORMAT_VERSION || page::u32_at(p, 44) != PAGE_BYTES as u32 {
        return Err(format!(
            "format version {} page size {} (want {} / {PAGE_BYTES})",
            page::u32_at(p, 40),
            page::u32_at(p, 44),
            page::FORMAT_VERSION
        ));
    }
    let txn = page::txn(p);
    if txn % 2 != slot {
        return Err(format!("meta txn {txn} in slot {slot}"));
    }
    let high_water = page::u64_at(p, 48);
    if high_water < 2 || high_water > file_pages {
        return Err(format!(
            "high-water {high_water} outside the file's {file_pages} pages"
        ));
    }
    let app = AppMeta {
        consistent_index: page::u64_at(p, 56),
        consistent_term: page::u64_at(p, 64),
        current_revision: page::u64_at(p, 72) as i64,
        compact_revision: page::u64_at(p, 80) as i64,
        compact_sweep: page::u64_at(p, page::META_SWEEP_OFFSET) as i64,
        key_count: page::u64_at(p, page::META_KEYS_OFFSET),
    };
    let mut roots = [TreeRoot::default(); TREE_COUNT];
    for (t, r) in roots.iter_mut().enumerate() {
        let o = page::META_TREES_OFFSET + t * page::META_TREE_BYTES;
        *r = TreeRoot {
            page: page::u64_at(p, o),
            height: page::u32_at(p, o + 8),
            entries: page::u64_at(p, o + 16),
            payload_bytes: page::u64_at(p, o + 24),
        };
    }
    Ok(State {
        txn,
        high_water,
        roots,
        app,
    })
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn gio_err<'a, T>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(glommio::GlommioError<T>) -> Error + 'a {
    move |e| Error::Io {
        path: path.to_path_buf(),
        op,
        source: e.into(),
    }
}

#[cfg(test)]
pub(crate) type CrashPoint = Box<dyn FnMut(&Path)>;

/// Test-only fault injection and crash points.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// The Nth fdatasync (1-based, counted from open) fails.
    pub sync_fail_at: Option<u64>,
    pub sync_count: u64,
    /// Runs after the data fdatasync and before the meta page is written.
    pub before_meta: Option<CrashPoint>,
}

/// The single-writer handle. Not `Send`: it lives on the raft core.
pub struct Db {
    w: Writer,
    file: glommio::io::BufferedFile,
    options: DbOptions,
    roots: [TreeRoot; TREE_COUNT],
    app: AppMeta,
    published: State,
    durable_txn: u64,
    /// The txn of the other (older) meta page on disk; pages it can reach are not reused,
    /// so either meta page always opens to a consistent state.
    durable_prev_txn: u64,
    /// The high-water marks of the two on-disk metas (newest, older): the file is never
    /// cut below either, so both stay openable.
    durable_high_water: u64,
    durable_prev_high_water: u64,
    /// The usable length was lowered while snapshots of txns up to this were alive: the
    /// file is cut (`ftruncate`) once they are all dropped (`defrag.rs`, `shrink`).
    shrink_cut_after: Option<u64>,
    /// A defragmentation in progress (`defrag.rs`).
    defrag: Option<defrag::DefragState>,
    epochs: Arc<EpochTable>,
    /// The pin of the newest snapshot, shared by snapshots of the same txn.
    snapshot_pin: std::cell::RefCell<Option<(u64, Weak<Pin>)>>,
    #[cfg(test)]
    pub(crate) faults: Faults,
}

impl Db {
    /// Opens (or creates) the db file at `path`, checks both meta pages and every page
    /// reachable from the chosen one (checksums, structure), and rebuilds the free list.
    pub async fn open(path: &Path, options: DbOptions) -> Result<Db> {
        assert!(options.grow_step_bytes >= PAGE_BYTES as u64);
        assert!(options.map_bytes_max >= 2 * PAGE_BYTES as u64);
        // Boot-time only: std open/metadata block briefly, before the core serves anything.
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let len = std_file.metadata().map_err(io_err(path, "stat"))?.len();
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(path)
            .await
            .map_err(gio_err(path, "open"))?;
        let corrupt = |offset: u64, what: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            what,
        };
        if len > options.map_bytes_max {
            return Err(Error::MapFull);
        }
        // Every size Keel gives the file is a whole number of pages (fallocate, ftruncate).
        // A power cut can still leave a torn last page: the growth lost, part of a later
        // write past it kept (a filesystem that keeps data and size apart). Pages past
        // the durable meta's high-water mark hold no committed data, so such a tail is
        // cut off once a meta checks out against the whole pages; a meta that needs the
        // torn page fails that check like any too-short file.
        let torn_tail = len % PAGE_BYTES as u64;
        let len = len - torn_tail;
        if (len != 0 || torn_tail != 0) && len < 2 * PAGE_BYTES as u64 {
            return Err(corrupt(
                len + torn_tail,
                format!("file size {} is less than two whole pages", len + torn_tail),
            ));
        }
        let map =
            Map::new(&std_file, path, options.map_bytes_max, len).map_err(io_err(path, "mmap"))?;
        let mut w = Writer::new(MapWriter::new(map), path.to_path_buf(), std_file, 0);
        w.grow_step_pages = options.grow_step_bytes / PAGE_BYTES as u64;
        w.file_len_bytes = len;
        let mut db = Db {
            w,
            file,
            options,
            roots: Default::default(),
            app: AppMeta::default(),
            published: State::default(),
            durable_txn: 0,
            durable_prev_txn: 0,
            durable_high_water: 2,
            durable_prev_high_water: 2,
            shrink_cut_after: None,
            defrag: None,
            epochs: EpochTable::new(),
            snapshot_pin: Default::default(),
            #[cfg(test)]
            faults: Faults::default(),
        };
        if len == 0 {
            db.create().await?;
        }
        let file_pages = db.w.file_pages();
        let map = db.w.map.map().clone();
        let metas = [0u64, 1].map(|slot| decode_meta(map.page(slot), slot, file_pages));
        let st = match &metas {
            [Ok(a), Ok(b)] => {
                if a.txn > b.txn {
                    *a
                } else {
                    *b
                }
            }
            [Ok(a), Err(_)] => *a,
            [Err(_), Ok(b)] => *b,
            [Err(a), Err(b)] => {
                return Err(corrupt(
                    0,
                    format!("no valid meta page: page 0: {a}; page 1: {b}"),
                ))
            }
        };
        if torn_tail != 0 {
            db.w.file
                .set_len(len)
                .map_err(io_err(path, "truncate a torn last page"))?;
            crate::runtime::log::warning(
                "mvcc/backend",
                &format!(
                    "{}: cut a torn last page ({torn_tail} bytes past {len}, beyond the \
                     high-water mark of page {})",
                    path.display(),
                    st.high_water
                ),
            );
        }
        let mut seen = vec![0u64; (st.high_water as usize).div_ceil(64)];
        let mut lim = WalkLimits {
            high_water: st.high_water,
            txn_max: st.txn,
            crc_below_txn: u64::MAX,
            seen: &mut seen,
        };
        for (t, root) in st.roots.iter().enumerate() {
            btree::check_tree(&map, root, &mut lim)
                .map_err(|(off, what)| corrupt(off, format!("tree {t}: {what}")))?;
        }
        for id in (2..st.high_water).rev() {
            if seen[(id / 64) as usize] & (1 << (id % 64)) == 0 {
                db.w.free_now.push(id);
            }
        }
        db.w.high_water = st.high_water;
        db.w.txn = st.txn + 1;
        db.roots = st.roots;
        db.app = st.app;
        db.published = st;
        db.durable_txn = st.txn;
        db.durable_prev_txn = st.txn;
        db.durable_high_water = st.high_water;
        // The other meta, if valid, keeps its pages' file range until overwritten.
        db.durable_prev_high_water = metas
            .iter()
            .flatten()
            .map(|m| m.high_water)
            .fold(st.high_water, u64::max);
        db.update_reuse_bound();
        db.invariants();
        db.keep_headroom().await?;
        Ok(db)
    }

    /// Initialises a new, empty file: both meta pages (txn 0 and 1), synced.
    async fn create(&mut self) -> Result<()> {
        let map_pages = self.options.map_bytes_max / PAGE_BYTES as u64;
        let pages = self.w.step_pages(2).min(map_pages).max(2);
        self.grow_to(pages * PAGE_BYTES as u64).await?;
        for txn in [0u64, 1] {
            let st = State {
                txn,
                high_water: 2,
                ..State::default()
            };
            encode_meta(self.w.map.page_mut(txn), &st);
        }
        self.sync("fdatasync new file").await?;
        // A new file's directory entry must be durable too (boot-time, blocking is fine).
        if let Some(dir) = self.w.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let d = std::fs::File::open(dir).map_err(io_err(dir, "open dir"))?;
            d.sync_all().map_err(io_err(dir, "fsync dir"))?;
        }
        Ok(())
    }

    async fn grow_to(&mut self, bytes: u64) -> Result<()> {
        if bytes > self.options.map_bytes_max {
            return Err(Error::MapFull);
        }
        #[cfg(test)]
        {
            self.w.grow_count += 1;
            if self.w.grow_fail_at == Some(self.w.grow_count) {
                self.w.poisoned = true;
                return Err(Error::Io {
                    path: self.w.path.clone(),
                    op: "fallocate (injected)",
                    source: std::io::Error::other("injected"),
                });
            }
        }
        // Past the usable length but within the file (a shrink not yet cut): those pages
        // are there already.
        if bytes > self.w.file_len_bytes {
            if let Err(e) = self.file.pre_allocate(bytes, false).await {
                self.w.poisoned = true;
                return Err(gio_err(&self.w.path, "fallocate")(e));
            }
            self.w.file_len_bytes = bytes;
        }
        self.w.map.set_file_bytes(bytes);
        Ok(())
    }

    /// Keeps at least half a grow step (`Writer::step_pages`: as large as the data, up
    /// to `grow_step_bytes`) of allocated pages past the high-water mark, so the
    /// synchronous fallback in the allocator is rarely needed.
    async fn keep_headroom(&mut self) -> Result<()> {
        let hw = self.w.high_water;
        let step = self.w.step_pages(hw);
        if self.w.file_pages() - hw >= step.div_ceil(2) {
            return Ok(());
        }
        let pages = (hw + step).min(self.options.map_bytes_max / PAGE_BYTES as u64);
        if pages <= self.w.file_pages() {
            return Ok(()); // at the map limit; the allocator reports MapFull when it must
        }
        self.grow_to(pages * PAGE_BYTES as u64).await
    }

    async fn sync(&mut self, op: &'static str) -> Result<()> {
        #[cfg(test)]
        {
            self.faults.sync_count += 1;
            if self.faults.sync_fail_at == Some(self.faults.sync_count) {
                self.w.poisoned = true;
                return Err(Error::Io {
                    path: self.w.path.clone(),
                    op,
                    source: std::io::Error::other("injected"),
                });
            }
        }
        if let Some(source) = crate::failpoint::check_io(crate::failpoint::Point::DbFsync) {
            self.w.poisoned = true;
            let path = self.w.path.clone();
            return Err(Error::Io { path, op, source });
        }
        if let Err(e) = self.file.fdatasync().await {
            // Never retried: after a failed fsync the page cache state is unknown.
            self.w.poisoned = true;
            return Err(gio_err(&self.w.path, op)(e));
        }
        Ok(())
    }

    /// Cheap invariants of the txn counters and the allocator, checked after every
    /// publish and commit in debug and test builds (`check` is the expensive walk).
    fn invariants(&self) {
        if cfg!(debug_assertions) {
            let w = &self.w;
            assert!(self.durable_prev_txn <= self.durable_txn);
            assert!(self.durable_txn <= self.published.txn || w.poisoned);
            assert!(self.published.txn < w.txn);
            assert!(w.reuse_bound <= self.durable_prev_txn);
            // Defragmentation lowers the working mark below the published one.
            assert!(self.published.high_water <= w.file_pages());
            assert!(self.durable_high_water <= w.file_pages());
            assert!(self.durable_prev_high_water <= w.file_pages());
            assert!(w.high_water <= w.file_pages());
            assert!(w.map.map().file_bytes() <= w.file_len_bytes);
            assert!(w.held.is_empty() && !w.hold_freed);
            assert!(w.pending.front().map(|p| p.0) <= w.pending.back().map(|p| p.0));
            assert!(w.pending.back().is_none_or(|p| p.0 <= w.txn));
            let young = &w.pending_young;
            assert!(young.front().map(|p| p.0) <= young.back().map(|p| p.0));
            assert!(young.back().is_none_or(|p| p.0 <= w.txn));
            assert!(w.young_bound <= self.published.txn);
            assert_eq!(w.durable_txn, self.durable_txn);
            assert!(
                self.durable_txn % 2 != self.durable_prev_txn % 2
                    || self.durable_txn == self.durable_prev_txn
            );
        }
    }

    fn update_reuse_bound(&mut self) {
        let pinned = self.epochs.min_pinned().unwrap_or(u64::MAX);
        self.w.reuse_bound = self.durable_prev_txn.min(pinned);
        self.w.young_bound = self.published.txn.min(pinned);
        self.w.durable_txn = self.durable_txn;
    }

    pub fn path(&self) -> &Path {
        &self.w.path
    }

    /// Closes the file (uncommitted changes are dropped). Snapshots stay readable: the
    /// mapping lives until the last one is dropped.
    pub async fn close(self) -> Result<()> {
        let path = self.w.path.clone();
        self.file.close().await.map_err(gio_err(&path, "close"))
    }

    /// The meta fields of the working state.
    pub fn app_meta(&self) -> AppMeta {
        self.app
    }

    pub fn set_app_meta(&mut self, meta: AppMeta) {
        if meta != self.app {
            self.app = meta;
            self.w.changed = true;
        }
    }

    pub fn insert(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > KEY_BYTES_MAX {
            return Err(Error::KeyTooLarge { len: key.len() });
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(Error::ValueTooLarge { len: value.len() });
        }
        self.w.insert(&mut self.roots[tree as usize], key, value)
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, tree: TreeId, key: &[u8]) -> Result<bool> {
        if key.len() > KEY_BYTES_MAX {
            return Ok(false);
        }
        self.w.remove(&mut self.roots[tree as usize], key)
    }

    /// Keeps only the entries of `tree` in `[start, end)` (`end` empty = no upper bound)
    /// whose key `keep(key)` accepts, repacking the leaves it rewrites (clearing a tree;
    /// it rebuilds every branch level, so a compaction's slices use `remove`). Entries outside the range are untouched. Returns the number removed.
    /// It decides by key alone: values are not read (a large value's overflow run is
    /// neither faulted in nor checksummed).
    pub fn retain(
        &mut self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<u64> {
        self.w
            .retain(&mut self.roots[tree as usize], start, end, keep)
    }

    /// The value of `key` in the writer's view (includes uncommitted changes).
    /// `Error::Corrupt` if a page on the way fails its check.
    #[inline]
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<&[u8]>> {
        self.get_in(&VerifiedPages::default(), tree, key)
    }

    /// [`Db::get`] as one of several lookups of one read operation: pages `memo` saw
    /// verified are not checked again. No write may come between the lookups.
    #[inline]
    pub fn get_in(&self, memo: &VerifiedPages, tree: TreeId, key: &[u8]) -> Result<Option<&[u8]>> {
        btree::get(self.w.reader(), memo, &self.roots[tree as usize], key)
            .map_err(|b| Error::bad_page(&self.w.path, b))
    }

    /// Entries of the writer's view with `start <= key < end` (`end` empty = no upper
    /// bound), ascending. A page that fails its check yields `Error::Corrupt` and ends
    /// the iteration.
    pub fn range<'a>(
        &'a self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8])>> + 'a {
        let it = btree::Iter::new(self.w.reader(), &self.roots[tree as usize], start, end);
        it.map(|r| r.map_err(|b| Error::bad_page(&self.w.path, b)))
    }

    /// Number of entries in `tree` (writer's view).
    pub fn len(&self, tree: TreeId) -> u64 {
        self.roots[tree as usize].entries
    }

    pub fn is_empty(&self, tree: TreeId) -> bool {
        self.len(tree) == 0
    }

    /// Makes the working state visible to snapshots taken from now on. No I/O wait.
    /// After `Error::Poisoned` this does nothing: readers keep the last good state.
    pub fn publish(&mut self) {
        if !self.w.changed || self.w.poisoned {
            return;
        }
        self.w.seal_dirty();
        self.published = State {
            txn: self.w.txn,
            high_water: self.w.high_water,
            roots: self.roots,
            app: self.app,
        };
        self.w.txn += 1;
        self.w.changed = false;
        self.update_reuse_bound();
        self.invariants();
    }

    /// Durably commits the working state (see the module doc).
    ///
    /// An `Err` leaves the outcome unknown, like a timed-out request: the data or meta
    /// fdatasync, or the fallocate that keeps headroom afterwards, failed, the Db is
    /// poisoned, and a reopen shows either the previous commit or this one.
    pub async fn commit(&mut self) -> Result<()> {
        if self.w.poisoned {
            return Err(Error::Poisoned);
        }
        self.publish();
        if self.published.txn == self.durable_txn {
            return Ok(());
        }
        if self.published.txn % 2 == self.durable_txn % 2 {
            // The meta for txn t lives in slot t % 2; never overwrite the durable one.
            self.published.txn += 1;
            self.w.txn += 1;
        }
        // The `skip-db-sync` mutant (keel-chaos powercut's proof that it bites) writes
        // the meta page over data pages that may not be on the disk yet.
        if !crate::failpoint::is_on(crate::failpoint::Point::SkipDbSync) {
            self.sync("fdatasync data").await?;
        }
        #[cfg(test)]
        if let Some(hook) = self.faults.before_meta.as_mut() {
            hook(&self.w.path);
        }
        let st = self.published;
        encode_meta(self.w.map.page_mut(st.txn % 2), &st);
        self.sync("fdatasync meta").await?;
        // Everything written since the last commit is on the disk now: out of this
        // process's resident set (RSS), into the page cache only, as etcd's written pages
        // are. The pages are immutable from here on (the writer copies a published page
        // before changing it), so only a later read maps one again.
        for (id, n) in std::mem::take(&mut self.w.sealed) {
            self.w.map.map().release(id, n);
        }
        self.durable_prev_txn = self.durable_txn;
        self.durable_txn = st.txn;
        self.durable_prev_high_water = self.durable_high_water;
        self.durable_high_water = st.high_water;
        self.update_reuse_bound();
        self.invariants();
        self.shrink().await?;
        self.keep_headroom().await
    }

    /// A read-only view of the last published state, for any core.
    pub fn snapshot(&self) -> ReadSnapshot {
        let txn = self.published.txn;
        let mut cache = self.snapshot_pin.borrow_mut();
        let pin = match &*cache {
            Some((t, weak)) if *t == txn => weak.upgrade(),
            _ => None,
        };
        let pin = pin.unwrap_or_else(|| {
            let pin = Arc::new(self.epochs.pin(txn));
            *cache = Some((txn, Arc::downgrade(&pin)));
            pin
        });
        ReadSnapshot {
            map: self.w.map.map().clone(),
            file_bytes: self.w.file_len_bytes,
            txn,
            roots: self.published.roots,
            app: self.published.app,
            _pin: pin,
        }
    }

    /// Walks every reachable page and checks checksums, ordering and counts, and that
    /// every page below the high-water mark is exactly one of: reachable, free, pending.
    pub fn check(&self) -> Result<()> {
        let hw = self.w.high_water;
        let mut seen = vec![0u64; (hw as usize).div_ceil(64)];
        let mut lim = WalkLimits {
            high_water: hw,
            txn_max: self.w.txn,
            crc_below_txn: self.w.txn,
            seen: &mut seen,
        };
        let corrupt = |offset, what| Error::Corrupt {
            path: self.w.path.clone(),
            offset,
            what,
        };
        for (t, root) in self.roots.iter().enumerate() {
            btree::check_tree(self.w.map.map(), root, &mut lim)
                .map_err(|(off, what)| corrupt(off, format!("tree {t}: {what}")))?;
        }
        let free = self.w.free_now.iter().copied();
        let pending = (self.w.pending.iter())
            .chain(&self.w.pending_young)
            .flat_map(|&(_, id, n)| id..id + n);
        for id in free.chain(pending) {
            let (w, b) = ((id / 64) as usize, id % 64);
            if id < 2 || id >= hw || seen[w] & (1 << b) != 0 {
                return Err(corrupt(
                    id * PAGE_BYTES as u64,
                    format!("free page {id} in use"),
                ));
            }
            seen[w] |= 1 << b;
        }
        let accounted: u64 = seen.iter().map(|w| w.count_ones() as u64).sum();
        if accounted != hw - 2 {
            return Err(corrupt(
                0,
                format!("{} of {} pages leaked", hw - 2 - accounted, hw - 2),
            ));
        }
        Ok(())
    }

    /// The db file's length on disk: etcd's `dbSize` (Status `dbSize`,
    /// `etcd_mvcc_db_total_size_in_bytes`), what `--quota-backend-bytes` limits.
    pub fn file_bytes(&self) -> u64 {
        self.w.file_len_bytes
    }

    /// Bytes of the pages reachable from the working roots plus the two meta pages:
    /// etcd's `dbSizeInUse` (`etcd_mvcc_db_total_size_in_use_in_bytes`), what the file
    /// would shrink to if defragmented.
    pub fn in_use_bytes(&self) -> u64 {
        self.stats().in_use_bytes
    }

    /// The db's size as etcd reports and checks it against the quota (bbolt's
    /// `tx.Size()`: the high-water mark, every page ever allocated and not cut off, free
    /// or not), in bytes. The file may be longer (it grows in steps ahead of use).
    pub fn size_bytes(&self) -> u64 {
        self.w.high_water * PAGE_BYTES as u64
    }

    /// File size and page usage, for stats and the space tests.
    pub fn stats(&self) -> DbStats {
        let pending: u64 = (self.w.pending.iter())
            .chain(&self.w.pending_young)
            .map(|p| p.2)
            .sum();
        let free = self.w.free_now.len() as u64;
        let pages_in_use = self.w.high_water - 2 - free - pending;
        DbStats {
            file_bytes: self.w.file_len_bytes,
            in_use_bytes: (pages_in_use + 2) * PAGE_BYTES as u64,
            pages_in_use,
            pages_free: free + (self.w.file_pages() - self.w.high_water),
            pages_pending: pending,
            payload_bytes: self.roots.iter().map(|r| r.payload_bytes).sum(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DbStats {
    /// The file's length on disk ([`Db::file_bytes`]).
    pub file_bytes: u64,
    /// `(pages_in_use + 2 meta pages) * PAGE_BYTES` ([`Db::in_use_bytes`]).
    pub in_use_bytes: u64,
    /// Pages reachable from the working state.
    pub pages_in_use: u64,
    /// Pages free now (including allocated file space past the high-water mark).
    pub pages_free: u64,
    /// Pages freed but waiting for readers / durability to be reused.
    pub pages_pending: u64,
    /// Sum of key + value bytes over all trees.
    pub payload_bytes: u64,
}

/// A consistent, immutable view of a published state. `Send` + `Clone`; while it lives,
/// no page it can reach is reused.
#[derive(Clone)]
pub struct ReadSnapshot {
    map: Arc<Map>,
    /// The file's length when the snapshot was taken.
    file_bytes: u64,
    /// The published txn it shows: no page it reaches is newer.
    txn: u64,
    roots: [TreeRoot; TREE_COUNT],
    app: AppMeta,
    _pin: Arc<Pin>,
}

impl ReadSnapshot {
    pub fn app_meta(&self) -> AppMeta {
        self.app
    }

    /// The db file's length on disk when this snapshot was taken ([`Db::file_bytes`]).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            map: &self.map,
            txn_max: self.txn,
            dirty: None,
        }
    }

    /// The value of `key`; `Error::Corrupt` if a page on the way fails its check.
    #[inline]
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<&[u8]>> {
        self.get_in(&VerifiedPages::default(), tree, key)
    }

    /// [`ReadSnapshot::get`] as one of several lookups of one read operation: pages
    /// `memo` saw verified are not checked again.
    #[inline]
    pub fn get_in(&self, memo: &VerifiedPages, tree: TreeId, key: &[u8]) -> Result<Option<&[u8]>> {
        btree::get(self.reader(), memo, &self.roots[tree as usize], key)
            .map_err(|b| Error::bad_page(self.map.path(), b))
    }

    /// Entries with `start <= key < end` (`end` empty = unbounded), ascending. A page
    /// that fails its check yields `Error::Corrupt` and ends the iteration.
    pub fn range<'a>(
        &'a self,
        tree: TreeId,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<(&'a [u8], &'a [u8])>> + 'a {
        let it = btree::Iter::new(self.reader(), &self.roots[tree as usize], start, end);
        it.map(|r| r.map_err(|b| Error::bad_page(self.map.path(), b)))
    }

    pub fn len(&self, tree: TreeId) -> u64 {
        self.roots[tree as usize].entries
    }

    pub fn is_empty(&self, tree: TreeId) -> bool {
        self.len(tree) == 0
    }
}

pub use page::check_page_bytes;

#[cfg(test)]
mod tests;

/// Asks the kernel to start writing the dirty pages of the db file at `path` now, without
/// waiting for them (`sync_file_range` with `SYNC_FILE_RANGE_WRITE` on a descriptor of its
/// own, so the db's own descriptor keeps every writeback error for its fdatasync). Blocks
/// for the open and for queueing the writes: call it off the executor. Durability is still
/// only the commit's fdatasync; this spreads the commit's flush over the interval.
#[allow(unsafe_code)]
pub fn start_writeback(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid descriptor owned by `file` for the call's duration; no memory passed.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
