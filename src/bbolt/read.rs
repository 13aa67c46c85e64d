//! Reading a bbolt file held in memory (or mapped by the caller): the metas, the root
//! bucket, each top-level bucket's keys, and `etcdctl snapshot status`'s numbers.
//!
//! Every page reference is checked against the meta's high water and the file's length
//! before it is read; each walk visits at most high-water pages and descends at most
//! `DEPTH_MAX` levels, so damaged input ends in an [`Error`], never a panic or an
//! endless loop.

use super::{
    corrupt, fnv1a64, u16_at, u32_at, u64_at, Crc32c, Error, BUCKET_HEADER_BYTES, ELEMENT_BUCKET,
    ELEMENT_BYTES, FLAG_BRANCH, FLAG_LEAF, MAGIC, META_BYTES, META_CHECKSUMMED_BYTES, PAGE_BYTES,
    PAGE_HEADER_BYTES, VERSION,
};

/// Deeper than any real B+tree: with at least 2 children per branch, 64 levels would
/// need 2^64 pages.
const DEPTH_MAX: u32 = 64;
/// Page sizes a reader accepts (bbolt uses the OS page size: 4 KiB, 16 KiB, 64 KiB).
const PAGE_BYTES_MIN: usize = 512;
const PAGE_BYTES_MAX: usize = 1 << 20;
/// The meta's "no freelist" marker (bbolt's `pgidNoFreelist`, written when the freelist
/// is not synced, as etcd configures).
const NO_FREELIST: u64 = u64::MAX;
/// etcd's revision keys: 8 bytes main (BE), `_`, 8 bytes sub (BE), maybe a `t` mark.
const REVISION_KEY_BYTES_MIN: usize = 17;

/// A read-only view of a whole bbolt file held in memory or mapped (caller supplies bytes).
pub struct Reader<'a> {
    bytes: &'a [u8],
    page_bytes: usize,
    /// The root bucket's page.
    root_pgid: u64,
    /// Pages in use (the meta's `pgid`): every page reference must be below it.
    high_water: u64,
}

/// One meta page's fields.
struct Meta {
    page_bytes: u32,
    root_pgid: u64,
    freelist_pgid: u64,
    high_water: u64,
    txid: u64,
}

/// A page's bytes (all of its overflow pages too) and where they start in the file. An
/// inline bucket's page is a slice of its bucket value.
#[derive(Clone, Copy)]
struct Page<'a> {
    data: &'a [u8],
    offset: u64,
    inline: bool,
}

/// One leaf element.
struct Elem<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
    /// File offset of the key (for errors).
    offset: u64,
}

/// One tree walk's state: the page budget and the previous key (keys must ascend).
struct Walk {
    pages_left: u64,
    last_key: Vec<u8>,
    started: bool,
}

