//! Page layout: encode, decode and validate pages. Pure functions over byte slices,
//! no `unsafe`, no allocation, never panics on damaged input in `check_page_bytes`.
//!
//! Every page starts with the same 32-byte header (all integers little-endian):
//!
//! ```text
//! offset  size  field
//! ------  ----  -------------------------------------------------------------
//!      0     4  crc32 (crc32fast) over bytes 4..end of the page, or of the whole
//!               run for an overflow run
//!      4     1  kind: 1 meta, 2 branch, 3 leaf, 4 overflow
//!      5     1  level: 0 for leaves and overflow, height-1 for branches
//!      6     2  count: cells in a leaf / branch (0 for meta and overflow)
//!      8     8  page id (the page's own index: detects misdirected writes)
//!     16     8  txn that wrote the page
//!     24     4  leaf/branch: u16 data_start (lowest cell offset), u16 garbage bytes
//!               overflow: value length in bytes
//!     28     4  overflow: pages in the run; otherwise 0
//! ```
//!
//! Leaf and branch pages are slotted: a slot array of u16 cell offsets (ascending key
//! order) grows up from byte 32, cells grow down from the end of the page.
//!
//! ```text
//! | header 32 | slot 0 | slot 1 | ... | free ... | cell k | ... | cell 0 | (4096)
//! leaf cell:    klen u16 | vlen u32 (bit 31 set = overflow) | key | value or page id u64
//! branch cell:  klen u16 | child page id u64 | key   (key of cell 0 is ignored in search)
//! ```
//!
//! An overflow run is `pages` contiguous pages: header in the first, then the value bytes
//! from byte 32 on, contiguous across the run, so readers get one `&[u8]` from the map.
//!
//! Meta pages (page 0 and page 1) use the same header, then from byte 32:
//!
//! ```text
//!     32     8  magic "KEELDB\0\x01"
//!     40     4  format version (1)
//!     44     4  page size (4096)
//!     48     8  high-water page count (pages 0..high_water may be in use)
//!     56    32  AppMeta: consistent_index u64, consistent_term u64,
//!               current_revision i64, compact_revision i64
//!     88  5*32  per tree: root page u64 (0 = empty), height u32, pad u32,
//!               entry count u64, payload bytes u64
//!    512     8  AppMeta: compact_sweep i64 (zero in files written before it existed:
//!               the rest of a meta page is zero-filled, so no format version change)
//!    520     8  AppMeta: key_count u64 (a sizing hint; zero in older files)
//! ```

use super::{KEY_BYTES_MAX, PAGE_BYTES, TREE_COUNT};

pub const HEADER_BYTES: usize = 32;
pub const KIND_META: u8 = 1;
pub const KIND_BRANCH: u8 = 2;
pub const KIND_LEAF: u8 = 3;
pub const KIND_OVERFLOW: u8 = 4;
/// Values longer than this go to an overflow run (about a quarter page).
pub const INLINE_VALUE_BYTES_MAX: usize = 1024;
pub const LEAF_CELL_HEADER_BYTES: usize = 6;
pub const BRANCH_CELL_HEADER_BYTES: usize = 10;
pub const OVERFLOW_FLAG: u32 = 1 << 31;
/// Trees are at most this tall; bounds recursion when reading damaged files.
pub const HEIGHT_MAX: usize = 16;
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"KEELDB\0\x01");
pub const FORMAT_VERSION: u32 = 1;
pub const META_TREES_OFFSET: usize = 88;
pub const META_TREE_BYTES: usize = 32;
/// Where the AppMeta fields added after the tree roots start (room for more trees).
pub const META_SWEEP_OFFSET: usize = 512;
pub const META_KEYS_OFFSET: usize = 520;

