//! `keel-bench big`: big answers and bad readers (issue 23, items 4 and 5), Keel and etcd
//! 3.4 in one run.
//!
//! ```text
//! keel-bench big [--keel target/release/keel] [--etcd /usr/bin/etcd] [--keys 100000]
//!     [--val-size 256] [--reads 5] [--slow-readers 8] [--slow-kib-per-s 1024]
//!     [--seconds 10] [--txn-ops 128] [--watch-revisions 1000000] [--only keel,etcd]
//!     [--quick] [--out bench/results/NAME]
//! ```
//! Each server starts empty and gets `--keys` keys (16-byte keys, `--val-size` values,
//! 64 clients). Then, one server at a time:
//! 1. **whole-store Range**: `--reads` Ranges of every key, one after another, on one
//!    connection (linearizable, the reply's bytes not decoded): latency of each, the
//!    answer's size, and the server's RSS peak above its RSS before them;
//! 2. **slow readers**: `--slow-readers` connections each ask for every key and read
//!    the answer at `--slow-kib-per-s` for `--seconds`, while 16 clients on 4 other
//!    connections read single keys; the point reads' rate and p50/p99/p99.9 beside the
//!    same load alone just before, and the RSS peak;
//! 3. **big txns**: 16 clients for `--seconds`, each txn `--txn-ops` puts of distinct
//!    keys: txn/s, p99, RSS peak;
//! 4. **watch catch-up**: `--watch-revisions` more puts (c64), then one watch over every
//!    key from the first of those revisions: the time until all its events arrived, and
//!    the RSS peak.
//!
//! The RSS peaks (all of it, and its anonymous part: the db's file pages a read maps count
//! in the first, and the kernel can drop them) are sampled every 10 ms from
//! /proc/PID/status. Writes `OUT/table.md`.

use crate::compare::{start, Server};
use crate::grpc::{self, Stream};
use crate::load::{self, LoadOptions, Report, Scenario};
use crate::util::{self, Flags};
use bytes::Bytes;
use keel::pb::etcdserverpb as pb;
use prost::Message;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY_BYTES: usize = 16;

/// (VmRSS, RssAnon) of a process in KiB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Samples a process's RSS until `finish`: the peaks above the RSS at `start`, of all
/// of it and of its anonymous part (file pages of the db mapped by reads count in the
/// first, and the kernel can drop them).
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
    base: (u64, u64),
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let base = rss_kb(pid);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = (0, 0);
            loop {
                let (all, anon) = rss_kb(pid);
                peak = (peak.0.max(all), peak.1.max(anon));
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssPeak {
            stop,
            thread: Some(thread),
            base,
        }
    }

    /// (RSS before MiB, "peak above it / anonymous peak above its own" MiB).
    fn finish(mut self) -> (f64, String) {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.thread.take().unwrap().join().unwrap_or((0, 0));
        let mib = |kb: u64| kb as f64 / 1024.0;
        let all = mib(peak.0.saturating_sub(self.base.0));
        let anon = mib(peak.1.saturating_sub(self.base.1));
        (mib(self.base.0), format!("{all:.0} / {anon:.0}"))
    }
}

fn all_keys(serializable: bool) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        serializable,
        ..Default::default()
    }
}

fn key(n: u64) -> Bytes {
    Bytes::from(format!("{n:0KEY_BYTES$}"))
}

