//! The raft log's entry encoding: a normal entry is a `keel.internal.RaftRequest` holding
//! etcd's own request message (a store write, an Auth call) or a membership record change,
//! and, for a client's request, who asked (`AuthHeader`).
//!
//! Runs on: the raft core (decode at apply) and every core (encode a write before proposing
//! it). Invariant: `decode_entry(&encode_request_as(op, caller))` gives back `op` and
//! `caller` for every write op and Auth call, so a replayed entry applies exactly what was
//! proposed, checked as it was.

use crate::auth::perms::Grant;
use crate::auth::{AuthOp, Caller};
use crate::mvcc::{self, wire};
use crate::pb::etcdserverpb as pb;
use crate::pb::keel::internal::{self as internal, raft_request, RaftRequest};
use bytes::Bytes;
use prost::Message;

fn store_request(op: &mvcc::Op) -> raft_request::Request {
    match op {
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
    }
}

/// A put's entry, encoded straight from the request: the same bytes prost writes for
/// `RaftRequest { header, request: Put(..) }` (fields in number order, so the put, then
/// the header; defaults left out), without first copying the key and value into a `pb::PutRequest` (issue 22: that
/// copy and the message's encode were five allocations per put on the connection's core).
fn encode_put(r: &mvcc::PutRequest, caller: Option<&Caller>) -> Bytes {
    use prost::encoding::{self as enc, WireType};
    let header_len = caller.map(|c| {
        enc::string::encoded_len(1, &c.user) * usize::from(!c.user.is_empty())
            + enc::uint64::encoded_len(2, &c.revision) * usize::from(c.revision != 0)
    });
    let put_len = enc::bytes::encoded_len(1, &r.key) * usize::from(!r.key.is_empty())
        + enc::bytes::encoded_len(2, &r.value) * usize::from(!r.value.is_empty())
        + enc::int64::encoded_len(3, &r.lease) * usize::from(r.lease != 0)
        + 2 * (usize::from(r.prev_kv) + usize::from(r.ignore_value) + usize::from(r.ignore_lease));
    let total = header_len.map_or(0, |n| {
        enc::key_len(HEADER_TAG) + enc::encoded_len_varint(n as u64) + n
    }) + enc::key_len(1)
        + enc::encoded_len_varint(put_len as u64)
        + put_len;
    let mut buf = Vec::with_capacity(total);
    enc::encode_key(1, WireType::LengthDelimited, &mut buf);
    enc::encode_varint(put_len as u64, &mut buf);
    if !r.key.is_empty() {
        enc::bytes::encode(1, &r.key, &mut buf);
    }
    if !r.value.is_empty() {
        enc::bytes::encode(2, &r.value, &mut buf);
    }
    if r.lease != 0 {
        enc::int64::encode(3, &r.lease, &mut buf);
    }
    for (tag, on) in [(4, r.prev_kv), (5, r.ignore_value), (6, r.ignore_lease)] {
        if on {
            enc::bool::encode(tag, &true, &mut buf);
        }
    }
    if let (Some(c), Some(n)) = (caller, header_len) {
        enc::encode_key(HEADER_TAG, WireType::LengthDelimited, &mut buf);
        enc::encode_varint(n as u64, &mut buf);
        if !c.user.is_empty() {
            enc::string::encode(1, &c.user, &mut buf);
        }
        if c.revision != 0 {
            enc::uint64::encode(2, &c.revision, &mut buf);
        }
    }
    debug_assert_eq!(buf.len(), total);
    Bytes::from(buf)
}

/// `RaftRequest.header`'s field number (keel/internal.proto).
const HEADER_TAG: u32 = 100;

fn encode(request: raft_request::Request, caller: Option<&Caller>) -> Bytes {
    Bytes::from(
        RaftRequest {
            header: caller.map(|c| internal::AuthHeader {
                username: c.user.clone(),
                auth_revision: c.revision,
            }),
            request: Some(request),
        }
        .encode_to_vec(),
    )
}

