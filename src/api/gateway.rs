//! etcd's JSON gateway (grpc-gateway v1, as etcd 3.4 serves it beside gRPC on a client
//! URL): `POST /v3/<service>/<method>` with a JSON body runs the gRPC method in-process
//! through the core's `Router` (same handlers, auth, leader checks and errors as gRPC) and
//! answers JSON.
//!
//! The JSON is grpc-gateway's `JSONPb{OrigName: true}` (pbjson's serde impls, `src/pb`):
//! proto field names out, default values left out, 64-bit integers as strings, bytes as
//! standard base64, enums by name; in, both field spellings, numbers or strings, enum names
//! or numbers, unknown fields ignored, the first JSON value of the body only. Streams
//! (Watch, LeaseKeepAlive, Observe, Snapshot) answer chunked, one `{"result":…}` and a
//! newline per message, `{"error":{…}}` if the call fails; a bidi call's body is a
//! sequence of JSON requests. Unary errors are `{"error","message","code"}` with the HTTP
//! status of grpc-gateway's `HTTPStatusFromCode`. `/v3beta/` is `/v3/` (etcd 3.4 still
//! rewrites it; `/v3alpha/` is gone there and here).
//!
//! Runs on: the core that serves the HTTP/1.1 connection; the call runs on that core too.

use crate::grpc::http1::{HttpRequest, HttpResponse};
use crate::grpc::server::{LocalCall, LocalNext};
use crate::grpc::{Code, Messages, Router, Status};
use crate::pb::{etcdserverpb as pb, v3electionpb as el, v3lockpb as lk};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::rc::Rc;

/// Responses an in-process call may queue ahead of the HTTP writer (as gRPC's default).
const RESPONSE_QUEUE_MAX: usize = 16;

/// How a route's messages flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses (Observe, Snapshot).
    ServerStream,
    /// Requests from the body, then the client's half-close; responses streamed
    /// (LeaseKeepAlive).
    Bidi,
    /// As `Bidi`, but the call outlives the half-close until the client leaves (Watch, as
    /// etcd's watch server keeps a stream open after the client's CloseSend).
    BidiHeldOpen,
}

/// JSON body → protobuf requests. `Err(message)`: the body does not decode.
type DecodeFn = fn(&[u8], Shape) -> Result<Vec<Bytes>, String>;
/// Protobuf response → JSON.
type EncodeFn = fn(Bytes) -> Result<Vec<u8>, String>;

struct Route {
    grpc: &'static str,
    shape: Shape,
    decode: DecodeFn,
    encode: EncodeFn,
}

