//! The Lease API against the real server binary, through etcdctl 3.4 (`lease grant`,
//! `list`, `timetolive [--keys]`, `revoke`, `keep-alive --once`, `put --lease` and
//! `--ignore-lease`, with their exact output and error texts) and through the `etcd-client`
//! crate: client-chosen IDs and grant errors, the minimum TTL, revoke deleting every
//! attached key in one revision (and one watch response), keep-alive streams carrying
//! several leases (on the raw gRPC stream), TimeToLive with keys, Leases, expiry of a lease
//! nobody keeps alive and survival of one that is kept alive, Put and Txn with an unknown
//! lease, and leases with their keys across a server restart.
//!
//! Expectations are etcd 3.4.23's: every test also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`. Every wait is bounded; expiry waits allow the TTL
//! plus 5 s.

use crate::common;

use common::{connect, grpc_status, runtime, Server};
use etcd_client::{
    Client, Compare, CompareOp, Error, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use keel::pb::etcdserverpb as pb;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
/// etcd's minimum lease TTL with default flags: 1.5 election timeouts (1.5 s), rounded up.
const TTL_MIN_S: i64 = 2;
/// How long after its TTL an expired lease's keys may take to go.
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// The lease ID in etcdctl's `lease <16 hex digits> granted with TTL(<ttl>s)` line.
#[track_caller]
fn granted_id(stdout: &str, ttl_s: i64) -> String {
    let id = stdout
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(&format!(" granted with TTL({ttl_s}s)\n")))
        .unwrap_or_else(|| panic!("not a grant line: {stdout:?}"));
    assert_eq!(id.len(), 16, "etcdctl prints IDs as %016x: {stdout:?}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    id.to_string()
}

fn grant_ctl(s: &Server, ttl_s: i64) -> String {
    let c = s.etcdctl(&["lease", "grant", &ttl_s.to_string()]);
    assert!(c.ok, "{c:?}");
    granted_id(&c.stdout, ttl_s)
}

/// Parses `lease <id> granted with TTL(<g>s), remaining(<r>s)[, attached keys([k ...])]`
/// into (granted, remaining, sorted keys).
#[track_caller]
fn timetolive_line(stdout: &str, id: &str) -> (i64, i64, Option<Vec<String>>) {
    let rest = stdout
        .strip_prefix(&format!("lease {id} granted with TTL("))
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a timetolive line: {stdout:?}"));
    let (granted, rest) = rest.split_once("s), remaining(").expect(stdout);
    let (remaining, rest) = rest.split_once("s)").expect(stdout);
    let keys = if rest.is_empty() {
        None
    } else {
        let list = rest
            .strip_prefix(", attached keys([")
            .and_then(|r| r.strip_suffix("])"))
            .unwrap_or_else(|| panic!("bad keys part: {stdout:?}"));
        let mut v: Vec<String> = list.split_whitespace().map(String::from).collect();
        v.sort();
        Some(v)
    };
    (granted.parse().unwrap(), remaining.parse().unwrap(), keys)
}

fn str_keys(keys: &[Vec<u8>]) -> Vec<String> {
    let mut v: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    v.sort();
    v
}

async fn revision(c: &mut Client) -> i64 {
    c.get("any", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Opens a watch on `prefix` and waits for its created response.
async fn watch_prefix(c: &mut Client, prefix: &str) -> WatchStream {
    let mut ws = tokio::time::timeout(
        WAIT,
        c.watch(prefix, Some(WatchOptions::new().with_prefix())),
    )
    .await
    .expect("watch call within 10 s")
    .expect("watch call");
    let r = next(&mut ws, WAIT).await;
    assert!(r.created(), "{r:?}");
    ws
}

#[track_caller]
fn next(
    ws: &mut WatchStream,
    wait: Duration,
) -> impl std::future::Future<Output = WatchResponse> + '_ {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(wait, ws.message()).await {
            Err(_) => panic!("no watch response within {wait:?} (at {at})"),
            Ok(Err(e)) => panic!("watch stream error: {e:?} (at {at})"),
            Ok(Ok(None)) => panic!("watch stream ended (at {at})"),
            Ok(Ok(Some(r))) => r,
        }
    }
}

