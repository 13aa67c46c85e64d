//! Requests and responses of the MVCC store, mirroring etcd's `etcdserverpb` messages
//! field for field (same names, same enum values), so the gRPC layer maps them 1:1.
//! `ResponseHeader` carries only `revision`; the server fills cluster_id, member_id and
//! raft_term.

use super::kv::KeyValue;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    pub revision: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SortOrder {
    #[default]
    None = 0,
    Ascend = 1,
    Descend = 2,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SortTarget {
    #[default]
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Read-path routing only (linearizable vs serializable); the store ignores it.
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
    /// Read path only: nonzero asks for the kvs as wire bytes (`RangeResponse::raw`),
    /// when the request allows it (`RawKvs::serves`), keeping at most this many bytes of
    /// them (the rest only counted). 0: `kvs`, as every nested read gets them.
    pub raw_bytes_max: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
    /// The kvs as wire bytes instead of `kvs` (which is then empty), for a request with
    /// `raw_bytes_max`: each shard's part as it was read, in key order.
    pub raw: Option<RawParts>,
}

/// A Range's kvs as the wire bytes of `etcdserverpb.RangeResponse.kvs`: each entry is
/// field 2's tag, a length and the stored record's `mvccpb.KeyValue` bytes, copied from
/// the db page (`kv.rs`), so a large answer costs one copy of its bytes and no
/// allocation per key. The bytes are kept in chunks of about [`RAW_CHUNK_BYTES`] (an
/// entry never spans two), each sent as it is: a large answer grows without copying what
/// it holds already, and leaves no trail of outgrown buffers. Entries past `bytes_max`
/// are only counted (`over_*`): such an answer is refused as too large, unless a limit
/// cuts them off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawKvs {
    pub chunks: Vec<Vec<u8>>,
    /// The end offset of each entry, counted over all chunks.
    pub ends: Vec<usize>,
    /// Entries after the kept ones, counted and not kept, and their encoded bytes.
    pub over_entries: usize,
    pub over_bytes: u64,
}

/// The tag of `RangeResponse.kvs` (field 2, length-delimited).
pub const RAW_KV_TAG: u8 = 2 << 3 | 2;

/// The size a raw answer's chunks grow to before the next one starts.
pub const RAW_CHUNK_BYTES: usize = 1 << 20;

impl RawKvs {
    /// Whether a request's answer can be raw: kvs in key order as stored, values
    /// included, nothing filtered (etcd's other options need the decoded kvs).
    pub fn serves(req: &RangeRequest) -> bool {
        req.raw_bytes_max != 0
            && !req.count_only
            && req.sort_target == SortTarget::Key
            && matches!(req.sort_order, SortOrder::None | SortOrder::Ascend)
            && !req.keys_only
            && req.min_mod_revision == 0
            && req.max_mod_revision == 0
            && req.min_create_revision == 0
            && req.max_create_revision == 0
    }