/// The gateway's routes: etcd 3.4's `google.api.http` annotations (rpc.proto,
/// v3lock.proto, v3election.proto). `/v3/maintenance/hash` is annotated on both Hash and
/// HashKV there; grpc-gateway matches the first registered, Hash.
fn route(path: &str) -> Option<Route> {
    macro_rules! r {
        ($grpc:expr, $req:ty, $res:ty) => {
            r!($grpc, $req, $res, Shape::Unary)
        };
        ($grpc:expr, $req:ty, $res:ty, $shape:expr) => {
            Route {
                grpc: $grpc,
                shape: $shape,
                decode: decode_json::<$req>,
                encode: encode_json::<$res>,
            }
        };
    }
    let route = match path {
        "/v3/kv/range" => r!(
            "/etcdserverpb.KV/Range",
            pb::RangeRequest,
            pb::RangeResponse
        ),
        "/v3/kv/put" => r!("/etcdserverpb.KV/Put", pb::PutRequest, pb::PutResponse),
        "/v3/kv/deleterange" => r!(
            "/etcdserverpb.KV/DeleteRange",
            pb::DeleteRangeRequest,
            pb::DeleteRangeResponse
        ),
        "/v3/kv/txn" => r!("/etcdserverpb.KV/Txn", pb::TxnRequest, pb::TxnResponse),
        "/v3/kv/compaction" => r!(
            "/etcdserverpb.KV/Compact",
            pb::CompactionRequest,
            pb::CompactionResponse
        ),
        "/v3/watch" => r!(
            "/etcdserverpb.Watch/Watch",
            pb::WatchRequest,
            pb::WatchResponse,
            Shape::BidiHeldOpen
        ),
        "/v3/lease/grant" => r!(
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest,
            pb::LeaseGrantResponse
        ),
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => r!(
            "/etcdserverpb.Lease/LeaseRevoke",
            pb::LeaseRevokeRequest,
            pb::LeaseRevokeResponse
        ),
        "/v3/lease/keepalive" => r!(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            pb::LeaseKeepAliveRequest,
            pb::LeaseKeepAliveResponse,
            Shape::Bidi
        ),
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => r!(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            pb::LeaseTimeToLiveRequest,
            pb::LeaseTimeToLiveResponse
        ),
        "/v3/lease/leases" | "/v3/kv/lease/leases" => r!(
            "/etcdserverpb.Lease/LeaseLeases",
            pb::LeaseLeasesRequest,
            pb::LeaseLeasesResponse
        ),
        "/v3/cluster/member/add" => r!(
            "/etcdserverpb.Cluster/MemberAdd",
            pb::MemberAddRequest,
            pb::MemberAddResponse
        ),
        "/v3/cluster/member/remove" => r!(
            "/etcdserverpb.Cluster/MemberRemove",
            pb::MemberRemoveRequest,
            pb::MemberRemoveResponse
        ),
        "/v3/cluster/member/update" => r!(
            "/etcdserverpb.Cluster/MemberUpdate",
            pb::MemberUpdateRequest,
            pb::MemberUpdateResponse
        ),
        "/v3/cluster/member/list" => r!(
            "/etcdserverpb.Cluster/MemberList",
            pb::MemberListRequest,
            pb::MemberListResponse
        ),
        "/v3/cluster/member/promote" => r!(
            "/etcdserverpb.Cluster/MemberPromote",
            pb::MemberPromoteRequest,
            pb::MemberPromoteResponse
        ),
        "/v3/maintenance/alarm" => r!(
            "/etcdserverpb.Maintenance/Alarm",
            pb::AlarmRequest,
            pb::AlarmResponse
        ),
        "/v3/maintenance/status" => r!(
            "/etcdserverpb.Maintenance/Status",
            pb::StatusRequest,
            pb::StatusResponse
        ),
        "/v3/maintenance/defragment" => r!(
            "/etcdserverpb.Maintenance/Defragment",
            pb::DefragmentRequest,
            pb::DefragmentResponse
        ),
        "/v3/maintenance/hash" => r!(
            "/etcdserverpb.Maintenance/Hash",
            pb::HashRequest,
            pb::HashResponse
        ),
        "/v3/maintenance/snapshot" => r!(
            "/etcdserverpb.Maintenance/Snapshot",
            pb::SnapshotRequest,
            pb::SnapshotResponse,
            Shape::ServerStream
        ),
        "/v3/maintenance/transfer-leadership" => r!(
            "/etcdserverpb.Maintenance/MoveLeader",
            pb::MoveLeaderRequest,
            pb::MoveLeaderResponse
        ),
        "/v3/auth/enable" => r!(
            "/etcdserverpb.Auth/AuthEnable",
            pb::AuthEnableRequest,
            pb::AuthEnableResponse
        ),
        "/v3/auth/disable" => r!(
            "/etcdserverpb.Auth/AuthDisable",
            pb::AuthDisableRequest,
            pb::AuthDisableResponse
        ),
        "/v3/auth/authenticate" => r!(
            "/etcdserverpb.Auth/Authenticate",
            pb::AuthenticateRequest,
            pb::AuthenticateResponse
        ),
        "/v3/auth/user/add" => r!(
            "/etcdserverpb.Auth/UserAdd",
            pb::AuthUserAddRequest,
            pb::AuthUserAddResponse
        ),
        "/v3/auth/user/get" => r!(
            "/etcdserverpb.Auth/UserGet",
            pb::AuthUserGetRequest,
            pb::AuthUserGetResponse
        ),
        "/v3/auth/user/list" => r!(
            "/etcdserverpb.Auth/UserList",
            pb::AuthUserListRequest,
            pb::AuthUserListResponse
        ),
        "/v3/auth/user/delete" => r!(
            "/etcdserverpb.Auth/UserDelete",
            pb::AuthUserDeleteRequest,
            pb::AuthUserDeleteResponse
        ),
        "/v3/auth/user/changepw" => r!(
            "/etcdserverpb.Auth/UserChangePassword",
            pb::AuthUserChangePasswordRequest,
            pb::AuthUserChangePasswordResponse
        ),
        "/v3/auth/user/grant" => r!(
            "/etcdserverpb.Auth/UserGrantRole",
            pb::AuthUserGrantRoleRequest,
            pb::AuthUserGrantRoleResponse
        ),
        "/v3/auth/user/revoke" => r!(
            "/etcdserverpb.Auth/UserRevokeRole",
            pb::AuthUserRevokeRoleRequest,
            pb::AuthUserRevokeRoleResponse
        ),
        "/v3/auth/role/add" => r!(
            "/etcdserverpb.Auth/RoleAdd",
            pb::AuthRoleAddRequest,
            pb::AuthRoleAddResponse
        ),
        "/v3/auth/role/get" => r!(
            "/etcdserverpb.Auth/RoleGet",
            pb::AuthRoleGetRequest,
            pb::AuthRoleGetResponse
        ),
        "/v3/auth/role/list" => r!(
            "/etcdserverpb.Auth/RoleList",
            pb::AuthRoleListRequest,
            pb::AuthRoleListResponse
        ),
        "/v3/auth/role/delete" => r!(
            "/etcdserverpb.Auth/RoleDelete",
            pb::AuthRoleDeleteRequest,
            pb::AuthRoleDeleteResponse
        ),
        "/v3/auth/role/grant" => r!(
            "/etcdserverpb.Auth/RoleGrantPermission",
            pb::AuthRoleGrantPermissionRequest,
            pb::AuthRoleGrantPermissionResponse
        ),
        "/v3/auth/role/revoke" => r!(
            "/etcdserverpb.Auth/RoleRevokePermission",
            pb::AuthRoleRevokePermissionRequest,
            pb::AuthRoleRevokePermissionResponse
        ),
        "/v3/lock/lock" => r!("/v3lockpb.Lock/Lock", lk::LockRequest, lk::LockResponse),
        "/v3/lock/unlock" => r!(
            "/v3lockpb.Lock/Unlock",
            lk::UnlockRequest,
            lk::UnlockResponse
        ),
        "/v3/election/campaign" => r!(
            "/v3electionpb.Election/Campaign",
            el::CampaignRequest,
            el::CampaignResponse
        ),
        "/v3/election/proclaim" => r!(
            "/v3electionpb.Election/Proclaim",
            el::ProclaimRequest,
            el::ProclaimResponse
        ),
        "/v3/election/leader" => r!(
            "/v3electionpb.Election/Leader",
            el::LeaderRequest,
            el::LeaderResponse
        ),
        "/v3/election/observe" => r!(
            "/v3electionpb.Election/Observe",
            el::LeaderRequest,
            el::LeaderResponse,
            Shape::ServerStream
        ),
        "/v3/election/resign" => r!(
            "/v3electionpb.Election/Resign",
            el::ResignRequest,
            el::ResignResponse
        ),
        _ => return None,
    };
    Some(route)
}