/// (type, key, mod_revision) of each event in `r`.
fn events(r: &WatchResponse) -> Vec<(EventType, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// etcdctl

#[test]
fn etcdctl_grant_list_timetolive_revoke() {
    let s = Server::start("lease-ctl", &[]);
    s.etcdctl(&["lease", "list"]).expect_ok("found 0 leases\n");
    let a = grant_ctl(&s, 10);
    let b = grant_ctl(&s, 100);
    assert_ne!(a, b);
    let l = s.etcdctl(&["lease", "list"]);
    assert!(l.ok, "{l:?}");
    let mut lines: Vec<&str> = l.stdout.lines().collect();
    assert_eq!(lines.remove(0), "found 2 leases", "{l:?}");
    lines.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(lines, want, "ids in no particular order");

    s.etcdctl(&["put", "--lease", &a, "k1", "v1"])
        .expect_ok("OK\n");
    s.etcdctl(&["put", &format!("--lease={a}"), "k2", "v2"])
        .expect_ok("OK\n");
    let t = s.etcdctl(&["lease", "timetolive", &a]);
    assert!(t.ok, "{t:?}");
    let (granted, remaining, keys) = timetolive_line(&t.stdout, &a);
    assert_eq!((granted, keys), (10, None));
    assert!((1..=10).contains(&remaining), "{t:?}");
    let t = s.etcdctl(&["lease", "timetolive", "--keys", &a]);
    assert!(t.ok, "{t:?}");
    let (granted, _, keys) = timetolive_line(&t.stdout, &a);
    assert_eq!(granted, 10);
    assert_eq!(keys.unwrap(), ["k1", "k2"]);
    let t = s.etcdctl(&["lease", "timetolive", "--keys", &b]);
    assert_eq!(
        timetolive_line(&t.stdout, &b).2.unwrap(),
        Vec::<String>::new()
    );

    // keep-alive --once answers the granted TTL.
    s.etcdctl(&["lease", "keep-alive", "--once", &a])
        .expect_ok(&format!("lease {a} keepalived with TTL(10)\n"));

    // Revoke: the attached keys go with it.
    s.etcdctl(&["lease", "revoke", &a])
        .expect_ok(&format!("lease {a} revoked\n"));
    s.etcdctl(&["get", "--prefix", "k"]).expect_ok("");
    // An unknown (revoked) lease: timetolive succeeds and says so, with or without --keys.
    s.etcdctl(&["lease", "timetolive", &a])
        .expect_ok(&format!("lease {a} already expired\n"));
    s.etcdctl(&["lease", "timetolive", "--keys", &a])
        .expect_ok(&format!("lease {a} already expired\n"));
    s.etcdctl(&["lease", "timetolive", "1234"])
        .expect_ok("lease 0000000000001234 already expired\n");
    // Revoking or keeping alive an unknown lease fails.
    let r = s.etcdctl(&["lease", "revoke", &a]);
    r.expect_err("Error: failed to revoke lease (etcdserver: requested lease not found)\n");
    assert_eq!(r.stdout, "");
    s.etcdctl(&["lease", "keep-alive", "--once", &a])
        .expect_err("Error: etcdserver: requested lease not found\n");
    let l = s.etcdctl(&["lease", "list"]);
    l.expect_ok(&format!("found 1 leases\n{b}\n"));
}

#[test]
fn etcdctl_put_with_unknown_lease_and_ignore_lease() {
    let s = Server::start("lease-ctl-put", &[]);
    s.etcdctl(&["put", "--lease=1234", "k", "v"])
        .expect_err("Error: etcdserver: requested lease not found\n");
    s.etcdctl(&["get", "k"]).expect_ok("");

    let id = grant_ctl(&s, 100);
    let id_dec = i64::from_str_radix(&id, 16).unwrap();
    s.etcdctl(&["put", &format!("--lease={id}"), "k", "v1"])
        .expect_ok("OK\n");
    let g = s.etcdctl(&["get", "-w", "json", "k"]);
    assert!(g.stdout.contains(&format!("\"lease\":{id_dec}")), "{g:?}");
    // --ignore-lease: the new value keeps the key's current lease.
    s.etcdctl(&["put", "--ignore-lease", "k", "v2"])
        .expect_ok("OK\n");
    let g = s.etcdctl(&["get", "-w", "json", "k"]);
    assert!(g.stdout.contains(&format!("\"lease\":{id_dec}")), "{g:?}");
    assert!(g.stdout.contains("\"version\":2"), "{g:?}");
    s.etcdctl(&["get", "k"]).expect_ok("k\nv2\n");
    let t = s.etcdctl(&["lease", "timetolive", "--keys", &id]);
    assert_eq!(timetolive_line(&t.stdout, &id).2.unwrap(), ["k"]);
    // A plain put detaches the key from its lease.
    s.etcdctl(&["put", "k", "v3"]).expect_ok("OK\n");
    let g = s.etcdctl(&["get", "-w", "json", "k"]);
    assert!(!g.stdout.contains("\"lease\""), "{g:?}");
    let t = s.etcdctl(&["lease", "timetolive", "--keys", &id]);
    assert_eq!(
        timetolive_line(&t.stdout, &id).2.unwrap(),
        Vec::<String>::new()
    );
    // --ignore-lease on a key that does not exist.
    s.etcdctl(&["put", "--ignore-lease", "nokey", "v"])
        .expect_err("Error: etcdserver: key not found\n");
    s.etcdctl(&["get", "nokey"]).expect_ok("");
}

// ---------------------------------------------------------------------------------------
// etcd-client

#[test]
fn grant_ids_ttls_and_errors() {
    let s = Server::start("lease-grant", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let rev = revision(&mut c).await;
        let r = c
            .lease_grant(10, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .unwrap();
        assert_eq!((r.id(), r.ttl(), r.error()), (0x1234, 10, ""));
        assert_eq!(r.header().unwrap().revision(), rev, "a grant writes no key");
        let (code, msg) = grpc_status(
            c.lease_grant(20, Some(LeaseGrantOptions::new().with_id(0x1234)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::FailedPrecondition,
                "etcdserver: lease already exists"
            )
        );
        // The existing lease is unchanged.
        let t = c.lease_time_to_live(0x1234, None).await.unwrap();
        assert_eq!(t.granted_ttl(), 10);

        // TTLs: at most 9,000,000,000 s; below the minimum is raised to it.
        let (code, msg) = grpc_status(c.lease_grant(9_000_000_001, None).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (tonic::Code::OutOfRange, "etcdserver: too large lease TTL")
        );
        let r = c.lease_grant(9_000_000_000, None).await.unwrap();
        assert_eq!(r.ttl(), 9_000_000_000);
        let big = r.id();
        let r = c.lease_grant(1, None).await.unwrap();
        assert_eq!(r.ttl(), TTL_MIN_S, "a 1-s grant gets the minimum TTL");
        let one = r.id();
        let r = c.lease_grant(0, None).await.unwrap();
        assert_eq!(r.ttl(), TTL_MIN_S, "a 0-s grant gets the minimum TTL");
        let zero = r.id();
        let r = c.lease_grant(-5, None).await.unwrap();
        assert_eq!(r.ttl(), TTL_MIN_S, "a negative TTL gets the minimum TTL");
        // Server-chosen IDs are positive and distinct.
        let mut chosen = vec![big, one, zero, r.id()];
        assert!(chosen.iter().all(|&id| id > 0), "{chosen:x?}");
        chosen.sort();
        chosen.dedup();
        assert_eq!(chosen.len(), 4);
        let t = c.lease_time_to_live(one, None).await.unwrap();
        assert_eq!(t.granted_ttl(), TTL_MIN_S);

        // Leases lists every live lease (in no particular order).
        let r = c.leases().await.unwrap();
        let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
        ids.sort();
        assert!(ids.contains(&0x1234) && ids.contains(&big), "{ids:?}");
        // etcdctl prints a client-chosen small ID zero-padded.
        let l = s.etcdctl(&["lease", "list"]);
        assert!(l.stdout.lines().any(|x| x == "0000000000001234"), "{l:?}");
        let t = s.etcdctl(&["lease", "timetolive", "1234"]);
        assert_eq!(
            timetolive_line(&t.stdout, "0000000000001234").0,
            10,
            "{t:?}"
        );
    });
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let s = Server::start("lease-revoke", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let id = c.lease_grant(100, None).await.unwrap().id();
        let mut ws = watch_prefix(&mut c, "svc/").await;
        let with = || Some(PutOptions::new().with_lease(id));
        c.put("svc/b", "2", with()).await.unwrap(); // 2
        c.put("svc/a", "1", with()).await.unwrap(); // 3
        c.put("svc/c", "3", with()).await.unwrap(); // 4
        c.put("svc/plain", "p", None).await.unwrap(); // 5
        c.put("other", "o", with()).await.unwrap(); // 6
        let r = c.get("svc/a", None).await.unwrap();
        assert_eq!(r.kvs()[0].lease(), id);
        let r = c.get("svc/plain", None).await.unwrap();
        assert_eq!(r.kvs()[0].lease(), 0);
        let mut seen = 0;
        while seen < 4 {
            seen += next(&mut ws, WAIT).await.events().len();
        }
        assert_eq!(seen, 4);

        let r = c.lease_revoke(id).await.unwrap();
        let rev = r.header().unwrap().revision();
        assert_eq!(rev, 7, "one revision for all four keys");
        let w = next(&mut ws, WAIT).await;
        let mut got = events(&w);
        got.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            got,
            [
                (EventType::Delete, "svc/a".to_string(), 7),
                (EventType::Delete, "svc/b".to_string(), 7),
                (EventType::Delete, "svc/c".to_string(), 7),
            ],
            "every DELETE in one watch response: {w:?}"
        );
        assert_eq!(w.header().unwrap().revision(), 7);
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let left: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
        assert_eq!(left, ["svc/plain"]);
        assert_eq!(r.header().unwrap().revision(), 7);

        // Revoking it again: not found.
        let (code, msg) = grpc_status(c.lease_revoke(id).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )
        );
        // A lease without keys: revoking it writes no revision.
        let id2 = c.lease_grant(100, None).await.unwrap().id();
        let r = c.lease_revoke(id2).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 7);
    });
}