const _: () = assert!(META_TREES_OFFSET + TREE_COUNT * META_TREE_BYTES <= META_SWEEP_OFFSET);
const _: () = assert!(META_KEYS_OFFSET + 8 <= PAGE_BYTES);
const _: () = assert!(PAGE_BYTES <= u16::MAX as usize);
// A page holds at least two largest inline leaf cells and seven largest branch cells,
// so a split of a full page plus one cell always fits in two pages.
const _: () = assert!(
    2 * (LEAF_CELL_HEADER_BYTES + KEY_BYTES_MAX + INLINE_VALUE_BYTES_MAX + 2)
        <= PAGE_BYTES - HEADER_BYTES
);
const _: () =
    assert!(7 * (BRANCH_CELL_HEADER_BYTES + KEY_BYTES_MAX + 2) <= PAGE_BYTES - HEADER_BYTES);

#[inline]
pub fn u16_at(p: &[u8], off: usize) -> usize {
    u16::from_le_bytes([p[off], p[off + 1]]) as usize
}
#[inline]
pub fn u32_at(p: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(p[off..off + 4].try_into().unwrap())
}
#[inline]
pub fn u64_at(p: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(p[off..off + 8].try_into().unwrap())
}
#[inline]
pub fn put_u16(p: &mut [u8], off: usize, v: usize) {
    p[off..off + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
#[inline]
pub fn put_u32(p: &mut [u8], off: usize, v: u32) {
    p[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub fn put_u64(p: &mut [u8], off: usize, v: u64) {
    p[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn kind(p: &[u8]) -> u8 {
    p[4]
}
#[inline]
pub fn level(p: &[u8]) -> usize {
    p[5] as usize
}
#[inline]
pub fn count(p: &[u8]) -> usize {
    u16_at(p, 6)
}
#[inline]
pub fn page_id(p: &[u8]) -> u64 {
    u64_at(p, 8)
}
#[inline]
pub fn txn(p: &[u8]) -> u64 {
    u64_at(p, 16)
}
#[inline]
pub fn data_start(p: &[u8]) -> usize {
    u16_at(p, 24)
}
#[inline]
pub fn garbage(p: &[u8]) -> usize {
    u16_at(p, 26)
}
#[inline]
pub fn overflow_len(p: &[u8]) -> usize {
    u32_at(p, 24) as usize
}
#[inline]
pub fn overflow_pages(p: &[u8]) -> u64 {
    u32_at(p, 28) as u64
}
#[inline]
fn slot(p: &[u8], i: usize) -> usize {
    u16_at(p, HEADER_BYTES + 2 * i)
}

/// Pages an overflow run needs for a value of `len` bytes.
pub fn overflow_run_pages(len: usize) -> u64 {
    (HEADER_BYTES + len).div_ceil(PAGE_BYTES) as u64
}

pub fn init(p: &mut [u8], kind: u8, level: usize, id: u64, txn: u64) {
    p[..HEADER_BYTES].fill(0);
    p[4] = kind;
    p[5] = level as u8;
    put_u64(p, 8, id);
    put_u64(p, 16, txn);
    if kind == KIND_LEAF || kind == KIND_BRANCH {
        put_u16(p, 24, PAGE_BYTES);
    }
}

pub fn init_overflow(run: &mut [u8], id: u64, txn: u64, value: &[u8]) {
    init(run, KIND_OVERFLOW, 0, id, txn);
    put_u32(run, 24, value.len() as u32);
    put_u32(run, 28, (run.len() / PAGE_BYTES) as u32);
    run[HEADER_BYTES..HEADER_BYTES + value.len()].copy_from_slice(value);
    run[HEADER_BYTES + value.len()..].fill(0);
}

pub fn set_txn(p: &mut [u8], id: u64, txn: u64) {
    put_u64(p, 8, id);
    put_u64(p, 16, txn);
}

/// Points leaf cell `i`, which holds an overflow value, at the run starting at `run`
/// (defragmentation moved the run).
pub fn set_leaf_overflow_page(p: &mut [u8], i: usize, run: u64) {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    assert!(
        u32_at(p, off + 2) & OVERFLOW_FLAG != 0,
        "cell {i} holds no overflow value"
    );
    put_u64(p, off + LEAF_CELL_HEADER_BYTES + klen, run);
}

/// Computes and stores the checksum of a page or overflow run.
pub fn seal(run: &mut [u8]) {
    let crc = crc32fast::hash(&run[4..]);
    put_u32(run, 0, crc);
}

pub fn crc_ok(run: &[u8]) -> bool {
    crc32fast::hash(&run[4..]) == u32_at(run, 0)
}

/// A leaf value: inline bytes or a reference to an overflow run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValRef<'a> {
    Inline(&'a [u8]),
    Overflow { page: u64, len: usize },
}

#[inline]
pub fn leaf_key(p: &[u8], i: usize) -> &[u8] {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    &p[off + LEAF_CELL_HEADER_BYTES..off + LEAF_CELL_HEADER_BYTES + klen]
}

#[inline]
pub fn leaf_cell(p: &[u8], i: usize) -> (&[u8], ValRef<'_>) {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    let vlen = u32_at(p, off + 2);
    let k0 = off + LEAF_CELL_HEADER_BYTES;
    let key = &p[k0..k0 + klen];
    let v0 = k0 + klen;
    if vlen & OVERFLOW_FLAG != 0 {
        let len = (vlen & !OVERFLOW_FLAG) as usize;
        (
            key,
            ValRef::Overflow {
                page: u64_at(p, v0),
                len,
            },
        )
    } else {
        (key, ValRef::Inline(&p[v0..v0 + vlen as usize]))
    }
}

/// The raw bytes of leaf or branch cell `i`.
pub fn cell_bytes(p: &[u8], i: usize) -> &[u8] {
    let off = slot(p, i);
    &p[off..off + cell_len_at(p, off)]
}

fn cell_len_at(p: &[u8], off: usize) -> usize {
    let klen = u16_at(p, off);
    if kind(p) == KIND_BRANCH {
        BRANCH_CELL_HEADER_BYTES + klen
    } else {
        let vlen = u32_at(p, off + 2);
        let v = if vlen & OVERFLOW_FLAG != 0 {
            8
        } else {
            vlen as usize
        };
        LEAF_CELL_HEADER_BYTES + klen + v
    }
}

pub fn leaf_cell_len(key: &[u8], val: &ValRef) -> usize {
    LEAF_CELL_HEADER_BYTES
        + key.len()
        + match val {
            ValRef::Inline(v) => v.len(),
            ValRef::Overflow { .. } => 8,
        }
}

#[inline]
pub fn branch_key(p: &[u8], i: usize) -> &[u8] {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    &p[off + BRANCH_CELL_HEADER_BYTES..off + BRANCH_CELL_HEADER_BYTES + klen]
}

#[inline]
pub fn branch_child(p: &[u8], i: usize) -> u64 {
    u64_at(p, slot(p, i) + 2)
}

pub fn set_branch_child(p: &mut [u8], i: usize, child: u64) {
    let off = slot(p, i);
    put_u64(p, off + 2, child);
}

/// Byte-wise key order (`<[u8]>::cmp`), with 16-byte keys (every Revision-tree key)
/// compared as one big-endian u128 instead of a libc memcmp call per probe.
#[inline]
pub fn cmp_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if let (Ok(x), Ok(y)) = (<&[u8; 16]>::try_from(a), <&[u8; 16]>::try_from(b)) {
        return u128::from_be_bytes(*x).cmp(&u128::from_be_bytes(*y));
    }
    a.cmp(b)
}

/// Leaf: `Ok(i)` if key is at slot i, `Err(i)` where it would be inserted.
#[inline]
pub fn leaf_search(p: &[u8], key: &[u8]) -> Result<usize, usize> {
    leaf_bisect(p, key, 0, count(p))
}

/// Binary search of a leaf's slots `[lo, hi)`, given that the answer lies in them.
#[inline]
fn leaf_bisect(p: &[u8], key: &[u8], mut lo: usize, mut hi: usize) -> Result<usize, usize> {
    while lo < hi {
        let mid = (lo + hi) / 2;
        match cmp_keys(leaf_key(p, mid), key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// Branch: the child slot to follow for `key` (last i ≥ 1 with key_i ≤ key, else 0).
#[inline]
pub fn branch_search(p: &[u8], key: &[u8]) -> usize {
    branch_bisect(p, key, 1, count(p))
}

/// Binary search of a branch's slots: keys of `[1, lo)` are <= key, of `[hi, count)` > key.
#[inline]
fn branch_bisect(p: &[u8], key: &[u8], mut lo: usize, mut hi: usize) -> usize {
    while lo < hi {
        let mid = (lo + hi) / 2;
        if cmp_keys(branch_key(p, mid), key) != std::cmp::Ordering::Greater {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo - 1
}

/// [`leaf_search`] that probes `guess` and its neighbour before bisecting: with an
/// interpolated guess over dense keys (the Revision tree) that is one or two cell reads
/// instead of log2(count). Any `guess` gives the same answer.
#[inline]
pub fn leaf_search_from(p: &[u8], key: &[u8], guess: usize) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, count(p));
    let mut probe = guess;
    for _ in 0..2 {
        if probe < lo || probe >= hi {
            break;
        }
        match cmp_keys(leaf_key(p, probe), key) {
            std::cmp::Ordering::Less => {
                lo = probe + 1;
                probe += 1;
            }
            std::cmp::Ordering::Greater => {
                hi = probe;
                probe = probe.wrapping_sub(1);
            }
            std::cmp::Ordering::Equal => return Ok(probe),
        }
    }
    leaf_bisect(p, key, lo, hi)
}

/// [`branch_search`] that probes `guess` and its neighbour before bisecting (see
/// [`leaf_search_from`]). Any `guess` gives the same answer.
#[inline]
pub fn branch_search_from(p: &[u8], key: &[u8], guess: usize) -> usize {
    // Keys of slots [1, lo) are <= key, keys of slots [hi, count) are > key.
    let (mut lo, mut hi) = (1, count(p));
    let mut probe = guess;
    for _ in 0..2 {
        if probe < lo || probe >= hi {
            break;
        }
        if cmp_keys(branch_key(p, probe), key) != std::cmp::Ordering::Greater {
            lo = probe + 1;
            probe += 1;
        } else {
            hi = probe;
            probe = probe.wrapping_sub(1);
        }
    }
    branch_bisect(p, key, lo, hi)
}

pub fn free_space(p: &[u8]) -> usize {
    data_start(p).saturating_sub(HEADER_BYTES + 2 * count(p))
}

/// Bytes used by slots and live cells.
pub fn used_bytes(p: &[u8]) -> usize {
    PAGE_BYTES - HEADER_BYTES - free_space(p) - garbage(p)
}

/// Reserves `len` bytes for a new cell at slot `i`; returns its offset. The caller has
/// checked `free_space(p) >= len + 2`.
fn insert_slot(p: &mut [u8], i: usize, len: usize) -> usize {
    let n = count(p);
    debug_assert!(free_space(p) >= len + 2 && i <= n);
    let off = data_start(p) - len;
    let s = HEADER_BYTES + 2 * i;
    p.copy_within(s..HEADER_BYTES + 2 * n, s + 2);
    put_u16(p, s, off);
    put_u16(p, 6, n + 1);
    put_u16(p, 24, off);
    off
}

pub fn insert_raw_cell(p: &mut [u8], i: usize, cell: &[u8]) {
    let off = insert_slot(p, i, cell.len());
    p[off..off + cell.len()].copy_from_slice(cell);
}

pub fn insert_leaf_cell(p: &mut [u8], i: usize, key: &[u8], val: &ValRef) {
    let len = leaf_cell_len(key, val);
    let off = insert_slot(p, i, len);
    put_u16(p, off, key.len());
    let k0 = off + LEAF_CELL_HEADER_BYTES;
    p[k0..k0 + key.len()].copy_from_slice(key);
    let v0 = k0 + key.len();
    match val {
        ValRef::Inline(v) => {
            put_u32(p, off + 2, v.len() as u32);
            p[v0..v0 + v.len()].copy_from_slice(v);
        }
        ValRef::Overflow { page, len } => {
            put_u32(p, off + 2, *len as u32 | OVERFLOW_FLAG);
            put_u64(p, v0, *page);
        }
    }
}

pub fn insert_branch_cell(p: &mut [u8], i: usize, key: &[u8], child: u64) {
    let off = insert_slot(p, i, BRANCH_CELL_HEADER_BYTES + key.len());
    put_u16(p, off, key.len());
    put_u64(p, off + 2, child);
    p[off + BRANCH_CELL_HEADER_BYTES..off + BRANCH_CELL_HEADER_BYTES + key.len()]
        .copy_from_slice(key);
}

pub fn remove_cell(p: &mut [u8], i: usize) {
    let n = count(p);
    let len = cell_len_at(p, slot(p, i));
    let s = HEADER_BYTES + 2 * i;
    p.copy_within(s + 2..HEADER_BYTES + 2 * n, s);
    put_u16(p, 6, n - 1);
    let g = garbage(p) + len;
    put_u16(p, 26, g);
}

/// Rewrites `p` without garbage, using `scratch` (one page).
pub fn compact(p: &mut [u8], scratch: &mut [u8]) {
    scratch.copy_from_slice(p);
    let n = count(scratch);
    put_u16(p, 6, 0);
    put_u16(p, 24, PAGE_BYTES);
    put_u16(p, 26, 0);
    for i in 0..n {
        insert_raw_cell(p, i, cell_bytes(scratch, i));
    }
}

/// Validates one page buffer (leaf, branch, meta or the first page of an overflow run)
/// without trusting any of its bytes. For fuzzing and for the open-time scan.
/// The checksum of an overflow run longer than one page is not checked here.
pub fn check_page_bytes(page: &[u8]) -> Result<(), String> {
    if page.len() != PAGE_BYTES {
        return Err(format!("page buffer of {} bytes", page.len()));
    }
    match kind(page) {
        KIND_OVERFLOW => {
            let pages = overflow_pages(page);
            if pages == 0 || pages != overflow_run_pages(overflow_len(page)) {
                return Err(format!("overflow run of {pages} pages"));
            }
            if pages == 1 && !crc_ok(page) {
                return Err("checksum mismatch".into());
            }
            Ok(())
        }
        KIND_META => {
            if !crc_ok(page) {
                return Err("checksum mismatch".into());
            }
            Ok(())
        }
        KIND_LEAF | KIND_BRANCH => {
            if !crc_ok(page) {
                return Err("checksum mismatch".into());
            }
            check_cells(page, |_| Ok(()))
        }
        k => Err(format!("unknown page kind {k}")),
    }
}

/// Checks slots and cells of a leaf or branch page: in bounds, keys strictly ascending,
/// key and value sizes within limits. `each` sees every key.
pub fn check_cells(
    p: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let n = count(p);
    let ds = data_start(p);
    if HEADER_BYTES + 2 * n > ds || ds > PAGE_BYTES {
        return Err(format!("{n} slots overlap cell area at {ds}"));
    }
    if p[5] as usize >= HEADER_BYTES.min(HEIGHT_MAX) {
        return Err(format!("level {} too deep", p[5]));
    }
    if (kind(p) == KIND_LEAF) != (level(p) == 0) {
        return Err(format!("kind {} at level {}", kind(p), level(p)));
    }
    let mut live = 0usize;
    let mut prev: Option<&[u8]> = None;
    for i in 0..n {
        let off = slot(p, i);
        let hdr = if kind(p) == KIND_BRANCH {
            BRANCH_CELL_HEADER_BYTES
        } else {
            LEAF_CELL_HEADER_BYTES
        };
        if off < ds || off + hdr > PAGE_BYTES {
            return Err(format!("cell {i} offset {off} out of bounds"));
        }
        let klen = u16_at(p, off);
        if klen > KEY_BYTES_MAX {
            return Err(format!("cell {i} key of {klen} bytes"));
        }
        if kind(p) == KIND_LEAF {
            let vlen = u32_at(p, off + 2);
            let v = if vlen & OVERFLOW_FLAG != 0 {
                if ((vlen & !OVERFLOW_FLAG) as usize) <= INLINE_VALUE_BYTES_MAX {
                    return Err(format!("cell {i} overflow value too short"));
                }
                8
            } else if vlen as usize > INLINE_VALUE_BYTES_MAX {
                return Err(format!("cell {i} inline value of {vlen} bytes"));
            } else {
                vlen as usize
            };
            if off + hdr + klen + v > PAGE_BYTES {
                return Err(format!("cell {i} runs past the page end"));
            }
        } else if off + hdr + klen > PAGE_BYTES {
            return Err(format!("cell {i} runs past the page end"));
        }
        live += cell_len_at(p, off);
        let key = &p[off + hdr..off + hdr + klen];
        if let Some(prev) = prev {
            if prev >= key && !(kind(p) == KIND_BRANCH && i == 1) {
                return Err(format!("keys out of order at cell {i}"));
            }
        }
        prev = Some(key);
        each(key)?;
    }
    if live + garbage(p) > PAGE_BYTES - ds {
        return Err(format!("cells ({live} bytes) overlap"));
    }
    Ok(())
}

#[cfg(test)]
mod search_tests {
    use super::*;

    fn key(main: u64, sub: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&main.to_be_bytes());
        k[8..].copy_from_slice(&sub.to_be_bytes());
        k
    }

    /// The guessed searches answer exactly as the plain ones, for every guess (in and out
    /// of range) and every probe key (present, between, before, after; 16-byte or not).
    #[test]
    fn searches_from_any_guess_agree_with_bisection() {
        let mains = [2u64, 3, 5, 9, 10, 11, 40, 41, 1000, 1 << 40];
        let mut leaf = vec![0u8; PAGE_BYTES];
        let mut branch = vec![0u8; PAGE_BYTES];
        init(&mut leaf, KIND_LEAF, 0, 2, 1);
        init(&mut branch, KIND_BRANCH, 1, 3, 1);
        for (i, m) in mains.iter().enumerate() {
            insert_leaf_cell(&mut leaf, i, &key(*m, 0), &ValRef::Inline(b"v"));
            insert_branch_cell(&mut branch, i, &key(*m, 0), 100 + i as u64);
        }
        let mut probes: Vec<Vec<u8>> = Vec::new();
        for m in [
            0u64,
            1,
            2,
            3,
            4,
            9,
            12,
            40,
            999,
            1000,
            1001,
            1 << 40,
            u64::MAX,
        ] {
            for sub in [0u64, 1] {
                probes.push(key(m, sub).to_vec());
            }
            probes.push(m.to_be_bytes().to_vec());
        }
        for probe in &probes {
            for guess in 0..mains.len() + 3 {
                assert_eq!(
                    leaf_search_from(&leaf, probe, guess),
                    leaf_search(&leaf, probe),
                    "leaf {probe:?} guess {guess}"
                );
                assert_eq!(
                    branch_search_from(&branch, probe, guess),
                    branch_search(&branch, probe),
                    "branch {probe:?} guess {guess}"
                );
            }
            for other in &probes {
                assert_eq!(cmp_keys(probe, other), probe[..].cmp(&other[..]));
            }
        }
    }
}
