//! The load generator: etcd's `benchmark` scenarios over plain gRPC, so the same client
//! measures etcd and Keel.
//!
//! ```text
//! keel-bench put|range|txn-put|txn-mixed|lease-keepalive|lease-churn|watch|watch-latency
//!     --endpoints 127.0.0.1:2379[,...] --conns 1 --clients 1 --total 10000 | --duration 5
//!     [--rate R] [--key-size 8] [--val-size 256] [--key-space-size 100000]
//!     [--sequential-keys] [--consistency l|s] [--read-percent 80]
//!     [--watchers 100] [--streams 10] [--server-pid P[,P]] [--json] [--hdr-log FILE]
//!     [--keepalive-leases N [--keepalive-warmup]]
//! ```
//! - `lease-churn`: each request grants a lease with the minimum TTL and puts a key with
//!   it; the leases then expire on their own, so the server revokes as fast as it grants.
//! - `--keepalive-leases N` (any request scenario): N leases (TTL 600 s) are granted
//!   before the run and kept alive through it, each once per `KEEPALIVE_PERIOD`, as
//!   clientv3 would for a 60 s TTL; with `--keepalive-warmup` the measured run starts
//!   after one period (steady state); the report is the foreground scenario's.
//! - Closed loop (no `--rate`): each client sends its next request when the last returns:
//!   peak throughput.
//! - Open loop (`--rate R` requests/s over all clients): request *i* is due at
//!   `start + i/R`; its latency counts from when it was due, not when it was sent, so a
//!   stalled server is charged for the requests it delayed (coordinated omission corrected,
//!   as wrk2 and hdrhistogram intend).
//! - Output: throughput, p50/p90/p99/p99.9/max in µs, errors by kind, the generator's own
//!   CPU per request, and with `--server-pid` the server's CPU per request and peak RSS
//!   (`--server-pid P,P,P`: a cluster's members, summed).
//! - TLS (`--cacert CA --cert C --key K`, etcd's benchmark flags): every connection is
//!   mutual TLS, the client offering X25519 first as Go clients do (`--tls-kx p384`:
//!   rustls' own order, P-384 first). `new-conns` dials a connection per request; over TLS each is a full
//!   handshake (the client config has session resumption disabled, and a resumed
//!   handshake would count as an error).

use crate::grpc::{self, CallError, Conn, Stream};
use crate::util::{self, Flags};
use bytes::Bytes;
use hdrhistogram::Histogram;
use keel::pb::etcdserverpb as pb;
use keel::tls::stream::{Connector, Plain};
use keel::tls::Material;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Put,
    Range {
        serializable: bool,
    },
    TxnPut,
    TxnMixed {
        read_percent: u32,
    },
    LeaseKeepalive,
    LeaseChurn,
    Watch,
    /// Each request is a new connection: TCP connect, the TLS handshake (a full one: no
    /// session resumption) when the run is over TLS, h2, one Range of one key, close.
    NewConns,
    /// Each request is an Authenticate of the run's user (`LoadOptions::user`): a bcrypt
    /// check and a raft proposal on the server.
    Authenticate,
}

/// How often each background lease is kept alive (clientv3 sends every TTL/3; 20 s is
/// its period for a 60 s TTL).
pub const KEEPALIVE_PERIOD: Duration = Duration::from_secs(20);

