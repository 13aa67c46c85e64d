//! `keel-bench maintenance`: Maintenance.Defragment and Maintenance.Snapshot under write
//! load, Keel and etcd 3.4 in one run.
//!
//! ```text
//! keel-bench maintenance [--keel target/release/keel] [--etcd /usr/bin/etcd]
//!     [--only defrag,snapshot] [--db-mib 1024] [--val-size 4000] [--seconds 10]
//!     [--clients 64] [--quick] [--out bench/results/NAME]
//! ```
//! One server at a time (a fresh data dir, stopped and deleted after), each through:
//! 1. Fill: `--db-mib` MiB / 4 KiB keys (8-digit names, `--val-size` bytes each; 4000 so
//!    one key and its value fit a 4 KiB page on both), 64 clients over 4 connections.
//! 2. `snapshot`: a baseline window (the put load alone for `--seconds`), then an event
//!    window: the same load, and half-way through, Maintenance.Snapshot streamed to a
//!    client that counts the blob bytes and drops them (a thread of its own with a
//!    minimal HTTP/2 client: the request's stream must end after its one message, which
//!    `keel::grpc::client::Stream` does not do); the load goes on until the later of
//!    `--seconds` and the snapshot's end + half of `--seconds` (at most 1 s).
//! 3. `defrag`: four keys of every five deleted (a DeleteRange of 4 keys each), a
//!    compaction at the current revision (physical), then a baseline window and an event
//!    window with Maintenance.Defragment half-way, as above.
//!
//! The put load: `--clients` closed-loop clients over 4 connections, random keys of a
//! 10,000-key space apart from the filled ones, 256-byte values (compare's `put c64`),
//! each window after a warm-up of a tenth of it (0.1–1 s) that is not measured.
//! Every put's send time and latency are kept, so each window is summarised whole, during
//! the event (the puts in flight at any time between the event's call and its answer;
//! puts/s: those completed in it over its length) and outside it, with the longest time
//! no put completed. Db sizes come from Maintenance.Status (`db_size`, `db_size_in_use`).
//!
//! Writes `OUT/table.md`, `OUT/runs.jsonl` (every window, every subset), `OUT/hgrm/*`,
//! `OUT/timeline-SCENARIO-SERVER.csv` (100-ms buckets by completion time: puts, p50, p99,
//! max, whether the event ran) and the servers' logs.

use crate::compare::{start, Server};
use crate::grpc::{self, CallError, Conn};
use crate::load::{self, Report};
use crate::util::{self, Flags};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use keel::pb::etcdserverpb as pb;
use prost::Message;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The put load's keys and values (compare's `put c64`).
const LOAD_KEYS: u64 = 10_000;
const LOAD_VALUE: usize = 256;
const CONNS: usize = 4;
/// The fill: one key per 4 KiB of the asked db size.
const FILL_BYTES_PER_KEY: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Event {
    Defrag,
    Snapshot,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Defrag => "defrag",
            Event::Snapshot => "snapshot",
        }
    }
}

#[derive(Clone, Copy)]
struct Settings {
    clients: usize,
    seconds: Duration,
    keys: u64,
    val_size: usize,
}

/// One put: when it was sent (µs from the window's start) and how long it took (µs).
#[derive(Clone, Copy)]
struct Sample {
    sent_us: u64,
    took_us: u64,
}

impl Sample {
    fn done_us(&self) -> u64 {
        self.sent_us + self.took_us
    }
}

/// What the snapshot client saw.
#[derive(Clone, Debug)]
struct SnapStats {
    /// Blob bytes before the final message (the file), and that message's length (etcd
    /// and Keel both end with the sha256 of the file, 32 bytes).
    bytes: u64,
    messages: u64,
    started: Instant,
    first_byte: Option<Instant>,
    ended: Instant,
}

/// One window of put load, and the event in it.
struct Window {
    samples: Vec<Sample>,
    errors: BTreeMap<String, u64>,
    /// Until the load was told to stop.
    elapsed: Duration,
    /// The event's call and answer, µs from the window's start.
    span: Option<(u64, u64)>,
    outcome: Option<Result<Option<SnapStats>, String>>,
    server_cpu_us: Option<f64>,
}

/// A summary of some of a window's puts.
struct Stats {
    puts: u64,
    per_s: f64,
    histogram: Histogram<u64>,
    /// The longest time in the span with no put completed, µs.
    gap_us: u64,
}

