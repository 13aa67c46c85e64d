//! Writing a bbolt file in two passes over the same sorted entries: [`Plan`] measures
//! them (pass 1) and fixes every page id; [`Layout::write_head`] emits the head; the
//! [`LeafWriter`] emits the leaf pages as the entries stream past again (pass 2).
//!
//! File layout (page size [`PAGE_BYTES`]; every page id below the high water is used
//! exactly once, the freelist is empty):
//!
//! ```text
//!  page 0, 1          metas (txid 2 and 3, the same tree)
//!  page 2             freelist, empty
//!  page 3…            root bucket leaf: one bucket element per bucket, all non-inline
//!  ─── head: fixed after pass 1 (Layout::write_head) ───────────────────────────────
//!  bucket 0's branch pages, root level first, … bucket N's branch pages
//!  ─── leaves: emitted in pass 2 (LeafWriter) ──────────────────────────────────────
//!  bucket 0's leaves in key order, … bucket N's leaves (an empty bucket: one empty leaf)
//! ```
//!
//! Leaves are packed greedily up to a page; an element that alone exceeds a page gets a
//! multi-page (overflow) page to itself. Branch levels are packed the same way until one
//! node is left; a branch key is the first key of its child. Pass 2 checks each leaf
//! against pass 1's (element count, bytes, first key) before writing it, so a changed
//! input is an error, never a file whose branches point at the wrong keys.

use super::fnv1a64;
use super::{
    Error, BUCKET_HEADER_BYTES, ELEMENT_BUCKET, ELEMENT_BYTES, FLAG_BRANCH, FLAG_FREELIST,
    FLAG_LEAF, FLAG_META, KEY_BYTES_MAX, MAGIC, META_CHECKSUMMED_BYTES, PAGE_BYTES,
    PAGE_HEADER_BYTES, VALUE_BYTES_MAX, VERSION,
};

/// bbolt refuses a page with this many elements or more.
const ELEMENTS_PER_PAGE_MAX: usize = 0xFFFF - 1;
const FREELIST_PGID: u64 = 2;
const ROOT_PGID: u64 = 3;
/// The metas' txids: bbolt writes txid t to meta page t % 2.
const META_TXIDS: [u64; 2] = [2, 3];

/// One leaf as pass 1 measured it.
#[derive(Clone)]
struct LeafPlan {
    first_key: Vec<u8>,
    element_count: usize,
    /// Header + elements + keys + values.
    size_bytes: usize,
    pgid: u64,
}

/// One branch node: children `children` of the level below.
struct BranchPlan {
    children: std::ops::Range<usize>,
    /// The leaf whose first key is this node's first key.
    first_leaf: usize,
    size_bytes: usize,
    pgid: u64,
}

struct BucketPlan {
    name: Vec<u8>,
    leaves: Vec<LeafPlan>,
    /// Branch levels, bottom (parents of leaves) first; empty if one leaf.
    levels: Vec<Vec<BranchPlan>>,
    root_pgid: u64,
}

/// Pages a node of `size_bytes` needs.
fn pages_for(size_bytes: usize) -> u64 {
    size_bytes.div_ceil(PAGE_BYTES).max(1) as u64
}

/// Whether one more element of `element_bytes` joins a node (an empty node takes any).
fn fits(size_bytes: usize, element_count: usize, element_bytes: usize) -> bool {
    element_count == 0
        || (size_bytes + element_bytes <= PAGE_BYTES && element_count < ELEMENTS_PER_PAGE_MAX)
}

/// The order both passes check: buckets in index order, keys strictly ascending within
/// one, keys and values within bbolt's limits.
struct Order {
    bucket_count: usize,
    bucket: usize,
    last_key: Vec<u8>,
    started: bool,
}

impl Order {
    fn new(bucket_count: usize) -> Order {
        Order {
            bucket_count,
            bucket: 0,
            last_key: Vec::new(),
            started: false,
        }
    }

