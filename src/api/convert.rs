//! prost messages ↔ the MVCC store's request and response types, and the raft log's entry
//! encoding (`keel.internal.RaftRequest`: etcd's own request messages).
//!
//! Runs on: every core (decode requests, encode responses) and the raft core (decode log
//! entries). Invariant: `decode_raft_request(&encode_raft_request(op)) == op` for every
//! write op, so a replayed entry applies exactly what was proposed.

use crate::grpc::{Code, Status};
use crate::mvcc;
use crate::pb::etcdserverpb as pb;
use crate::pb::keel::internal::{raft_request, RaftRequest};
use crate::pb::mvccpb;
use bytes::Bytes;
use pb::compare::TargetUnion as PbTarget;
use pb::request_op::Request as PbRequest;
use pb::response_op::Response as PbResponse;
use prost::Message;

fn invalid(what: &str, n: i32) -> Status {
    Status::new(
        Code::InvalidArgument,
        format!("etcdserver: invalid {what}: {n}"),
    )
}

// ---- requests: pb → mvcc -------------------------------------------------------------

pub fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    let sort_order = match r.sort_order {
        0 => mvcc::SortOrder::None,
        1 => mvcc::SortOrder::Ascend,
        2 => mvcc::SortOrder::Descend,
        n => return Err(invalid("sort order", n)),
    };
    let sort_target = match r.sort_target {
        0 => mvcc::SortTarget::Key,
        1 => mvcc::SortTarget::Version,
        2 => mvcc::SortTarget::Create,
        3 => mvcc::SortTarget::Mod,
        4 => mvcc::SortTarget::Value,
        n => return Err(invalid("sort target", n)),
    };
    Ok(mvcc::RangeRequest {
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
    })
}

