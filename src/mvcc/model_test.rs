//! The MVCC store against a brute-force reference model of etcd 3.4's semantics.
//!
//! The model keeps the full key → KeyValue map of every revision (`states[rev]`) and the
//! set of records physically present; every operation is computed from those by the
//! plainest possible code. Seeded random sequences of put / delete / range / txn (nested,
//! with compares) / compact / hash / commit+reopen / crash-without-commit / check run
//! against both, comparing every response and error. A failure prints its seed and step.
//!
//! Shared with the store on purpose: the record codec (`kv`, its own tests) so the model
//! can hash the same bytes, and the pure request checks (`validate`, its own table
//! tests). Everything about revisions, versions, generations, ranges, compares,
//! compaction and hashing is computed independently here.

use super::backend::{Backend, MemBackend};
use super::db::Db;
use super::error::{Error, Result};
use super::kv::{self, KeyValue};
use super::read::ReadView;
use super::request::*;
use super::revision::Revision;
use super::store::{Store, StoreOptions};
use super::validate;
use crate::test_rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const MAX_TXN_OPS: usize = 6;
const KEYS: [&[u8]; 8] = [b"a", b"aa", b"ab", b"b", b"ba", b"c", b"d", b"\x00x"];
const VALUES: [&[u8]; 4] = [b"", b"x", b"y", b"zz"];

type State = BTreeMap<Vec<u8>, KeyValue>;

#[derive(Clone)]
struct Record {
    key: Vec<u8>,
    tombstone: bool,
    bytes: Vec<u8>,
}

#[derive(Clone)]
struct Model {
    /// `states[r]` is the whole store at revision r; states[0] and states[1] are empty.
    states: Vec<State>,
    compact: i64,
    /// Records physically present, as the Revision tree should hold them.
    records: BTreeMap<Revision, Record>,
    /// Granted leases: id → TTL.
    leases: BTreeMap<i64, i64>,
}

/// A write transaction over the model.
struct Tx {
    begin: i64,
    state: State,
    subs: i64,
    records: Vec<(Revision, Record)>,
}

