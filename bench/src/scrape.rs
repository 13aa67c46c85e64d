//! `keel-bench scrape`: what a Prometheus scrape of `/metrics` every 100 ms costs a
//! server under write load, Keel and etcd 3.4 in one run.
//!
//! ```text
//! keel-bench scrape [--keel target/release/keel] [--etcd /usr/bin/etcd] [--seconds 5]
//!     [--rounds 3] [--clients 64] [--interval-ms 100] [--path /metrics] [--quick]
//!     [--out bench/results/NAME]
//! ```
//! Each server (fresh data dir) runs `put c64` (compare's: 64 closed-loop clients on 4
//! connections, 8-byte keys of a 10,000-key space, 256-byte values) for `--seconds`,
//! alternately without and with a scraper thread that GETs `/metrics` on the client URL
//! every `--interval-ms` (a new connection each time, as Prometheus keeps one but a
//! second one per scrape is the harder case), `--rounds` times each. Reported: the median
//! round's put throughput and latency percentiles in both modes and the throughput lost,
//! the server's CPU per put, and the scrapes' latency and size.
//!
//! Writes `OUT/table.md` and `OUT/runs.jsonl`.

use crate::compare::start;
use crate::load::{self, LoadOptions, Report, Scenario};
use crate::util::{self, Flags};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Scrapes {
    count: u64,
    failed: u64,
    bytes: u64,
    latency: hdrhistogram::Histogram<u64>,
}

/// GETs `/metrics` every `interval` until `stop`.
fn scraper(addr: SocketAddr, path: &str, interval: Duration, stop: Arc<AtomicBool>) -> Scrapes {
    let mut s = Scrapes {
        count: 0,
        failed: 0,
        bytes: 0,
        latency: util::histogram(),
    };
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if path == "none" {
            // The A/A control: no requests at all, so the loss column shows the noise.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let started = Instant::now();
        match scrape_once(addr, path) {
            Ok(n) => {
                s.count += 1;
                s.bytes = n as u64;
                let _ = s.latency.record(started.elapsed().as_micros() as u64);
            }
            Err(_) => s.failed += 1,
        }
        next += interval;
        while let Some(wait) = next.checked_duration_since(Instant::now()) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
    }
    s
}

fn scrape_once(addr: SocketAddr, path: &str) -> std::io::Result<usize> {
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    c.write_all(head.as_bytes())?;
    let mut body = Vec::with_capacity(256 * 1024);
    c.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 ") {
        return Err(std::io::Error::other("not an HTTP/1.1 response"));
    }
    Ok(body.len())
}

struct Round {
    plain: Report,
    scraped: Report,
    scrapes: Scrapes,
}

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let seconds = flags.u64("seconds", if quick { 1 } else { 5 });
    let rounds = flags.u64("rounds", if quick { 1 } else { 3 }).max(1) as usize;
    let clients = flags.u64("clients", 64) as usize;
    let interval = Duration::from_millis(flags.u64("interval-ms", 100).max(1));
    // `--path /health`: the same cadence on a cheap path (what the connections alone
    // cost); `--path none`: no scrapes (an A/A control: the loss column is the noise).
    let path = flags.str("path", "/metrics");
    let out = PathBuf::from(flags.str("out", "target/bench-scrape"));
    std::fs::create_dir_all(&out).expect("create --out");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| server | put c{clients} req/s (no scrape) | req/s (scrape every {} ms) | loss | p50 / p99 / p99.9 µs (no scrape) | p50 / p99 / p99.9 µs (scrape) | server CPU µs/put (no scrape / scrape) | scrape p50 / p99 µs | scrape bytes |",
        interval.as_millis()
    );
    let _ = writeln!(
        table,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut jsonl = String::new();
    for (name, binary) in [("keel", keel.as_str()), ("etcd", etcd.as_str())] {
        let server = start(name, binary, &out, &[], false);
        let opts = LoadOptions {
            clients,
            ..LoadOptions::c64(server.addr, server.child.id(), 8, 10_000, false, seconds)
        };
        // Warm-up: a first short run fills the key space and the caches.
        let mut warm = opts.clone();
        warm.duration = Some(Duration::from_secs(1));
        let _ = load::run(Scenario::Put, &warm, name);
        let mut results = Vec::new();
        for _ in 0..rounds {
            let plain = load::run(Scenario::Put, &opts, name);
            let stop = Arc::new(AtomicBool::new(false));
            let (addr, flag, path) = (server.addr, stop.clone(), path.clone());
            let thread = std::thread::spawn(move || scraper(addr, &path, interval, flag));
            let scraped = load::run(Scenario::Put, &opts, name);
            stop.store(true, Ordering::Relaxed);
            let scrapes = thread.join().expect("scraper");
            results.push(Round {
                plain,
                scraped,
                scrapes,
            });
        }
        // The median round by the scraped run's throughput.
        results.sort_by(|a, b| a.scraped.throughput().total_cmp(&b.scraped.throughput()));
        let mut plains: Vec<f64> = results.iter().map(|r| r.plain.throughput()).collect();
        plains.sort_by(f64::total_cmp);
        let mid = &results[results.len() / 2];
        let plain_tp = plains[plains.len() / 2];
        let loss = 100.0 * (1.0 - mid.scraped.throughput() / plain_tp);
        let pct = |r: &Report| {
            let h = &r.histogram;
            format!(
                "{} / {} / {}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999)
            )
        };
        let cpu = |r: &Report| r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}"));
        let sh = &mid.scrapes.latency;
        let _ = writeln!(
            table,
            "| {name} | {plain_tp:.0} | {:.0} | {loss:.1} % | {} | {} | {} / {} | {} / {} ({} scrapes, {} failed) | {} |",
            mid.scraped.throughput(),
            pct(&mid.plain),
            pct(&mid.scraped),
            cpu(&mid.plain),
            cpu(&mid.scraped),
            sh.value_at_quantile(0.5),
            sh.value_at_quantile(0.99),
            mid.scrapes.count,
            mid.scrapes.failed,
            mid.scrapes.bytes,
        );
        for r in &results {
            let _ = writeln!(
                jsonl,
                "{{\"server\":\"{name}\",\"plain_rps\":{:.1},\"scraped_rps\":{:.1},\"plain_p99_us\":{},\"scraped_p99_us\":{},\"scrapes\":{},\"scrape_failed\":{},\"scrape_p99_us\":{},\"scrape_bytes\":{}}}",
                r.plain.throughput(),
                r.scraped.throughput(),
                r.plain.histogram.value_at_quantile(0.99),
                r.scraped.histogram.value_at_quantile(0.99),
                r.scrapes.count,
                r.scrapes.failed,
                r.scrapes.latency.value_at_quantile(0.99),
                r.scrapes.bytes
            );
        }
        if mid.scrapes.count == 0 && path != "none" {
            eprintln!("scrape: {name}: no scrape succeeded");
            std::process::exit(1);
        }
        drop(server);
    }
    std::fs::write(out.join("table.md"), &table).expect("write table.md");
    std::fs::write(out.join("runs.jsonl"), &jsonl).expect("write runs.jsonl");
    println!("{table}");
}
