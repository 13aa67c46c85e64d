//! `etcdserverpb.Watch/Watch`: one bidi stream, many watchers; requests are handled in
//! order, and the stream's catch-up task runs beside the request loop.

use super::auth::{resolve_caller, AuthConfig};
use super::errors::status_from_auth;
use crate::grpc::{Call, Code, Request, Responses, Status};
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use crate::watch::{CreateError, CreateSpec, Hub, StreamId};
use bytes::Bytes;
use prost::Message;
use std::rc::Rc;

struct StreamGuard<'a> {
    hub: &'a Hub,
    stream: StreamId,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.hub.remove_stream(self.stream);
    }
}

fn header(node: &Node, revision: i64) -> pb::ResponseHeader {
    node.hub.pb_header(node.watermark().raft_term, revision)
}

fn encode(m: &pb::WatchResponse) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Serves one Watch stream until the client closes it or the call breaks.
pub async fn serve(
    node: Rc<Node>,
    auth: AuthConfig,
    mut req: Request,
    res: Responses,
) -> Result<(), Status> {
    node.wait_applied(0).await;
    let call = req.call();
    let res = Rc::new(res);
    let hub = &node.hub;
    let stream = hub.add_stream(res.clone());
    let _guard = StreamGuard { hub, stream };
    let catch_up_node = node.clone();
    // Dropped (cancelled) with the stream.
    let _catch_up = glommio::spawn_local(async move {
        while catch_up_node.hub.catch_up_wanted(stream).await {
            catch_up_node.hub.catch_up(&catch_up_node, stream).await;
        }
    });
    while let Some(message) = req.messages.next().await {
        let message = message?;
        let request = pb::WatchRequest::decode(message).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("grpc: error unmarshalling request: {e}"),
            )
        })?;
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                // Checked once, at create, with the stream's credentials (etcd's rule: a
                // refused watch is created and cancelled at once; the stream stays open).
                if let Err(refused) = check_create(&node, &auth, &call, &c).await {
                    let rev = node.watermark().revision;
                    let reason = format!(
                        "rpc error: code = {} desc = {}",
                        refused.code.go_name(),
                        refused.message
                    );
                    send(
                        &res,
                        pb::WatchResponse {
                            header: Some(header(&node, rev)),
                            watch_id: -1,
                            created: true,
                            canceled: true,
                            cancel_reason: reason,
                            ..Default::default()
                        },
                    )
                    .await?;
                    continue;
                }
                create(&node, stream, &res, c).await?
            }
            Some(RequestUnion::CancelRequest(c)) if hub.cancel(stream, c.watch_id) => {
                let rev = node.watermark().revision;
                send(
                    &res,
                    pb::WatchResponse {
                        header: Some(header(&node, rev)),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    },
                )
                .await?;
            }
            Some(RequestUnion::CancelRequest(_)) => {}
            Some(RequestUnion::ProgressRequest(_)) => {
                // At once when every watcher of the stream is synced, else from the
                // catch-up task once they are (`Hub::request_progress`).
                if let Some(msg) = hub.request_progress(stream, node.watermark()) {
                    res.send(msg).await?;
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// READ on the watched range as the client asked for it (an empty key is etcd's `"\0"`;
/// a `"\0"` end is a range to the end of the key space, GHSA-xg4h-6gfc-h4m8).
async fn check_create(
    node: &Node,
    auth: &AuthConfig,
    call: &Call,
    c: &pb::WatchCreateRequest,
) -> Result<(), Status> {
    // Caught up with the member's rounds first (auth just enabled elsewhere is seen).
    let caller = resolve_caller(node, auth, call).await?;
    let key: &[u8] = if c.key.is_empty() { b"\0" } else { &c.key };
    node.auth_view()
        .check_read(&caller, key, &c.range_end)
        .map_err(status_from_auth)
}

async fn send(res: &Responses, m: pb::WatchResponse) -> Result<(), Status> {
    Ok(res.send(encode(&m)).await?)
}

async fn create(
    node: &Rc<Node>,
    stream: StreamId,
    res: &Responses,
    c: pb::WatchCreateRequest,
) -> Result<(), Status> {
    // etcd's normalisation: an empty key is "\0" (the smallest); range_end "\0" means
    // every key from `key` on.
    let key = if c.key.is_empty() {
        vec![0]
    } else {
        c.key.to_vec()
    };
    if c.start_revision == 0 || c.start_revision > node.watermark().revision {
        // "From now" means after every write acknowledged so far, also on other cores;
        // and a start this core has not reached may already be history elsewhere.
        let index = node.read_index().await?;
        node.wait_applied(index).await;
    }
    let rev = node.watermark().revision;
    let start_revision = if c.start_revision == 0 {
        rev + 1
    } else {
        c.start_revision
    };
    let filter_put = c
        .filters
        .contains(&(pb::watch_create_request::FilterType::Noput as i32));
    let filter_delete = c
        .filters
        .contains(&(pb::watch_create_request::FilterType::Nodelete as i32));
    let spec = CreateSpec {
        key,
        range_end: c.range_end.to_vec(),
        start_revision,
        watch_id: c.watch_id,
        filter_put,
        filter_delete,
        prev_kv: c.prev_kv,
        progress_notify: c.progress_notify,
        fragment: c.fragment,
    };
    match node.hub.create(stream, spec) {
        Ok(watch_id) => {
            send(
                res,
                pb::WatchResponse {
                    header: Some(header(node, rev)),
                    watch_id,
                    created: true,
                    ..Default::default()
                },
            )
            .await?;
            node.hub.activate(stream, watch_id);
        }
        Err(e @ (CreateError::EmptyRange | CreateError::DuplicateId)) => {
            send(
                res,
                pb::WatchResponse {
                    header: Some(header(node, rev)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: e.message().to_string(),
                    ..Default::default()
                },
            )
            .await?;
        }
    }
    Ok(())
}
