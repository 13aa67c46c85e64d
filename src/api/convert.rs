//! prost messages ↔ the MVCC store's request and response types, for the services.
//!
//! Runs on: every core (decode requests, encode responses). The request conversions live
//! in `mvcc::wire` (the raft log stores the same messages); here they get etcd's wire
//! error.

use crate::grpc::{Code, Status};
use crate::mvcc;
use crate::mvcc::wire::{self, BadEnum};
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;
use pb::response_op::Response as PbResponse;

pub use wire::{compaction_request, delete_range_request, put_request};

fn invalid(e: BadEnum) -> Status {
    Status::new(Code::InvalidArgument, format!("etcdserver: {e}"))
}

pub fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    wire::range_request(r).map_err(invalid)
}

pub fn txn_request(r: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    wire::txn_request(r).map_err(invalid)
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

    #[test]
    fn unknown_enum_numbers_are_etcds_invalid_argument() {
        let r = pb::RangeRequest {
            sort_order: 7,
            ..Default::default()
        };
        let s = range_request(r).unwrap_err();
        assert_eq!(s.code, Code::InvalidArgument);
        assert_eq!(s.message, "etcdserver: invalid sort order: 7");
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
