//! Boot: one pinned glommio executor per core, the raft core first, then the others;
//! every core serves the client URLs (SO_REUSEPORT); SIGINT/SIGTERM stop it cleanly.
//!
//! Runs on: the main thread (boot and shutdown only; it never serves requests).
//!
//! Order at boot:
//! 0. The data dir (and a `--wal-dir` outside it) is created if missing and locked
//!    ([`dir_lock`]): a second process on it fails here, before it opens or writes any
//!    file in it and before the address checks.
//! 1. Signals are blocked in the main thread before any executor starts, so every thread
//!    inherits the mask and only the signal thread (`sigwait`) ever sees them.
//! 2. The raft core opens the WAL and db (recovering or bootstrapping) and reports the
//!    outcome; a bad data dir stops the boot with that message before anything listens.
//! 3. Every core (the raft core included) binds the client addresses and serves.
//! 4. On SIGINT/SIGTERM the raft core stops taking requests, answers what is queued with
//!    "server stopped", commits the db and returns; the process then exits 0.

pub mod dir_lock;
pub mod tools;

use crate::api::{self, Services};
use crate::grpc;
use crate::mesh::{
    self, Applied, CoreId, CoreLinks, CoreMsg, MemberInfo, RaftLinks, Reply, ToRaft,
};
use crate::node::Node;
use crate::raft::transport::{PeerListen, PeerTarget, Transport};
use crate::raft::{self, Exit, RaftClient, RaftCore, RaftOptions, RaftSender, ReplySink};
use crate::runtime::{executor_builder, log};
use crate::tls;
use crate::watch::WatchConfig;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::ConnectedSender;
use glommio::net::TcpListener;
use glommio::Placement;
use grpc::spread::SpreadLinks;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Requests a core may have waiting on the raft core (mailbox depth per core).
pub const REQUESTS_INFLIGHT_MAX: usize = 8192;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub name: String,
    /// `--data-dir`, absolute; locked for the life of the process.
    pub data_dir: std::path::PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    /// `--listen-client-urls`, one entry per address (http, https or both on it).
    pub listen_clients: Vec<ClientListen>,
    /// `--listen-metrics-urls`: `/metrics` and the health probes only (https ones with the
    /// client TLS config).
    pub listen_metrics: Vec<ClientListen>,
    /// `--listen-peer-urls`: raft messages from the other members.
    pub listen_peers: Vec<PeerListen>,
    /// TLS of the client URLs (`None`: no https client URL).
    pub client_tls: Option<tls::Side>,
    /// TLS of the peer URLs and of dialing peers.
    pub peer_tls: Option<tls::Side>,
    /// The TLS configs, read at boot (after the data dir is locked) from the sides above.
    pub tls_ready: TlsReady,
    pub advertise_client_urls: Vec<String>,
    pub raft: RaftOptions,
    pub cores: usize,
    /// The CPU of each core (`cpus[i]` for core i).
    pub cpus: Vec<usize>,
    pub max_request_bytes: usize,
    /// `--max-response-bytes`: the largest message sent.
    pub max_response_bytes: usize,
    pub max_txn_ops: usize,
    /// `--max-concurrent-streams` (SETTINGS_MAX_CONCURRENT_STREAMS of client connections).
    pub max_concurrent_streams: u32,
    /// The JSON gateway's calls in flight, on all cores (at most `max_concurrent_streams`).
    pub gateway_calls: std::sync::Arc<grpc::server::CallSlots>,
    pub watch_progress_notify_interval: std::time::Duration,
    /// The minimum TTL and server-chosen IDs of leases.
    pub lease: crate::api::LeaseConfig,
    /// How callers are authenticated (tokens, certificate names, bcrypt cost).
    pub auth: crate::api::AuthConfig,
    /// `--auth-token-ttl`.
    pub auth_token_ttl: std::time::Duration,
    /// `--quota-backend-bytes` (0: etcd's default, 2 GiB).
    pub quota_backend_bytes: u64,
}

/// A client address and what it speaks.
#[derive(Clone, Debug)]
pub struct ClientListen {
    pub addr: SocketAddr,
    pub plain: bool,
    pub tls: bool,
}

/// The client side's TLS configs, built at boot (the peer side's are `raft.peer_tls`).
#[derive(Clone, Debug, Default)]
pub struct TlsReady {
    pub client: Option<tls::Material>,
}