impl Tx {
    fn read_rev(&self) -> i64 {
        if self.subs > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

struct Path {
    succeeded: bool,
    children: Vec<Path>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == b"\0" {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    fn new() -> Model {
        Model {
            states: vec![State::new(), State::new()],
            compact: -1,
            records: BTreeMap::new(),
            leases: BTreeMap::new(),
        }
    }

    fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn begin(&self) -> Tx {
        let begin = self.current();
        Tx {
            begin,
            state: self.states[begin as usize].clone(),
            subs: 0,
            records: Vec::new(),
        }
    }

    fn end(&mut self, tx: Tx) {
        if tx.subs > 0 {
            self.states.push(tx.state);
            for (rev, rec) in tx.records {
                self.records.insert(rev, rec);
            }
        }
    }

    fn range(&self, tx: &Tx, req: &RangeRequest) -> Result<RangeResponse> {
        let cur = tx.read_rev();
        if req.revision > cur {
            return Err(Error::FutureRev);
        }
        let rev = if req.revision <= 0 { cur } else { req.revision };
        if rev < self.compact {
            return Err(Error::Compacted);
        }
        let view = if rev == cur {
            &tx.state
        } else {
            &self.states[rev as usize]
        };
        let mut kvs: Vec<KeyValue> = view
            .values()
            .filter(|kv| in_range(&kv.key, &req.key, &req.range_end))
            .cloned()
            .collect();
        let count = kvs.len() as i64;
        let header = ResponseHeader { revision: cur };
        if req.count_only {
            return Ok(RangeResponse {
                header,
                kvs: vec![],
                more: false,
                count,
                raw: None,
            });
        }
        let filters = [
            req.min_mod_revision,
            req.max_mod_revision,
            req.min_create_revision,
            req.max_create_revision,
        ];
        let fetch_all = req.sort_order != SortOrder::None || filters.iter().any(|f| *f != 0);
        if !fetch_all && req.limit > 0 {
            kvs.truncate(req.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        let order = match (req.sort_target, req.sort_order) {
            (SortTarget::Key, o) => o,
            (_, SortOrder::None) => SortOrder::Ascend,
            (_, o) => o,
        };
        let sort_key = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match req.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by_key(sort_key),
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(sort_key(kv))),
        }
        let more = req.limit > 0 && kvs.len() as i64 > req.limit;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
            raw: None,
        })
    }

    fn put(&self, tx: &mut Tx, req: &PutRequest) -> Result<PutResponse> {
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(Error::LeaseNotFound);
        }
        let prev = tx.state.get(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let main = tx.begin + 1;
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            value: if req.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                req.value.clone()
            },
            lease: if req.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                req.lease
            },
        };
        let mut bytes = Vec::new();
        kv::encode_put_record(&kv.as_ref(), &mut bytes);
        let rec = Record {
            key: req.key.clone(),
            tombstone: false,
            bytes,
        };
        tx.records.push((Revision::new(main, tx.subs), rec));
        tx.subs += 1;
        tx.state.insert(req.key.clone(), kv);
        Ok(PutResponse {
            header: ResponseHeader { revision: main },
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(&self, tx: &mut Tx, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let doomed: Vec<KeyValue> = tx
            .state
            .values()
            .filter(|kv| in_range(&kv.key, &req.key, &req.range_end))
            .cloned()
            .collect();
        let main = tx.begin + 1;
        for kv in &doomed {
            let mut bytes = Vec::new();
            kv::encode_tombstone_record(&kv.key, main, &mut bytes);
            let rec = Record {
                key: kv.key.clone(),
                tombstone: true,
                bytes,
            };
            tx.records.push((Revision::new(main, tx.subs), rec));
            tx.subs += 1;
            tx.state.remove(&kv.key);
        }
        let revision = if tx.subs > 0 { main } else { tx.begin };
        Ok(DeleteRangeResponse {
            header: ResponseHeader { revision },
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        let state = &self.states[self.current() as usize];
        let kvs: Vec<&KeyValue> = state
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        let zero = KeyValue::default();
        if kvs.is_empty() && c.target == CompareTarget::Value {
            return false;
        }
        let list = if kvs.is_empty() { vec![&zero] } else { kvs };
        list.into_iter().all(|kv| {
            let ord = match c.target {
                CompareTarget::Value => {
                    let want: &[u8] = match &c.target_union {
                        Some(TargetUnion::Value(v)) => v,
                        _ => b"",
                    };
                    kv.value.as_slice().cmp(want)
                }
                t => {
                    let (have, want) = match (t, &c.target_union) {
                        (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.version, *v),
                        (CompareTarget::Version, _) => (kv.version, 0),
                        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                            (kv.create_revision, *v)
                        }
                        (CompareTarget::Create, _) => (kv.create_revision, 0),
                        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => {
                            (kv.mod_revision, *v)
                        }
                        (CompareTarget::Mod, _) => (kv.mod_revision, 0),
                        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (kv.lease, *v),
                        _ => (kv.lease, 0),
                    };
                    have.cmp(&want)
                }
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        })
    }

    fn path(&self, req: &TxnRequest) -> Path {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let children = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::RequestTxn(t) => Some(self.path(t)),
                _ => None,
            })
            .collect();
        Path {
            succeeded,
            children,
        }
    }

    /// Pre-checks along the taken path: first every put (anywhere), then every range.
    /// An ignore_* put needs its key alive before the txn and not deleted by an earlier
    /// op of the txn (only a "from key" delete can do that unnoticed by the duplicate
    /// check; etcd panics there, Keel answers KeyNotFound before writing anything).
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &Path,
        puts: bool,
        deleted: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut children = path.children.iter();
        let current = &self.states[self.current() as usize];
        for op in ops {
            match op {
                RequestOp::RequestPut(p) if puts => {
                    if p.ignore_value || p.ignore_lease {
                        let gone = deleted.iter().any(|(k, e)| in_range(&p.key, k, e));
                        if gone || !current.contains_key(&p.key) {
                            return Err(Error::KeyNotFound);
                        }
                    }
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(Error::LeaseNotFound);
                    }
                }
                RequestOp::RequestDeleteRange(d) => {
                    deleted.push((d.key.clone(), d.range_end.clone()))
                }
                RequestOp::RequestRange(r) if !puts && r.revision != 0 => {
                    if r.revision > self.current() {
                        return Err(Error::FutureRev);
                    }
                    if r.revision < self.compact {
                        return Err(Error::Compacted);
                    }
                }
                RequestOp::RequestTxn(t) => {
                    self.check_path(t, children.next().unwrap(), puts, deleted)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn run_txn(&self, tx: &mut Tx, req: &TxnRequest, path: &Path) -> Result<TxnResponse> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut children = path.children.iter();
        let mut responses = vec![];
        for op in ops {
            responses.push(match op {
                RequestOp::RequestRange(r) => ResponseOp::ResponseRange(self.range(tx, r)?),
                RequestOp::RequestPut(p) => ResponseOp::ResponsePut(self.put(tx, p)?),
                RequestOp::RequestDeleteRange(d) => {
                    ResponseOp::ResponseDeleteRange(self.delete(tx, d)?)
                }
                RequestOp::RequestTxn(t) => {
                    ResponseOp::ResponseTxn(self.run_txn(tx, t, children.next().unwrap())?)
                }
                RequestOp::Empty => unreachable!(),
            });
        }
        Ok(TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.succeeded,
            responses,
        })
    }

    // ---- top-level operations ----

    fn top_range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        validate::check_range_request(req)?;
        self.range(&self.begin(), req)
    }

    fn top_put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        validate::check_put_request(req)?;
        let mut tx = self.begin();
        let out = self.put(&mut tx, req)?;
        self.end(tx);
        Ok(out)
    }

    fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if self.leases.contains_key(&req.id) {
            return Err(Error::LeaseExists);
        }
        self.leases.insert(req.id, req.ttl);
        Ok(LeaseGrantResponse {
            header: ResponseHeader {
                revision: self.current(),
            },
            id: req.id,
            ttl: req.ttl,
        })
    }

    /// Every key whose live value has the lease is deleted, in key order, in one revision.
    fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        if self.leases.remove(&req.id).is_none() {
            return Err(Error::LeaseNotFound);
        }
        let mut tx = self.begin();
        let doomed: Vec<Vec<u8>> = tx
            .state
            .values()
            .filter(|kv| kv.lease == req.id)
            .map(|kv| kv.key.clone())
            .collect();
        for key in doomed {
            self.delete(
                &mut tx,
                &DeleteRangeRequest {
                    key,
                    ..Default::default()
                },
            )?;
        }
        let revision = tx.read_rev();
        self.end(tx);
        Ok(LeaseRevokeResponse {
            header: ResponseHeader { revision },
        })
    }

    fn top_delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        validate::check_delete_request(req)?;
        let mut tx = self.begin();
        let out = self.delete(&mut tx, req)?;
        self.end(tx);
        Ok(out)
    }

    fn top_txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        validate::check_txn_request(req, MAX_TXN_OPS as i64)?;
        validate::check_intervals(&req.success)?;
        validate::check_intervals(&req.failure)?;
        let path = self.path(req);
        self.check_path(req, &path, true, &mut vec![])?;
        self.check_path(req, &path, false, &mut vec![])?;
        let mut tx = self.begin();
        let mut out = self.run_txn(&mut tx, req, &path)?;
        out.header.revision = tx.read_rev();
        self.end(tx);
        Ok(out)
    }

    fn compact(&mut self, rev: i64) -> Result<CompactionResponse> {
        if rev <= self.compact {
            return Err(Error::Compacted);
        }
        if rev > self.current() {
            return Err(Error::FutureRev);
        }
        self.compact = rev;
        // Keep, at or below rev, only each key's latest record, and only if it is a put.
        let mut latest: BTreeMap<Vec<u8>, Revision> = BTreeMap::new();
        for (r, rec) in self.records.range(..Revision::new(rev + 1, 0)) {
            latest.insert(rec.key.clone(), *r);
        }
        self.records
            .retain(|r, rec| r.main > rev || (latest[&rec.key] == *r && !rec.tombstone));
        Ok(CompactionResponse {
            header: ResponseHeader {
                revision: self.current(),
            },
        })
    }

    fn hash(&self, rev: i64) -> Result<(u32, i64)> {
        if rev > 0 && rev <= self.compact {
            return Err(Error::Compacted);
        }
        if rev > 0 && rev > self.current() {
            return Err(Error::FutureRev);
        }
        let rev = if rev == 0 { self.current() } else { rev };
        let upto = self.records.range(..Revision::new(rev + 1, 0));
        let mut latest: BTreeMap<&[u8], (Revision, bool)> = BTreeMap::new();
        for (r, rec) in upto.clone() {
            latest.insert(&rec.key, (*r, rec.tombstone));
        }
        let keep: BTreeSet<Revision> = latest
            .values()
            .filter(|(_, tomb)| !tomb)
            .map(|(r, _)| *r)
            .collect();
        let mut h = crc32fast::Hasher::new();
        for (r, rec) in upto {
            if r.main <= self.compact && !keep.contains(r) {
                continue;
            }
            h.update(&r.encode());
            h.update(&rec.bytes);
        }
        Ok((h.finalize(), self.compact))
    }
}

