//! The gRPC services a core serves: decode the prost request, check it as etcd's API
//! layer does, send it to the raft core, encode the reply with a full ResponseHeader.
//!
//! Runs on: every core, one `Services` per core (it holds that core's `RaftClient`).
//! Served now: KV (Range, Put, DeleteRange, Txn, Compact), Watch, Lease, Lock, Election,
//! Maintenance.Status and HashKV, Cluster.MemberList, grpc.health.v1.Health/Check. Range goes to the key-range
//! shards; writes and read-only Txn to the raft core. Every other method of etcd's API
//! answers UNIMPLEMENTED (the router's "unknown service" / "unknown method").

use super::auth::AuthConfig;
use super::convert;
use super::errors::{status_from_auth, status_from_mvcc, status_unmapped_auth, EtcdError};
use super::lease::{LeaseConfig, LeaseIds, Renewer};
use crate::auth::Caller;
use crate::failpoint;
use crate::grpc::{Call, Code, Message as Reply, Router, Status};
use crate::mesh::{
    HashKv, LeaderMoved, MemberChanged, MemberInfo, MemberOp, Members, StatusInfo, ToRaft,
};
use crate::mvcc::{self, Op, OpResponse};
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::pb::grpc::health::v1 as health;
use crate::raft::RaftClient;
use bytes::Bytes;
use http::HeaderMap;
use prost::Message;
use std::rc::Rc;

/// The fixed part of every ResponseHeader this member sends.
#[derive(Clone, Copy, Debug)]
pub struct HeaderInfo {
    pub cluster_id: u64,
    pub member_id: u64,
}

pub struct Services {
    client: Rc<RaftClient>,
    node: Rc<Node>,
    header: HeaderInfo,
    max_request_bytes: usize,
    max_txn_ops: usize,
    lease_config: LeaseConfig,
    lease_ids: LeaseIds,
    renewer: Rc<Renewer>,
    pub(crate) auth: AuthConfig,
    /// `--quota-backend-bytes` (0 given: etcd's 2 GiB).
    quota_bytes: u64,
    /// `--max-response-bytes`: a Range answer is built up to this many bytes only.
    max_response_bytes: usize,
}

pub(crate) fn decode<M: Message + Default>(body: &Bytes) -> Result<M, Status> {
    // grpc-go's code and wording for a request that does not unmarshal.
    let started = std::time::Instant::now();
    let decoded = M::decode(body.clone());
    crate::metrics::observe(crate::metrics::Hist::StageDecode, started.elapsed());
    decoded.map_err(|e| {
        Status::new(
            Code::Internal,
            format!("grpc: error unmarshalling request: {e}"),
        )
    })
}

pub(crate) fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// grpc-go's refusal of a message over its send limit, which etcd clients show.
pub(crate) fn response_too_large(bytes: u64, max: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("grpc: trying to send message larger than max ({bytes} vs. {max})"),
    )
}

/// An `etcdserverpb.RangeResponse` around raw kvs: each part's bytes as they are, then
/// the header, `more` and `count` (protobuf parsers take fields in any order), sent one
/// piece after another: the kvs are never copied again.
fn encode_raw_range(
    raw: crate::mvcc::RawParts,
    header: pb::ResponseHeader,
    more: bool,
    count: i64,
    max: usize,
) -> Result<Reply, Status> {
    use prost::encoding;
    let mut tail = Vec::with_capacity(64);
    encoding::message::encode(1, &header, &mut tail);
    if more {
        encoding::bool::encode(3, &more, &mut tail);
    }
    if count != 0 {
        encoding::int64::encode(4, &count, &mut tail);
    }
    let total = raw.total_bytes() + tail.len() as u64;
    if raw.passed_bound() || total > max as u64 {
        return Err(response_too_large(total, max));
    }
    let mut pieces: Vec<Bytes> = raw
        .0
        .into_iter()
        .flat_map(|p| p.chunks)
        .filter(|c| !c.is_empty())
        .map(Bytes::from)
        .collect();
    pieces.push(Bytes::from(tail));
    Ok(Reply::Pieces(pieces))
}

