//! What `/metrics` shows: etcd's metric names, labels and meanings, plus Keel's own
//! microsecond-resolution stage histograms (`keel_*`).
//!
//! Counting is per core and shares nothing: each executor thread has its own [`Local`]
//! (plain `Cell`s: no atomics, no cache line another core writes), so a count is an add
//! on this core's memory. A scrape asks every core for a [`Snapshot`] of its cells (a
//! `CoreMsg`, see `node`), sums them and renders the sum with the `prometheus` crate's
//! text encoder ([`render`]). Gauges are set by the one core that owns what they measure
//! (the raft core sets its own once per loop turn; each core its watchers), so the sum
//! of a gauge over the cores is its value.
//!
//! Runs on: every core (counting, snapshots); the scraping connection's core (render).

pub mod process;

use prometheus::proto::{self, MetricFamily, MetricType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Counters: only ever grow. Each is one Prometheus counter without labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    MvccPut,
    MvccDelete,
    MvccRange,
    MvccTxn,
    LeaderChanges,
    ProposalsFailed,
    SlowApply,
    SlowReadIndexes,
    ReadIndexesFailed,
    HealthSuccess,
    HealthFailures,
    WatchEvents,
    ClientGrpcSentBytes,
    ClientGrpcReceivedBytes,
    ClientRequestsUnary,
    ClientRequestsStream,
    LeaseExpired,
    WalWriteBytes,
    CompactionKeys,
    ShardMoves,
    ShardMovedKeys,
    ShardRerouted,
}

const COUNTERS: [(Counter, &str, &str); 22] = [
    (
        Counter::MvccPut,
        "etcd_mvcc_put_total",
        "Puts applied to the store (a txn's puts each count).",
    ),
    (
        Counter::MvccDelete,
        "etcd_mvcc_delete_total",
        "Delete ranges applied to the store.",
    ),
    (
        Counter::MvccRange,
        "etcd_mvcc_range_total",
        "Ranges served.",
    ),
    (
        Counter::MvccTxn,
        "etcd_mvcc_txn_total",
        "Transactions of more than one operation applied.",
    ),
    (
        Counter::LeaderChanges,
        "etcd_server_leader_changes_seen_total",
        "Leader changes this member has seen.",
    ),
    (
        Counter::ProposalsFailed,
        "etcd_server_proposals_failed_total",
        "Proposals that failed (no leader, timeout, leader change).",
    ),
    (
        Counter::SlowApply,
        "etcd_server_slow_apply_total",
        "Rounds of applied entries that took longer than 100 ms.",
    ),
    (
        Counter::SlowReadIndexes,
        "etcd_server_slow_read_indexes_total",
        "ReadIndex requests that took longer than the request timeout.",
    ),
    (
        Counter::ReadIndexesFailed,
        "etcd_server_read_indexes_failed_total",
        "ReadIndex requests that failed.",
    ),
    (
        Counter::HealthSuccess,
        "etcd_server_health_success",
        "Health checks that answered healthy.",
    ),
    (
        Counter::HealthFailures,
        "etcd_server_health_failures",
        "Health checks that answered unhealthy.",
    ),
    (
        Counter::WatchEvents,
        "etcd_debugging_mvcc_events_total",
        "Events sent to watchers.",
    ),
    (
        Counter::ClientGrpcSentBytes,
        "etcd_network_client_grpc_sent_bytes_total",
        "Bytes of gRPC messages sent to clients.",
    ),
    (
        Counter::ClientGrpcReceivedBytes,
        "etcd_network_client_grpc_received_bytes_total",
        "Bytes of gRPC messages received from clients.",
    ),
    (Counter::ClientRequestsUnary, "", ""),
    (Counter::ClientRequestsStream, "", ""),
    (
        Counter::LeaseExpired,
        "etcd_debugging_server_lease_expired_total",
        "Leases revoked because they expired.",
    ),
    (
        Counter::WalWriteBytes,
        "etcd_disk_wal_write_bytes_total",
        "Bytes written to the WAL.",
    ),
    (
        Counter::CompactionKeys,
        "etcd_debugging_mvcc_db_compaction_keys_total",
        "Revision records the compactions' sweeps deleted.",
    ),
    (
        Counter::ShardMoves,
        "keel_shard_moves_total",
        "Rebalance steps that moved keys from one core's shard to another's.",
    ),
    (
        Counter::ShardMovedKeys,
        "keel_shard_moved_keys_total",
        "Keys (with their history) the rebalance steps moved between shards.",
    ),
    (
        Counter::ShardRerouted,
        "keel_shard_rerouted_reads_total",
        "Read parts routed again because a rebalance step changed their shard meanwhile.",
    ),
];