/// Serves one gateway request (`req.path` starts with `/v3`).
pub async fn serve(req: HttpRequest) -> HttpResponse {
    let path = match req.path.strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => req.path.clone(),
    };
    if !path.starts_with("/v3/") {
        return HttpResponse::text(404, "404 page not found\n");
    }
    let Some(route) = route(&path) else {
        return HttpResponse::text(404, "Not Found\n");
    };
    if req.method != "POST" {
        return HttpResponse::text(405, "Method Not Allowed\n");
    }
    let Some(router) = req.router.clone() else {
        return HttpResponse::text(404, "Not Found\n");
    };
    match start(&router, &route, &req).await {
        Ok(call) if route.shape == Shape::Unary => unary(call, route.encode).await,
        Ok(call) => stream(call, route.encode).await,
        Err(status) => error_response(&status),
    }
}

/// Decodes the body and starts the call.
async fn start(router: &Rc<Router>, route: &Route, req: &HttpRequest) -> Result<LocalCall, Status> {
    let (metadata, timeout) = metadata(req)?;
    let messages = (route.decode)(&req.body, route.shape).map_err(|e| {
        // grpc-gateway wraps a unary body's error as InvalidArgument; a stream's first
        // request error is returned as it is (grpc's Unknown).
        let code = match route.shape {
            Shape::Unary | Shape::ServerStream => Code::InvalidArgument,
            Shape::Bidi | Shape::BidiHeldOpen => Code::Unknown,
        };
        Status::new(code, e)
    })?;
    let messages = Messages::local(messages, route.shape == Shape::BidiHeldOpen);
    router
        .call_local(route.grpc, metadata, timeout, messages, RESPONSE_QUEUE_MAX)
        .await
}

