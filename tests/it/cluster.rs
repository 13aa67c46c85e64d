//! Three-member clusters on loopback, started with etcd's static-bootstrap flags, driven
//! through etcdctl 3.4 and the `etcd-client` crate: member IDs and the cluster ID as etcd
//! derives them, `member list` / `endpoint status` output, replication of writes made
//! through any member (linearizable and serializable reads, txn, delete, watch), kill -9
//! of the leader under write load (no acknowledged write lost, HashKV equal afterwards), a
//! stopped member catching up from far behind (by snapshot), membership changes under load
//! (learner add, promote, remove, update and their errors), move-leader, and quorum loss.
//!
//! Expectations are etcd 3.4.23's: every test passes with `KEEL_TEST_SERVER=/usr/bin/etcd`.
//! No timing is asserted; every wait is bounded by a liveness deadline (`LIVENESS`, 30 s)
//! and fails with what it last saw. Each test kills only the processes it started.

use crate::common;

use common::{grpc_status, runtime, Cluster, Server, FAST_ELECTIONS, LIVENESS};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, StatusResponse,
    Txn, TxnOp, WatchOptions,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The election timeout `FAST_ELECTIONS` sets, for reporting elections in its units.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// An ID as etcdctl's membership commands print it: `%16x`, padded with spaces.
fn hex16(id: u64) -> String {
    format!("{id:16x}")
}

/// Every unsigned number after `"key":` in etcdctl's JSON output, in order.
fn json_u64s(json: &str, key: &str) -> Vec<u64> {
    let pat = format!("\"{key}\":");
    json.match_indices(&pat)
        .map(|(at, _)| {
            let rest = &json[at + pat.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end]
                .parse()
                .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
        })
        .collect()
}

/// Every string after `"key":"` in etcdctl's JSON output, in order (no escapes expected).
fn json_strs(json: &str, key: &str) -> Vec<String> {
    let pat = format!("\"{key}\":\"");
    json.match_indices(&pat)
        .map(|(at, _)| {
            let rest = &json[at + pat.len()..];
            rest[..rest.find('"').expect("closing quote")].to_string()
        })
        .collect()
}

