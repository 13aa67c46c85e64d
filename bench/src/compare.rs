//! `keel-bench compare`: Keel and etcd 3.4 side by side on this machine, same client, same
//! flags, interleaved A/B/A/B, and the ratios Keel/etcd.
//!
//! ```text
//! keel-bench compare [--keel target/release/keel] [--etcd /usr/bin/etcd] [--reps 3]
//!                    [--seconds 3] [--out bench/results/NAME] [--quick] [--only put,range]
//!                    [--scaling]   (also Keel with --cores 1, for the read rows)
//!                    [--skip a,b] [--no-tls | --tls-only] [--tls-kx x25519|p384] [--no-auth]
//!                    [--no-plots]
//! ```
//! Starts each server on loopback with a data dir under `OUT/data/`, prefills the key
//! space for the read scenarios, then for every scenario runs every server once per
//! repetition in turn. Writes `OUT/table.md` (medians and ratios), `OUT/runs.jsonl` (every
//! run), `OUT/hgrm/*.hgrm` (latency distributions) and, when python3 with matplotlib is
//! available, `OUT/*.png` (latency CDF per scenario, throughput against clients) through
//! `bench/plot.py`. Without etcd installed it measures Keel alone. Before and after the
//! runs it measures the disk's floor (500 × one 4 KiB write + fdatasync in `OUT`, std's
//! blocking calls, no server running) and prints it under the table with each server's
//! put c1 p50 as a multiple of it.
//!
//! Cases ending "tls" run on a second pair of servers, started with the same
//! certificates (a CA, a server and a client certificate made with rcgen into
//! `OUT/data/tls/`, removed with the data dirs)
//! and `--cert-file --key-file --trusted-ca-file --client-cert-auth` on https client URLs;
//! the load generator presents the client certificate. Each runs interleaved with its
//! plaintext twin (per repetition: the plain servers, then the TLS ones), and `table.md`
//! gets a TLS table beside the main one (p99.9, Keel's CPU per request over TLS against
//! plaintext). `new-conns` rows open a connection per request (a full TLS handshake each
//! over TLS: session resumption off). The client offers X25519 first, as etcd's Go clients
//! do (`--tls-kx p384`: rustls' default order, P-384 first).
//!
//! Cases ending "auth" run on a third pair of servers (plaintext) with auth on: the load
//! generator logs in as a user whose one role grants READWRITE on one key range holding
//! every key the scenarios write, and every call carries its token, interleaved with the
//! plain twin; `authenticate c16 auth` logs in over and over (bcrypt at etcd's default
//! cost, 10). `--no-auth` leaves them out.
//!
//! Cases ending "3m" run after the others, once the single servers are stopped: each run
//! starts a fresh 3-member cluster of one system (`crate::cluster`: etcd's clustering
//! flags, `--heartbeat-interval/--election-timeout/--snapshot-count` as given, etcd's
//! defaults otherwise), waits until every member's Maintenance.Status names the same
//! leader, spreads the connections round-robin over the members and kills them after.
//! Only one system's members run at a time: on two cores three members already share
//! them. A system that forms no cluster gets n/a rows with the reason, tried once.

use crate::cluster::{Cluster, Timing};
use crate::load::{self, LoadOptions, Report, Scenario};
use crate::util::Flags;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Server {
    /// Its data dir and log file name.
    name: &'static str,
    /// Over mutual TLS (https client URLs, the run's certificates in `extra`).
    tls: bool,
    /// Auth on (`AUTH_USER` holding READWRITE on the bench's keys).
    auth: bool,
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    binary: String,
    extra: Vec<String>,
    peer_port: u16,
    /// From its spawn to "ready to serve client requests" with the client port open.
    pub(crate) ready_after: Duration,
}

impl Drop for Server {
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

pub(crate) fn start(
    name: &'static str,
    binary: &str,
    out: &Path,
    extra: &[&str],
    tls: bool,
) -> Server {
    start_with(name, binary, out, extra, None, tls)
}

impl Server {
    /// The system it is, as rows and cells name it ("keel-tls" is "keel" in a tls row,
    /// "keel-auth" in an auth row).
    fn system(&self) -> &'static str {
        let n = self.name.strip_suffix("-tls").unwrap_or(self.name);
        n.strip_suffix("-auth").unwrap_or(n)
    }