fn stats<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    span: (u64, u64),
    per_s_span: (u64, u64),
) -> Stats {
    let mut histogram = util::histogram();
    let mut done = Vec::new();
    for s in samples {
        let _ = histogram.record(s.took_us.max(1));
        done.push(s.done_us());
    }
    done.sort_unstable();
    let mut last = span.0;
    let mut gap = 0;
    let mut completed_in = 0u64;
    for &d in &done {
        if d >= per_s_span.0 && d <= per_s_span.1 {
            completed_in += 1;
        }
        if d < span.0 || d > span.1 {
            continue;
        }
        gap = gap.max(d - last);
        last = d;
    }
    gap = gap.max(span.1.saturating_sub(last));
    let secs = (per_s_span.1.saturating_sub(per_s_span.0)) as f64 / 1e6;
    Stats {
        puts: histogram.len(),
        per_s: completed_in as f64 / secs.max(1e-9),
        histogram,
        gap_us: gap,
    }
}

/// A window's subsets: whole, and with an event, during and outside it.
fn subsets(w: &Window) -> Vec<(&'static str, Stats)> {
    let end = w.elapsed.as_micros() as u64;
    let mut v = vec![("whole", stats(w.samples.iter(), (0, end), (0, end)))];
    if let Some((a, b)) = w.span {
        let during = |s: &&Sample| s.sent_us < b && s.done_us() > a;
        v.push((
            "during",
            stats(w.samples.iter().filter(during), (a, b), (a, b)),
        ));
        let outside = stats(w.samples.iter().filter(|s| !during(s)), (0, 0), (0, end));
        // Puts/s outside: those completed outside the event over the time outside it.
        let secs = (end.saturating_sub(b - a)) as f64 / 1e6;
        let n = w
            .samples
            .iter()
            .filter(|s| s.done_us() < a || s.done_us() > b)
            .count();
        v.push((
            "outside",
            Stats {
                per_s: n as f64 / secs.max(1e-9),
                ..outside
            },
        ));
    }
    v
}