/// Makes auto-TLS pairs and reads every certificate file (on this thread, before any
/// executor): a missing or bad file stops the boot with a message naming it.
fn prepare_tls(opts: &mut ServerOptions) -> Result<(), String> {
    if let Some(side) = &opts.client_tls {
        opts.tls_ready.client = Some(prepare_side(side, "client", "ClientTLS")?);
    }
    if let Some(side) = &opts.peer_tls {
        opts.raft.peer_tls = Some(prepare_side(side, "peer", "peerTLS")?);
    }
    Ok(())
}

/// One side's files read and checked, logged as etcd logs them.
fn prepare_side(side: &tls::Side, which: &str, label: &str) -> Result<tls::Material, String> {
    let material = side.prepare().map_err(|e| format!("{which} TLS: {e}"))?;
    let info = &material.info;
    log::info(
        "embed",
        &format!(
            "{label}: cert = {}, key = {}, trusted-ca = {}, client-cert-auth = {}, crl-file = {}",
            info.cert_file.display(),
            info.key_file.display(),
            info.trusted_ca_file.display(),
            info.client_cert_auth,
            info.crl_file.display()
        ),
    );
    Ok(material)
}

static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread started after) and starts
/// the one thread that waits for them.
#[allow(unsafe_code)]
fn install_signal_thread() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls only
    // read and write that local set and the calling thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set owned by this closure.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                log::notice("etcdmain", &format!("received signal {sig}, shutting down"));
                STOP.store(true, Ordering::Relaxed);
            }
        })
        .expect("cannot start the signal thread");
}

/// Where the raft core's replies and rounds go.
struct Replies {
    local: Rc<RaftClient>,
    remote: RefCell<Vec<Option<ConnectedSender<Reply>>>>,
    node: Rc<Node>,
    /// This core's own rounds go through a queue to a task, so the raft loop goes on
    /// (to its next WAL write and fdatasync) while the task fans the round out.
    local_rounds: Rc<crate::node::Outbox>,
    cores: usize,
    round_mark: crate::mesh::RoundMark,
}

impl ReplySink for Replies {
    fn send(&self, to: CoreId, reply: Reply) {
        if to == self.local.core() {
            self.local.deliver(reply);
            return;
        }
        let remote = self.remote.borrow();
        if let Some(Some(tx)) = remote.get(to.0 as usize) {
            // The channel is as deep as the core's in-flight limit, so it has room.
            let _ = tx.try_send(reply);
        }
    }

    fn applied(&self, round: Applied, replies: Vec<(CoreId, Reply)>) {
        let mut per_core: Vec<Vec<Reply>> = (0..self.cores).map(|_| Vec::new()).collect();
        for (to, reply) in replies {
            if let Some(r) = per_core.get_mut(to.0 as usize) {
                r.push(reply);
            }
        }
        // The mark first: no core may serve a serializable read from this round before
        // every core is held to it.
        self.round_mark.publish(round.index);
        // Other cores first (the sends only queue), then this core's own shard.
        for (core, replies) in per_core.into_iter().enumerate().rev() {
            let applied = Applied {
                replies,
                ..round.share()
            };
            let to = CoreId(core as u16);
            if to == self.node.core() {
                self.local_rounds.push(CoreMsg::Applied(applied));
            } else {
                self.node.send_applied(to, applied);
            }
        }
    }
}