    /// Stops it (SIGTERM) and starts it again on the same data: Keel then picks its
    /// shard split keys from the keys the prefill wrote, as it would after a restart.
    pub(crate) fn restart(self, out: &Path) -> Server {
        let (name, binary, extra, tls, auth) = (
            self.name,
            self.binary.clone(),
            self.extra.clone(),
            self.tls,
            self.auth,
        );
        // The same URLs: the member ID derives from them.
        let ports = (self.addr.port(), self.peer_port);
        let mut me = self;
        let _ = Command::new("kill").arg(me.child.id().to_string()).status();
        let _ = me.child.wait();
        drop(me);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut s = start_with(name, &binary, out, &extra, Some(ports), tls);
        s.auth = auth;
        s
    }
}

fn start_with(
    name: &'static str,
    binary: &str,
    out: &Path,
    extra: &[&str],
    ports: Option<(u16, u16)>,
    tls: bool,
) -> Server {
    let fresh = ports.is_none();
    let (client, peer) = ports.unwrap_or_else(|| (free_port(), free_port()));
    let data = out.join("data").join(name);
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    std::fs::create_dir_all(out.join("data")).unwrap();
    let log_path = if fresh {
        out.join(format!("{name}.log"))
    } else {
        out.join(format!("{name}-restarted.log"))
    };
    let log = std::fs::File::create(&log_path).unwrap();
    let c = format!(
        "{}://127.0.0.1:{client}",
        if tls { "https" } else { "http" }
    );
    let p = format!("http://127.0.0.1:{peer}");
    let child = crate::cluster::member_command(binary, name, &data, &c, &p, &format!("{name}={p}"))
        .args(extra)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let spawned = Instant::now();
    // A restart on a large db (10M keys) takes etcd tens of seconds.
    let deadline = spawned + Duration::from_secs(if fresh { 20 } else { 300 });
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("ready to serve client requests")
            && std::net::TcpStream::connect(("127.0.0.1", client)).is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not start: see {}",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        ready_after: spawned.elapsed(),
        name,
        tls,
        auth: false,
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], client)),
        binary: binary.to_string(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        peer_port: peer,
    }
}

/// One line of the matrix.
#[derive(Clone)]
struct Case {
    name: String,
    scenario: Scenario,
    clients: usize,
    watchers: usize,
    prefix: bool,
    rate: Option<f64>,
    /// Leases kept alive in the background during the run.
    keepalive_leases: usize,
    /// Run length instead of `--seconds` (at least as long).
    seconds_min: u64,
    /// 1: the long-running single servers; more: a fresh cluster of that many members
    /// per run, one system at a time (`crate::cluster`).
    members: usize,
    /// Over mutual TLS, on the TLS pair of servers; named like its plaintext twin + " tls".
    tls: bool,
    /// On the pair of servers with auth on, as `AUTH_USER`; named like its twin + " auth".
    auth: bool,
}

impl Case {
    /// Its name without " tls" or " auth": a row and its twins run interleaved.
    fn base(&self) -> &str {
        let n = self.name.strip_suffix(" tls").unwrap_or(&self.name);
        n.strip_suffix(" auth").unwrap_or(n)
    }
}

/// The user the auth rows run as, and its grant: READWRITE on one key range that holds
/// every key the scenarios write ("0…" to "keel-bench-…"), so each request is checked
/// against one interval, as with a prefix grant.
const AUTH_USER: (&str, &str) = ("bench", "bench-pw");
const AUTH_RANGE: (&[u8], &[u8]) = (b"0", b"l");

/// Which rows: plaintext, over TLS, or both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    Both,
    No,
    Only,
}

