//! The proxy's services: every method of etcd's v3 API, forwarded to the cluster through
//! this core's [`Upstream`] as bytes (the caller's `token` and `hasleader` with it), except
//! Watch (coalesced, `proxy::watch`) and, with `--namespace`, the KV, Watch and Lease calls
//! whose keys are rewritten (`proxy::namespace`).
//!
//! Runs on: every proxy core, one router per core.

use super::namespace::Namespace;
use super::upstream::Upstream;
use crate::grpc::client::{self, CallError};
use crate::grpc::server::{Call, Request, Responses, Router};
use crate::grpc::status::{Code, Status};
use bytes::Bytes;
use futures_lite::future;
use std::rc::Rc;

/// What one core's handlers share.
pub struct Ctx {
    pub up: Rc<Upstream>,
    pub namespace: Option<Rc<Namespace>>,
    pub watch: Rc<super::watch::Core>,
    pub leases: Rc<super::lease::Leases>,
    pub cache: Rc<super::cache::Cache>,
    /// `--resolver-prefix`: MemberList answers with the proxies registered under it.
    pub resolver_prefix: String,
    pub advertise_client_url: String,
}

/// A failed upstream call as the proxy's caller sees it: the cluster's own status, or
/// Unavailable when no member could be reached.
pub fn status_of(e: CallError) -> Status {
    match e {
        CallError::Status(code, msg) => Status::new(Code::from_u32(code), msg),
        CallError::Transport(msg) => Status::new(Code::Unavailable, msg),
    }
}

/// The metadata passed on upstream: the caller's auth token and its leader requirement.
pub fn passed_metadata(metadata: &http::HeaderMap) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for key in ["token", "hasleader"] {
        if let Some(v) = metadata.get(key).and_then(|v| v.to_str().ok()) {
            out.push((key, v.to_string()));
        }
    }
    out
}

pub fn as_pairs<'a>(meta: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    meta.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Methods that change nothing: retried on the next endpoint when a connection breaks.
fn repeatable(path: &str) -> bool {
    matches!(
        path.rsplit('/').next().unwrap_or(""),
        "Range"
            | "MemberList"
            | "Status"
            | "Hash"
            | "HashKV"
            | "Alarm"
            | "LeaseTimeToLive"
            | "LeaseLeases"
            | "AuthStatus"
            | "UserGet"
            | "UserList"
            | "RoleGet"
            | "RoleList"
            | "Leader"
            | "Check"
    )
}

/// Every unary method of the v3 API, Lock, Election and Health.
const UNARY: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Resign",
    "/grpc.health.v1.Health/Check",
];

/// Streams forwarded message for message.
const PIPED: &[&str] = &[
    "/etcdserverpb.Maintenance/Snapshot",
    "/v3electionpb.Election/Observe",
    "/grpc.health.v1.Health/Watch",
];

/// The router of one proxy core.
pub fn router(ctx: Rc<Ctx>) -> Router {
    let mut r = Router::new();
    for &path in UNARY {
        let ctx = ctx.clone();
        r.unary(path, move |call: Call, body: Bytes| {
            let ctx = ctx.clone();
            async move { unary(&ctx, path, call, body).await }
        });
    }
    for &path in PIPED {
        let ctx = ctx.clone();
        r.route(path, move |req, res| {
            let ctx = ctx.clone();
            async move { pipe(&ctx, path, req, res).await }
        });
    }
    {
        let ctx = ctx.clone();
        r.route_with_queue(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            Some(super::lease::STREAM_QUEUE),
            move |req, res| {
                let ctx = ctx.clone();
                async move { super::lease::keep_alive(&ctx, req, res).await }
            },
        );
    }
    r.route_with_queue(
        "/etcdserverpb.Watch/Watch",
        Some(super::watch::STREAM_QUEUE),
        move |req, res| {
            let ctx = ctx.clone();
            async move { super::watch::serve(&ctx, req, res).await }
        },
    );
    r
}

async fn unary(
    ctx: &Rc<Ctx>,
    path: &'static str,
    call: Call,
    body: Bytes,
) -> Result<Bytes, Status> {
    let meta = passed_metadata(&call.metadata);
    if path == "/etcdserverpb.Cluster/MemberList" && !ctx.advertise_client_url.is_empty() {
        return super::register::member_list(ctx, &meta).await;
    }
    let ns = ctx.namespace.as_deref();
    let body = match ns {
        Some(ns) => ns.request(path, body)?,
        None => body,
    };
    if path == "/etcdserverpb.KV/Range" {
        if let Some(hit) = ctx.cache.get(&body, &meta) {
            return Ok(hit);
        }
    }
    let started_epoch = ctx.cache.epoch();
    let reply = ctx
        .up
        .unary(path, &as_pairs(&meta), body.clone(), repeatable(path))
        .await
        .map_err(status_of)?;
    match path {
        "/etcdserverpb.KV/Range" => ctx
            .cache
            .fill(&ctx.watch, &body, &reply, &meta, started_epoch),
        "/etcdserverpb.KV/Put" | "/etcdserverpb.KV/DeleteRange" | "/etcdserverpb.KV/Txn" => {
            ctx.cache.invalidate_request(path, &body)
        }
        "/etcdserverpb.KV/Compact" => ctx.cache.clear(),
        _ => {}
    }
    match ns {
        Some(ns) => ns.response(path, reply),
        None => Ok(reply),
    }
}

/// A stream forwarded both ways until either side ends it.
async fn pipe(ctx: &Rc<Ctx>, path: &str, mut req: Request, res: Responses) -> Result<(), Status> {
    let meta = passed_metadata(&req.metadata);
    let (conn, g) = ctx.up.conn().await.map_err(status_of)?;
    let mut up = client::Stream::open_with(&conn, path, &as_pairs(&meta))
        .await
        .map_err(status_of)?;
    let mut downstream_open = true;
    loop {
        enum Next {
            Down(Option<Result<Bytes, Status>>),
            Up(Result<Bytes, CallError>),
        }
        let next = if downstream_open {
            future::or(async { Next::Down(req.messages.next().await) }, async {
                Next::Up(up.recv_raw().await)
            })
            .await
        } else {
            Next::Up(up.recv_raw().await)
        };
        match next {
            Next::Down(Some(Ok(m))) => up.send_raw(&m).map_err(status_of)?,
            Next::Down(None) => {
                up.close_send();
                downstream_open = false;
            }
            Next::Down(Some(Err(s))) => return Err(s),
            Next::Up(Ok(m)) => res.send(m).await?,
            Next::Up(Err(CallError::Status(0, _))) => return Ok(()),
            Next::Up(Err(e @ CallError::Transport(_))) => {
                ctx.up.failed(g);
                return Err(status_of(e));
            }
            Next::Up(Err(e)) => return Err(status_of(e)),
        }
    }
}
