//! etcd's protobuf requests ↔ the store's requests: what clients send, and what the raft
//! log stores (a write's entry is etcd's own request message, `raft::entry`).
//!
//! Runs on: every core (client requests) and the raft core (log entries). Invariant:
//! `*_request(pb_*_request(r)) == r` for every request, so a replayed entry applies exactly
//! what was proposed; an enum number etcd does not define is refused (`BadEnum`), never
//! guessed.

use crate::pb::etcdserverpb as pb;
use bytes::Bytes;
use pb::compare::TargetUnion as PbTarget;
use pb::request_op::Request as PbRequest;
use std::fmt;

/// An enum field with a number etcd does not define (etcd answers "invalid <what>: <n>").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEnum {
    pub what: &'static str,
    pub value: i32,
}

impl fmt::Display for BadEnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.value)
    }
}

impl std::error::Error for BadEnum {}

// ---- requests: pb → mvcc -------------------------------------------------------------

pub fn range_request(r: pb::RangeRequest) -> Result<crate::mvcc::RangeRequest, BadEnum> {
    let sort_order = match r.sort_order {
        0 => crate::mvcc::SortOrder::None,
        1 => crate::mvcc::SortOrder::Ascend,
        2 => crate::mvcc::SortOrder::Descend,
        n => {
            return Err(BadEnum {
                what: "sort order",
                value: n,
            })
        }
    };
    let sort_target = match r.sort_target {
        0 => crate::mvcc::SortTarget::Key,
        1 => crate::mvcc::SortTarget::Version,
        2 => crate::mvcc::SortTarget::Create,
        3 => crate::mvcc::SortTarget::Mod,
        4 => crate::mvcc::SortTarget::Value,
        n => {
            return Err(BadEnum {
                what: "sort target",
                value: n,
            })
        }
    };
    Ok(crate::mvcc::RangeRequest {
        key: r.key.to_vec(),
        range_end: r.range_end.to_vec(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
        // Nested in a txn: decoded kvs (the Range service asks for raw ones itself).
        raw_bytes_max: 0,
    })
}

pub fn put_request(r: pb::PutRequest) -> crate::mvcc::PutRequest {
    crate::mvcc::PutRequest {
        key: r.key.to_vec(),
        value: r.value.to_vec(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_range_request(r: pb::DeleteRangeRequest) -> crate::mvcc::DeleteRangeRequest {
    crate::mvcc::DeleteRangeRequest {
        key: r.key.to_vec(),
        range_end: r.range_end.to_vec(),
        prev_kv: r.prev_kv,
    }
}

pub fn compaction_request(r: pb::CompactionRequest) -> crate::mvcc::CompactionRequest {
    crate::mvcc::CompactionRequest {
        revision: r.revision,
        physical: r.physical,
    }
}

fn compare(c: pb::Compare) -> Result<crate::mvcc::Compare, BadEnum> {
    let result = match c.result {
        0 => crate::mvcc::CompareResult::Equal,
        1 => crate::mvcc::CompareResult::Greater,
        2 => crate::mvcc::CompareResult::Less,
        3 => crate::mvcc::CompareResult::NotEqual,
        n => {
            return Err(BadEnum {
                what: "compare result",
                value: n,
            })
        }
    };
    let target = match c.target {
        0 => crate::mvcc::CompareTarget::Version,
        1 => crate::mvcc::CompareTarget::Create,
        2 => crate::mvcc::CompareTarget::Mod,
        3 => crate::mvcc::CompareTarget::Value,
        4 => crate::mvcc::CompareTarget::Lease,
        n => {
            return Err(BadEnum {
                what: "compare target",
                value: n,
            })
        }
    };
    let target_union = c.target_union.map(|t| match t {
        PbTarget::Version(v) => crate::mvcc::TargetUnion::Version(v),
        PbTarget::CreateRevision(v) => crate::mvcc::TargetUnion::CreateRevision(v),
        PbTarget::ModRevision(v) => crate::mvcc::TargetUnion::ModRevision(v),
        PbTarget::Value(v) => crate::mvcc::TargetUnion::Value(v.to_vec()),
        PbTarget::Lease(v) => crate::mvcc::TargetUnion::Lease(v),
    });
    Ok(crate::mvcc::Compare {
        result,
        target,
        key: c.key.to_vec(),
        target_union,
        range_end: c.range_end.to_vec(),
    })
}

fn request_op(op: pb::RequestOp) -> Result<crate::mvcc::RequestOp, BadEnum> {
    Ok(match op.request {
        Some(PbRequest::RequestRange(r)) => crate::mvcc::RequestOp::RequestRange(range_request(r)?),
        Some(PbRequest::RequestPut(r)) => crate::mvcc::RequestOp::RequestPut(put_request(r)),
        Some(PbRequest::RequestDeleteRange(r)) => {
            crate::mvcc::RequestOp::RequestDeleteRange(delete_range_request(r))
        }
        Some(PbRequest::RequestTxn(r)) => crate::mvcc::RequestOp::RequestTxn(txn_request(r)?),
        None => crate::mvcc::RequestOp::Empty,
    })
}

pub fn txn_request(r: pb::TxnRequest) -> Result<crate::mvcc::TxnRequest, BadEnum> {
    Ok(crate::mvcc::TxnRequest {
        compare: r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: r
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

// ---- requests: mvcc → pb (the raft log) -------------------------------------------------

pub fn pb_range_request(r: &crate::mvcc::RangeRequest) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(&r.key),
        range_end: Bytes::copy_from_slice(&r.range_end),
        limit: r.limit,
        revision: r.revision,
        sort_order: r.sort_order as i32,
        sort_target: r.sort_target as i32,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn pb_put_request(r: &crate::mvcc::PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: Bytes::copy_from_slice(&r.key),
        value: Bytes::copy_from_slice(&r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn pb_delete_range_request(r: &crate::mvcc::DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: Bytes::copy_from_slice(&r.key),
        range_end: Bytes::copy_from_slice(&r.range_end),
        prev_kv: r.prev_kv,
    }
}

pub fn pb_compare(c: &crate::mvcc::Compare) -> pb::Compare {
    pb::Compare {
        result: c.result as i32,
        target: c.target as i32,
        key: Bytes::copy_from_slice(&c.key),
        range_end: Bytes::copy_from_slice(&c.range_end),
        target_union: c.target_union.as_ref().map(|t| match t {
            crate::mvcc::TargetUnion::Version(v) => PbTarget::Version(*v),
            crate::mvcc::TargetUnion::CreateRevision(v) => PbTarget::CreateRevision(*v),
            crate::mvcc::TargetUnion::ModRevision(v) => PbTarget::ModRevision(*v),
            crate::mvcc::TargetUnion::Value(v) => PbTarget::Value(Bytes::copy_from_slice(v)),
            crate::mvcc::TargetUnion::Lease(v) => PbTarget::Lease(*v),
        }),
    }
}

pub fn pb_request_op(op: &crate::mvcc::RequestOp) -> pb::RequestOp {
    pb::RequestOp {
        request: match op {
            crate::mvcc::RequestOp::RequestRange(r) => {
                Some(PbRequest::RequestRange(pb_range_request(r)))
            }
            crate::mvcc::RequestOp::RequestPut(r) => Some(PbRequest::RequestPut(pb_put_request(r))),
            crate::mvcc::RequestOp::RequestDeleteRange(r) => {
                Some(PbRequest::RequestDeleteRange(pb_delete_range_request(r)))
            }
            crate::mvcc::RequestOp::RequestTxn(t) => Some(PbRequest::RequestTxn(pb_txn_request(t))),
            crate::mvcc::RequestOp::Empty => None,
        },
    }
}

pub fn pb_txn_request(t: &crate::mvcc::TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: t.compare.iter().map(pb_compare).collect(),
        success: t.success.iter().map(pb_request_op).collect(),
        failure: t.failure.iter().map(pb_request_op).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_numbers_are_refused() {
        let r = pb::RangeRequest {
            sort_order: 7,
            ..Default::default()
        };
        let e = range_request(r).unwrap_err();
        assert_eq!(e.to_string(), "invalid sort order: 7");
        let t = pb::TxnRequest {
            compare: vec![pb::Compare {
                target: 9,
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = txn_request(t).unwrap_err();
        assert_eq!(
            e,
            BadEnum {
                what: "compare target",
                value: 9
            }
        );
    }
}