fn matrix(quick: bool, tls: Tls, with_auth: bool) -> Vec<Case> {
    let case = |scenario: Scenario, clients: usize| Case {
        name: format!("{} c{clients}", scenario.name()),
        scenario,
        clients,
        watchers: 0,
        prefix: false,
        rate: None,
        keepalive_leases: 0,
        seconds_min: 0,
        members: 1,
        tls: false,
        auth: false,
    };
    let watch = |watchers: usize, rate: Option<f64>| Case {
        name: format!("watch w{watchers}"),
        scenario: Scenario::Watch,
        clients: 1,
        watchers,
        prefix: false,
        rate,
        keepalive_leases: 0,
        seconds_min: 0,
        members: 1,
        tls: false,
        auth: false,
    };
    let watch_prefix = |watchers: usize, rate: Option<f64>| Case {
        name: format!("watch-prefix w{watchers}"),
        prefix: true,
        ..watch(watchers, rate)
    };
    let mut m = vec![
        case(Scenario::Put, 1),
        case(Scenario::Put, 64),
        case(Scenario::Put, 256),
        case(Scenario::Range { serializable: true }, 64),
        case(Scenario::Range { serializable: true }, 256),
        case(
            Scenario::Range {
                serializable: false,
            },
            64,
        ),
        case(
            Scenario::Range {
                serializable: false,
            },
            256,
        ),
        case(Scenario::TxnPut, 64),
        // One writer; a fixed put rate so every watcher count sees a delivery load the
        // servers can sustain (about 100k–400k deliveries/s), and latency means something.
        watch(1, None),
        watch(100, Some(1000.0)),
        watch(1000, Some(400.0)),
        watch(10_000, Some(40.0)),
        watch_prefix(1000, Some(400.0)),
        watch_prefix(10_000, Some(40.0)),
        case(Scenario::LeaseKeepalive, 64),
        // Grant + put with the minimum TTL at etcd's revoke rate, long enough that leases
        // expire (and are revoked) during most of the run.
        Case {
            name: "lease-churn r1000".into(),
            rate: Some(1000.0),
            seconds_min: 6,
            ..case(Scenario::LeaseChurn, 16)
        },
        // Last: its leases stay granted (TTL 600 s) after the run.
        Case {
            name: "put c64 +100k leases".into(),
            keepalive_leases: 100_000,
            ..case(Scenario::Put, 64)
        },
        // Three members, clients spread over them: replication's cost.
        Case {
            name: "put c64 3m".into(),
            members: 3,
            ..case(Scenario::Put, 64)
        },
    ];
    // A connection per request (connect, one Range, close): over TLS, a full handshake
    // each. Before the lease row, whose 100k leases stay granted.
    let leases = m
        .iter()
        .position(|c| c.keepalive_leases > 0)
        .unwrap_or(m.len());
    m.insert(leases, case(Scenario::NewConns, 16));
    // The TLS rows: each right after its plaintext twin (they run interleaved).
    let over_tls = [
        "put c1",
        "put c64",
        "put c256",
        "range-s c256",
        "watch w1000",
        "new-conns c16",
    ];
    // The auth rows: each right after its twins; then Authenticate alone (bcrypt at etcd's
    // cost, 10, and a raft entry per call).
    let over_auth = ["put c64", "range-s c256", "txn-put c64", "watch w1000"];
    let mut all = Vec::new();
    for c in m {
        let twin = over_tls.contains(&c.name.as_str()).then(|| Case {
            name: format!("{} tls", c.name),
            tls: true,
            ..c.clone()
        });
        let auth_twin = over_auth.contains(&c.name.as_str()).then(|| Case {
            name: format!("{} auth", c.name),
            auth: true,
            ..c.clone()
        });
        all.push(c);
        all.extend(twin);
        all.extend(auth_twin);
    }
    let leases = all
        .iter()
        .position(|c| c.keepalive_leases > 0)
        .unwrap_or(all.len());
    all.insert(
        leases,
        Case {
            name: "authenticate c16 auth".into(),
            auth: true,
            ..case(Scenario::Authenticate, 16)
        },
    );
    let mut m = all;
    match tls {
        Tls::Both => {}
        Tls::No => m.retain(|c| !c.tls),
        Tls::Only => m.retain(|c| c.tls),
    }
    if !with_auth {
        m.retain(|c| !c.auth);
    }
    if quick {
        // Not the clusters: six process starts and two elections (several seconds; until
        // Keel elects, its whole leader deadline) in a run meant to take half a minute.
        // Over TLS only put c64 and new connections (they exercise both dial paths), and
        // plaintext new connections not at all.
        m.retain(|c| {
            c.clients != 256
                && c.watchers != 10_000
                && c.keepalive_leases == 0
                && c.members == 1
                && (if c.tls {
                    c.name == "put c64 tls" || c.scenario == Scenario::NewConns
                } else {
                    c.scenario != Scenario::NewConns
                })
                && (!c.auth || c.name == "put c64 auth" || c.scenario == Scenario::Authenticate)
        });
    }
    m
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(Default)]
struct Cell {
    runs: Vec<Report>,
}

impl Cell {
    fn ok(&self) -> Vec<&Report> {
        self.runs
            .iter()
            .filter(|r| r.error_count() == 0 && r.requests > 0)
            .collect()
    }
    fn med(&self, f: impl Fn(&Report) -> f64) -> f64 {
        median(self.ok().into_iter().map(f).collect())
    }
    fn first_error(&self) -> Option<String> {
        self.runs
            .iter()
            .flat_map(|r| r.errors.keys())
            .next()
            .map(|e| e.chars().take(60).collect())
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.1}")
    }
}

