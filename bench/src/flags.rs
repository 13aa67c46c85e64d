//! Every mode's flags, with defaults and help: `keel-bench MODE --help` prints them (exit
//! 0), and a flag a mode does not declare is an error (exit 2) rather than a silently
//! ignored typo (`--duraton 5` used to run the defaults). Parsing is keel's own pflag-style
//! reader (`keel::proxy::args`, the proxies' command lines): `--flag value`, `--flag=value`,
//! switches without a value (`--quick`, `--quick=false`).

use keel::proxy::args::Spec;

const SERVERS: &[Spec] = &[
    Spec::value("keel", "target/release/keel", "Keel binary"),
    Spec::value(
        "etcd",
        "/usr/bin/etcd",
        "etcd binary (Debian's etcd-server)",
    ),
];

const CLUSTER: &[Spec] = &[
    Spec::value("heartbeat-interval", "100", "3-member rows: heartbeat, ms"),
    Spec::value(
        "election-timeout",
        "1000",
        "3-member rows: election timeout, ms",
    ),
    Spec::value(
        "snapshot-count",
        "100000",
        "3-member rows: --snapshot-count",
    ),
];

const LOAD: &[Spec] = &[
    Spec::value(
        "endpoints",
        "127.0.0.1:2379",
        "server(s), host:port[,host:port]",
    ),
    Spec::value(
        "endpoint",
        "127.0.0.1:2379",
        "the same as --endpoints (one)",
    ),
    Spec::value("conns", "1", "HTTP/2 connections"),
    Spec::value("clients", "1", "closed-loop clients over the connections"),
    Spec::value("total", "10000", "requests (unbounded with --duration)"),
    Spec::value(
        "duration",
        "0",
        "seconds to run instead of --total (0: use --total)",
    ),
    Spec::value(
        "rate",
        "0",
        "requests/s, open loop (0: closed loop; watch-latency: 100)",
    ),
    Spec::value("key-size", "8", "key bytes"),
    Spec::value("val-size", "256", "value bytes"),
    Spec::value("key-space-size", "100000", "distinct keys"),
    Spec::switch("sequential-keys", "keys in order instead of random"),
    Spec::value(
        "consistency",
        "l",
        "range: l (linearizable) or s (serializable)",
    ),
    Spec::value("read-percent", "80", "txn-mixed: share of reads"),
    Spec::value("watchers", "100", "watch: watchers"),
    Spec::value("streams", "10", "watch: Watch streams"),
    Spec::switch("prefix", "watch: prefix watches"),
    Spec::switch("prefill", "range: put every key of the key space first"),
    Spec::value(
        "range-keys",
        "1",
        "range: keys per read ([key, key+N) of the key space)",
    ),
    Spec::value(
        "keepalive-leases",
        "0",
        "lease-keepalive: leases (0: one per client)",
    ),
    Spec::switch(
        "keepalive-warmup",
        "lease-keepalive: one round before measuring",
    ),
    Spec::value(
        "server-pid",
        "",
        "PID[,PID] whose CPU to report per request",
    ),
    Spec::switch("json", "one JSON line instead of the table"),
    Spec::value("hdr-log", "", "write the latency histogram (hgrm) here"),
    Spec::value("label", "endpoint", "the run's name in the report"),
    Spec::value("cacert", "", "TLS: CA certificate"),
    Spec::value(
        "cert",
        "",
        "TLS: client certificate (mutual TLS when given)",
    ),
    Spec::value("key", "", "TLS: client key"),
    Spec::value(
        "tls-kx",
        "x25519",
        "TLS key exchange offered first: x25519 or p384",
    ),
    Spec::value(
        "user",
        "",
        "NAME:PASSWORD: calls carry its token (authenticate: logs in)",
    ),
];