/// Gauges: a value set by the core that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    HasLeader,
    IsLeader,
    IsLearner,
    ProposalsCommitted,
    ProposalsApplied,
    ProposalsPending,
    QuotaBackendBytes,
    DbTotalBytes,
    DbInUseBytes,
    Keys,
    WatchStreams,
    Watchers,
    SlowWatchers,
    CurrentRevision,
    CompactRevision,
    DefragInflight,
    SnapshotApplyInProgress,
    RaftLogBytes,
}

const GAUGES: [(Gauge, &str, &str); 18] = [
    (
        Gauge::HasLeader,
        "etcd_server_has_leader",
        "1 if this member knows a leader, else 0.",
    ),
    (
        Gauge::IsLeader,
        "etcd_server_is_leader",
        "1 if this member is the leader, else 0.",
    ),
    (
        Gauge::IsLearner,
        "etcd_server_is_learner",
        "1 if this member is a learner, else 0.",
    ),
    (
        Gauge::ProposalsCommitted,
        "etcd_server_proposals_committed_total",
        "The raft index committed.",
    ),
    (
        Gauge::ProposalsApplied,
        "etcd_server_proposals_applied_total",
        "The raft index applied.",
    ),
    (
        Gauge::ProposalsPending,
        "etcd_server_proposals_pending",
        "This member's proposals waiting to be applied.",
    ),
    (
        Gauge::QuotaBackendBytes,
        "etcd_server_quota_backend_bytes",
        "The db size above which writes are refused (--quota-backend-bytes).",
    ),
    (
        Gauge::DbTotalBytes,
        "etcd_mvcc_db_total_size_in_bytes",
        "The db's size: every page allocated, free or not.",
    ),
    (
        Gauge::DbInUseBytes,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "The db's pages in use: what a defrag would shrink it to.",
    ),
    (
        Gauge::Keys,
        "etcd_debugging_mvcc_keys_total",
        "Keys in the store.",
    ),
    (
        Gauge::WatchStreams,
        "etcd_debugging_mvcc_watch_stream_total",
        "Open watch streams.",
    ),
    (
        Gauge::Watchers,
        "etcd_debugging_mvcc_watcher_total",
        "Watchers.",
    ),
    (
        Gauge::SlowWatchers,
        "etcd_debugging_mvcc_slow_watcher_total",
        "Watchers behind the store (catching up).",
    ),
    (
        Gauge::CurrentRevision,
        "etcd_debugging_mvcc_current_revision",
        "The store's revision.",
    ),
    (
        Gauge::CompactRevision,
        "etcd_debugging_mvcc_compact_revision",
        "The store's compaction revision.",
    ),
    (
        Gauge::DefragInflight,
        "etcd_disk_defrag_inflight",
        "1 while a defragmentation runs.",
    ),
    (
        Gauge::SnapshotApplyInProgress,
        "etcd_server_snapshot_apply_in_progress_total",
        "1 while a snapshot from the leader is being installed.",
    ),
    (
        Gauge::RaftLogBytes,
        "keel_raft_log_bytes",
        "Bytes of the raft log held in memory until the next snapshot (--snapshot-bytes).",
    ),
];

/// Histograms. etcd's keep etcd's bucket bounds (so dashboards read them the same);
/// Keel's `keel_stage_duration_seconds` has 1-2-5 bounds from 1 µs, where etcd's begin
/// at 1 ms, coarser than a whole local write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hist {
    WalFsync,
    BackendCommit,
    Defrag,
    SnapshotSend,
    /// Decoding a request message (the connection's core).
    StageDecode,
    /// A request's trip to the raft core and back: queue, propose, commit, apply, reply.
    StageRaft,
    /// The WAL's write and fdatasync of one batch (the raft core).
    StageWalSync,
    /// Applying one round of committed entries (the raft core).
    StageApply,
    /// A db commit (the raft core).
    StageDbCommit,
    /// A whole unary call, from its message to its reply queued (the connection's core).
    StageUnary,
}

