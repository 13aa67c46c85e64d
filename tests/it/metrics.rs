//! `/metrics`, the health probes and `--listen-metrics-urls` of a real Keel member driven
//! by the etcd-client crate over several connections (so both cores count): the sums a
//! scrape shows are exact, and the probes answer in etcd's formats. (The output parsed
//! by Prometheus' own parser and compared with etcd 3.4's: ci/interop/http_endpoints.py.)

use crate::common;

use common::{connect, free_port, runtime, Server};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on its own connection: (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// `name{labels}` → value, from the text format (comments skipped).
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

/// Scrapes until `key` reaches `want` (counts from other cores arrive with their rounds);
/// bounded, then the last value is compared.
fn eventually(port: u16, key: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = scrape(port).get(key).copied();
        if got == Some(want) || Instant::now() > deadline {
            assert_eq!(got, Some(want), "{key}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_scrape_sums_every_core_and_the_probes_answer() {
    let mport = free_port();
    let murl = format!("http://127.0.0.1:{mport}");
    let server = Server::start("metrics", &["--cores", "2", "--listen-metrics-urls", &murl]);
    let rt = runtime();
    rt.block_on(async {
        // Eight connections: the kernel spreads them over both cores.
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(connect(&server).await);
        }
        for i in 0..40 {
            let c = &mut clients[i % 8];
            c.put(format!("k{i:02}"), "v", None).await.unwrap();
        }
        for i in 0..3 {
            clients[i].delete(format!("k{i:02}"), None).await.unwrap();
        }
        use etcd_client::{Txn, TxnOp};
        clients[5]
            .txn(Txn::new().and_then([TxnOp::put("t1", "v", None), TxnOp::put("t2", "v", None)]))
            .await
            .unwrap();
        for c in clients.iter_mut() {
            c.get("k10", None).await.unwrap();
        }
        // A watch opened and dropped by its client: handled as Canceled.
        let mut w = connect(&server).await;
        let stream = w.watch("k", None).await.unwrap();
        drop(stream);
        drop(w);
    });
    // The client's connections close with its runtime.
    drop(rt);
    let m = scrape(mport);
    assert_eq!(value(&m, "etcd_mvcc_put_total"), 42.0);
    assert_eq!(value(&m, "etcd_mvcc_delete_total"), 3.0);
    assert_eq!(value(&m, "etcd_mvcc_txn_total"), 1.0);
    assert_eq!(value(&m, "etcd_mvcc_range_total"), 8.0);
    assert_eq!(value(&m, "etcd_debugging_mvcc_keys_total"), 39.0);
    let put = "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    assert_eq!(
        value(&m, &format!("grpc_server_started_total{{{put}}}")),
        40.0
    );
    assert_eq!(
        value(
            &m,
            &format!("grpc_server_handled_total{{grpc_code=\"OK\",{put}}}")
        ),
        40.0
    );
    assert_eq!(
        value(&m, &format!("grpc_server_msg_received_total{{{put}}}")),
        40.0
    );
    assert_eq!(
        value(&m, &format!("grpc_server_msg_sent_total{{{put}}}")),
        40.0
    );
    assert!(value(&m, "etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert_eq!(value(&m, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&m, "etcd_server_is_leader"), 1.0);
    assert!(value(&m, "etcd_disk_wal_fsync_duration_seconds_count") > 0.0);
    assert!(value(&m, "keel_stage_duration_seconds_count{stage=\"wal_sync\"}") > 0.0);
    assert!(
        value(
            &m,
            "keel_stage_duration_seconds_count{stage=\"raft_round_trip\"}"
        ) >= 40.0
    );
    assert!(value(&m, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(!m
        .keys()
        .any(|k| k.starts_with("grpc_server_handling_seconds")));
    assert_eq!(value(&m, "etcd_server_quota_backend_bytes"), 2147483648.0);
    assert_eq!(
        value(&m, "etcd_server_version{server_version=\"3.4.23\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "etcd_cluster_version{cluster_version=\"3.4\"}"),
        1.0
    );
    eventually(
        mport,
        "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
        1.0,
    );
    // The client URL serves the same scrape.
    assert_eq!(
        value(&scrape(server.client_port), "etcd_mvcc_put_total"),
        42.0
    );

    // /health counts itself; the probes answer in etcd 3.5's format.
    assert_eq!(
        http(mport, "GET", "/health"),
        (200, "{\"health\":\"true\"}".into())
    );
    assert_eq!(http(mport, "GET", "/health?serializable=true").0, 200);
    assert_eq!(value(&scrape(mport), "etcd_server_health_success"), 2.0);
    assert_eq!(http(mport, "GET", "/livez"), (200, "ok\n".into()));
    assert_eq!(
        http(mport, "GET", "/readyz?verbose"),
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n".into()
        )
    );
    assert_eq!(
        http(mport, "GET", "/readyz?verbose&exclude=data_corruption").1,
        "[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
    );
    assert_eq!(
        http(mport, "GET", "/readyz/linearizable_read"),
        (200, "ok\n".into())
    );
    assert_eq!(http(mport, "POST", "/livez").0, 405);
    assert_eq!(http(mport, "GET", "/livez/nope").0, 404);
    // The metrics URL serves no /version and no gRPC-gateway paths; the client URL does.
    assert_eq!(http(mport, "GET", "/version").0, 404);
    let (status, body) = http(server.client_port, "GET", "/version");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}"
    );
}

#[test]
fn the_reported_version_is_settable() {
    let server = Server::start(
        "metrics-version",
        &["--etcd-version", "3.5.17", "--metrics", "extensive"],
    );
    let (_, body) = http(server.client_port, "GET", "/version");
    assert_eq!(
        body,
        "{\"etcdserver\":\"3.5.17\",\"etcdcluster\":\"3.5.0\"}"
    );
    let m = scrape(server.client_port);
    assert_eq!(
        value(&m, "etcd_server_version{server_version=\"3.5.17\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "etcd_cluster_version{cluster_version=\"3.5\"}"),
        1.0
    );
    let rt = runtime();
    let version = rt.block_on(async {
        let mut c = connect(&server).await;
        c.status().await.unwrap().version().to_string()
    });
    assert_eq!(version, "3.5.17");
    // --metrics extensive: the handling-time histograms (etcd's alerts read them).
    let m = scrape(server.client_port);
    assert_eq!(
        value(&m, "grpc_server_handling_seconds_count{grpc_method=\"Status\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"unary\"}"),
        1.0
    );
    // A malformed version stops the boot with a message.
    let mut bad = Server::unstarted("metrics-bad-version");
    bad.set_extra(&["--etcd-version", "3.5"]);
    let (code, log) = bad
        .run_expecting_exit(Duration::from_secs(10))
        .expect("exits");
    assert_ne!(code, 0);
    assert!(log.contains("--etcd-version"), "{log}");
}