const COMPARE: &[Spec] = &[
    Spec::value(
        "reps",
        "3",
        "repetitions per row, interleaved (1 with --quick)",
    ),
    Spec::value("seconds", "3", "seconds per repetition (2 with --quick)"),
    Spec::switch(
        "quick",
        "1 repetition of 2 s, no 256-client or 10k-watcher rows",
    ),
    Spec::value("only", "", "rows whose names start with one of a,b"),
    Spec::value(
        "skip",
        "",
        "leave out rows whose names start with one of a,b",
    ),
    Spec::switch("scaling", "also Keel on --cores 1 for the read rows"),
    Spec::switch("no-tls", "leave out the rows over TLS"),
    Spec::switch("tls-only", "only the rows over TLS"),
    Spec::value("tls-kx", "x25519", "TLS rows: key exchange, x25519 or p384"),
    Spec::switch("no-auth", "leave out the rows with auth enabled"),
    Spec::switch("no-plots", "no PNG plots (no matplotlib needed)"),
    Spec::value("out", "bench/results/UNIX_TIME", "results folder"),
];

const FAILOVER: &[Spec] = &[
    Spec::value("reps", "5", "leader kills per server"),
    Spec::value("members", "3", "cluster size (at least 3)"),
    Spec::value("only", "keel,etcd", "servers to run"),
    Spec::value("out", "bench/results/failover-UNIX_TIME", "results folder"),
];

const MAINTENANCE: &[Spec] = &[
    Spec::value("only", "snapshot,defrag", "events to run"),
    Spec::value(
        "db-mib",
        "1024",
        "db size to fill first, MiB (20 with --quick)",
    ),
    Spec::value("val-size", "4000", "value bytes of the fill and the load"),
    Spec::value(
        "seconds",
        "10",
        "seconds of put load around each event (1 with --quick)",
    ),
    Spec::value("clients", "64", "put clients"),
    Spec::switch("quick", "a 20 MiB db, 1 s"),
    Spec::value(
        "out",
        "bench/results/maintenance-UNIX_TIME",
        "results folder",
    ),
];

const GATEWAY: &[Spec] = &[
    Spec::value("seconds", "5", "seconds per row (1 with --quick)"),
    Spec::value(
        "conns",
        "1,16,64",
        "keep-alive connections per row (16 with --quick)",
    ),
    Spec::switch("quick", "one 1-second row of 16 connections"),
    Spec::value("out", "target/bench-gateway", "results folder"),
];

const GROWTH: &[Spec] = &[
    Spec::value(
        "sizes",
        "10000,100000,1000000,10000000",
        "key counts, in order (1000,10000 with --quick)",
    ),
    Spec::value(
        "seconds",
        "5",
        "seconds per put and range run (1 with --quick)",
    ),
    Spec::value("only", "keel,etcd", "servers to run"),
    Spec::switch("quick", "1000 and 10000 keys, 1-second runs"),
    Spec::value("out", "target/bench-growth", "results folder"),
];

const BIG: &[Spec] = &[
    Spec::value("keys", "100000", "keys filled (10000 with --quick)"),
    Spec::value("val-size", "256", "value bytes"),
    Spec::value("reads", "5", "whole-store Ranges timed one after another"),
    Spec::value(
        "slow-readers",
        "8",
        "connections each reading a whole-store Range slowly",
    ),
    Spec::value("slow-kib-per-s", "1024", "how fast each slow reader reads"),
    Spec::value(
        "seconds",
        "10",
        "seconds of slow readers and of txns (2 with --quick)",
    ),
    Spec::value("txn-ops", "128", "puts per txn"),
    Spec::value(
        "watch-revisions",
        "1000000",
        "revisions a watch catches up over (20000 with --quick)",
    ),
    Spec::value("only", "keel,etcd", "servers to run"),
    Spec::switch("quick", "10,000 keys, 2-second runs, 20,000 revisions"),
    Spec::value("out", "target/bench-big", "results folder"),
];

const SKEW: &[Spec] = &[
    Spec::value("keys", "200000", "keys filled (20000 with --quick)"),
    Spec::value("seconds", "5", "seconds per range run (1 with --quick)"),
    Spec::value("reps", "2", "range runs per row (1 with --quick)"),
    Spec::switch("quick", "20000 keys, 1-second runs"),
    Spec::value("out", "target/bench-skew", "results folder"),
];