/// grpc-gateway's metadata: `Authorization` as `authorization` (the token),
/// `Grpc-Metadata-<Key>` as `<key>`, and `Grpc-Timeout` as the call's deadline.
fn metadata(req: &HttpRequest) -> Result<(HeaderMap, Option<std::time::Duration>), Status> {
    let mut md = HeaderMap::new();
    let mut timeout = None;
    for (name, value) in &req.headers {
        let key = if name.eq_ignore_ascii_case("authorization") {
            "authorization".to_string()
        } else if name.eq_ignore_ascii_case("grpc-timeout") {
            let parsed = crate::grpc::timeout::parse(value).map_err(|_| {
                Status::new(
                    Code::InvalidArgument,
                    format!("invalid grpc-timeout: {value}"),
                )
            })?;
            timeout = Some(parsed);
            continue;
        } else if let Some(key) = strip_prefix_ignore_case(name, "grpc-metadata-") {
            key.to_ascii_lowercase()
        } else {
            continue;
        };
        let (Ok(key), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue; // not representable as gRPC metadata: grpc-go would refuse it too
        };
        md.append(key, value);
    }
    Ok((md, timeout))
}

/// `text` without `prefix` (ASCII, any case); `None` if it does not start with it.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
        .filter(|rest| !rest.is_empty())
}

fn decode_json<M>(body: &[u8], shape: Shape) -> Result<Vec<Bytes>, String>
where
    M: prost::Message + DeserializeOwned + Default,
{
    let values = serde_json::Deserializer::from_slice(body).into_iter::<Option<M>>();
    let first_error = match decode_values(values, shape) {
        Ok(messages) => return Ok(messages),
        Err(e) => e,
    };
    // jsonpb reads a `null` member as the field's default wherever it stands; pbjson does
    // not for scalars. The slow path drops null members, then decodes again.
    let values = serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .map(|value| {
            let mut value = value?;
            drop_null_members(&mut value);
            Option::<M>::deserialize(value)
        });
    decode_values(values, shape).map_err(|_| first_error)
}

fn decode_values<M, I>(mut values: I, shape: Shape) -> Result<Vec<Bytes>, String>
where
    M: prost::Message + Default,
    I: Iterator<Item = Result<Option<M>, serde_json::Error>>,
{
    let single = matches!(shape, Shape::Unary | Shape::ServerStream);
    let mut messages = Vec::new();
    loop {
        match values.next() {
            // An empty body is an empty request (grpc-gateway ignores io.EOF).
            None if messages.is_empty() && single => {
                messages.push(Bytes::from(M::default().encode_to_vec()));
                return Ok(messages);
            }
            None => return Ok(messages),
            Some(Ok(m)) => {
                let m = m.unwrap_or_default(); // `null`: an empty request
                messages.push(Bytes::from(m.encode_to_vec()));
                if single {
                    return Ok(messages); // what follows the first value is not read
                }
            }
            Some(Err(e)) if messages.is_empty() => return Err(json_error(&e)),
            // A bad later request ends the requests (the gateway stops sending).
            Some(Err(_)) => return Ok(messages),
        }
    }
}

/// Removes `"field": null` members at every depth (serde_json's parser bounds the depth).
fn drop_null_members(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_null_members);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_members),
        _ => {}
    }
}

/// serde_json's error, in Go's words where they differ in kind.
fn json_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected EOF".to_string()
    } else {
        e.to_string()
    }
}

fn encode_json<M>(message: Bytes) -> Result<Vec<u8>, String>
where
    M: prost::Message + Serialize + Default,
{
    let m = M::decode(message).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    Ok(go_escape(json))
}