/// `reads` whole-store Ranges: (latencies ms, answer bytes, kvs in the last answer).
fn whole_ranges(addr: SocketAddr, reads: u64) -> Result<(Vec<f64>, usize, usize), String> {
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await.map_err(|e| format!("{e:?}"))?;
        let body = Bytes::from(all_keys(false).encode_to_vec());
        let mut times = Vec::new();
        let mut last = Bytes::new();
        for _ in 0..reads {
            let started = Instant::now();
            last = grpc::unary_raw(&conn, "/etcdserverpb.KV/Range", &[], body.clone())
                .await
                .map_err(|e| format!("{e:?}"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let kvs = pb::RangeResponse::decode(last.clone())
            .map_err(|e| e.to_string())?
            .kvs
            .len();
        Ok((times, last.len(), kvs))
    })
}

/// Slow readers of whole-store answers, on a thread of their own until `stop`: each its
/// own connection, `kib_per_s` each. `started` counts those whose first bytes came.
fn slow_readers(
    addr: SocketAddr,
    readers: usize,
    kib_per_s: u64,
    started: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        keel::runtime::block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..readers {
                let (started, stop) = (started.clone(), stop.clone());
                tasks.push(glommio::spawn_local(async move {
                    let conn = grpc::connect(addr).await.map_err(|e| format!("{e:?}"))?;
                    let mut s = Stream::open(&conn, "/etcdserverpb.KV/Range")
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    s.send(&all_keys(false)).map_err(|e| format!("{e:?}"))?;
                    s.close_send();
                    let began = Instant::now();
                    let mut read = 0u64;
                    let mut first = true;
                    while !stop.load(Ordering::Relaxed) {
                        // Keep to the pace: wait while ahead of it.
                        let due = Duration::from_secs_f64(read as f64 / (kib_per_s * 1024) as f64);
                        if began.elapsed() < due {
                            glommio::timer::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        match s.recv_chunk().await.map_err(|e| format!("{e:?}"))? {
                            Some(n) => read += n as u64,
                            None => break,
                        }
                        if first {
                            first = false;
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok::<u64, String>(read)
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await?;
            }
            Ok(total)
        })
    })
}

/// Txns of `ops` puts of distinct keys, 16 clients for `seconds`: (txn/s, p99 ms).
fn big_txns(
    addr: SocketAddr,
    keys: u64,
    ops: u64,
    val_size: usize,
    seconds: u64,
) -> Result<(f64, f64), String> {
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await.map_err(|e| format!("{e:?}"))?;
        let value = Bytes::from(vec![b'v'; val_size]);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (conn, value, next) = (conn.clone(), value.clone(), next.clone());
            tasks.push(glommio::spawn_local(async move {
                let mut h = util::histogram();
                while Instant::now() < deadline {
                    let i = next.get();
                    next.set(i + 1);
                    let first = (i * ops) % keys.saturating_sub(ops).max(1);
                    let success = (first..first + ops)
                        .map(|n| pb::RequestOp {
                            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                                key: key(n),
                                value: value.clone(),
                                ..Default::default()
                            })),
                        })
                        .collect();
                    let req = pb::TxnRequest {
                        success,
                        ..Default::default()
                    };
                    let started = Instant::now();
                    grpc::unary::<_, pb::TxnResponse>(&conn, "/etcdserverpb.KV/Txn", &req)
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let _ = h.record(started.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(h)
            }));
        }
        let mut all = util::histogram();
        for t in tasks {
            all.add(t.await?).map_err(|e| e.to_string())?;
        }
        Ok((
            all.len() as f64 / seconds as f64,
            all.value_at_quantile(0.99) as f64 / 1000.0,
        ))
    })
}

/// A watch over every key from `from`: the seconds until `events` events arrived.
fn watch_catch_up(addr: SocketAddr, from: i64, events: u64) -> Result<f64, String> {
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await.map_err(|e| format!("{e:?}"))?;
        let mut s = Stream::open(&conn, "/etcdserverpb.Watch/Watch")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let started = Instant::now();
        s.send(&pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: Bytes::from_static(b"\0"),
                    range_end: Bytes::from_static(b"\0"),
                    start_revision: from,
                    ..Default::default()
                },
            )),
        })
        .map_err(|e| format!("{e:?}"))?;
        let mut got = 0u64;
        while got < events {
            let r: pb::WatchResponse = s.recv().await.map_err(|e| format!("{e:?}"))?;
            if r.canceled || r.compact_revision != 0 {
                return Err(format!("watch ended: {}", r.cancel_reason));
            }
            got += r.events.len() as u64;
        }
        Ok(started.elapsed().as_secs_f64())
    })
}

fn current_revision(addr: SocketAddr) -> Result<i64, String> {
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await.map_err(|e| format!("{e:?}"))?;
        let req = pb::RangeRequest {
            key: key(0),
            ..Default::default()
        };
        let r: pb::RangeResponse = grpc::unary(&conn, "/etcdserverpb.KV/Range", &req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(r.header.map_or(0, |h| h.revision))
    })
}

fn point_reads(server: &Server, keys: u64, seconds: u64) -> Report {
    let opts = LoadOptions {
        clients: 16,
        ..LoadOptions::c64(
            server.addr,
            server.child.id(),
            KEY_BYTES,
            keys,
            false,
            seconds,
        )
    };
    load::run(
        Scenario::Range {
            serializable: false,
        },
        &opts,
        "point",
    )
}