    fn check(&mut self, bucket: usize, key: &[u8], value: &[u8]) -> Result<(), Error> {
        if bucket >= self.bucket_count {
            return Err(Error::Invalid(format!(
                "bucket index {bucket} out of range ({} buckets)",
                self.bucket_count
            )));
        }
        if bucket < self.bucket {
            return Err(Error::Invalid(format!(
                "bucket {bucket} fed after bucket {}",
                self.bucket
            )));
        }
        if bucket > self.bucket {
            self.bucket = bucket;
            self.started = false;
        }
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "key of {} bytes (bbolt takes 1..={KEY_BYTES_MAX})",
                key.len()
            )));
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "value of {} bytes (bbolt takes up to {VALUE_BYTES_MAX})",
                value.len()
            )));
        }
        if self.started && key <= self.last_key.as_slice() {
            return Err(Error::Invalid(format!(
                "keys not strictly ascending in bucket {bucket}"
            )));
        }
        self.started = true;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }
}

/// Streaming writer in two passes over the same, sorted data (the caller's data is a pinned read
/// snapshot, so both passes see the same entries): pass 1 measures, pass 2 emits pages in file order.
pub struct Plan {
    buckets: Vec<BucketPlan>,
    order: Order,
    /// The first entry bbolt cannot hold, reported by pass 2.
    fault: Option<String>,
}

impl Plan {
    /// `buckets`: the top-level bucket names in the order they will be fed (must be sorted ascending by name, as bbolt requires).
    ///
    /// # Panics
    /// If the names are not strictly ascending, one is empty or longer than bbolt's key
    /// limit: the names are the caller's constants, so that is a programmer error.
    pub fn new(buckets: &[&[u8]]) -> Plan {
        assert!(
            buckets.windows(2).all(|w| w[0] < w[1]),
            "bbolt bucket names must be strictly ascending"
        );
        assert!(
            buckets
                .iter()
                .all(|n| !n.is_empty() && n.len() <= KEY_BYTES_MAX),
            "bbolt bucket names must be 1..={KEY_BYTES_MAX} bytes"
        );
        assert!(buckets.len() < ELEMENTS_PER_PAGE_MAX);
        Plan {
            buckets: buckets
                .iter()
                .map(|name| BucketPlan {
                    name: name.to_vec(),
                    leaves: Vec::new(),
                    levels: Vec::new(),
                    root_pgid: 0,
                })
                .collect(),
            order: Order::new(buckets.len()),
            fault: None,
        }
    }

    /// Pass 1: feed every entry, bucket by bucket in `buckets` order, keys ascending within a bucket.
    /// An entry out of order or beyond bbolt's limits is remembered and reported by pass 2.
    pub fn measure(&mut self, bucket: usize, key: &[u8], value: &[u8]) {
        if self.fault.is_some() {
            return;
        }
        if let Err(e) = self.order.check(bucket, key, value) {
            self.fault = Some(e.to_string());
            return;
        }
        let element_bytes = ELEMENT_BYTES + key.len() + value.len();
        let leaves = &mut self.buckets[bucket].leaves;
        match leaves.last_mut() {
            Some(leaf) if fits(leaf.size_bytes, leaf.element_count, element_bytes) => {
                leaf.size_bytes += element_bytes;
                leaf.element_count += 1;
            }
            _ => leaves.push(LeafPlan {
                first_key: key.to_vec(),
                element_count: 1,
                size_bytes: PAGE_HEADER_BYTES + element_bytes,
                pgid: 0,
            }),
        }
    }

    /// Computes the branch levels and every page id.
    pub fn finish(mut self) -> Layout {
        for b in &mut self.buckets {
            if b.leaves.is_empty() {
                b.leaves.push(LeafPlan {
                    first_key: Vec::new(),
                    element_count: 0,
                    size_bytes: PAGE_HEADER_BYTES,
                    pgid: 0,
                });
            }
            // (first leaf, key length) of each node of the level below.
            let mut below: Vec<usize> = (0..b.leaves.len()).collect();
            while below.len() > 1 {
                let mut level: Vec<BranchPlan> = Vec::new();
                for (i, &first_leaf) in below.iter().enumerate() {
                    let element_bytes = ELEMENT_BYTES + b.leaves[first_leaf].first_key.len();
                    match level.last_mut() {
                        Some(n) if fits(n.size_bytes, n.children.len(), element_bytes) => {
                            n.size_bytes += element_bytes;
                            n.children.end = i + 1;
                        }
                        _ => level.push(BranchPlan {
                            children: i..i + 1,
                            first_leaf,
                            size_bytes: PAGE_HEADER_BYTES + element_bytes,
                            pgid: 0,
                        }),
                    }
                }
                below = level.iter().map(|n| n.first_leaf).collect();
                b.levels.push(level);
            }
        }
        let root_bytes = PAGE_HEADER_BYTES
            + self
                .buckets
                .iter()
                .map(|b| ELEMENT_BYTES + b.name.len() + BUCKET_HEADER_BYTES)
                .sum::<usize>();
        let root_pages = pages_for(root_bytes);
        let mut next = ROOT_PGID + root_pages;
        for b in &mut self.buckets {
            for level in b.levels.iter_mut().rev() {
                for n in level {
                    n.pgid = next;
                    next += pages_for(n.size_bytes);
                }
            }
        }
        let head_pages = next;
        for b in &mut self.buckets {
            for leaf in &mut b.leaves {
                leaf.pgid = next;
                next += pages_for(leaf.size_bytes);
            }
            b.root_pgid = match b.levels.last() {
                Some(top) => {
                    assert_eq!(top.len(), 1);
                    top[0].pgid
                }
                None => b.leaves[0].pgid,
            };
        }
        Layout {
            buckets: self.buckets,
            root_bytes,
            head_pages,
            total_pages: next,
            fault: self.fault,
        }
    }
}