fn fmt_ms(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

pub fn main(flags: &Flags) {
    let keel = flags.str("keel", "target/release/keel");
    if !Path::new(&keel).exists() && flags.opt("keel").is_none() {
        // One command on a fresh checkout: build the server it compares.
        let built = Command::new("cargo")
            .args(["build", "--release", "-p", "keel", "--bin", "keel"])
            .status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "cargo build --release --bin keel failed"
        );
    }
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let quick = flags.has("quick");
    let reps = flags.u64("reps", if quick { 1 } else { 3 });
    let seconds = flags.u64("seconds", if quick { 2 } else { 3 });
    let timing = Timing::from_flags(flags);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = PathBuf::from(flags.str("out", &format!("bench/results/{stamp}")));
    std::fs::create_dir_all(out.join("hgrm")).unwrap();
    let with_etcd = Path::new(&etcd).exists();
    if !with_etcd {
        println!("# {etcd} not found: measuring Keel alone");
    }
    let only: Vec<String> = flags
        .opt("only")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_default();
    // --skip a,b: leave out the rows whose names start so (e.g. "put c64 +" and "put c64 3m"
    // with --only "put c64").
    let skip: Vec<String> = flags
        .opt("skip")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_default();
    let tls_rows = if flags.has("no-tls") {
        Tls::No
    } else if flags.has("tls-only") {
        Tls::Only
    } else {
        Tls::Both
    };
    let cases: Vec<Case> = matrix(quick, tls_rows, !flags.has("no-auth"))
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.name.starts_with(o.as_str())))
        .filter(|c| !skip.iter().any(|o| c.name.starts_with(o.as_str())))
        .collect();
    // --scaling: Keel on one core too, for the read rows (shards and reads on every core
    // against everything on one).
    let scaling = flags.has("scaling");
    // The single servers stay up through the single-member cases; clusters come after.
    let mut servers = Vec::new();
    if cases.iter().any(|c| c.members == 1 && !c.tls && !c.auth) {
        servers.push(start("keel", &keel, &out, &[], false));
        if scaling {
            servers.push(start("keel-1core", &keel, &out, &["--cores", "1"], false));
        }
        if with_etcd {
            servers.push(start("etcd", &etcd, &out, &[], false));
        }
    }
    // The TLS rows: a second pair of servers, both with the same certificates (made for
    // this run), mutual TLS on their client URLs.
    let mut client_tls = None;
    if cases.iter().any(|c| c.members == 1 && c.tls) {
        // In the scratch data dir, removed with it at the end: no keys left in results.
        let certs =
            crate::certs::Certs::make(&out.join("data").join("tls")).expect("make certificates");
        let kx = crate::certs::Kx::parse(&flags.str("tls-kx", "x25519"));
        client_tls = Some(
            certs
                .client_material(kx)
                .expect("load the client certificate"),
        );
        let flags = certs.server_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        servers.push(start("keel-tls", &keel, &out, &flags, true));
        if with_etcd {
            servers.push(start("etcd-tls", &etcd, &out, &flags, true));
        }
    }
    // The auth rows: a third pair, plaintext, auth on (etcd's bcrypt cost; tokens that
    // outlive the run).
    if cases.iter().any(|c| c.members == 1 && c.auth) {
        let flags = ["--auth-token-ttl", "36000"];
        let mut pair = vec![start("keel-auth", &keel, &out, &flags, false)];
        if with_etcd {
            pair.push(start("etcd-auth", &etcd, &out, &flags, false));
        }
        for mut s in pair {
            load::enable_auth(s.addr, AUTH_USER, AUTH_RANGE.0, AUTH_RANGE.1)
                .unwrap_or_else(|e| panic!("{}: enable auth: {e}", s.name));
            s.auth = true;
            servers.push(s);
        }
    }
    let key_space = 10_000;
    let base = |endpoints: &[SocketAddr], pids: &[u32]| LoadOptions {
        endpoints: endpoints.to_vec(),
        conns: 1,
        clients: 1,
        total: u64::MAX,
        duration: Some(Duration::from_secs(seconds)),
        rate: None,
        key_size: 8,
        val_size: 256,
        key_space,
        sequential: false,
        watchers: 0,
        streams: 1,
        watch_prefix: false,
        server_pids: pids.to_vec(),
        quiet: true,
        keepalive_leases: 0,
        keepalive_warmup: false,
        range_keys: 1,
        tls: None,
        token: None,
        user: None,
    };
    // The auth servers' tokens (taken again after their restart).
    let tokens: std::cell::RefCell<BTreeMap<&'static str, String>> = Default::default();
    let log_in = |servers: &[Server]| {
        for s in servers.iter().filter(|s| s.auth) {
            let token = load::authenticate(s.addr, AUTH_USER)
                .unwrap_or_else(|e| panic!("{}: authenticate: {e}", s.name));
            tokens.borrow_mut().insert(s.name, token);
        }
    };
    let single = |s: &Server| LoadOptions {
        tls: if s.tls { client_tls.clone() } else { None },
        token: tokens.borrow().get(s.name).cloned(),
        user: s
            .auth
            .then(|| (AUTH_USER.0.to_string(), AUTH_USER.1.to_string())),
        ..base(&[s.addr], &[s.child.id()])
    };
    // The case's load on top of `base`.
    let load_of = |case: &Case, mut o: LoadOptions| {
        o.clients = case.clients;
        // Connections spread round-robin over the endpoints, clients over connections.
        o.conns = if case.clients >= 64 { 4 } else { 1 };
        if case.members > 1 {
            o.conns = case.members * if case.clients >= 64 { 2 } else { 1 };
        }
        o.rate = case.rate;
        o.watchers = case.watchers;
        o.streams = (case.watchers / 100).max(1);
        o.watch_prefix = case.prefix;
        o.keepalive_leases = case.keepalive_leases;
        o.keepalive_warmup = case.keepalive_leases > 0;
        if case.seconds_min > seconds && !quick {
            o.duration = Some(Duration::from_secs(case.seconds_min));
        }
        o
    };
    // Memory per watcher, on the fresh servers: 10,000 idle watchers on 100 streams, and
    // 2,000 watchers on a stream each.
    let mut memory = String::new();
    if only.is_empty() || only.iter().any(|o| o.starts_with("watch")) {
        memory.push_str(
            "\nMemory of idle watchers (server RSS growth while they are open):\n\n\
             | watchers | streams | server | RSS growth | bytes per watcher |\n| --- | --- | --- | --- | --- |\n",
        );
        for (watchers, streams) in [(10_000usize, 100usize), (2_000, 2_000)] {
            for s in servers
                .iter()
                .filter(|s| s.name != "keel-1core" && !s.tls && !s.auth)
            {
                let mut o = single(s);
                o.watchers = watchers;
                o.streams = streams;
                o.conns = 4;
                match load::watch_memory(&o, s.child.id()) {
                    Ok(m) => {
                        let _ = writeln!(
                            memory,
                            "| {} | {} | {} | {:.1} MiB | {:.0} |",
                            watchers,
                            m.streams,
                            s.name,
                            (m.rss_after_kb as f64 - m.rss_before_kb as f64) / 1024.0,
                            m.bytes_per_watcher()
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(
                            memory,
                            "| {watchers} | {streams} | {} | n/a ({e}) | |",
                            s.name
                        );
                    }
                }
            }
        }
    }
    log_in(&servers);
    for s in &servers {
        load::prefill(&single(s));
    }
    // Keel chooses its shard split keys at boot from the keys it holds.
    servers = servers
        .into_iter()
        .map(|s| {
            if s.name.starts_with("keel") {
                s.restart(&out)
            } else {
                s
            }
        })
        .collect();
    // Keel's simple tokens live in memory: a restarted member knows none.
    log_in(&servers);
    // The disk's own floor, before and after the runs, on the data dirs' filesystem: the
    // least a put acknowledged after a durable write can take here (issue 22).
    let floor_before = disk_floor(&out);
    let started = Instant::now();
    let mut cells: BTreeMap<(usize, &'static str), Cell> = BTreeMap::new();
    let mut runs_jsonl = String::new();
    let mut record = |ci: usize, case: &Case, rep: u64, name: &'static str, r: Report| {
        eprintln!(
            "[{:>4.0} s] {:<16} {} rep {}: {:.0}/s p50 {} µs p99 {} µs errors {}",
            started.elapsed().as_secs_f64(),
            case.name,
            name,
            rep + 1,
            r.throughput(),
            r.histogram.value_at_quantile(0.5),
            r.histogram.value_at_quantile(0.99),
            r.error_count()
        );
        let _ = writeln!(
            runs_jsonl,
            "{{\"case\":\"{}\",\"rep\":{rep},\"run\":{}}}",
            case.name,
            r.json()
        );
        let file = format!("{}-{name}.hgrm", case.name.replace(' ', "-"));
        std::fs::write(out.join("hgrm").join(file), r.hgrm()).unwrap();
        cells.entry((ci, name)).or_default().runs.push(r);
    };
    // A row and its TLS twin run interleaved: for each repetition, the plaintext servers
    // then the TLS ones.
    let singles: Vec<(usize, &Case)> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.members == 1)
        .collect();
    let mut done = vec![false; cases.len()];
    for &(first, case) in &singles {
        if done[first] {
            continue;
        }
        let group: Vec<(usize, &Case)> = singles
            .iter()
            .copied()
            .filter(|(_, c)| c.base() == case.base())
            .collect();
        for rep in 0..reps {
            for &(ci, case) in &group {
                done[ci] = true;
                for s in servers
                    .iter()
                    .filter(|s| s.tls == case.tls && s.auth == case.auth)
                {
                    let is_read = matches!(case.scenario, Scenario::Range { .. });
                    if s.name == "keel-1core" && !is_read {
                        continue;
                    }
                    let r = load::run(case.scenario, &load_of(case, single(s)), s.name);
                    record(ci, case, rep, s.system(), r);
                }
            }
        }
    }
    drop(servers);
    // Clusters: on a 2-core machine three members of one system already share the cores,
    // so each run gets a fresh cluster of one system while nothing else of ours runs.
    let mut systems = vec![("keel", keel.as_str())];
    if with_etcd {
        systems.push(("etcd", etcd.as_str()));
    }
    // A system that could not form a cluster is not tried again (each try waits out the
    // leader deadline); its rows say why.
    let mut broken: BTreeMap<&'static str, String> = BTreeMap::new();
    for (ci, case) in cases.iter().enumerate().filter(|(_, c)| c.members > 1) {
        for rep in 0..reps {
            for &(name, binary) in &systems {
                let o = load_of(case, base(&[], &[]));
                let r = match broken.get(name) {
                    Some(e) => load::failed_report(case.scenario, &o, name, e),
                    None => match run_cluster(name, binary, &out, case, timing, o.clone()) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("{e}");
                            broken.insert(name, e.clone());
                            load::failed_report(case.scenario, &o, name, e)
                        }
                    },
                };
                record(ci, case, rep, name, r);
            }
        }
    }
    std::fs::write(out.join("runs.jsonl"), &runs_jsonl).unwrap();
    // The data dirs are scratch (GBs after a long run); the logs stay beside the results.
    let _ = std::fs::remove_dir_all(out.join("data"));
    let floor_after = disk_floor(&out);
    let mut table = render(&cases, with_etcd, &cells, reps, seconds);
    table.push_str(&render_floor(&cases, &cells, &[floor_before, floor_after]));
    if scaling {
        table.push_str(&render_scaling(&cases, &cells));
    }
    table.push_str(&memory);
    if cases.iter().any(|c| c.tls) {
        table.push_str(&render_tls(&cases, &cells));
    }
    if cases.iter().any(|c| c.auth) {
        table.push_str(&render_auth(&cases, &cells));
    }
    std::fs::write(out.join("table.md"), &table).unwrap();
    println!("{table}");
    println!(
        "results: {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if flags.has("no-plots") {
        return;
    }
    plot(&out);
}