const PROXY: &[Spec] = &[
    Spec::value("watchers", "100000", "watchers (2000 with --quick)"),
    Spec::value("keys", "1000", "distinct keys watched (100 with --quick)"),
    Spec::value("conns", "100", "connections to the proxy (20 with --quick)"),
    Spec::value("streams", "4", "Watch streams per connection"),
    Spec::value("rate", "1000", "puts/s to the member"),
    Spec::value("seconds", "10", "measured seconds (2 with --quick)"),
    Spec::value(
        "warmup-ms",
        "1000",
        "puts before measuring, ms (500 with --quick)",
    ),
    Spec::switch("quick", "2,000 watchers on 100 keys, 2 s"),
    Spec::value("only", "", "keel or etcd (default: both)"),
    Spec::value("out", "target/bench-proxy", "results folder"),
];

const SCRAPE: &[Spec] = &[
    Spec::value("seconds", "5", "seconds per round (1 with --quick)"),
    Spec::value(
        "rounds",
        "3",
        "rounds with and without scrapes (1 with --quick)",
    ),
    Spec::value("clients", "64", "put clients"),
    Spec::value("interval-ms", "100", "one scrape every this many ms"),
    Spec::value("path", "/metrics", "path scraped"),
    Spec::switch("quick", "one round of 1 s"),
    Spec::value("out", "target/bench-scrape", "results folder"),
];

const WAL: &[Spec] = &[
    Spec::value(
        "dir",
        "$TMPDIR/keel-bench-wal-PID",
        "directory (emptied first)",
    ),
    Spec::value("syncs", "2000", "syncs per batch size"),
    Spec::value("record-bytes", "256", "entry bytes"),
    Spec::value("batches", "1,8,64,256", "records per sync"),
    Spec::value(
        "prealloc",
        "fallocate",
        "segment preallocation: fallocate, zero or none",
    ),
    Spec::value("dsync", "on", "O_DSYNC writes: on or off"),
];

const STORE: &[Spec] = &[
    Spec::value(
        "dir",
        "$TMPDIR/keel-bench-store-PID",
        "directory (emptied first)",
    ),
    Spec::value("keys", "1000000", "keys to put"),
    Spec::value("key-bytes", "8", "key bytes"),
    Spec::value("val-bytes", "256", "value bytes"),
    Spec::value("reads", "2000000", "point reads"),
    Spec::value("commit-every", "10000", "puts per db commit"),
];

/// The modes and their flag groups; `None` for an unknown mode.
pub fn specs(mode: &str) -> Option<Vec<Spec>> {
    let groups: &[&[Spec]] = match mode {
        "compare" => &[SERVERS, COMPARE, CLUSTER],
        "failover" => &[SERVERS, FAILOVER, CLUSTER],
        "maintenance" => &[SERVERS, MAINTENANCE],
        "gateway" => &[SERVERS, GATEWAY],
        "proxy" => &[SERVERS, PROXY],
        "scrape" => &[SERVERS, SCRAPE],
        "skew" => &[SERVERS, SKEW],
        "big" => &[SERVERS, BIG],
        "growth" => &[SERVERS, GROWTH],
        "watch-memory" => &[LOAD],
        "wal" => &[WAL],
        "store" => &[STORE],
        m if LOAD_MODES.contains(&m) => &[LOAD],
        _ => return None,
    };
    let mut out: Vec<Spec> = Vec::new();
    for group in groups {
        for s in group.iter() {
            // A later group's flag of the same name wins (compare's --tls-kx help).
            out.retain(|o| o.name != s.name);
            out.push(*s);
        }
    }
    Some(out)
}

pub const LOAD_MODES: &[&str] = &[
    "put",
    "range",
    "txn-put",
    "txn-mixed",
    "lease-keepalive",
    "lease-churn",
    "watch",
    "watch-latency",
    "new-conns",
    "authenticate",
];

/// `keel-bench MODE --help`: every flag with its default.
pub fn help(mode: &str, specs: &[Spec]) -> String {
    format!(
        "usage: keel-bench {mode} [flags]\n\nflags (default in quotes):\n{}",
        keel::proxy::args::flags_help(specs)
    )
}
