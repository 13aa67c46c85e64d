//! Copy-on-write B+tree algorithms over the mapping, and the page allocator.
//!
//! A page whose header txn equals the working txn was written after the last publish:
//! no reader can reach it, so it is mutated in place. Any other page is published and
//! immutable: changing it copies it (and its path to the root) to fresh pages.

use super::map::{Map, MapWriter};
use super::page::{self, ValRef, HEADER_BYTES, HEIGHT_MAX, KIND_BRANCH, KIND_LEAF};
use super::{Error, Result, PAGE_BYTES};
use std::cell::Cell;
use std::collections::VecDeque;
use std::path::PathBuf;

mod check;
mod defrag;
mod read;
pub use check::*;
pub use defrag::*;
pub use read::*;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeRoot {
    /// Root page id; 0 = empty tree.
    pub page: u64,
    pub height: u32,
    pub entries: u64,
    pub payload_bytes: u64,
}

/// The writer's page allocator and tree mutator for the working transaction.
pub struct Writer {
    pub map: MapWriter,
    pub path: PathBuf,
    pub file: std::fs::File,
    /// The working (unpublished) txn.
    pub txn: u64,
    pub high_water: u64,
    /// Pages reusable now (stack; lowest ids popped first after open).
    pub free_now: Vec<u64>,
    /// (txn that freed it, first page, pages), in txn order.
    pub pending: VecDeque<(u64, u64, u64)>,
    /// Pending pages freed by txn ≤ this may be reused.
    pub reuse_bound: u64,
    /// Young pages (written after the newest durable commit, so no on-disk meta reaches
    /// them) freed since, as in `pending`: they wait only for the readers, not for two
    /// commits (`young_bound`).
    pub pending_young: VecDeque<(u64, u64, u64)>,
    /// Young pending pages freed by txn ≤ this may be reused: no published state a reader
    /// holds or can still take reaches them.
    pub young_bound: u64,
    /// The newest durable commit's txn: a page written by a later txn is young.
    pub durable_txn: u64,
    /// First pages written in the working txn, sealed (checksummed) at publish.
    pub dirty: Vec<u64>,
    /// Runs of pages (first page, pages) sealed since the last commit: released from the
    /// process's resident set once that commit is on the disk (`Map::release`).
    pub sealed: Vec<(u64, u64)>,
    /// The same pages as a bitmap, minus those freed since: what reads trust unverified.
    pub dirty_pages: DirtyPages,
    /// The largest grow step (`DbOptions::grow_step_bytes`); see [`Writer::step_pages`].
    pub grow_step_pages: u64,
    /// The file's length on disk as last set by the writer: at least the mapping's
    /// `file_bytes`, longer while a shrink waits for old readers before the cut.
    pub file_len_bytes: u64,
    /// During a defragmentation step, dirty pages freed go to `held`, not `free_now`
    /// (merged back at the end of the step), so the step never takes back a page it
    /// just moved away from and `free_now` stays sorted while it allocates.
    pub hold_freed: bool,
    pub held: Vec<u64>,
    /// Keep `free_now` sorted descending when pages come back from `pending` (while a
    /// defragmentation is in progress).
    pub free_sorted: bool,
    pub poisoned: bool,
    pub changed: bool,
    scratch: Box<[u8]>,
    sep: Vec<u8>,
    cell: Vec<u8>,
    #[cfg(test)]
    pub grow_fail_at: Option<u64>,
    #[cfg(test)]
    pub grow_count: u64,
}

/// Moves the runs of `pending` (in txn order) freed by a txn `<= bound` to `free_now`.
fn release_up_to(pending: &mut VecDeque<(u64, u64, u64)>, bound: u64, free_now: &mut Vec<u64>) {
    while let Some(&(t, first, n)) = pending.front() {
        if t > bound {
            break;
        }
        pending.pop_front();
        free_now.extend((first..first + n).rev());
    }
}

/// Free-list entries searched for an overflow run before fresh space is used.
const RUN_SCAN_PAGES_MAX: usize = 1024;
/// The smallest grow step: an empty file is this long (32 KiB).
pub const GROW_STEP_PAGES_MIN: u64 = 8;

type CheckResult<T> = std::result::Result<T, (u64, String)>;
type Path = [(u64, usize); HEIGHT_MAX];

