//! `keel-bench growth`: how each server's cost grows with its data (issue 23), Keel and
//! etcd 3.4 in one run.
//!
//! ```text
//! keel-bench growth [--keel target/release/keel] [--etcd /usr/bin/etcd]
//!     [--sizes 10000,100000,1000000,10000000] [--seconds 5] [--only keel,etcd] [--quick]
//!     [--out bench/results/NAME]
//! ```
//! Each server starts empty (`--quota-backend-bytes` 16 GiB, so that etcd's 2 GiB default
//! does not stop the fill). For each size in turn: put keys `0..size` (16-byte keys,
//! 256-byte values, 64 clients, in key order: each size rewrites the smaller one's keys,
//! 11 % more puts than keys in all), then put c64 and Range c64 (linearizable point reads)
//! of random keys for `--seconds` each, the RSS and the db file's size; then a restart
//! (SIGTERM, start on the same data) timed from spawn to ready, and the RSS after it.
//! Writes `OUT/table.md` and `OUT/runs.jsonl`.

use crate::compare::{start, Server};
use crate::load::{self, process_rss_kb, LoadOptions, Report, Scenario};
use crate::util::{self, Flags};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn load_options(server: &Server, size: u64, fill: bool, seconds: u64) -> LoadOptions {
    LoadOptions::c64(server.addr, server.child.id(), 16, size, fill, seconds)
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn lat(r: &Report) -> String {
    format!(
        "{:.0} / {:.2}",
        r.throughput(),
        r.histogram.value_at_quantile(0.99) as f64 / 1000.0
    )
}

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let default_sizes = if quick {
        "1000,10000"
    } else {
        "10000,100000,1000000,10000000"
    };
    let sizes: Vec<u64> = flags
        .str("sizes", default_sizes)
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds = flags.u64("seconds", if quick { 1 } else { 5 });
    let only = flags.str("only", "keel,etcd");
    let out = PathBuf::from(flags.str("out", "target/bench-growth"));
    std::fs::create_dir_all(&out).expect("create --out");
    util::print_run_header("growth");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| server | keys | fill put/s | put c64 req/s / p99 ms | range c64 req/s / p99 ms | RSS MiB | db MiB | restart to ready s | RSS after restart MiB |"
    );
    let _ = writeln!(
        table,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut jsonl = String::new();
    for (name, binary) in [("keel", keel.as_str()), ("etcd", etcd.as_str())] {
        if !only.split(',').any(|o| o == name) {
            continue;
        }
        let mut server = start(
            name,
            binary,
            &out,
            &["--quota-backend-bytes", "17179869184"],
            false,
        );
        for &size in &sizes {
            let fill = load::run(Scenario::Put, &load_options(&server, size, true, 0), name);
            let put = load::run(
                Scenario::Put,
                &load_options(&server, size, false, seconds),
                name,
            );
            let range = load::run(
                Scenario::Range {
                    serializable: false,
                },
                &load_options(&server, size, false, seconds),
                name,
            );
            let rss = process_rss_kb(server.child.id());
            let db = std::fs::metadata(out.join("data").join(name).join("member/snap/db"))
                .map(|m| m.len())
                .unwrap_or(0);
            server = server.restart(Path::new(&out));
            let restart = server.ready_after;
            // The RSS once the restarted server has served a little.
            let _ = load::run(
                Scenario::Range {
                    serializable: false,
                },
                &load_options(&server, size, false, 1),
                name,
            );
            let rss_restarted = process_rss_kb(server.child.id());
            let row = format!(
                "| {name} | {size} | {:.0} | {} | {} | {} | {:.0} | {:.2} | {} |",
                fill.throughput(),
                lat(&put),
                lat(&range),
                mib(rss),
                db as f64 / (1 << 20) as f64,
                restart.as_secs_f64(),
                mib(rss_restarted),
            );
            println!("{row}");
            let _ = writeln!(table, "{row}");
            let _ = writeln!(
                jsonl,
                "{{\"server\":\"{name}\",\"keys\":{size},\"fill_rps\":{:.1},\"put_rps\":{:.1},\"put_p99_us\":{},\"range_rps\":{:.1},\"range_p99_us\":{},\"rss_kb\":{},\"db_bytes\":{db},\"restart_s\":{:.3},\"rss_restarted_kb\":{},\"put_cpu_us\":{},\"range_cpu_us\":{}}}",
                fill.throughput(),
                put.throughput(),
                put.histogram.value_at_quantile(0.99),
                range.throughput(),
                range.histogram.value_at_quantile(0.99),
                rss.unwrap_or(0),
                restart.as_secs_f64(),
                rss_restarted.unwrap_or(0),
                put.server_cpu_us.unwrap_or(0.0),
                range.server_cpu_us.unwrap_or(0.0),
            );
            std::fs::write(out.join("table.md"), &table).expect("write table.md");
            std::fs::write(out.join("runs.jsonl"), &jsonl).expect("write runs.jsonl");
        }
        drop(server);
    }
    println!("{table}");
}
