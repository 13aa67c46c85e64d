//! The read side of the B+tree: every page a read visits is checked before it is used
//! (checksum, identity, level, txn bound), a failure being a `BadPage` the db turns into
//! `Error::Corrupt`; point lookups (`get`) and range iteration (`Iter`).

use super::*;

/// A page that failed its check when read after open: where it is and what was wrong.
/// The caller turns it into `Error::Corrupt` naming the file.
#[derive(Debug)]
pub struct BadPage {
    pub offset: u64,
    pub what: String,
}

pub(super) type ReadResult<T> = std::result::Result<T, BadPage>;

pub(super) fn bad(id: u64, what: impl Into<String>) -> BadPage {
    BadPage {
        offset: id.wrapping_mul(PAGE_BYTES as u64),
        what: what.into(),
    }
}

/// The writer's pages of the working txn (allocated since the last publish, not sealed
/// yet): a bitmap by page id, so "is this page dirty?" never trusts a page header, which
/// damage may have changed. Only the first page of an overflow run is recorded.
#[derive(Default)]
pub struct DirtyPages {
    pub(super) bits: Vec<u64>,
}

impl DirtyPages {
    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        let (w, b) = ((id / 64) as usize, id % 64);
        self.bits.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    pub fn insert(&mut self, id: u64) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << b;
    }

    pub fn remove(&mut self, id: u64) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if let Some(x) = self.bits.get_mut(w) {
            *x &= !(1 << b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&x| x == 0)
    }
}

/// The pages one read operation has verified: the last page verified at each level.
/// Create one per operation (a get, a `ReadView` call) over one view that does not change
/// meanwhile (a snapshot, or the writer between two writes), never keep one longer: a
/// page it names is trusted without its checksum.
#[derive(Default)]
pub struct VerifiedPages {
    pub(super) last: [Cell<u64>; HEIGHT_MAX],
}

/// How a read reaches pages: every page it visits that is not one of the writer's dirty
/// pages is verified (checksum and header) before any of its bytes is used, unless the
/// same operation verified it already (`VerifiedPages`).
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub map: &'a Map,
    /// No page of this view carries a newer txn (a snapshot's txn, or the working txn).
    pub txn_max: u64,
    /// The writer's unsealed pages, trusted as they are; `None` for a snapshot, which
    /// reaches only sealed pages.
    pub dirty: Option<&'a DirtyPages>,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(super) fn is_dirty(&self, id: u64) -> bool {
        self.dirty.is_some_and(|d| d.contains(id))
    }

    /// Leaf (level 0) or branch page `id`, verified.
    #[inline]
    pub fn node(&self, id: u64, level: usize, memo: &VerifiedPages) -> ReadResult<&'a [u8]> {
        let p = match id.checked_mul(PAGE_BYTES as u64) {
            Some(off) if id >= 2 => self.map.try_bytes(off, PAGE_BYTES),
            _ => None,
        }
        .ok_or_else(|| bad(id, format!("page id {id} outside the file")))?;
        let seen = memo.last.get(level);
        if seen.is_some_and(|s| s.get() == id) || self.is_dirty(id) {
            return Ok(p);
        }
        verify_node(p, id, level, self.txn_max).map_err(|what| bad(id, what))?;
        if let Some(s) = seen {
            s.set(id);
        }
        Ok(p)
    }

    /// The value bytes of the overflow run at `id` holding a value of `len` bytes,
    /// verified (checksum over the whole run, header).
    pub fn overflow(&self, id: u64, len: usize) -> ReadResult<&'a [u8]> {
        let pages = page::overflow_run_pages(len);
        let run = match id.checked_mul(PAGE_BYTES as u64) {
            Some(off) if id >= 2 => self.map.try_bytes(off, pages as usize * PAGE_BYTES),
            _ => None,
        }
        .ok_or_else(|| bad(id, format!("overflow run {id}+{pages} outside the file")))?;
        if !self.is_dirty(id) {
            verify_overflow(run, id, len, self.txn_max).map_err(|what| bad(id, what))?;
        }
        Ok(&run[HEADER_BYTES..HEADER_BYTES + len])
    }

    #[inline]
    pub(super) fn value(&self, v: ValRef<'a>) -> ReadResult<&'a [u8]> {
        match v {
            ValRef::Inline(b) => Ok(b),
            ValRef::Overflow { page: o, len } => self.overflow(o, len),
        }
    }
}