/// glibc returns freed memory at the top of a heap to the kernel (trim) and serves big
/// blocks with fresh mmaps: under watch fan-out that showed as a page fault and a page
/// clear for every batch of responses. Keep freed memory for reuse instead.
#[allow(unsafe_code)]
/// Boots the member and serves until a signal stops it (or it is removed from the
/// cluster, or must boot again on a snapshot from the leader).
pub fn run(mut opts: ServerOptions) -> Result<Exit, String> {
    let locks = dir_lock::lock_member_dirs(&opts.data_dir, &opts.raft.wal_dir)
        .map_err(|e| e.to_string())?;
    for lock in locks {
        lock.keep_for_process_life();
    }
    prepare_tls(&mut opts)?;
    check_addresses_free(&opts)?;
    crate::runtime::tune_malloc();
    install_signal_thread();
    let raft_core = CoreId(0);
    let (links, raft_links) = mesh::build(opts.cores, raft_core, REQUESTS_INFLIGHT_MAX);
    let mut spreads = grpc::spread::build(opts.cores, raft_core.0 as usize).into_iter();
    let (boot_tx, boot_rx) = std::sync::mpsc::channel::<Result<(u64, u64), String>>();
    let mut links = links.into_iter();
    let raft_core_links = links.next().expect("at least one core");
    let raft_spread = spreads.next().expect("at least one core");
    let raft_opts = opts.clone();
    // The other cores' replicas, built at boot beside the raft core's own rebuild.
    let (prebuilt_tx, prebuilt_rx): (Vec<_>, Vec<_>) = (1..opts.cores)
        .map(|_| std::sync::mpsc::channel::<crate::shard::Prebuilt>())
        .unzip();
    let raft_handle = core_executor("keel-core-0", opts.cpus[0], opts.cores)
        .spawn(move || {
            let boot = Boot {
                ids: boot_tx,
                prebuilt: prebuilt_tx,
            };
            raft_core_main(raft_opts, raft_core_links, raft_spread, raft_links, boot)
        })
        .map_err(|e| format!("cannot start the raft core: {e}"))?;
    match boot_rx.recv() {
        // A member that joined or restarted learns its IDs at boot.
        Ok(Ok((member_id, cluster_id))) => {
            opts.member_id = member_id;
            opts.cluster_id = cluster_id;
        }
        Ok(Err(e)) => {
            let _ = raft_handle.join();
            return Err(e);
        }
        Err(_) => return Err("the raft core stopped during boot".into()),
    }
    for ((link, spread), prebuilt) in links.zip(spreads).zip(prebuilt_rx) {
        let core_opts = opts.clone();
        let cpu = link.core.0 as usize;
        core_executor(
            &format!("keel-core-{cpu}"),
            core_opts.cpus[cpu],
            core_opts.cores,
        )
        .spawn(move || core_main(core_opts, link, spread, prebuilt))
        .map_err(|e| format!("cannot start core {cpu}: {e}"))?;
    }
    match raft_handle.join() {
        Ok(Ok(exit)) => Ok(exit),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("raft core: {e}")),
    }
}

/// A core's executor, pinned to `cpu`. Its blocking pool (bcrypt for Auth, certificate
/// reads) has a thread per core, unpinned: the password checks of one connection's
/// logins can use every CPU, as etcd's goroutines do, and none of it runs on an executor.
fn core_executor(name: &str, cpu: usize, cores: usize) -> glommio::LocalExecutorBuilder {
    executor_builder(name, Placement::Fixed(cpu))
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(cores.max(1)))
}

