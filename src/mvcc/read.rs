//! `ReadView`: etcd's Range over a key index and a source of Revision-tree records.
//!
//! The raft core reads through its `Store` (the writer's working state); a shard core
//! will read through its index replica and a published `db::ReadSnapshot`, with the same
//! code.

use super::backend::Backend;
use super::db::{self, ReadSnapshot, TreeId, VerifiedPages};
use super::error::{Error, Result};
use super::key_index::{KeyIndex, KeyRange};
use super::kv::{self, KeyValue, RecordKind};
use super::request::{
    RangeRequest, RangeResponse, RawKvs, RawParts, ResponseHeader, SortOrder, SortTarget,
};
use super::revision::Revision;
use std::cmp::Ordering;

/// Where the records a `ReadView` reads come from.
pub trait Records {
    /// The record stored under an encoded revision. `memo`: the pages this read
    /// operation has verified already (one per `ReadView` call).
    fn record(&self, memo: &VerifiedPages, revision_key: &[u8]) -> db::Result<Option<&[u8]>>;
}

impl<B: Backend> Records for B {
    fn record(&self, memo: &VerifiedPages, revision_key: &[u8]) -> db::Result<Option<&[u8]>> {
        self.get(memo, revision_key)
    }
}

impl Records for ReadSnapshot {
    fn record(&self, memo: &VerifiedPages, revision_key: &[u8]) -> db::Result<Option<&[u8]>> {
        self.get_in(memo, TreeId::Revision, revision_key)
    }
}

/// A consistent pair of key index and records, plus the compact revision they reflect.
pub struct ReadView<'a, R: Records> {
    pub index: &'a KeyIndex,
    pub records: &'a R,
    pub compact_revision: i64,
    /// Only keys in `[lo, hi)` are seen (`hi` `None`: no upper bound): a shard reading
    /// the whole store's index sees just its own range.
    pub lo: &'a [u8],
    pub hi: Option<&'a [u8]>,
}