pub fn put_request(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key.to_vec(),
        value: r.value.to_vec(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_range_request(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key.to_vec(),
        range_end: r.range_end.to_vec(),
        prev_kv: r.prev_kv,
    }
}

pub fn compaction_request(r: pb::CompactionRequest) -> mvcc::CompactionRequest {
    mvcc::CompactionRequest {
        revision: r.revision,
        physical: r.physical,
    }
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    let result = match c.result {
        0 => mvcc::CompareResult::Equal,
        1 => mvcc::CompareResult::Greater,
        2 => mvcc::CompareResult::Less,
        3 => mvcc::CompareResult::NotEqual,
        n => return Err(invalid("compare result", n)),
    };
    let target = match c.target {
        0 => mvcc::CompareTarget::Version,
        1 => mvcc::CompareTarget::Create,
        2 => mvcc::CompareTarget::Mod,
        3 => mvcc::CompareTarget::Value,
        4 => mvcc::CompareTarget::Lease,
        n => return Err(invalid("compare target", n)),
    };
    let target_union = c.target_union.map(|t| match t {
        PbTarget::Version(v) => mvcc::TargetUnion::Version(v),
        PbTarget::CreateRevision(v) => mvcc::TargetUnion::CreateRevision(v),
        PbTarget::ModRevision(v) => mvcc::TargetUnion::ModRevision(v),
        PbTarget::Value(v) => mvcc::TargetUnion::Value(v.to_vec()),
        PbTarget::Lease(v) => mvcc::TargetUnion::Lease(v),
    });
    Ok(mvcc::Compare {
        result,
        target,
        key: c.key.to_vec(),
        target_union,
        range_end: c.range_end.to_vec(),
    })
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    Ok(match op.request {
        Some(PbRequest::RequestRange(r)) => mvcc::RequestOp::RequestRange(range_request(r)?),
        Some(PbRequest::RequestPut(r)) => mvcc::RequestOp::RequestPut(put_request(r)),
        Some(PbRequest::RequestDeleteRange(r)) => {
            mvcc::RequestOp::RequestDeleteRange(delete_range_request(r))
        }
        Some(PbRequest::RequestTxn(r)) => mvcc::RequestOp::RequestTxn(txn_request(r)?),
        None => mvcc::RequestOp::Empty,
    })
}

pub fn txn_request(r: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
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

fn pb_range_request(r: &mvcc::RangeRequest) -> pb::RangeRequest {
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

fn pb_put_request(r: &mvcc::PutRequest) -> pb::PutRequest {
    pb::PutRequest {
        key: Bytes::copy_from_slice(&r.key),
        value: Bytes::copy_from_slice(&r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

fn pb_delete_range_request(r: &mvcc::DeleteRangeRequest) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: Bytes::copy_from_slice(&r.key),
        range_end: Bytes::copy_from_slice(&r.range_end),
        prev_kv: r.prev_kv,
    }
}

fn pb_compare(c: &mvcc::Compare) -> pb::Compare {
    pb::Compare {
        result: c.result as i32,
        target: c.target as i32,
        key: Bytes::copy_from_slice(&c.key),
        range_end: Bytes::copy_from_slice(&c.range_end),
        target_union: c.target_union.as_ref().map(|t| match t {
            mvcc::TargetUnion::Version(v) => PbTarget::Version(*v),
            mvcc::TargetUnion::CreateRevision(v) => PbTarget::CreateRevision(*v),
            mvcc::TargetUnion::ModRevision(v) => PbTarget::ModRevision(*v),
            mvcc::TargetUnion::Value(v) => PbTarget::Value(Bytes::copy_from_slice(v)),
            mvcc::TargetUnion::Lease(v) => PbTarget::Lease(*v),
        }),
    }
}

fn pb_request_op(op: &mvcc::RequestOp) -> pb::RequestOp {
    pb::RequestOp {
        request: match op {
            mvcc::RequestOp::RequestRange(r) => Some(PbRequest::RequestRange(pb_range_request(r))),
            mvcc::RequestOp::RequestPut(r) => Some(PbRequest::RequestPut(pb_put_request(r))),
            mvcc::RequestOp::RequestDeleteRange(r) => {
                Some(PbRequest::RequestDeleteRange(pb_delete_range_request(r)))
            }
            mvcc::RequestOp::RequestTxn(t) => Some(PbRequest::RequestTxn(pb_txn_request(t))),
            mvcc::RequestOp::Empty => None,
        },
    }
}

fn pb_txn_request(t: &mvcc::TxnRequest) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: t.compare.iter().map(pb_compare).collect(),
        success: t.success.iter().map(pb_request_op).collect(),
        failure: t.failure.iter().map(pb_request_op).collect(),
    }
}

/// The raft log entry for a write. Reads are never proposed (they take a ReadIndex), so
/// `Op::Range` here is a programmer error.
pub fn encode_raft_request(op: &mvcc::Op) -> Bytes {
    let request = match op {
        mvcc::Op::Put(r) => raft_request::Request::Put(pb_put_request(r)),
        mvcc::Op::DeleteRange(r) => raft_request::Request::DeleteRange(pb_delete_range_request(r)),
        mvcc::Op::Txn(t) => raft_request::Request::Txn(pb_txn_request(t)),
        mvcc::Op::Compaction(c) => raft_request::Request::Compaction(pb::CompactionRequest {
            revision: c.revision,
            physical: c.physical,
        }),
        mvcc::Op::LeaseGrant(g) => raft_request::Request::LeaseGrant(pb::LeaseGrantRequest {
            id: g.id,
            ttl: g.ttl,
        }),
        mvcc::Op::LeaseRevoke(r) => {
            raft_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id: r.id })
        }
        mvcc::Op::LeaseCheckpoint(c) => {
            raft_request::Request::LeaseCheckpoint(pb::LeaseCheckpointRequest {
                checkpoints: c
                    .checkpoints
                    .iter()
                    .map(|&(id, remaining_ttl)| pb::LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            })
        }
        mvcc::Op::Range(_) => panic!("a Range is never proposed to raft"),
    };
    Bytes::from(
        RaftRequest {
            request: Some(request),
        }
        .encode_to_vec(),
    )
}

/// A membership record change carried by a normal raft entry.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberEntry {
    /// New peer URLs for a member (Cluster.MemberUpdate).
    Update { id: u64, peer_urls: Vec<String> },
    /// A member's name and client URLs (published once it has a leader).
    Attributes {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
}

/// What a normal raft entry carries.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryOp {
    Op(mvcc::Op),
    Member(MemberEntry),
}