/// Fails like etcd when another process holds a client or peer address. Every core binds
/// with SO_REUSEPORT, which would otherwise let a second server on the same port share
/// its connections silently: a plain bind first tells.
/// Whether two listeners on `a` and `b` would take the same connections.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_addresses_free(opts: &ServerOptions) -> Result<(), String> {
    let peer_addrs = opts.listen_peers.iter().filter_map(|p| match &p.target {
        PeerTarget::Tcp(addr) => Some(addr),
        PeerTarget::Unix(_) => None,
    });
    // Client URLs on one address are merged (http and https share a listener); any other
    // two listeners on one address would share its connections through SO_REUSEPORT
    // (a peer URL listed as http and https, a peer URL on a client port): refused, as
    // etcd's second bind fails.
    let addrs: Vec<&SocketAddr> = opts
        .listen_clients
        .iter()
        .chain(&opts.listen_metrics)
        .map(|l| &l.addr)
        .chain(peer_addrs)
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        if addr.port() != 0 && addrs[..i].iter().any(|other| overlaps(addr, other)) {
            return Err(format!("listen tcp {addr}: bind: address already in use"));
        }
    }
    for addr in addrs {
        if addr.port() == 0 {
            continue;
        }
        // A member restarted at once can find its previous life's listener still open
        // for a moment (io_uring tears a ring down after the process exits): wait for it.
        let deadline = std::time::Instant::now() + ADDRESS_RELEASE_WAIT;
        loop {
            let Err(e) = std::net::TcpListener::bind(addr) else {
                break;
            };
            // A plain bind also fails on TIME_WAIT remnants of a previous run; only a
            // socket listening there now is a conflict.
            let busy = e.kind() != std::io::ErrorKind::AddrInUse || listening_on(addr);
            if !busy {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("listen tcp {addr}: bind: {e}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}

/// How long boot waits for a listener on its address to go away before failing.
const ADDRESS_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether some socket listens on `addr`'s port at its IP or a wildcard, per
/// /proc/net/tcp{,6} (state 0A is LISTEN; IPv4 addresses are printed as the in-memory
/// word, so 127.0.0.1 reads 0100007F).
fn listening_on(addr: &SocketAddr) -> bool {
    let mut found = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A")) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((ip_hex, port_hex)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
                continue;
            }
            let ip_matches = match (ip_hex.len(), addr.ip()) {
                (8, std::net::IpAddr::V4(want)) => u32::from_str_radix(ip_hex, 16)
                    .map(|w| {
                        let ip = std::net::Ipv4Addr::from(w.to_le_bytes());
                        ip == want || ip.is_unspecified() || want.is_unspecified()
                    })
                    .unwrap_or(true),
                // IPv6 (or a v4 address on a v6 socket): the port decides.
                _ => true,
            };
            found |= ip_matches;
        }
    }
    found
}

/// etcd's readiness lines (the e2e suite and the test harness wait for them), printed once
/// this member's attributes are applied through raft.
fn announce(opts: &ServerOptions) {
    log::info("etcdserver/api", "enabled capabilities for version 3.4");
    log::info(
        "etcdserver",
        &format!(
            "published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
            opts.name,
            opts.advertise_client_urls.join(" "),
            opts.cluster_id
        ),
    );
    log::notice("embed", "ready to serve client requests");
    for l in &opts.listen_clients {
        let addr = l.addr;
        if l.tls {
            log::info(
                "embed",
                &format!("serving client traffic securely on {addr}"),
            );
        }
        if l.plain {
            log::notice(
                "embed",
                &format!(
                    "serving insecure client requests on {addr}, this is strongly discouraged!"
                ),
            );
        }
    }
}

/// How often every core gives back to the system what its allocator freed
/// (`runtime::spawn_allocator_collect`).
const ALLOCATOR_COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the raft core's boot hands on: the member's IDs (to the thread that starts the
/// other cores), and each other core's replica built at boot.
struct Boot {
    ids: std::sync::mpsc::Sender<Result<(u64, u64), String>>,
    /// For cores 1, 2, …
    prebuilt: Vec<std::sync::mpsc::Sender<crate::shard::Prebuilt>>,
}

/// Starts building the other cores' replicas from the db just opened, when the split
/// keys are known before the raft core's own index is (configured, or kept by the last
/// run): one thread per core, each reading the records while the raft core rebuilds its
/// index from the same records. Without such split keys (a first boot, another core
/// count) the cores build theirs at the first round, as before.
fn prebuild_replicas(
    opts: &ServerOptions,
    db: &crate::mvcc::db::Db,
    senders: Vec<std::sync::mpsc::Sender<crate::shard::Prebuilt>>,
) {
    let splits = crate::shard::boot_splits(db, opts.raft.shards, &opts.raft.shard_splits);
    // An empty store: nothing to build.
    let Some(splits) =
        splits.filter(|s| s.len() + 1 == opts.raft.shards && db.app_meta().key_count > 0)
    else {
        return;
    };
    let snapshot = db.snapshot();
    for (i, tx) in senders.into_iter().enumerate() {
        let id = i + 1;
        let (splits, snapshot) = (splits.clone(), snapshot.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("keel-replica-{id}"))
            .spawn(move || {
                // Spawned from the raft core's pinned executor: off its CPU.
                crate::runtime::unpin_current_thread();
                let started = std::time::Instant::now();
                match crate::shard::prebuild(id, splits, &snapshot) {
                    Ok(p) => {
                        log::info(
                            "shard",
                            &format!(
                                "built shard {id}'s replica at boot: {} keys (took {:?})",
                                p.index.key_count(),
                                started.elapsed()
                            ),
                        );
                        let _ = tx.send(p);
                    }
                    // The core builds it again at its first round, and meets the error
                    // there.
                    Err(e) => log::warning("shard", &format!("shard {id}'s replica: {e}")),
                }
            });
        if let Err(e) = spawned {
            log::warning("shard", &format!("cannot start building a replica: {e}"));
        }
    }
}

async fn raft_core_main(
    opts: ServerOptions,
    link: CoreLinks,
    spread: SpreadLinks,
    raft_links: RaftLinks,
    boot: Boot,
) -> Result<Exit, String> {
    crate::runtime::spawn_allocator_collect(ALLOCATOR_COLLECT_INTERVAL);
    let mut opts = opts;
    let Boot {
        ids: boot,
        prebuilt,
    } = boot;
    let opened = RaftCore::open_with(opts.raft.clone(), |db| {
        prebuild_replicas(&opts, db, prebuilt)
    })
    .await;
    let mut core = match opened {
        Ok(core) => core,
        Err(e) => {
            let _ = boot.send(Err(e.0.clone()));
            return Err(e.0);
        }
    };
    opts.member_id = core.member_id();
    opts.cluster_id = core.cluster_id();
    log::info(
        "etcdserver",
        &format!(
            "starting member {:x} in cluster {:x}",
            opts.member_id, opts.cluster_id
        ),
    );
    let (inbox_tx, inbox_rx) = local_channel::new_bounded(REQUESTS_INFLIGHT_MAX * opts.cores);
    let inbox_tx = Rc::new(inbox_tx);
    let snap_dir = opts
        .raft
        .db_path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let peer_acceptor = opts
        .raft
        .peer_tls
        .as_ref()
        .map(|material| tls::stream::Acceptor::new(material.clone()));
    let transport = Transport::new(
        core.member_id(),
        inbox_tx.clone(),
        snap_dir,
        opts.raft.peer_tls.as_ref().map(tls::stream::Connector::new),
    );
    if let Err(e) = transport.listen(&opts.listen_peers, peer_acceptor) {
        let _ = boot.send(Err(e.clone()));
        return Err(e);
    }
    core.attach_transport(transport);
    let announce_opts = opts.clone();
    core.set_on_published(Box::new(move || announce(&announce_opts)));
    let client = Rc::new(RaftClient::new(
        link.core,
        RaftSender::Local(inbox_tx.clone()),
        REQUESTS_INFLIGHT_MAX,
    ));
    let node = Node::new(
        link.core,
        opts.cores,
        client.clone(),
        link.round_mark.clone(),
    );
    node.connect(link.peers_out, link.peers_in);
    node.read_raft_index(core.shared_index());
    // Rounds that queue while this core is busy merge into one (see `Outbox`).
    let local_rounds = Rc::new(crate::node::Outbox::default());
    let rounds = local_rounds.clone();
    let round_node = node.clone();
    glommio::spawn_local(async move {
        while let Some(msg) = rounds.pop().await {
            round_node.handle(msg);
        }
    })
    .detach();
    let replies = Rc::new(Replies {
        local: client.clone(),
        remote: RefCell::new((0..opts.cores).map(|_| None).collect()),
        node: node.clone(),
        local_rounds,
        cores: opts.cores,
        round_mark: link.round_mark.clone(),
    });
    for (peer, rep_tx) in raft_links.replies {
        let replies = replies.clone();
        glommio::spawn_local(async move {
            let tx = rep_tx.connect().await;
            replies.remote.borrow_mut()[peer.0 as usize] = Some(tx);
        })
        .detach();
    }
    for (_, req_rx) in raft_links.requests {
        let inbox_tx = inbox_tx.clone();
        glommio::spawn_local(async move {
            let rx = req_rx.connect().await;
            while let Some(msg) = rx.recv().await {
                if inbox_tx.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    if let Err(e) = listen(&opts, client, node, spread) {
        let _ = boot.send(Err(e.clone()));
        return Err(e);
    }
    let _ = boot.send(Ok((opts.member_id, opts.cluster_id)));
    let result = raft::run(core, inbox_rx, &*replies, stopping).await;
    result.map_err(|e| e.0)
}

async fn core_main(
    opts: ServerOptions,
    link: CoreLinks,
    spread: SpreadLinks,
    prebuilt: std::sync::mpsc::Receiver<crate::shard::Prebuilt>,
) -> Result<(), String> {
    crate::runtime::spawn_allocator_collect(ALLOCATOR_COLLECT_INTERVAL);
    let to_raft = link
        .to_raft
        .expect("a non-raft core has a mailbox")
        .connect()
        .await;
    let replies = link
        .replies
        .expect("a non-raft core has replies")
        .connect()
        .await;
    let client = Rc::new(RaftClient::new(
        link.core,
        RaftSender::Shared(to_raft),
        REQUESTS_INFLIGHT_MAX,
    ));
    let deliver = client.clone();
    glommio::spawn_local(async move {
        while let Some(reply) = replies.recv().await {
            deliver.deliver(reply);
        }
    })
    .detach();
    let node = Node::new(
        link.core,
        opts.cores,
        client.clone(),
        link.round_mark.clone(),
    );
    node.connect(link.peers_out, link.peers_in);
    node.expect_prebuilt(prebuilt);
    listen(&opts, client, node, spread)?;
    // Serve until the process exits (the raft core decides when).
    futures_lite::future::pending::<()>().await;
    Ok(())
}

/// Binds every client address on this core and serves each on its own task; accepted
/// connections are spread over the cores (`grpc::spread`).
fn listen(
    opts: &ServerOptions,
    client: Rc<RaftClient>,
    node: Rc<Node>,
    spread: SpreadLinks,
) -> Result<(), String> {
    node.hub.configure(WatchConfig {
        cluster_id: opts.cluster_id,
        member_id: opts.member_id,
        fragment_bytes: opts.max_request_bytes + grpc::server::GRPC_OVERHEAD_BYTES,
        corrupt_reason: crate::api::errors::EtcdError::Corrupt.wire().1,
    });
    let interval = opts.watch_progress_notify_interval;
    if !interval.is_zero() {
        let node = node.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                node.hub.progress_tick(node.watermark());
            }
        })
        .detach();
    }
    let core = node.core().0 as usize;
    node.set_token_ttl(opts.auth_token_ttl);
    let services = Rc::new(
        Services::new(
            client,
            node,
            api::HeaderInfo {
                cluster_id: opts.cluster_id,
                member_id: opts.member_id,
            },
            opts.max_request_bytes,
            opts.max_txn_ops,
            opts.lease.for_core(core, opts.cores),
        )
        .with_auth(opts.auth.clone())
        .with_quota(opts.quota_backend_bytes)
        .with_response_max(opts.max_response_bytes),
    );
    let metrics_router = Rc::new(api::services::metrics_router(services.clone()));
    let mut router = api::router(services);
    router.set_send_bytes_max(opts.max_response_bytes);
    if opts.max_concurrent_streams < u32::MAX {
        router.limit_local_calls(opts.gateway_calls.clone());
    }
    let router = Rc::new(router);
    let grpc_config = grpc::Config {
        message_bytes_max: opts.max_request_bytes + grpc::server::GRPC_OVERHEAD_BYTES,
        concurrent_streams_max: opts
            .max_concurrent_streams
            .min(grpc::Config::default().concurrent_streams_max),
        ..grpc::Config::default()
    };
    // One acceptor per core: it re-reads the certificate files on this core's connections.
    let acceptor = opts
        .tls_ready
        .client
        .as_ref()
        .map(|material| tls::stream::Acceptor::new(material.clone()));
    let listens = opts
        .listen_clients
        .iter()
        .map(|l| (l, &router))
        .chain(opts.listen_metrics.iter().map(|l| (l, &metrics_router)));
    let mut listenings = Vec::new();
    let mut listeners = Vec::new();
    for (l, router) in listens {
        let addr = l.addr;
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        let mode = match (&acceptor, l.plain, l.tls) {
            (Some(a), true, true) => tls::stream::Mode::Both(a.clone()),
            (Some(a), false, true) => tls::stream::Mode::Tls(a.clone()),
            _ => tls::stream::Mode::Plain,
        };
        listenings.push(Rc::new(grpc::Listening::new(
            mode,
            router.clone(),
            grpc_config.clone(),
        )));
        listeners.push(listener);
    }
    // Every core binds the same listeners in the same order, so a slot names the same
    // address on every core.
    let served = listenings.clone();
    let spread = spread.start(move |handoff, live| {
        let stream = handoff.stream.bind_to_executor();
        match served.get(handoff.slot) {
            Some(listening) => listening.spawn(stream, Some(live)),
            // Never: every core binds the same listeners. Dropping the stream closes it.
            None => drop(stream),
        }
    });
    for (slot, (listener, listening)) in listeners.into_iter().zip(listenings).enumerate() {
        let spread = spread.clone();
        glommio::spawn_local(async move {
            if let Err(e) = grpc::serve_spread(listener, slot, spread, listening).await {
                log::error("embed", &format!("client listener stopped: {e}"));
            }
        })
        .detach();
    }
    Ok(())
}

/// The initial members as raft and `member list` know them, with this member's client
/// URLs filled in (etcd publishes them through raft once started; a single member knows
/// them at boot).
pub fn initial_members(
    cluster: &[(String, Vec<String>)],
    token: &str,
    self_name: &str,
    self_client_urls: &[String],
) -> Vec<MemberInfo> {
    cluster
        .iter()
        .map(|(name, peer_urls)| MemberInfo {
            id: crate::config::member_id(peer_urls, token),
            name: name.clone(),
            peer_urls: peer_urls.clone(),
            client_urls: if name == self_name {
                self_client_urls.to_vec()
            } else {
                Vec::new()
            },
            is_learner: false,
        })
        .collect()
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<ToRaft>();
    is_send::<Reply>();
}