    /// Entries, kept or only counted.
    pub fn len(&self) -> usize {
        self.ends.len() + self.over_entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the kept entries.
    pub fn kept_bytes(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The encoded size of one entry holding a `kv_bytes`-long KeyValue.
    pub fn entry_bytes(kv_bytes: usize) -> usize {
        1 + super::kv::varint_len(kv_bytes as u64) + kv_bytes
    }

    /// Appends an entry for the KeyValue `kv` (its wire bytes), or counts it once the
    /// kept bytes would pass `bytes_max`.
    pub fn push(&mut self, kv: &[u8], bytes_max: usize) {
        let n = Self::entry_bytes(kv.len());
        let kept = self.kept_bytes();
        if self.over_entries > 0 || kept + n > bytes_max {
            self.over_entries += 1;
            self.over_bytes += n as u64;
            return;
        }
        let full = self
            .chunks
            .last()
            .is_none_or(|c| !c.is_empty() && c.len() + n > RAW_CHUNK_BYTES);
        if full {
            // The first chunk grows as it fills (a point read allocates only its entry);
            // later ones start whole.
            let capacity = if self.chunks.is_empty() {
                n
            } else {
                n.max(RAW_CHUNK_BYTES)
            };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        let chunk = self.chunks.last_mut().expect("a chunk");
        chunk.push(RAW_KV_TAG);
        super::kv::put_varint(chunk, kv.len() as u64);
        chunk.extend_from_slice(kv);
        self.ends.push(kept + n);
    }

    /// Keeps the first `n` entries.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        if n < self.ends.len() {
            self.ends.truncate(n);
            let keep = self.kept_bytes();
            let mut at = 0;
            let mut chunks = 0;
            for c in &mut self.chunks {
                if at >= keep {
                    break;
                }
                c.truncate(keep - at);
                at += c.len();
                chunks += 1;
            }
            self.chunks.truncate(chunks);
        }
        // Entries were only counted past the kept ones: those left are all kept now,
        // unless n still reaches into them (then they stay counted, and too large).
        let counted = n - self.ends.len().min(n);
        if counted == 0 {
            self.over_entries = 0;
            self.over_bytes = 0;
        } else {
            // Sizes of single counted entries are not kept: the answer stays too large,
            // with the bytes of all of them (an upper bound).
            self.over_entries = counted;
        }
    }

    /// The encoded size of every entry, kept or counted.
    pub fn total_bytes(&self) -> u64 {
        self.kept_bytes() as u64 + self.over_bytes
    }

    /// The KeyValues of the kept entries (tests).
    pub fn decode(&self) -> std::result::Result<Vec<KeyValue>, super::kv::CodecError> {
        let mut out = Vec::with_capacity(self.ends.len());
        let mut ends = self.ends.iter().peekable();
        let mut base = 0;
        for chunk in &self.chunks {
            let mut at = 0;
            while let Some(end) = ends.next_if(|&&e| e - base <= chunk.len()) {
                let entry = &chunk[at..end - base];
                let mut i = 1;
                while entry[i] & 0x80 != 0 {
                    i += 1;
                }
                out.push(KeyValue::decode(&entry[i + 1..])?);
                at = end - base;
            }
            base += chunk.len();
        }
        Ok(out)
    }
}

/// A raw answer's parts (one per shard it touched), one after another in key order: sent
/// as they are, one piece each, never copied together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawParts(pub Vec<RawKvs>);

impl RawParts {
    /// Entries, kept or only counted.
    pub fn len(&self) -> usize {
        self.0.iter().map(RawKvs::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first `n` entries.
    pub fn truncate(&mut self, mut n: usize) {
        let mut keep = 0;
        for part in &mut self.0 {
            if n == 0 {
                break;
            }
            part.truncate(n);
            n -= part.len();
            keep += 1;
        }
        self.0.truncate(keep);
    }

    /// The encoded size of every entry, kept or counted.
    pub fn total_bytes(&self) -> u64 {
        self.0.iter().map(RawKvs::total_bytes).sum()
    }

    /// Whether some entries were only counted: a part passed the byte bound.
    pub fn passed_bound(&self) -> bool {
        self.0.iter().any(|p| p.over_entries > 0)
    }

    /// The KeyValues of the kept entries (tests).
    pub fn decode(&self) -> std::result::Result<Vec<KeyValue>, super::kv::CodecError> {
        let mut out = Vec::new();
        for part in &self.0 {
            out.extend(part.decode()?);
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub header: ResponseHeader,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CompareResult {
    #[default]
    Equal = 0,
    Greater = 1,
    Less = 2,
    NotEqual = 3,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CompareTarget {
    #[default]
    Version = 0,
    Create = 1,
    Mod = 2,
    Value = 3,
    Lease = 4,
}

/// etcd's `Compare.target_union` oneof. When it does not match `target`, etcd compares
/// against the zero value (0 or empty bytes); so do we.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetUnion {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub target_union: Option<TargetUnion>,
    pub range_end: Vec<u8>,
}

/// etcd's `RequestOp.request` oneof; `Empty` is the unset oneof (rejected with
/// `KeyNotFound`, as etcd does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    RequestRange(RangeRequest),
    RequestPut(PutRequest),
    RequestDeleteRange(DeleteRangeRequest),
    RequestTxn(TxnRequest),
    Empty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    ResponseRange(RangeResponse),
    ResponsePut(PutResponse),
    ResponseDeleteRange(DeleteRangeResponse),
    ResponseTxn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

/// `header.revision` is set on the outermost response only; nested ones carry 0, as
/// etcd's do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    pub revision: i64,
    /// Answer only once the sweep that drops the compacted records is done (etcd: once
    /// the scheduled compaction has finished); else at once.
    pub physical: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// A lease to create: `id` chosen (never 0) and `ttl` already raised to the minimum by
/// the member that proposed it, so applying it is deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantRequest {
    pub id: i64,
    pub ttl: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    pub ttl: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeRequest {
    pub id: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// Remaining TTLs recorded by the leader (etcd's lease checkpoints): (id, seconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseCheckpointRequest {
    pub checkpoints: Vec<(i64, i64)>,
}

/// One raft-applied MVCC operation (what `Store::apply_at` takes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseCheckpoint(LeaseCheckpointRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(ResponseHeader),
}

macro_rules! op_response_kinds {
    ($($fn:ident: $variant:ident($ty:ty)),* $(,)?) => {
        impl OpResponse {$(
            /// The response to an `Op` of the same kind: the store answers every op with
            /// its own kind, so another is a Keel bug.
            pub fn $fn(self) -> $ty {
                match self {
                    OpResponse::$variant(r) => r,
                    other => unreachable!(
                        "the store answered with {other:?} where {} was due",
                        stringify!($variant)
                    ),
                }
            }
        )*}
    };
}

op_response_kinds! {
    into_txn: Txn(TxnResponse),
    into_delete_range: DeleteRange(DeleteRangeResponse),
    into_lease_grant: LeaseGrant(LeaseGrantResponse),
    into_lease_revoke: LeaseRevoke(LeaseRevokeResponse),
}

/// etcd's isTxnReadonly: no op other than Range in either branch (a nested txn counts
/// as a write). Read-only txns can be served without going through raft.
pub fn is_txn_readonly(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op, RequestOp::RequestRange(_)))
}

#[cfg(test)]
mod raw_tests {
    use super::*;

    fn kv(i: usize, value_bytes: usize) -> KeyValue {
        KeyValue {
            key: format!("k{i:06}").into_bytes(),
            create_revision: 2,
            mod_revision: 2 + i as i64,
            version: 1,
            value: vec![b'a' + (i % 26) as u8; value_bytes],
            lease: 0,
        }
    }

    /// Entries across many chunks (and ones larger than a chunk) decode to what was
    /// pushed; a truncate at any entry keeps exactly the entries before it, the bound
    /// keeps bytes, and what passes it is counted, not kept.
    #[test]
    fn raw_kvs_in_chunks_keep_every_entry_whole() {
        let kvs: Vec<KeyValue> = (0..3000)
            .map(|i| {
                kv(
                    i,
                    if i % 700 == 5 {
                        1_500_000
                    } else {
                        300 + i % 900
                    },
                )
            })
            .collect();
        let wire = |kv: &KeyValue| {
            let mut b = Vec::new();
            kv.encode(&mut b);
            b
        };
        let mut raw = RawKvs::default();
        for kv in &kvs {
            raw.push(&wire(kv), usize::MAX);
        }
        assert!(raw.chunks.len() > 4, "{} chunks", raw.chunks.len());
        assert_eq!(raw.decode().unwrap(), kvs);
        let bytes: usize = raw.chunks.iter().map(Vec::len).sum();
        assert_eq!(bytes, raw.kept_bytes());
        for n in [0, 1, 5, 6, 1000, 1755, 2999, 3000, 5000] {
            let mut t = raw.clone();
            t.truncate(n);
            assert_eq!(t.decode().unwrap(), kvs[..n.min(3000)].to_vec(), "{n}");
            let bytes: usize = t.chunks.iter().map(Vec::len).sum();
            assert_eq!(bytes, t.kept_bytes(), "{n}");
            assert!(t.chunks.iter().all(|c| !c.is_empty()), "{n}");
        }
        // A bound: kept up to it, the rest counted with its size.
        let max = 2_000_000;
        let mut bounded = RawKvs::default();
        for kv in &kvs {
            bounded.push(&wire(kv), max);
        }
        assert!(bounded.kept_bytes() <= max && bounded.over_entries > 0);
        assert_eq!(bounded.len(), 3000);
        assert_eq!(bounded.total_bytes(), raw.total_bytes());
        let kept = bounded.ends.len();
        assert_eq!(bounded.decode().unwrap(), kvs[..kept].to_vec());
        bounded.truncate(kept);
        assert_eq!((bounded.over_entries, bounded.over_bytes), (0, 0));
    }
}