// ---- random requests ----

fn key(rng: &mut Rng) -> Vec<u8> {
    KEYS[rng.below(KEYS.len() as u64) as usize].to_vec()
}

fn range_end(rng: &mut Rng, key: &[u8]) -> Vec<u8> {
    match rng.below(10) {
        0..=3 => vec![],
        4 => vec![0],
        5..=7 => self::key(rng),
        _ => {
            let mut end = key.to_vec();
            if let Some(b) = end.last_mut() {
                *b += 1;
            }
            end
        }
    }
}

fn revision(rng: &mut Rng, m: &Model) -> i64 {
    match rng.below(10) {
        0..=5 => 0,
        6 => -rng.range_i64(1, 3),
        _ => rng.range_i64(m.compact - 1, m.current() + 1),
    }
}

fn range_req(rng: &mut Rng, m: &Model) -> RangeRequest {
    let mut key = key(rng);
    let mut range_end = range_end(rng, &key);
    if rng.chance(5) {
        key = vec![0];
        range_end = vec![0];
    }
    if rng.chance(2) {
        key.clear();
    }
    let filter = |rng: &mut Rng| {
        if rng.chance(15) {
            rng.range_i64(0, m.current() + 1)
        } else {
            0
        }
    };
    RangeRequest {
        key,
        range_end,
        limit: if rng.chance(40) {
            rng.range_i64(-1, 4)
        } else {
            0
        },
        revision: revision(rng, m),
        sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][rng.below(3) as usize],
        sort_target: [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][rng.below(5) as usize],
        serializable: rng.chance(50),
        keys_only: rng.chance(15),
        count_only: rng.chance(10),
        min_mod_revision: filter(rng),
        max_mod_revision: filter(rng),
        min_create_revision: filter(rng),
        max_create_revision: filter(rng),
        raw_bytes_max: 0,
    }
}