pub fn encode_member_entry(m: &MemberEntry) -> Bytes {
    let request = match m {
        MemberEntry::Update { id, peer_urls } => {
            raft_request::Request::MemberUpdate(pb::MemberUpdateRequest {
                id: *id,
                peer_ur_ls: peer_urls.clone(),
            })
        }
        MemberEntry::Attributes {
            id,
            name,
            client_urls,
        } => raft_request::Request::MemberAttributes(crate::pb::keel::internal::MemberAttributes {
            id: *id,
            name: name.clone(),
            client_urls: client_urls.clone(),
        }),
    };
    Bytes::from(
        RaftRequest {
            request: Some(request),
        }
        .encode_to_vec(),
    )
}

/// Decodes a normal raft entry: a store write or a membership record change.
pub fn decode_entry(data: &[u8]) -> Result<EntryOp, String> {
    let req = RaftRequest::decode(data).map_err(|e| e.to_string())?;
    Ok(match req.request {
        Some(raft_request::Request::MemberUpdate(u)) => EntryOp::Member(MemberEntry::Update {
            id: u.id,
            peer_urls: u.peer_ur_ls,
        }),
        Some(raft_request::Request::MemberAttributes(a)) => {
            EntryOp::Member(MemberEntry::Attributes {
                id: a.id,
                name: a.name,
                client_urls: a.client_urls,
            })
        }
        other => EntryOp::Op(store_op(other)?),
    })
}

pub fn decode_raft_request(data: &[u8]) -> Result<mvcc::Op, String> {
    match decode_entry(data)? {
        EntryOp::Op(op) => Ok(op),
        EntryOp::Member(_) => Err("a membership entry, not a store write".into()),
    }
}

fn store_op(request: Option<raft_request::Request>) -> Result<mvcc::Op, String> {
    Ok(match request {
        Some(raft_request::Request::Put(r)) => mvcc::Op::Put(put_request(r)),
        Some(raft_request::Request::DeleteRange(r)) => {
            mvcc::Op::DeleteRange(delete_range_request(r))
        }
        Some(raft_request::Request::Txn(t)) => {
            mvcc::Op::Txn(txn_request(t).map_err(|s| s.message)?)
        }
        Some(raft_request::Request::Compaction(c)) => mvcc::Op::Compaction(compaction_request(c)),
        Some(raft_request::Request::LeaseGrant(g)) => {
            mvcc::Op::LeaseGrant(mvcc::LeaseGrantRequest {
                id: g.id,
                ttl: g.ttl,
            })
        }
        Some(raft_request::Request::LeaseRevoke(r)) => {
            mvcc::Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id: r.id })
        }
        Some(raft_request::Request::LeaseCheckpoint(c)) => {
            mvcc::Op::LeaseCheckpoint(mvcc::LeaseCheckpointRequest {
                checkpoints: c
                    .checkpoints
                    .into_iter()
                    .map(|c| (c.id, c.remaining_ttl))
                    .collect(),
            })
        }
        Some(
            raft_request::Request::MemberUpdate(_) | raft_request::Request::MemberAttributes(_),
        ) => unreachable!("decode_entry takes membership entries"),
        None => return Err("empty RaftRequest".into()),
    })
}

// ---- responses: mvcc → pb --------------------------------------------------------------

pub fn key_value(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.into(),
        lease: kv.lease,
    }
}

/// A header carrying only a revision: what etcd puts on responses nested in a txn.
fn nested_header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        revision,
        ..Default::default()
    }
}

