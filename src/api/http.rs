//! The HTTP/1.1 side of a client URL: `/health` and `/version` as etcd 3.4 answers them
//! (the metrics come with their issue), and etcd's JSON gateway under `/v3`
//! (`gateway.rs`).
//!
//! Runs on: the core that serves the connection.

use super::services::Services;
use crate::grpc::http1::{HttpHandler, HttpRequest, HttpResponse};
use std::rc::Rc;

/// How long a health check's read may take (etcd: a second).
const HEALTH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn handler(s: Rc<Services>) -> HttpHandler {
    Rc::new(move |req: HttpRequest| {
        let s = s.clone();
        Box::pin(async move { serve(&s, req).await })
    })
}

async fn serve(s: &Services, req: HttpRequest) -> HttpResponse {
    if req.path.starts_with("/v3") {
        return super::gateway::serve(req).await;
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => health(s, &req).await,
        ("GET", "/version") => HttpResponse::json(
            200,
            format!(
                "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
                super::services::ETCD_VERSION,
                crate::raft::etcd_db::CLUSTER_VERSION
            ),
        ),
        (_, "/health" | "/version") => HttpResponse::text(405, "Method Not Allowed\n"),
        _ => HttpResponse::text(404, "404 page not found\n"),
    }
}

/// etcd 3.4's `/health`: false (503) while an alarm not named in `?exclude=` is active,
/// while the member knows no leader (unless `?serializable=true`), or when a read fails
/// (linearizable unless `?serializable=true`); else `{"health":"true"}`.
async fn health(s: &Services, req: &HttpRequest) -> HttpResponse {
    let unhealthy = || HttpResponse::json(503, "{\"health\":\"false\"}\n");
    let excluded: Vec<String> = req
        .query_values("exclude")
        .iter()
        .flat_map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let serializable = req.query_values("serializable").iter().any(|v| v == "true");
    let node = s.node();
    for a in node.alarms().iter() {
        let name = crate::raft::alarm_name(a.kind);
        if !excluded.iter().any(|e| e == name) {
            return unhealthy();
        }
    }
    if !serializable && s.client().known_leader() == 0 {
        return unhealthy();
    }
    if !serializable {
        let read =
            futures_lite::future::or(async { Some(node.read_index().await.is_ok()) }, async {
                glommio::timer::sleep(HEALTH_READ_TIMEOUT).await;
                None
            })
            .await;
        if read != Some(true) {
            return unhealthy();
        }
    }
    HttpResponse::json(200, "{\"health\":\"true\"}\n")
}