fn lat(r: &Report) -> String {
    let q = |q: f64| r.histogram.value_at_quantile(q);
    format!(
        "{:.0} / {} {} {}",
        r.throughput(),
        q(0.5),
        q(0.99),
        q(0.999)
    )
}

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let keys = flags.u64("keys", if quick { 10_000 } else { 100_000 });
    let val_size = flags.u64("val-size", 256) as usize;
    let reads = flags.u64("reads", 5).max(1);
    let readers = flags.u64("slow-readers", 8) as usize;
    let kib_per_s = flags.u64("slow-kib-per-s", 1024).max(1);
    let seconds = flags.u64("seconds", if quick { 2 } else { 10 }).max(1);
    let txn_ops = flags.u64("txn-ops", 128).max(1);
    let revisions = flags.u64("watch-revisions", if quick { 20_000 } else { 1_000_000 });
    let only = flags.str("only", "keel,etcd");
    let out = PathBuf::from(flags.str("out", "target/bench-big"));
    std::fs::create_dir_all(&out).expect("create --out");
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| server | whole-store Range: answer MiB, ms each | RSS before / peak above / anonymous peak above, MiB | point reads alone: req/s / p50 p99 p99.9 µs | beside {readers} slow readers | slow readers' RSS peak / anon MiB | txn of {txn_ops} puts: txn/s, p99 ms | its RSS peak / anon MiB | watch over {revisions} revisions: s | its RSS peak / anon MiB |"
    );
    let _ = writeln!(
        table,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut failed = false;
    for (name, binary) in [("keel", keel.as_str()), ("etcd", etcd.as_str())] {
        if !only.split(',').any(|o| o == name) {
            continue;
        }
        let server = start(
            name,
            binary,
            &out,
            &["--quota-backend-bytes", "17179869184"],
            false,
        );
        let pid = server.child.id();
        let fill = LoadOptions {
            val_size,
            ..LoadOptions::c64(server.addr, pid, KEY_BYTES, keys, true, 0)
        };
        load::run(Scenario::Put, &fill, name);
        std::thread::sleep(Duration::from_secs(1));

        let rss = RssPeak::start(pid);
        let whole = whole_ranges(server.addr, reads);
        let (before, peak) = rss.finish();
        let whole_cell = match &whole {
            Ok((times, bytes, kvs)) => {
                if *kvs as u64 != keys {
                    eprintln!("big: {name}: a whole-store Range gave {kvs} kvs of {keys}");
                    failed = true;
                }
                let each: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
                format!(
                    "{:.1}, {}",
                    *bytes as f64 / (1 << 20) as f64,
                    each.join(" ")
                )
            }
            Err(e) => {
                failed = true;
                format!("failed: {e}")
            }
        };
        println!(
            "{name}: whole-store Range: {whole_cell}; RSS {before:.0} MiB, peak / anon +{peak}"
        );

        let alone = point_reads(&server, keys, seconds);
        let (started, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let rss = RssPeak::start(pid);
        let slow = slow_readers(
            server.addr,
            readers,
            kib_per_s,
            started.clone(),
            stop.clone(),
        );
        let wait = Instant::now() + Duration::from_secs(60);
        while started.load(Ordering::Relaxed) < readers && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(10));
        }
        let beside = point_reads(&server, keys, seconds);
        stop.store(true, Ordering::Relaxed);
        let slow_read = slow.join().unwrap_or_else(|_| Err("panicked".into()));
        let (_, slow_peak) = rss.finish();
        if let Err(e) = &slow_read {
            eprintln!("big: {name}: slow readers: {e}");
            failed = true;
        }
        println!(
            "{name}: point reads alone {}, beside slow readers {}; RSS peak / anon +{slow_peak} MiB",
            lat(&alone),
            lat(&beside)
        );

        let rss = RssPeak::start(pid);
        let txns = big_txns(server.addr, keys, txn_ops, val_size, seconds);
        let (_, txn_peak) = rss.finish();
        let txn_cell = match &txns {
            Ok((rate, p99)) => format!("{rate:.0}, {p99:.1}"),
            Err(e) => {
                failed = true;
                format!("failed: {e}")
            }
        };
        println!("{name}: txns: {txn_cell}; RSS peak / anon +{txn_peak} MiB");

        let from = current_revision(server.addr).unwrap_or(0) + 1;
        let more = LoadOptions {
            total: revisions,
            sequential: false,
            val_size,
            ..LoadOptions::c64(server.addr, pid, KEY_BYTES, keys, true, 0)
        };
        load::run(Scenario::Put, &more, name);
        let rss = RssPeak::start(pid);
        let watch = watch_catch_up(server.addr, from, revisions);
        let (_, watch_peak) = rss.finish();
        let watch_cell = match &watch {
            Ok(s) => format!("{s:.2}"),
            Err(e) => {
                failed = true;
                format!("failed: {e}")
            }
        };
        println!("{name}: watch catch-up: {watch_cell} s; RSS peak / anon +{watch_peak} MiB");

        let row = format!(
            "| {name} | {whole_cell} | {before:.0} / {peak} | {} | {} | {slow_peak} | {txn_cell} | {txn_peak} | {watch_cell} | {watch_peak} |",
            lat(&alone),
            lat(&beside)
        );
        let _ = writeln!(table, "{row}");
        std::fs::write(out.join("table.md"), &table).expect("write table.md");
        drop(server);
    }
    println!("{table}");
    if failed {
        std::process::exit(1);
    }
}