impl Scenario {
    pub fn name(&self) -> String {
        match self {
            Scenario::Put => "put".into(),
            Scenario::Range { serializable } => {
                format!("range-{}", if *serializable { "s" } else { "l" })
            }
            Scenario::TxnPut => "txn-put".into(),
            Scenario::TxnMixed { read_percent } => format!("txn-mixed-{read_percent}"),
            Scenario::LeaseKeepalive => "lease-keepalive".into(),
            Scenario::LeaseChurn => "lease-churn".into(),
            Scenario::Watch => "watch".into(),
            Scenario::NewConns => "new-conns".into(),
            Scenario::Authenticate => "authenticate".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub endpoints: Vec<SocketAddr>,
    pub conns: usize,
    pub clients: usize,
    pub total: u64,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub sequential: bool,
    pub watchers: usize,
    pub streams: usize,
    /// Watch: watchers watch a prefix and writers put random keys under it.
    pub watch_prefix: bool,
    /// The server's processes (a cluster's members): CPU per request is their sum, peak
    /// RSS the sum of their peaks.
    pub server_pids: Vec<u32>,
    /// Stop the progress line (for nested use, e.g. `compare`).
    pub quiet: bool,
    /// Leases granted before the run and kept alive during it (0: none).
    pub keepalive_leases: usize,
    /// Keep them alive for one `KEEPALIVE_PERIOD` before the measured run starts.
    pub keepalive_warmup: bool,
    /// Range: keys each read covers (1: a point read; N: `[key, key + N)` of the key
    /// space, N keys of a filled one).
    pub range_keys: u64,
    /// TLS: the client's certificate, key and trusted CA (`crate::certs`); None: plaintext.
    pub tls: Option<Arc<Material>>,
    /// Auth: the token every call carries (`token` metadata), for a server with auth on.
    pub token: Option<String>,
    /// Auth: the user and password `Authenticate` logs in as.
    pub user: Option<(String, String)>,
}

impl LoadOptions {
    /// The benches' common load on one server (`pid` for its CPU): 64 closed-loop clients
    /// on 4 connections, 256-byte values, `key_space` keys of `key_size` bytes; with
    /// `fill`, every key once in key order, else random keys for `seconds`; point reads.
    pub fn c64(
        endpoint: SocketAddr,
        pid: u32,
        key_size: usize,
        key_space: u64,
        fill: bool,
        seconds: u64,
    ) -> LoadOptions {
        LoadOptions {
            endpoints: vec![endpoint],
            conns: 4,
            clients: 64,
            total: if fill { key_space } else { u64::MAX },
            duration: (!fill).then(|| Duration::from_secs(seconds)),
            rate: None,
            key_size,
            val_size: 256,
            key_space,
            sequential: fill,
            watchers: 0,
            streams: 1,
            watch_prefix: false,
            server_pids: vec![pid],
            quiet: true,
            keepalive_leases: 0,
            keepalive_warmup: false,
            range_keys: 1,
            tls: None,
            token: None,
            user: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub clients: usize,
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    pub client_cpu_us: f64,
    pub server_cpu_us: Option<f64>,
    pub server_rss_peak_kb: Option<u64>,
    /// Watch: events delivered (each counts as a request in `requests`).
    pub deliveries: u64,
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn print(&self) {
        let server = match (self.server_cpu_us, self.server_rss_peak_kb) {
            (Some(c), Some(r)) => format!(" | server cpu {c:.1} µs/req, peak rss {} MiB", r / 1024),
            _ => String::new(),
        };
        println!(
            "{} {} clients={} requests={} errors={} | {:.0} req/s | {} | client cpu {:.1} µs/req{server}",
            self.label,
            self.scenario,
            self.clients,
            self.requests,
            self.error_count(),
            self.throughput(),
            util::percentiles_us(&self.histogram),
            self.client_cpu_us,
        );
        if self.deliveries > 0 {
            println!("  watch deliveries: {}", self.deliveries);
        }
        for (kind, n) in &self.errors {
            println!("  error x{n}: {kind}");
        }
    }

    pub fn json(&self) -> String {
        let h = &self.histogram;
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        format!(
            "{{\"label\":{},\"scenario\":{},\"clients\":{},\"requests\":{},\"elapsed_s\":{:.3},\"throughput\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"client_cpu_us\":{:.2},\"server_cpu_us\":{},\"server_rss_peak_kb\":{},\"errors\":{{{}}}}}",
            json_str(&self.label),
            json_str(&self.scenario),
            self.clients,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            self.client_cpu_us,
            self.server_cpu_us.map_or("null".into(), |v| format!("{v:.2}")),
            self.server_rss_peak_kb.map_or("null".into(), |v| v.to_string()),
            errors.join(","),
        )
    }

    /// The latency distribution in the `.hgrm` text format (HdrHistogram's percentile
    /// output), which HdrHistogram's plotter and wrk2 tooling read.
    pub fn hgrm(&self) -> String {
        let h = &self.histogram;
        let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
        for v in h.iter_quantiles(10) {
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                1.0 / (1.0 - q)
            } else {
                f64::INFINITY
            };
            out.push_str(&format!(
                "{:12.3} {:14.12} {:10} {:14.2}\n",
                v.value_iterated_to() as f64 / 1000.0,
                q,
                v.count_since_last_iteration(),
                inv
            ));
        }
        out.push_str(&format!(
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]\n",
            h.mean() / 1000.0,
            h.stdev() / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        ));
        out
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// CPU time (user + system, all threads) of a process in µs, from /proc/PID/stat.
pub fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1_000_000.0 / 100.0) // USER_HZ = 100
}

/// `f` summed over the processes; None without processes or when one has gone.
fn servers_sum<T: std::iter::Sum<T>>(pids: &[u32], f: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

/// Peak resident set (VmHWM) of a process in KiB.
pub fn process_rss_peak_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Shared by the clients of one run.
struct Shared {
    opts: LoadOptions,
    scenario: Scenario,
    next: Cell<u64>,
    histogram: RefCell<Histogram<u64>>,
    errors: RefCell<BTreeMap<String, u64>>,
    start: Instant,
    deadline: Option<Instant>,
    value: Bytes,
    /// `NewConns` over TLS: a client config that never resumes a session.
    fresh: Option<Connector>,
}

impl Shared {
    /// The next request number, or None when the run is over.
    fn take(&self) -> Option<u64> {
        let i = self.next.get();
        if i >= self.opts.total || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        self.next.set(i + 1);
        Some(i)
    }

    fn key(&self, i: u64) -> Bytes {
        self.key_n(self.key_index(i))
    }

    /// The key `n` of the key space.
    fn key_n(&self, n: u64) -> Bytes {
        let mut k = format!("{n:0width$}", width = self.opts.key_size);
        k.truncate(self.opts.key_size.max(1));
        Bytes::from(k.into_bytes())
    }

    /// Where request `i`'s key lies in the key space.
    fn key_index(&self, i: u64) -> u64 {
        if self.opts.sequential {
            i % self.opts.key_space
        } else {
            // A fixed permutation-ish spread (SplitMix64), no RNG state to share.
            let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x ^ (x >> 31)) % self.opts.key_space
        }
    }

    fn record(&self, due: Instant, res: Result<(), CallError>) {
        match res {
            Ok(()) => {
                let us = due.elapsed().as_micros() as u64;
                let _ = self.histogram.borrow_mut().record(us.max(1));
            }
            Err(e) => *self.errors.borrow_mut().entry(e.to_string()).or_default() += 1,
        }
    }

    /// When request `i` is due: now in a closed loop, on the rate's schedule otherwise.
    async fn due(&self, i: u64) -> Instant {
        let Some(rate) = self.opts.rate else {
            return Instant::now();
        };
        let due = self.start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        due
    }
}

/// One client's connection-level state for the request scenarios.
struct Client {
    conn: Conn,
    lease: Option<(i64, Stream)>,
}

async fn one_request(s: &Shared, c: &mut Client, i: u64) -> Result<(), CallError> {
    match s.scenario {
        Scenario::Put => {
            let req = pb::PutRequest {
                key: s.key(i),
                value: s.value.clone(),
                ..Default::default()
            };
            grpc::unary::<_, pb::PutResponse>(&c.conn, "/etcdserverpb.KV/Put", &req).await?;
        }
        Scenario::Range { serializable } => {
            let n = s.key_index(i);
            let range_end = if s.opts.range_keys > 1 {
                s.key_n(n + s.opts.range_keys)
            } else {
                Bytes::new()
            };
            let req = pb::RangeRequest {
                key: s.key_n(n),
                range_end,
                serializable,
                ..Default::default()
            };
            grpc::unary::<_, pb::RangeResponse>(&c.conn, "/etcdserverpb.KV/Range", &req).await?;
        }
        Scenario::TxnPut => {
            let put = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: s.key(i),
                    value: s.value.clone(),
                    ..Default::default()
                })),
            };
            let req = pb::TxnRequest {
                success: vec![put],
                ..Default::default()
            };
            grpc::unary::<_, pb::TxnResponse>(&c.conn, "/etcdserverpb.KV/Txn", &req).await?;
        }
        Scenario::TxnMixed { read_percent } => {
            let read = (i.wrapping_mul(2_654_435_761) % 100) < read_percent as u64;
            let op = if read {
                pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: s.key(i),
                    ..Default::default()
                })
            } else {
                pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: s.key(i),
                    value: s.value.clone(),
                    ..Default::default()
                })
            };
            let req = pb::TxnRequest {
                success: vec![pb::RequestOp { request: Some(op) }],
                ..Default::default()
            };
            grpc::unary::<_, pb::TxnResponse>(&c.conn, "/etcdserverpb.KV/Txn", &req).await?;
        }
        Scenario::LeaseKeepalive => {
            if c.lease.is_none() {
                let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
                let r: pb::LeaseGrantResponse =
                    grpc::unary(&c.conn, "/etcdserverpb.Lease/LeaseGrant", &grant).await?;
                let stream = Stream::open(&c.conn, "/etcdserverpb.Lease/LeaseKeepAlive").await?;
                c.lease = Some((r.id, stream));
            }
            let (id, stream) = c.lease.as_mut().expect("lease set above");
            stream.send(&pb::LeaseKeepAliveRequest { id: *id })?;
            let _: pb::LeaseKeepAliveResponse = stream.recv().await?;
        }
        Scenario::LeaseChurn => {
            let grant = pb::LeaseGrantRequest { ttl: 1, id: 0 };
            let r: pb::LeaseGrantResponse =
                grpc::unary(&c.conn, "/etcdserverpb.Lease/LeaseGrant", &grant).await?;
            let mut key = b"keel-bench-churn/".to_vec();
            key.extend_from_slice(&s.key(i));
            let req = pb::PutRequest {
                key: key.into(),
                value: s.value.clone(),
                lease: r.id,
                ..Default::default()
            };
            grpc::unary::<_, pb::PutResponse>(&c.conn, "/etcdserverpb.KV/Put", &req).await?;
        }
        Scenario::Watch => unreachable!("watch runs its own loop"),
        Scenario::Authenticate => {
            let (name, password) = s.opts.user.clone().unwrap_or_default();
            let req = pb::AuthenticateRequest { name, password };
            grpc::unary::<_, pb::AuthenticateResponse>(
                &c.conn,
                "/etcdserverpb.Auth/Authenticate",
                &req,
            )
            .await?;
        }
        Scenario::NewConns => {
            let addr = s.opts.endpoints[i as usize % s.opts.endpoints.len()];
            let conn = new_conn(addr, s.fresh.as_ref()).await?;
            let req = pb::RangeRequest {
                key: s.key(i),
                serializable: true,
                ..Default::default()
            };
            grpc::unary::<_, pb::RangeResponse>(&conn, "/etcdserverpb.KV/Range", &req).await?;
            // Dropping the last handle ends the h2 connection: GOAWAY, close_notify, close.
        }
    }
    Ok(())
}

