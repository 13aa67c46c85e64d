//! `keel grpc-proxy start` in front of real members, driven by etcdctl and the etcd-client
//! crate: the API forwarded, watches coalesced (one upstream watch per range, counted by the
//! member itself), history merged without gap or duplicate, a client that stops reading,
//! a killed upstream member, `--namespace`, the read cache, registration, bad input.
//! (The watch checker also runs through the proxy: tests/watch_checker.rs.)

use crate::common;

use common::{http_get, metric, runtime, Cluster, Proxy, Server};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::time::Duration;
use tokio::time::timeout;

const RPC: Duration = Duration::from_secs(10);

async fn client(ep: &str) -> Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(RPC);
    Client::connect([ep], Some(opts)).await.expect("connect")
}

/// Every (revision, key, value) a watch delivers, until `n` events or 20 s.
async fn collect(stream: &mut etcd_client::WatchStream, n: usize) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let Ok(Ok(Some(r))) = timeout(Duration::from_secs(20), stream.message()).await else {
            break;
        };
        for e in r.events() {
            let kv = e.kv().unwrap();
            let v = if e.event_type() == EventType::Delete {
                "<deleted>".to_string()
            } else {
                kv.value_str().unwrap().to_string()
            };
            out.push((kv.mod_revision(), kv.key_str().unwrap().to_string(), v));
        }
    }
    out
}