/// The raft log entry for a write the member makes itself (lease expiry, checkpoints):
/// no caller, so auth does not check it. Reads are never proposed (they take a
/// ReadIndex), so `Op::Range` here is a programmer error.
pub fn encode_raft_request(op: &mvcc::Op) -> Bytes {
    match op {
        mvcc::Op::Put(r) => encode_put(r, None),
        _ => encode(store_request(op), None),
    }
}

/// The raft log entry for a client's write, checked at apply as `caller`'s.
pub fn encode_request_as(op: &mvcc::Op, caller: &Caller) -> Bytes {
    match op {
        mvcc::Op::Put(r) => encode_put(r, Some(caller)),
        _ => encode(store_request(op), Some(caller)),
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// The raft log entry for a Maintenance.Alarm call (`None`: the member's own, e.g. the
/// NOSPACE alarm it raises at the quota).
pub fn encode_alarm(req: &pb::AlarmRequest, caller: Option<&Caller>) -> Bytes {
    encode(raft_request::Request::Alarm(req.clone()), caller)
}

/// The raft log entry for an Auth call by `caller`.
pub fn encode_auth(op: &AuthOp, caller: &Caller) -> Bytes {
    use raft_request::Request as R;
    let request = match op {
        AuthOp::Enable => R::AuthEnable(pb::AuthEnableRequest {}),
        AuthOp::Disable => R::AuthDisable(pb::AuthDisableRequest {}),
        AuthOp::Authenticate {
            name,
            token_prefix,
            checked_revision,
        } => R::Authenticate(internal::Authenticate {
            name: s(name),
            simple_token_prefix: s(token_prefix),
            checked_revision: *checked_revision,
        }),
        AuthOp::UserAdd {
            name,
            password_hash,
            no_password,
        } => R::UserAdd(pb::AuthUserAddRequest {
            name: s(name),
            password: String::new(),
            options: Some(crate::pb::authpb::UserAddOptions {
                no_password: *no_password,
            }),
            hashed_password: String::from_utf8_lossy(password_hash).into_owned(),
        }),
        AuthOp::UserDelete { name } => R::UserDelete(pb::AuthUserDeleteRequest { name: s(name) }),
        AuthOp::UserChangePassword {
            name,
            password_hash,
        } => R::UserChangePassword(pb::AuthUserChangePasswordRequest {
            name: s(name),
            password: String::new(),
            hashed_password: String::from_utf8_lossy(password_hash).into_owned(),
        }),
        AuthOp::UserGrantRole { user, role } => R::UserGrantRole(pb::AuthUserGrantRoleRequest {
            user: s(user),
            role: s(role),
        }),
        AuthOp::UserRevokeRole { user, role } => R::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
            name: s(user),
            role: s(role),
        }),
        AuthOp::RoleAdd { name } => R::RoleAdd(pb::AuthRoleAddRequest { name: s(name) }),
        AuthOp::RoleDelete { name } => R::RoleDelete(pb::AuthRoleDeleteRequest { role: s(name) }),
        AuthOp::RoleGrantPermission { role, grant } => {
            R::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                name: s(role),
                perm: Some(crate::auth::ops::pb_permission(grant)),
            })
        }
        AuthOp::RoleRevokePermission {
            role,
            key,
            range_end,
        } => R::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
            role: s(role),
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(range_end),
        }),
        AuthOp::UserGet { name } => R::UserGet(pb::AuthUserGetRequest { name: s(name) }),
        AuthOp::UserList => R::UserList(pb::AuthUserListRequest {}),
        AuthOp::RoleGet { role } => R::RoleGet(pb::AuthRoleGetRequest { role: s(role) }),
        AuthOp::RoleList => R::RoleList(pb::AuthRoleListRequest {}),
    };
    encode(request, Some(caller))
}

