//! keel-bench: Keel's benchmarks.
//!
//! ```text
//! keel-bench compare [--reps 3] [--seconds 3] [--quick] [--only put,watch]   Keel vs etcd
//! keel-bench failover [--reps 5] [--election-timeout 1000]   leader kill in a 3-member cluster
//! keel-bench maintenance [--only defrag,snapshot] [--db-mib 1024] [--quick]   Defragment / Snapshot under put load
//! keel-bench big [--keys 100000] [--slow-readers 8] [--quick]   big answers, slow readers, big txns, watch catch-up
//! keel-bench proxy [--watchers 100000] [--keys 1000] [--only keel|etcd] [--quick]   watch fan-out through a gRPC proxy
//! keel-bench put|range|txn-put|txn-mixed|lease-keepalive|lease-churn|watch|watch-latency|new-conns|authenticate [flags]
//! keel-bench wal   [--dir D] [--syncs N] [--record-bytes B] [--batches 1,8,64,256]
//! keel-bench store [--dir D] [--keys N] [--key-bytes K] [--val-bytes V] [--reads N]
//! ```
//! Load flags mirror etcd's `benchmark` tool: `--endpoints --conns --clients --total
//! --rate --key-size --val-size --key-space-size --sequential-keys`, plus `--duration S`,
//! `--consistency l|s`, `--watchers W --streams S`, `--server-pid P`, `--json`,
//! `--hdr-log FILE`, and `--cacert --cert --key` for mutual TLS. Every run prints the machine, the git revision and the settings.

mod big;
mod certs;
mod cluster;
mod compare;
mod failover;
mod flags;
mod gateway;
mod growth;
mod grpc;
mod load;
mod maintenance;
mod proxy;
mod scrape;
mod skew;
mod store;
mod util;
mod wal;

const USAGE: &str = "usage: keel-bench <mode> [flags]
  compare          Keel and etcd 3.4 side by side: --keel BIN --etcd BIN --reps N --seconds S --quick --only a,b --skip a,b --out DIR
                   --scaling (also Keel on --cores 1 for the read rows) --no-plots
                   rows ending \"tls\" run on a second pair of servers over mutual TLS: --no-tls | --tls-only --tls-kx x25519|p384
                   cases ending \"3m\" run on 3-member clusters: --heartbeat-interval MS --election-timeout MS --snapshot-count N
  failover         SIGKILL a 3-member cluster's leader, time to a new leader and to writes: --keel BIN --etcd BIN
                   --reps N --members N --heartbeat-interval MS --election-timeout MS --only keel|etcd --out DIR
  maintenance      Defragment and Snapshot under put load, Keel then etcd on a filled db: --keel BIN --etcd BIN
                   --only defrag,snapshot --db-mib 1024 --val-size 4000 --seconds 10 --clients 64 --quick --out DIR
  gateway          the JSON gateway's put and range rate (keep-alive HTTP/1.1), Keel then etcd: --keel BIN --etcd BIN
                   --seconds 5 --conns 1,16,64 --quick --out DIR
  proxy            watch fan-out through a gRPC proxy, puts straight to the member, Keel then etcd: --keel BIN --etcd BIN
                   --watchers 100000 --keys 1000 --conns 100 --streams 4 (per connection) --rate 1000 --seconds 10
                   --warmup-ms 1000 --quick --only keel|etcd --out DIR
  scrape           put c64 with and without a GET /metrics every 100 ms, Keel then etcd: --keel BIN --etcd BIN
                   --seconds 5 --rounds 3 --clients 64 --interval-ms 100 --quick --out DIR
  growth           each server's cost as its data grows (fill, put c64, range c64, RSS, db size, restart) at each
                   size: --keel BIN --etcd BIN --sizes 10000,100000,1000000,10000000 --seconds 5 --only keel,etcd
                   --quick --out DIR
  skew             keys put under one part of the key space after an empty boot, then range c64: Keel without
                   and with online shard moves, restarted (split at boot), etcd: --keel BIN --etcd BIN --keys 200000
                   --seconds 5 --reps 2 --quick --out DIR
  big              big answers and bad readers: whole-store Ranges, slow readers beside point reads, txns of
                   many puts, a watch catching up over many revisions; latency and server RSS peaks, Keel then
                   etcd: --keel BIN --etcd BIN --keys 100000 --val-size 256 --reads 5 --slow-readers 8
                   --slow-kib-per-s 1024 --seconds 10 --txn-ops 128 --watch-revisions 1000000 --only keel,etcd
                   --quick --out DIR
  watch-memory     server RSS growth per idle watcher: --endpoint H:P --server-pid P --watchers W --streams S
  put | range | txn-put | txn-mixed | lease-keepalive | lease-churn | watch | watch-latency | new-conns | authenticate
                   --endpoints H:P[,H:P] --conns N --clients N --total N | --duration S --rate R
                   --cacert CA --cert CERT --key KEY --tls-kx x25519|p384 (mutual TLS; new-conns: full handshakes)
                   --user NAME:PASSWORD (auth: calls carry its token; authenticate: logs in as it)
                   --key-size B --val-size B --key-space-size N --sequential-keys
                   --consistency l|s (range) --read-percent P (txn-mixed) --watchers W --streams S --prefix (watch)
                   --prefill (range) --server-pid P[,P] --json --hdr-log FILE --label L
  wal              --syncs N --record-bytes B --batches 1,8,64,256 --prealloc zero|fallocate|none
  store            --keys N --key-bytes K --val-bytes V --reads N";

/// The server's allocator: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if matches!(cmd, "help" | "--help" | "-h") {
        println!("{USAGE}\n\n`keel-bench MODE --help` lists a mode's flags with their defaults.");
        return;
    }
    let opts = match util::Flags::parse(cmd, &rest) {
        Ok(f) => f,
        Err(util::NotRun::Help(text)) => {
            print!("{text}");
            return;
        }
        Err(util::NotRun::Error(e)) => {
            eprintln!("{e}\n(`keel-bench {cmd} --help` lists its flags)");
            std::process::exit(2);
        }
    };
    let json = flags::specs(cmd).is_some_and(|s| s.iter().any(|s| s.name == "json"));
    if !(json && opts.has("json")) {
        util::print_run_header(cmd);
    }
    match cmd {
        "wal" => wal::run(&opts),
        "store" => store::run(&opts),
        "compare" => compare::main(&opts),
        "failover" => failover::main(&opts),
        "maintenance" => maintenance::main(&opts),
        "scrape" => scrape::main(&opts),
        "skew" => skew::main(&opts),
        "big" => big::main(&opts),
        "growth" => growth::main(&opts),
        "gateway" => gateway::main(&opts),
        "proxy" => proxy::main(&opts),
        "watch-memory" => {
            let o = load::options_from(&opts);
            let pid = opts.u64("server-pid", 0) as u32;
            match load::watch_memory(&o, pid) {
                Ok(m) => println!(
                    "{} watchers on {} streams: server RSS {} → {} KiB, {:.0} bytes per watcher",
                    m.watchers,
                    m.streams,
                    m.rss_before_kb,
                    m.rss_after_kb,
                    m.bytes_per_watcher()
                ),
                Err(e) => {
                    eprintln!("watch-memory: {e}");
                    std::process::exit(1);
                }
            }
        }
        "put" | "range" | "txn-put" | "txn-mixed" | "lease-keepalive" | "lease-churn" | "watch"
        | "watch-latency" | "new-conns" | "authenticate" => load::main(cmd, &opts),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