impl Writer {
    pub fn new(map: MapWriter, path: PathBuf, file: std::fs::File, txn: u64) -> Writer {
        Writer {
            map,
            path,
            file,
            txn,
            high_water: 2,
            free_now: Vec::new(),
            pending: VecDeque::new(),
            reuse_bound: 0,
            pending_young: VecDeque::new(),
            young_bound: 0,
            durable_txn: 0,
            dirty: Vec::new(),
            sealed: Vec::new(),
            dirty_pages: DirtyPages::default(),
            grow_step_pages: 1,
            file_len_bytes: 0,
            hold_freed: false,
            held: Vec::new(),
            free_sorted: false,
            poisoned: false,
            changed: false,
            scratch: vec![0u8; PAGE_BYTES].into_boxed_slice(),
            sep: Vec::with_capacity(super::KEY_BYTES_MAX),
            cell: Vec::with_capacity(super::KEY_BYTES_MAX + 16),
            #[cfg(test)]
            grow_fail_at: None,
            #[cfg(test)]
            grow_count: 0,
        }
    }

    pub fn file_pages(&self) -> u64 {
        self.map.map().file_bytes() / PAGE_BYTES as u64
    }

    /// The grow step for a file whose high-water mark is `high_water` pages: as large as
    /// the data (the file doubles while small), between `GROW_STEP_PAGES_MIN` and
    /// `grow_step_pages`. `Db::commit` keeps half a step of headroom.
    pub fn step_pages(&self, high_water: u64) -> u64 {
        let max = self.grow_step_pages.max(1);
        high_water.clamp(GROW_STEP_PAGES_MIN.min(max), max)
    }

    /// Extends the file synchronously (`ftruncate`). Only taken when the headroom that
    /// `Db::commit` keeps with an async fallocate runs out inside one transaction.
    fn grow_sync(&mut self, pages_min: u64) -> Result<()> {
        let map_pages = self.map.map().map_bytes() / PAGE_BYTES as u64;
        let need = self.high_water + pages_min;
        if need > map_pages {
            return Err(Error::MapFull);
        }
        let pages = (self.high_water + self.step_pages(self.high_water))
            .min(map_pages)
            .max(need);
        let bytes = pages * PAGE_BYTES as u64;
        if bytes <= self.file_len_bytes {
            // A shrink not yet cut: the file is still this long (its pages are free).
            self.map.set_file_bytes(bytes);
            return Ok(());
        }
        #[cfg(test)]
        {
            self.grow_count += 1;
            if self.grow_fail_at == Some(self.grow_count) {
                self.poisoned = true;
                return Err(Error::Io {
                    path: self.path.clone(),
                    op: "grow (injected)",
                    source: std::io::Error::other("injected"),
                });
            }
        }
        if let Err(source) = self.file.set_len(bytes) {
            self.poisoned = true;
            return Err(Error::Io {
                path: self.path.clone(),
                op: "grow",
                source,
            });
        }
        self.file_len_bytes = bytes;
        self.map.set_file_bytes(bytes);
        Ok(())
    }

    pub fn reclaim(&mut self) {
        let len = self.free_now.len();
        release_up_to(&mut self.pending, self.reuse_bound, &mut self.free_now);
        release_up_to(
            &mut self.pending_young,
            self.young_bound,
            &mut self.free_now,
        );
        if self.free_sorted && self.free_now.len() > len {
            // Lowest first, so writes between defragmentation steps do not take back the
            // pages it moved away from: the new tail sorted, then merged (the stable sort
            // merges two sorted runs in linear time).
            self.free_now[len..].sort_unstable_by(|a, b| b.cmp(a));
            self.free_now.sort_by(|a, b| b.cmp(a));
        }
    }