fn request_too_large() -> Status {
    EtcdError::RequestTooLarge.status()
}

impl Services {
    pub fn new(
        client: Rc<RaftClient>,
        node: Rc<Node>,
        header: HeaderInfo,
        max_request_bytes: usize,
        max_txn_ops: usize,
        lease_config: LeaseConfig,
    ) -> Services {
        Services {
            renewer: Renewer::new(client.clone(), node.clone()),
            client,
            node,
            header,
            max_request_bytes,
            max_txn_ops,
            lease_config,
            lease_ids: LeaseIds::new(lease_config),
            auth: AuthConfig::default(),
            quota_bytes: super::maintenance::DEFAULT_QUOTA_BYTES,
            max_response_bytes: i32::MAX as usize,
        }
    }

    /// `--max-response-bytes`.
    pub fn with_response_max(mut self, bytes: usize) -> Services {
        self.max_response_bytes = bytes;
        self
    }

    /// `--quota-backend-bytes` (0: etcd's default, 2 GiB).
    pub fn with_quota(mut self, bytes: u64) -> Services {
        self.quota_bytes = if bytes == 0 {
            super::maintenance::DEFAULT_QUOTA_BYTES
        } else {
            bytes
        };
        self
    }

    pub(crate) fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// How this member authenticates callers (default: simple tokens, no CN users).
    pub fn with_auth(mut self, auth: AuthConfig) -> Services {
        self.auth = auth;
        self
    }

    pub(crate) fn client(&self) -> &Rc<RaftClient> {
        &self.client
    }

    pub(crate) fn node(&self) -> &Rc<Node> {
        &self.node
    }

    pub(crate) fn lease_config(&self) -> LeaseConfig {
        self.lease_config
    }

    pub(crate) fn lease_ids(&self) -> &LeaseIds {
        &self.lease_ids
    }

    pub(crate) fn renewer(&self) -> &Rc<Renewer> {
        &self.renewer
    }