const ETCD_DISK: Bounds = Bounds::Exponential(0.001, 2.0, 14);
const MICROS: Bounds = Bounds::OneTwoFive(1e-6, 21);

#[derive(Clone, Copy, Debug)]
enum Bounds {
    /// `start`, `start·factor`, … (`count` bounds), as Go's `ExponentialBuckets`.
    Exponential(f64, f64, usize),
    /// `start`, 2·start, 5·start, 10·start, … (`count` bounds).
    OneTwoFive(f64, usize),
}

impl Bounds {
    fn values(self) -> Vec<f64> {
        match self {
            Bounds::Exponential(start, factor, n) => {
                (0..n).map(|i| start * factor.powi(i as i32)).collect()
            }
            // Parsed from decimal text, so each bound prints as written (2e-5, not
            // 0.000019999999999999998).
            Bounds::OneTwoFive(start, n) => (0..n)
                .map(|i| {
                    let exp = start.log10().round() as i32 + (i / 3) as i32;
                    format!("{}e{exp}", [1, 2, 5][i % 3])
                        .parse()
                        .unwrap_or(f64::MAX)
                })
                .collect(),
        }
    }
}

/// Name, stage label (for `keel_stage_duration_seconds`), help, bounds.
const HISTS: [(Hist, &str, &str, &str, Bounds); 10] = [
    (
        Hist::WalFsync,
        "etcd_disk_wal_fsync_duration_seconds",
        "",
        "WAL syncs (write and fdatasync of one batch).",
        ETCD_DISK,
    ),
    (
        Hist::BackendCommit,
        "etcd_disk_backend_commit_duration_seconds",
        "",
        "db commits.",
        ETCD_DISK,
    ),
    (
        Hist::Defrag,
        "etcd_disk_backend_defrag_duration_seconds",
        "",
        "Defragmentations.",
        Bounds::Exponential(0.1, 2.0, 13),
    ),
    (
        Hist::SnapshotSend,
        "etcd_disk_backend_snapshot_duration_seconds",
        "",
        "Snapshot streams to clients.",
        Bounds::Exponential(0.01, 2.0, 17),
    ),
    (Hist::StageDecode, STAGE, "decode", "", MICROS),
    (Hist::StageRaft, STAGE, "raft_round_trip", "", MICROS),
    (Hist::StageWalSync, STAGE, "wal_sync", "", MICROS),
    (Hist::StageApply, STAGE, "apply", "", MICROS),
    (Hist::StageDbCommit, STAGE, "db_commit", "", MICROS),
    (Hist::StageUnary, STAGE, "unary_call", "", MICROS),
];
const STAGE: &str = "keel_stage_duration_seconds";
const STAGE_HELP: &str = "Time of each stage of a request, at microsecond resolution: decode \
    (request message), raft_round_trip (connection core to raft core and back: propose, \
    commit, apply), wal_sync (write and fdatasync of a WAL batch), apply (one round of \
    committed entries), db_commit, unary_call (whole unary call on its core).";

/// The bucket counts and sum of one histogram on one core.
#[derive(Clone, Debug, Default)]
pub struct HistCounts {
    /// Per bucket (not cumulative), the last one past every bound (+Inf).
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistCounts {
    fn new(bounds: usize) -> HistCounts {
        HistCounts {
            counts: vec![0; bounds + 1],
            sum_seconds: 0.0,
        }
    }

    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        let i = bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum_seconds += seconds;
    }

    fn absorb(&mut self, other: &HistCounts) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }
}

