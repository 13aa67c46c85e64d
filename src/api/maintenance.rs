//! Maintenance calls beyond Status, HashKV and MoveLeader: Alarm, Defragment, Hash and
//! Snapshot, and the backend quota (etcd's `quotaKVServer` / `quotaLeaseServer`).
//!
//! Runs on: every core. Alarms go through raft (`raft::alarm` applies them); the quota is
//! checked here against the db size of the core's last round, as etcd checks its own
//! backend's size before proposing.

use super::errors::{status_unmapped_auth, EtcdError};
use super::services::{decode, encode, Services};
use crate::auth::Caller;
use crate::grpc::{Call, Code, Request, Responses, Status};
use crate::mesh::{AlarmList, ToRaft, ALARM_NOSPACE};
use crate::mvcc::{Op, RequestOp};
use crate::pb::etcdserverpb as pb;
use bytes::Bytes;

/// etcd's `DefaultQuotaBytes` (`--quota-backend-bytes 0`).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// Entries hashed between yields.
const HASH_SLICE_ENTRIES: usize = 4096;

/// etcd's per-request overheads in the quota's cost (quota.go).
const KV_OVERHEAD: u64 = 256;
const LEASE_OVERHEAD: u64 = 64;

/// What a write costs against the quota, as etcd counts it: a Put 256 + key + value; a Txn
/// the larger of its branches' top-level puts; a LeaseGrant 64. `None`: not checked.
pub fn quota_cost(op: &Op) -> Option<u64> {
    fn branch(ops: &[RequestOp]) -> u64 {
        ops.iter()
            .map(|o| match o {
                RequestOp::RequestPut(p) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
                _ => 0,
            })
            .sum()
    }
    match op {
        Op::Put(p) => Some(KV_OVERHEAD + (p.key.len() + p.value.len()) as u64),
        Op::Txn(t) => Some(branch(&t.success).max(branch(&t.failure))),
        Op::LeaseGrant(_) => Some(LEASE_OVERHEAD),
        _ => None,
    }
}

fn alarm_member(a: &crate::mesh::Alarm) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: a.member,
        alarm: a.kind,
    }
}