fn put_req(rng: &mut Rng, key: Vec<u8>) -> PutRequest {
    let ignore_value = rng.chance(10);
    let ignore_lease = rng.chance(10);
    PutRequest {
        key,
        value: if ignore_value && !rng.chance(10) {
            vec![]
        } else if rng.chance(3) {
            // Larger than a page: the Db keeps it in overflow pages.
            let len = 3000 + rng.below(20_000) as usize;
            let salt = rng.next() as u8;
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ salt)
                .collect()
        } else {
            VALUES[rng.below(4) as usize].to_vec()
        },
        lease: if (ignore_lease && !rng.chance(10)) || rng.chance(60) {
            0
        } else {
            rng.range_i64(1, 3)
        },
        prev_kv: rng.chance(40),
        ignore_value,
        ignore_lease,
    }
}

fn delete_req(rng: &mut Rng, key: Vec<u8>) -> DeleteRangeRequest {
    let range_end = range_end(rng, &key);
    DeleteRangeRequest {
        key,
        range_end,
        prev_kv: rng.chance(40),
    }
}

fn compare(rng: &mut Rng, m: &Model) -> Compare {
    let key = key(rng);
    let range_end = if rng.chance(25) {
        range_end(rng, &key)
    } else {
        vec![]
    };
    let target = [
        CompareTarget::Version,
        CompareTarget::Create,
        CompareTarget::Mod,
        CompareTarget::Value,
        CompareTarget::Lease,
    ][rng.below(5) as usize];
    let cur = m.current();
    let union = match (rng.below(12), target) {
        (0, _) => None,
        (1, _) => Some(TargetUnion::Lease(1)),
        (_, CompareTarget::Version) => Some(TargetUnion::Version(rng.range_i64(0, 3))),
        (_, CompareTarget::Create) => Some(TargetUnion::CreateRevision(rng.range_i64(0, cur))),
        (_, CompareTarget::Mod) => Some(TargetUnion::ModRevision(rng.range_i64(0, cur))),
        (_, CompareTarget::Value) => {
            Some(TargetUnion::Value(VALUES[rng.below(4) as usize].to_vec()))
        }
        (_, CompareTarget::Lease) => Some(TargetUnion::Lease(rng.range_i64(0, 3))),
    };
    let result = [
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ][rng.below(4) as usize];
    Compare {
        result,
        target,
        key: if rng.chance(2) { vec![] } else { key },
        target_union: union,
        range_end,
    }
}

