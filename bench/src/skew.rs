//! `keel-bench skew`: shards that follow the data (issue 23). A server that boots empty
//! gets every key under one part of the key space (16-byte decimal keys, all below the
//! split an empty two-core Keel boots with), then serves Range c64 over those keys.
//!
//! ```text
//! keel-bench skew [--keel target/release/keel] [--etcd /usr/bin/etcd] [--keys 200000]
//!     [--seconds 5] [--reps 2] [--quick] [--out bench/results/NAME]
//! ```
//! Rows, each on a fresh data dir but the third:
//! - Keel with `--shard-rebalance=false`: the keys stay on the shard they landed on;
//! - Keel as shipped: the split key moves online while the fill runs (the row waits until
//!   the moves have settled and reports them);
//! - the same Keel restarted: split keys chosen at boot from the keys (the uniform case);
//! - etcd 3.4 (one index, nothing to move) for reference.
//!
//! Each row: the fill's rate (put c64, sequential keys), then serializable and
//! linearizable Range c64 of random keys, and serializable Range c64 of 100 keys from a
//! random one (the index walk is most of such a read's cost), `--reps` times each (the median run's
//! throughput and percentiles from hdrhistogram), with the server's CPU per request.
//! Writes `OUT/table.md` and `OUT/runs.jsonl`.

use crate::compare::{start, Server};
use crate::load::{self, LoadOptions, Report, Scenario};
use crate::util::{self, Flags};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A counter from the server's /metrics (0 when absent: etcd).
fn counter(server: &Server, name: &str) -> f64 {
    let mut text = String::new();
    if let Ok(mut c) = std::net::TcpStream::connect(server.addr) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let head = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
        if c.write_all(head.as_bytes()).is_ok() {
            let _ = c.read_to_string(&mut text);
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until no move has happened for a second (at most 60 s); returns the steps and
/// keys moved so far.
fn settle(server: &Server) -> (f64, f64) {
    let started = Instant::now();
    let mut last = counter(server, "keel_shard_moves_total");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = counter(server, "keel_shard_moves_total");
        if now == last || started.elapsed() > Duration::from_secs(60) {
            let keys = counter(server, "keel_shard_moved_keys_total");
            return (now, keys);
        }
        last = now;
    }
}

fn median(mut runs: Vec<Report>) -> Report {
    runs.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
    runs.swap_remove(runs.len() / 2)
}

fn cell(r: &Report) -> String {
    let h = &r.histogram;
    format!(
        "{:.0} | {} / {} / {} | {}",
        r.throughput(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}"))
    )
}

/// Keys each read of the scan column covers.
const SCAN_KEYS: u64 = 100;

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let keys = flags.u64("keys", if quick { 20_000 } else { 200_000 });
    let seconds = flags.u64("seconds", if quick { 1 } else { 5 });
    let reps = flags.u64("reps", if quick { 1 } else { 2 }).max(1);
    let out = PathBuf::from(flags.str("out", "target/bench-skew"));
    std::fs::create_dir_all(&out).expect("create --out");
    util::print_run_header("skew");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| server | fill put c64 req/s | moves (keys) | range c64 s req/s | p50 / p99 / p99.9 µs | server CPU µs/req | range c64 l req/s | p50 / p99 / p99.9 µs | server CPU µs/req | range {SCAN_KEYS} keys c64 s req/s | p50 / p99 / p99.9 µs | server CPU µs/req |"
    );
    let _ = writeln!(
        table,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut jsonl = String::new();
    let rows: [(&str, &'static str, &str, &[&str]); 3] = [
        (
            "keel, no moves",
            "keel-fixed",
            keel.as_str(),
            &["--shard-rebalance=false"],
        ),
        ("keel, moved online", "keel", keel.as_str(), &[]),
        ("etcd 3.4", "etcd", etcd.as_str(), &[]),
    ];
    for (label, name, binary, extra) in rows {
        let server = start(name, binary, &out, extra, false);
        let opts = |fill: bool, server: &Server, range_keys: u64| LoadOptions {
            range_keys,
            ..LoadOptions::c64(server.addr, server.child.id(), 16, keys, fill, seconds)
        };
        let fill = load::run(Scenario::Put, &opts(true, &server, 1), name);
        let (moves, moved) = settle(&server);
        if name == "keel" && moves == 0.0 {
            eprintln!(
                "skew: Keel moved no keys: see {}",
                out.join("keel.log").display()
            );
            std::process::exit(1);
        }
        let moves_cell = if name == "etcd" {
            "-".to_string()
        } else {
            format!("{moves} steps, {moved} keys")
        };
        let mut measure = |label: &str, server: &Server, fill_cell: String, moves_cell: &str| {
            let mut row = format!("| {label} | {fill_cell} | {moves_cell} |");
            for (serializable, range_keys) in [(true, 1), (false, 1), (true, SCAN_KEYS)] {
                let runs: Vec<Report> = (0..reps)
                    .map(|_| {
                        let o = opts(false, server, range_keys);
                        load::run(Scenario::Range { serializable }, &o, name)
                    })
                    .collect();
                for r in &runs {
                    let _ = writeln!(
                        jsonl,
                        "{{\"row\":\"{label}\",\"serializable\":{serializable},\"range_keys\":{range_keys},\"rps\":{:.1},\"p99_us\":{},\"cpu_us\":{}}}",
                        r.throughput(),
                        r.histogram.value_at_quantile(0.99),
                        r.server_cpu_us.unwrap_or(0.0)
                    );
                }
                let _ = write!(row, " {} |", cell(&median(runs)));
            }
            let _ = writeln!(table, "{row}");
            println!("{row}");
        };
        let fill_cell = format!("{:.0}", fill.throughput());
        measure(label, &server, fill_cell, &moves_cell);
        if name == "keel" {
            // The uniform case: the same keys, split at boot.
            let server = server.restart(Path::new(&out));
            measure("keel, split at boot (restarted)", &server, "-".into(), "-");
        }
    }
    std::fs::write(out.join("table.md"), &table).expect("write table.md");
    std::fs::write(out.join("runs.jsonl"), &jsonl).expect("write runs.jsonl");
    println!("{table}");
}