pub fn main(flags: &Flags) {
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let quick = flags.has("quick");
    let db_mib = flags.u64("db-mib", if quick { 20 } else { 1024 });
    let settings = Settings {
        clients: flags.u64("clients", 64) as usize,
        seconds: Duration::from_secs_f64(
            flags
                .opt("seconds")
                .map(|s| s.parse().expect("--seconds: a number"))
                .unwrap_or(if quick { 1.0 } else { 10.0 }),
        ),
        keys: (db_mib << 20) / FILL_BYTES_PER_KEY,
        val_size: flags.u64("val-size", 4000) as usize,
    };
    let only = flags.str("only", "snapshot,defrag");
    let events: Vec<Event> = [Event::Snapshot, Event::Defrag]
        .into_iter()
        .filter(|e| only.split(',').any(|o| o.trim() == e.name()))
        .collect();
    assert!(!events.is_empty(), "--only: snapshot and/or defrag");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = PathBuf::from(flags.str("out", &format!("bench/results/maintenance-{stamp}")));
    std::fs::create_dir_all(out.join("hgrm")).unwrap();
    let mut systems: Vec<(&'static str, String)> = vec![("keel", keel)];
    if Path::new(&etcd).exists() {
        systems.push(("etcd", etcd));
    } else {
        println!("# {etcd} not found: measuring Keel alone");
    }
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# {} keys of {} bytes (~{db_mib} MiB), put load {} clients, windows of {:.1} s; load average at start: {}",
        settings.keys,
        settings.val_size,
        settings.clients,
        settings.seconds.as_secs_f64(),
        load.trim()
    );
    let mut results: Vec<SystemResult> = Vec::new();
    for (name, binary) in &systems {
        let server = start(name, binary, &out, &[], false);
        let r = run_system(name, &server, settings, &events, &out, started);
        drop(server);
        let _ = std::fs::remove_dir_all(out.join("data").join(name));
        results.push(r);
    }
    let _ = std::fs::remove_dir_all(out.join("data"));
    let mut jsonl = String::new();
    for r in &results {
        jsonl.push_str(&r.jsonl);
    }
    std::fs::write(out.join("runs.jsonl"), jsonl).unwrap();
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let table = render(
        &results,
        settings,
        &events,
        &out,
        (load.trim(), load_end.trim()),
    );
    std::fs::write(out.join("table.md"), &table).unwrap();
    println!("{table}");
    println!(
        "results: {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Db sizes from Maintenance.Status.
#[derive(Clone, Copy, Default, Debug)]
struct Db {
    size: i64,
    in_use: i64,
}

#[derive(Default)]
struct SystemResult {
    name: &'static str,
    fill: Option<(Duration, Db)>,
    compacted: Option<Db>,
    /// Per event: the baseline window, the event window, the db before and after.
    windows: Vec<(Event, Window, Window, Db, Db)>,
    failed: Option<String>,
    jsonl: String,
}

fn run_system(
    name: &'static str,
    server: &Server,
    settings: Settings,
    events: &[Event],
    out: &Path,
    started: Instant,
) -> SystemResult {
    let mut r = SystemResult {
        name,
        ..Default::default()
    };
    let addr = server.addr;
    let pid = server.child.id();
    let log = |what: &str| {
        eprintln!(
            "[{:>4.0} s] {name}: {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let res: Result<(), String> = (|| {
        let t = Instant::now();
        block_on(fill(addr, settings))?;
        let db = block_on(status(addr))?;
        log(&format!(
            "filled {} keys in {:.1} s: db {} MiB, in use {} MiB",
            settings.keys,
            t.elapsed().as_secs_f64(),
            db.size >> 20,
            db.in_use >> 20
        ));
        r.fill = Some((t.elapsed(), db));
        for &event in events {
            if event == Event::Defrag {
                block_on(delete_most(addr, settings))?;
                let db = block_on(status(addr))?;
                log(&format!(
                    "deleted 4 of 5 keys and compacted: db {} MiB, in use {} MiB",
                    db.size >> 20,
                    db.in_use >> 20
                ));
                r.compacted = Some(db);
                // Let the servers settle (etcd's compaction and commits run on timers).
                std::thread::sleep(Duration::from_secs(1));
            }
            let base = window(addr, pid, settings, None);
            let before = block_on(status(addr))?;
            let ev = window(addr, pid, settings, Some(event));
            let after = block_on(status(addr))?;
            let summary = |w: &Window| {
                subsets(w)
                    .iter()
                    .map(|(n, s)| {
                        format!(
                            "{n} {:.0}/s p99 {} µs max {} µs",
                            s.per_s,
                            s.histogram.value_at_quantile(0.99),
                            s.histogram.max()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            log(&format!("{} baseline: {}", event.name(), summary(&base)));
            log(&format!(
                "{} window: {} ({})",
                event.name(),
                summary(&ev),
                match &ev.outcome {
                    Some(Ok(_)) => format!(
                        "{} took {:.2} s",
                        event.name(),
                        ev.span.map_or(0.0, |(a, b)| (b - a) as f64 / 1e6)
                    ),
                    Some(Err(e)) => format!("{} failed: {e}", event.name()),
                    None => String::new(),
                }
            ));
            for (label, w) in [("baseline", &base), ("event", &ev)] {
                for (subset, s) in subsets(w) {
                    let rep = report(name, event, (label, subset, settings.clients), &s, w);
                    let _ = writeln!(
                        r.jsonl,
                        "{{\"server\":\"{name}\",\"scenario\":\"{}\",\"window\":\"{label}\",\"subset\":\"{subset}\",\"gap_us\":{},\"run\":{}}}",
                        event.name(),
                        s.gap_us,
                        rep.json()
                    );
                    std::fs::write(
                        out.join("hgrm")
                            .join(format!("{}-{name}-{label}-{subset}.hgrm", event.name())),
                        rep.hgrm(),
                    )
                    .unwrap();
                }
            }
            if let Some(Ok(Some(s))) = &ev.outcome {
                let _ = writeln!(
                    r.jsonl,
                    "{{\"server\":\"{name}\",\"scenario\":\"snapshot\",\"snapshot_bytes\":{},\"messages\":{},\"seconds\":{:.3},\"first_byte_s\":{}}}",
                    s.bytes,
                    s.messages,
                    (s.ended - s.started).as_secs_f64(),
                    s.first_byte
                        .map_or("null".into(), |f| format!("{:.3}", (f - s.started).as_secs_f64()))
                );
            }
            let _ = writeln!(
                r.jsonl,
                "{{\"server\":\"{name}\",\"scenario\":\"{}\",\"db_before\":{},\"db_in_use_before\":{},\"db_after\":{},\"db_in_use_after\":{},\"event_us\":{}}}",
                event.name(),
                before.size,
                before.in_use,
                after.size,
                after.in_use,
                ev.span.map_or("null".into(), |(a, b)| (b - a).to_string())
            );
            std::fs::write(
                out.join(format!("timeline-{}-{name}.csv", event.name())),
                timeline(&ev),
            )
            .unwrap();
            r.windows.push((event, base, ev, before, after));
        }
        Ok(())
    })();
    if let Err(e) = res {
        log(&format!("failed: {e}"));
        r.failed = Some(e);
    }
    r
}

fn report(
    name: &str,
    event: Event,
    (label, subset, clients): (&str, &str, usize),
    s: &Stats,
    w: &Window,
) -> Report {
    Report {
        scenario: format!("put c{clients} {} {label} {subset}", event.name()),
        label: name.to_string(),
        clients,
        requests: s.puts,
        errors: if subset == "whole" {
            w.errors.clone()
        } else {
            BTreeMap::new()
        },
        elapsed: Duration::from_secs_f64(s.puts as f64 / s.per_s.max(1e-9)),
        histogram: s.histogram.clone(),
        client_cpu_us: 0.0,
        server_cpu_us: if subset == "whole" {
            w.server_cpu_us
        } else {
            None
        },
        server_rss_peak_kb: None,
        deliveries: 0,
    }
}

fn block_on<T: 'static>(f: impl std::future::Future<Output = T> + 'static) -> T {
    keel::runtime::block_on(f)
}

async fn conns(addr: SocketAddr) -> Result<Vec<Conn>, String> {
    let mut v = Vec::new();
    for _ in 0..CONNS {
        v.push(grpc::connect(addr).await.map_err(|e| e.to_string())?);
    }
    Ok(v)
}

fn fill_key(i: u64) -> Bytes {
    Bytes::from(format!("{i:08}"))
}

/// Runs `op(i)` for every i below `n` on `clients` tasks over `conns`; the first error.
async fn for_each<F, Fut>(conns: &[Conn], clients: usize, n: u64, op: F) -> Result<(), String>
where
    F: Fn(Conn, u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    let next = Rc::new(Cell::new(0u64));
    let failed: Rc<RefCell<Option<String>>> = Rc::default();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (conn, next, failed, op) = (
            conns[c % conns.len()].clone(),
            next.clone(),
            failed.clone(),
            op.clone(),
        );
        tasks.push(glommio::spawn_local(async move {
            while failed.borrow().is_none() {
                let i = next.get();
                if i >= n {
                    break;
                }
                next.set(i + 1);
                if let Err(e) = op(conn.clone(), i).await {
                    *failed.borrow_mut() = Some(e.to_string());
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let e = failed.borrow_mut().take();
    match e {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn fill(addr: SocketAddr, s: Settings) -> Result<(), String> {
    let conns = conns(addr).await?;
    let value = Bytes::from(vec![b'f'; s.val_size]);
    for_each(&conns, 64, s.keys, move |conn, i| {
        let req = pb::PutRequest {
            key: fill_key(i),
            value: value.clone(),
            ..Default::default()
        };
        async move {
            grpc::unary::<_, pb::PutResponse>(&conn, "/etcdserverpb.KV/Put", &req).await?;
            Ok(())
        }
    })
    .await
    .map_err(|e| format!("fill: {e}"))
}

/// Deletes keys 5i+1 … 5i+4 for every i (a DeleteRange each), then compacts at the
/// current revision and waits for it (physical).
async fn delete_most(addr: SocketAddr, s: Settings) -> Result<(), String> {
    let conns = conns(addr).await?;
    for_each(&conns, 64, s.keys.div_ceil(5), |conn, i| {
        let req = pb::DeleteRangeRequest {
            key: fill_key(5 * i + 1),
            range_end: fill_key(5 * i + 5),
            ..Default::default()
        };
        async move {
            grpc::unary::<_, pb::DeleteRangeResponse>(&conn, "/etcdserverpb.KV/DeleteRange", &req)
                .await?;
            Ok(())
        }
    })
    .await
    .map_err(|e| format!("delete: {e}"))?;
    let r: pb::RangeResponse = grpc::unary(
        &conns[0],
        "/etcdserverpb.KV/Range",
        &pb::RangeRequest {
            key: fill_key(0),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("range: {e}"))?;
    let revision = r.header.map_or(0, |h| h.revision);
    let _: pb::CompactionResponse = grpc::unary(
        &conns[0],
        "/etcdserverpb.KV/Compact",
        &pb::CompactionRequest {
            revision,
            physical: true,
        },
    )
    .await
    .map_err(|e| format!("compact: {e}"))?;
    Ok(())
}

async fn status(addr: SocketAddr) -> Result<Db, String> {
    let conn = grpc::connect(addr).await.map_err(|e| e.to_string())?;
    let r: pb::StatusResponse = grpc::unary(
        &conn,
        "/etcdserverpb.Maintenance/Status",
        &pb::StatusRequest {},
    )
    .await
    .map_err(|e| format!("status: {e}"))?;
    Ok(Db {
        size: r.db_size,
        in_use: r.db_size_in_use,
    })
}

/// A window of put load; with an event, the event is called half-way through.
fn window(addr: SocketAddr, pid: u32, s: Settings, event: Option<Event>) -> Window {
    let cpu0 = load::process_cpu_us(pid);
    let mut w = block_on(async move {
        let conns = match conns(addr).await {
            Ok(c) => c,
            Err(e) => {
                return Window {
                    samples: Vec::new(),
                    errors: BTreeMap::from([(e, 1)]),
                    elapsed: Duration::ZERO,
                    span: None,
                    outcome: None,
                    server_cpu_us: None,
                }
            }
        };
        let maint = grpc::connect(addr).await.ok();
        // The load runs unmeasured for the warm-up first.
        let warmup = (s.seconds / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let start = Instant::now() + warmup;
        let stop = Rc::new(Cell::new(false));
        let samples: Rc<RefCell<Vec<Sample>>> = Rc::new(RefCell::new(Vec::with_capacity(1 << 20)));
        let errors: Rc<RefCell<BTreeMap<String, u64>>> = Rc::default();
        let next = Rc::new(Cell::new(0u64));
        let value = Bytes::from(vec![b'v'; LOAD_VALUE]);
        let mut tasks = Vec::new();
        for c in 0..s.clients {
            let (conn, stop, samples, errors, next, value) = (
                conns[c % conns.len()].clone(),
                stop.clone(),
                samples.clone(),
                errors.clone(),
                next.clone(),
                value.clone(),
            );
            tasks.push(glommio::spawn_local(async move {
                let mut failures = 0;
                while !stop.get() {
                    let i = next.get();
                    next.set(i + 1);
                    let req = pb::PutRequest {
                        key: load_key(i),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let sent = Instant::now();
                    let res =
                        grpc::unary::<_, pb::PutResponse>(&conn, "/etcdserverpb.KV/Put", &req)
                            .await;
                    match res {
                        Ok(_) if sent < start => failures = 0,
                        Ok(_) => {
                            failures = 0;
                            samples.borrow_mut().push(Sample {
                                sent_us: (sent - start).as_micros() as u64,
                                took_us: sent.elapsed().as_micros() as u64,
                            });
                        }
                        Err(e) => {
                            *errors.borrow_mut().entry(e.to_string()).or_default() += 1;
                            failures += 1;
                            if failures >= 100 {
                                break;
                            }
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }));
        }
        let mut span = None;
        let mut outcome = None;
        glommio::timer::sleep(warmup).await;
        match event {
            None => glommio::timer::sleep(s.seconds).await,
            Some(event) => {
                glommio::timer::sleep(s.seconds / 2).await;
                let a = start.elapsed();
                let (res, b) = match (event, &maint) {
                    (_, None) => (
                        Err("no connection for the call".to_string()),
                        start.elapsed(),
                    ),
                    (Event::Defrag, Some(conn)) => {
                        let r = grpc::unary::<_, pb::DefragmentResponse>(
                            conn,
                            "/etcdserverpb.Maintenance/Defragment",
                            &pb::DefragmentRequest {},
                        )
                        .await;
                        (r.map(|_| None).map_err(|e| e.to_string()), start.elapsed())
                    }
                    (Event::Snapshot, Some(_)) => {
                        let done: Arc<Mutex<Option<Result<SnapStats, String>>>> = Arc::default();
                        let d = done.clone();
                        std::thread::spawn(move || {
                            let r = snapshot_stream(addr);
                            *d.lock().unwrap() = Some(r);
                        });
                        let r = loop {
                            if let Some(r) = done.lock().unwrap().take() {
                                break r;
                            }
                            glommio::timer::sleep(Duration::from_millis(2)).await;
                        };
                        // The client's own clock: the connect to the last byte.
                        let b = match &r {
                            Ok(st) => st.ended - start,
                            Err(_) => start.elapsed(),
                        };
                        (r.map(Some), b)
                    }
                };
                span = Some((a.as_micros() as u64, b.as_micros() as u64));
                outcome = Some(res);
                let tail = (s.seconds / 2).min(Duration::from_secs(1));
                let until = s.seconds.max(b + tail);
                let now = start.elapsed();
                if until > now {
                    glommio::timer::sleep(until - now).await;
                }
            }
        }
        let elapsed = start.elapsed();
        stop.set(true);
        for t in tasks {
            t.await;
        }
        let samples = std::mem::take(&mut *samples.borrow_mut());
        let errors = errors.borrow().clone();
        Window {
            samples,
            errors,
            elapsed,
            span,
            outcome,
            server_cpu_us: None,
        }
    });
    if let (Some(a), Some(b)) = (cpu0, load::process_cpu_us(pid)) {
        w.server_cpu_us = Some((b - a) / (w.samples.len().max(1)) as f64);
    }
    w
}

fn load_key(i: u64) -> Bytes {
    // SplitMix64 over the request number: random keys, no RNG state to share.
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Bytes::from(format!("load/{:05}", (x ^ (x >> 31)) % LOAD_KEYS))
}

/// 100-ms buckets of the window by completion time.
fn timeline(w: &Window) -> String {
    const BUCKET_US: u64 = 100_000;
    let mut buckets: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    for s in &w.samples {
        let _ = buckets
            .entry(s.done_us() / BUCKET_US)
            .or_insert_with(util::histogram)
            .record(s.took_us.max(1));
    }
    let last = buckets.keys().last().copied().unwrap_or(0);
    let mut t = String::from("t_ms,puts,p50_us,p99_us,max_us,event\n");
    for b in 0..=last {
        let (a0, a1) = (b * BUCKET_US, (b + 1) * BUCKET_US);
        let ev = w.span.is_some_and(|(x, y)| x < a1 && y > a0);
        match buckets.get(&b) {
            Some(h) => {
                let _ = writeln!(
                    t,
                    "{},{},{},{},{},{}",
                    b * 100,
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.max(),
                    u8::from(ev)
                );
            }
            None => {
                let _ = writeln!(t, "{},0,,,,{}", b * 100, u8::from(ev));
            }
        }
    }
    t
}

// ---- Maintenance.Snapshot over a minimal HTTP/2 client ----------------------------------

const STREAM_WINDOW: u32 = 4 << 20;
const CONN_WINDOW: u32 = 16 << 20;
/// Window credit is returned once this much is consumed.
const WINDOW_UPDATE_EVERY: u32 = 1 << 20;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len();
    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK: an integer with a 7-bit prefix (no Huffman bit).
fn hpack_int(out: &mut Vec<u8>, mut v: usize) {
    if v < 127 {
        out.push(v as u8);
        return;
    }
    out.push(127);
    v -= 127;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK: a literal header field without indexing, new name, no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    hpack_int(out, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Streams Maintenance.Snapshot from `addr` (plaintext), counting the blobs' bytes and
/// dropping them. Blocking: runs on a thread of its own. The call's status in the trailers
/// is not decoded (that would need HPACK's Huffman and dynamic table): a call that
/// delivered no message, or whose last file chunk did not say 0 bytes remain, failed.
fn snapshot_stream(addr: SocketAddr) -> Result<SnapStats, String> {
    let started = Instant::now();
    let io = |e: std::io::Error| format!("snapshot: {e}");
    let sock = std::net::TcpStream::connect(addr).map_err(io)?;
    sock.set_nodelay(true).ok();
    let mut w = sock.try_clone().map_err(io)?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, sock);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = Vec::new();
    settings.extend_from_slice(&4u16.to_be_bytes()); // SETTINGS_INITIAL_WINDOW_SIZE
    settings.extend_from_slice(&STREAM_WINDOW.to_be_bytes());
    frame(&mut out, 0x4, 0, 0, &settings);
    frame(&mut out, 0x8, 0, 0, &(CONN_WINDOW - 65_535).to_be_bytes());
    let mut block = Vec::new();
    let authority = addr.to_string();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.Maintenance/Snapshot"),
        (":authority", authority.as_str()),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut block, n, v);
    }
    frame(&mut out, 0x1, 0x4, 1, &block); // HEADERS, END_HEADERS
                                          // The empty SnapshotRequest, gRPC-framed, and END_STREAM: the request is complete.
    frame(&mut out, 0x0, 0x1, 1, &[0u8; 5]);
    w.write_all(&out).map_err(io)?;
    let mut buf = BytesMut::new();
    let mut unacked = 0u32;
    let mut header = [0u8; 9];
    let mut payload = Vec::new();
    let mut first_byte = None;
    let (mut bytes, mut messages, mut last_len, mut last_remaining) = (0u64, 0u64, 0usize, None);
    let mut data_remaining_zero = false;
    loop {
        r.read_exact(&mut header).map_err(io)?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        payload.resize(len, 0);
        r.read_exact(&mut payload).map_err(io)?;
        match kind {
            0x0 if stream == 1 => {
                first_byte.get_or_insert_with(Instant::now);
                let mut data = &payload[..];
                if flags & 0x8 != 0 && !data.is_empty() {
                    let pad = data[0] as usize;
                    data = &data[1..data.len().saturating_sub(pad)];
                }
                buf.extend_from_slice(data);
                while buf.len() >= 5 {
                    let n = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                    if buf.len() < 5 + n {
                        break;
                    }
                    buf.advance(5);
                    let m = pb::SnapshotResponse::decode(buf.split_to(n).freeze())
                        .map_err(|e| format!("snapshot: decode: {e}"))?;
                    messages += 1;
                    if last_remaining == Some(0) {
                        data_remaining_zero = true;
                    }
                    bytes += m.blob.len() as u64;
                    last_len = m.blob.len();
                    last_remaining = Some(m.remaining_bytes);
                }
                unacked += len as u32;
                if flags & 0x1 != 0 {
                    break;
                }
                if unacked >= WINDOW_UPDATE_EVERY {
                    let mut o = Vec::new();
                    frame(&mut o, 0x8, 0, 0, &unacked.to_be_bytes());
                    frame(&mut o, 0x8, 0, 1, &unacked.to_be_bytes());
                    w.write_all(&o).map_err(io)?;
                    unacked = 0;
                }
            }
            0x1 if stream == 1 && flags & 0x1 != 0 => break, // trailers
            0x3 if stream == 1 => return Err("snapshot: the server reset the stream".into()),
            0x4 if flags & 0x1 == 0 => {
                let mut o = Vec::new();
                frame(&mut o, 0x4, 0x1, 0, &[]);
                w.write_all(&o).map_err(io)?;
            }
            0x6 if flags & 0x1 == 0 => {
                let mut o = Vec::new();
                frame(&mut o, 0x6, 0x1, 0, &payload);
                w.write_all(&o).map_err(io)?;
            }
            0x7 => return Err("snapshot: GOAWAY before the end".into()),
            _ => {}
        }
    }
    let ended = Instant::now();
    if messages == 0 {
        return Err("snapshot: no message (the call failed: see the server's log)".into());
    }
    if !data_remaining_zero || last_remaining != Some(0) {
        return Err(format!(
            "snapshot: ended early ({bytes} bytes in {messages} messages, last remaining {last_remaining:?})"
        ));
    }
    Ok(SnapStats {
        bytes: bytes - last_len as u64,
        messages,
        started,
        first_byte,
        ended,
    })
}

// ---- The tables -----------------------------------------------------------------------

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn mib(b: i64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn lat(s: &Stats) -> String {
    let h = &s.histogram;
    format!(
        "{} / {} / {} / {}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}

/// The last line of the server's log that mentions `what` (e.g. etcd's and Keel's own
/// account of a defragmentation).
fn log_line(out: &Path, server: &str, what: &str) -> Option<String> {
    let text = std::fs::read_to_string(out.join(format!("{server}.log"))).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(what))
        .map(|l| l.chars().take(400).collect())
}

fn render(
    results: &[SystemResult],
    s: Settings,
    events: &[Event],
    out: &Path,
    load: (&str, &str),
) -> String {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Keel (git {rev}) and etcd 3.4, one after the other in one run, each filled with {} keys of {} bytes; put load: {} closed-loop clients over {CONNS} connections, {LOAD_VALUE}-byte values on a {LOAD_KEYS}-key space; windows of {:.1} s (the event window runs on until 1 s after the event). Load average (1/5/15 min) at the start: {}; at the end: {}.\n",
        s.keys,
        s.val_size,
        s.clients,
        s.seconds.as_secs_f64(),
        load.0,
        load.1
    );
    t.push_str("| server | fill | db after fill (in use) | after delete 4/5 + compact (in use) |\n| --- | --- | --- | --- |\n");
    for r in results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} |",
            r.name,
            r.fill.map_or("n/a".into(), |(d, _)| format!(
                "{:.1} s ({:.0} keys/s)",
                d.as_secs_f64(),
                s.keys as f64 / d.as_secs_f64()
            )),
            r.fill.map_or("n/a".into(), |(_, db)| format!(
                "{} ({})",
                mib(db.size),
                mib(db.in_use)
            )),
            r.compacted.map_or("-".into(), |db| format!(
                "{} ({})",
                mib(db.size),
                mib(db.in_use)
            )),
        );
    }
    for r in results {
        if let Some(e) = &r.failed {
            let _ = writeln!(t, "\n**{} failed**: {e}", r.name);
        }
    }
    for &event in events {
        let _ = writeln!(t, "\n### {}\n", event.name());
        match event {
            Event::Defrag => t.push_str(
                "| server | db before → after (in use before → after) | Defragment took | longest time no put completed, during |\n| --- | --- | --- | --- |\n",
            ),
            Event::Snapshot => t.push_str(
                "| server | db size (in use) | snapshot bytes | took | MB/s | first byte after | longest time no put completed, during |\n| --- | --- | --- | --- | --- | --- | --- |\n",
            ),
        }
        for r in results {
            let Some((_, _, ev, before, after)) = r.windows.iter().find(|w| w.0 == event) else {
                continue;
            };
            let took = ev.span.map_or(f64::NAN, |(a, b)| (b - a) as f64 / 1e6);
            let gap = subsets(ev)
                .into_iter()
                .find(|(n, _)| *n == "during")
                .map_or("-".into(), |(_, s)| format!("{} ms", ms(s.gap_us)));
            let failed = match &ev.outcome {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            };
            match event {
                Event::Defrag => {
                    let _ = writeln!(
                        t,
                        "| {} | {} → {} ({} → {}) | {} | {gap} |",
                        r.name,
                        mib(before.size),
                        mib(after.size),
                        mib(before.in_use),
                        mib(after.in_use),
                        failed.unwrap_or(format!("{took:.2} s")),
                    );
                }
                Event::Snapshot => {
                    let (bytes, rate, first) = match &ev.outcome {
                        Some(Ok(Some(st))) => (
                            format!("{:.0} MiB", st.bytes as f64 / (1 << 20) as f64),
                            format!(
                                "{:.0}",
                                st.bytes as f64 / 1e6 / (st.ended - st.started).as_secs_f64()
                            ),
                            st.first_byte.map_or("-".into(), |f| {
                                format!("{} ms", ms((f - st.started).as_micros() as u64))
                            }),
                        ),
                        _ => ("n/a".into(), "n/a".into(), "-".into()),
                    };
                    let _ = writeln!(
                        t,
                        "| {} | {} ({}) | {bytes} | {} | {rate} | {first} | {gap} |",
                        r.name,
                        mib(before.size),
                        mib(before.in_use),
                        failed.unwrap_or(format!("{took:.2} s")),
                    );
                }
            }
        }
        t.push_str(
            "\nPut latency, ms (p50 / p99 / p99.9 / max). *baseline*: the load alone; *whole*: the event window; *during*: the puts in flight while the event ran; *outside*: the rest of the event window.\n\n\
             | server | window | puts | puts/s | p50 / p99 / p99.9 / max | longest time no put completed | errors |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in results {
            let Some((_, base, ev, _, _)) = r.windows.iter().find(|w| w.0 == event) else {
                continue;
            };
            let mut rows = vec![("baseline", subsets(base).remove(0).1, base)];
            rows.extend(subsets(ev).into_iter().map(|(n, s)| (n, s, ev)));
            for (n, st, w) in rows {
                let errors: u64 = if n == "whole" || n == "baseline" {
                    w.errors.values().sum()
                } else {
                    0
                };
                let gap = if n == "outside" {
                    "-".to_string()
                } else {
                    format!("{} ms", ms(st.gap_us))
                };
                let _ = writeln!(
                    t,
                    "| {} | {n} | {} | {:.0} | {} | {gap} | {} |",
                    r.name,
                    st.puts,
                    st.per_s,
                    lat(&st),
                    errors
                );
            }
        }
        t.push('\n');
        for r in results {
            let Some((_, base, ev, _, _)) = r.windows.iter().find(|w| w.0 == event) else {
                continue;
            };
            let b = subsets(base).remove(0).1.histogram.value_at_quantile(0.99);
            let Some((_, d)) = subsets(ev).into_iter().find(|(n, _)| *n == "during") else {
                continue;
            };
            let p = d.histogram.value_at_quantile(0.99);
            let _ = writeln!(
                t,
                "- {}: put p99 during {} {} ms against {} ms in the baseline: {:.2}×; max during {} ms.",
                r.name,
                event.name(),
                ms(p),
                ms(b),
                p as f64 / b.max(1) as f64,
                ms(d.histogram.max())
            );
        }
        if event == Event::Snapshot {
            let rate = |name: &str| {
                results.iter().find(|r| r.name == name).and_then(|r| {
                    r.windows
                        .iter()
                        .find(|w| w.0 == event)
                        .and_then(|w| match &w.2.outcome {
                            Some(Ok(Some(st))) => {
                                Some(st.bytes as f64 / 1e6 / (st.ended - st.started).as_secs_f64())
                            }
                            _ => None,
                        })
                })
            };
            if let (Some(k), Some(e)) = (rate("keel"), rate("etcd")) {
                let _ = writeln!(
                    t,
                    "- snapshot throughput Keel / etcd: {:.2}× ({k:.0} against {e:.0} MB/s).",
                    k / e
                );
            }
        }
        if event == Event::Defrag {
            for (server, what) in [
                ("keel", "finished defragmenting"),
                ("etcd", "finished defragmenting"),
            ] {
                if let Some(l) = log_line(out, server, what) {
                    let _ = writeln!(t, "- {server}'s log: `{}`", l.replace('`', "'"));
                }
            }
        }
    }
    t
}