/// Checks a sealed leaf or branch page before it is read: its checksum, then that it is
/// the page its parent points at (id, kind, level), not empty, and not newer than the view.
#[inline]
pub(super) fn verify_node(
    p: &[u8],
    id: u64,
    level: usize,
    txn_max: u64,
) -> std::result::Result<(), String> {
    if !page::crc_ok(p) {
        return Err("checksum mismatch".into());
    }
    let kind = if level == 0 { KIND_LEAF } else { KIND_BRANCH };
    if page::kind(p) != kind || page::level(p) != level || page::page_id(p) != id {
        return Err(format!(
            "page kind {} level {} id {} where kind {kind} level {level} expected",
            page::kind(p),
            page::level(p),
            page::page_id(p)
        ));
    }
    if page::count(p) == 0 || page::txn(p) > txn_max {
        return Err(format!(
            "{} cells, txn {} (view txn {txn_max})",
            page::count(p),
            page::txn(p)
        ));
    }
    Ok(())
}

pub(super) fn verify_overflow(
    run: &[u8],
    id: u64,
    len: usize,
    txn_max: u64,
) -> std::result::Result<(), String> {
    if !page::crc_ok(run) {
        return Err("overflow run checksum mismatch".into());
    }
    let pages = page::overflow_run_pages(len);
    let header_ok = page::kind(run) == page::KIND_OVERFLOW
        && page::page_id(run) == id
        && page::overflow_len(run) == len
        && page::overflow_pages(run) == pages
        && page::txn(run) <= txn_max;
    if !header_ok {
        return Err(format!(
            "overflow run header (kind {}, id {}, {} bytes) does not match a {len}-byte value",
            page::kind(run),
            page::page_id(run),
            page::overflow_len(run)
        ));
    }
    Ok(())
}

/// Point lookup from `root`. For 16-byte keys each page is entered at the slot its
/// parent's separators predict (revisions are dense), which reads one or two cells per
/// page instead of log2(cells): each of those reads is a cache miss on a cold page.
#[inline]
pub fn get<'a>(
    r: Reader<'a>,
    memo: &VerifiedPages,
    root: &TreeRoot,
    key: &[u8],
) -> ReadResult<Option<&'a [u8]>> {
    if root.page == 0 {
        return Ok(None);
    }
    let target = key_word(key);
    // The current page's key range [lo, hi) as words, from its parent's separators.
    let mut bounds: Option<(u64, u64)> = None;
    let mut id = root.page;
    for level in (1..root.height as usize).rev() {
        let p = r.node(id, level, memo)?;
        let n = page::count(p);
        let i = page::branch_search_from(p, key, interpolate(bounds, target, n));
        bounds = match (bounds, target) {
            (_, None) => None,
            (outer, Some(_)) => {
                let lo = match i {
                    0 => outer.map(|b| b.0),
                    _ => key_word(page::branch_key(p, i)),
                };
                let hi = match i + 1 < n {
                    true => key_word(page::branch_key(p, i + 1)),
                    false => outer.map(|b| b.1),
                };
                lo.zip(hi)
            }
        };
        id = page::branch_child(p, i);
    }
    let p = r.node(id, 0, memo)?;
    let guess = interpolate(bounds, target, page::count(p));
    match page::leaf_search_from(p, key, guess) {
        Ok(i) => r.value(page::leaf_cell(p, i).1).map(Some),
        Err(_) => Ok(None),
    }
}