    pub fn header(&self, revision: i64, raft_term: u64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.header.cluster_id,
            member_id: self.header.member_id,
            revision,
            raft_term,
        }
    }

    /// The wire response for a store response, with this member's full header (the
    /// revision is the store's; nested txn responses keep their own, as etcd's do).
    fn encode_response(&self, res: OpResponse, term: u64) -> Bytes {
        match res {
            OpResponse::Range(r) => {
                let h = self.header(r.header.revision, term);
                encode(&convert::range_response(r, h))
            }
            OpResponse::Put(r) => {
                let h = self.header(r.header.revision, term);
                encode(&convert::put_response(r, h))
            }
            OpResponse::DeleteRange(r) => {
                let h = self.header(r.header.revision, term);
                encode(&convert::delete_range_response(r, h))
            }
            OpResponse::Txn(r) => {
                let h = self.header(r.header.revision, term);
                encode(&convert::txn_response(r, h))
            }
            OpResponse::Compaction(r) => encode(&pb::CompactionResponse {
                header: Some(self.header(r.header.revision, term)),
            }),
            OpResponse::LeaseGrant(_)
            | OpResponse::LeaseRevoke(_)
            | OpResponse::LeaseCheckpoint(_) => {
                unreachable!("lease responses are encoded by the Lease service")
            }
        }
    }

    /// A learner serves no stream (Watch, LeaseKeepAlive, Observe), as etcd's stream
    /// interceptor refuses them.
    fn check_stream(&self) -> Result<(), Status> {
        if self.client.is_learner() {
            return Err(EtcdError::NotSupportedForLearner.status());
        }
        Ok(())
    }

    /// clientv3's `WithRequireLeader` sends `hasleader: true`: such a request fails at once
    /// while this member knows of no leader, as etcd's interceptor does.
    fn check_leader(&self, md: &HeaderMap) -> Result<(), Status> {
        let required = md.get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        if required && self.client.known_leader() == 0 {
            return Err(EtcdError::NoLeader.status());
        }
        Ok(())
    }

    async fn read(&self, op: Op, linearizable: bool) -> Result<(OpResponse, u64), Status> {
        let a = self
            .client
            .call(|to| ToRaft::Read {
                to,
                op,
                linearizable,
            })
            .await?;
        Ok((a.value, a.raft_term))
    }

    /// A write proposed as `caller`'s (checked at apply against the auth state then).
    pub(crate) async fn write(
        &self,
        op: &Op,
        caller: &Caller,
    ) -> Result<(OpResponse, u64), Status> {
        let data = crate::raft::entry::encode_request_as(op, caller);
        if data.len() > self.max_request_bytes {
            return Err(request_too_large());
        }
        self.check_quota(op).await?;
        let a = self.client.call(|to| ToRaft::Propose { to, data }).await?;
        Ok((a.value, a.raft_term))
    }

    pub async fn range(&self, call: &Call, body: Bytes) -> Result<Reply, Status> {
        let mut req = convert::range_request(decode::<pb::RangeRequest>(&body)?)?;
        // The kvs as the wire bytes of their records where etcd's options allow: one
        // copy each, and never more than a sendable answer (`RawKvs`).
        req.raw_bytes_max = self.max_response_bytes;
        mvcc::validate::check_range_request(&req).map_err(|e| status_from_mvcc(&e))?;
        if self.node.auth_enabled() {
            // `caller` caught this core up with the member's rounds: its view is current.
            let caller = self.caller(call).await?;
            self.node
                .auth_view()
                .check_read(&caller, &req.key, &req.range_end)
                .map_err(status_from_auth)?;
        }
        // Served by the key-range shards (see `node`), not the raft core.
        let linearizable = served_linearizable(!req.serializable);
        let (mut res, term) = self.node.range(req, linearizable).await?;
        match res.raw.take() {
            Some(raw) => {
                let h = self.header(res.header.revision, term);
                encode_raw_range(raw, h, res.more, res.count, self.max_response_bytes)
            }
            None => {
                // Sorted or filtered: decoded kvs; refused before encoding if too large.
                let h = self.header(res.header.revision, term);
                let pb = convert::range_response(res, h);
                let len = pb.encoded_len();
                if len > self.max_response_bytes {
                    return Err(response_too_large(len as u64, self.max_response_bytes));
                }
                Ok(encode(&pb).into())
            }
        }
    }

    pub async fn put(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = convert::put_request(decode::<pb::PutRequest>(&body)?);
        mvcc::validate::check_put_request(&req).map_err(|e| status_from_mvcc(&e))?;
        let caller = self.caller(call).await?;
        let (res, term) = self.write(&Op::Put(req), &caller).await?;
        Ok(self.encode_response(res, term))
    }

    pub async fn delete_range(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = convert::delete_range_request(decode::<pb::DeleteRangeRequest>(&body)?);
        mvcc::validate::check_delete_request(&req).map_err(|e| status_from_mvcc(&e))?;
        let caller = self.caller(call).await?;
        let (res, term) = self.write(&Op::DeleteRange(req), &caller).await?;
        Ok(self.encode_response(res, term))
    }

    pub async fn txn(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = convert::txn_request(decode::<pb::TxnRequest>(&body)?)?;
        mvcc::validate::check_txn_request(&req, self.max_txn_ops as i64)
            .map_err(|e| status_from_mvcc(&e))?;
        let caller = self.caller(call).await?;
        let (res, term) = if mvcc::is_txn_readonly(&req) {
            if self.node.auth_enabled() {
                // Served without raft: checked here, every compare and range.
                self.node
                    .auth_view()
                    .check_txn(&caller, &req)
                    .map_err(status_from_auth)?;
            }
            // etcd serves a read-only txn without raft; linearizable unless every range in
            // it is serializable.
            let linearizable = served_linearizable(!txn_serializable(&req));
            self.read(Op::Txn(req), linearizable).await?
        } else {
            self.write(&Op::Txn(req), &caller).await?
        };
        Ok(self.encode_response(res, term))
    }

    pub async fn compact(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = convert::compaction_request(decode::<pb::CompactionRequest>(&body)?);
        let caller = self.admin(call).await?;
        let (res, term) = self.write(&Op::Compaction(req), &caller).await?;
        Ok(self.encode_response(res, term))
    }

    pub async fn status(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::StatusRequest>(&body)?;
        self.user(call).await?;
        let a = self
            .client
            .call::<StatusInfo>(|to| ToRaft::Status { to })
            .await?;
        let (s, term) = (a.value, a.raft_term);
        Ok(encode(&pb::StatusResponse {
            header: Some(self.header(s.revision, term)),
            version: crate::config::version::server().to_string(),
            db_size: s.db_size_bytes,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            // etcd reports a member without a leader this way, then each active alarm
            // in protobuf's compact text form.
            errors: {
                let mut errors = Vec::new();
                if s.leader == 0 {
                    errors.push(EtcdError::NoLeader.status().message);
                }
                for a in self.node.alarms().iter() {
                    errors.push(format!(
                        "memberID:{} alarm:{} ",
                        a.member,
                        crate::raft::alarm_name(a.kind)
                    ));
                }
                errors
            },
            db_size_in_use: s.db_size_in_use_bytes,
            is_learner: s.is_learner,
            ..Default::default()
        }))
    }

    pub async fn hash_kv(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::HashKvRequest>(&body)?;
        // etcd answers HashKV's auth refusals unmapped (code Unknown, "auth: …").
        let caller = self.caller(call).await?;
        self.node
            .auth_view()
            .check_admin(&caller)
            .map_err(status_unmapped_auth)?;
        let a = self
            .client
            .call(|to| ToRaft::HashKv {
                to,
                revision: req.revision,
            })
            .await?;
        let term = a.raft_term;
        let HashKv {
            hash,
            compact_revision,
            revision,
        } = a.value;
        Ok(encode(&pb::HashKvResponse {
            header: Some(self.header(revision, term)),
            hash,
            compact_revision,
            ..Default::default()
        }))
    }

    pub async fn member_list(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::MemberListRequest>(&body)?;
        self.user(call).await?;
        let a = self.client.call(|to| ToRaft::MemberList { to }).await?;
        let (Members(members), term) = (a.value, a.raft_term);
        Ok(encode(&pb::MemberListResponse {
            header: Some(self.header(0, term)),
            members: members.into_iter().map(pb_member).collect(),
        }))
    }

    /// A membership change through the raft core (the leader decides it); the reply lists
    /// the members after it is applied.
    async fn member_change(
        &self,
        op: MemberOp,
    ) -> Result<(Option<pb::Member>, Vec<pb::Member>, u64), Status> {
        let a = self.client.call(|to| ToRaft::Member { to, op }).await?;
        let (MemberChanged { member, members }, term) = (a.value, a.raft_term);
        Ok((
            member.map(pb_member),
            members.into_iter().map(pb_member).collect(),
            term,
        ))
    }

    pub async fn member_add(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::MemberAddRequest>(&body)?;
        self.admin(call).await?;
        for u in &req.peer_ur_ls {
            crate::config::Url::parse(u)
                .map_err(|e| Status::new(Code::InvalidArgument, format!("etcdserver: {e}")))?;
        }
        let op = MemberOp::Add {
            peer_urls: req.peer_ur_ls,
            learner: req.is_learner,
        };
        let (member, members, term) = self.member_change(op).await?;
        Ok(encode(&pb::MemberAddResponse {
            header: Some(self.header(0, term)),
            member,
            members,
        }))
    }

    pub async fn member_remove(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::MemberRemoveRequest>(&body)?;
        self.admin(call).await?;
        let (_, members, term) = self.member_change(MemberOp::Remove { id: req.id }).await?;
        Ok(encode(&pb::MemberRemoveResponse {
            header: Some(self.header(0, term)),
            members,
        }))
    }

    pub async fn member_update(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::MemberUpdateRequest>(&body)?;
        self.admin(call).await?;
        let op = MemberOp::Update {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        };
        let (_, members, term) = self.member_change(op).await?;
        Ok(encode(&pb::MemberUpdateResponse {
            header: Some(self.header(0, term)),
            members,
        }))
    }

    pub async fn member_promote(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::MemberPromoteRequest>(&body)?;
        self.admin(call).await?;
        let (_, members, term) = self.member_change(MemberOp::Promote { id: req.id }).await?;
        Ok(encode(&pb::MemberPromoteResponse {
            header: Some(self.header(0, term)),
            members,
        }))
    }

    /// Maintenance.MoveLeader: only the leader can hand over (etcd's "not leader" elsewhere).
    pub async fn move_leader(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::MoveLeaderRequest>(&body)?;
        self.admin(call).await?;
        let target = req.target_id;
        let a = self
            .client
            .call::<LeaderMoved>(|to| ToRaft::MoveLeader { to, target })
            .await?;
        let term = a.raft_term;
        Ok(encode(&pb::MoveLeaderResponse {
            header: Some(self.header(0, term)),
        }))
    }

    /// grpc.health.v1: SERVING once this member is serving (its raft core answers).
    pub async fn health_check(&self, _call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<health::HealthCheckRequest>(&body)?;
        let a = self
            .client
            .call::<StatusInfo>(|to| ToRaft::Status { to })
            .await;
        let serving = matches!(a, Ok(ref a) if a.value.leader != 0);
        let status = if serving {
            health::health_check_response::ServingStatus::Serving
        } else {
            health::health_check_response::ServingStatus::NotServing
        };
        Ok(encode(&health::HealthCheckResponse {
            status: status as i32,
        }))
    }
}