    /// Allocates `n` contiguous pages and records them as dirty.
    pub fn alloc(&mut self, n: u64) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.reclaim();
        let id = match self.take_free_run(n) {
            Some(id) => id,
            None => {
                if self.high_water + n > self.file_pages() {
                    self.grow_sync(n)?;
                }
                self.high_water += n;
                self.high_water - n
            }
        };
        self.dirty.push(id);
        self.dirty_pages.insert(id);
        self.changed = true;
        Ok(id)
    }

    /// A run of `n` contiguous free pages. Freed runs are pushed as consecutive
    /// descending ids, so only the most recently freed `RUN_SCAN_PAGES_MAX` entries are
    /// searched (bounded cost, no allocation); a small list is sorted and searched whole.
    /// Without a match the caller takes fresh pages at the high-water mark.
    fn take_free_run(&mut self, n: u64) -> Option<u64> {
        if n == 1 {
            return self.free_now.pop();
        }
        let len = self.free_now.len();
        if (len as u64) < n {
            return None;
        }
        if len <= RUN_SCAN_PAGES_MAX {
            // Descending, so the stack still pops low ids first.
            self.free_now.sort_unstable_by(|a, b| b.cmp(a));
        }
        let from = len.saturating_sub(RUN_SCAN_PAGES_MAX);
        let f = &self.free_now;
        let mut run_start = from; // index of the highest id of the current run
        for i in from..len {
            if i > from && f[i - 1] != f[i] + 1 {
                run_start = i;
            }
            if (i - run_start + 1) as u64 == n {
                let id = f[i];
                self.free_now.drain(run_start..=i);
                return Some(id);
            }
        }
        None
    }

    /// Frees `n` pages starting at `id`, now unreachable from the working state.
    pub fn free(&mut self, id: u64, n: u64) {
        if self.dirty_pages.contains(id) {
            // Never published: no reader or durable meta can reach it. Clearing its txn
            // tells `seal_dirty` that this allocation is gone.
            self.dirty_pages.remove(id);
            page::set_txn(self.map.page_mut(id), id, 0);
            let to = if self.hold_freed {
                &mut self.held
            } else {
                &mut self.free_now
            };
            to.extend((id..id + n).rev());
        } else if (self.durable_txn + 1..self.txn).contains(&page::txn(self.map.map().page(id))) {
            // Published after the newest durable commit: only readers can reach it (issue
            // 22: at one client every put's round copied ~4 pages whose old copies then
            // waited two commits, so each commit flushed ~17 KB per put).
            self.pending_young.push_back((self.txn, id, n));
        } else {
            self.pending.push_back((self.txn, id, n));
        }
        self.changed = true;
    }

    /// The working view's pages: dirty ones trusted, published ones verified.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            map: self.map.map(),
            txn_max: self.txn,
            dirty: Some(&self.dirty_pages),
        }
    }

    fn corrupt(&self, b: BadPage) -> Error {
        Error::bad_page(&self.path, b)
    }

    /// Verifies page `id` at `level` of the working view before the writer reads or
    /// copies it (a no-op for its own dirty pages).
    fn verify_node(&self, id: u64, level: usize) -> Result<()> {
        let memo = VerifiedPages::default();
        match self.reader().node(id, level, &memo) {
            Ok(_) => Ok(()),
            Err(b) => Err(self.corrupt(b)),
        }
    }

    /// Returns a writable copy of page `id` (itself if already dirty). A published page
    /// must have been verified by the caller: the copy is sealed again at publish.
    fn make_writable(&mut self, id: u64) -> Result<u64> {
        if self.dirty_pages.contains(id) {
            return Ok(id);
        }
        let new = self.alloc(1)?;
        self.map.copy_page(id, new);
        page::set_txn(self.map.page_mut(new), new, self.txn);
        self.free(id, 1);
        Ok(new)
    }

    /// Makes the root-to-leaf path writable; returns the leaf id. `path[l].0` is updated
    /// to the writable branch at level index `l`.
    fn cow_path(&mut self, root: &mut TreeRoot, path: &mut Path) -> Result<u64> {
        let mut node = self.make_writable(root.page)?;
        root.page = node;
        for entry in path.iter_mut().take(root.height as usize - 1) {
            entry.0 = node;
            let i = entry.1;
            let child = page::branch_child(self.map.map().page(node), i);
            let w = self.make_writable(child)?;
            if w != child {
                page::set_branch_child(self.map.page_mut(node), i, w);
            }
            node = w;
        }
        Ok(node)
    }

    /// The path to `key`'s leaf, every page on it verified; returns the leaf id.
    fn descend(&self, root: &TreeRoot, key: &[u8], path: &mut Path) -> Result<u64> {
        let r = self.reader();
        let memo = VerifiedPages::default();
        let levels = root.height as usize - 1;
        let mut id = root.page;
        for (l, entry) in path.iter_mut().take(levels).enumerate() {
            let p = r.node(id, levels - l, &memo).map_err(|b| self.corrupt(b))?;
            let i = page::branch_search(p, key);
            *entry = (id, i);
            id = page::branch_child(p, i);
        }
        r.node(id, 0, &memo).map_err(|b| self.corrupt(b))?;
        Ok(id)
    }

    fn free_value(&mut self, run: Option<(u64, u64)>) {
        if let Some((o, n)) = run {
            self.free(o, n);
        }
    }

    /// Fails with `MapFull` before any change if the worst case of one insert or remove
    /// (copy and split of every level, plus a new root and an overflow run) might not fit,
    /// so a full map never leaves the working tree half-changed.
    fn ensure_capacity(&mut self, root: &TreeRoot, run_pages: u64) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let singles = 2 * (root.height as u64 + 1) + 2;
        let map_pages = self.map.map().map_bytes() / PAGE_BYTES as u64;
        let fresh = map_pages - self.high_water;
        self.reclaim();
        if fresh >= singles + run_pages
            || (self.free_now.len() as u64 >= singles && fresh >= run_pages)
        {
            return Ok(());
        }
        Err(Error::MapFull)
    }

    pub fn insert(&mut self, root: &mut TreeRoot, key: &[u8], val: &[u8]) -> Result<()> {
        let run_pages = if val.len() > page::INLINE_VALUE_BYTES_MAX {
            page::overflow_run_pages(val.len())
        } else {
            0
        };
        self.ensure_capacity(root, run_pages)?;
        if root.page == 0 {
            let id = self.alloc(1)?;
            page::init(self.map.page_mut(id), KIND_LEAF, 0, id, self.txn);
            *root = TreeRoot {
                page: id,
                height: 1,
                entries: 0,
                payload_bytes: 0,
            };
        }
        let mut path: Path = [(0, 0); HEIGHT_MAX];
        let leaf0 = self.descend(root, key, &mut path)?;
        let found = page::leaf_search(self.map.map().page(leaf0), key);
        let vref = if val.len() > page::INLINE_VALUE_BYTES_MAX {
            let n = page::overflow_run_pages(val.len());
            let o = self.alloc(n)?;
            page::init_overflow(self.map.pages_mut(o, n), o, self.txn, val);
            ValRef::Overflow {
                page: o,
                len: val.len(),
            }
        } else {
            ValRef::Inline(val)
        };
        let leaf = self.cow_path(root, &mut path)?;
        let pos = match found {
            Ok(i) => {
                let (k, v) = page::leaf_cell(self.map.map().page(leaf), i);
                let (klen, old) = (k.len(), v);
                let old_len = match old {
                    ValRef::Inline(b) => b.len(),
                    ValRef::Overflow { len, .. } => len,
                };
                self.free_value(run_of(old));
                page::remove_cell(self.map.page_mut(leaf), i);
                root.entries -= 1;
                root.payload_bytes -= (klen + old_len) as u64;
                i
            }
            Err(i) => i,
        };
        root.entries += 1;
        root.payload_bytes += (key.len() + val.len()) as u64;
        self.changed = true;
        self.leaf_insert(root, &path, leaf, pos, key, &vref)
    }

    fn is_rightmost(&self, path: &Path, levels: usize) -> bool {
        let map = self.map.map();
        path[..levels]
            .iter()
            .all(|&(pg, i)| i + 1 == page::count(map.page(pg)))
    }

    fn leaf_insert(
        &mut self,
        root: &mut TreeRoot,
        path: &Path,
        leaf: u64,
        pos: usize,
        key: &[u8],
        vref: &ValRef,
    ) -> Result<()> {
        let need = page::leaf_cell_len(key, vref) + 2;
        let p = self.map.page_mut(leaf);
        if page::free_space(p) < need && page::free_space(p) + page::garbage(p) >= need {
            page::compact(p, &mut self.scratch);
        }
        if page::free_space(p) >= need {
            page::insert_leaf_cell(p, pos, key, vref);
            return Ok(());
        }
        let levels = root.height as usize - 1;
        let append = pos == page::count(p) && self.is_rightmost(path, levels);
        let right = self.alloc(1)?;
        self.scratch.copy_from_slice(self.map.map().page(leaf));
        let s = &self.scratch;
        let n = page::count(s) + 1;
        let size = |j: usize| {
            2 + match j.cmp(&pos) {
                std::cmp::Ordering::Less => page::cell_bytes(s, j).len(),
                std::cmp::Ordering::Equal => need - 2,
                std::cmp::Ordering::Greater => page::cell_bytes(s, j - 1).len(),
            }
        };
        let k = if append { n - 1 } else { split_point(n, size) };
        for (target, range) in [(leaf, 0..k), (right, k..n)] {
            let p = self.map.page_mut(target);
            page::init(p, KIND_LEAF, 0, target, self.txn);
            for (dst, j) in range.enumerate() {
                match j.cmp(&pos) {
                    std::cmp::Ordering::Less => {
                        page::insert_raw_cell(p, dst, page::cell_bytes(s, j))
                    }
                    std::cmp::Ordering::Equal => page::insert_leaf_cell(p, dst, key, vref),
                    std::cmp::Ordering::Greater => {
                        page::insert_raw_cell(p, dst, page::cell_bytes(s, j - 1))
                    }
                }
            }
        }
        self.sep.clear();
        self.sep
            .extend_from_slice(page::leaf_key(self.map.map().page(right), 0));
        self.insert_into_parent(root, path, levels, right)
    }

    /// Inserts (self.sep, right) into the parent at path level `l - 1`, splitting upward.
    fn insert_into_parent(
        &mut self,
        root: &mut TreeRoot,
        path: &Path,
        mut l: usize,
        mut right: u64,
    ) -> Result<()> {
        loop {
            if l == 0 {
                let id = self.alloc(1)?;
                let p = self.map.page_mut(id);
                page::init(p, KIND_BRANCH, root.height as usize, id, self.txn);
                page::insert_branch_cell(p, 0, &[], root.page);
                page::insert_branch_cell(p, 1, &self.sep, right);
                root.page = id;
                root.height += 1;
                assert!((root.height as usize) < HEIGHT_MAX, "tree too tall");
                return Ok(());
            }
            let (parent, i) = path[l - 1];
            let need = page::BRANCH_CELL_HEADER_BYTES + self.sep.len() + 2;
            let p = self.map.page_mut(parent);
            if page::free_space(p) < need && page::free_space(p) + page::garbage(p) >= need {
                page::compact(p, &mut self.scratch);
            }
            if page::free_space(p) >= need {
                page::insert_branch_cell(p, i + 1, &self.sep, right);
                return Ok(());
            }
            let pos = i + 1;
            let append = pos == page::count(p) && self.is_rightmost(path, l - 1);
            let new = self.alloc(1)?;
            // The new cell, built before self.sep is overwritten with the pushed-up key.
            self.cell.clear();
            self.cell
                .extend_from_slice(&(self.sep.len() as u16).to_le_bytes());
            self.cell.extend_from_slice(&right.to_le_bytes());
            self.cell.extend_from_slice(&self.sep);
            self.scratch.copy_from_slice(self.map.map().page(parent));
            let s = &self.scratch;
            let cell = &self.cell;
            let lvl = page::level(s);
            let n = page::count(s) + 1;
            let get = |j: usize| match j.cmp(&pos) {
                std::cmp::Ordering::Less => page::cell_bytes(s, j),
                std::cmp::Ordering::Equal => &cell[..],
                std::cmp::Ordering::Greater => page::cell_bytes(s, j - 1),
            };
            let k = if append {
                n - 1
            } else {
                split_point(n, |j| get(j).len() + 2)
            };
            for (target, range) in [(parent, 0..k), (new, k..n)] {
                let p = self.map.page_mut(target);
                page::init(p, KIND_BRANCH, lvl, target, self.txn);
                for (dst, j) in range.enumerate() {
                    page::insert_raw_cell(p, dst, get(j));
                }
            }
            self.sep.clear();
            self.sep
                .extend_from_slice(page::branch_key(self.map.map().page(new), 0));
            right = new;
            l -= 1;
        }
    }

    pub fn remove(&mut self, root: &mut TreeRoot, key: &[u8]) -> Result<bool> {
        self.ensure_capacity(root, 0)?;
        if root.page == 0 {
            return Ok(false);
        }
        let mut path: Path = [(0, 0); HEIGHT_MAX];
        let leaf0 = self.descend(root, key, &mut path)?;
        let Ok(i) = page::leaf_search(self.map.map().page(leaf0), key) else {
            return Ok(false);
        };
        let result = self.remove_at(root, &mut path, i);
        if result.is_err() {
            // A sibling failed its check (or the map filled) half way: like a failed
            // `retain`, the working state can no longer be published.
            self.poisoned = true;
        }
        result.map(|()| true)
    }

    fn remove_at(&mut self, root: &mut TreeRoot, path: &mut Path, i: usize) -> Result<()> {
        let leaf = self.cow_path(root, path)?;
        let (k, v) = page::leaf_cell(self.map.map().page(leaf), i);
        let vlen = match v {
            ValRef::Inline(b) => b.len(),
            ValRef::Overflow { len, .. } => len,
        };
        root.payload_bytes -= (k.len() + vlen) as u64;
        root.entries -= 1;
        self.free_value(run_of(v));
        page::remove_cell(self.map.page_mut(leaf), i);
        self.changed = true;
        let levels = root.height as usize - 1;
        let mut alive = levels;
        if page::count(self.map.map().page(leaf)) == 0 {
            self.free(leaf, 1);
            alive = self.remove_up(root, path, levels);
        } else if levels > 0 && page::used_bytes(self.map.map().page(leaf)) < PAGE_BYTES / 4 {
            self.merge_child(&path[levels - 1])?;
        }
        // Underfull branches on the (writable) path merge with a sibling, bottom up.
        for l in (1..alive).rev() {
            if page::used_bytes(self.map.map().page(path[l].0)) < PAGE_BYTES / 4 {
                self.merge_child(&path[l - 1])?;
            }
        }
        self.collapse_root(root)
    }

    /// The child at path level `l` was freed: remove it from its parent, upward.
    /// Returns how many path levels are still alive (`path[..alive]`).
    fn remove_up(&mut self, root: &mut TreeRoot, path: &Path, mut l: usize) -> usize {
        loop {
            if l == 0 {
                *root = TreeRoot {
                    page: 0,
                    height: 0,
                    entries: root.entries,
                    payload_bytes: 0,
                };
                return 0;
            }
            let (parent, i) = path[l - 1];
            page::remove_cell(self.map.page_mut(parent), i);
            if page::count(self.map.map().page(parent)) > 0 {
                return l;
            }
            self.free(parent, 1);
            l -= 1;
        }
    }

    /// Replaces a root branch with one child by that child, repeatedly. The child may
    /// be a published page off the path: it is verified before it is read.
    fn collapse_root(&mut self, root: &mut TreeRoot) -> Result<()> {
        while root.height > 1 && page::count(self.map.map().page(root.page)) == 1 {
            let child = page::branch_child(self.map.map().page(root.page), 0);
            self.verify_node(child, root.height as usize - 2)?;
            self.free(root.page, 1);
            root.page = child;
            root.height -= 1;
        }
        Ok(())
    }

    /// Merges the child at `parent[i]` with a sibling if both fit in one page; `parent`
    /// is writable. For branches, the right node's first cell takes the parent's
    /// separator as its key, so the merged node keeps exact bounds.
    fn merge_child(&mut self, &(parent, i): &(u64, usize)) -> Result<()> {
        let map = self.map.map().clone();
        let pp = map.page(parent);
        let n = page::count(pp);
        if n < 2 {
            return Ok(());
        }
        let l = if i + 1 < n { i } else { i - 1 };
        let (left, right) = (page::branch_child(pp, l), page::branch_child(pp, l + 1));
        // Siblings off the path may be published pages: verify before reading or copying.
        let level = page::level(pp).saturating_sub(1);
        self.verify_node(left, level)?;
        self.verify_node(right, level)?;
        let rp = map.page(right);
        let is_branch = page::kind(rp) == KIND_BRANCH;
        let mut used = page::used_bytes(map.page(left)) + page::used_bytes(rp);
        if is_branch {
            used = used + page::branch_key(pp, l + 1).len() - page::branch_key(rp, 0).len();
            self.sep.clear();
            self.sep.extend_from_slice(page::branch_key(pp, l + 1));
        }
        if used > PAGE_BYTES - HEADER_BYTES {
            return Ok(());
        }
        let w = self.make_writable(left)?;
        if w != left {
            page::set_branch_child(self.map.page_mut(parent), l, w);
        }
        self.scratch.copy_from_slice(rp);
        let p = self.map.page_mut(w);
        let mut tmp = [0u8; PAGE_BYTES];
        page::compact(p, &mut tmp);
        let base = page::count(p);
        for j in 0..page::count(&self.scratch) {
            if is_branch && j == 0 {
                let child = page::branch_child(&self.scratch, 0);
                page::insert_branch_cell(p, base, &self.sep, child);
            } else {
                page::insert_raw_cell(p, base + j, page::cell_bytes(&self.scratch, j));
            }
        }
        self.free(right, 1);
        page::remove_cell(self.map.page_mut(parent), l + 1);
        Ok(())
    }

    /// See `Db::retain`. Rewrites the leaves overlapping [start, end) that lose entries,
    /// packed full; untouched leaves are kept (shared); branch levels are rebuilt.
    pub fn retain(
        &mut self,
        root: &mut TreeRoot,
        start: &[u8],
        end: &[u8],
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let result = self.retain_inner(root, start, end, keep);
        if result.is_err() {
            // Failed half way (map full or I/O): the working state can no longer be
            // published; the last published and committed states are intact.
            self.poisoned = true;
        }
        result
    }

    fn retain_inner(
        &mut self,
        root: &mut TreeRoot,
        start: &[u8],
        end: &[u8],
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<u64> {
        if root.page == 0 {
            return Ok(0);
        }
        let map = self.map.map().clone();
        let mut r = Retain {
            start,
            end,
            leaves: Vec::new(),
            branches: Vec::new(),
            branch_info: Default::default(),
            kept_branches: Default::default(),
            acc: None,
            removed: 0,
            changed: false,
        };
        self.retain_walk(
            &map,
            &mut r,
            root,
            root.page,
            root.height as usize - 1,
            (&[], None, 0),
            keep,
        )?;
        self.retain_flush(&mut r);
        if !r.changed {
            return Ok(0);
        }
        let mut level = std::mem::take(&mut r.leaves);
        let mut height = 1;
        while level.len() > 1 {
            level = self.build_branch_level(&mut r, level, height)?;
            height += 1;
        }
        for &b in &r.branches {
            if !r.kept_branches.contains(&b) {
                self.free(b, 1);
            }
        }
        match level.pop() {
            Some(Item { id, .. }) => {
                root.page = id;
                root.height = height as u32;
            }
            None => {
                root.page = 0;
                root.height = 0;
            }
        }
        Ok(r.removed)
    }

    #[allow(clippy::too_many_arguments)]
    fn retain_walk(
        &mut self,
        map: &Map,
        r: &mut Retain,
        root: &mut TreeRoot,
        id: u64,
        level: usize,
        (lo, hi, parent): (&[u8], Option<&[u8]>, u64),
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        // Leaves outside the range are not read at all (no page faults, no checksum).
        let overlaps = (r.end.is_empty() || lo < r.end) && hi.is_none_or(|h| h > r.start);
        if level > 0 || overlaps {
            self.verify_node(id, level)?;
        }
        let p = map.page(id);
        if level > 0 {
            r.branches.push(id);
            r.branch_info.insert(id, (page::count(p), parent));
            let n = page::count(p);
            for i in 0..n {
                let clo = if i == 0 { lo } else { page::branch_key(p, i) };
                let chi = if i + 1 < n {
                    Some(page::branch_key(p, i + 1))
                } else {
                    hi
                };
                let child = page::branch_child(p, i);
                self.retain_walk(map, r, root, child, level - 1, (clo, chi, id), keep)?;
            }
            return Ok(());
        }
        let n = if overlaps { page::count(p) } else { 0 };
        let mut drop_bits = [0u64; PAGE_BYTES / 64];
        let mut drops = 0;
        for j in 0..n {
            let k = page::leaf_key(p, j);
            if k < r.start || (!r.end.is_empty() && k >= r.end) {
                continue;
            }
            if !keep(k) {
                drop_bits[j / 64] |= 1 << (j % 64);
                drops += 1;
            }
        }
        if drops == 0 {
            self.retain_flush(r);
            r.leaves.push(Item {
                sep: lo.to_vec(),
                id,
                kept: true,
                parent,
            });
            return Ok(());
        }
        r.changed = true;
        for j in 0..n {
            let (k, v) = page::leaf_cell(p, j);
            if drop_bits[j / 64] & (1 << (j % 64)) != 0 {
                root.entries -= 1;
                root.payload_bytes -= (k.len() + value_len(v)) as u64;
                r.removed += 1;
                self.free_value(run_of(v));
                continue;
            }
            let cell = page::cell_bytes(p, j);
            let fits = r
                .acc
                .is_some_and(|a| page::free_space(self.map.map().page(a)) >= cell.len() + 2);
            if !fits {
                self.retain_flush(r);
                let a = self.alloc(1)?;
                page::init(self.map.page_mut(a), KIND_LEAF, 0, a, self.txn);
                r.acc = Some(a);
            }
            let a = self.map.page_mut(r.acc.unwrap());
            let c = page::count(a);
            page::insert_raw_cell(a, c, cell);
        }
        // Freed only now: a dirty page goes straight to free_now and could be reused.
        self.free(id, 1);
        Ok(())
    }

    fn retain_flush(&mut self, r: &mut Retain) {
        if let Some(a) = r.acc.take() {
            let sep = page::leaf_key(self.map.map().page(a), 0).to_vec();
            r.leaves.push(Item {
                sep,
                id: a,
                kept: false,
                parent: 0,
            });
        }
    }

    /// The next level up: an old branch whose children all survived unchanged, in order,
    /// is kept as it is (shared); the other nodes are packed full into new branch pages.
    fn build_branch_level(
        &mut self,
        r: &mut Retain,
        items: Vec<Item>,
        level: usize,
    ) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut loose: Vec<Item> = Vec::new();
        let mut i = 0;
        while i < items.len() {
            let it = &items[i];
            if it.kept && it.parent != 0 {
                let (n, grandparent) = r.branch_info[&it.parent];
                let whole = items[i..].len() >= n
                    && items[i..i + n]
                        .iter()
                        .all(|x| x.kept && x.parent == it.parent);
                if whole {
                    self.pack_branches(&mut loose, level, &mut out)?;
                    r.kept_branches.insert(it.parent);
                    let sep = it.sep.clone();
                    out.push(Item {
                        sep,
                        id: it.parent,
                        kept: true,
                        parent: grandparent,
                    });
                    i += n;
                    continue;
                }
            }
            loose.push(items[i].clone());
            i += 1;
        }
        self.pack_branches(&mut loose, level, &mut out)?;
        Ok(out)
    }

    fn pack_branches(
        &mut self,
        loose: &mut Vec<Item>,
        level: usize,
        out: &mut Vec<Item>,
    ) -> Result<()> {
        let mut cur: Option<u64> = None;
        for item in loose.drain(..) {
            let need = page::BRANCH_CELL_HEADER_BYTES + item.sep.len() + 2;
            let fits = cur.is_some_and(|c| page::free_space(self.map.map().page(c)) >= need);
            if !fits {
                let id = self.alloc(1)?;
                page::init(self.map.page_mut(id), KIND_BRANCH, level, id, self.txn);
                out.push(Item {
                    sep: item.sep.clone(),
                    id,
                    kept: false,
                    parent: 0,
                });
                cur = Some(id);
            }
            let p = self.map.page_mut(cur.unwrap());
            let c = page::count(p);
            page::insert_branch_cell(p, c, &item.sep, item.id);
        }
        Ok(())
    }

    /// Checksums every page written in the working txn (called at publish).
    ///
    /// `dirty` may hold stale entries: allocations freed in this txn (their header txn was
    /// cleared by `free`) and pages since reused inside a later overflow run (their
    /// "header" is value bytes). Ascending order lets a live run's start, which is in
    /// `dirty` too, cover its interior pages, so value bytes are never taken for a header.
    pub fn seal_dirty(&mut self) {
        let hw = self.high_water;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let mut covered_end = 0;
        for &id in &dirty {
            if id < covered_end {
                continue;
            }
            let p = self.map.map().page(id);
            if page::txn(p) != self.txn || page::page_id(p) != id {
                continue; // freed while dirty
            }
            let n = if page::kind(p) == page::KIND_OVERFLOW {
                page::overflow_pages(p)
            } else {
                1
            };
            assert!(id + n <= hw, "dirty run {id}+{n} past high-water {hw}");
            page::seal(self.map.pages_mut(id, n));
            match self.sealed.last_mut() {
                Some((first, len)) if *first + *len == id => *len += n,
                _ => self.sealed.push((id, n)),
            }
            covered_end = id + n;
        }
        for &id in &dirty {
            self.dirty_pages.remove(id);
        }
        debug_assert!(self.dirty_pages.is_empty());
        dirty.clear();
        self.dirty = dirty;
    }
}

