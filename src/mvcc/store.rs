//! `Store`: etcd 3.4's MVCC semantics over a [`Backend`] (the Db's Revision tree) and the
//! in-memory [`KeyIndex`].
//!
//! Every write (a Put, a DeleteRange, a Txn with writes) runs as one write transaction:
//! it starts at `begin = current_revision`, its changes get revisions `(begin + 1, 0)`,
//! `(begin + 1, 1)`, …, and if it changed anything `current_revision` becomes
//! `begin + 1` when it ends. Reads inside it see its own changes (etcd's storeTxnWrite).
//! A fresh store is at revision 1 with nothing compacted (compact revision -1), like etcd,
//! so the first write gets revision 2.

use super::backend::Backend;
use super::db::{AppMeta, Db, DbOptions};
use super::error::{Error, Result};
use super::key_index::{KeyIndex, KeyRange};
use super::kv::{self, KeyValue, KeyValueRef, RecordKind};
use super::lease::{self, Leases};
use super::read::ReadView;
use super::request::*;
use super::revision::Revision;
use super::validate::{self, MAX_TXN_OPS_DEFAULT};
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub db: DbOptions,
    /// etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            db: DbOptions::default(),
            max_txn_ops: MAX_TXN_OPS_DEFAULT,
        }
    }
}

/// The revision etcd's store starts at (its first write gets revision 2).
const REVISION_INITIAL: i64 = 1;
/// The compact revision of a store that was never compacted.
const COMPACT_REVISION_NONE: i64 = -1;

/// The raft core's key index, shared (on the raft core's thread) with the key-range
/// shard of that same core, which serves its reads from it instead of keeping a replica
/// of its own: one copy of those keys fewer in memory, and none to rebuild at boot. Only
/// the [`Store`] changes it.
///
/// The shard reads it at its round's revision, older than what the store has applied:
/// puts and tombstones above that revision do not change such a read, but a compaction's
/// sweep would (it drops history the round may still read). So while a shard reads the
/// index, the sweep of a compaction waits until the shard has taken its round
/// ([`SharedIndex::shard_compacted`]).
pub struct SharedIndex {
    index: RefCell<KeyIndex>,
    /// The compact revision of the round the reading shard has taken (`i64::MAX`: no
    /// shard reads this index).
    shard_compact: Cell<i64>,
}

impl SharedIndex {
    /// The index as the store has applied it so far (newer than a shard's round: read it
    /// at a revision no newer than the round's).
    pub fn borrow(&self) -> Ref<'_, KeyIndex> {
        self.index.borrow()
    }

    /// A shard reading the index has taken a round with this compact revision.
    pub fn shard_compacted(&self, compact_revision: i64) {
        self.shard_compact.set(compact_revision);
    }
}

pub struct Store<B: Backend = Db> {
    backend: B,
    index: Rc<SharedIndex>,
    current_revision: i64,
    compact_revision: i64,
    /// The sweep of the Revision tree that `compact_revision` owes (`AppMeta`'s
    /// `compact_sweep`: 0 none; n the first main revision not yet swept).
    compact_sweep: i64,
    /// A sweep step changed the tree since the last commit.
    sweep_uncommitted: bool,
    consistent_index: u64,
    consistent_term: u64,
    max_txn_ops: usize,
    /// Reused buffer for encoding records on the write path.
    record_buf: Vec<u8>,
    /// Every change applied since the last `take_changes`, when capturing (the raft core
    /// ships them to the shard cores: index replicas and watch events).
    changes: Option<Vec<Change>>,
    /// Leases and their attached keys (the replicated half; expiry is the leader's).
    leases: Leases,
}

/// One applied change, in revision order: what shard index replicas and watchers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `kv` as stored at `rev`; `prev` is the record of the key's previous live value.
    Put {
        rev: Revision,
        kv: KeyValue,
        prev: Option<Revision>,
    },
    /// `key` deleted at `rev`; `prev` is the record of the value it had.
    Delete {
        rev: Revision,
        key: Vec<u8>,
        prev: Option<Revision>,
    },
    /// History at or below `revision` was compacted.
    Compact { revision: i64 },
}

impl Change {
    /// The key a Put or Delete changed.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Change::Put { kv, .. } => Some(&kv.key),
            Change::Delete { key, .. } => Some(key),
            Change::Compact { .. } => None,
        }
    }
}