/// gRPC's status code names as grpc-go prints them (`codes.Code.String()`), by number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// `--metrics extensive`: render `grpc_server_handling_seconds` too (etcd's switch for
/// go-grpc-prometheus's handling-time histogram). Set once at boot.
static EXTENSIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_extensive(on: bool) {
    EXTENSIVE.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn extensive() -> bool {
    EXTENSIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// go-grpc-prometheus's handling-time buckets (Prometheus' default buckets).
const HANDLING_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The counts of one gRPC method on one core (go-grpc-prometheus's server metrics).
#[derive(Debug, Default)]
pub struct GrpcCells {
    started: Cell<u64>,
    handled: [Cell<u64>; 17],
    received: Cell<u64>,
    sent: Cell<u64>,
    /// Handling time, from the call's headers to its status.
    handling: RefCell<HistCounts>,
    /// A streaming method (`method_type` is not `unary`), found once at registration.
    stream: bool,
}

impl GrpcCells {
    pub fn received(&self, bytes: usize) {
        self.received.set(self.received.get() + 1);
        add(Counter::ClientGrpcReceivedBytes, bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.set(self.sent.get() + 1);
        add(Counter::ClientGrpcSentBytes, bytes as u64);
    }

    /// The call ended with gRPC code `code` (out of range: Unknown) after `took`.
    pub fn handled(&self, code: u32, took: Duration) {
        let c = &self.handled[if (code as usize) < 17 {
            code as usize
        } else {
            2
        }];
        c.set(c.get() + 1);
        let mut h = self.handling.borrow_mut();
        if h.counts.is_empty() {
            *h = HistCounts::new(HANDLING_BOUNDS.len());
        }
        h.observe(HANDLING_BOUNDS, took.as_secs_f64());
    }
}

/// A method's counts, summed or not.
#[derive(Clone, Debug, Default)]
pub struct GrpcCounts {
    pub started: u64,
    pub handled: [u64; 17],
    pub received: u64,
    pub sent: u64,
    pub handling: HistCounts,
}

/// Per-peer counts on one core.
#[derive(Clone, Debug, Default)]
pub struct PeerCounts {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_failures: u64,
    pub rtt: HistCounts,
}

const PEER_RTT: Bounds = Bounds::Exponential(0.0001, 2.0, 16);

/// One core's cells.
struct Local {
    counters: [Cell<u64>; COUNTERS.len()],
    gauges: [Cell<f64>; GAUGES.len()],
    hists: RefCell<Vec<HistCounts>>,
    bounds: Vec<Vec<f64>>,
    grpc: RefCell<HashMap<Box<str>, Rc<GrpcCells>>>,
    peers: RefCell<HashMap<u64, PeerCounts>>,
    peer_rtt_bounds: Vec<f64>,
    /// Heartbeats sent and not yet answered, by peer (the raft core's).
    heartbeats: RefCell<HashMap<u64, std::time::Instant>>,
}

impl Local {
    fn new() -> Local {
        let bounds: Vec<Vec<f64>> = HISTS.iter().map(|h| h.4.values()).collect();
        Local {
            counters: Default::default(),
            gauges: Default::default(),
            hists: RefCell::new(bounds.iter().map(|b| HistCounts::new(b.len())).collect()),
            bounds,
            grpc: RefCell::new(HashMap::new()),
            peers: RefCell::new(HashMap::new()),
            peer_rtt_bounds: PEER_RTT.values(),
            heartbeats: RefCell::new(HashMap::new()),
        }
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

pub fn inc(c: Counter) {
    add(c, 1);
}

pub fn add(c: Counter, n: u64) {
    LOCAL.with(|l| {
        let cell = &l.counters[c as usize];
        cell.set(cell.get() + n);
    });
}

pub fn set(g: Gauge, v: f64) {
    LOCAL.with(|l| l.gauges[g as usize].set(v));
}

pub fn observe(h: Hist, d: Duration) {
    LOCAL
        .with(|l| l.hists.borrow_mut()[h as usize].observe(&l.bounds[h as usize], d.as_secs_f64()));
}

/// Times `f` into `h`.
pub fn time<T>(h: Hist, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let r = f();
    observe(h, t.elapsed());
    r
}

/// Declares a gRPC method served on this core (so its counts show as 0 before its first
/// call, as go-grpc-prometheus pre-registers every method).
pub fn grpc_route(path: &str) {
    grpc_method(path);
}

/// The cells of a gRPC method on this core, counting a call started; `None` for a path
/// that is no route (unknown methods are not counted, as with grpc-go).
pub fn grpc_started(path: &str) -> Option<Rc<GrpcCells>> {
    let cells = LOCAL.with(|l| l.grpc.borrow().get(path).cloned())?;
    cells.started.set(cells.started.get() + 1);
    inc(if cells.stream {
        Counter::ClientRequestsStream
    } else {
        Counter::ClientRequestsUnary
    });
    Some(cells)
}

fn grpc_method(path: &str) -> Rc<GrpcCells> {
    LOCAL.with(|l| {
        l.grpc
            .borrow_mut()
            .entry(path.into())
            .or_insert_with(|| {
                Rc::new(GrpcCells {
                    stream: method_type(path) != "unary",
                    ..Default::default()
                })
            })
            .clone()
    })
}

pub fn peer_sent(to: u64, bytes: usize) {
    peer(to, |p| p.sent_bytes += bytes as u64);
}

pub fn peer_received(from: u64, bytes: usize) {
    peer(from, |p| p.received_bytes += bytes as u64);
}

pub fn peer_send_failed(to: u64) {
    peer(to, |p| p.sent_failures += 1);
}

pub fn peer_rtt(to: u64, d: Duration) {
    LOCAL.with(|l| {
        let bounds = &l.peer_rtt_bounds;
        let mut peers = l.peers.borrow_mut();
        let p = peers.entry(to).or_default();
        if p.rtt.counts.is_empty() {
            p.rtt = HistCounts::new(bounds.len());
        }
        p.rtt.observe(bounds, d.as_secs_f64());
    });
}

/// A raft heartbeat left for `to` (the first one not yet answered is timed).
pub fn heartbeat_sent(to: u64) {
    LOCAL.with(|l| {
        l.heartbeats
            .borrow_mut()
            .entry(to)
            .or_insert_with(std::time::Instant::now);
    });
}

/// `from` answered a heartbeat: its round trip goes into
/// `etcd_network_peer_round_trip_time_seconds`.
pub fn heartbeat_answered(from: u64) {
    let sent = LOCAL.with(|l| l.heartbeats.borrow_mut().remove(&from));
    if let Some(sent) = sent {
        peer_rtt(from, sent.elapsed());
    }
}

fn peer(id: u64, f: impl FnOnce(&mut PeerCounts)) {
    LOCAL.with(|l| f(l.peers.borrow_mut().entry(id).or_default()));
}

/// A core's counts at one moment: what a scrape gathers from each core (owned, `Send`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counters: Vec<u64>,
    pub gauges: Vec<f64>,
    pub hists: Vec<HistCounts>,
    pub grpc: Vec<(String, GrpcCounts)>,
    pub peers: Vec<(u64, PeerCounts)>,
}

/// This core's counts.
pub fn snapshot() -> Snapshot {
    LOCAL.with(|l| Snapshot {
        counters: l.counters.iter().map(Cell::get).collect(),
        gauges: l.gauges.iter().map(Cell::get).collect(),
        hists: l.hists.borrow().clone(),
        grpc: l
            .grpc
            .borrow()
            .iter()
            .map(|(path, c)| {
                let mut handled = [0u64; 17];
                for (h, cell) in handled.iter_mut().zip(&c.handled) {
                    *h = cell.get();
                }
                let counts = GrpcCounts {
                    started: c.started.get(),
                    handled,
                    received: c.received.get(),
                    sent: c.sent.get(),
                    handling: c.handling.borrow().clone(),
                };
                (path.to_string(), counts)
            })
            .collect(),
        peers: l
            .peers
            .borrow()
            .iter()
            .map(|(id, p)| (*id, p.clone()))
            .collect(),
    })
}

impl Snapshot {
    /// Adds another core's counts to these.
    pub fn absorb(&mut self, other: Snapshot) {
        fn sum<T: Copy + std::ops::AddAssign + Default>(a: &mut Vec<T>, b: &[T]) {
            if a.len() < b.len() {
                a.resize(b.len(), T::default());
            }
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
        sum(&mut self.counters, &other.counters);
        sum(&mut self.gauges, &other.gauges);
        if self.hists.len() < other.hists.len() {
            self.hists.resize(other.hists.len(), HistCounts::default());
        }
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            a.absorb(b);
        }
        for (path, c) in other.grpc {
            match self.grpc.iter_mut().find(|(p, _)| *p == path) {
                Some((_, mine)) => {
                    mine.started += c.started;
                    mine.received += c.received;
                    mine.sent += c.sent;
                    for (a, b) in mine.handled.iter_mut().zip(c.handled) {
                        *a += b;
                    }
                    mine.handling.absorb(&c.handling);
                }
                None => self.grpc.push((path, c)),
            }
        }
        for (id, p) in other.peers {
            match self.peers.iter_mut().find(|(i, _)| *i == id) {
                Some((_, mine)) => {
                    mine.sent_bytes += p.sent_bytes;
                    mine.received_bytes += p.received_bytes;
                    mine.sent_failures += p.sent_failures;
                    mine.rtt.absorb(&p.rtt);
                }
                None => self.peers.push((id, p)),
            }
        }
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }

    pub fn gauge(&self, g: Gauge) -> f64 {
        self.gauges.get(g as usize).copied().unwrap_or(0.0)
    }

    /// Sets a gauge on the summed counts (a value every core knows alike, like the quota).
    pub fn set_gauge(&mut self, g: Gauge, v: f64) {
        if self.gauges.len() <= g as usize {
            self.gauges.resize(GAUGES.len(), 0.0);
        }
        self.gauges[g as usize] = v;
    }
}

/// grpc-go's name of a method's shape.
pub fn method_type(path: &str) -> &'static str {
    match path {
        "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive" => "bidi_stream",
        "/etcdserverpb.Maintenance/Snapshot"
        | "/v3electionpb.Election/Observe"
        | "/grpc.health.v1.Health/Watch" => "server_stream",
        _ => "unary",
    }
}

/// What the render needs besides the counts: the member's identity and versions.
pub struct Info<'a> {
    pub member_id: u64,
    pub server_version: &'a str,
    pub cluster_version: &'a str,
    /// This member's peers by id (hex, as etcd labels them), for `etcd_network_active_peers`.
    pub member_hex: String,
}

/// The Prometheus text exposition of `s`.
pub fn render(s: &Snapshot, info: &Info<'_>) -> String {
    let mut families: Vec<MetricFamily> = Vec::new();
    for (c, name, help) in COUNTERS {
        if !name.is_empty() {
            families.push(family(
                name,
                help,
                MetricType::COUNTER,
                vec![counter(&[], s.counter(c) as f64)],
            ));
        }
    }
    families.push(family(
        "etcd_server_client_requests_total",
        "Client requests by type (unary or stream) and client API version.",
        MetricType::COUNTER,
        vec![
            counter(
                &[("client_api_version", "3.4"), ("type", "stream")],
                s.counter(Counter::ClientRequestsStream) as f64,
            ),
            counter(
                &[("client_api_version", "3.4"), ("type", "unary")],
                s.counter(Counter::ClientRequestsUnary) as f64,
            ),
        ],
    ));
    // etcd's debugging twins of the mvcc counters and the db size.
    for (c, name) in [
        (Counter::MvccPut, "etcd_debugging_mvcc_put_total"),
        (Counter::MvccDelete, "etcd_debugging_mvcc_delete_total"),
        (Counter::MvccRange, "etcd_debugging_mvcc_range_total"),
        (Counter::MvccTxn, "etcd_debugging_mvcc_txn_total"),
    ] {
        families.push(family(
            name,
            "Same as the etcd_mvcc_ counter of the same name.",
            MetricType::COUNTER,
            vec![counter(&[], s.counter(c) as f64)],
        ));
    }
    for (g, name, help) in GAUGES {
        families.push(family(
            name,
            help,
            MetricType::GAUGE,
            vec![gauge(&[], s.gauge(g))],
        ));
    }
    families.push(family(
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "Same as etcd_mvcc_db_total_size_in_bytes.",
        MetricType::GAUGE,
        vec![gauge(&[], s.gauge(Gauge::DbTotalBytes))],
    ));
    let id = format!("{:x}", info.member_id);
    families.push(family(
        "etcd_server_id",
        "The member's id (label server_id), value 1.",
        MetricType::GAUGE,
        vec![gauge(&[("server_id", &id)], 1.0)],
    ));
    families.push(family(
        "etcd_server_version",
        "The etcd version this member reports (label server_version), value 1.",
        MetricType::GAUGE,
        vec![gauge(&[("server_version", info.server_version)], 1.0)],
    ));
    // etcd labels the cluster version MAJOR.MINOR (its /version says MAJOR.MINOR.0).
    let cluster = info.cluster_version.trim_end_matches(".0");
    families.push(family(
        "etcd_cluster_version",
        "The cluster version (label cluster_version), value 1.",
        MetricType::GAUGE,
        vec![gauge(&[("cluster_version", cluster)], 1.0)],
    ));

    // Histograms: etcd's, then Keel's stages in one family.
    let mut stages = Vec::new();
    let all_bounds = LOCAL.with(|l| l.bounds.clone());
    for (i, (_, name, stage, help, _)) in HISTS.iter().enumerate() {
        let counts = s.hists.get(i).cloned().unwrap_or_default();
        let m = histogram(&[], &all_bounds[i], &counts);
        if name == &STAGE {
            let mut m = m;
            m.set_label(labels(&[("stage", stage)]));
            stages.push(m);
        } else {
            families.push(family(name, help, MetricType::HISTOGRAM, vec![m]));
        }
    }
    families.push(family(STAGE, STAGE_HELP, MetricType::HISTOGRAM, stages));

    // Peers.
    let mut peers = s.peers.clone();
    peers.sort_by_key(|(id, _)| *id);
    let peer_family = |name: &str, help: &str, label: &str, f: &dyn Fn(&PeerCounts) -> f64| {
        let ms = peers
            .iter()
            .map(|(id, p)| counter(&[(label, &format!("{id:x}"))], f(p)))
            .collect();
        family(name, help, MetricType::COUNTER, ms)
    };
    families.push(peer_family(
        "etcd_network_peer_sent_bytes_total",
        "Bytes sent to each peer.",
        "To",
        &|p| p.sent_bytes as f64,
    ));
    families.push(peer_family(
        "etcd_network_peer_received_bytes_total",
        "Bytes received from each peer.",
        "From",
        &|p| p.received_bytes as f64,
    ));
    families.push(peer_family(
        "etcd_network_peer_sent_failures_total",
        "Failed sends to each peer.",
        "To",
        &|p| p.sent_failures as f64,
    ));
    let rtt_bounds = LOCAL.with(|l| l.peer_rtt_bounds.clone());
    let rtts = peers
        .iter()
        .filter(|(_, p)| !p.rtt.counts.is_empty())
        .map(|(id, p)| histogram(&[("To", &format!("{id:x}"))], &rtt_bounds, &p.rtt))
        .collect();
    families.push(family(
        "etcd_network_peer_round_trip_time_seconds",
        "Round trip of raft heartbeats to each peer.",
        MetricType::HISTOGRAM,
        rtts,
    ));
    let active = peers
        .iter()
        .filter(|(_, p)| p.received_bytes > 0)
        .map(|(id, _)| {
            gauge(
                &[("Local", &info.member_hex), ("Remote", &format!("{id:x}"))],
                1.0,
            )
        })
        .collect();
    families.push(family(
        "etcd_network_active_peers",
        "Peers this member has heard from.",
        MetricType::GAUGE,
        active,
    ));

    // gRPC, as go-grpc-prometheus names it.
    let mut grpc = s.grpc.clone();
    grpc.sort_by(|a, b| a.0.cmp(&b.0));
    let mut started = Vec::new();
    let mut handled = Vec::new();
    let mut received = Vec::new();
    let mut sent = Vec::new();
    let mut handling = Vec::new();
    for (path, c) in &grpc {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.rsplit_once('/'))
        else {
            continue;
        };
        let ty = method_type(path);
        let base = [
            ("grpc_method", method),
            ("grpc_service", service),
            ("grpc_type", ty),
        ];
        started.push(counter(&base, c.started as f64));
        if extensive() {
            handling.push(histogram(&base, HANDLING_BOUNDS, &c.handling));
        }
        received.push(counter(&base, c.received as f64));
        sent.push(counter(&base, c.sent as f64));
        for (code, name) in GRPC_CODES.iter().enumerate() {
            let l = [("grpc_code", *name), base[0], base[1], base[2]];
            handled.push(counter(&l, c.handled[code] as f64));
        }
    }
    families.push(family(
        "grpc_server_started_total",
        "RPCs started on the server.",
        MetricType::COUNTER,
        started,
    ));
    families.push(family(
        "grpc_server_handled_total",
        "RPCs completed on the server, by code.",
        MetricType::COUNTER,
        handled,
    ));
    families.push(family(
        "grpc_server_msg_received_total",
        "Stream messages received from clients.",
        MetricType::COUNTER,
        received,
    ));
    families.push(family(
        "grpc_server_msg_sent_total",
        "Stream messages sent to clients.",
        MetricType::COUNTER,
        sent,
    ));
    families.push(family(
        "grpc_server_handling_seconds",
        "RPC handling time (--metrics extensive).",
        MetricType::HISTOGRAM,
        handling,
    ));

    families.extend(process::families());
    families.retain(|f| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = String::with_capacity(64 * 1024);
    // The text encoder fails only on an empty family or a bad name, both kept out above.
    let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
    out
}

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn family(
    name: &str,
    help: &str,
    ty: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

pub(crate) fn counter(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

pub(crate) fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn histogram(pairs: &[(&str, &str)], bounds: &[f64], counts: &HistCounts) -> proto::Metric {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (i, b) in bounds.iter().enumerate() {
        cumulative += counts.counts.get(i).copied().unwrap_or(0);
        let mut bucket = proto::Bucket::default();
        bucket.set_upper_bound(*b);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let total = counts.counts.iter().sum();
    h.set_bucket(buckets);
    h.set_sample_count(total);
    h.set_sample_sum(counts.sum_seconds);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_go() {
        let b = Bounds::Exponential(0.001, 2.0, 14).values();
        assert_eq!(b.len(), 14);
        assert!((b[13] - 8.192).abs() < 1e-9);
        let m = MICROS.values();
        assert_eq!(m.len(), 21);
        assert_eq!((m[0], m[4], m[8]), (1e-6, 2e-5, 5e-4));
        assert!((m[20] - 5.0).abs() < 1e-9);
    }

    #[test]
    fn counts_sum_over_cores_and_render() {
        // Two "cores": this thread and another.
        grpc_route("/etcdserverpb.KV/Put");
        let cells = grpc_started("/etcdserverpb.KV/Put").unwrap();
        cells.received(10);
        cells.sent(20);
        cells.handled(0, Duration::from_micros(3));
        add(Counter::MvccPut, 2);
        observe(Hist::StageWalSync, Duration::from_micros(150));
        let other = std::thread::spawn(|| {
            grpc_route("/etcdserverpb.KV/Put");
            grpc_started("/etcdserverpb.KV/Put")
                .unwrap()
                .handled(1, Duration::from_millis(7));
            inc(Counter::MvccPut);
            set(Gauge::HasLeader, 1.0);
            snapshot()
        })
        .join()
        .unwrap();
        let mut s = snapshot();
        s.absorb(other);
        assert_eq!(s.counter(Counter::MvccPut), 3);
        let text = render(
            &s,
            &Info {
                member_id: 0xabc,
                server_version: "3.4.23",
                cluster_version: "3.4.0",
                member_hex: "abc".into(),
            },
        );
        assert!(text.contains("etcd_mvcc_put_total 3\n"), "{text}");
        assert!(text.contains("etcd_server_has_leader 1\n"));
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
        ));
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n"
        ));
        assert!(
            text.contains(
                "keel_stage_duration_seconds_bucket{stage=\"wal_sync\",le=\"0.0002\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("etcd_server_version{server_version=\"3.4.23\"} 1\n"));
        assert!(text.contains("etcd_network_client_grpc_received_bytes_total 10\n"));
    }
}