fn ops(rng: &mut Rng, m: &Model, depth: u32, used: &mut BTreeSet<Vec<u8>>) -> Vec<RequestOp> {
    let n_max = if rng.chance(5) { 8 } else { 4 };
    let n = rng.below(n_max);
    let mut fresh_key = |rng: &mut Rng| {
        for _ in 0..4 {
            let k = key(rng);
            if !used.contains(&k) || rng.chance(10) {
                used.insert(k.clone());
                return k;
            }
        }
        key(rng)
    };
    (0..n)
        .map(|_| match rng.below(20) {
            0..=5 => RequestOp::RequestRange(range_req(rng, m)),
            6..=12 => {
                let k = fresh_key(rng);
                RequestOp::RequestPut(put_req(rng, k))
            }
            13..=16 => {
                let k = fresh_key(rng);
                let mut d = delete_req(rng, k);
                if rng.chance(70) {
                    d.range_end.clear();
                }
                RequestOp::RequestDeleteRange(d)
            }
            17 | 18 if depth < 2 => RequestOp::RequestTxn(txn_req(rng, m, depth + 1)),
            19 if rng.chance(10) => RequestOp::Empty,
            _ => RequestOp::RequestRange(range_req(rng, m)),
        })
        .collect()
}

fn txn_req(rng: &mut Rng, m: &Model, depth: u32) -> TxnRequest {
    let compare = (0..rng.below(3)).map(|_| compare(rng, m)).collect();
    let mut used = BTreeSet::new();
    let success = ops(rng, m, depth, &mut used);
    let mut used_else = used.clone();
    let failure = ops(rng, m, depth, &mut used_else);
    TxnRequest {
        compare,
        success,
        failure,
    }
}

// ---- harnesses ----

trait Harness {
    type B: Backend;
    async fn open(&mut self) -> Store<Self::B>;
    /// Reopens the store, after committing it if `commit`, else as after a crash.
    async fn reopen(&mut self, store: Store<Self::B>, commit: bool) -> Store<Self::B>;
    /// Checks that a reader on another core (published snapshot) sees what the writer
    /// sees; only meaningful for the real Db.
    fn check_snapshot_read(&mut self, _store: &mut Store<Self::B>, _req: &RangeRequest) {}
}

fn options() -> StoreOptions {
    StoreOptions {
        max_txn_ops: MAX_TXN_OPS,
        ..StoreOptions::default()
    }
}

struct MemHarness;

impl Harness for MemHarness {
    type B = MemBackend;
    async fn open(&mut self) -> Store<MemBackend> {
        Store::with_backend(MemBackend::new(), options()).unwrap()
    }
    async fn reopen(&mut self, mut store: Store<MemBackend>, commit: bool) -> Store<MemBackend> {
        if commit {
            store.commit().await.unwrap();
        }
        Store::with_backend(store.into_backend().crash(), options()).unwrap()
    }
}

struct DbHarness {
    path: PathBuf,
}