/// Go's encoding/json escapes `<`, `>`, `&`, U+2028 and U+2029 in strings; they only occur
/// inside strings in serialized JSON, so escaping every occurrence is exact.
fn go_escape(json: Vec<u8>) -> Vec<u8> {
    let special = |w: &[u8]| matches!(w, [0xe2, 0x80, 0xa8 | 0xa9, ..]);
    if !json
        .iter()
        .enumerate()
        .any(|(i, b)| matches!(b, b'<' | b'>' | b'&') || special(&json[i..]))
    {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            0xe2 if special(&json[i..]) => {
                out.extend_from_slice(if json[i + 2] == 0xa8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

async fn unary(mut call: LocalCall, encode: EncodeFn) -> HttpResponse {
    let mut reply = None;
    let status = loop {
        match call.next().await {
            LocalNext::Message(m) => reply = Some(m),
            LocalNext::End(status) => break status,
        }
    };
    if status.code != Code::Ok {
        return error_response(&status);
    }
    let Some(reply) = reply else {
        return error_response(&Status::new(Code::Internal, "no response message"));
    };
    match encode(reply) {
        Ok(json) => HttpResponse::json(200, json),
        Err(e) => error_response(&Status::new(Code::Internal, e)),
    }
}

/// A streamed reply: the HTTP status waits for the first message or the end (as
/// grpc-gateway waits for the call's headers), then chunks follow as messages come.
async fn stream(mut call: LocalCall, encode: EncodeFn) -> HttpResponse {
    let first = match call.next().await {
        LocalNext::Message(m) => result_chunk(encode, m),
        LocalNext::End(status) if status.code == Code::Ok => Bytes::new(),
        LocalNext::End(status) => {
            let mut r = HttpResponse::json(http_status(status.code), stream_error(&status));
            r.stream = Some(Box::pin(futures_lite::stream::empty()));
            return r;
        }
    };
    let rest = futures_lite::stream::unfold(Some(call), move |call| async move {
        let mut call = call?;
        match call.next().await {
            LocalNext::Message(m) => Some((result_chunk(encode, m), Some(call))),
            LocalNext::End(status) if status.code == Code::Ok => None,
            LocalNext::End(status) => Some((stream_error(&status), None)),
        }
    });
    let mut r = HttpResponse::json(200, first);
    r.stream = Some(Box::pin(rest));
    r
}

fn result_chunk(encode: EncodeFn, message: Bytes) -> Bytes {
    match encode(message) {
        Ok(json) => {
            let mut out = Vec::with_capacity(json.len() + 12);
            out.extend_from_slice(b"{\"result\":");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"}\n");
            Bytes::from(out)
        }
        Err(e) => stream_error(&Status::new(Code::Internal, e)),
    }
}

/// grpc-gateway's stream error chunk (its `StreamError` message, proto names).
fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code);
    let mut out = format!("{{\"error\":{{\"grpc_code\":{}", status.code as u8);
    out.push_str(&format!(",\"http_code\":{http}"));
    if !status.message.is_empty() {
        out.push_str(&format!(",\"message\":{}", json_string(&status.message)));
    }
    out.push_str(&format!(
        ",\"http_status\":{}}}}}",
        json_string(crate::grpc::http1::reason(http))
    ));
    Bytes::from(go_escape(out.into_bytes()))
}

/// grpc-gateway's unary error: `{"error":msg,"message":msg,"code":n}`.
fn error_response(status: &Status) -> HttpResponse {
    let message = json_string(&status.message);
    let body = format!(
        "{{\"error\":{message},\"message\":{message},\"code\":{}}}",
        status.code as u8
    );
    HttpResponse::json(http_status(status.code), go_escape(body.into_bytes()))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// grpc-gateway v1's `HTTPStatusFromCode`.
fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::Unknown => 500,
        Code::InvalidArgument => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::FailedPrecondition => 412,
        Code::Aborted => 409,
        Code::OutOfRange => 400,
        Code::Unimplemented => 501,
        Code::Internal => 500,
        Code::Unavailable => 503,
        Code::DataLoss => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn json_maps_as_grpc_gateway_does() {
        let body = br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"5","sort_order":"DESCEND","sortTarget":2,"unknown":[1]} trailing"#;
        let m = decode_json::<pb::RangeRequest>(body, Shape::Unary).unwrap();
        let r = pb::RangeRequest::decode(m[0].clone()).unwrap();
        assert_eq!(
            (&r.key[..], &r.range_end[..], r.limit),
            (&b"foo"[..], &b"fop"[..], 5)
        );
        assert_eq!((r.sort_order, r.sort_target), (2, 2));
        for empty in [&b""[..], b"  ", b"null"] {
            let m = decode_json::<pb::RangeRequest>(empty, Shape::Unary).unwrap();
            assert_eq!(m, vec![Bytes::new()]);
        }
        let nulls = br#"{"key":"Zm9v","limit":null,"range_end":null}"#;
        let m = decode_json::<pb::RangeRequest>(nulls, Shape::Unary).unwrap();
        assert_eq!(
            &pb::RangeRequest::decode(m[0].clone()).unwrap().key[..],
            b"foo"
        );
        for bad in [
            &b"{\"key\":5}"[..],
            b"[1]",
            b"{\"key\":\"Zm9v\"",
            b"{\"limit\":1.5}",
        ] {
            assert!(decode_json::<pb::RangeRequest>(bad, Shape::Unary).is_err());
        }
        assert_eq!(
            json_error(&serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err()),
            "unexpected EOF"
        );
        let two = decode_json::<pb::WatchRequest>(b"{} {\"progress_request\":{}}", Shape::Bidi);
        assert_eq!(two.unwrap().len(), 2);
        assert!(decode_json::<pb::WatchRequest>(b"", Shape::Bidi)
            .unwrap()
            .is_empty());
        let res = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: 2,
                raft_term: 3,
                ..Default::default()
            }),
            kvs: vec![crate::pb::mvccpb::KeyValue {
                key: Bytes::from_static(b"<&>"),
                value: Bytes::from_static(b"bar"),
                version: 1,
                ..Default::default()
            }],
            count: 1,
            more: false,
        };
        let json = encode_json::<pb::RangeResponse>(Bytes::from(res.encode_to_vec())).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"header":{"revision":"2","raft_term":"3"},"kvs":[{"key":"PCY+","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn metadata_from_headers_never_panics() {
        let req = |name: &str, value: &str| HttpRequest {
            method: "POST".into(),
            path: "/v3/kv/range".into(),
            query: String::new(),
            headers: vec![(name.into(), value.into())],
            body: Bytes::new(),
            router: None,
        };
        let (md, _) = metadata(&req("Grpc-Metadata-HasLeader", "true")).unwrap();
        assert_eq!(md.get("hasleader").unwrap(), "true");
        let (md, _) = metadata(&req("Authorization", "tok")).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "tok");
        let (_, timeout) = metadata(&req("grpc-timeout", "2S")).unwrap();
        assert_eq!(timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(
            metadata(&req("Grpc-Timeout", "x")).unwrap_err().code,
            Code::InvalidArgument
        );
        for name in [
            "grpc-metadatä-x",
            "ééééééééééééééé",
            "grpc-metadata-",
            "grpc-metadata-a b",
        ] {
            assert!(metadata(&req(name, "v")).unwrap().0.is_empty(), "{name}");
        }
    }

    #[test]
    fn go_escapes_html_and_line_separators() {
        let s = "a<b>&c\u{2028}\u{2029}é".as_bytes().to_vec();
        assert_eq!(
            go_escape(s),
            "a\\u003cb\\u003e\\u0026c\\u2028\\u2029é"
                .as_bytes()
                .to_vec()
        );
    }

    #[test]
    fn errors_have_grpc_gateway_bodies() {
        let r = error_response(&Status::new(
            Code::NotFound,
            "etcdserver: requested lease not found",
        ));
        assert_eq!(r.status, 404);
        assert_eq!(
            &r.body[..],
            &br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#[..]
        );
        assert_eq!(
            &stream_error(&Status::new(Code::Unavailable, "x"))[..],
            &br#"{"error":{"grpc_code":14,"http_code":503,"message":"x","http_status":"Service Unavailable"}}"#[..]
        );
    }

    #[test]
    fn routes_follow_the_proto_annotations() {
        assert_eq!(
            route("/v3/maintenance/hash").unwrap().grpc,
            "/etcdserverpb.Maintenance/Hash"
        );
        assert_eq!(
            route("/v3/kv/lease/leases").unwrap().grpc,
            "/etcdserverpb.Lease/LeaseLeases"
        );
        assert_eq!(route("/v3/watch").unwrap().shape, Shape::BidiHeldOpen);
        assert!(route("/v3/auth/status").is_none()); // etcd 3.5's, not 3.4's
    }
}