/// Whether a KV read the client asked to be linearizable is served as one: always, unless
/// the `stale-read` failpoint (a deliberately broken Keel, to prove the chaos harness
/// catches stale reads) serves it from the local store without a ReadIndex.
fn served_linearizable(requested: bool) -> bool {
    requested && !failpoint::is_on(failpoint::Point::StaleRead)
}

fn txn_serializable(req: &mvcc::TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op, mvcc::RequestOp::RequestRange(r) if r.serializable))
}

/// What a `--listen-metrics-urls` listener serves on one core: `/metrics`, `/health`,
/// `/livez`, `/readyz` over HTTP/1.1 (no gRPC service).
pub fn metrics_router(s: Rc<Services>) -> Router {
    let mut r = Router::new();
    r.set_http1(super::http::handler(s, super::http::Port::Metrics));
    r
}

/// The routes of one core.
pub fn router(s: Rc<Services>) -> Router {
    let mut r = Router::new();
    r.set_http1(super::http::handler(s.clone(), super::http::Port::Client));
    // `$map` turns a handler's error into the one on the wire.
    macro_rules! unary {
        ($path:expr, $method:ident) => {
            unary!($path, $method, |e: Status| e)
        };
        ($path:expr, $method:ident, $map:expr) => {{
            let s = s.clone();
            r.unary($path, move |call: Call, body: Bytes| {
                let s = s.clone();
                async move {
                    s.check_leader(&call.metadata)?;
                    s.$method(&call, body).await.map_err($map)
                }
            });
        }};
    }
    unary!("/etcdserverpb.KV/Range", range);
    unary!("/etcdserverpb.KV/Put", put);
    unary!("/etcdserverpb.KV/DeleteRange", delete_range);
    unary!("/etcdserverpb.KV/Txn", txn);
    unary!("/etcdserverpb.KV/Compact", compact);
    unary!("/etcdserverpb.Maintenance/Status", status);
    unary!("/etcdserverpb.Maintenance/HashKV", hash_kv);
    unary!("/etcdserverpb.Maintenance/Alarm", alarm);
    unary!("/etcdserverpb.Maintenance/Hash", hash);
    unary!("/etcdserverpb.Maintenance/Defragment", defragment);
    unary!("/etcdserverpb.Cluster/MemberList", member_list);
    unary!("/etcdserverpb.Cluster/MemberAdd", member_add);
    unary!("/etcdserverpb.Cluster/MemberRemove", member_remove);
    unary!("/etcdserverpb.Cluster/MemberUpdate", member_update);
    unary!("/etcdserverpb.Cluster/MemberPromote", member_promote);
    unary!("/etcdserverpb.Maintenance/MoveLeader", move_leader);
    unary!("/grpc.health.v1.Health/Check", health_check);
    unary!("/etcdserverpb.Lease/LeaseGrant", lease_grant);
    unary!("/etcdserverpb.Lease/LeaseRevoke", lease_revoke);
    unary!("/etcdserverpb.Lease/LeaseTimeToLive", lease_time_to_live);
    unary!("/etcdserverpb.Lease/LeaseLeases", lease_leases);
    unary!("/etcdserverpb.Auth/AuthEnable", auth_enable);
    unary!("/etcdserverpb.Auth/AuthDisable", auth_disable);
    unary!("/etcdserverpb.Auth/AuthStatus", auth_status);
    unary!("/etcdserverpb.Auth/Authenticate", authenticate);
    unary!("/etcdserverpb.Auth/UserAdd", user_add);
    unary!("/etcdserverpb.Auth/UserGet", user_get);
    unary!("/etcdserverpb.Auth/UserList", user_list);
    unary!("/etcdserverpb.Auth/UserDelete", user_delete);
    unary!(
        "/etcdserverpb.Auth/UserChangePassword",
        user_change_password
    );
    unary!("/etcdserverpb.Auth/UserGrantRole", user_grant_role);
    unary!("/etcdserverpb.Auth/UserRevokeRole", user_revoke_role);
    unary!("/etcdserverpb.Auth/RoleAdd", role_add);
    unary!("/etcdserverpb.Auth/RoleGet", role_get);
    unary!("/etcdserverpb.Auth/RoleList", role_list);
    unary!("/etcdserverpb.Auth/RoleDelete", role_delete);
    unary!(
        "/etcdserverpb.Auth/RoleGrantPermission",
        role_grant_permission
    );
    unary!(
        "/etcdserverpb.Auth/RoleRevokePermission",
        role_revoke_permission
    );
    // etcd serves Lock and Election through its own client, whose errors reach the
    // caller as gRPC code Unknown with etcd's message (e.g. a lock with an unknown lease).
    let unknown = |e: Status| Status::new(Code::Unknown, e.message);
    unary!("/v3lockpb.Lock/Lock", lock, unknown);
    unary!("/v3lockpb.Lock/Unlock", unlock, unknown);
    unary!("/v3electionpb.Election/Campaign", campaign, unknown);
    unary!("/v3electionpb.Election/Proclaim", proclaim, unknown);
    unary!("/v3electionpb.Election/Leader", leader, unknown);
    unary!("/v3electionpb.Election/Resign", resign, unknown);
    macro_rules! stream {
        ($path:expr, $method:ident) => {{
            let s = s.clone();
            r.route($path, move |req: crate::grpc::Request, res| {
                let s = s.clone();
                async move {
                    s.check_stream()?;
                    s.check_leader(&req.metadata)?;
                    s.$method(req, res).await
                }
            });
        }};
    }
    stream!("/etcdserverpb.Lease/LeaseKeepAlive", lease_keep_alive);
    stream!("/v3electionpb.Election/Observe", observe);
    {
        // Not refused on a learner (etcd serves Snapshot there too).
        let s = s.clone();
        r.route("/etcdserverpb.Maintenance/Snapshot", move |req, res| {
            let s = s.clone();
            async move { s.snapshot(req, res).await }
        });
    }
    {
        // grpc.health.v1 Watch: the status now, then the stream stays open (etcd's health
        // server sends again only when the status is set, which etcd does at start).
        let s = s.clone();
        r.route("/grpc.health.v1.Health/Watch", move |mut req, res| {
            let s = s.clone();
            async move {
                let message = req.messages.single().await?;
                let reply = s.health_check(&req.call(), message).await?;
                res.send(reply).await?;
                futures_lite::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let node = s.node.clone();
    let watch_s = s.clone();
    r.route_with_queue(
        "/etcdserverpb.Watch/Watch",
        Some(crate::watch::STREAM_QUEUE_MAX),
        move |req, res| {
            let refused = watch_s.check_stream();
            let node = node.clone();
            let auth = watch_s.auth.clone();
            async move {
                refused?;
                super::watch::serve(node, auth, req, res).await
            }
        },
    );
    r
}

fn pb_member(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::CoreId;
    use crate::raft::RaftSender;
    use glommio::channels::local_channel;

    #[test]
    fn hasleader_requests_fail_while_no_leader_is_known() {
        crate::runtime::block_on(async {
            let (tx, _rx) = local_channel::new_bounded(4);
            let client = Rc::new(RaftClient::new(
                CoreId(0),
                RaftSender::Local(Rc::new(tx)),
                4,
            ));
            let header = HeaderInfo {
                cluster_id: 1,
                member_id: 2,
            };
            let node = Node::new(CoreId(0), 1, client.clone(), Default::default());
            let s = Services::new(
                client.clone(),
                node,
                header,
                1024,
                128,
                LeaseConfig::default(),
            );
            let mut md = HeaderMap::new();
            assert!(s.check_leader(&md).is_ok(), "no hasleader: no check");
            md.insert("hasleader", "true".parse().unwrap());
            let err = s.check_leader(&md).unwrap_err();
            assert_eq!(err.code, Code::Unavailable);
            assert_eq!(err.message, "etcdserver: no leader");
            // A reply naming a leader is enough to pass.
            client.deliver(crate::mesh::Reply {
                seq: 0,
                raft_term: 2,
                leader: 7,
                body: Err(crate::mesh::ServerError::Stopped),
            });
            assert!(s.check_leader(&md).is_ok());
        });
    }

    #[test]
    fn malformed_protobuf_is_an_error_for_that_call_not_a_panic() {
        crate::runtime::block_on(async {
            let (tx, _rx) = local_channel::new_bounded(4);
            let client = Rc::new(RaftClient::new(
                CoreId(0),
                RaftSender::Local(Rc::new(tx)),
                4,
            ));
            let header = HeaderInfo {
                cluster_id: 1,
                member_id: 2,
            };
            let node = Node::new(CoreId(0), 1, client.clone(), Default::default());
            let s = Services::new(client, node, header, 1024, 128, LeaseConfig::default());
            // Field 1 as a length-delimited value running past the end of the message.
            let garbage = Bytes::from_static(&[0x0a, 0x7f, 0x01]);
            let call = Call::default();
            for res in [
                s.put(&call, garbage.clone()).await,
                s.range(&call, garbage.clone()).await.map(Reply::into_bytes),
                s.txn(&call, garbage.clone()).await,
                s.delete_range(&call, garbage.clone()).await,
            ] {
                let err = res.unwrap_err();
                assert_eq!(err.code, Code::Internal);
                assert!(
                    err.message.starts_with("grpc: error unmarshalling request"),
                    "{err:?}"
                );
            }
        });
    }
}