fn auth_op(request: raft_request::Request) -> Result<AuthOp, String> {
    use raft_request::Request as R;
    Ok(match request {
        R::AuthEnable(_) => AuthOp::Enable,
        R::AuthDisable(_) => AuthOp::Disable,
        R::Authenticate(a) => AuthOp::Authenticate {
            name: a.name,
            token_prefix: a.simple_token_prefix,
            checked_revision: a.checked_revision,
        },
        R::UserAdd(u) => AuthOp::UserAdd {
            name: u.name,
            password_hash: u.hashed_password.into_bytes(),
            no_password: u.options.is_some_and(|o| o.no_password),
        },
        R::UserDelete(u) => AuthOp::UserDelete { name: u.name },
        R::UserChangePassword(u) => AuthOp::UserChangePassword {
            name: u.name,
            password_hash: u.hashed_password.into_bytes(),
        },
        R::UserGrantRole(g) => AuthOp::UserGrantRole {
            user: g.user,
            role: g.role,
        },
        R::UserRevokeRole(r) => AuthOp::UserRevokeRole {
            user: r.name,
            role: r.role,
        },
        R::RoleAdd(r) => AuthOp::RoleAdd { name: r.name },
        R::RoleDelete(r) => AuthOp::RoleDelete { name: r.role },
        R::RoleGrantPermission(g) => {
            let p = g.perm.unwrap_or_default();
            AuthOp::RoleGrantPermission {
                role: g.name,
                grant: Grant {
                    perm: crate::auth::ops::perm_type_from(p.perm_type)
                        .ok_or("a permission of unknown type")?,
                    key: p.key.to_vec(),
                    range_end: p.range_end.to_vec(),
                },
            }
        }
        R::RoleRevokePermission(r) => AuthOp::RoleRevokePermission {
            role: r.role,
            key: r.key.to_vec(),
            range_end: r.range_end.to_vec(),
        },
        R::UserGet(u) => AuthOp::UserGet { name: u.name },
        R::UserList(_) => AuthOp::UserList,
        R::RoleGet(r) => AuthOp::RoleGet { role: r.role },
        R::RoleList(_) => AuthOp::RoleList,
        _ => return Err("not an auth request".into()),
    })
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
    Auth(AuthOp),
    /// Maintenance.Alarm: GET, ACTIVATE or DEACTIVATE (enum numbers checked at apply).
    Alarm(pb::AlarmRequest),
}

/// A decoded entry and who asked for it (`None`: the member itself).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub op: EntryOp,
    pub caller: Option<Caller>,
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
    encode(request, None)
}

/// Decodes a normal raft entry: a store write, an Auth call or a membership record
/// change, with its caller.
pub fn decode_entry(data: &[u8]) -> Result<Decoded, String> {
    decode_entry_from(data)
}

/// [`decode_entry`] from the entry's shared bytes: the request's bytes fields are slices
/// of them, not copies (issue 22: the apply of a put copied its key and value twice).
pub fn decode_shared_entry(data: &Bytes) -> Result<Decoded, String> {
    decode_entry_from(data.clone())
}

fn decode_entry_from(data: impl bytes::Buf) -> Result<Decoded, String> {
    use raft_request::Request as R;
    let req = RaftRequest::decode(data).map_err(|e| e.to_string())?;
    let caller = req.header.map(|h| Caller {
        user: h.username,
        revision: h.auth_revision,
    });
    let op = match req.request {
        Some(R::MemberUpdate(u)) => EntryOp::Member(MemberEntry::Update {
            id: u.id,
            peer_urls: u.peer_ur_ls,
        }),
        Some(R::MemberAttributes(a)) => EntryOp::Member(MemberEntry::Attributes {
            id: a.id,
            name: a.name,
            client_urls: a.client_urls,
        }),
        Some(
            r @ (R::AuthEnable(_)
            | R::AuthDisable(_)
            | R::Authenticate(_)
            | R::UserAdd(_)
            | R::UserDelete(_)
            | R::UserChangePassword(_)
            | R::UserGrantRole(_)
            | R::UserRevokeRole(_)
            | R::RoleAdd(_)
            | R::RoleDelete(_)
            | R::RoleGrantPermission(_)
            | R::RoleRevokePermission(_)
            | R::UserGet(_)
            | R::UserList(_)
            | R::RoleGet(_)
            | R::RoleList(_)),
        ) => EntryOp::Auth(auth_op(r)?),
        Some(R::Alarm(a)) => EntryOp::Alarm(a),
        other => EntryOp::Op(store_op(other)?),
    };
    Ok(Decoded { op, caller })
}

