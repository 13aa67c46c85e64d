//! `keel-bench proxy`: watch fan-out through a gRPC proxy (issue 21), Keel's proxy in front
//! of a Keel member, then etcd's in front of an etcd member, in one run.
//!
//! ```text
//! keel-bench proxy [--keel target/release/keel] [--etcd /usr/bin/etcd] [--watchers 100000]
//!     [--keys 1000] [--conns 100] [--streams 4] [--rate 1000] [--seconds 10]
//!     [--warmup-ms 1000] [--quick] [--only keel|etcd] [--out target/bench-proxy]
//! ```
//! `--quick`: 2,000 watchers on 100 keys over 20 connections, 2 s after 500 ms.
//!
//! Per server: a one-member cluster (fresh data dir, client URL on loopback: it serves
//! `/metrics` too) and `BIN grpc-proxy start --endpoints=MEMBER --listen-addr=PROXY` in
//! front of it, ready once a TCP connect and a Range through it answer. The loader opens
//! `--conns` connections to the proxy and `--streams` Watch streams on each (one stream
//! carries many watch ids, as clientv3's does) and creates `--watchers` exact-key watches
//! on `--keys` keys, each key watched by watchers/keys of them spread over the streams;
//! creates are pipelined, at most `CREATES_INFLIGHT_MAX` unanswered per stream, and the
//! run waits for every `created`. Then a putter writes `--rate` puts/s, paced, round robin
//! over the keys, straight to the member (not through the proxy); each value starts with
//! its send time (ns since the run's epoch, one `Instant` shared by the putter and the
//! loader threads), so each delivery's latency is receive time − send time.
//!
//! The measured window is the `--seconds` after `--warmup-ms` of puts: deliveries of
//! puts sent in it count (expected: watchers/keys × rate per second), their latencies go
//! into an hdrhistogram, and the proxy's and the member's CPU (utime + stime from
//! /proc/PID/stat) are read at its two ends. Over the whole run every watcher must get
//! every acknowledged put on its key exactly once, in revision order: a delivery whose
//! revision is not above the watcher's last one counts as duplicate / out of order, and a
//! watcher short of its key's acknowledged puts once the deliveries stop (bounded wait)
//! counts as missed. The member's `etcd_debugging_mvcc_watcher_total` (its `/metrics`)
//! after the creates says how many watchers the proxy holds upstream.
//!
//! Writes `OUT/table.md` and `OUT/runs.jsonl`; the servers' logs are in `OUT/`. Exits 1
//! when a server or its proxy does not start, or the loader fails.

use crate::compare::start;
use crate::grpc::{self, CallError, Conn, Stream};
use crate::load::process_cpu_us;
use crate::util::{self, Flags};
use bytes::Bytes;
use hdrhistogram::Histogram;
use keel::pb::etcdserverpb as pb;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Unanswered watch creates per stream at most: enough to keep the proxy busy, few
/// enough that a slow proxy is not buried.
const CREATES_INFLIGHT_MAX: usize = 64;

/// How long the creates of all watchers may take.
const CREATE_WAIT: Duration = Duration::from_secs(600);

/// How long a proxy may take to answer its first Range.
const PROXY_READY_WAIT: Duration = Duration::from_secs(20);

/// After the last put, how long the deliveries may take to catch up.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Puts in flight at most (open loop: a put is sent when due, not when the last returns).
const PUTS_INFLIGHT_MAX: usize = 1024;

/// Bytes of each put's value: its send time (8 bytes, big-endian ns since the epoch), then
/// padding.
const VALUE_BYTES: usize = 64;

/// The metric that counts a member's watchers (etcd's name; Keel serves it too).
const WATCHER_METRIC: &str = "etcd_debugging_mvcc_watcher_total";

#[derive(Clone, Debug)]
struct Params {
    watchers: usize,
    keys: usize,
    conns: usize,
    streams_per_conn: usize,
    rate: f64,
    warmup: Duration,
    seconds: Duration,
}

impl Params {
    fn streams(&self) -> usize {
        self.conns * self.streams_per_conn
    }

    /// Watcher `w`'s key: watchers are numbered key by key, so each key's watchers are
    /// consecutive numbers and land on consecutive streams.
    fn key_of(&self, w: usize) -> usize {
        w * self.keys / self.watchers
    }