/// One write transaction in progress.
struct WriteTxn {
    begin: i64,
    /// Changes so far; also the `sub` of the next one.
    changes: i64,
}

impl WriteTxn {
    /// The revision reads inside the txn see: its own changes once it has any.
    fn read_revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn next_revision(&self) -> Revision {
        Revision::new(self.begin + 1, self.changes)
    }
}

/// Which branch each txn (outer, then nested in op order) takes: etcd's txnPath as a tree.
struct TxnPath {
    succeeded: bool,
    children: Vec<TxnPath>,
}

impl Store<Db> {
    /// Opens (or creates) the db file and rebuilds the key index from its Revision tree.
    pub async fn open(path: &Path, options: StoreOptions) -> Result<Store<Db>> {
        let db = Db::open(path, options.db.clone()).await?;
        Store::with_backend(db, options)
    }
}

impl<B: Backend> Store<B> {
    /// A store over `backend`, its key index rebuilt from the Revision tree.
    pub fn with_backend(backend: B, options: StoreOptions) -> Result<Store<B>> {
        Store::with_backend_split(backend, options, &[]).map(|(store, _)| store)
    }

    /// [`Store::with_backend`], also counting the live keys of each key range `splits`
    /// make (shard *i*: `[splits[i-1], splits[i])`) as the rebuild goes.
    pub fn with_backend_split(
        backend: B,
        options: StoreOptions,
        splits: &[Vec<u8>],
    ) -> Result<(Store<B>, Vec<usize>)> {
        let meta = backend.app_meta();
        let (index, last_main, key_leases, live) = rebuild_index(&backend, meta.key_count, splits)?;
        let fresh = meta.current_revision == 0 && last_main.is_none();
        let (current_revision, compact_revision) = if fresh {
            (REVISION_INITIAL, COMPACT_REVISION_NONE)
        } else {
            (meta.current_revision, meta.compact_revision)
        };
        let compact_sweep = if fresh { 0 } else { meta.compact_sweep };
        let revisions_valid = current_revision >= REVISION_INITIAL
            && compact_revision >= COMPACT_REVISION_NONE
            && compact_revision <= current_revision
            && (compact_sweep == 0 || (1..=compact_revision + 1).contains(&compact_sweep));
        if !revisions_valid {
            return Err(Error::Corrupt {
                what: format!(
                    "stored revisions: current {current_revision}, compact {compact_revision}, sweep {compact_sweep}"
                ),
            });
        }
        if let Some(last) = last_main {
            if last > current_revision {
                return Err(Error::Corrupt {
                    what: format!("record at revision {last} > stored revision {current_revision}"),
                });
            }
        }
        let mut leases = Leases::default();
        let mut bad_lease = None;
        backend.lease_scan(&mut |k, v| match lease::decode_record(k, v) {
            Some((id, ttl, remaining)) => leases.insert(id, ttl, remaining),
            None => bad_lease = Some(k.to_vec()),
        })?;
        if let Some(k) = bad_lease {
            return Err(Error::Corrupt {
                what: format!("lease record {k:02x?}"),
            });
        }
        for (key, id) in key_leases {
            leases.attach(&key, id);
        }
        let store = Store {
            leases,
            backend,
            index: Rc::new(SharedIndex {
                index: RefCell::new(index),
                shard_compact: Cell::new(i64::MAX),
            }),
            current_revision,
            compact_revision,
            compact_sweep,
            sweep_uncommitted: false,
            consistent_index: meta.consistent_index,
            consistent_term: meta.consistent_term,
            max_txn_ops: options.max_txn_ops,
            record_buf: Vec::new(),
            changes: None,
        };
        store.invariants();
        Ok((store, live))
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, for the other trees (members, raft conf state) the raft core writes in
    /// the same Db transaction as the revisions of the entry it applies.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn into_backend(mut self) -> B {
        self.save_meta();
        self.backend
    }

    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The last compaction revision, 0 if never compacted. (Internally a store that was
    /// never compacted is at -1, as etcd's is, which only shows in etcd's corner cases:
    /// `compact(0)` is accepted once, and `hash_kv` reports -1.)
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision.max(0)
    }

