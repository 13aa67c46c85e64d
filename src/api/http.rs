//! The HTTP/1.1 side of a client URL (and of `--listen-metrics-urls`): `/metrics`,
//! `/health` as etcd 3.4 answers it, `/livez` and `/readyz` as etcd 3.5 defines them,
//! `/version`, and etcd's JSON gateway under `/v3` (`gateway.rs`, client URLs only).
//!
//! Runs on: the core that serves the connection. A scrape gathers every core's counts
//! through the node (one message per core) and renders them here.

use super::services::Services;
use crate::grpc::http1::{HttpHandler, HttpRequest, HttpResponse};
use crate::mvcc::RangeRequest;
use std::rc::Rc;
use std::time::Duration;

/// How long a health check's read may take (etcd: a second for `/health`).
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a `/livez` or `/readyz` read may take (etcd: the request timeout).
const PROBE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Which paths a port serves: a client URL serves all; a metrics URL (etcd's
/// `--listen-metrics-urls`) serves the metrics and the probes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Metrics,
}

pub fn handler(s: Rc<Services>, port: Port) -> HttpHandler {
    Rc::new(move |req: HttpRequest| {
        let s = s.clone();
        Box::pin(async move { serve(&s, port, req).await })
    })
}

async fn serve(s: &Services, port: Port, req: HttpRequest) -> HttpResponse {
    if port == Port::Client && req.path.starts_with("/v3") {
        return super::gateway::serve(req).await;
    }
    let path = req.path.as_str();
    let get = req.method == "GET";
    match path {
        // Prometheus' Go handler answers any method.
        "/metrics" => metrics(s).await,
        "/health" if get => health(s, &req).await,
        "/version" if get && port == Port::Client => HttpResponse::json(
            200,
            format!(
                "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
                crate::config::version::server(),
                crate::config::version::cluster()
            ),
        ),
        _ if probe_checks(path).is_some() => {
            if !get {
                return method_not_allowed();
            }
            probe(s, &req).await
        }
        "/health" => method_not_allowed(),
        "/version" if port == Port::Client => method_not_allowed(),
        _ => HttpResponse::text(404, "404 page not found\n"),
    }
}

fn method_not_allowed() -> HttpResponse {
    HttpResponse::text(405, "Method Not Allowed\n")
}

async fn metrics(s: &Services) -> HttpResponse {
    let mut counts = s.node().collect_metrics().await;
    counts.set_gauge(
        crate::metrics::Gauge::QuotaBackendBytes,
        s.quota_bytes() as f64,
    );
    let member_id = s.header(0, 0).member_id;
    let text = crate::metrics::render(
        &counts,
        &crate::metrics::Info {
            member_id,
            server_version: crate::config::version::server(),
            cluster_version: crate::config::version::cluster(),
            member_hex: format!("{member_id:x}"),
        },
    );
    HttpResponse {
        status: 200,
        content_type: crate::metrics::CONTENT_TYPE,
        body: text.into(),
        stream: None,
    }
}

/// etcd 3.4's `/health`: false (503) while an alarm not named in `?exclude=` is active,
/// while the member knows no leader (unless `?serializable=true`), or when a read fails
/// (linearizable unless `?serializable=true`); else `{"health":"true"}`. Counted in
/// `etcd_server_health_success` / `_failures`.
async fn health(s: &Services, req: &HttpRequest) -> HttpResponse {
    let excluded: Vec<String> = req
        .query_values("exclude")
        .iter()
        .flat_map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let serializable = req.query_values("serializable").iter().any(|v| v == "true");
    let healthy = is_healthy(s, &excluded, serializable).await;
    crate::metrics::inc(if healthy {
        crate::metrics::Counter::HealthSuccess
    } else {
        crate::metrics::Counter::HealthFailures
    });
    // etcd 3.4 writes the JSON bare on success and through Go's http.Error (a newline
    // after it) on failure; Go sniffs both as text/plain.
    if healthy {
        HttpResponse::text(200, "{\"health\":\"true\"}")
    } else {
        HttpResponse::text(503, "{\"health\":\"false\"}\n")
    }
}