impl Harness for DbHarness {
    type B = Db;
    async fn open(&mut self) -> Store<Db> {
        let _ = std::fs::remove_file(&self.path);
        Store::open(&self.path, options()).await.unwrap()
    }
    async fn reopen(&mut self, mut store: Store<Db>, commit: bool) -> Store<Db> {
        if commit {
            store.commit().await.unwrap();
        }
        drop(store);
        Store::open(&self.path, options()).await.unwrap()
    }
    fn check_snapshot_read(&mut self, store: &mut Store<Db>, req: &RangeRequest) {
        store.publish();
        let snapshot = store.backend().snapshot();
        let current = store.current_revision();
        store.with_view(|writer| {
            let reader = ReadView::new(writer.index, &snapshot, writer.compact_revision);
            assert_eq!(
                reader.range(req, current),
                writer.range(req, current),
                "snapshot read {req:?}"
            );
        });
    }
}

/// How many operations of each kind ran and how many of them succeeded, so a test can
/// assert the random mix really exercises the store (not just its error paths).
#[derive(Default, Debug)]
struct Stats {
    ran: [u64; 9],
    ok: [u64; 9],
    revision_bumps: u64,
}

impl Stats {
    fn note<T, E>(&mut self, kind: usize, out: &std::result::Result<T, E>) {
        self.ran[kind] += 1;
        self.ok[kind] += out.is_ok() as u64;
    }
}

const PUT: usize = 0;
const DELETE: usize = 1;
const RANGE: usize = 2;
const TXN: usize = 3;
const COMPACT: usize = 4;
const HASH: usize = 5;
const REOPEN: usize = 6;
const CRASH: usize = 7;
const LEASE: usize = 8;

async fn run_seed<H: Harness>(h: &mut H, seed: u64, steps: usize, stats: &mut Stats) {
    let mut rng = Rng(seed);
    let mut store = h.open().await;
    let mut model = Model::new();
    let mut committed = model.clone();
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let before = model.current();
        // A compaction's sweep goes on a few records at a time between the other steps,
        // as the raft core runs it between rounds; the model compacts at once.
        if store.compaction_pending() && rng.chance(40) {
            let n = rng.below(4) as usize + 1;
            store
                .compact_step(n)
                .unwrap_or_else(|e| panic!("{ctx}: compact step: {e}"));
        }
        if rng.chance(6) {
            let id = rng.range_i64(1, 3);
            if rng.chance(60) {
                let req = LeaseGrantRequest {
                    id,
                    ttl: rng.range_i64(2, 100),
                };
                let out = store.lease_grant(&req);
                assert_eq!(out, model.lease_grant(&req), "{ctx}: {req:?}");
                stats.note(LEASE, &out);
            } else {
                let req = LeaseRevokeRequest { id };
                let out = store.lease_revoke(&req);
                assert_eq!(out, model.lease_revoke(&req), "{ctx}: {req:?}");
                stats.note(LEASE, &out);
            }
            let mut ids: Vec<(i64, i64)> =
                store.leases().iter().map(|(id, l)| (id, l.ttl)).collect();
            ids.sort();
            let want: Vec<(i64, i64)> = model.leases.iter().map(|(a, b)| (*a, *b)).collect();
            assert_eq!(ids, want, "{ctx}: leases");
            continue;
        }
        match rng.below(100) {
            0..=27 => {
                let k = if rng.chance(2) { vec![] } else { key(&mut rng) };
                let req = put_req(&mut rng, k);
                let out = store.put(&req);
                assert_eq!(out, model.top_put(&req), "{ctx}: {req:?}");
                stats.note(PUT, &out);
            }
            28..=37 => {
                let k = if rng.chance(2) { vec![] } else { key(&mut rng) };
                let req = delete_req(&mut rng, k);
                let out = store.delete_range(&req);
                assert_eq!(out, model.top_delete(&req), "{ctx}: {req:?}");
                stats.note(DELETE, &out);
            }
            38..=59 => {
                let req = range_req(&mut rng, &model);
                let out = store.range(&req);
                assert_eq!(out, model.top_range(&req), "{ctx}: {req:?}");
                stats.note(RANGE, &out);
                if out.is_ok() && rng.chance(20) {
                    h.check_snapshot_read(&mut store, &req);
                }
            }
            60..=79 => {
                let req = txn_req(&mut rng, &model, 0);
                let out = store.txn(&req);
                assert_eq!(out, model.top_txn(&req), "{ctx}: {req:?}");
                stats.note(TXN, &out);
            }
            80..=84 => {
                let rev = rng.range_i64(model.compact - 1, model.current() + 1);
                let out = store.compact(rev);
                assert_eq!(out, model.compact(rev), "{ctx}: compact {rev}");
                stats.note(COMPACT, &out);
            }
            85..=89 => {
                let rev = if rng.chance(30) {
                    0
                } else {
                    rng.range_i64(model.compact - 2, model.current() + 1)
                };
                let out = store.hash_kv(rev);
                assert_eq!(out, model.hash(rev), "{ctx}: hash {rev}");
                stats.note(HASH, &out);
            }
            90..=93 => {
                store = h.reopen(store, true).await;
                committed = model.clone();
                stats.note::<(), ()>(REOPEN, &Ok(()));
            }
            94..=95 => {
                store = h.reopen(store, false).await;
                model = committed.clone();
                stats.note::<(), ()>(CRASH, &Ok(()));
            }
            _ => store
                .check()
                .unwrap_or_else(|e| panic!("{ctx}: check: {e}")),
        }
        assert_eq!(
            store.current_revision(),
            model.current(),
            "{ctx}: current revision"
        );
        assert_eq!(
            store.compact_revision(),
            model.compact.max(0),
            "{ctx}: compact revision"
        );
        stats.revision_bumps += (model.current() > before) as u64;
    }
    store
        .check()
        .unwrap_or_else(|e| panic!("seed {seed} final check: {e}"));
    assert_eq!(store.hash_kv(0), model.hash(0), "seed {seed} final hash");
    // Once the sweep is through, the tree holds exactly the model's records.
    store
        .finish_compaction()
        .unwrap_or_else(|e| panic!("seed {seed} finishing the sweep: {e}"));
    store
        .check()
        .unwrap_or_else(|e| panic!("seed {seed} check after the sweep: {e}"));
    assert_eq!(
        store.hash_kv(0),
        model.hash(0),
        "seed {seed} hash after the sweep"
    );
    let mut present = Vec::new();
    store
        .backend()
        .scan(&[], &[], &mut |k, _| {
            present.push(Revision::decode(k).expect("a revision key"));
            true
        })
        .unwrap();
    let want: Vec<Revision> = model.records.keys().copied().collect();
    assert_eq!(present, want, "seed {seed}: records after the sweep");
}