/// The request half of a raw LeaseKeepAlive stream.
struct Requests(mpsc::UnboundedReceiver<pb::LeaseKeepAliveRequest>);

impl tonic::codegen::tokio_stream::Stream for Requests {
    type Item = pb::LeaseKeepAliveRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A raw LeaseKeepAlive stream: the etcd-client crate binds one lease to a stream.
struct KeepAlive {
    tx: mpsc::UnboundedSender<pb::LeaseKeepAliveRequest>,
    rx: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Opens the stream with a first request for `first` (tonic waits for the response
    /// headers, which servers send with the first response).
    async fn open(s: &Server, first: i64) -> KeepAlive {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.endpoint()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::LeaseKeepAliveRequest { id: first }).unwrap();
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive");
        let codec =
            tonic_prost::ProstCodec::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>::default();
        let rx = tokio::time::timeout(
            WAIT,
            grpc.streaming(tonic::Request::new(Requests(rx)), path, codec),
        )
        .await
        .expect("stream opens within 10 s")
        .unwrap()
        .into_inner();
        KeepAlive { tx, rx }
    }

    fn send(&self, id: i64) {
        self.tx.send(pb::LeaseKeepAliveRequest { id }).unwrap();
    }

    /// (id, ttl) of the next response.
    async fn next(&mut self) -> (i64, i64) {
        let r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a keep-alive response within 10 s")
            .expect("stream ok")
            .expect("stream open");
        assert!(r.header.is_some(), "{r:?}");
        (r.id, r.ttl)
    }
}

#[test]
fn keep_alive_streams() {
    let s = Server::start("lease-ka", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let a = c.lease_grant(30, None).await.unwrap().id();
        let b = c
            .lease_grant(40, Some(LeaseGrantOptions::new().with_id(0x77)))
            .await
            .unwrap()
            .id();
        // Several leases, and an unknown one, on one raw stream: one response per request,
        // in order, each with the lease's ID and its granted TTL (0: no such lease).
        let mut ka = KeepAlive::open(&s, a).await;
        assert_eq!(ka.next().await, (a, 30));
        ka.send(b);
        ka.send(0x999);
        ka.send(a);
        assert_eq!(ka.next().await, (b, 40));
        assert_eq!(ka.next().await, (0x999, 0));
        assert_eq!(ka.next().await, (a, 30));
        c.lease_revoke(b).await.unwrap();
        ka.send(b);
        assert_eq!(ka.next().await, (b, 0), "a revoked lease answers TTL 0");
        ka.send(a);
        assert_eq!(ka.next().await, (a, 30), "the stream goes on");

        // The crate: a keeper bound to one lease.
        let (mut keeper, mut stream) = c.lease_keep_alive(a).await.unwrap();
        assert_eq!(keeper.id(), a);
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((r.id(), r.ttl()), (a, 30));
        // It refuses an unknown lease because the server's first answer has TTL 0.
        match c.lease_keep_alive(0x999).await {
            Err(Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
            other => panic!("{other:?}"),
        }
        // A keep-alive renews the lease to its full TTL.
        let t = c.lease_time_to_live(a, None).await.unwrap();
        assert_eq!(t.granted_ttl(), 30);
        assert!(t.ttl() > 20 && t.ttl() <= 30, "{t:?}");
    });
}

#[test]
fn time_to_live_with_keys_and_unknown() {
    let s = Server::start("lease-ttl", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let id = c.lease_grant(100, None).await.unwrap().id();
        let with = || Some(PutOptions::new().with_lease(id));
        c.put("b", "2", with()).await.unwrap();
        c.put("a", "1", with()).await.unwrap();
        c.put("a", "1b", with()).await.unwrap();
        c.put("c", "3", None).await.unwrap();
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!((t.id(), t.granted_ttl()), (id, 100));
        assert!(t.ttl() > 0 && t.ttl() <= 100, "{t:?}");
        assert_eq!(str_keys(t.keys()), ["a", "b"]);
        assert!(t.header().is_some());
        let t = c.lease_time_to_live(id, None).await.unwrap();
        assert!(t.keys().is_empty(), "keys only when asked: {t:?}");
        // Deleting a key detaches it.
        c.delete("b", None).await.unwrap();
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(str_keys(t.keys()), ["a"]);
        // Moving a key to another lease detaches it from the first.
        let id2 = c.lease_grant(50, None).await.unwrap().id();
        c.put("a", "moved", Some(PutOptions::new().with_lease(id2)))
            .await
            .unwrap();
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert!(t.keys().is_empty(), "{t:?}");
        let t = c
            .lease_time_to_live(id2, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(str_keys(t.keys()), ["a"]);

        // An unknown lease: no error, TTL -1.
        let t = c
            .lease_time_to_live(0x4242, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!((t.id(), t.ttl(), t.granted_ttl()), (0x4242, -1, 0));
        assert!(t.keys().is_empty());
        // Leases lists exactly the two.
        let mut ids: Vec<i64> = c
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort();
        let mut want = vec![id, id2];
        want.sort();
        assert_eq!(ids, want);
    });
}

#[test]
fn lease_not_kept_alive_expires_with_its_keys() {
    let s = Server::start("lease-expire", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let r = c.lease_grant(TTL_MIN_S, None).await.unwrap();
        let (id, ttl) = (r.id(), r.ttl());
        let granted = Instant::now();
        let mut ws = watch_prefix(&mut c, "eph/").await;
        let with = || Some(PutOptions::new().with_lease(id));
        c.put("eph/1", "a", with()).await.unwrap(); // 2
        c.put("eph/2", "b", with()).await.unwrap(); // 3
        c.put("eph/keep", "c", None).await.unwrap(); // 4
        let mut seen = 0;
        while seen < 3 {
            seen += next(&mut ws, WAIT).await.events().len();
        }
        let deadline = Duration::from_secs(ttl as u64) + EXPIRY_SLACK;
        let w = next(&mut ws, deadline.saturating_sub(granted.elapsed())).await;
        let mut got = events(&w);
        got.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            got,
            [
                (EventType::Delete, "eph/1".to_string(), 5),
                (EventType::Delete, "eph/2".to_string(), 5),
            ],
            "the expiry deletes both keys in one revision: {w:?}"
        );
        let r = c
            .get("eph/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let left: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
        assert_eq!(left, ["eph/keep"]);
        let t = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(t.ttl(), -1);
        let ids: Vec<i64> = c
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        assert!(!ids.contains(&id), "{ids:?}");
        let (code, msg) = grpc_status(c.lease_revoke(id).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )
        );
    });
}