fn parse_meta(bytes: &[u8], offset: usize) -> Result<Meta, Error> {
    let end = offset + PAGE_HEADER_BYTES + META_BYTES;
    if bytes.len() < end {
        return Err(Error::NotBbolt("file size too small".into()));
    }
    let m = &bytes[offset + PAGE_HEADER_BYTES..end];
    let magic = u32_at(m, 0);
    if magic != MAGIC {
        return Err(Error::NotBbolt(format!(
            "bad magic {magic:#010x} in the meta page at byte {offset}"
        )));
    }
    let version = u32_at(m, 4);
    if version != VERSION {
        return Err(Error::NotBbolt(format!(
            "unsupported version {version} in the meta page at byte {offset}"
        )));
    }
    let checksum = u64_at(m, META_CHECKSUMMED_BYTES);
    // bbolt accepts a zero checksum (metas written before it had checksums).
    if checksum != 0 && checksum != fnv1a64(&m[..META_CHECKSUMMED_BYTES]) {
        return Err(corrupt(offset as u64, "meta checksum mismatch"));
    }
    Ok(Meta {
        page_bytes: u32_at(m, 8),
        root_pgid: u64_at(m, 16),
        freelist_pgid: u64_at(m, 32),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// With meta 0 damaged: the page size of a valid meta 1 found at the offset its own page
/// size names.
fn meta1_page_bytes(bytes: &[u8]) -> Option<usize> {
    let mut n = PAGE_BYTES_MIN;
    while n <= PAGE_BYTES_MAX {
        if parse_meta(bytes, n).is_ok_and(|m| m.page_bytes as usize == n) {
            return Some(n);
        }
        n *= 2;
    }
    None
}

fn plausible_page_bytes(n: u32) -> bool {
    let n = n as usize;
    n.is_power_of_two() && (PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&n)
}

impl<'a> Reader<'a> {
    /// Checks both metas (magic, version, checksum), picks the valid one with the higher
    /// txid (as bbolt does), and checks that its pages lie inside `bytes`.
    pub fn open(bytes: &'a [u8]) -> Result<Reader<'a>, Error> {
        let meta0 = parse_meta(bytes, 0);
        // The page size comes from meta 0; if that one is damaged, from a meta 1 found at
        // the offset its own page size names.
        let page_bytes = match meta0.as_ref().ok().map(|m| m.page_bytes) {
            Some(n) if plausible_page_bytes(n) => n as usize,
            Some(n) => return Err(corrupt(0, format!("implausible page size {n}"))),
            None => match meta1_page_bytes(bytes) {
                Some(n) => n,
                None => {
                    return Err(meta0
                        .err()
                        .unwrap_or_else(|| Error::NotBbolt("no valid meta page".into())))
                }
            },
        };
        if bytes.len() < 2 * page_bytes {
            return Err(Error::NotBbolt("file size too small".into()));
        }
        let meta1 = parse_meta(bytes, page_bytes);
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        if meta.page_bytes as usize != page_bytes {
            return Err(corrupt(
                0,
                format!(
                    "the metas disagree on the page size ({} and {page_bytes})",
                    meta.page_bytes
                ),
            ));
        }
        let pages_in_file = (bytes.len() / page_bytes) as u64;
        if meta.high_water < 3 || meta.high_water > pages_in_file {
            return Err(corrupt(
                0,
                format!(
                    "meta says {} pages, the file holds {pages_in_file} (truncated?)",
                    meta.high_water
                ),
            ));
        }
        if meta.root_pgid < 2 || meta.root_pgid >= meta.high_water {
            return Err(corrupt(
                0,
                format!("root bucket page {} out of range", meta.root_pgid),
            ));
        }
        if meta.freelist_pgid != NO_FREELIST
            && (meta.freelist_pgid < 2 || meta.freelist_pgid >= meta.high_water)
        {
            return Err(corrupt(
                0,
                format!("freelist page {} out of range", meta.freelist_pgid),
            ));
        }
        Ok(Reader {
            bytes,
            page_bytes,
            root_pgid: meta.root_pgid,
            high_water: meta.high_water,
        })
    }

    /// The file's page size (from its meta).
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Pages in use (the meta's high water); `etcdctl snapshot status` reports this times
    /// the page size as the size.
    pub fn page_count(&self) -> u64 {
        self.high_water
    }

    /// Top-level buckets, in key order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, Error> {
        let mut names = Vec::new();
        self.walk(self.root_page()?, &mut |e| {
            if e.flags & ELEMENT_BUCKET != 0 {
                names.push(e.key.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls f(key, value) for every key of top-level bucket `name`, ascending; nested buckets are skipped
    /// (etcd has none). Ok(false) if the bucket does not exist. Every page touched is bounds-checked: damage is an Error, never a panic.
    #[allow(clippy::type_complexity)] // spelled out for callers: a plain key/value visitor
    pub fn for_each(
        &self,
        name: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let Some(page) = self.bucket(name)? else {
            return Ok(false);
        };
        self.walk(page, &mut |e| {
            if e.flags & ELEMENT_BUCKET != 0 {
                return Ok(());
            }
            f(e.key, e.value)
        })?;
        Ok(true)
    }

    fn root_page(&self) -> Result<Page<'a>, Error> {
        self.page(self.root_pgid, 0)
    }

    /// The root page of top-level bucket `name`, if there is one.
    fn bucket(&self, name: &[u8]) -> Result<Option<Page<'a>>, Error> {
        let mut found = None;
        self.walk(self.root_page()?, &mut |e| {
            if e.key == name && e.flags & ELEMENT_BUCKET != 0 {
                found = Some((e.value, e.offset + e.key.len() as u64));
            }
            Ok(())
        })?;
        match found {
            None => Ok(None),
            Some((value, offset)) => self.open_bucket(value, offset).map(Some),
        }
    }

    /// A bucket's root page from its bucket value (at file offset `offset`).
    fn open_bucket(&self, value: &'a [u8], offset: u64) -> Result<Page<'a>, Error> {
        if value.len() < BUCKET_HEADER_BYTES {
            return Err(corrupt(offset, "bucket value shorter than its header"));
        }
        let root = u64_at(value, 0);
        if root != 0 {
            return self.page(root, offset);
        }
        let data = &value[BUCKET_HEADER_BYTES..];
        if data.len() < PAGE_HEADER_BYTES {
            return Err(corrupt(offset, "inline bucket shorter than a page header"));
        }
        Ok(Page {
            data,
            offset: offset + BUCKET_HEADER_BYTES as u64,
            inline: true,
        })
    }

    /// Page `id` with its overflow pages; `from` is the referring offset (for errors).
    fn page(&self, id: u64, from: u64) -> Result<Page<'a>, Error> {
        if id < 2 || id >= self.high_water {
            return Err(corrupt(
                from,
                format!(
                    "page reference {id} out of range (high water {})",
                    self.high_water
                ),
            ));
        }
        // In range: high_water * page_bytes <= bytes.len() (checked at open).
        let start = id as usize * self.page_bytes;
        let head = &self.bytes[start..start + PAGE_HEADER_BYTES];
        let claimed = u64_at(head, 0);
        if claimed != id {
            return Err(corrupt(
                start as u64,
                format!("page {id} says it is page {claimed}"),
            ));
        }
        let overflow = u64::from(u32_at(head, 12));
        if id + overflow >= self.high_water {
            return Err(corrupt(
                start as u64,
                format!("page {id} with {overflow} overflow pages runs past the high water"),
            ));
        }
        let end = (id + overflow + 1) as usize * self.page_bytes;
        Ok(Page {
            data: &self.bytes[start..end],
            offset: start as u64,
            inline: false,
        })
    }

    /// Visits every leaf element under `page` in key order.
    fn walk(
        &self,
        page: Page<'a>,
        visit: &mut dyn FnMut(&Elem<'a>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut w = Walk {
            pages_left: self.high_water,
            last_key: Vec::new(),
            started: false,
        };
        self.walk_page(page, 0, &mut w, visit)
    }

    fn walk_page(
        &self,
        page: Page<'a>,
        depth: u32,
        w: &mut Walk,
        visit: &mut dyn FnMut(&Elem<'a>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if w.pages_left == 0 {
            return Err(corrupt(
                page.offset,
                "tree visits more pages than the file has",
            ));
        }
        w.pages_left -= 1;
        let data = page.data;
        let flags = u16_at(data, 8);
        let count = usize::from(u16_at(data, 10));
        let elements_end = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        if elements_end > data.len() {
            return Err(corrupt(
                page.offset,
                format!("{count} elements do not fit the page"),
            ));
        }
        if flags & FLAG_BRANCH != 0 {
            if page.inline {
                return Err(corrupt(page.offset, "inline bucket page is a branch"));
            }
            if depth >= DEPTH_MAX {
                return Err(corrupt(page.offset, "tree deeper than 64 levels"));
            }
            if count == 0 {
                return Err(corrupt(page.offset, "branch page without elements"));
            }
            for i in 0..count {
                let e = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                let pos = u32_at(data, e) as usize;
                let ksize = u32_at(data, e + 4) as usize;
                let child = u64_at(data, e + 8);
                let element_offset = page.offset + e as u64;
                if e.checked_add(pos)
                    .and_then(|s| s.checked_add(ksize))
                    .is_none_or(|end| end > data.len())
                {
                    return Err(corrupt(element_offset, "branch key runs past its page"));
                }
                let child = self.page(child, element_offset)?;
                self.walk_page(child, depth + 1, w, visit)?;
            }
            Ok(())
        } else if flags & FLAG_LEAF != 0 {
            for i in 0..count {
                let e = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                let element_flags = u32_at(data, e);
                let pos = u32_at(data, e + 4) as usize;
                let ksize = u32_at(data, e + 8) as usize;
                let vsize = u32_at(data, e + 12) as usize;
                let element_offset = page.offset + e as u64;
                let Some((k, v, end)) = e.checked_add(pos).and_then(|k| {
                    let v = k.checked_add(ksize)?;
                    Some((k, v, v.checked_add(vsize)?))
                }) else {
                    return Err(corrupt(element_offset, "leaf element runs past its page"));
                };
                if end > data.len() {
                    return Err(corrupt(element_offset, "leaf element runs past its page"));
                }
                let key = &data[k..v];
                if w.started && key <= w.last_key.as_slice() {
                    return Err(corrupt(
                        page.offset + k as u64,
                        "keys out of order (or repeated)",
                    ));
                }
                w.started = true;
                w.last_key.clear();
                w.last_key.extend_from_slice(key);
                visit(&Elem {
                    flags: element_flags,
                    key,
                    value: &data[v..end],
                    offset: page.offset + k as u64,
                })?;
            }
            Ok(())
        } else {
            Err(corrupt(
                page.offset,
                format!("page flags {flags:#x}: neither branch nor leaf"),
            ))
        }
    }
}

/// What `etcdctl snapshot status` prints, computed the way etcd 3.4's clientv3/snapshot Status does
/// (hash = crc32 Castagnoli over every bucket name, key and value in order; total_key = every key of every
/// bucket; revision = main revision (first 8 bytes BE) of the last key of bucket "key"; total_size =
/// the size bbolt reports: high water pages × page size, which is the file's length for
/// a file this module writes and a snapshot's length without its 32-byte sha256 trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// `etcdctl snapshot status` of `bytes` (a trailing sha256 does not matter). As in etcd:
/// every top-level key must be a bucket; a nested bucket counts as a key and hashes its
/// name only (bbolt's `ForEach` gives it a nil value); every key of bucket "key" must be
/// a revision (etcd would crash on a shorter one, this returns an error). Unlike etcd this
/// does not run bbolt's full `tx.Check()`, only the reader's checks.
pub fn status(bytes: &[u8]) -> Result<Status, Error> {
    let r = Reader::open(bytes)?;
    let mut buckets = Vec::new();
    r.walk(r.root_page()?, &mut |e| {
        if e.flags & ELEMENT_BUCKET == 0 {
            return Err(corrupt(
                e.offset,
                format!(
                    "top-level key {:?} is not a bucket",
                    String::from_utf8_lossy(e.key)
                ),
            ));
        }
        buckets.push((e.key, e.value, e.offset + e.key.len() as u64));
        Ok(())
    })?;
    let mut h = Crc32c::new();
    let mut s = Status {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: r.high_water * r.page_bytes as u64,
    };
    for (name, value, offset) in buckets {
        h.update(name);
        let is_key_bucket = name == b"key";
        let page = r.open_bucket(value, offset)?;
        r.walk(page, &mut |e| {
            h.update(e.key);
            if e.flags & ELEMENT_BUCKET == 0 {
                h.update(e.value);
            }
            if is_key_bucket {
                if e.key.len() < REVISION_KEY_BYTES_MIN {
                    return Err(corrupt(e.offset, "key bucket key is not a revision"));
                }
                let mut main = [0u8; 8];
                main.copy_from_slice(&e.key[..8]);
                s.revision = u64::from_be_bytes(main) as i64;
            }
            s.total_key += 1;
            Ok(())
        })?;
    }
    s.hash = h.sum();
    Ok(s)
}

const _: () = assert!(PAGE_BYTES >= PAGE_BYTES_MIN && PAGE_BYTES <= PAGE_BYTES_MAX);