pub fn decode_raft_request(data: &[u8]) -> Result<mvcc::Op, String> {
    match decode_entry(data)?.op {
        EntryOp::Op(op) => Ok(op),
        _ => Err("not a store write".into()),
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
        Some(_) => return Err("not a store write".into()),
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

    /// The direct put encoding is byte for byte what prost writes for the same message,
    /// for every combination of set and default fields, with and without a caller (and a
    /// caller with default fields), and decodes back to the same op and caller.
    #[test]
    fn a_put_encoded_directly_is_the_message_prost_encodes() {
        let values: [Vec<u8>; 3] = [vec![], b"v".to_vec(), vec![7; 300]];
        let callers = [
            None,
            Some(Caller::default()),
            Some(Caller {
                user: "root".into(),
                revision: 0,
            }),
            Some(Caller {
                user: String::new(),
                revision: 1 << 40,
            }),
            Some(Caller {
                user: "u".repeat(200),
                revision: 3,
            }),
        ];
        let mut cases = 0;
        for key in [vec![], b"k".to_vec(), vec![b'x'; 130]] {
            for value in &values {
                for lease in [0, 1, -7, i64::MAX] {
                    for flags in 0..8u8 {
                        let put = mvcc::PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            lease,
                            prev_kv: flags & 1 != 0,
                            ignore_value: flags & 2 != 0,
                            ignore_lease: flags & 4 != 0,
                        };
                        let op = mvcc::Op::Put(put.clone());
                        for caller in &callers {
                            let direct = encode_put(&put, caller.as_ref());
                            let prost = encode(store_request(&op), caller.as_ref());
                            assert_eq!(direct, prost, "{put:?} {caller:?}");
                            cases += 1;
                        }
                        let caller = Caller {
                            user: "me".into(),
                            revision: 2,
                        };
                        let bytes = encode_request_as(&op, &caller);
                        for d in [decode_entry(&bytes), decode_shared_entry(&bytes)] {
                            let d = d.unwrap();
                            assert!(matches!(&d.op, EntryOp::Op(back) if *back == op));
                            assert_eq!(d.caller.as_ref(), Some(&caller));
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 3 * 4 * 8 * 5);
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
            raw_bytes_max: 0,
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
        let caller = Caller {
            user: "alice".into(),
            revision: 7,
        };
        let op = mvcc::Op::Put(mvcc::PutRequest::default());
        let d = decode_entry(&encode_request_as(&op, &caller)).unwrap();
        assert_eq!(d.op, EntryOp::Op(op.clone()));
        assert_eq!(d.caller, Some(caller.clone()));
        assert_eq!(
            decode_entry(&encode_raft_request(&op)).unwrap().caller,
            None
        );
        for a in [
            AuthOp::Enable,
            AuthOp::Disable,
            AuthOp::Authenticate {
                name: "u".into(),
                token_prefix: "p".into(),
                checked_revision: 3,
            },
            AuthOp::UserAdd {
                name: "u".into(),
                password_hash: b"$2a$10$x".to_vec(),
                no_password: true,
            },
            AuthOp::UserDelete { name: "u".into() },
            AuthOp::UserChangePassword {
                name: "u".into(),
                password_hash: b"h".to_vec(),
            },
            AuthOp::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthOp::UserRevokeRole {
                user: "u".into(),
                role: "r".into(),
            },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::RoleDelete { name: "r".into() },
            AuthOp::RoleGrantPermission {
                role: "r".into(),
                grant: crate::auth::state::grant(
                    crate::auth::perms::PermType::ReadWrite,
                    b"a",
                    b"\0",
                ),
            },
            AuthOp::RoleRevokePermission {
                role: "r".into(),
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            },
            AuthOp::UserGet { name: "u".into() },
            AuthOp::UserList,
            AuthOp::RoleGet { role: "r".into() },
            AuthOp::RoleList,
        ] {
            let d = decode_entry(&encode_auth(&a, &caller)).unwrap();
            assert_eq!(d.op, EntryOp::Auth(a));
            assert_eq!(d.caller, Some(caller.clone()));
        }
        assert!(decode_raft_request(&[0xff, 0xff]).is_err());
    }
}