/// A connection of its own for `NewConns`: over TLS, a full handshake with `fresh`
/// (a resumed one is an error: the row measures full handshakes).
async fn new_conn(addr: SocketAddr, fresh: Option<&Connector>) -> Result<Conn, CallError> {
    let Some(connector) = fresh else {
        return grpc::connect(addr).await;
    };
    let tcp = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    tcp.set_nodelay(true).ok();
    let stream = connector
        .connect(&addr.ip().to_string(), Plain::Tcp(tcp))
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    if let keel::tls::stream::Stream::Client(tls) = &stream {
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            return Err(CallError::Transport("TLS session resumed".into()));
        }
    }
    grpc::handshake(stream).await
}

/// `material`'s client config with session resumption off: every handshake is full.
pub fn full_handshakes(material: &Material) -> Connector {
    let mut m = material.clone();
    let mut config = (*m.client).clone();
    config.resumption = rustls::client::Resumption::disabled();
    m.client = Arc::new(config);
    Connector::new(&m)
}

async fn connect_all(opts: &LoadOptions) -> Result<Vec<Conn>, CallError> {
    let connector = opts.tls.as_deref().map(Connector::new);
    let mut conns = Vec::new();
    for i in 0..opts.conns.max(1) {
        let addr = opts.endpoints[i % opts.endpoints.len()];
        let conn = grpc::connect_with(addr, connector.as_ref()).await?;
        conns.push(match &opts.token {
            Some(t) => conn.with_token(t),
            None => conn,
        });
    }
    Ok(conns)
}

