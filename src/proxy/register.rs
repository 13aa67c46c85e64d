//! `--resolver-prefix` / `--resolver-ttl` / `--advertise-client-url`: the proxy registers
//! itself in the cluster as etcd's does (key `<prefix>/<advertise>`, value the endpoint
//! record `{"Addr":…,"Metadata":"{\"name\":\"<hostname>\"}"}`, on a lease of the TTL kept
//! alive; a lost lease registers again), and MemberList through the proxy lists the
//! proxies, so clients that sync their endpoints find proxies, not members.
//!
//! Runs on: the first proxy core (registration); any core (MemberList).

use super::forward::{as_pairs, status_of, Ctx};
use super::upstream::Upstream;
use crate::grpc::client;
use crate::grpc::status::Status;
use crate::pb::etcdserverpb as pb;
use bytes::Bytes;
use prost::Message;
use std::rc::Rc;
use std::time::Duration;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meta_json() -> String {
    serde_json::json!({ "name": hostname() }).to_string()
}

/// Keeps this proxy registered under `prefix` while the process lives.
pub async fn register(up: Rc<Upstream>, prefix: String, addr: String, ttl: i64) {
    let key = format!("{prefix}/{addr}");
    let value = serde_json::json!({ "Addr": addr, "Metadata": meta_json() }).to_string();
    loop {
        if let Err(e) = session(&up, &key, &value, ttl).await {
            crate::runtime::log::warning("grpcproxy", &format!("failed to create a session {e}"));
        } else {
            crate::runtime::log::warning(
                "grpcproxy",
                "session expired; possible network partition or server restart; creating a new session to rejoin",
            );
        }
        glommio::timer::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(up: &Rc<Upstream>, key: &str, value: &str, ttl: i64) -> Result<(), String> {
    let grant: pb::LeaseGrantResponse = decode(
        up.unary(
            "/etcdserverpb.Lease/LeaseGrant",
            &[],
            pb::LeaseGrantRequest { ttl, id: 0 }.encode_to_vec().into(),
            false,
        )
        .await,
    )?;
    let put = pb::PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease: grant.id,
        ..Default::default()
    };
    let _: pb::PutResponse = decode(
        up.unary(
            "/etcdserverpb.KV/Put",
            &[],
            put.encode_to_vec().into(),
            false,
        )
        .await,
    )?;
    crate::runtime::log::info(
        "grpcproxy",
        &format!("registered {key:?} with {ttl}-second lease"),
    );
    // Keep it alive at a third of the TTL until the cluster says it is gone.
    let (conn, g) = up.conn().await.map_err(|e| e.to_string())?;
    let mut stream = client::Stream::open_with(&conn, "/etcdserverpb.Lease/LeaseKeepAlive", &[])
        .await
        .map_err(|e| e.to_string())?;
    loop {
        stream
            .send(&pb::LeaseKeepAliveRequest { id: grant.id })
            .map_err(|e| e.to_string())?;
        let r: pb::LeaseKeepAliveResponse = match stream.recv().await {
            Ok(r) => r,
            Err(e) => {
                up.failed(g);
                return Err(e.to_string());
            }
        };
        if r.ttl <= 0 {
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis((ttl.max(1) as u64) * 1000 / 3)).await;
    }
}

fn decode<M: Message + Default>(r: Result<Bytes, client::CallError>) -> Result<M, String> {
    let bytes = r.map_err(|e| e.to_string())?;
    M::decode(bytes).map_err(|e| e.to_string())
}

/// MemberList through the proxy, as etcd's: the proxies registered under the prefix, or
/// this proxy alone (its advertised URL) when none is found.
pub async fn member_list(ctx: &Rc<Ctx>, meta: &[(&'static str, String)]) -> Result<Bytes, Status> {
    let mut members = Vec::new();
    if !ctx.resolver_prefix.is_empty() {
        let prefix = format!("{}/", ctx.resolver_prefix);
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let r = pb::RangeRequest {
            key: prefix.into_bytes().into(),
            range_end: end.into(),
            serializable: true,
            ..Default::default()
        };
        let reply = ctx
            .up
            .unary(
                "/etcdserverpb.KV/Range",
                &as_pairs(meta),
                r.encode_to_vec().into(),
                true,
            )
            .await
            .map_err(status_of)?;
        let reply = pb::RangeResponse::decode(reply).unwrap_or_default();
        for kv in reply.kvs {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
                continue;
            };
            let addr = v["Addr"].as_str().unwrap_or_default().to_string();
            let name = v["Metadata"]
                .as_str()
                .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                .and_then(|m| m["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            members.push(pb::Member {
                name,
                client_ur_ls: vec![addr],
                ..Default::default()
            });
        }
    }
    if members.is_empty() {
        members.push(pb::Member {
            name: hostname(),
            client_ur_ls: vec![ctx.advertise_client_url.clone()],
            ..Default::default()
        });
    }
    Ok(pb::MemberListResponse {
        members,
        ..Default::default()
    }
    .encode_to_vec()
    .into())
}