/// Where every page goes, from pass 1.
pub struct Layout {
    buckets: Vec<BucketPlan>,
    root_bytes: usize,
    /// Pages of the head (metas, freelist, root bucket, branches): the first leaf's id.
    head_pages: u64,
    total_pages: u64,
    fault: Option<String>,
}

impl Layout {
    /// Exact file length that will be emitted.
    pub fn total_bytes(&self) -> u64 {
        self.total_pages * PAGE_BYTES as u64
    }

    /// Length of what [`Layout::write_head`] appends.
    pub fn head_bytes(&self) -> u64 {
        self.head_pages * PAGE_BYTES as u64
    }

    /// Branch levels of bucket `bucket` (0: its root is a leaf).
    #[cfg(test)]
    pub(super) fn branch_depth(&self, bucket: usize) -> usize {
        self.buckets[bucket].levels.len()
    }

    /// The file's head: both meta pages, the freelist, the root bucket page and all branch pages — everything
    /// that pass 1 determines. Appends to out.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for (pgid, &txid) in META_TXIDS.iter().enumerate() {
            write_meta(
                out,
                pgid as u64,
                txid,
                ROOT_PGID,
                FREELIST_PGID,
                self.total_pages,
            );
        }
        new_page(out, FREELIST_PGID, FLAG_FREELIST, 0, PAGE_HEADER_BYTES);

        let page = new_page(
            out,
            ROOT_PGID,
            FLAG_LEAF,
            self.buckets.len(),
            self.root_bytes,
        );
        let mut data_at = PAGE_HEADER_BYTES + self.buckets.len() * ELEMENT_BYTES;
        for (i, b) in self.buckets.iter().enumerate() {
            let mut header = [0u8; BUCKET_HEADER_BYTES];
            header[..8].copy_from_slice(&b.root_pgid.to_le_bytes());
            put_leaf_element(page, i, &mut data_at, ELEMENT_BUCKET, &b.name, &header);
        }
        assert_eq!(data_at, self.root_bytes);

        for b in &self.buckets {
            for (depth, level) in b.levels.iter().enumerate().rev() {
                for n in level {
                    let page = new_page(out, n.pgid, FLAG_BRANCH, n.children.len(), n.size_bytes);
                    let mut data_at = PAGE_HEADER_BYTES + n.children.len() * ELEMENT_BYTES;
                    for (i, child) in n.children.clone().enumerate() {
                        let (first_leaf, pgid) = if depth == 0 {
                            (child, b.leaves[child].pgid)
                        } else {
                            let c = &b.levels[depth - 1][child];
                            (c.first_leaf, c.pgid)
                        };
                        let key = &b.leaves[first_leaf].first_key;
                        put_branch_element(page, i, &mut data_at, key, pgid);
                    }
                    assert_eq!(data_at, n.size_bytes);
                }
            }
        }
        assert_eq!((out.len() - start) as u64, self.head_bytes());
    }

    /// Pass 2.
    pub fn leaves(&self) -> LeafWriter {
        LeafWriter {
            names: self.buckets.iter().map(|b| b.name.clone()).collect(),
            leaves: self.buckets.iter().map(|b| b.leaves.clone()).collect(),
            fault: self.fault.clone(),
            order: Order::new(self.buckets.len()),
            bucket: 0,
            leaf: 0,
            filled: 0,
            data_at: 0,
            page: Vec::new(),
            written_bytes: 0,
            expected_bytes: self.total_bytes() - self.head_bytes(),
        }
    }
}