/// One 4 KiB `pwrite` + `fdatasync`, `DISK_FLOOR_SYNCS` times, appending to a fresh
/// preallocated file in `dir` (std's blocking calls: this is the bench's own thread, with
/// no server running beside it). Returns (p50, p99) in µs.
fn disk_floor(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::FileExt;
    const DISK_FLOOR_SYNCS: u64 = 500;
    let path = dir.join("disk-floor.tmp");
    let file = std::fs::File::create(&path).expect("create disk-floor.tmp");
    file.set_len(DISK_FLOOR_SYNCS * 4096)
        .expect("size disk-floor.tmp");
    file.sync_all().expect("sync disk-floor.tmp");
    let block = vec![0x5au8; 4096];
    let mut h = crate::util::histogram();
    for i in 0..DISK_FLOOR_SYNCS {
        let t = Instant::now();
        file.write_at(&block, i * 4096)
            .expect("write disk-floor.tmp");
        file.sync_data().expect("fdatasync disk-floor.tmp");
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

/// The disk floor and the 1-client put rows against it.
fn render_floor(
    cases: &[Case],
    cells: &BTreeMap<(usize, &'static str), Cell>,
    floors: &[(u64, u64)],
) -> String {
    let mut t = String::from("\nDisk floor (one 4 KiB write + fdatasync on the data dirs' filesystem, 500 times, before and after the runs): ");
    let parts: Vec<String> = floors
        .iter()
        .map(|(p50, p99)| format!("p50 {p50} µs, p99 {p99} µs"))
        .collect();
    t.push_str(&parts.join("; "));
    t.push('\n');
    let floor = median(floors.iter().map(|f| f.0 as f64).collect());
    for (ci, case) in cases.iter().enumerate() {
        if !case.name.starts_with("put c1") {
            continue;
        }
        for system in ["keel", "etcd"] {
            if let Some(c) = cells.get(&(ci, system)) {
                let p50 = c.med(|r| r.histogram.value_at_quantile(0.5) as f64);
                if p50.is_finite() && floor > 0.0 {
                    let _ = writeln!(
                        t,
                        "- {} {system}: p50 {:.0} µs = {:.2}× the floor's p50",
                        case.name,
                        p50,
                        p50 / floor
                    );
                }
            }
        }
    }
    t
}

/// One run of `case` on a fresh cluster of `system`: started, a leader awaited, the load
/// spread over the members, all stopped.
fn run_cluster(
    system: &'static str,
    binary: &str,
    out: &Path,
    case: &Case,
    timing: Timing,
    mut o: LoadOptions,
) -> Result<Report, String> {
    let mut cluster = Cluster::start(system, binary, out, case.members, timing)?;
    cluster.wait_leader()?;
    o.endpoints = cluster.endpoints();
    if matches!(case.scenario, Scenario::Range { .. }) {
        load::prefill(&o);
    }
    o.server_pids = cluster.pids();
    Ok(load::run(case.scenario, &o, system))
}

fn render(
    cases: &[Case],
    with_etcd: bool,
    cells: &BTreeMap<(usize, &'static str), Cell>,
    reps: u64,
    seconds: u64,
) -> String {
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Keel (git {rev}) against {} on this machine: medians of {reps} interleaved runs of {seconds} s; same load generator; server CPU from /proc/PID/stat. Watch rows: deliveries/s and commit-to-delivery latency.\n",
        if with_etcd { "etcd 3.4" } else { "nothing (etcd not installed)" }
    );
    if let Some(c) = cases.iter().find(|c| c.members > 1) {
        let _ = writeln!(
            t,
            "Rows ending \"{}m\": a fresh {}-member cluster per run (one system at a time), clients round-robin over the members; CPU and peak RSS are the members' sums.\n",
            c.members, c.members
        );
    }
    t.push_str("| scenario | Keel req/s | etcd req/s | ratio | Keel p50 | etcd p50 | ratio | Keel p99 | etcd p99 | ratio | Keel CPU µs/req | etcd CPU µs/req | ratio | peak RSS Keel / etcd |\n");
    t.push_str(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let empty = Cell::default();
    for (ci, case) in cases.iter().enumerate() {
        let k = cells.get(&(ci, "keel")).unwrap_or(&empty);
        let e = cells.get(&(ci, "etcd")).unwrap_or(&empty);
        let tp = |c: &Cell| c.med(|r| r.throughput());
        let p50 = |c: &Cell| c.med(|r| r.histogram.value_at_quantile(0.5) as f64);
        let p99 = |c: &Cell| c.med(|r| r.histogram.value_at_quantile(0.99) as f64);
        let cpu = |c: &Cell| c.med(|r| r.server_cpu_us.unwrap_or(f64::NAN));
        let rss = |c: &Cell| {
            c.runs
                .iter()
                .filter_map(|r| r.server_rss_peak_kb)
                .max()
                .map_or("-".to_string(), |kb| format!("{} MiB", kb / 1024))
        };
        let note = |c: &Cell| match (c.ok().is_empty(), c.first_error()) {
            (true, Some(err)) => format!("n/a ({err})"),
            _ => fmt_num(tp(c)),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            case.name,
            note(k),
            note(e),
            ratio(tp(k), tp(e)),
            fmt_ms(p50(k)),
            fmt_ms(p50(e)),
            ratio(p50(k), p50(e)),
            fmt_ms(p99(k)),
            fmt_ms(p99(e)),
            ratio(p99(k), p99(e)),
            fmt_num(cpu(k)),
            fmt_num(cpu(e)),
            ratio(cpu(k), cpu(e)),
            rss(k),
            rss(e),
        );
    }
    t
}

/// The TLS rows: Keel against etcd, both over mutual TLS, with p99.9, and what TLS costs
/// Keel per request against the same row in plaintext.
fn render_tls(cases: &[Case], cells: &BTreeMap<(usize, &'static str), Cell>) -> String {
    render_twins(
        cases,
        cells,
        |c| c.tls,
        "TLS",
        "\nOver mutual TLS (both servers with the same certificates: ECDSA P-256, TLS 1.3, the \
         client's key exchange as --tls-kx says, X25519 by default; \
         new-conns: conns/s, each a full handshake + one Range + close), and Keel over TLS \
         against Keel in plaintext:\n\n",
    )
}

fn render_auth(cases: &[Case], cells: &BTreeMap<(usize, &'static str), Cell>) -> String {
    render_twins(
        cases,
        cells,
        |c| c.auth,
        "auth",
        "\nWith auth on (a user whose one role grants READWRITE on one key range holding the \
         bench's keys; every call carries its simple token; authenticate: logins/s, bcrypt \
         cost 10), and Keel with auth against Keel without:\n\n",
    )
}

/// The rows `pick` selects (TLS or auth twins), against etcd's and against Keel's plain
/// twin of each.
fn render_twins(
    cases: &[Case],
    cells: &BTreeMap<(usize, &'static str), Cell>,
    pick: fn(&Case) -> bool,
    what: &str,
    intro: &str,
) -> String {
    let mut t = String::from(intro);
    let _ = writeln!(
        t,
        "| scenario | Keel {what} req/s | etcd {what} req/s | ratio | Keel p50 / p99 / p99.9 | etcd p50 / p99 / p99.9 | Keel CPU µs/req | etcd CPU µs/req | ratio | Keel plain req/s | Keel {what} / plain req/s | Keel plain CPU µs/req | Keel {what} / plain CPU |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let empty = Cell::default();
    let tp = |c: &Cell| c.med(|r| r.throughput());
    let q = |c: &Cell, q: f64| c.med(|r| r.histogram.value_at_quantile(q) as f64);
    let cpu = |c: &Cell| c.med(|r| r.server_cpu_us.unwrap_or(f64::NAN));
    let lat = |c: &Cell| {
        format!(
            "{} / {} / {}",
            fmt_ms(q(c, 0.5)),
            fmt_ms(q(c, 0.99)),
            fmt_ms(q(c, 0.999))
        )
    };
    for (ci, case) in cases.iter().enumerate().filter(|(_, c)| pick(c)) {
        let k = cells.get(&(ci, "keel")).unwrap_or(&empty);
        let e = cells.get(&(ci, "etcd")).unwrap_or(&empty);
        let plain = cases
            .iter()
            .position(|c| !c.tls && !c.auth && c.name == case.base())
            .and_then(|pi| cells.get(&(pi, "keel")))
            .unwrap_or(&empty);
        let note = |c: &Cell| match (c.ok().is_empty(), c.first_error()) {
            (true, Some(err)) => format!("n/a ({err})"),
            _ => fmt_num(tp(c)),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            note(k),
            note(e),
            ratio(tp(k), tp(e)),
            lat(k),
            lat(e),
            fmt_num(cpu(k)),
            fmt_num(cpu(e)),
            ratio(cpu(k), cpu(e)),
            fmt_num(tp(plain)),
            ratio(tp(k), tp(plain)),
            fmt_num(cpu(plain)),
            ratio(cpu(k), cpu(plain)),
        );
    }
    t
}

/// Reads on Keel with every core against Keel on one core.
fn render_scaling(cases: &[Case], cells: &BTreeMap<(usize, &'static str), Cell>) -> String {
    let mut t = String::from(
        "\nReads, Keel on all cores (key-range shards on every core) against `--cores 1`:\n\n\
         | scenario | all cores req/s | 1 core req/s | ratio | all p99 | 1 core p99 | all CPU µs/req | 1 core CPU µs/req |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let empty = Cell::default();
    for (ci, case) in cases.iter().enumerate() {
        if !matches!(case.scenario, Scenario::Range { .. }) {
            continue;
        }
        let all = cells.get(&(ci, "keel")).unwrap_or(&empty);
        let one = cells.get(&(ci, "keel-1core")).unwrap_or(&empty);
        let tp = |c: &Cell| c.med(|r| r.throughput());
        let p99 = |c: &Cell| c.med(|r| r.histogram.value_at_quantile(0.99) as f64);
        let cpu = |c: &Cell| c.med(|r| r.server_cpu_us.unwrap_or(f64::NAN));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            fmt_num(tp(all)),
            fmt_num(tp(one)),
            ratio(tp(all), tp(one)),
            fmt_ms(p99(all)),
            fmt_ms(p99(one)),
            fmt_num(cpu(all)),
            fmt_num(cpu(one)),
        );
    }
    t
}

fn plot(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("plot.py");
    let has_matplotlib = |python: &str| {
        Command::new(python)
            .args(["-c", "import matplotlib"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_matplotlib("python3") {
        // PyPI is reachable from our machines; a failed install only skips the plots.
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "matplotlib"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    match Command::new("python3").arg(&script).arg(out).status() {
        Ok(s) if s.success() => {}
        _ => println!(
            "plots skipped: needs python3 with matplotlib (pip install matplotlib), then: \
             python3 {} {}",
            script.display(),
            out.display()
        ),
    }
}