    fn stream_of(&self, w: usize) -> usize {
        w % self.streams()
    }

    fn watchers_of_key(&self) -> Vec<u64> {
        let mut n = vec![0u64; self.keys];
        for w in 0..self.watchers {
            n[self.key_of(w)] += 1;
        }
        n
    }
}

fn key_name(k: usize) -> Bytes {
    Bytes::from(format!("proxy-bench/{k:06}"))
}

/// The window of send times (ns since the epoch) whose puts are measured.
#[derive(Clone, Copy, Debug)]
struct Window {
    start_ns: u64,
    end_ns: u64,
}

impl Window {
    fn contains(&self, stamp_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&stamp_ns)
    }
}

/// The window as the loader thread reads it: set by the main thread once the watchers are
/// created, before the first put is sent; empty until then.
struct SharedWindow {
    start_ns: AtomicU64,
    end_ns: AtomicU64,
}

impl SharedWindow {
    fn new() -> SharedWindow {
        SharedWindow {
            start_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
        }
    }

    fn set(&self, w: Window) {
        self.end_ns.store(w.end_ns, Ordering::Relaxed);
        self.start_ns.store(w.start_ns, Ordering::Relaxed);
    }

    fn get(&self) -> Window {
        Window {
            start_ns: self.start_ns.load(Ordering::Relaxed),
            end_ns: self.end_ns.load(Ordering::Relaxed),
        }
    }
}

/// What one server's run measured.
struct Outcome {
    params: Params,
    create_time: Duration,
    upstream_watchers: Option<u64>,
    puts_acked: u64,
    puts_failed: u64,
    put_latency: Histogram<u64>,
    deliveries_window: u64,
    deliveries_expected_window: u64,
    latency: Histogram<u64>,
    missed: u64,
    duplicate: u64,
    wrong_key: u64,
    loader_errors: BTreeMap<String, u64>,
    proxy_cpu_s: Option<f64>,
    member_cpu_s: Option<f64>,
    bench_cpu_s: Option<f64>,
}

impl Outcome {
    fn deliveries_per_s(&self) -> f64 {
        self.deliveries_window as f64 / self.params.seconds.as_secs_f64()
    }

    fn proxy_us_per_delivery(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_s?;
        (self.deliveries_window > 0).then(|| cpu * 1e6 / self.deliveries_window as f64)
    }

    fn deliveries_per_proxy_cpu_s(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_s?;
        (cpu > 0.0).then(|| self.deliveries_window as f64 / cpu)
    }

    fn clean(&self) -> bool {
        self.missed == 0
            && self.duplicate == 0
            && self.wrong_key == 0
            && self.loader_errors.is_empty()
            && self.puts_failed == 0
    }
}

