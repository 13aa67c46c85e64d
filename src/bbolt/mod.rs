//! bbolt files (etcd 3.4's `member/snap/db` and `etcdctl snapshot save` format): a reader
//! and a two-pass streaming writer, both over plain bytes. A leaf module: no other
//! `crate::` module, no I/O, no threads; the caller decides which core or blocking-pool
//! thread runs it (reading and writing a whole db is a bulk job: run it off the executor).
//!
//! The format (bbolt 1.3, all integers little-endian), as far as this module uses it:
//!
//! ```text
//!  page (page_size bytes, or (1 + overflow) * page_size for a multi-page page)
//!   0  id u64 | 8 flags u16 | 10 count u16 | 12 overflow u32 | 16 body …
//!      flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
//!  meta body (pages 0 and 1; the valid one with the higher txid wins; txid % 2 == page id)
//!   0 magic u32 = 0xED0CDAED | 4 version u32 = 2 | 8 page_size u32 | 12 flags u32
//!  16 root bucket {root pgid u64, sequence u64} | 32 freelist pgid u64 (u64::MAX: none)
//!  40 pgid u64 (high water: pages in use) | 48 txid u64 | 56 checksum u64 = FNV-1a 64 of 0..56
//!  leaf body: count × {flags u32 (0x01 bucket), pos u32, ksize u32, vsize u32}, then data;
//!      pos counts from the element's own first byte to its key; the value follows the key
//!  branch body: count × {pos u32, ksize u32, pgid u64}, then the keys; each key is the
//!      first key of its child
//!  bucket value (flag 0x01 in the parent's leaf): {root pgid u64, sequence u64}; root 0 =
//!      inline: a leaf page (header + elements + data) follows inside the value
//!  freelist body: count u16 in the header (0xFFFF: the real count is the first u64),
//!      then the free pgids u64
//! ```
//!
//! Invariants:
//! - [`Reader`] never panics and never loops without bound on damaged input: every page
//!   it touches is checked against the file's length and the meta's high water, tree
//!   walks are bounded in depth and in total pages visited, keys must ascend.
//! - The writer emits exactly [`Layout::total_bytes`] bytes, and pass 2 either reproduces
//!   pass 1's leaves (element count, bytes, first key) or returns an error: the branch
//!   pages written from pass 1 always describe the leaves written in pass 2.
//! - Written files pass bbolt's `tx.Check()` (every page below the high water reachable
//!   exactly once, empty freelist), which `etcdctl snapshot status` runs.

mod read;
mod write;

#[cfg(test)]
mod tests;

pub use read::{status, Reader, Status};
pub use write::{write_all, Layout, LeafWriter, Plan};

/// Page size of the files this module writes (readers take theirs from the meta page).
pub const PAGE_BYTES: usize = 4096;

const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const META_BYTES: usize = 64;
const META_CHECKSUMMED_BYTES: usize = 56;
const BUCKET_HEADER_BYTES: usize = 16;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const ELEMENT_BUCKET: u32 = 0x01;

/// bbolt's limit on a key (`MaxKeySize`).
const KEY_BYTES_MAX: usize = 32768;
/// bbolt's limit on a value (`MaxValueSize`).
const VALUE_BYTES_MAX: usize = (1 << 31) - 2;

const _: () = assert!(PAGE_HEADER_BYTES + META_BYTES <= PAGE_BYTES);
const _: () = assert!(META_CHECKSUMMED_BYTES + 8 == META_BYTES);

/// What went wrong reading or writing a bbolt file.
#[derive(Debug)]
pub enum Error {
    /// Not a bbolt file at all (too small, bad magic, unsupported version).
    NotBbolt(String),
    /// A bbolt file, damaged at byte `offset`.
    Corrupt { offset: u64, what: String },
    /// The writer was fed entries bbolt cannot hold (empty or oversized key, keys not
    /// ascending, buckets out of order).
    Invalid(String),
    /// Pass 2 of the writer saw different entries from pass 1.
    Mismatch(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotBbolt(why) => write!(f, "not a bbolt file: {why}"),
            Error::Corrupt { offset, what } => {
                write!(f, "corrupt bbolt file at byte {offset}: {what}")
            }
            Error::Invalid(why) => write!(f, "entries bbolt cannot hold: {why}"),
            Error::Mismatch(why) => {
                write!(f, "bbolt writer: pass 2 differs from pass 1: {why}")
            }
        }
    }
}

impl std::error::Error for Error {}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        offset,
        what: what.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// FNV-1a, 64 bits (the meta checksum).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) use crate::crc32c::Crc32c;