/// Appends meta page `pgid` (0 or 1).
pub(super) fn write_meta(
    out: &mut Vec<u8>,
    pgid: u64,
    txid: u64,
    root_pgid: u64,
    freelist_pgid: u64,
    total_pages: u64,
) {
    let page = new_page(out, pgid, FLAG_META, 0, PAGE_HEADER_BYTES);
    let m = &mut page[PAGE_HEADER_BYTES..];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
    // 12..16 flags and 24..32 the root bucket's sequence: zero.
    m[16..24].copy_from_slice(&root_pgid.to_le_bytes());
    m[32..40].copy_from_slice(&freelist_pgid.to_le_bytes());
    m[40..48].copy_from_slice(&total_pages.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&m[..META_CHECKSUMMED_BYTES]);
    m[META_CHECKSUMMED_BYTES..META_CHECKSUMMED_BYTES + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Appends a zeroed page of `pages_for(size_bytes)` pages with its header; returns it.
pub(super) fn new_page(
    out: &mut Vec<u8>,
    pgid: u64,
    flags: u16,
    element_count: usize,
    size_bytes: usize,
) -> &mut [u8] {
    let start = out.len();
    let pages = pages_for(size_bytes);
    out.resize(start + pages as usize * PAGE_BYTES, 0);
    let page = &mut out[start..];
    put_header(page, pgid, flags, element_count, pages);
    page
}

fn put_header(page: &mut [u8], pgid: u64, flags: u16, element_count: usize, pages: u64) {
    assert!(element_count < ELEMENTS_PER_PAGE_MAX);
    let overflow = u32::try_from(pages - 1).expect("a page of at most 2^32 pages");
    page[0..8].copy_from_slice(&pgid.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&(element_count as u16).to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

/// Writes leaf element `index` and its key and value at `*data_at`, then advances it.
pub(super) fn put_leaf_element(
    page: &mut [u8],
    index: usize,
    data_at: &mut usize,
    flags: u32,
    key: &[u8],
    value: &[u8],
) {
    let e = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
    let pos = (*data_at - e) as u32;
    page[e..e + 4].copy_from_slice(&flags.to_le_bytes());
    page[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
    page[e + 8..e + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
    page[e + 12..e + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
    page[*data_at..*data_at + key.len()].copy_from_slice(key);
    *data_at += key.len();
    page[*data_at..*data_at + value.len()].copy_from_slice(value);
    *data_at += value.len();
}

/// Writes branch element `index` and its key at `*data_at`, then advances it.
fn put_branch_element(page: &mut [u8], index: usize, data_at: &mut usize, key: &[u8], pgid: u64) {
    let e = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
    let pos = (*data_at - e) as u32;
    page[e..e + 4].copy_from_slice(&pos.to_le_bytes());
    page[e + 4..e + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
    page[e + 8..e + 16].copy_from_slice(&pgid.to_le_bytes());
    page[*data_at..*data_at + key.len()].copy_from_slice(key);
    *data_at += key.len();
}

/// Pass 2: builds each leaf page as its entries arrive, checks it against pass 1's
/// plan, and appends it to the caller's buffer when complete.
pub struct LeafWriter {
    names: Vec<Vec<u8>>,
    leaves: Vec<Vec<LeafPlan>>,
    fault: Option<String>,
    order: Order,
    /// The bucket and leaf being filled, and how many elements it has so far.
    bucket: usize,
    leaf: usize,
    filled: usize,
    /// Where the next key goes in `page`.
    data_at: usize,
    page: Vec<u8>,
    written_bytes: u64,
    expected_bytes: u64,
}

impl LeafWriter {
    /// Pass 2: the same entries in the same order; appends finished leaf pages to `out` (so the caller
    /// can flush `out` whenever it passes its chunk size). Returns Err if the entries differ from pass 1
    /// (a different count/size per bucket — must be detected, not produce a broken file).
    pub fn push(
        &mut self,
        bucket: usize,
        key: &[u8],
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if let Some(fault) = &self.fault {
            return Err(Error::Invalid(fault.clone()));
        }
        self.order.check(bucket, key, value)?;
        self.close_buckets_before(bucket, out)?;
        let Some(plan) = self.leaves[bucket].get(self.leaf) else {
            return Err(self.mismatch("more entries than in pass 1"));
        };
        if plan.element_count == 0 {
            return Err(self.mismatch("entries in a bucket that was empty in pass 1"));
        }
        let (pgid, plan_count, plan_size_bytes) = (plan.pgid, plan.element_count, plan.size_bytes);
        if self.filled == 0 {
            if key != plan.first_key.as_slice() {
                return Err(self.mismatch("a leaf starts with a different key than in pass 1"));
            }
            self.page.clear();
            new_page(&mut self.page, pgid, FLAG_LEAF, plan_count, plan_size_bytes);
            self.data_at = PAGE_HEADER_BYTES + plan_count * ELEMENT_BYTES;
        }
        if self.data_at + key.len() + value.len() > plan_size_bytes {
            return Err(self.mismatch("a leaf holds more bytes than in pass 1"));
        }
        put_leaf_element(
            &mut self.page,
            self.filled,
            &mut self.data_at,
            0,
            key,
            value,
        );
        self.filled += 1;
        if self.filled == plan_count {
            if self.data_at != plan_size_bytes {
                return Err(self.mismatch("a leaf holds fewer bytes than in pass 1"));
            }
            self.emit(out);
        }
        Ok(())
    }

    /// Last pages; total written == total_bytes().
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        if let Some(fault) = &self.fault {
            return Err(Error::Invalid(fault.clone()));
        }
        self.close_buckets_before(self.leaves.len(), out)?;
        if self.written_bytes != self.expected_bytes {
            return Err(Error::Mismatch(format!(
                "wrote {} leaf bytes, planned {}",
                self.written_bytes, self.expected_bytes
            )));
        }
        Ok(())
    }

    /// Appends the completed leaf and moves to the next.
    fn emit(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.page);
        self.written_bytes += self.page.len() as u64;
        self.leaf += 1;
        self.filled = 0;
    }

    /// Completes every bucket before `bucket`: each must have received all its planned
    /// entries (an empty one gets its empty leaf here).
    fn close_buckets_before(&mut self, bucket: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        while self.bucket < bucket {
            if self.filled != 0 {
                return Err(self.mismatch("fewer entries than in pass 1"));
            }
            let leaves = &self.leaves[self.bucket];
            if self.leaf < leaves.len() {
                let plan = &leaves[self.leaf];
                if plan.element_count != 0 {
                    return Err(self.mismatch("fewer entries than in pass 1"));
                }
                let pgid = plan.pgid;
                self.page.clear();
                new_page(&mut self.page, pgid, FLAG_LEAF, 0, PAGE_HEADER_BYTES);
                self.emit(out);
            }
            self.bucket += 1;
            self.leaf = 0;
            self.filled = 0;
        }
        Ok(())
    }

    fn mismatch(&self, what: &str) -> Error {
        Error::Mismatch(format!(
            "bucket {:?} leaf {}: {what}",
            String::from_utf8_lossy(&self.names[self.bucket]),
            self.leaf
        ))
    }
}

/// Convenience for tests and small files: the whole file from in-memory buckets.
///
/// # Panics
/// If the buckets are not sorted by name, or their entries are not valid bbolt entries
/// in ascending key order (use [`Plan`] to get these as errors).
#[allow(clippy::type_complexity)] // the shape callers code against: (name, entries)
pub fn write_all(buckets: &[(&[u8], Vec<(Vec<u8>, Vec<u8>)>)]) -> Vec<u8> {
    let names: Vec<&[u8]> = buckets.iter().map(|(n, _)| *n).collect();
    let mut plan = Plan::new(&names);
    for (i, (_, entries)) in buckets.iter().enumerate() {
        for (k, v) in entries {
            plan.measure(i, k, v);
        }
    }
    let layout = plan.finish();
    let mut out = Vec::with_capacity(layout.total_bytes() as usize);
    layout.write_head(&mut out);
    let mut leaves = layout.leaves();
    let written = buckets
        .iter()
        .enumerate()
        .try_for_each(|(i, (_, entries))| {
            entries
                .iter()
                .try_for_each(|(k, v)| leaves.push(i, k, v, &mut out))
        })
        .and_then(|()| leaves.finish(&mut out));
    if let Err(e) = written {
        panic!("bbolt::write_all: {e}");
    }
    assert_eq!(out.len() as u64, layout.total_bytes());
    out
}
