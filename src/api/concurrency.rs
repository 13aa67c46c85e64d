//! `v3lockpb.Lock` and `v3electionpb.Election`: etcd's distributed lock and leader
//! election, served by the member itself with etcd's `concurrency` recipes.
//!
//! Runs on: every core. A lock or a candidacy is a key under the name's prefix, written
//! with the caller's lease; the holder is the key with the lowest create revision, and a
//! waiter waits for the deletion of the key created just before its own (each waiter
//! watches one predecessor, not the whole queue). The waits use a core-local
//! `Subscription` (`node`) taken before the read they follow, so no deletion is missed between
//! the read and the wait.
//!
//! Invariants: a Lock or Campaign call that ends before it returns (the client went
//! away) deletes the key it wrote, as etcd's do; the returned key's create revision is
//! the fencing token (strictly larger for each later holder).

use super::convert;
use super::errors::{status_from_auth, EtcdError};
use super::services::{decode, encode, Services};
use crate::auth::Caller;
use crate::grpc::{Call, Request, Responses, Status};
use crate::mvcc::{
    self, Change, Compare, CompareResult, CompareTarget, DeleteRangeRequest, Op, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TargetUnion,
    TxnRequest, TxnResponse,
};
use crate::pb::v3electionpb as epb;
use crate::pb::v3lockpb as lpb;
use bytes::Bytes;
use std::rc::Rc;

/// The TTL of the lease a Lock or Campaign without one gets (clientv3 concurrency's
/// default session TTL).
pub const SESSION_TTL_DEFAULT_S: i64 = 60;

/// A failed create-if-absent txn reads the key that exists: its absence is a Keel bug.
fn key_missing_from_txn() -> Status {
    let e = crate::mesh::ServerError::Internal("the txn's failure branch read no key".into());
    Status::from(e)
}

fn no_leader() -> Status {
    EtcdError::ElectionNoLeader.status()
}

fn not_leader() -> Status {
    EtcdError::ElectionNotLeader.status()
}

fn missing_leader_key() -> Status {
    EtcdError::ElectionMissingLeaderKey.status()
}

/// etcd's GetPrefixRangeEnd: the end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// `name/` + the lease ID in lower-case hex: the key etcd's recipes write.
fn member_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The one key under `prefix` with the lowest (`first`) or, among those created at or
/// before `max_create_revision`, the highest create revision.
fn top_by_create(prefix: &[u8], first: bool, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first {
            SortOrder::Ascend
        } else {
            SortOrder::Descend
        },
        sort_target: SortTarget::Create,
        max_create_revision,
        ..Default::default()
    }
}

fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