pub fn range_response(r: mvcc::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(r: mvcc::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_range_response(
    r: mvcc::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

fn response_op(op: mvcc::ResponseOp) -> pb::ResponseOp {
    let response = match op {
        mvcc::ResponseOp::ResponseRange(r) => {
            let h = nested_header(r.header.revision);
            PbResponse::ResponseRange(range_response(r, h))
        }
        mvcc::ResponseOp::ResponsePut(r) => {
            let h = nested_header(r.header.revision);
            PbResponse::ResponsePut(put_response(r, h))
        }
        mvcc::ResponseOp::ResponseDeleteRange(r) => {
            let h = nested_header(r.header.revision);
            PbResponse::ResponseDeleteRange(delete_range_response(r, h))
        }
        mvcc::ResponseOp::ResponseTxn(r) => {
            let h = nested_header(r.header.revision);
            PbResponse::ResponseTxn(txn_response(r, h))
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

pub fn txn_response(r: mvcc::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses: r.responses.into_iter().map(response_op).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_compare(target: mvcc::CompareTarget, u: mvcc::TargetUnion) -> mvcc::Compare {
        mvcc::Compare {
            result: mvcc::CompareResult::NotEqual,
            target,
            key: b"k".to_vec(),
            target_union: Some(u),
            range_end: b"z".to_vec(),
        }
    }

    #[test]
    fn raft_requests_round_trip_every_field() {
        let put = mvcc::PutRequest {
            key: b"a".to_vec(),
            value: vec![0, 1, 2, 255],
            lease: -7,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        };
        let range = mvcc::RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit: 3,
            revision: 9,
            sort_order: mvcc::SortOrder::Descend,
            sort_target: mvcc::SortTarget::Value,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 2,
            min_create_revision: 3,
            max_create_revision: 4,
        };
        let inner = mvcc::TxnRequest {
            compare: vec![kv_compare(
                mvcc::CompareTarget::Lease,
                mvcc::TargetUnion::Lease(5),
            )],
            success: vec![mvcc::RequestOp::Empty],
            failure: vec![mvcc::RequestOp::RequestDeleteRange(
                mvcc::DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: b"e".to_vec(),
                    prev_kv: true,
                },
            )],
        };
        let txn = mvcc::TxnRequest {
            compare: vec![
                kv_compare(mvcc::CompareTarget::Version, mvcc::TargetUnion::Version(1)),
                kv_compare(
                    mvcc::CompareTarget::Create,
                    mvcc::TargetUnion::CreateRevision(2),
                ),
                kv_compare(mvcc::CompareTarget::Mod, mvcc::TargetUnion::ModRevision(3)),
                kv_compare(
                    mvcc::CompareTarget::Value,
                    mvcc::TargetUnion::Value(vec![9]),
                ),
                mvcc::Compare::default(),
            ],
            success: vec![
                mvcc::RequestOp::RequestPut(put.clone()),
                mvcc::RequestOp::RequestRange(range),
                mvcc::RequestOp::RequestTxn(inner),
            ],
            failure: vec![],
        };
        for op in [
            mvcc::Op::Put(put),
            mvcc::Op::DeleteRange(mvcc::DeleteRangeRequest::default()),
            mvcc::Op::Txn(txn),
            mvcc::Op::Compaction(mvcc::CompactionRequest {
                revision: 42,
                physical: true,
            }),
            mvcc::Op::LeaseGrant(mvcc::LeaseGrantRequest {
                id: 0x694d,
                ttl: 60,
            }),
            mvcc::Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id: 0x694d }),
            mvcc::Op::LeaseCheckpoint(mvcc::LeaseCheckpointRequest {
                checkpoints: vec![(1, 30), (2, 5)],
            }),
        ] {
            let bytes = encode_raft_request(&op);
            assert_eq!(decode_raft_request(&bytes).unwrap(), op);
        }
        assert!(decode_raft_request(&[]).is_err());
        assert!(decode_raft_request(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn unknown_enum_numbers_are_refused() {
        let r = pb::RangeRequest {
            sort_order: 7,
            ..Default::default()
        };
        assert_eq!(range_request(r).unwrap_err().code, Code::InvalidArgument);
        let t = pb::TxnRequest {
            compare: vec![pb::Compare {
                target: 9,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(txn_request(t).unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn nested_txn_responses_carry_only_their_revision() {
        let r = mvcc::TxnResponse {
            header: mvcc::ResponseHeader { revision: 5 },
            succeeded: true,
            responses: vec![mvcc::ResponseOp::ResponsePut(mvcc::PutResponse {
                header: mvcc::ResponseHeader { revision: 5 },
                prev_kv: None,
            })],
        };
        let outer = pb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 5,
            raft_term: 3,
        };
        let pb = txn_response(r, outer);
        assert_eq!(pb.header, Some(outer));
        let Some(PbResponse::ResponsePut(p)) = &pb.responses[0].response else {
            panic!("not a put");
        };
        assert_eq!(p.header, Some(nested_header(5)));
    }
}