#[test]
fn etcdctl_through_the_proxy() {
    let s = Server::start("pxctl", &[]);
    let p = Proxy::start("pxctl", &[&s.endpoint()], &[]);
    let ok = |args: &[&str]| {
        let r = p.etcdctl(args);
        assert!(r.ok, "etcdctl {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    };
    assert_eq!(ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(ok(&["get", "foo", "--consistency=s"]), "foo\nbar\n");
    // The same bytes as the member answers.
    assert_eq!(
        ok(&["get", "foo", "--print-value-only"]),
        s.etcdctl(&["get", "foo", "--print-value-only"]).stdout
    );
    let t = p.etcdctl_txn("value(\"foo\") = \"bar\"\n\nput foo baz\n\nput foo nope\n\n");
    assert!(t.starts_with("SUCCESS"), "{t}");
    assert_eq!(ok(&["get", "foo", "--print-value-only"]), "baz\n");
    assert_eq!(ok(&["del", "foo"]), "1\n");
    let lease = ok(&["lease", "grant", "60"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    assert!(ok(&["lease", "keep-alive", "--once", &id]).contains("keepalived with TTL"));
    ok(&["put", "leased", "v", "--lease", &id]);
    assert!(ok(&["lease", "timetolive", &id, "--keys"]).contains("attached keys([leased])"));
    ok(&["lease", "revoke", &id]);
    assert_eq!(ok(&["get", "leased"]), "");
    assert_eq!(ok(&["lock", "l1", "--", "echo", "held"]), "held\n");
    // MemberList answers with the proxy itself (etcd's proxy with its default
    // --advertise-client-url).
    assert!(ok(&["member", "list"]).contains("127.0.0.1:23790"));
    let h = p.etcdctl(&["endpoint", "health"]);
    assert!(
        h.ok && format!("{}{}", h.stdout, h.stderr).contains("is healthy"),
        "{h:?}"
    );
    let snap = s.dir.join("through-proxy.db");
    ok(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(std::fs::metadata(&snap).unwrap().len() > 0);
    // Errors come back as the member's own.
    let r = p.etcdctl(&["get", "foo", "--rev=1000"]);
    assert!(
        !r.ok && r.stderr.contains("required revision is a future revision"),
        "{}",
        r.stderr
    );
    ok(&["compact", "3"]);
    let r = p.etcdctl(&["get", "foo", "--rev=2"]);
    assert!(
        !r.ok && r.stderr.contains("required revision has been compacted"),
        "{}",
        r.stderr
    );
    // /health and /metrics on the proxy's port.
    assert_eq!(p.http_get("/health"), "{\"health\":\"true\"}");
    let m = p.http_get("/metrics");
    assert!(
        m.contains("grpc_server_started_total{grpc_method=\"Put\""),
        "{m}"
    );
}

#[test]
fn watchers_share_one_upstream_watch_and_see_every_put() {
    let s = Server::start("pxshare", &[]);
    let p = Proxy::start("pxshare", &[&s.endpoint()], &[]);
    let (pep, sep) = (p.endpoint(), s.endpoint());
    let rt = runtime();
    rt.block_on(async {
        // 4 connections (spread over the proxy's cores), 10 watchers each on "k" and 2
        // each on the prefix "p/".
        let mut streams = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut c = client(&pep).await;
            for _ in 0..10 {
                let s = c.watch("k", None).await.expect("watch k");
                streams.push(("k", s));
            }
            for _ in 0..2 {
                let s = c
                    .watch("p/", Some(WatchOptions::new().with_prefix()))
                    .await
                    .expect("watch p/");
                streams.push(("p/", s));
            }
            clients.push(c);
        }
        let metrics = p.http_get("/metrics");
        assert_eq!(
            metric(&metrics, "keel_grpc_proxy_upstream_watches"),
            Some(2.0),
            "{metrics}"
        );
        assert_eq!(metric(&metrics, "keel_grpc_proxy_watchers"), Some(48.0));
        let member = http_get(s.client_port, "/metrics");
        assert_eq!(
            metric(&member, "etcd_debugging_mvcc_watcher_total"),
            Some(2.0),
            "the member sees one watch per distinct range"
        );
        let mut w = client(&sep).await;
        let mut want_k = Vec::new();
        let mut want_p = Vec::new();
        for i in 0..30 {
            let r = w.put("k", format!("v{i}"), None).await.unwrap();
            want_k.push((
                r.header().unwrap().revision(),
                "k".to_string(),
                format!("v{i}"),
            ));
            let r = w.put(format!("p/{i}"), "x", None).await.unwrap();
            want_p.push((
                r.header().unwrap().revision(),
                format!("p/{i}"),
                "x".to_string(),
            ));
        }
        for (what, s) in streams.iter_mut() {
            let want = if *what == "k" { &want_k } else { &want_p };
            let got = collect(s, want.len()).await;
            assert_eq!(&got, want, "watcher of {what}");
        }
        // Cancelling every downstream watcher ends the upstream watches.
        drop(streams);
        drop(clients);
        let mut left = None;
        for _ in 0..100 {
            left = metric(
                &http_get(s.client_port, "/metrics"),
                "etcd_debugging_mvcc_watcher_total",
            );
            if left == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left, Some(0.0), "upstream watches left behind");
    });
}

#[test]
fn a_watcher_from_history_joins_the_shared_watch_without_gap_or_duplicate() {
    let s = Server::start("pxhist", &[]);
    let p = Proxy::start("pxhist", &[&s.endpoint()], &[]);
    let (pep, sep) = (p.endpoint(), s.endpoint());
    runtime().block_on(async {
        let mut w = client(&sep).await;
        let mut want = Vec::new();
        for i in 0..20 {
            let r = w.put("h", format!("a{i}"), None).await.unwrap();
            want.push((
                r.header().unwrap().revision(),
                "h".to_string(),
                format!("a{i}"),
            ));
        }
        let mut c = client(&pep).await;
        let mut live = c.watch("h", None).await.unwrap();
        // Writes go on while the second watcher reads history from revision 5.
        let writer = tokio::spawn(async move {
            let mut w = client(&sep).await;
            let mut out = Vec::new();
            for i in 0..200 {
                let r = w.put("h", format!("b{i}"), None).await.unwrap();
                out.push((
                    r.header().unwrap().revision(),
                    "h".to_string(),
                    format!("b{i}"),
                ));
            }
            out
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut c2 = client(&pep).await;
        let mut old = c2
            .watch("h", Some(WatchOptions::new().with_start_revision(5)))
            .await
            .unwrap();
        let later = writer.await.unwrap();
        let got_live = collect(&mut live, later.len()).await;
        assert_eq!(got_live, later, "the live watcher");
        want.extend(later);
        let want: Vec<_> = want.into_iter().filter(|e| e.0 >= 5).collect();
        let got_old = collect(&mut old, want.len()).await;
        assert_eq!(got_old, want, "the watcher from revision 5");
        // Once merged, it rides the shared watch: one upstream watch left.
        let mut n = None;
        for _ in 0..100 {
            n = metric(
                &http_get(s.client_port, "/metrics"),
                "etcd_debugging_mvcc_watcher_total",
            );
            if n == Some(1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(n, Some(1.0), "the private catch-up watch should be gone");
    });
}

#[test]
fn a_client_that_stops_reading_holds_up_no_one() {
    let s = Server::start("pxslow", &[]);
    let p = Proxy::start("pxslow", &[&s.endpoint()], &[]);
    let (pep, sep) = (p.endpoint(), s.endpoint());
    runtime().block_on(async {
        let mut slow_c = client(&pep).await;
        let mut slow = slow_c.watch("s", None).await.unwrap();
        let mut fast_c = client(&pep).await;
        let mut fast = fast_c.watch("s", None).await.unwrap();
        let mut w = client(&sep).await;
        let big = "x".repeat(8 * 1024);
        let mut want = Vec::new();
        // 1,600 responses of 8 KiB: beyond the proxy's queue for the stream (1,024) and
        // the HTTP/2 windows, so the slow watcher is cut loose from the shared watch.
        for i in 0..1600 {
            let v = format!("{i}:{big}");
            let r = w.put("s", v.clone(), None).await.unwrap();
            want.push((r.header().unwrap().revision(), "s".to_string(), v));
        }
        // The reading client gets everything while the other reads nothing.
        let got = collect(&mut fast, want.len()).await;
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the reading watcher's events differ");
        let m = p.http_get("/metrics");
        assert_eq!(metric(&m, "keel_grpc_proxy_catching_up"), Some(1.0), "{m}");
        // Then the slow one catches up, in order, nothing lost or repeated.
        let got = collect(&mut slow, want.len()).await;
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the slow watcher's events differ");
        // And both are live again.
        let r = w.put("s", "last", None).await.unwrap();
        let rev = r.header().unwrap().revision();
        assert_eq!(
            collect(&mut slow, 1).await,
            vec![(rev, "s".into(), "last".into())]
        );
        assert_eq!(
            collect(&mut fast, 1).await,
            vec![(rev, "s".into(), "last".into())]
        );
    });
}

#[test]
fn a_killed_upstream_member_loses_no_event() {
    let mut c = Cluster::start("pxkill", 3, &common::FAST_ELECTIONS);
    let eps = c.endpoints();
    let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
    let p = Proxy::start("pxkill", &refs, &[]);
    let pep = p.endpoint();
    let rt = runtime();
    let mut watch_c = rt.block_on(client(&pep));
    let mut stream = rt
        .block_on(watch_c.watch("f/", Some(WatchOptions::new().with_prefix())))
        .unwrap();
    // Writes to members 1 and 2 only; member 0 (the proxy's first endpoint, so the one it
    // dialed) is killed in the middle.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let acked = acked.clone();
        let eps = vec![eps[1].clone(), eps[2].clone()];
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut clients = vec![client(&eps[0]).await, client(&eps[1]).await];
                for i in 0..400 {
                    let c = &mut clients[i % 2];
                    if let Ok(Ok(r)) = timeout(RPC, c.put(format!("f/{i}"), "v", None)).await {
                        acked
                            .lock()
                            .unwrap()
                            .push((r.header().unwrap().revision(), format!("f/{i}")));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    c.member(0).kill9();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 300, "only {} puts acknowledged", acked.len());
    let last = acked.iter().map(|a| a.0).max().unwrap();
    let got = rt.block_on(async {
        let mut out = Vec::new();
        while out
            .last()
            .map_or(true, |e: &(i64, String, String)| e.0 < last)
        {
            let more = collect(&mut stream, 1).await;
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        out
    });
    // Strictly increasing revisions (no duplicate, in order) and every acknowledged put.
    for pair in got.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "out of order or repeated: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let seen: std::collections::HashSet<(i64, String)> =
        got.iter().map(|e| (e.0, e.1.clone())).collect();
    let missing: Vec<_> = acked.iter().filter(|a| !seen.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged puts never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn namespace_keeps_keys_under_its_prefix() {
    let s = Server::start("pxns", &[]);
    let p = Proxy::start("pxns", &[&s.endpoint()], &["--namespace=tenant/"]);
    s.etcdctl(&["put", "outside", "o"]);
    let r = p.etcdctl(&["put", "a", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        s.etcdctl(&["get", "tenant/a", "--print-value-only"]).stdout,
        "1\n"
    );
    assert_eq!(p.etcdctl(&["get", "a"]).stdout, "a\n1\n");
    // The whole key space through the proxy is the namespace, prefix stripped.
    assert_eq!(
        p.etcdctl(&["get", "", "--from-key", "--keys-only"]).stdout,
        "a\n\n"
    );
    runtime().block_on(async {
        let mut c = client(&p.endpoint()).await;
        let mut st = c
            .watch("", Some(WatchOptions::new().with_from_key()))
            .await
            .unwrap();
        let mut direct = client(&s.endpoint()).await;
        direct.put("outside2", "x", None).await.unwrap();
        let r = direct.put("tenant/b", "2", None).await.unwrap();
        let got = collect(&mut st, 1).await;
        assert_eq!(
            got,
            vec![(r.header().unwrap().revision(), "b".into(), "2".into())]
        );
        let t = c
            .txn(
                etcd_client::Txn::new()
                    .when([etcd_client::Compare::value(
                        "b",
                        etcd_client::CompareOp::Equal,
                        "2",
                    )])
                    .and_then([etcd_client::TxnOp::get("a", None)]),
            )
            .await
            .unwrap();
        assert!(t.succeeded());
        let Some(etcd_client::TxnOpResponse::Get(g)) = t.op_responses().into_iter().next() else {
            panic!("no get in the txn response")
        };
        assert_eq!(g.kvs()[0].key_str().unwrap(), "a");
    });
}

#[test]
fn serializable_reads_are_served_from_cache_while_a_watch_keeps_them_fresh() {
    let s = Server::start("pxcache", &[]);
    // One core: the watch and the reads share the core's cache.
    let p = Proxy::start("pxcache", &[&s.endpoint()], &["--cores=1"]);
    runtime().block_on(async {
        let mut c = client(&p.endpoint()).await;
        c.put("c/x", "1", None).await.unwrap();
        let mut st = c
            .watch("c/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let ser = || Some(GetOptions::new().with_serializable());
        for _ in 0..5 {
            let g = c.get("c/x", ser()).await.unwrap();
            assert_eq!(g.kvs()[0].value_str().unwrap(), "1");
        }
        let m = p.http_get("/metrics");
        assert!(
            metric(&m, "etcd_grpc_proxy_cache_hits_total").unwrap() >= 4.0,
            "{m}"
        );
        // A write the proxy never saw (to the member directly) reaches the cache through
        // the watch: the next serializable read has it.
        let mut direct = client(&s.endpoint()).await;
        direct.put("c/x", "2", None).await.unwrap();
        collect(&mut st, 1).await;
        let g = c.get("c/x", ser()).await.unwrap();
        assert_eq!(g.kvs()[0].value_str().unwrap(), "2");
        // Linearizable reads always go to the cluster.
        direct.put("c/x", "3", None).await.unwrap();
        let g = c.get("c/x", None).await.unwrap();
        assert_eq!(g.kvs()[0].value_str().unwrap(), "3");
    });
}

#[test]
fn lease_keep_alives_through_the_proxy_keep_the_lease() {
    let s = Server::start("pxlease", &[]);
    let p = Proxy::start("pxlease", &[&s.endpoint()], &[]);
    runtime().block_on(async {
        let mut a = client(&p.endpoint()).await;
        let mut b = client(&p.endpoint()).await;
        let id = a.lease_grant(2, None).await.unwrap().id();
        let (mut ka, mut ra) = a.lease_keep_alive(id).await.unwrap();
        let (mut kb, mut rb) = b.lease_keep_alive(id).await.unwrap();
        // 5 s of keep-alives from two clients for one lease of 2 s.
        for _ in 0..10 {
            ka.keep_alive().await.unwrap();
            kb.keep_alive().await.unwrap();
            let x = timeout(RPC, ra.message()).await.unwrap().unwrap().unwrap();
            let y = timeout(RPC, rb.message()).await.unwrap().unwrap().unwrap();
            assert_eq!((x.id(), y.id()), (id, id));
            assert!(x.ttl() > 0 && y.ttl() > 0);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ttl = a.lease_time_to_live(id, None).await.unwrap().ttl();
        assert!(ttl > 0, "the lease expired under keep-alives");
        // An unknown lease: what the member answers (TTL 0), through the proxy too.
        let mut direct = client(&s.endpoint()).await;
        let unknown = |r: Result<_, etcd_client::Error>| match r {
            Ok((_, _)) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            unknown(a.lease_keep_alive(12345).await),
            unknown(direct.lease_keep_alive(12345).await)
        );
    });
}

#[test]
fn registration_lists_proxies_as_members() {
    let s = Server::start("pxreg", &[]);
    let port = common::free_port();
    let adv = format!("127.0.0.1:{port}");
    let p = Proxy::start(
        "pxreg",
        &[&s.endpoint()],
        &[
            "--resolver-prefix=___grpc",
            "--resolver-ttl=5",
            &format!("--advertise-client-url={adv}"),
        ],
    );
    let mut found = String::new();
    for _ in 0..100 {
        found = s
            .etcdctl(&["get", "___grpc/", "--prefix", "--print-value-only"])
            .stdout;
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(found.contains(&format!("\"Addr\":\"{adv}\"")), "{found}");
    let list = p.etcdctl(&["member", "list"]).stdout;
    assert!(list.contains(&adv), "{list}");
}

#[test]
fn bad_command_lines_and_unreachable_upstreams() {
    let keel = env!("CARGO_BIN_EXE_keel");
    let out = std::process::Command::new(keel)
        .args(["grpc-proxy", "start", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag: --no-such-flag"));
    let out = std::process::Command::new(keel)
        .args(["grpc-proxy", "start", "--resolver-ttl=5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid resolver-prefix"));
    let out = std::process::Command::new(keel)
        .args(["grpc-proxy", "start", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--namespace"));
    // No member yet: the proxy starts anyway, calls fail as unavailable; then the member
    // comes up on that address and the same proxy serves.
    let mut s = Server::unstarted("pxdown");
    let p = Proxy::start("pxdown", &[&s.endpoint()], &[]);
    let r = p.etcdctl(&["get", "x", "--command-timeout=3s"]);
    assert!(!r.ok, "{}", r.stdout);
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);
    let mut ok = false;
    for _ in 0..50 {
        if p.etcdctl(&["put", "x", "1"]).ok {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the proxy never reached the member once it was up");
    // A watch from a compacted revision is cancelled with etcd's compact revision.
    s.etcdctl(&["put", "x", "2"]);
    s.etcdctl(&["put", "x", "3"]);
    s.etcdctl(&["compact", "3"]);
    runtime().block_on(async {
        let mut c = client(&p.endpoint()).await;
        let mut st = c
            .watch("x", Some(WatchOptions::new().with_start_revision(2)))
            .await
            .unwrap();
        // Created, then cancelled with the compact revision (as the member does).
        loop {
            let r = timeout(RPC, st.message()).await.unwrap();
            match r {
                Ok(Some(r)) if r.created() && !r.canceled() => continue,
                Ok(Some(r)) => {
                    assert!(r.canceled(), "{r:?}");
                    assert_eq!(r.compact_revision(), 3);
                    break;
                }
                Err(e) => panic!("{e}"),
                Ok(None) => panic!("stream ended without the cancel"),
            }
        }
    });
}

#[test]
fn auth_through_the_proxy_is_the_callers() {
    let s = Server::start("pxauth", &[]);
    let p = Proxy::start("pxauth", &[&s.endpoint()], &[]);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "r"],
        &[
            "role",
            "grant-permission",
            "r",
            "readwrite",
            "--prefix",
            "u/",
        ],
        &["user", "add", "u:upw"],
        &["user", "grant-role", "u", "r"],
        &["auth", "enable"],
    ] {
        let r = s.etcdctl(args);
        assert!(r.ok, "{args:?}: {}", r.stderr);
    }
    let r = p.etcdctl(&["--user=u:upw", "put", "u/a", "1"]);
    assert!(r.ok, "{}", r.stderr);
    let r = p.etcdctl(&["--user=u:upw", "put", "other", "1"]);
    assert!(
        !r.ok && r.stderr.contains("permission denied"),
        "{}",
        r.stderr
    );
    let r = p.etcdctl(&["put", "u/b", "1"]);
    assert!(
        !r.ok && r.stderr.contains("user name is empty"),
        "{}",
        r.stderr
    );
    runtime().block_on(async {
        let opts = etcd_client::ConnectOptions::new()
            .with_user("u", "upw")
            .with_timeout(RPC);
        let mut c = Client::connect([p.endpoint()], Some(opts)).await.unwrap();
        // A watch the user may not read: created and cancelled at once, as by the member.
        let mut st = c.watch("other", None).await.unwrap();
        let r = timeout(RPC, st.message()).await.unwrap().unwrap().unwrap();
        assert!(r.canceled(), "{r:?}");
        assert!(r.cancel_reason().contains("permission denied"), "{r:?}");
        // One it may: events arrive.
        let mut ok = c
            .watch("u/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let put = c.put("u/c", "2", None).await.unwrap();
        let got = collect(&mut ok, 1).await;
        assert_eq!(
            got,
            vec![(put.header().unwrap().revision(), "u/c".into(), "2".into())]
        );
        // History (a private upstream watch, with the caller's token) then live.
        let mut hist = c
            .watch(
                "u/",
                Some(WatchOptions::new().with_prefix().with_start_revision(1)),
            )
            .await
            .unwrap();
        let got = collect(&mut hist, 2).await;
        let keys: Vec<&str> = got.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(keys, ["u/a", "u/c"]);
    });
}