    pub fn index(&self) -> Ref<'_, KeyIndex> {
        self.index.borrow()
    }

    /// The index itself, for the shard of the raft core's own core (same thread).
    pub fn shared_index(&self) -> Rc<SharedIndex> {
        self.index.clone()
    }

    /// The index, to change it (never held across an await: the shard on this core
    /// borrows it between the raft core's steps).
    fn index_mut(&self) -> RefMut<'_, KeyIndex> {
        self.index.index.borrow_mut()
    }

    /// Starts (or stops) recording every applied change for [`Store::take_changes`].
    pub fn capture_changes(&mut self, on: bool) {
        self.changes = on.then(Vec::new);
    }

    /// The changes applied since the last call (empty when not capturing).
    pub fn take_changes(&mut self) -> Vec<Change> {
        match &mut self.changes {
            Some(c) => std::mem::take(c),
            None => Vec::new(),
        }
    }

    // ---- reads ----------------------------------------------------------------------

    /// Reads over this store's index and working state.
    pub fn with_view<T>(&self, f: impl FnOnce(&ReadView<'_, B>) -> T) -> T {
        let index = self.index.borrow();
        f(&ReadView::new(&index, &self.backend, self.compact_revision))
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        validate::check_range_request(req)?;
        self.with_view(|v| v.range(req, self.current_revision))
    }

    // ---- writes ---------------------------------------------------------------------

    fn begin(&self) -> WriteTxn {
        WriteTxn {
            begin: self.current_revision,
            changes: 0,
        }
    }

    fn end(&mut self, txn: WriteTxn) {
        if txn.changes > 0 {
            self.current_revision = txn.begin + 1;
        }
        #[cfg(debug_assertions)]
        self.invariants();
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        validate::check_put_request(req)?;
        let mut txn = self.begin();
        let out = self.put_in(&mut txn, req);
        self.end(txn);
        out
    }

    fn put_in(&mut self, txn: &mut WriteTxn, req: &PutRequest) -> Result<PutResponse> {
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(Error::LeaseNotFound);
        }
        let wants_prev = req.ignore_value || req.ignore_lease || req.prev_kv;
        let prev = if wants_prev {
            self.with_view(|v| v.load_key(&req.key, txn.read_revision()))?
        } else {
            None
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.as_slice(),
            _ => req.value.as_slice(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let rev = txn.next_revision();
        let prev_at = self.changes.as_ref().map(|_| txn.read_revision());
        // The index goes first (one lookup gives create_revision, version and the
        // previous record's revision). If the insert below fails the Db is poisoned and
        // the store must be reopened, which rebuilds the index from the tree.
        let (create_revision, version, prev_rev) =
            self.index_mut().put_after(&req.key, rev, prev_at);
        let record = KeyValueRef {
            key: &req.key,
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.record_buf.clear();
        kv::encode_put_record(&record, &mut self.record_buf);
        txn.changes += 1;
        self.backend.insert(&rev.encode(), &self.record_buf)?;
        self.leases.attach(&req.key, lease);
        if let Some(changes) = &mut self.changes {
            changes.push(Change::Put {
                rev,
                kv: record.to_key_value(),
                prev: prev_rev,
            });
        }
        let prev_kv = if req.prev_kv { prev } else { None };
        Ok(PutResponse {
            header: ResponseHeader { revision: rev.main },
            prev_kv,
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        validate::check_delete_request(req)?;
        let mut txn = self.begin();
        let out = self.delete_in(&mut txn, req);
        self.end(txn);
        out
    }

    fn delete_in(
        &mut self,
        txn: &mut WriteTxn,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let read_rev = txn.read_revision();
        let prev_kvs = if req.prev_kv {
            self.with_view(|v| v.load_range(range, read_rev))?
        } else {
            Vec::new()
        };
        let mut keys = Vec::new();
        let mut prevs = Vec::new();
        self.index().range(range, read_rev, |k, at| {
            keys.push(k.to_vec());
            prevs.push(at.modified);
            true
        });
        for (key, prev) in keys.iter().zip(prevs) {
            self.tombstone_in(txn, key, prev)?;
        }
        let revision = if !keys.is_empty() || txn.changes > 0 {
            txn.begin + 1
        } else {
            txn.begin
        };
        Ok(DeleteRangeResponse {
            header: ResponseHeader { revision },
            deleted: keys.len() as i64,
            prev_kvs,
        })
    }

    /// Deletes live `key` (whose live record is at `prev`) as the txn's next change.
    fn tombstone_in(&mut self, txn: &mut WriteTxn, key: &[u8], prev: Revision) -> Result<()> {
        let rev = txn.next_revision();
        self.record_buf.clear();
        kv::encode_tombstone_record(key, rev.main, &mut self.record_buf);
        self.backend.insert(&rev.encode(), &self.record_buf)?;
        let deleted = self.index_mut().tombstone(key, rev);
        assert!(deleted, "key listed as live could not be deleted");
        self.leases.detach(key);
        txn.changes += 1;
        if let Some(changes) = &mut self.changes {
            changes.push(Change::Delete {
                rev,
                key: key.to_vec(),
                prev: Some(prev),
            });
        }
        Ok(())
    }

    // ---- leases -----------------------------------------------------------------------

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// etcd's lessor.Grant: a new lease with no keys; takes no revision.
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if self.leases.contains(req.id) {
            return Err(Error::LeaseExists);
        }
        self.backend
            .lease_insert(&lease::lease_key(req.id), &lease::encode_record(req.ttl, 0))?;
        self.leases.insert(req.id, req.ttl, 0);
        Ok(LeaseGrantResponse {
            header: ResponseHeader {
                revision: self.current_revision,
            },
            id: req.id,
            ttl: req.ttl,
        })
    }

    /// etcd's lessor.Revoke: every attached key is deleted in one revision (in key order,
    /// as etcd sorts them), then the lease is gone.
    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        let Some(gone) = self.leases.remove(req.id) else {
            return Err(Error::LeaseNotFound);
        };
        let mut txn = self.begin();
        let read_rev = txn.read_revision();
        let mut out = Ok(());
        for key in &gone.keys {
            let Some(prev) = self.index().get(key, read_rev).map(|at| at.modified) else {
                continue;
            };
            out = self.tombstone_in(&mut txn, key, prev);
            if out.is_err() {
                break;
            }
        }
        let revision = txn.read_revision();
        self.end(txn);
        out?;
        self.backend.lease_remove(&lease::lease_key(req.id))?;
        Ok(LeaseRevokeResponse {
            header: ResponseHeader { revision },
        })
    }

    /// etcd's lease checkpoints: records each lease's remaining TTL so a new leader
    /// resumes from it instead of the full TTL. Unknown leases are skipped.
    pub fn lease_checkpoint(&mut self, req: &LeaseCheckpointRequest) -> Result<ResponseHeader> {
        for &(id, remaining) in &req.checkpoints {
            let Some(l) = self.leases.get(id) else {
                continue;
            };
            let ttl = l.ttl;
            self.backend
                .lease_insert(&lease::lease_key(id), &lease::encode_record(ttl, remaining))?;
            self.leases.set_remaining(id, remaining);
        }
        Ok(ResponseHeader {
            revision: self.current_revision,
        })
    }

    // ---- txn ------------------------------------------------------------------------

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        validate::check_txn_request(req, self.max_txn_ops as i64)?;
        validate::check_intervals(&req.success)?;
        validate::check_intervals(&req.failure)?;
        // Every compare, nested ones included, sees the state before the txn.
        let path = self.compare_to_path(req)?;
        self.check_puts(req, &path, &mut Vec::new())?;
        self.check_ranges(req, &path)?;
        let mut txn = self.begin();
        let out = self.apply_txn(&mut txn, req, &path);
        let revision = txn.read_revision();
        self.end(txn);
        let mut resp = out?;
        resp.header.revision = revision;
        Ok(resp)
    }

    fn compare_to_path(&self, req: &TxnRequest) -> Result<TxnPath> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.apply_compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut children = Vec::new();
        for op in ops {
            if let RequestOp::RequestTxn(t) = op {
                children.push(self.compare_to_path(t)?);
            }
        }
        Ok(TxnPath {
            succeeded,
            children,
        })
    }

    /// etcd's applyCompare: every key in the range must satisfy it; an empty range
    /// compares the zero KeyValue, except that a Value compare on no key fails.
    fn apply_compare(&self, c: &Compare) -> Result<bool> {
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs = self.with_view(|v| v.load_range(range, self.current_revision))?;
        if kvs.is_empty() {
            return Ok(c.target != CompareTarget::Value && compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    fn branch<'r>(req: &'r TxnRequest, path: &TxnPath) -> &'r [RequestOp] {
        if path.succeeded {
            &req.success
        } else {
            &req.failure
        }
    }

    /// ignore_value / ignore_lease need the key to exist before the txn. A put after a
    /// delete of the same key in one txn is a DuplicateKey, except behind a "from key"
    /// delete (`range_end = "\0"`), which etcd's interval check misses and which then
    /// makes etcd panic mid-txn; we refuse it here, before any write, with KeyNotFound.
    fn check_puts<'r>(
        &self,
        req: &'r TxnRequest,
        path: &TxnPath,
        deleted: &mut Vec<KeyRange<'r>>,
    ) -> Result<()> {
        let mut children = path.children.iter();
        for op in Self::branch(req, path) {
            match op {
                RequestOp::RequestPut(p) => {
                    if p.ignore_value || p.ignore_lease {
                        let gone = deleted.iter().any(|d| d.contains(&p.key));
                        if gone || self.index().get(&p.key, self.current_revision).is_none() {
                            return Err(Error::KeyNotFound);
                        }
                    }
                    if p.lease != 0 && !self.leases.contains(p.lease) {
                        return Err(Error::LeaseNotFound);
                    }
                }
                RequestOp::RequestDeleteRange(d) => {
                    deleted.push(KeyRange::new(&d.key, &d.range_end));
                }
                RequestOp::RequestTxn(t) => {
                    let child = children.next().expect("path for nested txn");
                    self.check_puts(t, child, deleted)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's checkRequestRange: a txn's Range revision must be 0 or in
    /// [compact revision, current revision] (so a negative one is `Compacted`).
    fn check_ranges(&self, req: &TxnRequest, path: &TxnPath) -> Result<()> {
        let mut children = path.children.iter();
        for op in Self::branch(req, path) {
            match op {
                RequestOp::RequestRange(r) if r.revision != 0 => {
                    if r.revision > self.current_revision {
                        return Err(Error::FutureRev);
                    }
                    if r.revision < self.compact_revision {
                        return Err(Error::Compacted);
                    }
                }
                RequestOp::RequestTxn(t) => {
                    self.check_ranges(t, children.next().expect("path for nested txn"))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        txn: &mut WriteTxn,
        req: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse> {
        let ops = Self::branch(req, path);
        let mut children = path.children.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::RequestRange(r) => {
                    ResponseOp::ResponseRange(self.with_view(|v| v.range(r, txn.read_revision()))?)
                }
                RequestOp::RequestPut(p) => ResponseOp::ResponsePut(self.put_in(txn, p)?),
                RequestOp::RequestDeleteRange(d) => {
                    ResponseOp::ResponseDeleteRange(self.delete_in(txn, d)?)
                }
                RequestOp::RequestTxn(t) => {
                    let child = children.next().expect("path for nested txn");
                    ResponseOp::ResponseTxn(self.apply_txn(txn, t, child)?)
                }
                RequestOp::Empty => unreachable!("validation rejects empty ops"),
            });
        }
        Ok(TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.succeeded,
            responses,
        })
    }

    // ---- compaction, hash -------------------------------------------------------------

    /// Compacts history at `rev`: reads below it are refused from now on, and the sweep
    /// of the Revision tree starts over (`compact_step`, a slice at a time, between the
    /// raft core's rounds): it drops each key's history up to `rev` from the key index and
    /// every record at or below `rev` but each key's latest put there. Nothing else
    /// depends on the sweep's progress: reads at or above `rev` answer the same before and
    /// after it, and `hash_kv` skips what it would drop. Like etcd, which answers once the
    /// compact revision is set and deletes in batches in the background; a whole
    /// compaction here used to hold the raft core for ~0.3 s per 500k keys.
    pub fn compact(&mut self, rev: i64) -> Result<CompactionResponse> {
        if rev <= self.compact_revision {
            return Err(Error::Compacted);
        }
        if rev > self.current_revision {
            return Err(Error::FutureRev);
        }
        self.compact_revision = rev;
        // From the start: records kept for an earlier target may be dropped for this one.
        self.compact_sweep = 1;
        if let Some(changes) = &mut self.changes {
            changes.push(Change::Compact { revision: rev });
        }
        #[cfg(debug_assertions)]
        self.invariants();
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.current_revision,
            },
        })
    }

    /// Whether a compaction's sweep is still to be done.
    pub fn compaction_pending(&self) -> bool {
        self.compact_sweep != 0
    }

    /// Whether the pending sweep must wait for the shard reading the index to take the
    /// round of its compaction ([`SharedIndex`]).
    pub fn sweep_waits(&self) -> bool {
        self.compact_sweep != 0 && self.index.shard_compact.get() < self.compact_revision
    }

    /// Whether a sweep step changed the tree since the last commit.
    pub fn sweep_uncommitted(&self) -> bool {
        self.sweep_uncommitted
    }

    /// One slice of the pending compaction's sweep: at least `max_records` records of
    /// the Revision tree (whole main revisions) from where the last one stopped, each
    /// key met compacted in the index and each record its history no longer holds
    /// deleted. Returns how many were deleted; `compaction_pending` says whether more
    /// is left.
    pub fn compact_step(&mut self, max_records: usize) -> Result<usize> {
        if self.compact_sweep == 0 || self.sweep_waits() {
            return Ok(0);
        }
        let at = self.compact_revision;
        let start = Revision::new(self.compact_sweep, 0).encode();
        let end = Revision::new(at + 1, 0).encode();
        let mut doomed: Vec<Revision> = Vec::new();
        let mut next: Option<i64> = None;
        let mut seen = 0usize;
        let mut last_main = None;
        let mut failure = None;
        let mut index = self.index.index.borrow_mut();
        self.backend.scan(&start, &end, &mut |k, v| {
            let Some(rev) = Revision::decode(k) else {
                failure = Some(Error::Corrupt {
                    what: format!("revision tree key {k:02x?}"),
                });
                return false;
            };
            if seen >= max_records && last_main != Some(rev.main) {
                next = Some(rev.main);
                return false;
            }
            let key = match kv::decode_record_ref(v) {
                Ok((_, record)) => record.key,
                Err(e) => {
                    failure = Some(e.into());
                    return false;
                }
            };
            if !index.compact_key_keeps(key, at, rev) {
                doomed.push(rev);
            }
            seen += 1;
            last_main = Some(rev.main);
            true
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        // One by one: `retain` rebuilds the tree's branch levels whole, a cost per call of
        // the whole tree, where a slice touches a few of its leaves.
        for rev in &doomed {
            self.backend.remove(&rev.encode())?;
        }
        self.sweep_uncommitted = true;
        self.compact_sweep = next.unwrap_or(0);
        Ok(doomed.len())
    }

    /// Runs the pending sweep to its end (tests, and tools that want a compacted file).
    pub fn finish_compaction(&mut self) -> Result<()> {
        while self.compaction_pending() {
            if self.sweep_waits() {
                return Err(Error::Corrupt {
                    what: "a sweep waits for a shard that is not taking rounds".into(),
                });
            }
            self.compact_step(usize::MAX)?;
        }
        Ok(())
    }

    /// etcd's HashByRev: a CRC-32 (IEEE) over the Revision-tree entries (16-byte key, then
    /// record) up to `rev` (0 = current), skipping the ones at or below the compact
    /// revision that a compaction at `rev` would drop. Members at the same revision must
    /// agree, wherever their sweeps stand. Returns the hash and the compact revision. The
    /// value differs from etcd's (its records and checksum differ); only Keel members
    /// compare it. Unlike etcd, the skip applies even when no key keeps a revision at or
    /// below `rev` (etcd then hashes everything, so a member mid-sweep would disagree).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64)> {
        if rev > 0 && rev <= self.compact_revision {
            return Err(Error::Compacted);
        }
        if rev > 0 && rev > self.current_revision {
            return Err(Error::FutureRev);
        }
        let rev = if rev == 0 { self.current_revision } else { rev };
        let keep = self.index().keep(rev);
        let lower = self.compact_revision + 1;
        let mut hasher = crc32fast::Hasher::new();
        self.backend.scan(
            &[],
            &Revision::new((rev + 1).max(0), 0).encode(),
            &mut |k, v| {
                if let Some(r) = Revision::decode(k) {
                    if r.main < lower && keep.binary_search(&r).is_err() {
                        return true;
                    }
                }
                hasher.update(k);
                hasher.update(v);
                true
            },
        )?;
        Ok((hasher.finalize(), self.compact_revision))
    }

    // ---- raft apply, durability -------------------------------------------------------

    pub fn set_consistent_index(&mut self, index: u64, term: u64) {
        self.consistent_index = index;
        self.consistent_term = term;
    }

    /// Index of the last raft entry applied (WAL replay skips entries at or below it).
    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }

    pub fn consistent_term(&self) -> u64 {
        self.consistent_term
    }

    /// Applies the raft entry at `index` unless it is already in the store (index <=
    /// consistent index): then `None`, which makes WAL replay idempotent. An entry whose
    /// op fails (e.g. `Compacted`) still counts as applied.
    pub fn apply_at(&mut self, index: u64, term: u64, op: &Op) -> Option<Result<OpResponse>> {
        if index <= self.consistent_index {
            return None;
        }
        let out = self.apply(op);
        self.set_consistent_index(index, term);
        Some(out)
    }

    pub fn apply(&mut self, op: &Op) -> Result<OpResponse> {
        Ok(match op {
            Op::Range(r) => OpResponse::Range(self.range(r)?),
            Op::Put(r) => OpResponse::Put(self.put(r)?),
            Op::DeleteRange(r) => OpResponse::DeleteRange(self.delete_range(r)?),
            Op::Txn(r) => OpResponse::Txn(self.txn(r)?),
            Op::Compaction(r) => OpResponse::Compaction(self.compact(r.revision)?),
            Op::LeaseGrant(r) => OpResponse::LeaseGrant(self.lease_grant(r)?),
            Op::LeaseRevoke(r) => OpResponse::LeaseRevoke(self.lease_revoke(r)?),
            Op::LeaseCheckpoint(r) => OpResponse::LeaseCheckpoint(self.lease_checkpoint(r)?),
        })
    }

    fn save_meta(&mut self) {
        let key_count = self.index().key_count() as u64;
        self.backend.set_app_meta(AppMeta {
            consistent_index: self.consistent_index,
            consistent_term: self.consistent_term,
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            compact_sweep: self.compact_sweep,
            key_count,
        });
    }

    /// Makes the state so far visible to new read snapshots (other cores).
    pub fn publish(&mut self) {
        self.save_meta();
        self.backend.publish();
    }

    /// Makes the state so far durable, with the revisions and the consistent index.
    pub async fn commit(&mut self) -> Result<()> {
        self.save_meta();
        self.backend.commit().await?;
        self.sweep_uncommitted = false;
        Ok(())
    }

    /// The checks a boot runs on a store just opened: every page of the backend, and the
    /// rules of compaction. Not [`Store::check`]'s comparison of the key index and the
    /// leases with ones rebuilt from the tree: `open` has just built them from that same
    /// tree, so a second build could only find a bug in the build, at the cost of a
    /// second pass over every record on every restart.
    pub fn check_open(&self) -> Result<()> {
        self.backend.check()?;
        self.invariants();
        self.check_compacted()
    }

    /// Checks the backend, then that the key index equals one rebuilt from the tree (both
    /// compacted at the compact revision while a sweep is pending: the tree then still
    /// holds records the sweep will drop, and the index history of keys it has not met).
    pub fn check(&self) -> Result<()> {
        self.backend.check()?;
        self.invariants();
        self.index().invariants();
        let (rebuilt, last, key_leases, _) = rebuild_index(&self.backend, 0, &[])?;
        self.leases.invariants();
        for (key, id) in &key_leases {
            if self.leases.contains(*id) && self.leases.lease_of(key) != Some(*id) {
                return Err(Error::Corrupt {
                    what: format!("key {key:02x?} is not attached to its lease {id:x}"),
                });
            }
        }
        let current = self.index();
        let (index, rebuilt) = if self.compaction_pending() {
            let (mut a, mut b) = (current.clone(), rebuilt);
            a.compact(self.compact_revision);
            b.compact(self.compact_revision);
            (std::borrow::Cow::Owned(a), b)
        } else {
            (std::borrow::Cow::Borrowed(&*current), rebuilt)
        };
        if let Some(key) = index.first_difference(&rebuilt) {
            return Err(Error::Corrupt {
                what: format!("key index differs from the revision tree at key {key:02x?}"),
            });
        }
        if last.is_some_and(|l| l > self.current_revision) {
            return Err(Error::Corrupt {
                what: "record above the current revision".into(),
            });
        }
        self.check_compacted()
    }

    /// At or below the compact revision (below the sweep's place while one is pending)
    /// only each key's latest put may remain.
    fn check_compacted(&self) -> Result<()> {
        if self.compact_revision < 0 {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        let mut failure = None;
        let end = match self.compact_sweep {
            0 => Revision::new(self.compact_revision + 1, 0),
            swept_below => Revision::new(swept_below, 0),
        }
        .encode();
        self.backend.scan(&[], &end, &mut |k, v| {
            let ok = match kv::decode_record(v) {
                Ok((RecordKind::Put, kv)) => seen.insert(kv.key),
                _ => false,
            };
            if !ok {
                failure = Some(Error::Corrupt {
                    what: format!("record {:?} survived compaction", Revision::decode(k)),
                });
            }
            ok
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Cheap enough to run after every write in debug builds; the O(keys) checks are in
    /// [`Store::check`].
    pub fn invariants(&self) {
        assert!(self.current_revision >= REVISION_INITIAL);
        assert!(self.compact_revision >= COMPACT_REVISION_NONE);
        assert!(self.compact_revision <= self.current_revision);
        assert!(
            self.compact_sweep == 0
                || (1..=self.compact_revision + 1).contains(&self.compact_sweep)
        );
    }
}

/// What a scan of the Revision tree rebuilds: the key index, the last main revision,
/// and the lease of every live key that has one.
type Rebuilt = (KeyIndex, Option<i64>, HashMap<Vec<u8>, i64>, Vec<usize>);

/// Rebuilds the key index from the Revision tree (see [`Rebuilt`]).
/// `keys_hint`: the key count the meta recorded, to size the index once (capped, so a
/// damaged hint cannot ask for more than the records could hold).
/// `splits`: key ranges to count live keys in (see [`Store::with_backend_split`]).
fn rebuild_index<B: Backend>(backend: &B, keys_hint: u64, splits: &[Vec<u8>]) -> Result<Rebuilt> {
    let mut live = vec![0isize; splits.len() + 1];
    let records = backend.revision_count();
    let mut index = KeyIndex::with_capacity(keys_hint.min(records) as usize);
    let mut key_leases: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut last: Option<Revision> = None;
    let mut failure = None;
    backend.scan(&[], &[], &mut |k, v| {
        let mut step = || -> Result<Revision> {
            let rev = Revision::decode(k).ok_or_else(|| Error::Corrupt {
                what: format!("revision tree key {k:02x?}"),
            })?;
            let (kind, kv) = kv::decode_record_ref(v)?;
            if kv.mod_revision != rev.main {
                return Err(Error::Corrupt {
                    what: format!("record {rev:?} has mod_revision {}", kv.mod_revision),
                });
            }
            let tombstone = kind == RecordKind::Tombstone;
            let before = index.live_key_count();
            index.restore(kv.key, rev, tombstone, kv.create_revision, kv.version);
            let range = splits.partition_point(|s| s.as_slice() <= kv.key);
            live[range] += index.live_key_count() as isize - before as isize;
            if !tombstone && kv.lease != 0 {
                key_leases.insert(kv.key.to_vec(), kv.lease);
            } else if !key_leases.is_empty() {
                key_leases.remove(kv.key);
            }
            Ok(rev)
        };
        match step() {
            Ok(rev) => {
                last = Some(rev);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    index.finish_restore();
    match failure {
        Some(e) => Err(e),
        None => {
            let live = live.into_iter().map(|n| n.max(0) as usize).collect();
            Ok((index, last.map(|r| r.main), key_leases, live))
        }
    }
}

/// etcd's compareKV.
pub fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match (c.target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v),
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (CompareTarget::Create, u) => kv.create_revision.cmp(&match u {
            Some(TargetUnion::CreateRevision(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Mod, u) => kv.mod_revision.cmp(&match u {
            Some(TargetUnion::ModRevision(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Version, u) => kv.version.cmp(&match u {
            Some(TargetUnion::Version(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Lease, u) => kv.lease.cmp(&match u {
            Some(TargetUnion::Lease(r)) => *r,
            _ => 0,
        }),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