impl Services {
    /// etcd's quota check before a write is proposed: the db's size plus the write's cost
    /// must stay below `--quota-backend-bytes`; past it the member raises NOSPACE for
    /// itself (through raft, once applied every member refuses growing writes) and the
    /// write fails with "database space exceeded".
    pub(crate) async fn check_quota(&self, op: &Op) -> Result<(), Status> {
        let Some(cost) = quota_cost(op) else {
            return Ok(());
        };
        if self.node().db_bytes().saturating_add(cost) < self.quota_bytes() {
            return Ok(());
        }
        let req = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.header(0, 0).member_id,
            alarm: ALARM_NOSPACE,
        };
        let data = crate::raft::entry::encode_alarm(&req, None);
        // The write fails whether or not the alarm made it (etcd ignores that error too).
        let _ = self
            .client()
            .call::<AlarmList>(|to| ToRaft::ProposeAlarm { to, data })
            .await;
        Err(EtcdError::NoSpace.status())
    }

    /// Maintenance.Alarm: GET, ACTIVATE, DEACTIVATE through raft. Under auth (etcd
    /// 3.5.29+): GET needs a user, ACTIVATE and DEACTIVATE an admin.
    pub async fn alarm(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AlarmRequest>(&body)?;
        let caller = if req.action == pb::alarm_request::AlarmAction::Get as i32 {
            self.user(call).await?
        } else {
            self.admin(call).await?
        };
        if !(0..=2).contains(&req.action) {
            return Err(Status::new(
                crate::grpc::Code::InvalidArgument,
                format!("invalid alarm action {}", req.action),
            ));
        }
        let data = crate::raft::entry::encode_alarm(&req, Some(&caller));
        let a = self
            .client()
            .call::<AlarmList>(|to| ToRaft::ProposeAlarm { to, data })
            .await?;
        let term = a.raft_term;
        Ok(encode(&pb::AlarmResponse {
            header: Some(self.header(self.node().watermark().revision, term)),
            alarms: a.value.0.iter().map(alarm_member).collect(),
        }))
    }

    /// Maintenance.Snapshot: the member's state as of this core's last round, streamed as
    /// a bbolt file in etcd's layout (`raft::etcd_db`), in etcd's 32 KiB chunks with
    /// `remaining_bytes`, then one message whose blob is the sha256 of all bytes before
    /// (what `etcdctl snapshot save` checks). The snapshot is pinned (its pages are not
    /// reused while the stream lasts), read in slices with a yield between them, on the
    /// core that serves the connection: writes on the raft core go on meanwhile.
    pub async fn snapshot(&self, mut req: Request, res: Responses) -> Result<(), Status> {
        let message = req.messages.single().await?;
        decode::<pb::SnapshotRequest>(&message)?;
        self.admin_unmapped(&req.call()).await?;
        let started = std::time::Instant::now();
        let snap = self.node().with_shard(|s| s.snapshot().clone());
        let app = snap.app_meta();
        let failed = |e: crate::raft::etcd_db::Error| {
            crate::runtime::log::error("etcdserver/api/v3rpc", &format!("snapshot: {e}"));
            Status::new(Code::Internal, format!("snapshot: {e}"))
        };
        let mut export = crate::raft::etcd_db::Export::new(snap).map_err(failed)?;
        while !export.measure_some().map_err(failed)? {
            crate::runtime::yield_to_rings().await;
        }
        let total = export.total_bytes();
        crate::runtime::log::info(
            "etcdserver/api/v3rpc",
            &format!(
                "sending database snapshot to client (total {total} bytes, revision {}, index {})",
                app.current_revision, app.consistent_index
            ),
        );
        let header = self.header(app.current_revision, self.node().watermark().raft_term);
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut remaining = total;
        while let Some(chunk) = export.next_chunk().map_err(failed)? {
            sha.update(&chunk);
            remaining = remaining.saturating_sub(chunk.len() as u64);
            res.send(encode(&pb::SnapshotResponse {
                header: Some(header.clone()),
                remaining_bytes: remaining,
                blob: chunk.into(),
                ..Default::default()
            }))
            .await?;
            futures_lite::future::yield_now().await;
        }
        res.send(encode(&pb::SnapshotResponse {
            header: Some(header),
            remaining_bytes: 0,
            blob: sha.finish().as_ref().to_vec().into(),
            ..Default::default()
        }))
        .await?;
        crate::runtime::log::info(
            "etcdserver/api/v3rpc",
            &format!("sent database snapshot to client ({total} bytes)"),
        );
        crate::metrics::observe(crate::metrics::Hist::SnapshotSend, started.elapsed());
        Ok(())
    }

    /// Maintenance.Hash: a CRC-32 over every tree of the db (keys and values, tree by
    /// tree) as of this core's last round — the whole-db check etcd computes over its
    /// bbolt buckets. Members at the same applied index answer the same hash. Computed
    /// from the pinned snapshot in slices on this core, yielding between them.
    pub async fn hash(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::HashRequest>(&body)?;
        self.admin_unmapped(call).await?;
        let snap = self.node().with_shard(|s| s.snapshot().clone());
        let app = snap.app_meta();
        let mut h = crc32fast::Hasher::new();
        for tree in crate::mvcc::db::TreeId::ALL {
            h.update(&[tree as u8]);
            let mut start: Vec<u8> = Vec::new();
            loop {
                let mut n = 0usize;
                let mut last: Option<Vec<u8>> = None;
                for r in snap.range(tree, &start, b"") {
                    let (k, v) = r.map_err(|e| super::errors::status_from_db(&e))?;
                    h.update(k);
                    h.update(v);
                    n += 1;
                    if n == HASH_SLICE_ENTRIES {
                        last = Some(k.to_vec());
                        break;
                    }
                }
                match last {
                    Some(mut k) => {
                        k.push(0);
                        start = k;
                        crate::runtime::yield_to_rings().await;
                    }
                    None => break,
                }
            }
        }
        Ok(encode(&pb::HashResponse {
            header: Some(self.header(app.current_revision, self.node().watermark().raft_term)),
            hash: h.finalize(),
        }))
    }

    /// Maintenance.Defragment: this member's db shrinks to its live pages, moved in slices
    /// on the raft core between rounds (no stall; see `raft::defrag`). Admin only, with
    /// etcd's unmapped auth errors.
    pub async fn defragment(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::DefragmentRequest>(&body)?;
        self.admin_unmapped(call).await?;
        let a = self
            .client()
            .call::<crate::mesh::Defragmented>(|to| ToRaft::Defrag { to })
            .await?;
        Ok(encode(&pb::DefragmentResponse {
            header: Some(self.header(self.node().watermark().revision, a.raft_term)),
        }))
    }

    /// The admin check of Defragment, Snapshot and Hash: etcd returns its auth errors
    /// unmapped (code Unknown, "auth: …").
    pub(crate) async fn admin_unmapped(&self, call: &Call) -> Result<Caller, Status> {
        let caller = self.caller(call).await?;
        self.node()
            .auth_view()
            .check_admin(&caller)
            .map_err(status_unmapped_auth)?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{LeaseGrantRequest, PutRequest, TxnRequest};

    fn put(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    #[test]
    fn costs_are_etcds() {
        assert_eq!(quota_cost(&Op::Put(put("ab", "cde"))), Some(256 + 5));
        let t = TxnRequest {
            compare: Vec::new(),
            success: vec![
                RequestOp::RequestPut(put("a", "b")),
                RequestOp::RequestPut(put("c", "")),
            ],
            failure: vec![RequestOp::RequestPut(put("k", &"v".repeat(600)))],
        };
        assert_eq!(quota_cost(&Op::Txn(t)), Some(256 + 601));
        assert_eq!(
            quota_cost(&Op::LeaseGrant(LeaseGrantRequest::default())),
            Some(64)
        );
        assert_eq!(quota_cost(&Op::Compaction(Default::default())), None);
    }
}