impl<'a, R: Records> ReadView<'a, R> {
    /// A view of every key of `index`.
    pub fn new(index: &'a KeyIndex, records: &'a R, compact_revision: i64) -> ReadView<'a, R> {
        ReadView {
            index,
            records,
            compact_revision,
            lo: &[],
            hi: None,
        }
    }

    /// The same view, seeing only the keys in `[lo, hi)`.
    pub fn within(self, lo: &'a [u8], hi: Option<&'a [u8]>) -> ReadView<'a, R> {
        ReadView { lo, hi, ..self }
    }

    fn clip<'r>(&self, range: KeyRange<'r>) -> KeyRange<'r>
    where
        'a: 'r,
    {
        range.clip(self.lo, self.hi)
    }

    /// The revision `req` reads at in a txn whose current revision is `current`, or
    /// etcd's error for a future or compacted one.
    fn read_revision(&self, req: &RangeRequest, current: i64) -> Result<i64> {
        if req.revision > current {
            return Err(Error::FutureRev);
        }
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev < self.compact_revision {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// etcd's Range (applierV3backend.Range over rangeKeys), reading as of a txn whose
    /// current revision is `current`: one slice over the whole range.
    pub fn range(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse> {
        let mut read = SliceRead::default();
        self.range_slice(req, current, None, usize::MAX, &mut read)?;
        Ok(read.finish(req, current))
    }

    /// Up to `keys_max` keys of a Range, from `from` on (its own start when `None`),
    /// added to `read`: the key to go on from, or `None` once the range is done. A large
    /// read is served a slice at a time, the core doing other work in between, each
    /// slice as of revision `current` as [`ReadView::range`] reads; `SliceRead::finish`
    /// then sorts, filters and limits as etcd does.
    pub fn range_slice(
        &self,
        req: &RangeRequest,
        current: i64,
        from: Option<&[u8]>,
        keys_max: usize,
        read: &mut SliceRead,
    ) -> Result<Option<Vec<u8>>> {
        let rev = self.read_revision(req, current)?;
        let mut range = self.clip(KeyRange::new(&req.key, &req.range_end));
        if let Some(from) = from {
            range = range.clip(from, None);
        }
        let raw = RawKvs::serves(req);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd fetches everything when it must sort or filter, else limit + 1 for `more`
        // (a raw answer is in key order, unfiltered). Note it looks at the requested
        // sort_order, before `sort` defaults it.
        let fetch_max = if req.count_only {
            0
        } else if (!raw && (req.sort_order != SortOrder::None || filtered)) || req.limit <= 0 {
            usize::MAX
        } else {
            // Saturating: `limit` may be i64::MAX (and usize narrower than i64).
            usize::try_from(req.limit).map_or(usize::MAX, |l| l.saturating_add(1))
        };
        // keys_only drops values after sorting (a VALUE sort still needs them).
        let skip_values = req.keys_only && req.sort_target != SortTarget::Value;
        let mut visited = 0;
        let mut next = None;
        let mut failure = None;
        let memo = VerifiedPages::default();
        self.index.range(range, rev, |key, at| {
            if visited == keys_max {
                next = Some(key.to_vec());
                return false;
            }
            visited += 1;
            read.count += 1;
            let fetched = if raw { read.raw.len() } else { read.kvs.len() };
            if fetched < fetch_max {
                let loaded = if raw {
                    self.record_in(&memo, at.modified)
                        .map(|record| read.raw.push(&record[1..], req.raw_bytes_max))
                } else {
                    self.load_in(&memo, at.modified, skip_values)
                        .map(|kv| read.kvs.push(kv))
                };
                if let Err(e) = loaded {
                    failure = Some(e);
                    return false;
                }
            }
            true
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(next),
        }
    }

    /// The record at `rev`, which the index says is a put.
    pub fn load(&self, rev: Revision, keys_only: bool) -> Result<KeyValue> {
        self.load_in(&VerifiedPages::default(), rev, keys_only)
    }

    /// [`ReadView::load`] as one of the loads of one read operation.
    fn load_in(&self, memo: &VerifiedPages, rev: Revision, keys_only: bool) -> Result<KeyValue> {
        let (_, mut kv) = self.checked_record(memo, rev)?;
        if keys_only {
            kv.value = &[];
        }
        Ok(kv.to_key_value())
    }

    /// The record of the put at `rev` (the index says there is one), checked to be it.
    fn checked_record<'r>(
        &'r self,
        memo: &VerifiedPages,
        rev: Revision,
    ) -> Result<(&'r [u8], kv::KeyValueRef<'r>)> {
        let Some(bytes) = self.records.record(memo, &rev.encode())? else {
            return Err(Error::Corrupt {
                what: format!("index points at missing {rev:?}"),
            });
        };
        let (kind, kv) = kv::decode_record_ref(bytes)?;
        if kind != RecordKind::Put || kv.mod_revision != rev.main {
            return Err(Error::Corrupt {
                what: format!("record {rev:?} is not the indexed put"),
            });
        }
        Ok((bytes, kv))
    }

    /// [`ReadView::checked_record`]'s bytes (flag byte first).
    fn record_in(&self, memo: &VerifiedPages, rev: Revision) -> Result<&[u8]> {
        self.checked_record(memo, rev).map(|(bytes, _)| bytes)
    }

    /// The live value of `key` as of `rev`.
    pub fn load_key(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        if key < self.lo || self.hi.is_some_and(|hi| key >= hi) {
            return Ok(None);
        }
        match self.index.get(key, rev) {
            Some(at) => self.load(at.modified, false).map(Some),
            None => Ok(None),
        }
    }

    /// The live values of every key in `range` as of `rev`, in key order.
    pub fn load_range(&self, range: KeyRange<'_>, rev: i64) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        let mut failure = None;
        let memo = VerifiedPages::default();
        self.index.range(self.clip(range), rev, |_, at| {
            match self.load_in(&memo, at.modified, false) {
                Ok(kv) => {
                    out.push(kv);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// What the slices of a Range read so far found (`ReadView::range_slice`): its kvs as
/// wire bytes (`RawKvs::serves`) or decoded, and the keys counted.
#[derive(Debug, Default)]
pub struct SliceRead {
    pub raw: RawKvs,
    pub kvs: Vec<KeyValue>,
    pub count: i64,
}

impl SliceRead {
    /// The answer once the last slice is read, at revision `current`: etcd's filters,
    /// sort and limit applied.
    pub fn finish(self, req: &RangeRequest, current: i64) -> RangeResponse {
        let SliceRead {
            mut raw,
            mut kvs,
            count,
        } = self;
        let header = ResponseHeader { revision: current };
        if req.count_only {
            return RangeResponse {
                header,
                kvs: Vec::new(),
                more: false,
                count,
                raw: None,
            };
        }
        let mut more = false;
        if RawKvs::serves(req) {
            if req.limit > 0 && raw.len() as i64 > req.limit {
                raw.truncate(req.limit as usize);
                more = true;
            }
            return RangeResponse {
                header,
                kvs: Vec::new(),
                more,
                count,
                raw: Some(RawParts(vec![raw])),
            };
        }
        prune(&mut kvs, req);
        sort(&mut kvs, req);
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            // limit < kvs.len(), so it fits a usize.
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        RangeResponse {
            header,
            kvs,
            more,
            count,
            raw: None,
        }
    }
}

/// etcd's pruneKVs for the min/max mod/create revision filters (0 = no filter).
fn prune(kvs: &mut Vec<KeyValue>, req: &RangeRequest) {
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
}

/// etcd's sort: ascending by default when the target is not KEY (kvs arrive key-sorted).
/// Our sort is stable, so ties keep key order; etcd's sort.Sort leaves ties unspecified.
pub fn sort(kvs: &mut [KeyValue], req: &RangeRequest) {
    let mut order = req.sort_order;
    if req.sort_target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
}