/// Ascending iterator over `[start, end)` (`end` empty = unbounded). No allocation.
/// Every page is verified when the iterator enters it; a page that fails ends the
/// iteration with its error.
pub struct Iter<'a> {
    pub(super) r: Reader<'a>,
    pub(super) stack: [(u64, usize); HEIGHT_MAX],
    pub(super) depth: usize,
    pub(super) end: [u8; super::super::KEY_BYTES_MAX],
    pub(super) end_len: usize,
    pub(super) bounded: bool,
    pub(super) end_inclusive: bool,
    pub(super) done: bool,
    /// The page that failed while positioning at `start`, reported by the first `next`.
    pub(super) failed: Option<BadPage>,
}

impl<'a> Iter<'a> {
    pub fn new(r: Reader<'a>, root: &TreeRoot, start: &[u8], end: &[u8]) -> Iter<'a> {
        let mut it = Iter {
            r,
            stack: [(0, 0); HEIGHT_MAX],
            depth: root.height as usize,
            end: [0; super::super::KEY_BYTES_MAX],
            end_len: end.len().min(super::super::KEY_BYTES_MAX),
            bounded: !end.is_empty(),
            // Keys are at most KEY_BYTES_MAX long, so for a longer `end`,
            // `key < end` is `key <= end[..KEY_BYTES_MAX]`.
            end_inclusive: end.len() > super::super::KEY_BYTES_MAX,
            done: root.page == 0,
            failed: None,
        };
        it.end[..it.end_len].copy_from_slice(&end[..it.end_len]);
        if it.done {
            return it;
        }
        if let Err(e) = it.seek(root.page, start) {
            it.failed = Some(e);
        }
        it
    }

    /// Positions the stack at the first key `>= start`.
    pub(super) fn seek(&mut self, root: u64, start: &[u8]) -> ReadResult<()> {
        let memo = VerifiedPages::default();
        let mut id = root;
        for l in 0..self.depth - 1 {
            let p = self.r.node(id, self.depth - 1 - l, &memo)?;
            let i = page::branch_search(p, start);
            self.stack[l] = (id, i);
            id = page::branch_child(p, i);
        }
        let i = match page::leaf_search(self.r.node(id, 0, &memo)?, start) {
            Ok(i) | Err(i) => i,
        };
        self.stack[self.depth - 1] = (id, i);
        Ok(())
    }

    /// A page on the stack: verified when it was pushed.
    #[inline]
    pub(super) fn stacked(&self, l: usize) -> &'a [u8] {
        self.r.map.page(self.stack[l].0)
    }

    /// The next entry, or `None` at the end.
    pub(super) fn step(&mut self) -> ReadResult<Option<(&'a [u8], &'a [u8])>> {
        let leaf_l = self.depth - 1;
        loop {
            let i = self.stack[leaf_l].1;
            let p = self.stacked(leaf_l);
            if i < page::count(p) {
                let (k, v) = page::leaf_cell(p, i);
                let end = &self.end[..self.end_len];
                if self.bounded && (k > end || (k == end && !self.end_inclusive)) {
                    return Ok(None);
                }
                self.stack[leaf_l].1 += 1;
                return Ok(Some((k, self.r.value(v)?)));
            }
            // Climb to the first ancestor with a next child, then go down its left edge.
            let mut l = leaf_l;
            loop {
                if l == 0 {
                    return Ok(None);
                }
                l -= 1;
                let bi = self.stack[l].1;
                if bi + 1 < page::count(self.stacked(l)) {
                    self.stack[l].1 = bi + 1;
                    break;
                }
            }
            let memo = VerifiedPages::default();
            while l < leaf_l {
                let bi = self.stack[l].1;
                let child = page::branch_child(self.stacked(l), bi);
                l += 1;
                self.r.node(child, leaf_l - l, &memo)?;
                self.stack[l] = (child, 0);
            }
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = ReadResult<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
