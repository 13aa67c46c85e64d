//! The raft log's entry encoding: a normal entry is a `keel.internal.RaftRequest` holding
//! etcd's own request message (a store write) or a membership record change.
//!
//! Runs on: the raft core (decode at apply) and every core (encode a write before proposing
//! it). Invariant: `decode_entry(&encode_raft_request(op)) == EntryOp::Op(op)` for every
//! write op, so a replayed entry applies exactly what was proposed.

use crate::mvcc::{self, wire};
use crate::pb::etcdserverpb as pb;
use crate::pb::keel::internal::{raft_request, RaftRequest};
use bytes::Bytes;
use prost::Message;

/// The raft log entry for a write. Reads are never proposed (they take a ReadIndex), so
/// `Op::Range` here is a programmer error.
pub fn encode_raft_request(op: &mvcc::Op) -> Bytes {
    let request = match op {
        mvcc::Op::Put(r) => raft_request::Request::Put(wire::pb_put_request(r)),
        mvcc::Op::DeleteRange(r) => {
            raft_request::Request::DeleteRange(wire::pb_delete_range_request(r))
        }
        mvcc::Op::Txn(t) => raft_request::Request::Txn(wire::pb_txn_request(t)),
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
        Some(raft_request::Request::Put(r)) => mvcc::Op::Put(wire::put_request(r)),
        Some(raft_request::Request::DeleteRange(r)) => {
            mvcc::Op::DeleteRange(wire::delete_range_request(r))
        }
        Some(raft_request::Request::Txn(t)) => {
            mvcc::Op::Txn(wire::txn_request(t).map_err(|e| e.to_string())?)
        }
        Some(raft_request::Request::Compaction(c)) => {
            mvcc::Op::Compaction(wire::compaction_request(c))
        }
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
}