fn range_of(r: &ResponseOp) -> Option<&RangeResponse> {
    match r {
        ResponseOp::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// Deletes `key` (if its create revision is still `revision`) unless disarmed: the
/// cleanup of a Lock or Campaign whose caller went away.
struct Withdraw {
    services: Rc<Services>,
    caller: Caller,
    key: Vec<u8>,
    revision: i64,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let s = self.services.clone();
        let txn = TxnRequest {
            compare: vec![create_revision_is(&self.key, self.revision)],
            success: vec![RequestOp::RequestDeleteRange(DeleteRangeRequest {
                key: std::mem::take(&mut self.key),
                ..Default::default()
            })],
            failure: vec![],
        };
        let caller = std::mem::take(&mut self.caller);
        glommio::spawn_local(async move {
            let _ = s.write(&Op::Txn(txn), &caller).await;
        })
        .detach();
    }
}

impl Services {
    async fn txn_op(&self, txn: TxnRequest, caller: &Caller) -> Result<(TxnResponse, u64), Status> {
        let (res, term) = self.write(&Op::Txn(txn), caller).await?;
        Ok((res.into_txn(), term))
    }

    /// A lease for a call that brought none (etcd's NewSession grants one).
    async fn session_lease(&self, lease: i64, caller: &Caller) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let id = self.lease_ids().next();
        let ttl = SESSION_TTL_DEFAULT_S.max(self.lease_config().min_ttl_s);
        let op = Op::LeaseGrant(mvcc::LeaseGrantRequest { id, ttl });
        self.write(&op, caller).await?;
        Ok(id)
    }

    /// etcd's waitDeletes: until no key under `prefix` created at or before
    /// `max_create_revision` is left, waits for the deletion of the newest such key.
    /// Returns the revision and raft term of the last read.
    async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
        caller: &Caller,
    ) -> Result<(i64, u64), Status> {
        let end = prefix_end(prefix);
        self.check_prefix_read(prefix, caller).await?;
        loop {
            let sub = self.node().subscribe(prefix, &end);
            let req = top_by_create(prefix, false, max_create_revision);
            let (resp, term) = self.node().range(req, true).await?;
            let Some(last) = resp.kvs.first() else {
                return Ok((resp.header.revision, term));
            };
            while let Some(change) = sub.next().await {
                if let Change::Delete { rev, key, .. } = &change {
                    if key == &last.key && rev.main > resp.header.revision {
                        break;
                    }
                }
            }
        }
    }

    pub async fn lock(self: &Rc<Self>, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<lpb::LockRequest>(&body)?;
        let caller = self.caller(call).await?;
        let lease = self.session_lease(req.lease, &caller).await?;
        let prefix = prefix_of(&req.name);
        let key = member_key(&prefix, lease);
        let owner = RequestOp::RequestRange(top_by_create(&prefix, true, 0));
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![
                RequestOp::RequestPut(PutRequest {
                    key: key.clone(),
                    lease,
                    ..Default::default()
                }),
                owner.clone(),
            ],
            failure: vec![
                RequestOp::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                }),
                owner,
            ],
        };
        let (resp, term) = self.txn_op(txn, &caller).await?;
        let my_revision = if resp.succeeded {
            resp.header.revision
        } else {
            resp.responses
                .first()
                .and_then(range_of)
                .and_then(|r| r.kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or_else(key_missing_from_txn)?
        };
        let owner = resp.responses.get(1).and_then(range_of);
        let held = owner
            .and_then(|r| r.kvs.first())
            .is_none_or(|kv| kv.create_revision == my_revision);
        let (revision, term) = if held {
            (resp.header.revision, term)
        } else {
            let mut withdraw = Withdraw {
                services: self.clone(),
                caller: caller.clone(),
                key: key.clone(),
                revision: my_revision,
                armed: true,
            };
            let out = self.wait_deletes(&prefix, my_revision - 1, &caller).await;
            withdraw.armed = out.is_err();
            out?
        };
        Ok(encode(&lpb::LockResponse {
            header: Some(self.header(revision, term)),
            key: key.into(),
        }))
    }

    pub async fn unlock(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<lpb::UnlockRequest>(&body)?;
        let caller = self.caller(call).await?;
        let op = Op::DeleteRange(DeleteRangeRequest {
            key: req.key.to_vec(),
            ..Default::default()
        });
        let (res, term) = self.write(&op, &caller).await?;
        let revision = res.into_delete_range().header.revision;
        Ok(encode(&lpb::UnlockResponse {
            header: Some(self.header(revision, term)),
        }))
    }

    pub async fn campaign(self: &Rc<Self>, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<epb::CampaignRequest>(&body)?;
        let caller = self.caller(call).await?;
        let lease = self.session_lease(req.lease, &caller).await?;
        let prefix = prefix_of(&req.name);
        let key = member_key(&prefix, lease);
        let txn = TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![RequestOp::RequestPut(PutRequest {
                key: key.clone(),
                value: req.value.to_vec(),
                lease,
                ..Default::default()
            })],
            failure: vec![RequestOp::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let (resp, term) = self.txn_op(txn, &caller).await?;
        let mut leader_revision = resp.header.revision;
        if !resp.succeeded {
            let kv = resp
                .responses
                .first()
                .and_then(range_of)
                .and_then(|r| r.kvs.first())
                .ok_or_else(key_missing_from_txn)?;
            leader_revision = kv.create_revision;
            if kv.value != req.value {
                if let Err(e) = self
                    .proclaim_as(&key, leader_revision, lease, &req.value, &caller)
                    .await
                {
                    let _ = self.resign_as(&key, leader_revision, &caller).await;
                    return Err(e);
                }
            }
        }
        let mut withdraw = Withdraw {
            services: self.clone(),
            caller: caller.clone(),
            key: key.clone(),
            revision: leader_revision,
            armed: true,
        };
        let out = self
            .wait_deletes(&prefix, leader_revision - 1, &caller)
            .await;
        withdraw.armed = false;
        out?;
        Ok(encode(&epb::CampaignResponse {
            header: Some(self.header(resp.header.revision, term)),
            leader: Some(epb::LeaderKey {
                name: req.name,
                key: key.into(),
                rev: leader_revision,
                lease,
            }),
        }))
    }

    async fn proclaim_as(
        &self,
        key: &[u8],
        revision: i64,
        lease: i64,
        value: &[u8],
        caller: &Caller,
    ) -> Result<(TxnResponse, u64), Status> {
        let txn = TxnRequest {
            compare: vec![create_revision_is(key, revision)],
            success: vec![RequestOp::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            })],
            failure: vec![],
        };
        let (resp, term) = self.txn_op(txn, caller).await?;
        if !resp.succeeded {
            return Err(not_leader());
        }
        Ok((resp, term))
    }

    async fn resign_as(
        &self,
        key: &[u8],
        revision: i64,
        caller: &Caller,
    ) -> Result<(TxnResponse, u64), Status> {
        let txn = TxnRequest {
            compare: vec![create_revision_is(key, revision)],
            success: vec![RequestOp::RequestDeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })],
            failure: vec![],
        };
        self.txn_op(txn, caller).await
    }

    /// The Election and Lock reads of a prefix are the caller's: READ on it.
    async fn check_prefix_read(&self, prefix: &[u8], caller: &Caller) -> Result<(), Status> {
        if !self.node().auth_enabled() {
            return Ok(());
        }
        self.node()
            .auth_view()
            .check_read(caller, prefix, &prefix_end(prefix))
            .map_err(status_from_auth)
    }

    pub async fn proclaim(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<epb::ProclaimRequest>(&body)?;
        let caller = self.caller(call).await?;
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let (resp, term) = self
            .proclaim_as(&leader.key, leader.rev, leader.lease, &req.value, &caller)
            .await?;
        Ok(encode(&epb::ProclaimResponse {
            header: Some(self.header(resp.header.revision, term)),
        }))
    }

    pub async fn resign(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<epb::ResignRequest>(&body)?;
        let caller = self.caller(call).await?;
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let (resp, term) = self.resign_as(&leader.key, leader.rev, &caller).await?;
        Ok(encode(&epb::ResignResponse {
            header: Some(self.header(resp.header.revision, term)),
        }))
    }

    pub async fn leader(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<epb::LeaderRequest>(&body)?;
        let caller = self.caller(call).await?;
        let prefix = prefix_of(&req.name);
        self.check_prefix_read(&prefix, &caller).await?;
        let (resp, term) = self
            .node()
            .range(top_by_create(&prefix, true, 0), true)
            .await?;
        let kv = resp.kvs.into_iter().next().ok_or_else(no_leader)?;
        Ok(encode(&epb::LeaderResponse {
            header: Some(self.header(resp.header.revision, term)),
            kv: Some(convert::key_value(kv)),
        }))
    }

    /// etcd's Election.Observe: the current leader's key-value, then every new value it
    /// proclaims, then (once it resigns or its lease ends) the next leader's, and so on.
    pub async fn observe(&self, mut req: Request, res: Responses) -> Result<(), Status> {
        let message = req.messages.single().await?;
        let name = decode::<epb::LeaderRequest>(&message)?.name;
        let caller = self.caller(&req.call()).await?;
        let prefix = prefix_of(&name);
        self.check_prefix_read(&prefix, &caller).await?;
        let end = prefix_end(&prefix);
        let send = |revision: i64, kv: mvcc::KeyValue| {
            let term = self.node().watermark().raft_term;
            encode(&epb::LeaderResponse {
                header: Some(self.header(revision, term)),
                kv: Some(convert::key_value(kv)),
            })
        };
        loop {
            let sub = self.node().subscribe(&prefix, &end);
            let (resp, _) = self
                .node()
                .range(top_by_create(&prefix, true, 0), true)
                .await?;
            let (leader, from) = match resp.kvs.into_iter().next() {
                Some(kv) => (kv, resp.header.revision),
                None => {
                    // Wait for the first key put under the prefix (deletes are skipped).
                    let mut found = None;
                    while let Some(change) = sub.next().await {
                        if let Change::Put { rev, kv, .. } = change {
                            if rev.main > resp.header.revision {
                                found = Some((kv, rev.main));
                                break;
                            }
                        }
                    }
                    match found {
                        Some(f) => f,
                        None => continue, // fell behind: read again
                    }
                }
            };
            res.send(send(from, leader.clone())).await?;
            // Follow that key until it is deleted.
            while let Some(change) = sub.next().await {
                match change {
                    Change::Put { rev, kv, .. } if kv.key == leader.key && rev.main > from => {
                        res.send(send(rev.main, kv)).await?;
                    }
                    Change::Delete { rev, key, .. } if key == leader.key && rev.main > from => {
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(member_key(b"lk/", 0x694d), b"lk/694d".to_vec());
    }
}