#[test]
fn lease_kept_alive_outlives_twice_its_ttl() {
    let s = Server::start("lease-alive", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let r = c.lease_grant(TTL_MIN_S, None).await.unwrap();
        let (id, ttl) = (r.id(), r.ttl());
        c.put("alive", "yes", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
        let until = Instant::now() + Duration::from_secs(2 * ttl as u64 + 1);
        let mut answers = 0;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            keeper.keep_alive().await.unwrap();
            let r = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("a keep-alive answer within 10 s")
                .unwrap()
                .expect("stream open");
            assert_eq!((r.id(), r.ttl()), (id, ttl), "{r:?}");
            answers += 1;
        }
        assert!(answers >= 4, "{answers}");
        let g = c.get("alive", None).await.unwrap();
        assert_eq!(g.kvs().len(), 1, "the key outlived 2x the TTL");
        assert_eq!(g.kvs()[0].lease(), id);
        let t = c.lease_time_to_live(id, None).await.unwrap();
        assert!(t.ttl() > 0, "{t:?}");
    });
}

#[test]
fn put_and_txn_with_unknown_lease() {
    let s = Server::start("lease-unknown", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        c.put("x", "0", None).await.unwrap(); // 2
        let not_found = (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".to_string(),
        );
        let e = c
            .put("k", "v", Some(PutOptions::new().with_lease(0x999)))
            .await
            .unwrap_err();
        assert_eq!(grpc_status(e), not_found);
        let t = Txn::new()
            .when([Compare::version("x", CompareOp::Equal, 1)])
            .and_then([
                TxnOp::put("t1", "v", None),
                TxnOp::put("t2", "v", Some(PutOptions::new().with_lease(0x999))),
            ])
            .or_else([TxnOp::put("t3", "v", None)]);
        assert_eq!(grpc_status(c.txn(t).await.unwrap_err()), not_found);
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 1, "nothing written: {r:?}");
        assert_eq!(r.header().unwrap().revision(), 2);
        // Only the branch taken is checked: an unknown lease in the other one is fine.
        let t = Txn::new()
            .when([Compare::version("x", CompareOp::Equal, 1)])
            .and_then([TxnOp::put("t1", "v", None)])
            .or_else([TxnOp::put(
                "t3",
                "v",
                Some(PutOptions::new().with_lease(0x999)),
            )]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 3);
        // A revoked lease is unknown too.
        let id = c.lease_grant(100, None).await.unwrap().id();
        c.lease_revoke(id).await.unwrap();
        let e = c
            .put("k", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap_err();
        assert_eq!(grpc_status(e), not_found);
    });
}

