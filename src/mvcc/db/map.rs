//! The memory mapping of the db file: the only module with `unsafe`.
//!
//! The file is mapped once, shared and writable, with `map_bytes_max` bytes reserved so
//! the address never changes (no remap, ever). Bytes past the end of the file are never
//! touched: every access is checked against `file_bytes`. It grows with the file; it
//! shrinks (defragmentation, `Db::commit`) only past pages no published root, live
//! snapshot or on-disk meta can reach, and the file itself is cut only later, once every
//! snapshot that might still hold the larger bound is gone (see `mod.rs`), so a check
//! made against the old bound never lets a read touch a cut page.
//!
//! Invariant the `unsafe` below relies on (kept by `Db`'s allocator, see `mod.rs`):
//! the writer mutates a page only while no published root and no live `ReadSnapshot`
//! can reach it, so a `&[u8]` handed to a reader never aliases bytes being written.
//! There is exactly one [`MapWriter`] per mapping (not `Clone`), and it hands out at
//! most one `&mut` at a time (methods take `&mut self`).
#![allow(unsafe_code)]

use super::PAGE_BYTES;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Map {
    raw: MmapRaw,
    /// The mapped file, for errors that name it.
    path: PathBuf,
    map_bytes: u64,
    /// The usable file length: accesses beyond it are refused. The file on disk is at
    /// least this long (longer between a shrink and the cut that follows it).
    file_bytes: AtomicU64,
}

impl Map {
    pub fn new(file: &File, path: &Path, map_bytes: u64, file_bytes: u64) -> std::io::Result<Map> {
        assert!(file_bytes <= map_bytes);
        let raw = MmapOptions::new().len(map_bytes as usize).map_raw(file)?;
        // No readahead on faults (bbolt maps its file the same way). With it, the
        // writer's first touch of a fresh page of the preallocated file (unwritten
        // extents) made the kernel zero-fill a large readahead folio: single inserts took
        // 9–18 ms on the raft core, a few times a second under put load (issue 22).
        raw.advise(memmap2::Advice::Random)?;
        Ok(Map {
            raw,
            path: path.to_path_buf(),
            map_bytes,
            file_bytes: AtomicU64::new(file_bytes),
        })
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Acquire)
    }

    pub fn map_bytes(&self) -> u64 {
        self.map_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` bytes at `offset` of the file, or `None` if the range is not inside the file
    /// (for page ids read from the file after open, which damage may have changed).
    #[inline]
    pub fn try_bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if end > self.file_bytes() {
            return None;
        }
        Some(self.bytes(offset, len))
    }

    /// `len` bytes at `offset` of the file.
    ///
    /// Panics if the range is not inside the file (a bug: page ids read from disk are
    /// validated at open, and the writer never links a page past the end).
    #[inline]
    pub fn bytes(&self, offset: u64, len: usize) -> &[u8] {
        let end = offset.checked_add(len as u64).expect("offset overflow");
        assert!(
            end <= self.file_bytes(),
            "read past end of db file: {offset}+{len}"
        );
        // SAFETY: the range lies inside the mapping (file_bytes <= map_bytes) and inside
        // the file, so the memory is valid for reads for as long as `self` lives (the
        // mapping is only unmapped on drop, and the file is cut only past a bound that
        // every reader alive when the bound was lowered has dropped, see the module doc).
        // No `&mut` to these bytes exists while this `&` lives: the writer only mutates
        // pages unreachable from every published root and live snapshot (module doc),
        // and callers only read pages reachable from one of those or from the writer's
        // own working state, which it does not mutate while borrowed (`&self`/`&mut self`).
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(offset as usize), len) }
    }

    #[inline]
    pub fn page(&self, id: u64) -> &[u8] {
        self.bytes(id * PAGE_BYTES as u64, PAGE_BYTES)
    }

    /// Takes `pages` pages at page `id` out of this process's resident set
    /// (`MADV_DONTNEED`): the writer's pages once they are on the disk, which etcd's
    /// `pwrite`s never map in the first place. The bytes stay in the page cache and the
    /// next access (a read, or the writer's copy) maps them again. Pages past the file's
    /// end are left alone.
    pub fn release(&self, id: u64, pages: u64) {
        let offset = id * PAGE_BYTES as u64;
        let end = (offset + pages * PAGE_BYTES as u64).min(self.file_bytes());
        if end <= offset {
            return;
        }
        // SAFETY: the range lies inside the mapping and the file. The mapping is shared
        // (`map_raw`), so MADV_DONTNEED drops only this process's page-table entries: the
        // contents are the file's page cache (a dirty page keeps its data and is written
        // back), and any access, through a reference handed out before or after, reads
        // the same bytes again. It never discards data as it would on a private mapping.
        let done = unsafe {
            self.raw.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset as usize,
                (end - offset) as usize,
            )
        };
        // Only memory accounting is lost if the kernel refuses.
        let _ = done;
    }
}

/// The writer's handle on the mapping. Exactly one exists per `Map`.
pub struct MapWriter {
    map: Arc<Map>,
}

impl MapWriter {
    pub fn new(map: Map) -> MapWriter {
        MapWriter { map: Arc::new(map) }
    }

    pub fn map(&self) -> &Arc<Map> {
        &self.map
    }

    /// Records that the file is now `bytes` long (after it was extended).
    pub fn set_file_bytes(&mut self, bytes: u64) {
        assert!(bytes >= self.map.file_bytes() && bytes <= self.map.map_bytes);
        self.map.file_bytes.store(bytes, Ordering::Release);
    }

    /// Lowers the usable length to `bytes` (defragmentation freed the pages past it).
    /// The caller cuts the file only once no reader can hold the old bound (module doc).
    pub fn shrink_file_bytes(&mut self, bytes: u64) {
        assert!(bytes <= self.map.file_bytes() && bytes.is_multiple_of(PAGE_BYTES as u64));
        self.map.file_bytes.store(bytes, Ordering::Release);
    }

    /// Mutable access to `pages` pages starting at page `id`.
    ///
    /// The caller (the `Db` allocator) guarantees the pages are unreachable from every
    /// published root and every live snapshot: freshly allocated, reused free pages, or
    /// dirty pages of the working transaction, or a meta slot no reader uses.
    #[inline]
    pub fn pages_mut(&mut self, id: u64, pages: u64) -> &mut [u8] {
        let offset = id * PAGE_BYTES as u64;
        let len = (pages as usize) * PAGE_BYTES;
        assert!(
            offset + len as u64 <= self.map.file_bytes(),
            "write past end of db file"
        );
        // SAFETY: in bounds of the mapping and the file (checked above). Exclusive: this
        // is the only `MapWriter` of the mapping and `&mut self` is borrowed for the
        // returned lifetime, so the writer holds no other reference into the map; readers
        // on other cores never reach these pages (allocator invariant in the module doc),
        // so no `&[u8]` aliases them.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.raw.as_mut_ptr().add(offset as usize), len)
        }
    }

    /// Copies page `from` (any readable page) over page `to` (writable, see `pages_mut`).
    pub fn copy_page(&mut self, from: u64, to: u64) {
        assert_ne!(from, to);
        let src = self.map.page(from).as_ptr();
        let dst = self.page_mut(to).as_mut_ptr();
        // SAFETY: both ranges are one in-bounds page (checked by `page` and `page_mut`),
        // distinct pages never overlap, and `to` is writable by the `pages_mut` contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, PAGE_BYTES) }
    }

    #[inline]
    pub fn page_mut(&mut self, id: u64) -> &mut [u8] {
        self.pages_mut(id, 1)
    }
}