/// Runs etcdctl against `s` until it no longer fails with `transient` (etcd refuses
/// membership changes with "etcdserver: unhealthy cluster" until every voter has been
/// connected for 5 s, its HealthInterval, e.g. just after the cluster started).
fn etcdctl_retrying(s: &Server, args: &[&str], transient: &str) -> common::Ctl {
    let deadline = Instant::now() + LIVENESS;
    for tries in 1.. {
        let out = s.etcdctl(args);
        if out.ok || !out.stderr.contains(transient) {
            if tries > 1 {
                eprintln!("etcdctl {args:?}: {tries} tries (\"{transient}\" before)");
            }
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} still fails after {LIVENESS:?}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

/// The keys and values under `prefix` on member `i`, read serializably (from that
/// member's own state).
async fn local_kvs(c: &Cluster, i: usize, prefix: &str) -> BTreeMap<String, String> {
    let r = c
        .client(i)
        .await
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap_or_else(|e| panic!("serializable get on m{i}: {e}"));
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// After the load stopped and every member in `among` converged: each holds every
/// acknowledged write, all hold the same keys, and HashKV agrees at the common revision.
async fn assert_converged(
    c: &Cluster,
    among: &[usize],
    prefix: &str,
    acked: &BTreeMap<String, String>,
) {
    let rev = c.wait_caught_up(among).await;
    let mut first: Option<BTreeMap<String, String>> = None;
    for &i in among {
        let kvs = local_kvs(c, i, prefix).await;
        let lost: Vec<&String> = acked
            .iter()
            .filter(|(k, v)| kvs.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            lost.is_empty(),
            "m{i} lacks {} of {} acknowledged writes, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        match &first {
            None => first = Some(kvs),
            Some(f) => assert!(*f == kvs, "m{i}'s keys differ from m{}'s", among[0]),
        }
    }
    c.assert_hash_kv_equal(among, rev).await;
}

/// Background writers: tasks on a thread of their own (the test's thread stays free for
/// etcdctl and process control), each putting unique keys `<prefix>/w<n>/<i>` through one
/// endpoint and recording the acknowledged ones.
struct Load {
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<LoadResult>,
}

#[derive(Default)]
struct LoadResult {
    acked: BTreeMap<String, String>,
    /// Each distinct error message the writers saw, with how often.
    errors: BTreeMap<String, usize>,
}

struct Writer {
    endpoint: String,
    /// Stop at the first error (a writer whose member is going to be killed; its
    /// reconnects would only wait out the client timeout).
    stop_on_error: bool,
}

impl Load {
    /// At most `max_each` puts per writer, `pause` between puts.
    fn start(prefix: &str, writers: Vec<Writer>, max_each: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let (stop2, count2, prefix) = (stop.clone(), acked_count.clone(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            let result = Arc::new(Mutex::new(LoadResult::default()));
            runtime().block_on(async {
                let mut tasks = Vec::new();
                for (w, wr) in writers.into_iter().enumerate() {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(3))
                        .with_timeout(Duration::from_secs(15));
                    let mut cl = etcd_client::Client::connect([wr.endpoint.clone()], Some(opts))
                        .await
                        .expect("connect");
                    let (stop, count, result, prefix) = (
                        stop2.clone(),
                        count2.clone(),
                        result.clone(),
                        prefix.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        for i in 0..max_each {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let (k, v) = (format!("{prefix}/w{w}/{i:06}"), format!("v{i}-{w}"));
                            match cl.put(k.clone(), v.clone(), None).await {
                                Ok(_) => {
                                    result.lock().unwrap().acked.insert(k, v);
                                    count.fetch_add(1, Ordering::Relaxed);
                                    if !pause.is_zero() {
                                        tokio::time::sleep(pause).await;
                                    }
                                }
                                Err(e) => {
                                    let msg = match e {
                                        etcd_client::Error::GRpcStatus(s) => {
                                            format!("{:?}: {}", s.code(), s.message())
                                        }
                                        other => other.to_string(),
                                    };
                                    *result.lock().unwrap().errors.entry(msg).or_default() += 1;
                                    if wr.stop_on_error {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let r = std::mem::take(&mut *result.lock().unwrap());
            r
        });
        Load {
            stop,
            acked_count,
            handle,
        }
    }

    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more puts have been acknowledged than now.
    fn wait_progress(&self, n: usize, what: &str) {
        let target = self.acked() + n;
        let deadline = Instant::now() + LIVENESS;
        while self.acked() < target {
            assert!(
                !self.handle.is_finished(),
                "{what}: the writers stopped at {} acknowledged",
                self.acked()
            );
            assert!(
                Instant::now() < deadline,
                "{what}: {} acknowledged, {target} expected within {LIVENESS:?}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

fn print_errors(test: &str, r: &LoadResult) {
    eprintln!("{test}: {} puts acknowledged", r.acked.len());
    for (msg, n) in &r.errors {
        eprintln!("{test}: writers saw {n} x {msg}");
    }
}

#[test]
fn member_ids_cluster_id_member_list_and_endpoint_status() {
    let c = Cluster::start("cl-ids", 3, &FAST_ELECTIONS);
    // etcd's derivation: SHA-1 of the member's sorted peer URLs and the cluster token.
    let expected: Vec<u64> = c
        .members
        .iter()
        .map(|m| keel::config::member_id(&[m.peer_url()], &c.token))
        .collect();
    assert_eq!(c.ids, expected, "member IDs as etcd derives them");
    let cluster_id = keel::config::cluster_id(&expected);
    let mut sorted = expected.clone();
    sorted.sort_unstable();

    // JSON: every member answers with the same cluster ID in its header, its own ID, and
    // the members in ID order (the JSON omits isLearner when false).
    for (i, m) in c.members.iter().enumerate() {
        let out = m.etcdctl(&["member", "list", "-w", "json"]);
        assert!(out.ok, "{out:?}");
        assert_eq!(
            json_u64s(&out.stdout, "cluster_id"),
            [cluster_id],
            "{}",
            out.stdout
        );
        assert_eq!(
            json_u64s(&out.stdout, "member_id"),
            [expected[i]],
            "{}",
            out.stdout
        );
        assert_eq!(json_u64s(&out.stdout, "ID"), sorted, "{}", out.stdout);
        let by_id = |id: &u64| c.index_of(*id).unwrap();
        let names: Vec<String> = sorted.iter().map(|id| c.names[by_id(id)].clone()).collect();
        assert_eq!(json_strs(&out.stdout, "name"), names, "{}", out.stdout);
        assert!(!out.stdout.contains("isLearner"), "{}", out.stdout);
    }

    // The table: `%x, started, name, peer URLs, client URLs, is learner`, in ID order.
    let table: String = sorted
        .iter()
        .map(|id| {
            let m = &c.members[c.index_of(*id).unwrap()];
            format!(
                "{}, started, {}, {}, {}, false\n",
                hex(*id),
                c.names[c.index_of(*id).unwrap()],
                m.peer_url(),
                m.client_url()
            )
        })
        .collect();
    for m in &c.members {
        m.etcdctl(&["member", "list"]).expect_ok(&table);
    }

    // endpoint status --cluster: every member's client URL, one leader all agree on, one
    // term.
    let out = c.members[1].etcdctl(&["endpoint", "status", "--cluster", "-w", "json"]);
    assert!(out.ok, "{out:?}");
    let mut eps = json_strs(&out.stdout, "Endpoint");
    eps.sort();
    let mut urls: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    urls.sort();
    assert_eq!(eps, urls, "{}", out.stdout);
    let mut reporters = json_u64s(&out.stdout, "member_id");
    reporters.sort_unstable();
    assert_eq!(reporters, sorted, "{}", out.stdout);
    let leaders = json_u64s(&out.stdout, "leader");
    assert_eq!(leaders.len(), 3, "{}", out.stdout);
    assert!(
        leaders.iter().all(|l| *l == leaders[0]) && expected.contains(&leaders[0]),
        "exactly one leader, a member: {}",
        out.stdout
    );
    let terms = json_u64s(&out.stdout, "raftTerm");
    assert!(
        terms.len() == 3 && terms.iter().all(|t| *t == terms[0] && *t >= 2),
        "one term (>= 2: the first election is term 2): {}",
        out.stdout
    );
    assert_eq!(json_u64s(&out.stdout, "raft_term"), terms, "{}", out.stdout);

    // The same through the gRPC Status call.
    runtime().block_on(async {
        for (i, id) in expected.iter().enumerate() {
            let s: StatusResponse = c.status(i).await.unwrap();
            assert_eq!(s.leader(), leaders[0]);
            assert_eq!(s.raft_term(), terms[0]);
            assert!(!s.is_learner());
            assert!(s.errors().is_empty(), "{:?}", s.errors());
            let h = s.header().unwrap();
            assert_eq!((h.cluster_id(), h.member_id()), (cluster_id, *id));
        }
    });

    // endpoint health --cluster: one line per member.
    let out = c.members[2].etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(out.ok, "{out:?}");
    let mut healthy: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.contains(" is healthy: successfully committed proposal: took = "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    healthy.sort();
    assert_eq!(healthy, urls, "{out:?}");
}

#[test]
fn writes_through_any_member_are_seen_on_every_member() {
    let c = Cluster::start("cl-repl", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let (leader, followers) = rt.block_on(async {
        let l = c.wait_leader(&[0, 1, 2]).await;
        (l, (0..3).filter(|&i| i != l).collect::<Vec<_>>())
    });
    let (f, g) = (followers[0], followers[1]);
    rt.block_on(async {
        // A put through m0 is seen by linearizable reads on the others at once.
        let put = c.client(0).await.put("repl/a", "1", None).await.unwrap();
        let rev = put.header().unwrap().revision();
        for i in [1, 2] {
            let r = c.client(i).await.get("repl/a", None).await.unwrap();
            assert_eq!(r.kvs().len(), 1, "m{i}: {r:?}");
            assert_eq!(r.kvs()[0].value(), b"1");
            assert_eq!(r.kvs()[0].mod_revision(), rev);
            assert!(r.header().unwrap().revision() >= rev);
        }
        // A serializable read on a follower sees it eventually.
        let deadline = Instant::now() + LIVENESS;
        loop {
            let r = c
                .client(f)
                .await
                .get("repl/a", Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            if r.kvs().first().map(|kv| kv.value()) == Some(b"1") {
                break;
            }
            assert!(Instant::now() < deadline, "m{f} never saw repl/a: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Txn through a follower: the compare sees the committed value.
        let mut cf = c.client(f).await;
        let txn = Txn::new()
            .when([Compare::value("repl/a", CompareOp::Equal, "1")])
            .and_then([
                TxnOp::put("repl/a", "2", None),
                TxnOp::put("repl/b", "x", None),
            ])
            .or_else([TxnOp::put("repl/else", "x", None)]);
        let t = cf.txn(txn).await.unwrap();
        assert!(t.succeeded(), "{t:?}");
        let trev = t.header().unwrap().revision();
        assert_eq!(trev, rev + 1, "one txn, one revision");
        let txn = Txn::new()
            .when([Compare::value("repl/a", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("repl/then", "x", None)])
            .or_else([TxnOp::get("repl/a", None)]);
        let t = c.client(g).await.txn(txn).await.unwrap();
        assert!(!t.succeeded(), "{t:?}");
        let r = c
            .client(leader)
            .await
            .get("repl/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let kvs: Vec<(&[u8], &[u8], i64)> = r
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value(), kv.mod_revision()))
            .collect();
        assert_eq!(
            kvs,
            [
                (&b"repl/a"[..], &b"2"[..], trev),
                (&b"repl/b"[..], &b"x"[..], trev)
            ]
        );

        // Delete through a follower; gone everywhere for linearizable reads.
        let d = cf.delete("repl/b", None).await.unwrap();
        assert_eq!(d.deleted(), 1);
        assert_eq!(d.header().unwrap().revision(), trev + 1);
        for i in 0..3 {
            let r = c.client(i).await.get("repl/b", None).await.unwrap();
            assert!(r.kvs().is_empty(), "m{i} still has repl/b: {r:?}");
        }
    });

    // etcdctl through a follower, reads from the other one.
    c.members[f]
        .etcdctl(&["put", "repl/ctl", "v"])
        .expect_ok("OK\n");
    c.members[g]
        .etcdctl(&["get", "repl/ctl"])
        .expect_ok("repl/ctl\nv\n");
    let deadline = Instant::now() + LIVENESS;
    loop {
        let out = c.members[f].etcdctl(&["get", "repl/ctl", "--consistency=s"]);
        if out.ok && out.stdout == "repl/ctl\nv\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.members[g].etcdctl(&["del", "repl/ctl"]).expect_ok("1\n");
    c.members[leader]
        .etcdctl(&["get", "repl/ctl"])
        .expect_ok("");

    // A watch on m2 sees the puts and deletes made on m1, in order, with their revisions.
    rt.block_on(async {
        let mut c1 = c.client(1).await;
        let start = c1
            .get("x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
            + 1;
        let mut ws = c
            .client(2)
            .await
            .watch(
                "repl/w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await
            .unwrap();
        let mut made = Vec::new();
        for i in 0..20 {
            if i % 5 == 4 {
                // The key the previous step put.
                let key = format!("repl/w/{:02}", (i - 1) % 7);
                let r = c1.delete(key.clone(), None).await.unwrap();
                assert_eq!(r.deleted(), 1);
                made.push((EventType::Delete, key, r.header().unwrap().revision()));
            } else {
                let key = format!("repl/w/{:02}", i % 7);
                let r = c1.put(key.clone(), format!("{i}"), None).await.unwrap();
                made.push((EventType::Put, key, r.header().unwrap().revision()));
            }
        }
        let mut seen = Vec::new();
        let deadline = Instant::now() + LIVENESS;
        while seen.len() < made.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = tokio::time::timeout(left, ws.message())
                .await
                .unwrap_or_else(|_| panic!("watch on m2 saw only {seen:?} of {made:?}"))
                .unwrap()
                .expect("watch stream open");
            for e in r.events() {
                let kv = e.kv().unwrap();
                seen.push((
                    e.event_type(),
                    kv.key_str().unwrap().to_string(),
                    kv.mod_revision(),
                ));
            }
        }
        assert_eq!(seen, made);
    });
}

#[test]
fn kill9_of_the_leader_under_write_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start("cl-kill", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let old = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    // Two writers on each survivor, one on the leader (it stops at its first error).
    let mut writers: Vec<Writer> = survivors
        .iter()
        .chain(&survivors)
        .map(|&i| Writer {
            endpoint: c.members[i].endpoint(),
            stop_on_error: false,
        })
        .collect();
    writers.push(Writer {
        endpoint: c.members[old].endpoint(),
        stop_on_error: true,
    });
    let load = Load::start("load", writers, 3000, Duration::ZERO);
    load.wait_progress(300, "before the kill");

    let killed_at = Instant::now();
    c.member(old).kill9();
    let new = rt.block_on(c.wait_leader(&survivors));
    let took = killed_at.elapsed();
    eprintln!(
        "kill -9 of leader m{old}: m{new} leads after {} ms = {:.1} election timeouts",
        took.as_millis(),
        took.as_secs_f64() / ELECTION_TIMEOUT.as_secs_f64()
    );
    // Writes resume on the survivors.
    load.wait_progress(300, "after the new leader");
    let result = load.finish();
    print_errors("kill9-leader", &result);

    c.member(old).restart();
    rt.block_on(assert_converged(&c, &[0, 1, 2], "load/", &result.acked));
}

#[test]
fn a_member_far_behind_catches_up_by_snapshot() {
    // etcd keeps 5000 entries after a snapshot for slow followers; 6500 entries written
    // while a member is down leave it behind the leader's compacted log.
    const PUTS: usize = 6500;
    const TASKS: usize = 16;
    let mut flags = FAST_ELECTIONS.to_vec();
    flags.extend(["--snapshot-count", "100"]);
    let mut c = Cluster::start("cl-snap", 3, &flags);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let behind = (leader + 1) % 3;
    c.member(behind).stop();
    let started = Instant::now();
    rt.block_on(async {
        let cl = c.client(leader).await;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut cl = cl.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..PUTS).step_by(TASKS) {
                    // 1000 keys, each overwritten several times: history for HashKV.
                    let key = format!("snap/{:04}", i % 1000);
                    if i % 97 == 0 {
                        cl.delete(key, None).await.unwrap();
                    } else {
                        cl.put(key, format!("{i:08}-{}", "x".repeat(32)), None)
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    eprintln!(
        "snapshot catch-up: {PUTS} writes in {} ms while m{behind} was down",
        started.elapsed().as_millis()
    );
    c.member(behind).restart();
    rt.block_on(async {
        let rev = c.wait_caught_up(&[0, 1, 2]).await;
        c.assert_hash_kv_equal(&[0, 1, 2], rev).await;
        let leader_kvs = local_kvs(&c, leader, "snap/").await;
        assert_eq!(local_kvs(&c, behind, "snap/").await, leader_kvs);
    });
    // The test is about a snapshot transfer: make sure one really happened.
    let applied = if common::is_keel() {
        "applied incoming snapshot from peer"
    } else {
        "finished applying incoming snapshot"
    };
    let log = c.members[behind].log();
    assert!(
        log.contains(applied),
        "m{behind} caught up without a snapshot:\n{log}"
    );
}

/// The `Member <id> added to cluster <cluster id>` block etcdctl prints, parsed:
/// (new member's ID, ETCD_INITIAL_CLUSTER value).
#[track_caller]
fn parse_member_add(stdout: &str, name: &str, peer: &str, cluster_id: u64) -> (u64, String) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    let id = lines[0]
        .strip_prefix("Member ")
        .and_then(|r| r.strip_suffix(&format!(" added to cluster {}", hex16(cluster_id))))
        .unwrap_or_else(|| panic!("not an add line: {stdout}"));
    assert_eq!(id.len(), 16, "{stdout}");
    let id = u64::from_str_radix(id.trim_start(), 16).unwrap();
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], format!("ETCD_NAME=\"{name}\""));
    let ic = lines[3]
        .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER: {stdout}"));
    assert_eq!(
        lines[4],
        format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"")
    );
    assert_eq!(lines[5], "ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    (id, ic.to_string())
}

/// The member list table etcdctl prints for `c`'s members `among` (all started; those in
/// `learner` are learners) plus `more` rows (ID, row): ID order, IDs as `%x`.
fn member_table(c: &Cluster, among: &[usize], learner: &[usize], more: &[(u64, String)]) -> String {
    let mut rows: Vec<(u64, String)> = among
        .iter()
        .map(|&i| {
            let m = &c.members[i];
            let row = format!(
                "{}, started, {}, {}, {}, {}\n",
                hex(c.ids[i]),
                c.names[i],
                m.peer_url(),
                m.client_url(),
                learner.contains(&i)
            );
            (c.ids[i], row)
        })
        .collect();
    rows.extend(more.iter().cloned());
    rows.sort();
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Polls `member list` on each of `on` until it prints `table` (each member applies
/// configuration changes on its own schedule).
fn wait_member_table(c: &Cluster, on: &[usize], table: &str) {
    for &i in on {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let out = c.members[i].etcdctl(&["member", "list"]);
            if out.ok && out.stdout == table {
                break;
            }
            let tail = &out.stderr[out
                .stderr
                .floor_char_boundary(out.stderr.len().saturating_sub(300))..];
            assert!(
                Instant::now() < deadline,
                "m{i}'s member list is not\n{table}after {LIVENESS:?}: {}...{tail}",
                out.stdout
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn membership_changes_under_load() {
    let mut c = Cluster::start("cl-member", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let cluster_id = keel::config::cluster_id(&c.ids);
    // The follower that will be removed; the writers use the other two members.
    let removed = (leader + 1) % 3;
    let kept: Vec<usize> = (0..3).filter(|&i| i != removed).collect();
    let load = Load::start(
        "member",
        kept.iter()
            .map(|&i| Writer {
                endpoint: c.members[i].endpoint(),
                stop_on_error: false,
            })
            .collect(),
        20_000,
        Duration::from_millis(2),
    );
    let all = c.endpoints_flag(&[0, 1, 2]);

    // Add m3 as a learner.
    let m3 = Server::unstarted("cl-member-m3");
    let peer3 = m3.peer_url();
    let out = etcdctl_retrying(
        &c.members[leader],
        &[
            &all,
            "member",
            "add",
            "m3",
            &format!("--peer-urls={peer3}"),
            "--learner",
        ],
        "etcdserver: unhealthy cluster",
    );
    assert!(out.ok, "{out:?}");
    let (id3, initial_cluster) = parse_member_add(&out.stdout, "m3", &peer3, cluster_id);
    // ETCD_INITIAL_CLUSTER lists every member in ID order, the new one under its name.
    let mut listed: Vec<(u64, String)> = (0..3)
        .map(|i| {
            (
                c.ids[i],
                format!("{}={}", c.names[i], c.members[i].peer_url()),
            )
        })
        .collect();
    listed.push((id3, format!("m3={peer3}")));
    listed.sort();
    let want: Vec<String> = listed.into_iter().map(|(_, s)| s).collect();
    assert_eq!(initial_cluster, want.join(","));
    // Listed as an unstarted learner until it runs.
    // (no name and no client URLs yet).
    let unstarted = (id3, format!("{}, unstarted, , {peer3}, , true\n", hex(id3)));
    let table = member_table(&c, &[0, 1, 2], &[], &[unstarted]);
    wait_member_table(&c, &[0, 1, 2], &table);

    // Errors, with the cluster healthy (the add above proves it).
    c.members[leader]
        .etcdctl(&["member", "remove", "1234"])
        .expect_err("Error: etcdserver: member not found\n");
    c.members[leader]
        .etcdctl(&["member", "promote", "1234"])
        .expect_err("Error: etcdserver: member not found\n");
    c.members[leader]
        .etcdctl(&["member", "update", "1234", &format!("--peer-urls={peer3}")])
        .expect_err("Error: etcdserver: member not found\n");
    // (Not m3's URL: etcd derives a runtime-added member's ID from its peer URLs and the
    // Unix second, so re-adding m3's URL within the second of the first add fails with
    // "etcdserver: member ID already exist" instead.)
    let dup = c.members[0].peer_url();
    c.members[leader]
        .etcdctl(&["member", "add", "dup", &format!("--peer-urls={dup}")])
        .expect_err("Error: etcdserver: Peer URLs already exists\n");
    let dup = c.members[1].peer_url();
    c.members[leader]
        .etcdctl(&[
            "member",
            "add",
            "dup",
            &format!("--peer-urls={dup}"),
            "--learner",
        ])
        .expect_err("Error: etcdserver: Peer URLs already exists\n");
    c.members[leader]
        .etcdctl(&["member", "promote", &hex(c.ids[removed])])
        .expect_err("Error: etcdserver: can only promote a learner member\n");

    // Start m3; it joins as a learner and catches up while the writers run.
    let i3 = c.add_member(m3, "m3", id3, &initial_cluster);
    let table = member_table(&c, &[0, 1, 2, i3], &[i3], &[]);
    wait_member_table(&c, &[0, 1, 2], &table);
    rt.block_on(async {
        let s = c.status(i3).await.unwrap();
        assert!(s.is_learner(), "{s:?}");
        // A learner serves no writes and no linearizable reads; serializable reads are ok.
        let mut cl = c.client(i3).await;
        let e = cl.put("member/learner", "x", None).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::Unavailable,
                "etcdserver: rpc not supported for learner".to_string()
            )
        );
        let e = cl.get("member/", None).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::Unavailable,
                "etcdserver: rpc not supported for learner".to_string()
            )
        );
        cl.get("member/", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        // Nor member list (etcdctl retries that 100 times, then prints the same error).
        let e = cl.member_list().await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::Unavailable,
                "etcdserver: rpc not supported for learner".to_string()
            )
        );
        // Nor streams: etcd's stream interceptor refuses Watch and LeaseKeepAlive.
        let e = match cl.watch("member/", None).await {
            Ok(mut stream) => stream.message().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::Unavailable,
                "etcdserver: rpc not supported for learner".to_string()
            )
        );
    });
    load.wait_progress(100, "with a learner");

    // Promote, once etcd thinks the learner is in sync.
    let deadline = Instant::now() + LIVENESS;
    loop {
        let out = c.members[leader].etcdctl(&[&all, "member", "promote", &hex(id3)]);
        if out.ok {
            assert_eq!(
                out.stdout,
                format!(
                    "Member {} promoted in cluster {}\n",
                    hex16(id3),
                    hex16(cluster_id)
                )
            );
            break;
        }
        out.expect_err(
            "Error: etcdserver: can only promote a learner member which is in sync with leader\n",
        );
        assert!(Instant::now() < deadline, "m3 never in sync: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = member_table(&c, &[0, 1, 2, i3], &[], &[]);
    wait_member_table(&c, &[0, 1, 2, i3], &table);
    load.wait_progress(100, "with four voters");

    // Update m3's peer URLs (to the same URL: it needs no restart).
    let out = c.members[i3].etcdctl(&[
        "member",
        "update",
        &hex(id3),
        &format!("--peer-urls={peer3}"),
    ]);
    out.expect_ok(&format!(
        "Member {} updated in cluster {}\n",
        hex16(id3),
        hex16(cluster_id)
    ));

    // Remove an original follower; then stop its process.
    let out = etcdctl_retrying(
        &c.members[kept[0]],
        &["member", "remove", &hex(c.ids[removed])],
        "etcdserver: unhealthy cluster",
    );
    out.expect_ok(&format!(
        "Member {} removed from cluster {}\n",
        hex16(c.ids[removed]),
        hex16(cluster_id)
    ));
    let remaining = [kept[0], kept[1], i3];
    let table = member_table(&c, &remaining, &[], &[]);
    wait_member_table(&c, &remaining, &table);
    // (etcd's removed member shuts itself down; the test only makes sure it is gone.)
    let code = c.member(removed).stop();
    eprintln!("membership: the removed member m{removed} exited with {code}");
    c.members[kept[1]]
        .etcdctl(&["member", "remove", &hex(c.ids[removed])])
        .expect_err("Error: etcdserver: member not found\n");
    load.wait_progress(100, "after the removal");

    let result = load.finish();
    print_errors("membership", &result);
    rt.block_on(async {
        c.wait_leader(&remaining).await;
        assert_converged(&c, &remaining, "member/", &result.acked).await;
    });
}

#[test]
fn move_leader_through_the_leader_and_refused_by_a_follower() {
    let c = Cluster::start("cl-move", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let l = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let (f, g) = ((l + 1) % 3, (l + 2) % 3);
    let id = |i: usize| hex(c.ids[i]);

    // etcdctl asks its endpoints for their status and needs the leader among them.
    c.members[f]
        .etcdctl(&["move-leader", &id(g)])
        .expect_err(&format!(
            "Error: no leader endpoint given at [{}]\n",
            c.members[f].endpoint()
        ));
    // The RPC itself, sent to a follower.
    rt.block_on(async {
        let e = c.client(f).await.move_leader(c.ids[g]).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::FailedPrecondition,
                "etcdserver: not leader".to_string()
            )
        );
    });
    // An ID that is no member.
    c.members[l]
        .etcdctl(&["move-leader", "1234"])
        .expect_err("Error: etcdserver: bad leader transferee\n");

    c.members[l]
        .etcdctl(&["move-leader", &id(f)])
        .expect_ok(&format!(
            "Leadership transferred from {} to {}\n",
            id(l),
            id(f)
        ));
    assert_eq!(rt.block_on(c.wait_leader(&[0, 1, 2])), f);

    // With every endpoint given, etcdctl finds the (new) leader itself.
    let all = c.endpoints_flag(&[0, 1, 2]);
    c.members[0]
        .etcdctl(&[&all, "move-leader", &id(g)])
        .expect_ok(&format!(
            "Leadership transferred from {} to {}\n",
            id(f),
            id(g)
        ));
    assert_eq!(rt.block_on(c.wait_leader(&[0, 1, 2])), g);
    // To itself: etcd reports a transfer from the leader to the leader.
    c.members[g]
        .etcdctl(&["move-leader", &id(g)])
        .expect_ok(&format!(
            "Leadership transferred from {} to {}\n",
            id(g),
            id(g)
        ));
    assert_eq!(rt.block_on(c.wait_leader(&[0, 1, 2])), g);
    c.members[f]
        .etcdctl(&["put", "moved", "yes"])
        .expect_ok("OK\n");
}

#[test]
fn quorum_loss_fails_writes_and_linearizable_reads_and_recovers() {
    let mut c = Cluster::start("cl-quorum", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let survivor = rt.block_on(async {
        let l = c.wait_leader(&[0, 1, 2]).await;
        c.client(0).await.put("q/before", "v", None).await.unwrap();
        c.wait_caught_up(&[0, 1, 2]).await;
        l
    });
    // The leader survives; it must notice it lost its quorum and step down.
    let stopped: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &stopped {
        c.member(i).stop();
    }
    rt.block_on(async {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let s = c.status(survivor).await.unwrap();
            if s.leader() == 0 {
                assert_eq!(s.errors(), ["etcdserver: no leader"]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "m{survivor} still follows a leader: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A write and a linearizable read fail within the client's 15-s timeout, with
        // etcd's errors: the put was never proposed (no leader to propose to) and fails
        // with the server's request context error; the read times out waiting for a read
        // index.
        let (mut a, mut b) = (c.client(survivor).await, c.client(survivor).await);
        let (put, get) = tokio::join!(a.put("q/during", "x", None), b.get("q/before", None));
        assert_eq!(
            grpc_status(put.unwrap_err()),
            (
                tonic::Code::Unknown,
                "context deadline exceeded".to_string()
            )
        );
        assert_eq!(
            grpc_status(get.unwrap_err()),
            (
                tonic::Code::Unavailable,
                "etcdserver: request timed out".to_string()
            )
        );
        // A serializable read is served from the member's own state.
        let r = a
            .get("q/before", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"v");
    });
    c.members[survivor]
        .etcdctl(&["get", "q/before", "--consistency=s"])
        .expect_ok("q/before\nv\n");
    assert_eq!(
        c.members[survivor]
            .etcdctl(&["member", "list"])
            .stdout
            .lines()
            .count(),
        3
    );

    for &i in &stopped {
        c.member(i).restart();
    }
    rt.block_on(async {
        c.wait_leader(&[0, 1, 2]).await;
        let put = c
            .client(survivor)
            .await
            .put("q/after", "w", None)
            .await
            .unwrap();
        let rev = put.header().unwrap().revision();
        for i in 0..3 {
            let r = c.client(i).await.get("q/after", None).await.unwrap();
            assert_eq!(r.kvs()[0].value(), b"w", "m{i}");
            assert_eq!(r.kvs()[0].mod_revision(), rev, "m{i}");
        }
    });
}

#[test]
fn a_wiped_member_restarted_as_new_is_refused() {
    let mut c = Cluster::start("cl-wiped", 3, &FAST_ELECTIONS);
    let rt = runtime();
    rt.block_on(c.wait_leader(&[0, 1, 2]));
    // Its data dir is lost; it comes back with the same flags (--initial-cluster-state
    // new) while the others run and list it as started: etcd refuses to start over.
    let m = c.member(2);
    m.kill9();
    std::fs::remove_dir_all(&m.data_dir).unwrap();
    let (code, log) = m
        .run_expecting_exit(LIVENESS)
        .expect("the wiped member refuses to start");
    assert_ne!(code, 0, "{log}");
    let id = c.ids[2];
    assert!(
        log.contains(&format!("member {id:x} has already been bootstrapped")),
        "{log}"
    );
    // The others still serve (once they agree on a leader: m2 may have led).
    rt.block_on(c.wait_leader(&[0, 1]));
    c.members[0]
        .etcdctl(&["put", "after-wipe", "v"])
        .expect_ok("OK\n");
}

/// Found by keel-chaos (seed 3): a leader asked to remove itself panicked in raft-rs
/// (`advance` looked up its own progress, which the removal had dropped) instead of
/// answering and leaving. etcd answers the removal, steps away and exits; the rest elect a
/// leader and go on.
#[test]
fn the_leader_removing_itself_answers_and_leaves() {
    let mut c = Cluster::start("cl-self-remove", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let cluster_id = keel::config::cluster_id(&c.ids);
    // Writes through every member while the leader applies its own removal (the panic
    // needed new entries in the Ready that carried the removal).
    let endpoints = c.endpoints();
    let writers = (0..12)
        .map(|w| Writer {
            endpoint: endpoints[w % 3].clone(),
            stop_on_error: false,
        })
        .collect();
    let load = Load::start("self-remove", writers, 100_000, Duration::ZERO);
    load.wait_progress(200, "before the removal");
    // etcd's strict reconfig check counts a peer only once it has been connected for 5 s.
    std::thread::sleep(Duration::from_secs(6));
    let out = c.members[leader].etcdctl(&["member", "remove", &hex(c.ids[leader])]);
    out.expect_ok(&format!(
        "Member {} removed from cluster {}\n",
        hex16(c.ids[leader]),
        hex16(cluster_id)
    ));
    let code = c.members[leader]
        .wait_exit(LIVENESS)
        .expect("the removed leader exits");
    let log = c.members[leader].log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("the member has been permanently removed from the cluster"),
        "{log}"
    );
    if common::is_keel() {
        assert_eq!(code, 0, "{log}");
    }
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    rt.block_on(c.wait_leader(&rest));
    load.wait_progress(200, "after the removal");
    print_errors(
        "the_leader_removing_itself_answers_and_leaves",
        &load.finish(),
    );
    c.members[rest[0]]
        .etcdctl(&["put", "after-self-removal", "v"])
        .expect_ok("OK\n");
    let list = c.members[rest[1]].etcdctl(&["member", "list"]);
    assert_eq!(list.stdout.lines().count(), 2, "{list:?}");
}

/// A follower forwards the removal of the leader to the leader and answers its client, and
/// the leader leaves. The leader stops right after it applies its own removal, so its
/// reply to the follower can be lost; the follower also answers on its own apply of the
/// removal (etcd's waiter is woken by the local apply too). That race showed only with
/// peer TLS (etcd's e2e TestCtlV3MemberRemovePeerTLS, about 1 run in 6): with plaintext
/// peers this test passed 6 of 6 runs even without the local answer, so it checks the
/// behaviour, not that race.
#[test]
fn a_follower_answers_the_removal_of_the_leader_it_forwarded() {
    let mut c = Cluster::start("cl-remove-via", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let cluster_id = keel::config::cluster_id(&c.ids);
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // etcd's strict reconfig check counts a peer only once it has been connected for 5 s.
    std::thread::sleep(Duration::from_secs(6));
    let out = c.members[follower].etcdctl(&["member", "remove", &hex(c.ids[leader])]);
    out.expect_ok(&format!(
        "Member {} removed from cluster {}\n",
        hex16(c.ids[leader]),
        hex16(cluster_id)
    ));
    c.members[leader]
        .wait_exit(LIVENESS)
        .expect("the removed leader exits");
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    rt.block_on(c.wait_leader(&rest));
    let list = c.members[follower].etcdctl(&["member", "list"]);
    assert_eq!(list.stdout.lines().count(), 2, "{list:?}");
}

#[test]
fn strict_reconfig_refuses_a_removal_that_leaves_no_connected_quorum() {
    let mut c = Cluster::start("cl-strict", 3, &FAST_ELECTIONS);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (down, other) = (followers[0], followers[1]);
    c.member(down).stop();
    // etcd counts a peer as connected for 5 s after its last message; Keel for an
    // election timeout. Past both, removing the other follower would leave the leader
    // alone in a two-voter cluster: refused (etcd's --strict-reconfig-check, on by default).
    std::thread::sleep(Duration::from_secs(6));
    let ep = c.endpoints()[leader].clone();
    let out = c.members[leader].etcdctl(&[
        &format!("--endpoints={ep}"),
        "member",
        "remove",
        &hex(c.ids[other]),
    ]);
    out.expect_err("etcdserver: unhealthy cluster");
    // Nothing changed: still three members.
    let list = c.members[leader].etcdctl(&["member", "list"]);
    assert_eq!(list.stdout.lines().count(), 3, "{list:?}");
}

#[test]
fn leases_through_followers_are_kept_alive_and_expire_on_the_leaders_clock() {
    let c = Cluster::start("cl-lease", 3, &FAST_ELECTIONS);
    let rt = runtime();
    rt.block_on(async {
        let leader = c.wait_leader(&[0, 1, 2]).await;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (f, g) = (followers[0], followers[1]);
        // Granted on one follower, used on the other, kept alive through the second one
        // for over twice its TTL: keep-alives reach the leader, which times leases.
        let ttl = 3;
        let id = c.client(f).await.lease_grant(ttl, None).await.unwrap().id();
        let mut cg = c.client(g).await;
        cg.put("lease/kept", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let (mut keeper, mut responses) = cg.lease_keep_alive(id).await.unwrap();
        let until = Instant::now() + Duration::from_secs(2 * ttl as u64 + 1);
        while Instant::now() < until {
            keeper.keep_alive().await.unwrap();
            let r = responses
                .message()
                .await
                .unwrap()
                .expect("a keep-alive answer");
            assert_eq!((r.id(), r.ttl()), (id, ttl), "{r:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // TimeToLive asked on a follower: the leader's remaining time and the key.
        let t = c
            .client(f)
            .await
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(t.granted_ttl(), ttl);
        assert!(t.ttl() > 0 && t.ttl() <= ttl, "{t:?}");
        assert_eq!(t.keys(), [b"lease/kept".to_vec()]);
        let kept = c.client(f).await.get("lease/kept", None).await.unwrap();
        assert_eq!(
            kept.kvs().len(),
            1,
            "the key outlived 2 TTLs while kept alive"
        );
        // Left alone, it expires and its key goes on every member.
        drop(keeper);
        drop(responses);
        let deadline = Instant::now() + LIVENESS;
        loop {
            let mut gone = true;
            for i in 0..3 {
                let r = c.client(i).await.get("lease/kept", None).await.unwrap();
                gone &= r.kvs().is_empty();
            }
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let t = c
            .client(g)
            .await
            .lease_time_to_live(id, None)
            .await
            .unwrap();
        assert_eq!(t.ttl(), -1, "{t:?}");
        // Revoked through a follower: gone at once, everywhere.
        let id2 = c.client(g).await.lease_grant(60, None).await.unwrap().id();
        c.client(f).await.lease_revoke(id2).await.unwrap();
        let t = c
            .client(leader)
            .await
            .lease_time_to_live(id2, None)
            .await
            .unwrap();
        assert_eq!(t.ttl(), -1, "{t:?}");
        let e = c.client(f).await.lease_revoke(id2).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found".to_string()
            )
        );
    });
}
