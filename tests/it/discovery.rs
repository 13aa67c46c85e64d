//! Service discovery end to end, the way etcd users build it: a watcher on "/services/"
//! (the `etcd-client` crate, on its own thread) opened before anything registers; five
//! services, each a lease with a 5-s TTL, a key "/services/<name>" = address attached to
//! it, and a real `etcdctl lease keep-alive` child process keeping it alive. The watcher
//! sees every join; two services are killed (kill -9 of their keep-alive process, by PID)
//! and the watcher sees exactly their DELETE events once their leases expire, while the
//! other three stay registered for more than twice the TTL; one service leaves gracefully
//! by revoking its lease, and the watcher sees its DELETE at once.
//!
//! Expectations are etcd 3.4.23's: the test also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`. Every wait is bounded (expiry: TTL + 5 s).

use crate::common;

use common::{runtime, Server, Spawned};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const SERVICE_COUNT: usize = 5;
const TTL_S: i64 = 5;
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// One event as the watcher saw it: (type, key, value, lease, mod_revision).
type Ev = (EventType, String, String, i64, i64);

/// A prefix watcher on its own thread and runtime, so that the test can block on child
/// processes while events keep arriving. It stops when dropped.
struct Watcher {
    events: Arc<Mutex<Vec<Ev>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Opens the watch and returns once the server has confirmed it.
    fn open(s: &Server, prefix: &str) -> Watcher {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (created_tx, created_rx) = mpsc::channel();
        let (endpoint, prefix) = (s.endpoint(), prefix.to_string());
        let (sink, stopped) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut c = Client::connect([endpoint], None).await.expect("connect");
                let mut ws = c
                    .watch(prefix, Some(WatchOptions::new().with_prefix()))
                    .await
                    .expect("watch");
                let r = ws.message().await.expect("watch ok").expect("created");
                assert!(r.created(), "{r:?}");
                created_tx.send(()).unwrap();
                while !stopped.load(Ordering::Relaxed) {
                    let r = match tokio::time::timeout(Duration::from_millis(100), ws.message())
                        .await
                    {
                        Err(_) => continue,
                        Ok(r) => r.expect("watch ok").expect("watch open"),
                    };
                    let mut sink = sink.lock().unwrap();
                    for e in r.events() {
                        let kv = e.kv().unwrap();
                        sink.push((
                            e.event_type(),
                            kv.key_str().unwrap().to_string(),
                            kv.value_str().unwrap().to_string(),
                            kv.lease(),
                            kv.mod_revision(),
                        ));
                    }
                }
            })
        });
        created_rx
            .recv_timeout(WAIT)
            .expect("the watch is created within 10 s");
        Watcher {
            events,
            stop,
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` events have arrived in all (at most `wait`); returns them all.
    #[track_caller]
    fn wait_count(&self, n: usize, wait: Duration) -> Vec<Ev> {
        let deadline = Instant::now() + wait;
        loop {
            let e = self.events();
            if e.len() >= n {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher saw {} of {n} events in {wait:?}: {e:?}",
                e.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("the watcher thread ran cleanly");
            }
        }
    }
}

/// A registered service: its lease and the `etcdctl lease keep-alive` child keeping it.
struct Service {
    name: String,
    addr: String,
    lease_hex: String,
    keep_alive: Spawned,
}

impl Service {
    /// Grant, put, keep alive: what a service does at start-up.
    fn register(s: &Server, name: &str, addr: &str) -> Service {
        let g = s.etcdctl(&["lease", "grant", &TTL_S.to_string()]);
        let lease_hex = g
            .stdout
            .strip_prefix("lease ")
            .and_then(|r| r.strip_suffix(&format!(" granted with TTL({TTL_S}s)\n")))
            .unwrap_or_else(|| panic!("{g:?}"))
            .to_string();
        s.etcdctl(&[
            "put",
            &format!("--lease={lease_hex}"),
            &format!("/services/{name}"),
            addr,
        ])
        .expect_ok("OK\n");
        let keep_alive = s.etcdctl_spawn(&["lease", "keep-alive", &lease_hex]);
        keep_alive.wait_for(
            &format!("lease {lease_hex} keepalived with TTL({TTL_S})\n"),
            WAIT,
        );
        Service {
            name: name.to_string(),
            addr: addr.to_string(),
            lease_hex,
            keep_alive,
        }
    }

    fn key(&self) -> String {
        format!("/services/{}", self.name)
    }

    fn lease(&self) -> i64 {
        i64::from_str_radix(&self.lease_hex, 16).unwrap()
    }

    #[track_caller]
    fn wait_output(&self, text: &str) {
        self.keep_alive.wait_for(text, WAIT);
    }

    fn running(&mut self) -> bool {
        self.keep_alive.running()
    }

    /// kill -9 of this service's keep-alive process, by its PID.
    fn kill9(&mut self) {
        self.keep_alive.kill9();
    }
}

/// The registered (key, value) pairs under /services/.
fn registered(s: &Server) -> Vec<(String, String)> {
    let c = s.etcdctl(&["get", "--prefix", "/services/"]);
    assert!(c.ok, "{c:?}");
    let lines: Vec<&str> = c.stdout.lines().collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

fn expected(services: &[&Service]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = services.iter().map(|s| (s.key(), s.addr.clone())).collect();
    v.sort();
    v
}

#[test]
fn services_join_die_and_leave() {
    let s = Server::start("discovery", &[]);
    let w = Watcher::open(&s, "/services/");

    // Joins: every one seen as a PUT with its address and lease.
    let mut svcs: Vec<Service> = (0..SERVICE_COUNT)
        .map(|i| Service::register(&s, &format!("svc-{i}"), &format!("127.0.0.1:{}", 9000 + i)))
        .collect();
    let evs = w.wait_count(SERVICE_COUNT, WAIT);
    let joins: Vec<(EventType, String, String, i64)> = evs
        .iter()
        .map(|e| (e.0, e.1.clone(), e.2.clone(), e.3))
        .collect();
    let want: Vec<(EventType, String, String, i64)> = svcs
        .iter()
        .map(|v| (EventType::Put, v.key(), v.addr.clone(), v.lease()))
        .collect();
    assert_eq!(joins, want, "joins in registration order");
    assert_eq!(registered(&s), expected(&svcs.iter().collect::<Vec<_>>()));

    // Two services die: their keep-alive processes are killed, nothing is revoked.
    svcs[1].kill9();
    svcs[3].kill9();
    let killed = Instant::now();
    let evs = w.wait_count(
        SERVICE_COUNT + 2,
        Duration::from_secs(TTL_S as u64) + EXPIRY_SLACK,
    );
    let mut deaths: Vec<(EventType, String)> = evs[SERVICE_COUNT..]
        .iter()
        .map(|e| (e.0, e.1.clone()))
        .collect();
    deaths.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        deaths,
        [
            (EventType::Delete, svcs[1].key()),
            (EventType::Delete, svcs[3].key()),
        ]
    );
    for dead in [&svcs[1], &svcs[3]] {
        s.etcdctl(&["lease", "timetolive", &dead.lease_hex])
            .expect_ok(&format!("lease {} already expired\n", dead.lease_hex));
    }

    // The three live ones stay registered for more than twice the TTL, with no event.
    let live = |v: &[Service]| expected(&[&v[0], &v[2], &v[4]]);
    let until = killed + Duration::from_secs(2 * TTL_S as u64 + 1);
    while Instant::now() < until {
        assert_eq!(registered(&s), live(&svcs));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(registered(&s), live(&svcs));
    assert_eq!(w.events().len(), SERVICE_COUNT + 2, "{:?}", w.events());
    for i in [0, 2, 4] {
        assert!(
            svcs[i].running(),
            "{}'s keep-alive still runs",
            svcs[i].name
        );
    }

    // svc-2 leaves gracefully, revoking its lease while its keep-alive still runs (so the
    // lease could not have expired): the watcher sees the DELETE, and the keep-alive
    // process notices and exits by itself.
    let leaving = &mut svcs[2];
    s.etcdctl(&["lease", "revoke", &leaving.lease_hex])
        .expect_ok(&format!("lease {} revoked\n", leaving.lease_hex));
    let evs = w.wait_count(SERVICE_COUNT + 3, WAIT);
    let last = &evs[SERVICE_COUNT + 2];
    assert_eq!(
        (last.0, last.1.as_str()),
        (EventType::Delete, "/services/svc-2")
    );
    leaving.wait_output(&format!(
        "lease {} expired or revoked.\n",
        leaving.lease_hex
    ));
    let deadline = Instant::now() + WAIT;
    while leaving.running() {
        assert!(
            Instant::now() < deadline,
            "keep-alive kept running after revoke"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(registered(&s), expected(&[&svcs[0], &svcs[4]]));
    assert!(svcs[0].running() && svcs[4].running());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.events().len(), SERVICE_COUNT + 3, "{:?}", w.events());

    // The survivors' leases are alive and hold exactly their keys.
    runtime().block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for v in [&svcs[0], &svcs[4]] {
            let t = c
                .lease_time_to_live(
                    v.lease(),
                    Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
                )
                .await
                .unwrap();
            assert!(t.ttl() > 0, "{t:?}");
            assert_eq!(t.keys(), [v.key().into_bytes()]);
        }
        let r = c
            .get(
                "/services/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(r.count(), 2);
    });
}