async fn is_healthy(s: &Services, excluded: &[String], serializable: bool) -> bool {
    let node = s.node();
    for a in node.alarms().iter() {
        let name = crate::raft::alarm_name(a.kind);
        if !excluded.iter().any(|e| e == name) {
            return false;
        }
    }
    if !serializable && s.client().known_leader() == 0 {
        return false;
    }
    read_check(s, !serializable, HEALTH_READ_TIMEOUT)
        .await
        .is_ok()
}

/// A one-key read (keys only, limit 1) as etcd's health checks do, linearizable or not,
/// within `timeout`. Auth does not apply (etcd reads as root).
async fn read_check(s: &Services, linearizable: bool, timeout: Duration) -> Result<(), String> {
    let req = RangeRequest {
        key: b"health".to_vec(),
        keys_only: true,
        limit: 1,
        serializable: !linearizable,
        ..Default::default()
    };
    let node = s.node().clone();
    let read = futures_lite::future::or(
        async { Some(node.range(req, linearizable).await.map(|_| ())) },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
    match read {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(super::errors::status_from_server(&e).message),
        None => Err("context deadline exceeded".to_string()),
    }
}

/// The checks of `/livez` and `/readyz` (etcd 3.5), in the order they are reported.
const LIVEZ: &[&str] = &["serializable_read"];
const READYZ: &[&str] = &["data_corruption", "serializable_read", "linearizable_read"];

/// The checks a probe path runs: the root runs all, `/livez/<check>` one.
fn probe_checks(path: &str) -> Option<Vec<&'static str>> {
    let (root, all) = if let Some(rest) = path.strip_prefix("/livez") {
        (rest, LIVEZ)
    } else if let Some(rest) = path.strip_prefix("/readyz") {
        (rest, READYZ)
    } else {
        return None;
    };
    match root {
        "" => Some(all.to_vec()),
        one => {
            let name = one.strip_prefix('/')?;
            all.iter().find(|c| **c == name).map(|c| vec![*c])
        }
    }
}

/// `/livez` and `/readyz`: each check's `[+]name ok` or `[-]name failed: reason`; 200
/// with `ok` (the lines first with `?verbose`), or 503 with the lines. `?exclude=name`
/// (repeatable) skips a check on the root path; an unknown name is ignored.
async fn probe(s: &Services, req: &HttpRequest) -> HttpResponse {
    let mut checks = probe_checks(&req.path).unwrap_or_default();
    if checks.len() > 1 {
        let excluded = req.query_values("exclude");
        checks.retain(|c| !excluded.iter().any(|e| e == c));
    }
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        let result = match check {
            "data_corruption" => {
                let corrupt = s.node().alarm_active(crate::mesh::ALARM_CORRUPT);
                if corrupt {
                    Err("alarm activated: CORRUPT".to_string())
                } else {
                    Ok(())
                }
            }
            "serializable_read" => read_check(s, false, PROBE_READ_TIMEOUT).await,
            _ => read_check(s, true, PROBE_READ_TIMEOUT).await,
        };
        match result {
            Ok(()) => report.push_str(&format!("[+]{check} ok\n")),
            Err(why) => {
                failed = true;
                report.push_str(&format!("[-]{check} failed: {why}\n"));
            }
        }
    }
    if failed {
        // Go's http.Error: the text and a newline.
        report.push('\n');
        return HttpResponse::text(503, report);
    }
    let verbose = req
        .query
        .split('&')
        .any(|kv| kv.split('=').next() == Some("verbose"));
    if !verbose {
        report.clear();
    }
    report.push_str("ok\n");
    HttpResponse::text(200, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths() {
        assert_eq!(probe_checks("/livez"), Some(vec!["serializable_read"]));
        assert_eq!(probe_checks("/readyz").map(|c| c.len()), Some(3));
        assert_eq!(
            probe_checks("/readyz/linearizable_read"),
            Some(vec!["linearizable_read"])
        );
        assert_eq!(probe_checks("/readyz/nope"), None);
        assert_eq!(probe_checks("/livezz"), None);
        assert_eq!(probe_checks("/health"), None);
    }
}