struct Retain<'a> {
    start: &'a [u8],
    end: &'a [u8],
    leaves: Vec<Item>,
    /// Old branch pages in walk order, and for each: (child count, parent).
    branches: Vec<u64>,
    branch_info: std::collections::HashMap<u64, (usize, u64)>,
    kept_branches: std::collections::HashSet<u64>,
    acc: Option<u64>,
    removed: u64,
    changed: bool,
}

/// A node of one level while `retain` rebuilds the branch levels.
#[derive(Clone)]
struct Item {
    /// Lower bound of the node's keys (its separator in the parent).
    sep: Vec<u8>,
    id: u64,
    /// An old page kept unchanged, whose old parent is `parent`.
    kept: bool,
    parent: u64,
}

/// Number of entries (of `n`, sized by `size`) to put in the left page so that the
/// larger half is as small as possible; at least one on each side.
fn split_point(n: usize, size: impl Fn(usize) -> usize) -> usize {
    let total: usize = (0..n).map(&size).sum();
    let (mut left, mut best, mut best_k) = (0, usize::MAX, 1);
    for k in 1..n {
        left += size(k - 1);
        let worst = left.max(total - left);
        if worst < best {
            best = worst;
            best_k = k;
        }
    }
    best_k
}

fn run_of(v: ValRef) -> Option<(u64, u64)> {
    match v {
        ValRef::Inline(_) => None,
        ValRef::Overflow { page: o, len } => Some((o, page::overflow_run_pages(len))),
    }
}

pub fn value_len(v: ValRef) -> usize {
    match v {
        ValRef::Inline(b) => b.len(),
        ValRef::Overflow { len, .. } => len,
    }
}

/// The first 8 bytes of a 16-byte key (a Revision key's `main`) as a number, for
/// interpolating where a key sits in a page.
#[inline]
fn key_word(key: &[u8]) -> Option<u64> {
    match <&[u8; 16]>::try_from(key) {
        Ok(k) => Some(u64::from_be_bytes(k[..8].try_into().expect("8 bytes"))),
        Err(_) => None,
    }
}

/// Where `target` would sit among `n` cells spread evenly over `[lo, hi)`; `n / 2` (a
/// plain bisection) without usable bounds.
#[inline]
fn interpolate(bounds: Option<(u64, u64)>, target: Option<u64>, n: usize) -> usize {
    match (bounds, target) {
        (Some((lo, hi)), Some(t)) if lo <= t && t < hi => {
            ((t - lo) as u128 * n as u128 / (hi - lo) as u128) as usize
        }
        _ => n / 2,
    }
}