/// Turns auth on at `addr` (etcd's steps: user root with role root, then auth enable) with
/// `user` holding READWRITE on `[key, range_end)`. Both servers get the same calls.
pub fn enable_auth(
    addr: SocketAddr,
    user: (&str, &str),
    key: &[u8],
    range_end: &[u8],
) -> Result<(), CallError> {
    let (user, password) = (user.0.to_string(), user.1.to_string());
    let (key, range_end) = (key.to_vec(), range_end.to_vec());
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await?;
        let call = |path: &'static str| format!("/etcdserverpb.Auth/{path}");
        let add_user = |name: String, password: String| {
            let req = pb::AuthUserAddRequest {
                name,
                password,
                ..Default::default()
            };
            let (conn, path) = (conn.clone(), call("UserAdd"));
            async move { grpc::unary::<_, pb::AuthUserAddResponse>(&conn, &path, &req).await }
        };
        let grant = |user: String, role: &'static str| {
            let req = pb::AuthUserGrantRoleRequest {
                user,
                role: role.into(),
            };
            let (conn, path) = (conn.clone(), call("UserGrantRole"));
            async move { grpc::unary::<_, pb::AuthUserGrantRoleResponse>(&conn, &path, &req).await }
        };
        add_user("root".into(), "bench-root".into()).await?;
        grant("root".into(), "root").await?;
        let _: pb::AuthRoleAddResponse = grpc::unary(
            &conn,
            &call("RoleAdd"),
            &pb::AuthRoleAddRequest {
                name: "bench".into(),
            },
        )
        .await?;
        let perm = keel::pb::authpb::Permission {
            perm_type: keel::pb::authpb::permission::Type::Readwrite as i32,
            key: key.into(),
            range_end: range_end.into(),
        };
        let _: pb::AuthRoleGrantPermissionResponse = grpc::unary(
            &conn,
            &call("RoleGrantPermission"),
            &pb::AuthRoleGrantPermissionRequest {
                name: "bench".into(),
                perm: Some(perm),
            },
        )
        .await?;
        add_user(user.clone(), password).await?;
        grant(user, "bench").await?;
        let _: pb::AuthEnableResponse =
            grpc::unary(&conn, &call("AuthEnable"), &pb::AuthEnableRequest {}).await?;
        Ok(())
    })
}

/// A token for `user` at `addr`.
pub fn authenticate(addr: SocketAddr, user: (&str, &str)) -> Result<String, CallError> {
    let req = pb::AuthenticateRequest {
        name: user.0.into(),
        password: user.1.into(),
    };
    keel::runtime::block_on(async move {
        let conn = grpc::connect(addr).await?;
        let r: pb::AuthenticateResponse =
            grpc::unary(&conn, "/etcdserverpb.Auth/Authenticate", &req).await?;
        Ok(r.token)
    })
}

fn progress(shared: &Rc<Shared>, quiet: bool) -> Option<glommio::task::JoinHandle<()>> {
    if quiet {
        return None;
    }
    let shared = shared.clone();
    Some(
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                let done = shared.histogram.borrow().len();
                let secs = shared.start.elapsed().as_secs_f64();
                let goal = match shared.deadline {
                    Some(d) => format!("{:.0}/{:.0} s", secs, (d - shared.start).as_secs_f64()),
                    None => format!("{done}/{}", shared.opts.total),
                };
                eprint!("\r  {goal}  {:.0} req/s   ", done as f64 / secs.max(1e-9));
                let _ = std::io::stderr().flush();
            }
        })
        .detach(),
    )
}

/// Runs one scenario to completion and reports.
pub fn run(scenario: Scenario, opts: &LoadOptions, label: &str) -> Report {
    let opts = opts.clone();
    let label = label.to_string();
    keel::runtime::block_on(async move {
        let conns = match connect_all(&opts).await {
            Ok(c) => c,
            Err(e) => return failed_report(scenario, &opts, &label, e),
        };
        let background = if opts.keepalive_leases > 0 {
            match grant_leases(&conns, opts.keepalive_leases).await {
                Ok(ids) => {
                    let b = keep_alive(&conns, ids);
                    // Steady state: every lease kept alive once before the measured run.
                    if opts.keepalive_warmup {
                        glommio::timer::sleep(KEEPALIVE_PERIOD).await;
                    }
                    Some(b)
                }
                Err(e) => return failed_report(scenario, &opts, &label, e),
            }
        } else {
            None
        };
        let cpu0 = process_cpu_us(std::process::id()).unwrap_or(0.0);
        let server0 = servers_sum(&opts.server_pids, process_cpu_us);
        let start = Instant::now();
        let shared = Rc::new(Shared {
            scenario,
            next: Cell::new(0),
            histogram: RefCell::new(util::histogram()),
            errors: RefCell::new(BTreeMap::new()),
            start,
            deadline: opts.duration.map(|d| start + d),
            value: Bytes::from(vec![b'v'; opts.val_size]),
            fresh: opts.tls.as_deref().map(full_handshakes),
            opts: opts.clone(),
        });
        let ticker = progress(&shared, opts.quiet);
        let deliveries = if scenario == Scenario::Watch {
            run_watch(&shared, &conns).await
        } else {
            run_requests(&shared, &conns).await;
            0
        };
        let elapsed = start.elapsed();
        let mut errors = shared.errors.borrow().clone();
        if let Some((tasks, failures)) = background {
            for t in tasks {
                t.cancel();
            }
            if failures.get() > 0 {
                errors.insert("background keep-alive".into(), failures.get());
            }
        }
        if let Some(t) = ticker {
            t.cancel();
            eprint!("\r{:60}\r", "");
        }
        let histogram = shared.histogram.borrow().clone();
        let requests = histogram.len();
        let attempts = (requests + errors.values().sum::<u64>()).max(1) as f64;
        let per = |total: f64| total / attempts;
        let cpu = process_cpu_us(std::process::id()).unwrap_or(0.0) - cpu0;
        let server_cpu_us = match (server0, servers_sum(&opts.server_pids, process_cpu_us)) {
            (Some(a), Some(b)) => Some(per(b - a)),
            _ => None,
        };
        Report {
            scenario: scenario.name(),
            label,
            clients: opts.clients,
            requests,
            errors,
            elapsed,
            histogram,
            client_cpu_us: per(cpu),
            server_cpu_us,
            server_rss_peak_kb: servers_sum(&opts.server_pids, process_rss_peak_kb),
            deliveries,
        }
    })
}