/// A running proxy process; killed (by its PID) when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `binary grpc-proxy start` in front of `member`, working in its own directory (etcd's
/// proxy makes `default.proxy` there), once a Range through it answers.
fn start_proxy(name: &str, binary: &str, member: SocketAddr, out: &Path) -> Result<Proxy, String> {
    let dir = out.join("data").join(format!("{name}-proxy"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = out.join(format!("{name}-proxy.log"));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The proxy runs in its own directory: a relative binary path is taken from here.
    let absolute = std::fs::canonicalize(binary).map_err(|e| format!("{binary}: {e}"))?;
    let binary = absolute.to_str().unwrap_or(binary);
    let child = Command::new(binary)
        .args(["grpc-proxy", "start"])
        .arg(format!("--endpoints={member}"))
        .arg(format!("--listen-addr={addr}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("cannot start {binary} grpc-proxy: {e}"))?;
    let mut proxy = Proxy { child, addr, log };
    let deadline = Instant::now() + PROXY_READY_WAIT;
    loop {
        if let Ok(Some(st)) = proxy.child.try_wait() {
            return Err(format!(
                "{binary} grpc-proxy exited ({st}): {}",
                log_tail(&proxy.log)
            ));
        }
        if std::net::TcpStream::connect(addr).is_ok() && range_answers(addr) {
            return Ok(proxy);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{binary} grpc-proxy answered no Range in {PROXY_READY_WAIT:?}: {}",
                log_tail(&proxy.log)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Whether a Range through `addr` answers (within the client's own timeouts).
fn range_answers(addr: SocketAddr) -> bool {
    keel::runtime::block_on(async move {
        let call = async {
            let conn = grpc::connect(addr).await?;
            let req = pb::RangeRequest {
                key: Bytes::from_static(b"proxy-bench-ready"),
                ..Default::default()
            };
            grpc::unary::<_, pb::RangeResponse>(&conn, "/etcdserverpb.KV/Range", &req).await
        };
        let answered = glommio::timer::timeout(Duration::from_secs(2), async {
            Ok::<Result<pb::RangeResponse, CallError>, glommio::GlommioError<()>>(call.await)
        })
        .await;
        matches!(answered, Ok(Ok(_)))
    })
}

/// `GET /metrics` on `addr`; the value of `metric` (summed over its series).
fn scrape(addr: SocketAddr, metric: &str) -> Option<u64> {
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    metric_value(&body, metric)
}

/// `metric`'s value in Prometheus text (summed over its series), if it is there.
fn metric_value(text: &str, metric: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

// ---- the loader: watchers on the proxy -------------------------------------------------

/// One watcher's progress: the last revision it saw and how many it saw in order.
#[derive(Clone, Copy, Default)]
struct WatcherSeen {
    revision: i64,
    count: u32,
}

/// Shared by the loader's stream tasks (one thread).
struct Loader {
    params: Params,
    epoch: Instant,
    window: Arc<SharedWindow>,
    keys: Vec<Bytes>,
    seen: RefCell<Vec<WatcherSeen>>,
    created: Cell<usize>,
    latency: RefCell<Histogram<u64>>,
    deliveries_window: Cell<u64>,
    duplicate: Cell<u64>,
    wrong_key: Cell<u64>,
    errors: RefCell<BTreeMap<String, u64>>,
    /// Every delivery so far, read by the main thread to know when they stop.
    delivered_total: Arc<AtomicU64>,
}

impl Loader {
    fn error(&self, e: String) {
        *self.errors.borrow_mut().entry(e).or_default() += 1;
    }

    fn deliver(&self, watcher: usize, kv: &keel::pb::mvccpb::KeyValue) {
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        self.delivered_total.fetch_add(1, Ordering::Relaxed);
        if kv.key != self.keys[self.params.key_of(watcher)] {
            self.wrong_key.set(self.wrong_key.get() + 1);
            return;
        }
        {
            let mut seen = self.seen.borrow_mut();
            let s = &mut seen[watcher];
            if kv.mod_revision <= s.revision {
                self.duplicate.set(self.duplicate.get() + 1);
            } else {
                s.revision = kv.mod_revision;
                s.count += 1;
            }
        }
        let Some(stamp) = kv.value.get(..8) else {
            return;
        };
        let stamp_ns = u64::from_be_bytes(stamp.try_into().unwrap());
        if self.window.get().contains(stamp_ns) {
            self.deliveries_window.set(self.deliveries_window.get() + 1);
            let us = now_ns.saturating_sub(stamp_ns) / 1000;
            let _ = self.latency.borrow_mut().record(us.max(1));
        }
    }
}

fn create(key: &Bytes) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    }
}

/// One Watch stream: creates its watchers (at most `CREATES_INFLIGHT_MAX` unanswered),
/// then takes deliveries until cancelled.
///
/// The n-th create on a stream gets watch id n: etcd's server and its gRPC proxy both
/// number a stream's watchers from 0 in the order the creates arrive. Their `created`
/// answers need not come in that order (etcd's proxy answers a watch that joins an
/// existing upstream watch at once, and one that opens a new upstream watch when the
/// member answers), so they are matched by id, not by position.
async fn watch_stream(
    loader: Rc<Loader>,
    conn: Conn,
    watchers: Vec<usize>,
) -> Result<(), CallError> {
    let mut stream = Stream::open(&conn, "/etcdserverpb.Watch/Watch").await?;
    let mut sent = 0usize;
    let mut created = vec![false; watchers.len()];
    let mut created_count = 0usize;
    while sent < watchers.len().min(CREATES_INFLIGHT_MAX) {
        stream.send(&create(&loader.keys[loader.params.key_of(watchers[sent])]))?;
        sent += 1;
    }
    loop {
        let r: pb::WatchResponse = stream.recv().await?;
        let slot = usize::try_from(r.watch_id)
            .ok()
            .filter(|&id| id < sent)
            .ok_or_else(|| {
                CallError::Transport(format!(
                    "watch id {} is none of the {sent} created on this stream",
                    r.watch_id
                ))
            })?;
        if r.canceled {
            return Err(CallError::Transport(format!(
                "watch {} canceled: {}",
                r.watch_id, r.cancel_reason
            )));
        }
        if r.created {
            if std::mem::replace(&mut created[slot], true) {
                return Err(CallError::Transport(format!(
                    "watch {} created twice",
                    r.watch_id
                )));
            }
            created_count += 1;
            loader.created.set(loader.created.get() + 1);
            if sent < watchers.len() && sent - created_count < CREATES_INFLIGHT_MAX {
                stream.send(&create(&loader.keys[loader.params.key_of(watchers[sent])]))?;
                sent += 1;
            }
        }
        for ev in &r.events {
            if let Some(kv) = &ev.kv {
                loader.deliver(watchers[slot], kv);
            }
        }
    }
}

/// What the loader reports to the main thread when its watchers are all created.
type Ready = Result<Duration, String>;

struct LoaderResult {
    seen: Vec<WatcherSeen>,
    latency: Histogram<u64>,
    deliveries_window: u64,
    duplicate: u64,
    wrong_key: u64,
    errors: BTreeMap<String, u64>,
}

/// The loader thread's body: connections, streams and watchers on `proxy`; reports on
/// `ready` once all are created, serves deliveries until `stop`.
fn run_loader(
    proxy: SocketAddr,
    params: Params,
    epoch: Instant,
    window: Arc<SharedWindow>,
    delivered_total: Arc<AtomicU64>,
    ready: mpsc::Sender<Ready>,
    stop: Arc<AtomicBool>,
) -> LoaderResult {
    keel::runtime::block_on(async move {
        let loader = Rc::new(Loader {
            keys: (0..params.keys).map(key_name).collect(),
            seen: RefCell::new(vec![WatcherSeen::default(); params.watchers]),
            created: Cell::new(0),
            latency: RefCell::new(util::histogram()),
            deliveries_window: Cell::new(0),
            duplicate: Cell::new(0),
            wrong_key: Cell::new(0),
            errors: RefCell::new(BTreeMap::new()),
            delivered_total,
            params: params.clone(),
            epoch,
            window,
        });
        let started = Instant::now();
        let mut conns = Vec::with_capacity(params.conns);
        for _ in 0..params.conns {
            match grpc::connect(proxy).await {
                Ok(c) => conns.push(c),
                Err(e) => {
                    let _ = ready.send(Err(format!("connect to the proxy: {e}")));
                    return loader_result(&loader);
                }
            }
        }
        let mut per_stream = vec![Vec::new(); params.streams()];
        for w in 0..params.watchers {
            per_stream[params.stream_of(w)].push(w);
        }
        let tasks: Vec<_> = per_stream
            .into_iter()
            .enumerate()
            .filter(|(_, ws)| !ws.is_empty())
            .map(|(s, ws)| {
                let (loader, conn) = (loader.clone(), conns[s % params.conns].clone());
                glommio::spawn_local(async move {
                    if let Err(e) = watch_stream(loader.clone(), conn, ws).await {
                        loader.error(format!("watch stream: {e}"));
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + CREATE_WAIT;
        let outcome = loop {
            if loader.created.get() == params.watchers {
                break Ok(started.elapsed());
            }
            if let Some((e, _)) = loader.errors.borrow().iter().next() {
                break Err(e.clone());
            }
            if Instant::now() > deadline {
                break Err(format!(
                    "{} of {} watchers created in {CREATE_WAIT:?}",
                    loader.created.get(),
                    params.watchers
                ));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        };
        let failed = outcome.is_err();
        let _ = ready.send(outcome);
        while !failed && !stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.cancel().await;
        }
        loader_result(&loader)
    })
}

fn loader_result(loader: &Loader) -> LoaderResult {
    LoaderResult {
        seen: loader.seen.borrow().clone(),
        latency: loader.latency.borrow().clone(),
        deliveries_window: loader.deliveries_window.get(),
        duplicate: loader.duplicate.get(),
        wrong_key: loader.wrong_key.get(),
        errors: loader.errors.borrow().clone(),
    }
}

// ---- the putter: paced puts straight to the member --------------------------------------

struct PutterResult {
    /// Acknowledged puts per key, over the whole run and in the window.
    acked: Vec<u64>,
    acked_window: Vec<u64>,
    failed: u64,
    latency: Histogram<u64>,
}

struct Putter {
    acked: RefCell<Vec<u64>>,
    acked_window: RefCell<Vec<u64>>,
    failed: Cell<u64>,
    inflight: Cell<usize>,
    latency: RefCell<Histogram<u64>>,
}

/// Puts at `rate`/s from `from_ns` until `window.end_ns` (ns since `epoch`), put *i* to
/// key *i* mod keys, each value stamped with its send time.
fn run_putter(
    member: SocketAddr,
    keys: usize,
    rate: f64,
    epoch: Instant,
    from_ns: u64,
    window: Window,
) -> Result<PutterResult, String> {
    keel::runtime::block_on(async move {
        let conn = grpc::connect(member)
            .await
            .map_err(|e| format!("putter: connect to the member: {e}"))?;
        let state = Rc::new(Putter {
            acked: RefCell::new(vec![0; keys]),
            acked_window: RefCell::new(vec![0; keys]),
            failed: Cell::new(0),
            inflight: Cell::new(0),
            latency: RefCell::new(util::histogram()),
        });
        let names: Rc<Vec<Bytes>> = Rc::new((0..keys).map(key_name).collect());
        for i in 0u64.. {
            let due_ns = from_ns + (i as f64 * 1e9 / rate) as u64;
            if due_ns >= window.end_ns {
                break;
            }
            let due = epoch + Duration::from_nanos(due_ns);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                glommio::timer::sleep(wait).await;
            }
            while state.inflight.get() >= PUTS_INFLIGHT_MAX {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            state.inflight.set(state.inflight.get() + 1);
            let (state, conn, names) = (state.clone(), conn.clone(), names.clone());
            glommio::spawn_local(async move {
                let k = (i % keys as u64) as usize;
                put_one(&state, &conn, &names[k], k, epoch, window).await;
                state.inflight.set(state.inflight.get() - 1);
            })
            .detach();
        }
        while state.inflight.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let r = PutterResult {
            acked: state.acked.borrow().clone(),
            acked_window: state.acked_window.borrow().clone(),
            failed: state.failed.get(),
            latency: state.latency.borrow().clone(),
        };
        Ok(r)
    })
}

async fn put_one(
    state: &Putter,
    conn: &Conn,
    key: &Bytes,
    k: usize,
    epoch: Instant,
    window: Window,
) {
    let sent = Instant::now();
    let stamp_ns = sent.duration_since(epoch).as_nanos() as u64;
    let mut value = stamp_ns.to_be_bytes().to_vec();
    value.resize(VALUE_BYTES, b'v');
    let req = pb::PutRequest {
        key: key.clone(),
        value: Bytes::from(value),
        ..Default::default()
    };
    match grpc::unary::<_, pb::PutResponse>(conn, "/etcdserverpb.KV/Put", &req).await {
        Ok(_) => {
            let us = sent.elapsed().as_micros() as u64;
            let _ = state.latency.borrow_mut().record(us.max(1));
            state.acked.borrow_mut()[k] += 1;
            if window.contains(stamp_ns) {
                state.acked_window.borrow_mut()[k] += 1;
            }
        }
        Err(_) => state.failed.set(state.failed.get() + 1),
    }
}

// ---- one server ---------------------------------------------------------------------------

fn cpu_s(pid: u32) -> Option<f64> {
    process_cpu_us(pid).map(|us| us / 1e6)
}

fn sleep_until(epoch: Instant, ns: u64) {
    let at = epoch + Duration::from_nanos(ns);
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

fn run_server(
    name: &'static str,
    binary: &str,
    params: &Params,
    out: &Path,
) -> Result<Outcome, String> {
    let member = start(name, binary, out, &[], false);
    let proxy = start_proxy(name, binary, member.addr, out)?;
    let epoch = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered_total = Arc::new(AtomicU64::new(0));
    let shared_window = Arc::new(SharedWindow::new());
    let loader = {
        let (params, stop) = (params.clone(), stop.clone());
        let (delivered, window, addr) =
            (delivered_total.clone(), shared_window.clone(), proxy.addr);
        std::thread::spawn(move || {
            run_loader(addr, params, epoch, window, delivered, ready_tx, stop)
        })
    };
    let create_time = match ready_rx.recv() {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            stop.store(true, Ordering::Relaxed);
            let _ = loader.join();
            return Err(format!("loader: {e}"));
        }
        Err(_) => return Err("loader thread died".into()),
    };
    let upstream_watchers = scrape(member.addr, WATCHER_METRIC);
    // The first put goes out shortly after the loader has the window; the window starts
    // `warmup` after it.
    let from_ns = epoch.elapsed().as_nanos() as u64 + 100_000_000;
    let window = Window {
        start_ns: from_ns + params.warmup.as_nanos() as u64,
        end_ns: from_ns + (params.warmup + params.seconds).as_nanos() as u64,
    };
    shared_window.set(window);
    let putter = {
        let (addr, keys, rate) = (member.addr, params.keys, params.rate);
        std::thread::spawn(move || run_putter(addr, keys, rate, epoch, from_ns, window))
    };
    let (proxy_pid, member_pid) = (proxy.child.id(), member.child.id());
    sleep_until(epoch, window.start_ns);
    let cpu0 = (
        cpu_s(proxy_pid),
        cpu_s(member_pid),
        cpu_s(std::process::id()),
    );
    sleep_until(epoch, window.end_ns);
    let cpu1 = (
        cpu_s(proxy_pid),
        cpu_s(member_pid),
        cpu_s(std::process::id()),
    );
    let puts = putter.join().map_err(|_| "putter thread panicked")??;
    // Deliveries stop once every acknowledged put reached every watcher of its key (or
    // the drain wait ends).
    let per_key = params.watchers_of_key();
    let expected: u64 = puts.acked.iter().zip(&per_key).map(|(a, w)| a * w).sum();
    let drain_until = Instant::now() + DRAIN_WAIT;
    while delivered_total.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let l = loader.join().map_err(|_| "loader thread panicked")?;
    let missed = l
        .seen
        .iter()
        .enumerate()
        .map(|(w, s)| puts.acked[params.key_of(w)].saturating_sub(u64::from(s.count)))
        .sum();
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    drop(proxy);
    drop(member);
    Ok(Outcome {
        params: params.clone(),
        create_time,
        upstream_watchers,
        puts_acked: puts.acked.iter().sum(),
        puts_failed: puts.failed,
        put_latency: puts.latency,
        deliveries_window: l.deliveries_window,
        deliveries_expected_window: puts
            .acked_window
            .iter()
            .zip(&per_key)
            .map(|(a, w)| a * w)
            .sum(),
        latency: l.latency,
        missed,
        duplicate: l.duplicate,
        wrong_key: l.wrong_key,
        loader_errors: l.errors,
        proxy_cpu_s: delta(cpu0.0, cpu1.0),
        member_cpu_s: delta(cpu0.1, cpu1.1),
        bench_cpu_s: delta(cpu0.2, cpu1.2),
    })
}

// ---- the table ------------------------------------------------------------------------------

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn row(name: &str, o: &Outcome) -> String {
    let h = &o.latency;
    let p = &o.params;
    format!(
        "| {name} | {} / {} / {}×{} | {:.0} | {:.0} ({:.0}) | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {:.1} |",
        p.watchers,
        p.keys,
        p.conns,
        p.streams_per_conn,
        o.puts_acked as f64 / (p.warmup + p.seconds).as_secs_f64(),
        o.deliveries_per_s(),
        o.deliveries_expected_window as f64 / p.seconds.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        opt(o.proxy_cpu_s, 2),
        opt(o.proxy_us_per_delivery(), 2),
        opt(o.deliveries_per_proxy_cpu_s(), 0),
        opt(o.member_cpu_s, 2),
        opt(o.bench_cpu_s, 2),
        o.missed,
        o.duplicate,
        o.wrong_key,
        o.upstream_watchers.map_or("-".into(), |n| n.to_string()),
        o.create_time.as_secs_f64(),
    )
}

fn json(name: &str, o: &Outcome) -> String {
    let h = &o.latency;
    let p = &o.params;
    let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
    format!(
        "{{\"server\":\"{name}\",\"watchers\":{},\"keys\":{},\"conns\":{},\"streams_per_conn\":{},\"rate\":{},\"seconds\":{},\
\"puts_acked\":{},\"puts_failed\":{},\"put_p99_us\":{},\"deliveries\":{},\"deliveries_expected\":{},\"deliveries_per_s\":{:.1},\
\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"proxy_cpu_s\":{},\"proxy_us_per_delivery\":{},\
\"deliveries_per_proxy_cpu_s\":{},\"member_cpu_s\":{},\"bench_cpu_s\":{},\"missed\":{},\"duplicate\":{},\"wrong_key\":{},\
\"upstream_watchers\":{},\"create_s\":{:.3},\"errors\":{}}}",
        p.watchers,
        p.keys,
        p.conns,
        p.streams_per_conn,
        p.rate,
        p.seconds.as_secs_f64(),
        o.puts_acked,
        o.puts_failed,
        o.put_latency.value_at_quantile(0.99),
        o.deliveries_window,
        o.deliveries_expected_window,
        o.deliveries_per_s(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        num(o.proxy_cpu_s),
        num(o.proxy_us_per_delivery()),
        num(o.deliveries_per_proxy_cpu_s()),
        num(o.member_cpu_s),
        num(o.bench_cpu_s),
        o.missed,
        o.duplicate,
        o.wrong_key,
        o.upstream_watchers.map_or("null".into(), |n| n.to_string()),
        o.create_time.as_secs_f64(),
        o.loader_errors.values().sum::<u64>(),
    )
}

/// keel / etcd for the figures where that says something.
fn ratio_row(keel: &Outcome, etcd: &Outcome) -> String {
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".into(),
    };
    let q = |o: &Outcome, p: f64| Some(o.latency.value_at_quantile(p) as f64);
    format!(
        "| keel / etcd | | | {} | {} / {} / {} / {} | {} | {} | {} | {} | | | | |",
        r(Some(keel.deliveries_per_s()), Some(etcd.deliveries_per_s())),
        r(q(keel, 0.5), q(etcd, 0.5)),
        r(q(keel, 0.99), q(etcd, 0.99)),
        r(q(keel, 0.999), q(etcd, 0.999)),
        r(
            Some(keel.latency.max() as f64),
            Some(etcd.latency.max() as f64)
        ),
        r(keel.proxy_cpu_s, etcd.proxy_cpu_s),
        r(keel.proxy_us_per_delivery(), etcd.proxy_us_per_delivery()),
        r(
            keel.deliveries_per_proxy_cpu_s(),
            etcd.deliveries_per_proxy_cpu_s()
        ),
        r(keel.member_cpu_s, etcd.member_cpu_s),
    )
}

const HEADER: &str = "| server | watchers / keys / conns×streams | puts/s | deliveries/s (expected) | latency p50 / p99 / p99.9 / max µs | proxy CPU s | proxy CPU µs/delivery | deliveries per proxy CPU-s | member CPU s | bench CPU s | missed / dup-or-reordered / wrong key | upstream watchers | create s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let params = Params {
        watchers: flags.u64("watchers", if quick { 2_000 } else { 100_000 }) as usize,
        keys: flags.u64("keys", if quick { 100 } else { 1_000 }) as usize,
        conns: flags.u64("conns", if quick { 20 } else { 100 }) as usize,
        streams_per_conn: flags.u64("streams", 4) as usize,
        rate: flags.u64("rate", 1_000) as f64,
        warmup: Duration::from_millis(flags.u64("warmup-ms", if quick { 500 } else { 1_000 })),
        seconds: Duration::from_secs(flags.u64("seconds", if quick { 2 } else { 10 })),
    };
    assert!(
        params.keys >= 1 && params.watchers >= params.keys,
        "--watchers must be at least --keys (each key watched)"
    );
    assert!(params.conns >= 1 && params.streams_per_conn >= 1 && params.rate > 0.0);
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let only = flags.opt("only");
    let out = PathBuf::from(flags.str("out", "target/bench-proxy"));
    std::fs::create_dir_all(&out).expect("create --out");
    println!(
        "# proxy: {} watchers on {} keys over {} connections × {} streams, {} puts/s to the member, {} s measured after {} ms",
        params.watchers,
        params.keys,
        params.conns,
        params.streams_per_conn,
        params.rate,
        params.seconds.as_secs(),
        params.warmup.as_millis()
    );
    let mut table = String::from(HEADER);
    let mut jsonl = String::new();
    let mut outcomes = BTreeMap::new();
    let mut failed = false;
    for (name, binary) in [("keel", keel.as_str()), ("etcd", etcd.as_str())] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        match run_server(name, binary, &params, &out) {
            Ok(o) => {
                let _ = writeln!(table, "{}", row(name, &o));
                let _ = writeln!(jsonl, "{}", json(name, &o));
                if !o.clean() {
                    eprintln!(
                        "proxy: {name}: missed {} duplicate {} wrong-key {} put failures {} loader errors {:?}",
                        o.missed, o.duplicate, o.wrong_key, o.puts_failed, o.loader_errors
                    );
                }
                outcomes.insert(name, o);
            }
            Err(e) => {
                eprintln!("proxy: {name}: {e}");
                let _ = writeln!(table, "| {name} | n/a: {} |", e.replace('|', "/"));
                failed = true;
            }
        }
    }
    if let (Some(k), Some(e)) = (outcomes.get("keel"), outcomes.get("etcd")) {
        let _ = writeln!(table, "{}", ratio_row(k, e));
    }
    std::fs::write(out.join("table.md"), &table).expect("write table.md");
    std::fs::write(out.join("runs.jsonl"), &jsonl).expect("write runs.jsonl");
    println!("{table}");
    if failed {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_share_of_watchers_spread_over_streams() {
        let p = Params {
            watchers: 1_000,
            keys: 10,
            conns: 5,
            streams_per_conn: 4,
            rate: 1.0,
            warmup: Duration::ZERO,
            seconds: Duration::ZERO,
        };
        assert!(p.watchers_of_key().iter().all(|&n| n == 100));
        // Key 0's watchers are on 20 different streams.
        let streams: std::collections::BTreeSet<_> = (0..100).map(|w| p.stream_of(w)).collect();
        assert_eq!(streams.len(), 20);
        let uneven = Params {
            watchers: 7,
            keys: 3,
            ..p
        };
        assert_eq!(uneven.watchers_of_key().iter().sum::<u64>(), 7);
        assert!(uneven.watchers_of_key().iter().all(|&n| n >= 2));
    }

    #[test]
    fn rows_have_the_headers_columns() {
        let outcome = Outcome {
            params: Params {
                watchers: 10,
                keys: 2,
                conns: 1,
                streams_per_conn: 1,
                rate: 10.0,
                warmup: Duration::ZERO,
                seconds: Duration::from_secs(1),
            },
            create_time: Duration::ZERO,
            upstream_watchers: Some(2),
            puts_acked: 10,
            puts_failed: 0,
            put_latency: util::histogram(),
            deliveries_window: 50,
            deliveries_expected_window: 50,
            latency: util::histogram(),
            missed: 0,
            duplicate: 0,
            wrong_key: 0,
            loader_errors: BTreeMap::new(),
            proxy_cpu_s: Some(0.1),
            member_cpu_s: None,
            bench_cpu_s: Some(0.1),
        };
        let columns = |line: &str| line.matches('|').count();
        let header = HEADER.lines().next().unwrap();
        assert_eq!(columns(&row("keel", &outcome)), columns(header));
        assert_eq!(columns(&ratio_row(&outcome, &outcome)), columns(header));
        assert!(json("keel", &outcome).contains("\"member_cpu_s\":null"));
    }

    #[test]
    fn the_metric_is_read_from_prometheus_text() {
        let text = "# HELP x\netcd_debugging_mvcc_watcher_total 1000\n\
                    etcd_debugging_mvcc_watcher_total_x 5\n";
        assert_eq!(metric_value(text, WATCHER_METRIC), Some(1000));
        assert_eq!(metric_value("x 1\n", WATCHER_METRIC), None);
    }
}
