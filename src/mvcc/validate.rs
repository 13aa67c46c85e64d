//! Request validation, as etcd's v3rpc layer does it before a request reaches raft
//! (`etcdserver/api/v3rpc/key.go`): empty keys, ignore_* conflicts, the txn op limit and
//! the rule that a txn must not put a key twice or put a key it deletes.

use super::error::{Error, Result};
use super::request::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use std::collections::HashSet;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

pub fn check_range_request(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn check_put_request(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_request(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// The op limit applies per level: `max(compare, success, failure)` against the limit,
/// and a nested txn gets what its parent left (etcd passes `max - opc` down).
pub fn check_txn_request(r: &TxnRequest, max_txn_ops: i64) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: i64) -> Result<()> {
    match op {
        RequestOp::RequestRange(r) => check_range_request(r),
        RequestOp::RequestPut(r) => check_put_request(r),
        RequestOp::RequestDeleteRange(r) => check_delete_request(r),
        RequestOp::RequestTxn(r) => check_txn_request(r, max_txn_ops),
        RequestOp::Empty => Err(Error::KeyNotFound),
    }
}

/// A deleted interval as etcd's interval tree sees it: `[begin, end)` where a single key
/// is `[key, key + "\0")`. A put of `k` overlaps iff `begin <= k < end`. Note etcd does
/// not special-case `range_end = "\0"` here, so `[key, "\0")` overlaps nothing; we keep
/// that to stay exact.
#[derive(Clone, Copy, Debug)]
enum Deleted<'a> {
    Key(&'a [u8]),
    Range(&'a [u8], &'a [u8]),
}

impl Deleted<'_> {
    fn overlaps(&self, k: &[u8]) -> bool {
        match *self {
            Deleted::Key(key) => key == k,
            Deleted::Range(begin, end) => begin <= k && k < end,
        }
    }

    /// etcd merges a child's deletes into its parent's tree with `Union(…, ["\0", ∞))`,
    /// which drops the intervals that do not intersect that span.
    fn survives_union(&self) -> bool {
        match *self {
            Deleted::Key(_) => true,
            Deleted::Range(_, end) => end > &b"\0"[..],
        }
    }
}

type Intervals<'a> = (HashSet<&'a [u8]>, Vec<Deleted<'a>>);

/// etcd's checkIntervals over one branch: `DuplicateKey` if a key is put twice (except
/// once in each of a nested txn's then/else) or put and deleted in the same txn.
pub fn check_intervals(reqs: &[RequestOp]) -> Result<()> {
    intervals(reqs).map(|_| ())
}

fn intervals(reqs: &[RequestOp]) -> Result<Intervals<'_>> {
    let mut dels: Vec<Deleted<'_>> = Vec::new();
    for op in reqs {
        if let RequestOp::RequestDeleteRange(d) = op {
            dels.push(if d.range_end.is_empty() {
                Deleted::Key(&d.key)
            } else {
                Deleted::Range(&d.key, &d.range_end)
            });
        }
    }
    let deleted = |dels: &[Deleted<'_>], k: &[u8]| dels.iter().any(|d| d.overlaps(k));
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in reqs {
        let RequestOp::RequestTxn(t) = op else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // A key put in both then and else is fine: only one branch runs.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(Error::DuplicateKey);
            }
            if deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then.into_iter().filter(Deleted::survives_union));
        dels.extend(dels_else.into_iter().filter(Deleted::survives_union));
    }
    for op in reqs {
        let RequestOp::RequestPut(p) = op else {
            continue;
        };
        let k = p.key.as_slice();
        if puts.contains(k) || deleted(&dels, k) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::request::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp::RequestPut(PutRequest {
            key: k.into(),
            ..Default::default()
        })
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    }
    fn get(k: &str) -> RequestOp {
        RequestOp::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp::RequestTxn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    }

    #[test]
    fn duplicate_key_table() {
        let dup = Err(Error::DuplicateKey);
        let cases: Vec<(&str, Vec<RequestOp>, Result<()>)> = vec![
            ("distinct puts", vec![put("a"), put("b")], Ok(())),
            ("same put twice", vec![put("a"), put("a")], dup.clone_kind()),
            (
                "put and delete same key",
                vec![del("a", ""), put("a")],
                dup.clone_kind(),
            ),
            (
                "put inside deleted range",
                vec![put("b"), del("a", "c")],
                dup.clone_kind(),
            ),
            (
                "put at range end is outside",
                vec![put("c"), del("a", "c")],
                Ok(()),
            ),
            (
                "two deletes overlap fine",
                vec![del("a", "c"), del("b", "")],
                Ok(()),
            ),
            (
                "range ops never conflict",
                vec![get("a"), put("a"), get("a")],
                Ok(()),
            ),
            (
                "gte delete (\\0) is not checked by etcd",
                vec![del("a", "\0"), put("b")],
                Ok(()),
            ),
            (
                "then/else may put the same key",
                vec![txn(vec![put("a")], vec![put("a")])],
                Ok(()),
            ),
            (
                "nested put vs outer put",
                vec![put("a"), txn(vec![put("a")], vec![])],
                dup.clone_kind(),
            ),
            (
                "nested put vs outer delete",
                vec![del("a", "b"), txn(vec![], vec![put("a")])],
                dup.clone_kind(),
            ),
            (
                "nested delete vs outer put",
                vec![put("a"), txn(vec![del("a", "")], vec![])],
                dup.clone_kind(),
            ),
            (
                "two nested txns put the same key",
                vec![txn(vec![put("a")], vec![]), txn(vec![put("a")], vec![])],
                dup.clone_kind(),
            ),
            (
                "else of second nested txn vs then of first",
                vec![txn(vec![put("a")], vec![]), txn(vec![], vec![put("a")])],
                dup.clone_kind(),
            ),
            (
                "duplicate deep inside",
                vec![txn(vec![txn(vec![put("x"), put("x")], vec![])], vec![])],
                dup.clone_kind(),
            ),
        ];
        for (name, ops, want) in cases {
            assert_eq!(check_intervals(&ops), want, "{name}");
        }
    }

    trait CloneKind {
        fn clone_kind(&self) -> Self;
    }
    impl CloneKind for Result<()> {
        fn clone_kind(&self) -> Self {
            match self {
                Ok(()) => Ok(()),
                Err(Error::DuplicateKey) => Err(Error::DuplicateKey),
                Err(_) => unreachable!(),
            }
        }
    }

    #[test]
    fn request_checks_table() {
        let t = |compare: usize, success: Vec<RequestOp>| TxnRequest {
            compare: (0..compare)
                .map(|_| Compare {
                    key: b"k".to_vec(),
                    ..Default::default()
                })
                .collect(),
            success,
            failure: vec![],
        };
        assert_eq!(check_txn_request(&t(128, vec![]), 128), Ok(()));
        assert_eq!(
            check_txn_request(&t(129, vec![]), 128),
            Err(Error::TooManyOps)
        );
        let many: Vec<RequestOp> = (0..129).map(|i| put(&i.to_string())).collect();
        assert_eq!(check_txn_request(&t(0, many), 128), Err(Error::TooManyOps));
        // A nested txn gets the parent's limit minus the parent's own op count.
        let nested = t(
            0,
            vec![txn((0..3).map(|i| put(&i.to_string())).collect(), vec![])],
        );
        assert_eq!(check_txn_request(&nested, 4), Ok(()));
        assert_eq!(check_txn_request(&nested, 3), Err(Error::TooManyOps));
        let mut empty_cmp = t(1, vec![]);
        empty_cmp.compare[0].key.clear();
        assert_eq!(check_txn_request(&empty_cmp, 128), Err(Error::EmptyKey));
        assert_eq!(
            check_txn_request(&t(0, vec![RequestOp::Empty]), 128),
            Err(Error::KeyNotFound)
        );
        assert_eq!(
            check_txn_request(&t(0, vec![get("")]), 128),
            Err(Error::EmptyKey)
        );
        let p = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put_request(&p), Err(Error::ValueProvided));
        let p = PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put_request(&p), Err(Error::LeaseProvided));
        let p = PutRequest {
            ignore_lease: true,
            lease: 5,
            ..Default::default()
        };
        assert_eq!(
            check_put_request(&p),
            Err(Error::EmptyKey),
            "empty key is checked first"
        );
        assert_eq!(
            check_delete_request(&DeleteRangeRequest::default()),
            Err(Error::EmptyKey)
        );
    }
}