/// Grants `count` leases (TTL 600 s), 64 at a time.
async fn grant_leases(conns: &[Conn], count: usize) -> Result<Vec<i64>, CallError> {
    let ids = Rc::new(RefCell::new(Vec::with_capacity(count)));
    let next = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (conn, ids, next) = (conns[t % conns.len()].clone(), ids.clone(), next.clone());
        tasks.push(glommio::spawn_local(async move {
            while next.get() < count {
                next.set(next.get() + 1);
                let grant = pb::LeaseGrantRequest { ttl: 600, id: 0 };
                let r: pb::LeaseGrantResponse =
                    grpc::unary(&conn, "/etcdserverpb.Lease/LeaseGrant", &grant).await?;
                ids.borrow_mut().push(r.id);
            }
            Ok::<(), CallError>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    let ids = ids.borrow().clone();
    Ok(ids)
}

type Background = (Vec<glommio::task::JoinHandle<()>>, Rc<Cell<u64>>);

/// Keeps every lease alive once per `KEEPALIVE_PERIOD`, spread evenly over the period,
/// on 8 streams (clientv3 multiplexes a client's leases on one stream).
fn keep_alive(conns: &[Conn], ids: Vec<i64>) -> Background {
    const STREAMS: usize = 8;
    let failures = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let mine: Vec<i64> = ids.iter().skip(s).step_by(STREAMS).copied().collect();
        let (conn, failures) = (conns[s % conns.len()].clone(), failures.clone());
        tasks.push(
            glommio::spawn_local(async move {
                let Ok(mut stream) =
                    Stream::open(&conn, "/etcdserverpb.Lease/LeaseKeepAlive").await
                else {
                    failures.set(failures.get() + 1);
                    return;
                };
                let gap = KEEPALIVE_PERIOD / mine.len().max(1) as u32;
                let start = Instant::now();
                for (i, id) in mine.iter().cycle().enumerate() {
                    let due = start + gap * i as u32;
                    let now = Instant::now();
                    if due > now {
                        glommio::timer::sleep(due - now).await;
                    }
                    let ok = stream.send(&pb::LeaseKeepAliveRequest { id: *id }).is_ok()
                        && matches!(
                            stream.recv::<pb::LeaseKeepAliveResponse>().await,
                            Ok(r) if r.ttl > 0
                        );
                    if !ok {
                        failures.set(failures.get() + 1);
                        return;
                    }
                }
            })
            .detach(),
        );
    }
    (tasks, failures)
}

pub fn failed_report(
    scenario: Scenario,
    opts: &LoadOptions,
    label: &str,
    e: impl std::fmt::Display,
) -> Report {
    Report {
        scenario: scenario.name(),
        label: label.to_string(),
        clients: opts.clients,
        requests: 0,
        errors: BTreeMap::from([(e.to_string(), 1)]),
        elapsed: Duration::from_millis(1),
        histogram: util::histogram(),
        client_cpu_us: 0.0,
        server_cpu_us: None,
        server_rss_peak_kb: None,
        deliveries: 0,
    }
}

async fn run_requests(shared: &Rc<Shared>, conns: &[Conn]) {
    let mut tasks = Vec::new();
    for c in 0..shared.opts.clients.max(1) {
        let shared = shared.clone();
        let conn = conns[c % conns.len()].clone();
        tasks.push(glommio::spawn_local(async move {
            let mut client = Client { conn, lease: None };
            let mut failures_in_a_row = 0;
            while let Some(i) = shared.take() {
                let due = shared.due(i).await;
                let res = one_request(&shared, &mut client, i).await;
                failures_in_a_row = if res.is_ok() {
                    0
                } else {
                    failures_in_a_row + 1
                };
                if matches!(res, Err(CallError::Status(..))) {
                    client.lease = None; // a broken keepalive stream is reopened
                }
                shared.record(due, res);
                // A server that refuses everything (e.g. an unimplemented service) ends
                // this client instead of spinning through `total` errors.
                if failures_in_a_row >= 100 {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
}

/// Watch fan-out: `watchers` watches on one key (or, with `watch_prefix`, on a prefix)
/// spread over `streams` streams; `clients` writers put to that key (or to random keys
/// under the prefix), closed loop or at `rate`; each delivered event's value carries its
/// send time, so the histogram is commit-to-client delivery latency.
async fn run_watch(shared: &Rc<Shared>, conns: &[Conn]) -> u64 {
    const KEY: &[u8] = b"keel-bench-watch";
    const PREFIX: &[u8] = b"keel-bench-watch/";
    let opts = &shared.opts;
    let streams = opts.streams.clamp(1, opts.watchers.max(1));
    let delivered = Rc::new(Cell::new(0u64));
    let ready = Rc::new(Cell::new(0usize));
    let done = Rc::new(Cell::new(false));
    let mut watchers = Vec::new();
    for s in 0..streams {
        let per_stream = opts.watchers / streams + usize::from(s < opts.watchers % streams);
        let (shared, delivered, ready, done) = (
            shared.clone(),
            delivered.clone(),
            ready.clone(),
            done.clone(),
        );
        let conn = conns[s % conns.len()].clone();
        watchers.push(glommio::spawn_local(async move {
            let key = if shared.opts.watch_prefix {
                PREFIX
            } else {
                KEY
            };
            let res =
                watch_stream(&shared, &conn, key, per_stream, &delivered, &ready, &done).await;
            if let Err(e) = res {
                *shared.errors.borrow_mut().entry(e.to_string()).or_default() += 1;
                ready.set(ready.get() + per_stream); // don't hold the writers back
            }
        }));
    }
    let wait_until = Instant::now() + Duration::from_secs(30);
    while ready.get() < opts.watchers && Instant::now() < wait_until {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if !shared.errors.borrow().is_empty() {
        done.set(true);
        return 0;
    }
    // Writers.
    let mut writers = Vec::new();
    for c in 0..opts.clients.max(1) {
        let shared = shared.clone();
        let conn = conns[c % conns.len()].clone();
        writers.push(glommio::spawn_local(async move {
            while let Some(i) = shared.take() {
                shared.due(i).await;
                let key = if shared.opts.watch_prefix {
                    let mut k = PREFIX.to_vec();
                    k.extend_from_slice(format!("{:08}", i % shared.opts.key_space).as_bytes());
                    Bytes::from(k)
                } else {
                    Bytes::from_static(KEY)
                };
                let req = pb::PutRequest {
                    key,
                    value: grpc::stamped_value(shared.opts.val_size),
                    ..Default::default()
                };
                if let Err(e) =
                    grpc::unary::<_, pb::PutResponse>(&conn, "/etcdserverpb.KV/Put", &req).await
                {
                    *shared
                        .errors
                        .borrow_mut()
                        .entry(format!("put: {e}"))
                        .or_default() += 1;
                }
            }
        }));
    }
    for w in writers {
        w.await;
    }
    // Wait (bounded) for the last deliveries.
    let puts = shared.next.get();
    let expected = puts * opts.watchers as u64;
    let until = Instant::now() + Duration::from_secs(10);
    while delivered.get() < expected && Instant::now() < until {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    done.set(true);
    for w in watchers {
        w.cancel().await;
    }
    if delivered.get() < expected {
        *shared
            .errors
            .borrow_mut()
            .entry("deliveries missing after 10 s".into())
            .or_default() += expected - delivered.get();
    }
    delivered.get()
}

async fn watch_stream(
    shared: &Shared,
    conn: &Conn,
    key: &'static [u8],
    watches: usize,
    delivered: &Cell<u64>,
    ready: &Cell<usize>,
    done: &Cell<bool>,
) -> Result<(), CallError> {
    let mut stream = Stream::open(conn, "/etcdserverpb.Watch/Watch").await?;
    for _ in 0..watches {
        stream.send(&pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: Bytes::from_static(key),
                    range_end: if shared.opts.watch_prefix {
                        prefix_end(key)
                    } else {
                        Bytes::new()
                    },
                    ..Default::default()
                },
            )),
        })?;
    }
    while !done.get() {
        let r: pb::WatchResponse = stream.recv().await?;
        if r.created {
            ready.set(ready.get() + 1);
        }
        for ev in &r.events {
            if let Some(kv) = &ev.kv {
                let _ = shared
                    .histogram
                    .borrow_mut()
                    .record(grpc::age_us(&kv.value).max(1));
                delivered.set(delivered.get() + 1);
            }
        }
    }
    Ok(())
}

/// etcd's prefix range end: the prefix with its last byte incremented.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(&[0])
}

pub fn options_from(flags: &Flags) -> LoadOptions {
    let endpoints = flags
        .str("endpoints", &flags.str("endpoint", "127.0.0.1:2379"))
        .split(',')
        .map(|e| {
            e.trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .parse()
                .unwrap_or_else(|_| panic!("--endpoints: {e} is not host:port"))
        })
        .collect();
    let duration = match flags.u64("duration", 0) {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let rate = match flags.u64("rate", 0) {
        0 => None,
        r => Some(r as f64),
    };
    LoadOptions {
        endpoints,
        conns: flags.u64("conns", 1) as usize,
        clients: flags.u64("clients", 1) as usize,
        total: flags.u64("total", if duration.is_some() { u64::MAX } else { 10_000 }),
        duration,
        rate,
        key_size: flags.u64("key-size", 8) as usize,
        val_size: flags.u64("val-size", 256) as usize,
        key_space: flags.u64("key-space-size", 100_000).max(1),
        sequential: flags.has("sequential-keys"),
        watchers: flags.u64("watchers", 100) as usize,
        streams: flags.u64("streams", 10) as usize,
        watch_prefix: flags.has("prefix"),
        server_pids: flags
            .opt("server-pid")
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim().parse().expect("--server-pid: PID[,PID]"))
                    .collect()
            })
            .unwrap_or_default(),
        quiet: flags.has("json"),
        keepalive_leases: flags.u64("keepalive-leases", 0) as usize,
        keepalive_warmup: flags.has("keepalive-warmup"),
        range_keys: flags.u64("range-keys", 1).max(1),
        tls: flags.opt("cert").map(|cert| {
            let (key, ca) = (flags.str("key", ""), flags.str("cacert", ""));
            let kx = crate::certs::Kx::parse(&flags.str("tls-kx", "x25519"));
            crate::certs::client_material(cert.as_ref(), key.as_ref(), ca.as_ref(), kx)
                .unwrap_or_else(|e| panic!("--cert/--key/--cacert: {e}"))
        }),
        token: None,
        // --user name:password, as etcd's benchmark: every call carries its token.
        user: flags.opt("user").map(|u| match u.split_once(':') {
            Some((n, p)) => (n.to_string(), p.to_string()),
            None => (u.to_string(), String::new()),
        }),
    }
}

/// `keel-bench <scenario> ...`
pub fn main(cmd: &str, flags: &Flags) {
    let scenario = match cmd {
        "put" => Scenario::Put,
        "range" => Scenario::Range {
            serializable: flags.str("consistency", "l") == "s",
        },
        "txn-put" => Scenario::TxnPut,
        "txn-mixed" => Scenario::TxnMixed {
            read_percent: flags.u64("read-percent", 80) as u32,
        },
        "lease-keepalive" => Scenario::LeaseKeepalive,
        "lease-churn" => Scenario::LeaseChurn,
        "watch" | "watch-latency" => Scenario::Watch,
        "new-conns" => Scenario::NewConns,
        "authenticate" => Scenario::Authenticate,
        _ => unreachable!("dispatched by main"),
    };
    let mut opts = options_from(flags);
    if let (Some((n, p)), false) = (&opts.user, scenario == Scenario::Authenticate) {
        let token = authenticate(opts.endpoints[0], (n, p))
            .unwrap_or_else(|e| panic!("--user {n}: authenticate: {e}"));
        opts.token = Some(token);
    }
    if cmd == "watch-latency" && opts.rate.is_none() {
        opts.rate = Some(100.0); // etcd's watch-latency puts at a fixed rate
    }
    if matches!(scenario, Scenario::Range { .. }) && flags.has("prefill") {
        prefill(&opts);
    }
    let report = run(scenario, &opts, &flags.str("label", "endpoint"));
    if flags.has("json") {
        println!("{}", report.json());
    } else {
        report.print();
    }
    if let Some(path) = flags.opt("hdr-log") {
        std::fs::write(&path, report.hgrm()).expect("write --hdr-log");
    }
}

/// Puts every key of the key space once (so reads find data).
pub fn prefill(opts: &LoadOptions) {
    let mut o = opts.clone();
    o.total = o.key_space;
    o.duration = None;
    o.rate = None;
    o.sequential = true;
    o.clients = o.clients.max(64);
    o.quiet = true;
    o.server_pids = Vec::new();
    let r = run(Scenario::Put, &o, "prefill");
    assert_eq!(r.error_count(), 0, "prefill failed: {:?}", r.errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(sequential: bool, rate: Option<f64>) -> Shared {
        let opts = LoadOptions {
            endpoints: vec!["127.0.0.1:1".parse().unwrap()],
            conns: 1,
            clients: 1,
            total: 10,
            duration: None,
            rate,
            key_size: 6,
            val_size: 4,
            key_space: 50,
            sequential,
            watchers: 0,
            streams: 1,
            watch_prefix: false,
            server_pids: Vec::new(),
            quiet: true,
            keepalive_leases: 0,
            keepalive_warmup: false,
            range_keys: 1,
            tls: None,
            token: None,
            user: None,
        };
        Shared {
            opts,
            scenario: Scenario::Put,
            next: Cell::new(0),
            histogram: RefCell::new(util::histogram()),
            errors: RefCell::new(BTreeMap::new()),
            start: Instant::now(),
            deadline: None,
            value: Bytes::new(),
            fresh: None,
        }
    }

    #[test]
    fn keys_stay_in_the_key_space_with_the_asked_size() {
        let s = shared(false, None);
        let keys: std::collections::HashSet<Bytes> = (0..5000).map(|i| s.key(i)).collect();
        assert!(
            keys.len() > 45 && keys.len() <= 50,
            "{} distinct keys",
            keys.len()
        );
        assert!(keys.iter().all(|k| k.len() == 6));
        let s = shared(true, None);
        assert_eq!(s.key(51), Bytes::from_static(b"000001"));
    }

    #[test]
    fn total_bounds_the_run_and_errors_are_counted_by_kind() {
        let s = shared(true, None);
        let taken: Vec<u64> = std::iter::from_fn(|| s.take()).collect();
        assert_eq!(taken, (0..10).collect::<Vec<_>>());
        s.record(
            Instant::now(),
            Err(CallError::Status(12, "unknown service x".into())),
        );
        s.record(
            Instant::now(),
            Err(CallError::Status(12, "unknown service x".into())),
        );
        s.record(Instant::now(), Ok(()));
        assert_eq!(s.errors.borrow().values().sum::<u64>(), 2);
        assert_eq!(s.histogram.borrow().len(), 1);
    }

    #[test]
    fn open_loop_latency_counts_from_the_due_time() {
        // Request 5 at 1000/s is due 5 ms after the start: a late send is charged from then.
        let s = shared(true, Some(1000.0));
        keel::runtime::block_on(async move {
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let due = s.due(5).await;
            assert_eq!(due, s.start + Duration::from_millis(5));
            s.record(due, Ok(()));
            assert!(
                s.histogram.borrow().max() >= 15_000,
                "coordinated omission corrected"
            );
        });
    }

    /// Over TLS, `new-conns` dials with `full_handshakes`: never resumed, where the
    /// ordinary client config would resume the second connection to the same server.
    #[test]
    fn new_connections_do_full_handshakes() {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("keel-bench-resume-{}", std::process::id()));
        let certs = crate::certs::Certs::make(&dir).unwrap();
        let client = certs.client_material(crate::certs::Kx::X25519).unwrap();
        let server_info = keel::tls::TlsInfo {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            trusted_ca_file: certs.ca.clone(),
            client_cert_auth: true,
            ..Default::default()
        };
        let server = server_info.load().unwrap();
        let kinds = keel::runtime::block_on(async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = keel::tls::stream::Acceptor::new(server);
            glommio::spawn_local(async move {
                loop {
                    let tcp = listener.accept().await.unwrap();
                    let mut s = acceptor.accept(Plain::Tcp(tcp)).await.unwrap().stream;
                    // A byte after the handshake, so the client reads (and keeps) the
                    // session tickets sent before it; then wait for the client's close.
                    s.write_all(b"x").await.unwrap();
                    s.flush().await.unwrap();
                    let mut buf = [0u8; 64];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                }
            })
            .detach();
            let mut kinds = Vec::new();
            for connector in [full_handshakes(&client), Connector::new(&client)] {
                for _ in 0..2 {
                    let tcp = glommio::net::TcpStream::connect(addr).await.unwrap();
                    let mut s = connector
                        .connect("127.0.0.1", Plain::Tcp(tcp))
                        .await
                        .unwrap();
                    let mut byte = [0u8; 1];
                    s.read_exact(&mut byte).await.unwrap();
                    let keel::tls::stream::Stream::Client(tls) = &s else {
                        panic!("not a TLS client stream")
                    };
                    kinds.push(tls.get_ref().1.handshake_kind());
                    s.close().await.unwrap();
                }
            }
            kinds
        });
        let _ = std::fs::remove_dir_all(&dir);
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(
            kinds,
            vec![Some(Full), Some(Full), Some(Full), Some(Resumed)]
        );
    }

    #[test]
    fn json_and_hgrm_outputs_are_well_formed() {
        let mut h = util::histogram();
        for v in [100, 200, 300, 10_000] {
            h.record(v).unwrap();
        }
        let r = Report {
            scenario: "put".into(),
            label: "ke\"el".into(),
            clients: 1,
            requests: 4,
            errors: BTreeMap::from([("a\\b".to_string(), 1)]),
            elapsed: Duration::from_secs(1),
            histogram: h,
            client_cpu_us: 1.0,
            server_cpu_us: None,
            server_rss_peak_kb: None,
            deliveries: 0,
        };
        let j = r.json();
        assert!(j.contains("\"label\":\"ke\\\"el\""), "{j}");
        assert!(j.contains("\"errors\":{\"a\\\\b\":1}"), "{j}");
        assert!(j.contains("\"server_cpu_us\":null"));
        let g = r.hgrm();
        assert!(g.lines().any(|l| l.trim_start().starts_with("10.")), "{g}");
        assert!(g.contains("Total count    =            4"), "{g}");
    }
}

/// Current resident set (VmRSS) of a process in KiB.
pub fn process_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What `watchers` idle watchers on `streams` streams cost the server in memory.
#[derive(Clone, Copy, Debug)]
pub struct WatchMemory {
    pub watchers: usize,
    pub streams: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
}

impl WatchMemory {
    /// Resident bytes per watcher, streams included.
    pub fn bytes_per_watcher(&self) -> f64 {
        (self.rss_after_kb as f64 - self.rss_before_kb as f64) * 1024.0 / self.watchers as f64
    }
}

/// Opens `streams` Watch streams with `watchers` watchers in all (each on its own key
/// under one prefix) and measures the server's resident set before and after, with the
/// streams still open.
pub fn watch_memory(opts: &LoadOptions, server_pid: u32) -> Result<WatchMemory, String> {
    let opts = opts.clone();
    keel::runtime::block_on(async move {
        let conns = connect_all(&opts).await.map_err(|e| e.to_string())?;
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let before = process_rss_kb(server_pid).ok_or("no /proc rss")?;
        let streams = opts.streams.clamp(1, opts.watchers.max(1));
        let mut open = Vec::new();
        for s in 0..streams {
            let per = opts.watchers / streams + usize::from(s < opts.watchers % streams);
            let conn = &conns[s % conns.len()];
            let mut stream = Stream::open(conn, "/etcdserverpb.Watch/Watch")
                .await
                .map_err(|e| e.to_string())?;
            for w in 0..per {
                stream
                    .send(&pb::WatchRequest {
                        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                            pb::WatchCreateRequest {
                                key: Bytes::from(format!("keel-bench-mem/{s:05}/{w:05}")),
                                ..Default::default()
                            },
                        )),
                    })
                    .map_err(|e| e.to_string())?;
            }
            let mut created = 0;
            while created < per {
                let r: pb::WatchResponse = stream.recv().await.map_err(|e| e.to_string())?;
                created += usize::from(r.created);
            }
            open.push(stream);
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
        let after = process_rss_kb(server_pid).ok_or("no /proc rss")?;
        drop(open);
        Ok(WatchMemory {
            watchers: opts.watchers,
            streams,
            rss_before_kb: before,
            rss_after_kb: after,
        })
    })
}