#[test]
fn lease_and_its_keys_survive_a_restart() {
    let mut s = Server::start("lease-restart", &[]);
    let (id, id_hex) = runtime().block_on(async {
        let mut c = connect(&s).await;
        let id = c.lease_grant(300, None).await.unwrap().id();
        let with = || Some(PutOptions::new().with_lease(id));
        c.put("r/a", "1", with()).await.unwrap();
        c.put("r/b", "2", with()).await.unwrap();
        c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(0x55)))
            .await
            .unwrap();
        c.lease_revoke(0x55).await.unwrap();
        (id, format!("{id:016x}"))
    });
    // (etcd exits by the signal on SIGTERM; the exit code is not what this test is about.)
    s.stop();
    s.restart();
    let t = s.etcdctl(&["lease", "timetolive", "--keys", &id_hex]);
    assert!(t.ok, "{t:?}");
    let (granted, remaining, keys) = timetolive_line(&t.stdout, &id_hex);
    assert_eq!(granted, 300);
    // etcd restarts the countdown on restart (its lessor's promotion refreshes every
    // lease: 30 s granted, 23 s left before, 29 s after), so only "alive" is checked.
    assert!(remaining > 0, "{t:?}");
    assert_eq!(keys.unwrap(), ["r/a", "r/b"]);
    s.etcdctl(&["lease", "list"])
        .expect_ok(&format!("found 1 leases\n{id_hex}\n"));
    s.etcdctl(&["lease", "timetolive", "55"])
        .expect_ok("lease 0000000000000055 already expired\n");

    // A crash too: the grant and the attachments were committed.
    s.kill9();
    s.restart();
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(t.granted_ttl(), 300);
        assert!(t.ttl() > 0, "{t:?}");
        assert_eq!(str_keys(t.keys()), ["r/a", "r/b"]);
        // The ID cannot be granted again, and revoking it still deletes its keys.
        let (code, _) = grpc_status(
            c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(id)))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, tonic::Code::FailedPrecondition);
        c.lease_revoke(id).await.unwrap();
        let r = c
            .get("r/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(r.kvs().is_empty(), "{r:?}");
    });
}