fn assert_mix_is_meaningful(stats: &Stats) {
    for kind in [PUT, DELETE, RANGE, TXN, COMPACT, HASH, LEASE] {
        let (ran, ok) = (stats.ran[kind], stats.ok[kind]);
        assert!(
            ok * 5 >= ran && ran > ok,
            "kind {kind}: {ok} of {ran} succeeded"
        );
    }
    assert!(stats.ran[REOPEN] > 0 && stats.ran[CRASH] > 0);
    assert!(stats.revision_bumps * 4 > stats.ran.iter().sum::<u64>());
}

#[test]
fn model_mem_backend_matches_reference() {
    crate::runtime::block_on(async {
        let mut stats = Stats::default();
        for seed in 0..4000u64 {
            run_seed(&mut MemHarness, seed, 150, &mut stats).await;
        }
        println!("{stats:?}");
        assert_mix_is_meaningful(&stats);
    });
}

#[test]
fn model_real_db_matches_reference() {
    let dir = std::env::temp_dir().join(format!("keel-mvcc-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db");
    crate::runtime::block_on(async move {
        let mut h = DbHarness { path };
        let mut stats = Stats::default();
        for seed in 0..400u64 {
            run_seed(&mut h, 1_000_000 + seed, 150, &mut stats).await;
        }
        println!("{stats:?}");
        assert_mix_is_meaningful(&stats);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_catches_a_wrong_store() {
    // The comparison is not vacuous: a store that skipped one put would diverge.
    crate::runtime::block_on(async {
        let mut store = MemHarness.open().await;
        let mut model = Model::new();
        let req = PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        };
        model.top_put(&req).unwrap();
        let get = RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        assert_ne!(store.range(&get), model.top_range(&get));
        store.put(&req).unwrap();
        assert_eq!(store.range(&get), model.top_range(&get));
        assert_eq!(store.hash_kv(0), model.hash(0));
    });
}