/// Keel-only (etcd 3.4 fixes the checkpoint interval at 5 minutes): with checkpoints on,
/// a restarted member resumes a lease from its recorded remaining TTL; without them it
/// starts the full TTL again (as etcd does).
#[test]
fn checkpointed_lease_resumes_its_remaining_ttl_after_a_restart() {
    if !common::is_keel() {
        return;
    }
    for checkpoints in [true, false] {
        let flags: &[&str] = if checkpoints {
            &[
                "--experimental-enable-lease-checkpoint",
                "--experimental-lease-checkpoint-interval",
                "1s",
            ]
        } else {
            &[]
        };
        let mut s = Server::start("lease-cp", flags);
        let id = grant_ctl(&s, 60);
        std::thread::sleep(Duration::from_millis(4500));
        assert_eq!(s.stop(), 0);
        s.restart();
        let c = s.etcdctl(&["lease", "timetolive", &id]);
        assert!(c.ok, "{c:?}");
        let (granted, remaining, _) = timetolive_line(&c.stdout, &id);
        assert_eq!(granted, 60);
        if checkpoints {
            // At least 3 s were checkpointed away (plus a 1 s election-timeout extension).
            assert!(
                remaining <= 58,
                "checkpointed lease restarted at {remaining} s"
            );
        } else {
            assert!(remaining >= 59, "lease restarted at {remaining} s");
        }
    }
}
