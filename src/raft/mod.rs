//! The raft core: raft-rs's `RawNode` driven over Keel's WAL, applying committed entries
//! to the MVCC store in log order, and answering the cores that asked.
//!
//! Runs on: the raft core only. Other cores reach it through `RaftClient` messages
//! (`runtime::mesh`).
//!
//! One turn of the loop:
//! 1. Wait for a request or the next tick; then drain what else is queued (bounded), so
//!    proposals that arrived while the last fdatasync ran become one batch.
//! 2. Propose writes; queue linearizable reads and take one ReadIndex for all of them.
//! 3. For each `Ready`: apply committed entries; append new entries and the hard state to
//!    the WAL, and fdatasync once (only when raft says it must: new entries, term or
//!    vote); `advance`; apply what became committed.
//! 4. Publish the db and send every core the round (`ReplySink::applied`): the changes
//!    for its shard and watchers, the snapshot that holds them, and the replies to its
//!    writes, which it delivers after applying the round (so a client reads its write).
//!    Answer ReadIndex requests whose index is applied. Commit the db every
//!    `DB_COMMIT_INTERVAL` (the WAL is what makes writes durable; the db commit bounds
//!    replay at restart), and every `snapshot_count` entries mark a snapshot and release
//!    old WAL segments.
//!
//! Peers (`transport.rs`, `cluster.rs`): raft messages leave through the transport after
//! each `Ready` (entries go out before this member's own fdatasync, so the leader's and the
//! followers' syncs overlap); a follower's writes and ReadIndex reach the leader inside
//! raft, and the requests raft has no message for (keep-alives, TimeToLive, membership
//! changes) are forwarded. A follower too far behind the leader's log gets a snapshot: the
//! leader streams its published db, the follower builds it beside its own, moves it into
//! place, marks it in the WAL and boots again on it (the same path as a restart, so the
//! shards, watchers and lease caches of every core start from it; clients of that member
//! reconnect). This differs from etcd, which swaps the backend in place.
//!
//! Invariants:
//! - A client hears about a write only after its entry is durable in the WAL on a quorum
//!   and applied on the member it asked.
//! - Entries are applied in index order, each once: `Store::apply_at` skips indexes at or
//!   below the db's consistent index, and raft starts with `applied` = that index.
//! - The raft conf state and the member records are written in the same db transaction as
//!   the consistent index of the entry that changed them.

pub mod client;
mod cluster;
pub mod lessor;
pub mod log;
pub mod transport;

pub use client::{RaftClient, RaftSender};

use crate::grpc::{Code, Status};
use crate::mvcc::db::TreeId;
use crate::mvcc::{self, Op, OpResponse, Store, StoreOptions};
use crate::pb::keel::internal::Member as MemberRecord;
use crate::runtime::mesh::{Applied, CoreId, MemberInfo, Reply, ReplyBody, StatusInfo, ToRaft};
use crate::wal::{self, Wal, WalOptions};
use ::raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message as RaftMessage,
};
use ::raft::{RawNode, StateRole};
use glommio::channels::local_channel::LocalReceiver;
use lessor::{Lessor, LEASE_REVOKE_PER_SECOND_MAX};
use log::LogStore;
use prost::Message as _;
use protobuf::Message as _;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use transport::Transport;

/// How often the db is committed (fdatasync + meta flip) while writes arrive. etcd's
/// backend commits every 100 ms too.
pub const DB_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Applied entries after which the db is committed even before the interval.
pub const DB_COMMIT_ENTRIES_MAX: u64 = 10_000;
/// Entries kept in the log behind a snapshot for slow followers (etcd's
/// SnapshotCatchUpEntries).
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Requests taken from the mailbox per loop turn (one proposal batch at most this big).
pub const REQUESTS_PER_TURN_MAX: usize = 4096;

const META_CONF_STATE_KEY: &[u8] = b"raft_conf_state";

/// Where the member's files live and who it is.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub member_id: u64,
    pub cluster_id: u64,
    /// `data_dir/member/wal` unless `--wal-dir` says otherwise.
    pub wal_dir: PathBuf,
    /// `data_dir/member/snap/db`.
    pub db_path: PathBuf,
    /// The initial cluster (used only when the data dir is new).
    pub initial_members: Vec<MemberInfo>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub max_txn_ops: usize,
    /// Key-range shards (one per core) and configured split keys (empty: from the data).
    pub shards: usize,
    pub shard_splits: Vec<Vec<u8>>,
    /// Lease checkpoints (`None`: off).
    pub lease_checkpoint_interval: Option<Duration>,
    /// `--initial-cluster-state existing`: a new data dir joins a running cluster (its IDs
    /// and members come from the peers), and a restart takes its IDs from the WAL.
    pub join_existing: bool,
    /// This member's advertised peer URLs (to find itself among a joined cluster's members).
    pub advertise_peer_urls: Vec<String>,
    /// The name and client URLs this member publishes through raft once it has a leader
    /// (`None`: publish nothing, as in the unit tests).
    pub publish: Option<(String, Vec<String>)>,
    /// `--strict-reconfig-check`: the leader refuses membership changes that could cost
    /// the quorum (etcd's default).
    pub strict_reconfig_check: bool,
}

/// How the raft loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop.
    Stopped,
    /// This member was removed from the cluster.
    Removed,
    /// A snapshot from the leader replaced the db: boot again on it.
    Restart,
}

/// Errors that stop the member at boot: they name what is wrong and where.
#[derive(Debug)]
pub struct BootError(pub String);

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where replies go: the raft core's own client directly, other cores by channel.
pub trait ReplySink {
    fn send(&self, to: CoreId, reply: Reply);
    /// One applied round for every core (see `mesh::Applied`), and the replies to the
    /// round's writes, each delivered by its core after it applied the round.
    fn applied(&self, round: Applied, replies: Vec<(CoreId, Reply)>);
}

struct PendingRead {
    from: CoreId,
    seq: u64,
    /// When the read gives up ("request timed out").
    deadline: Instant,
    /// `None`: a bare ReadIndex, answered with the index (the shards serve the read).
    op: Option<Op>,
}

pub struct RaftCore {
    node: RawNode<LogStore>,
    store: Store,
    wal: Wal,
    opts: RaftOptions,
    /// Linearizable reads waiting for a ReadIndex to be requested.
    reads_waiting: Vec<PendingRead>,
    /// ReadIndex context → when it was asked and the reads it serves.
    reads_requested: HashMap<u64, (Instant, Vec<PendingRead>)>,
    /// (read index, reads) whose index is known, waiting for apply to reach it.
    reads_indexed: Vec<(u64, Vec<PendingRead>)>,
    next_read_ctx: u64,
    applied_index: u64,
    snapshot_index: u64,
    db_committed_index: u64,
    last_db_commit: Instant,
    next_tick: Instant,
    incarnation: u64,
    /// Replies to writes applied this round; they travel with the round's changes.
    round_replies: Vec<(CoreId, Reply)>,
    /// The applied index the cores last heard of (`None`: not yet, send the first round).
    broadcast_index: Option<u64>,
    /// The leader and learner flag the cores last heard of (a change alone makes a round).
    broadcast_leader: (u64, bool),
    /// Shard split keys, sent with the first round.
    splits: std::sync::Arc<Vec<Vec<u8>>>,
    /// Lease deadlines (while leader).
    lessor: Lessor,
    /// Leases revoked this round; they travel with the round.
    round_revoked: Vec<i64>,
    /// Lease checkpoints to propose (id, remaining TTL; 0 clears).
    checkpoints_pending: Vec<(i64, i64)>,
    /// When expired leases were last looked for.
    last_expiry_check: Instant,
    /// Writes waiting for a leader: (core, seq, entry, deadline), in arrival order.
    held: VecDeque<(CoreId, u64, bytes::Bytes, Instant)>,
    /// The leader as of the last `Ready` (0: none), for logging its changes.
    known_leader: u64,
    /// The peer transport (`None` in unit tests of a single member).
    transport: Option<Rc<Transport>>,
    /// The members a joining member was told of, until its log brings the membership.
    seed_members: Vec<MemberInfo>,
    /// Proposals of this member waiting to be applied: when each gives up.
    proposals: HashMap<(CoreId, u64), Instant>,
    proposal_deadlines: VecDeque<(Instant, CoreId, u64)>,
    /// Leader side: requests followers forwarded, by the local sequence number they got
    /// (their replies go back to (member, their id)).
    forwarded: HashMap<u64, (u64, u64)>,
    next_forwarded_seq: u64,
    /// Follower side: requests this member forwarded to the leader.
    forwarding: HashMap<u64, cluster::Forwarding>,
    next_forward_id: u64,
    /// A MoveLeader waiting for its transferee to lead: (from, seq, target, deadline).
    move_leader: Option<(CoreId, u64, u64, Instant)>,
    /// This member's attributes are applied (it announced itself); when it last proposed them.
    published: bool,
    publish_proposed: Option<Instant>,
    on_published: Option<Box<dyn FnOnce()>>,
    exit: Option<Exit>,
    /// The (index, term) of a snapshot installed as the db, to mark in the WAL.
    installed_snapshot: Option<(u64, u64)>,
    request_timeout: Duration,
}

/// How often the leader looks for expired leases (etcd checks every 500 ms).
pub const LEASE_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn boot_err(what: impl std::fmt::Display) -> BootError {
    BootError(what.to_string())
}

/// The WAL metadata of a Keel member: member ID and cluster ID, 8 bytes each, big-endian
/// (what etcd keeps in its WAL metadata too).
fn encode_metadata(member_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut m = member_id.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster_id.to_be_bytes());
    m
}

fn decode_metadata(m: &[u8]) -> Option<(u64, u64)> {
    if m.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(m[..8].try_into().ok()?),
        u64::from_be_bytes(m[8..].try_into().ok()?),
    ))
}

fn to_wal_entry(e: &Entry) -> wal::Entry {
    wal::Entry {
        entry_type: e.get_entry_type() as u8,
        term: e.term,
        index: e.index,
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

fn from_wal_entry(e: wal::Entry) -> Entry {
    let mut out = Entry::default();
    out.set_entry_type(match e.entry_type {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    });
    out.term = e.term;
    out.index = e.index;
    out.data = e.data.into();
    out.context = e.context.into();
    out
}

fn member_record(m: &MemberInfo) -> MemberRecord {
    MemberRecord {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// The proposer of an entry, in its context: member ID, boot incarnation, core, sequence
/// number. The incarnation keeps a replayed entry from an earlier boot from answering a
/// request of this boot that happens to reuse its (core, seq).
fn encode_context(member_id: u64, incarnation: u64, core: CoreId, seq: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(CONTEXT_BYTES);
    c.extend_from_slice(&member_id.to_le_bytes());
    c.extend_from_slice(&incarnation.to_le_bytes());
    c.extend_from_slice(&core.0.to_le_bytes());
    c.extend_from_slice(&seq.to_le_bytes());
    c
}

const CONTEXT_BYTES: usize = 26;

fn decode_context(c: &[u8]) -> Option<(u64, u64, CoreId, u64)> {
    if c.len() != CONTEXT_BYTES {
        return None;
    }
    let member = u64::from_le_bytes(c[..8].try_into().ok()?);
    let incarnation = u64::from_le_bytes(c[8..16].try_into().ok()?);
    let core = u16::from_le_bytes(c[16..18].try_into().ok()?);
    let seq = u64::from_le_bytes(c[18..].try_into().ok()?);
    Some((member, incarnation, CoreId(core), seq))
}

/// A number that differs between boots of this member: nanoseconds since the epoch.
fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn no_leader() -> Status {
    crate::api::errors::EtcdError::NoLeader.status()
}

/// The core and sequence number of a client request (`None`: peer and transport input).
fn client_request_origin(msg: &ToRaft) -> Option<(CoreId, u64)> {
    match *msg {
        ToRaft::Propose { from, seq, .. }
        | ToRaft::Read { from, seq, .. }
        | ToRaft::Status { from, seq }
        | ToRaft::MemberList { from, seq }
        | ToRaft::HashKv { from, seq, .. }
        | ToRaft::ReadIndex { from, seq }
        | ToRaft::LeaseRenew { from, seq, .. }
        | ToRaft::LeaseTimeToLive { from, seq, .. }
        | ToRaft::LeaseLeases { from, seq }
        | ToRaft::Member { from, seq, .. }
        | ToRaft::MoveLeader { from, seq, .. } => Some((from, seq)),
        _ => None,
    }
}

fn not_for_learner() -> Status {
    crate::api::errors::EtcdError::NotSupportedForLearner.status()
}

fn status_from_mvcc(e: &mvcc::Error) -> Status {
    crate::api::errors::status_from_mvcc(e)
}

impl RaftCore {
    /// Opens the member's WAL and db (or creates them for a new member), checks they
    /// agree, and builds the `RawNode` at the db's consistent index.
    pub async fn open(mut opts: RaftOptions) -> Result<RaftCore, BootError> {
        let wal_exists = Wal::exists(&opts.wal_dir);
        let db_exists = opts.db_path.exists();
        if let Some(parent) = opts.db_path.parent() {
            crate::durable_dir::create_dir_all(parent, 0o700)
                .map_err(|e| boot_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let store_opts = StoreOptions {
            max_txn_ops: opts.max_txn_ops,
            ..StoreOptions::default()
        };
        let mut store = Store::open(&opts.db_path, store_opts)
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.db_path.display())))?;
        store
            .check()
            .map_err(|e| boot_err(format!("{}: {e}", opts.db_path.display())))?;
        if db_exists && !wal_exists {
            // A first boot that failed after creating the db and before its WAL (a disk
            // error, a crash) leaves a db that never applied an entry: boot as new on it.
            // A db that applied entries has lost its WAL: refuse.
            if store.consistent_index() != 0 {
                return Err(boot_err(format!(
                    "{} exists but there is no WAL in {}: refusing to start on a partial data dir",
                    opts.db_path.display(),
                    opts.wal_dir.display()
                )));
            }
            crate::runtime::log::warning(
                "etcdserver",
                &format!(
                    "{} was created by a first boot that never made its WAL: booting as new",
                    opts.db_path.display()
                ),
            );
        }
        let mut seed_members = Vec::new();
        let (wal, log) = if wal_exists {
            Self::recover(&mut opts, &mut store).await?
        } else {
            if opts.join_existing {
                seed_members = Self::join(&mut opts).await?;
            } else {
                Self::check_not_bootstrapped(&opts).await?;
            }
            Self::bootstrap(&opts).await?
        };
        let applied = store.consistent_index();
        let config = ::raft::Config {
            id: opts.member_id,
            heartbeat_tick: 1,
            election_tick: (opts.election_timeout_ms / opts.heartbeat_interval_ms.max(1)).max(2)
                as usize,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node =
            RawNode::new(&config, log, &logger).map_err(|e| boot_err(format!("raft: {e}")))?;
        node.mut_store()
            .set_snapshot_source(applied, store.consistent_term());
        let snapshot_index = node.store().first_index_raw().saturating_sub(1);
        let now = Instant::now();
        let splits = crate::shard::split_keys(store.index(), opts.shards, &opts.shard_splits);
        store.capture_changes(true);
        Ok(RaftCore {
            node,
            store,
            wal,
            reads_waiting: Vec::new(),
            reads_requested: HashMap::new(),
            reads_indexed: Vec::new(),
            next_read_ctx: 1,
            applied_index: applied,
            snapshot_index,
            db_committed_index: applied,
            last_db_commit: now,
            next_tick: now + Duration::from_millis(opts.heartbeat_interval_ms),
            incarnation: new_incarnation(),
            round_replies: Vec::new(),
            broadcast_index: None,
            broadcast_leader: (0, false),
            splits: std::sync::Arc::new(splits),
            lessor: Lessor::with_checkpoints(opts.lease_checkpoint_interval),
            round_revoked: Vec::new(),
            checkpoints_pending: Vec::new(),
            last_expiry_check: now,
            held: VecDeque::new(),
            known_leader: 0,
            transport: None,
            seed_members,
            proposals: HashMap::new(),
            proposal_deadlines: VecDeque::new(),
            forwarded: HashMap::new(),
            next_forwarded_seq: 1,
            forwarding: HashMap::new(),
            next_forward_id: 1,
            move_leader: None,
            published: false,
            publish_proposed: None,
            on_published: None,
            exit: None,
            installed_snapshot: None,
            // etcd's request timeout: 5 s plus two election timeouts.
            request_timeout: Duration::from_millis(5000 + 2 * opts.election_timeout_ms),
            opts,
        })
    }

    /// A new member: a WAL whose first entries add every initial member (one ConfChange
    /// each, committed at term 1, as etcd bootstraps), so replay rebuilds the membership.
    async fn bootstrap(opts: &RaftOptions) -> Result<(Wal, LogStore), BootError> {
        let metadata = encode_metadata(opts.member_id, opts.cluster_id);
        let mut wal = Wal::create(&opts.wal_dir, &metadata, WalOptions::default())
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        let mut entries = Vec::new();
        for (i, m) in opts.initial_members.iter().enumerate() {
            let mut cc = ConfChange::default();
            cc.set_change_type(if m.is_learner {
                ConfChangeType::AddLearnerNode
            } else {
                ConfChangeType::AddNode
            });
            cc.node_id = m.id;
            cc.context = member_record(m).encode_to_vec().into();
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.term = 1;
            e.index = i as u64 + 1;
            e.data = cc.write_to_bytes().expect("ConfChange encodes").into();
            entries.push(e);
        }
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: entries.len() as u64,
            ..Default::default()
        };
        let wal_entries: Vec<wal::Entry> = entries.iter().map(to_wal_entry).collect();
        wal.append_entries(&wal_entries);
        wal.set_hard_state(wal::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        });
        wal.sync()
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        let mut log = LogStore::new(hs, ConfState::default(), 0, 0);
        log.append(&entries);
        Ok((wal, log))
    }

    /// A new data dir with `--initial-cluster-state new` while the cluster already runs
    /// with this member in it (its data dir was wiped, say): refused, as etcd refuses it,
    /// because starting over would forget the votes it cast. One quick ask of each peer;
    /// silence (a cluster starting up) lets the boot go on.
    async fn check_not_bootstrapped(opts: &RaftOptions) -> Result<(), BootError> {
        let mine = &opts.advertise_peer_urls;
        let others: Vec<Vec<std::net::SocketAddr>> = opts
            .initial_members
            .iter()
            .filter(|m| m.id != opts.member_id && !m.peer_urls.iter().any(|u| mine.contains(u)))
            .map(|m| transport::peer_addrs(&m.peer_urls))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let Ok(info) = transport::fetch_cluster_info(&others, 1).await else {
            return Ok(());
        };
        let started = info
            .members
            .iter()
            .any(|m| m.id == opts.member_id && !m.client_urls.is_empty());
        if started && info.cluster_id == opts.cluster_id {
            return Err(boot_err(format!(
                "member {:x} has already been bootstrapped",
                opts.member_id
            )));
        }
        Ok(())
    }

    /// A new member of a running cluster (`--initial-cluster-state existing`): its member
    /// and cluster IDs come from the peers, which must already list its peer URLs (added
    /// with MemberAdd); it starts with an empty log and learns everything from the leader.
    async fn join(opts: &mut RaftOptions) -> Result<Vec<MemberInfo>, BootError> {
        let mine: Vec<String> = opts.advertise_peer_urls.clone();
        let others: Vec<Vec<std::net::SocketAddr>> = opts
            .initial_members
            .iter()
            .filter(|m| !m.peer_urls.iter().any(|u| mine.contains(u)))
            .map(|m| transport::peer_addrs(&m.peer_urls))
            .collect();
        let info = transport::fetch_cluster_info(&others, 30)
            .await
            .map_err(|e| boot_err(format!("cannot join the cluster: {e}")))?;
        let mut wanted = mine.clone();
        wanted.sort();
        let me = info.members.iter().find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == wanted
        });
        let Some(me) = me else {
            return Err(boot_err(format!(
                "error validating peerURLs {{ClusterID:{:x} Members:[{}]}}: PeerURLs: no match \
                 found for existing member (add it with `etcdctl member add` first)",
                info.cluster_id,
                info.members
                    .iter()
                    .map(|m| format!("{:x}={}", m.id, m.peer_urls.join(",")))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        };
        opts.member_id = me.id;
        opts.cluster_id = info.cluster_id;
        // The membership arrives with the log (or a snapshot) from the leader; until then
        // the transport knows the peers from their answer.
        opts.initial_members.clear();
        Ok(info.members.iter().map(cluster::member_info).collect())
    }

    /// An existing member: replay the WAL after its snapshot marker on top of the db.
    async fn recover(
        opts: &mut RaftOptions,
        store: &mut Store,
    ) -> Result<(Wal, LogStore), BootError> {
        let (mut wal, rec) = Wal::open(&opts.wal_dir, WalOptions::default())
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        if let Some((file, offset, bytes)) = &rec.truncated_tail {
            eprintln!(
                "keel: WAL torn tail repaired: {bytes} bytes zeroed at {}:{offset}",
                file.display()
            );
        }
        match decode_metadata(&rec.metadata) {
            // A restarted member is who its WAL says (a member that joined got its ID
            // from the cluster, not from the flags).
            Some((member, cluster)) if member == opts.member_id || opts.join_existing => {
                opts.member_id = member;
                opts.cluster_id = cluster;
            }
            Some((member, _)) => {
                return Err(boot_err(format!(
                    "{}: the WAL belongs to member {member:x}, not {:x} (wrong --name or \
                     --initial-cluster for this data dir?)",
                    opts.wal_dir.display(),
                    opts.member_id
                )))
            }
            None => {
                return Err(boot_err(format!(
                    "{}: WAL metadata is not a Keel member's",
                    opts.wal_dir.display()
                )))
            }
        }
        let applied = store.consistent_index();
        let last_wal_index = rec
            .entries
            .last()
            .map(|e| e.index)
            .unwrap_or(rec.snapshot.index);
        if applied < rec.snapshot.index {
            return Err(boot_err(format!(
                "{}: db applied index {applied} is behind the WAL snapshot at {}",
                opts.db_path.display(),
                rec.snapshot.index
            )));
        }
        // A db ahead of the WAL is a snapshot from the leader that was installed before
        // its WAL marker was written: the log starts after it.
        let db_ahead = applied > last_wal_index;
        if db_ahead {
            crate::runtime::log::notice(
                "etcdserver",
                &format!(
                    "{}: db applied index {applied} is past the WAL's last entry \
                     {last_wal_index}: starting from the installed snapshot",
                    opts.db_path.display()
                ),
            );
            wal.save_snapshot_marker(wal::SnapshotMarker {
                index: applied,
                term: store.consistent_term(),
            });
            wal.sync()
                .await
                .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        }
        let conf_state = match store
            .backend()
            .get(TreeId::Meta, META_CONF_STATE_KEY)
            .map_err(boot_err)?
        {
            Some(bytes) => ConfState::parse_from_bytes(bytes)
                .map_err(|e| boot_err(format!("{}: conf state: {e}", opts.db_path.display())))?,
            None => ConfState::default(),
        };
        // Applying implies committed; the commit in the hard state may lag (it is written
        // lazily with the next batch), so raise it to what the db has applied.
        let hs = HardState {
            term: rec.hard_state.term.max(store.consistent_term()),
            vote: rec.hard_state.vote,
            commit: rec.hard_state.commit.max(applied),
            ..Default::default()
        };
        if db_ahead {
            let log = LogStore::new(hs, conf_state, applied, store.consistent_term());
            return Ok((wal, log));
        }
        let snapshot_term = if rec.snapshot.index == 0 {
            0
        } else {
            rec.snapshot.term
        };
        let mut log = LogStore::new(hs, conf_state, rec.snapshot.index, snapshot_term);
        let entries: Vec<Entry> = rec.entries.into_iter().map(from_wal_entry).collect();
        log.append(&entries);
        Ok((wal, log))
    }

    pub fn member_id(&self) -> u64 {
        self.opts.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.opts.cluster_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes one request from a core.
    pub fn handle(&mut self, msg: ToRaft, out: &dyn ReplySink) {
        // A learner serves Status and serializable reads only (etcd's interceptor).
        if let Some((from, seq)) = client_request_origin(&msg) {
            let allowed = matches!(
                msg,
                ToRaft::Status { .. }
                    | ToRaft::Read {
                        linearizable: false,
                        ..
                    }
            );
            if !allowed && self.is_learner() {
                self.reply(out, from, seq, Err(not_for_learner()));
                return;
            }
        }
        match msg {
            ToRaft::Propose { from, seq, data } => {
                let deadline = Instant::now() + self.request_timeout;
                self.held.push_back((from, seq, data, deadline));
                self.propose_held(out);
            }
            ToRaft::Read {
                from,
                seq,
                op,
                linearizable,
            } => {
                if linearizable {
                    let deadline = Instant::now() + self.request_timeout;
                    self.reads_waiting.push(PendingRead {
                        from,
                        seq,
                        deadline,
                        op: Some(op),
                    });
                } else {
                    let res = self.read(&op);
                    self.reply(out, from, seq, res);
                }
            }
            ToRaft::ReadIndex { from, seq } => {
                let deadline = Instant::now() + self.request_timeout;
                self.reads_waiting.push(PendingRead {
                    from,
                    seq,
                    deadline,
                    op: None,
                });
            }
            ToRaft::LeaseRenew {
                from,
                seq,
                renewals,
            } if !self.lessor.is_primary() => self.forward_lease_renew(out, from, seq, renewals),
            ToRaft::LeaseTimeToLive {
                from,
                seq,
                id,
                keys,
            } if self.node.raft.state != StateRole::Leader => {
                self.forward_time_to_live(out, from, seq, id, keys)
            }
            ToRaft::Member { from, seq, op } => self.member_change(out, from, seq, op),
            ToRaft::MoveLeader { from, seq, target } => self.move_leader(out, from, seq, target),
            ToRaft::Peer(msgs) => {
                for m in msgs {
                    // Stale or foreign messages are refused by raft; nothing to answer.
                    let _ = self.node.step(m);
                }
            }
            ToRaft::Forwarded { member, fwd } => self.handle_forwarded(out, member, fwd),
            ToRaft::ForwardReply(r) => self.handle_forward_reply(out, r),
            ToRaft::Unreachable(id) => self.node.report_unreachable(id),
            ToRaft::SnapshotReport { to, ok } => self.node.report_snapshot(
                to,
                if ok {
                    ::raft::SnapshotStatus::Finish
                } else {
                    ::raft::SnapshotStatus::Failure
                },
            ),
            ToRaft::SnapshotInstalled { index, term } => {
                self.installed_snapshot = Some((index, term));
                self.exit = Some(Exit::Restart);
            }
            ToRaft::Removed => {
                crate::runtime::log::error(
                    "etcdserver",
                    "the member has been permanently removed from the cluster",
                );
                self.exit = Some(Exit::Removed);
            }
            ToRaft::LeaseRenew {
                from,
                seq,
                renewals,
            } => {
                let res = {
                    let leases = self.store.leases();
                    let results = renewals
                        .iter()
                        .map(|&(id, received)| self.lessor.renew(leases, id, received))
                        .collect();
                    if self.lessor.checkpoints() {
                        // A renewed lease starts from its full TTL again: clear a recorded
                        // remaining TTL (one entry per lease per interval at most).
                        for &(id, _) in &renewals {
                            if leases.get(id).is_some_and(|l| l.remaining_ttl > 0) {
                                self.checkpoints_pending.push((id, 0));
                            }
                        }
                    }
                    Ok(ReplyBody::LeaseRenewed {
                        revision: self.store.current_revision(),
                        results,
                    })
                };
                self.reply(out, from, seq, res);
            }
            ToRaft::LeaseTimeToLive {
                from,
                seq,
                id,
                keys,
            } => {
                let revision = self.store.current_revision();
                let body = match self.store.leases().get(id) {
                    Some(l) => ReplyBody::LeaseTimeToLive {
                        revision,
                        ttl: self.lessor.remaining_s(id, l.ttl, Instant::now()),
                        granted_ttl: l.ttl,
                        keys: if keys {
                            l.keys.iter().cloned().collect()
                        } else {
                            Vec::new()
                        },
                    },
                    None => ReplyBody::LeaseTimeToLive {
                        revision,
                        ttl: -1,
                        granted_ttl: 0,
                        keys: Vec::new(),
                    },
                };
                self.reply(out, from, seq, Ok(body));
            }
            ToRaft::LeaseLeases { from, seq } => {
                let body = ReplyBody::Leases {
                    revision: self.store.current_revision(),
                    ids: self.store.leases().iter().map(|(id, _)| id).collect(),
                };
                self.reply(out, from, seq, Ok(body));
            }
            ToRaft::Status { from, seq } => {
                let info = self.status_info();
                self.reply(out, from, seq, Ok(ReplyBody::Status(info)));
            }
            ToRaft::MemberList { from, seq } => {
                let members = self.members().map(ReplyBody::Members);
                let body = members.map_err(|e| crate::api::errors::status_from_db(&e));
                self.reply(out, from, seq, body);
            }
            ToRaft::HashKv {
                from,
                seq,
                revision,
            } => {
                let res = self
                    .store
                    .hash_kv(revision)
                    .map(|(hash, compact_revision)| ReplyBody::HashKv {
                        hash,
                        compact_revision,
                        revision: self.store.current_revision(),
                    })
                    .map_err(|e| status_from_mvcc(&e));
                self.reply(out, from, seq, res);
            }
        }
    }

    fn reply(
        &mut self,
        out: &dyn ReplySink,
        to: CoreId,
        seq: u64,
        body: Result<ReplyBody, Status>,
    ) {
        let reply = Reply {
            seq,
            raft_term: self.node.raft.term,
            leader: self.node.raft.leader_id,
            body,
        };
        if to == cluster::FORWARDED {
            self.reply_forwarded(reply);
        } else {
            out.send(to, reply);
        }
    }

    fn is_learner(&self) -> bool {
        self.node
            .store()
            .conf_state()
            .learners
            .contains(&self.opts.member_id)
    }

    /// Proposes the writes that wait for a leader (all of them, once one is known). Like
    /// etcd, a write waits while there is no leader and gives up at the request timeout.
    fn propose_held(&mut self, out: &dyn ReplySink) {
        // First settle proposals sent to a leader that is gone (see `leader_changed`).
        self.leader_changed(self.node.raft.leader_id, out);
        while self.node.raft.leader_id != ::raft::INVALID_ID {
            let Some((from, seq, data, deadline)) = self.held.pop_front() else {
                break;
            };
            let ctx = encode_context(self.opts.member_id, self.incarnation, from, seq);
            match self.node.propose(ctx, data.to_vec()) {
                Ok(()) => self.track_proposal(from, seq),
                // A leader transfer in progress: wait for its outcome.
                Err(::raft::Error::ProposalDropped) => {
                    self.held.push_front((from, seq, data, deadline));
                    break;
                }
                Err(e) => {
                    let status = Status::new(Code::Internal, format!("raft: {e}"));
                    self.reply(out, from, seq, Err(status));
                }
            }
        }
    }

    /// Remembers a proposal of this member, to answer "request timed out" if it is never
    /// applied (raft dropped it, or the leader it went to died).
    fn track_proposal(&mut self, from: CoreId, seq: u64) {
        let deadline = Instant::now() + self.request_timeout;
        self.proposals.insert((from, seq), deadline);
        self.proposal_deadlines.push_back((deadline, from, seq));
    }

    fn read(&mut self, op: &Op) -> Result<ReplyBody, Status> {
        let res = match op {
            Op::Range(r) => self.store.range(r).map(OpResponse::Range),
            Op::Txn(t) => self.store.txn(t).map(OpResponse::Txn),
            _ => unreachable!("only Range and read-only Txn are reads"),
        };
        res.map(ReplyBody::Op).map_err(|e| status_from_mvcc(&e))
    }

    pub fn status_info(&self) -> StatusInfo {
        let stats = self.store.backend().stats();
        StatusInfo {
            leader: self.node.raft.leader_id,
            raft_index: self.node.raft.raft_log.last_index(),
            raft_term: self.node.raft.term,
            raft_applied_index: self.applied_index,
            db_size_bytes: stats.file_bytes as i64,
            db_size_in_use_bytes: (stats.pages_in_use * crate::mvcc::db::PAGE_BYTES as u64) as i64,
            revision: self.store.current_revision(),
            is_learner: self
                .node
                .store()
                .conf_state()
                .learners
                .contains(&self.opts.member_id),
        }
    }

    /// The members in the Member tree; `db::Error::Corrupt` if a page of it is damaged.
    pub fn members(&self) -> Result<Vec<MemberInfo>, mvcc::db::Error> {
        let mut out = Vec::new();
        for entry in self.store.backend().range(TreeId::Member, &[], &[]) {
            let Ok(m) = MemberRecord::decode(entry?.1) else {
                continue;
            };
            out.push(MemberInfo {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            });
        }
        Ok(out)
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// Ticks raft for every heartbeat interval that has passed.
    pub fn tick_if_due(&mut self, now: Instant) {
        let interval = Duration::from_millis(self.opts.heartbeat_interval_ms);
        while self.next_tick <= now {
            self.node.tick();
            self.next_tick += interval;
        }
    }

    /// The leader proposes a revoke for each lease past its deadline (at most etcd's
    /// revoke rate); a member that lost the lead stops timing leases.
    pub fn expire_leases(&mut self, now: Instant) {
        if self.node.raft.state != StateRole::Leader {
            if self.lessor.is_primary() {
                self.lessor.demote();
            }
            return;
        }
        if now.duration_since(self.last_expiry_check) < LEASE_EXPIRY_CHECK_INTERVAL {
            return;
        }
        let limit =
            LEASE_REVOKE_PER_SECOND_MAX * LEASE_EXPIRY_CHECK_INTERVAL.as_millis() as usize / 1000;
        self.last_expiry_check = now;
        let mut ops: Vec<Op> = self
            .lessor
            .expired(now, limit)
            .into_iter()
            .map(|id| Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id }))
            .collect();
        let mut batches = self.lessor.due_checkpoints(now);
        if !self.checkpoints_pending.is_empty() {
            let mut clears = std::mem::take(&mut self.checkpoints_pending);
            clears.sort_unstable();
            clears.dedup();
            batches.push(clears);
        }
        ops.extend(
            batches.into_iter().map(|checkpoints| {
                Op::LeaseCheckpoint(mvcc::LeaseCheckpointRequest { checkpoints })
            }),
        );
        for op in ops {
            let data = crate::api::convert::encode_raft_request(&op);
            // No context: nobody waits for the reply.
            if self.node.propose(Vec::new(), data.to_vec()).is_err() {
                break;
            }
        }
    }

    /// One ReadIndex for every linearizable read queued since the last one.
    fn request_read_index(&mut self) {
        if self.reads_waiting.is_empty() || self.node.raft.leader_id == ::raft::INVALID_ID {
            return;
        }
        // raft-rs drops a ReadIndex on a leader that has not committed in its term yet.
        if self.node.raft.state == StateRole::Leader && !self.node.raft.commit_to_current_term() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.node.read_index(ctx.to_le_bytes().to_vec());
        let reads = std::mem::take(&mut self.reads_waiting);
        self.reads_requested.insert(ctx, (Instant::now(), reads));
    }

    /// Runs every `Ready` raft has, with one WAL write and at most one fdatasync each.
    pub async fn process_ready(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        // A member that applied its own removal stops driving raft (raft-rs keeps no
        // progress for a removed leader, and `advance` would look it up): it answers what
        // it applied and leaves.
        while self.exit != Some(Exit::Removed) {
            // Applying the bootstrap conf changes can make this member the only voter, and
            // a new leader's first commit unblocks ReadIndex: check both every round.
            self.campaign_if_alone();
            self.propose_held(out);
            self.request_read_index();
            if !self.node.has_ready() {
                break;
            }
            let mut rd = self.node.ready();
            self.send_messages(rd.take_messages());
            if !rd.snapshot().is_empty() {
                // Snapshots from the leader are installed by the transport as a new db
                // and the member restarts on it; raft only sees their message when it
                // holds nothing new.
                return Err(boot_err(format!(
                    "raft: unexpected snapshot at index {} in a ready",
                    rd.snapshot().get_metadata().index
                )));
            }
            let committed = rd.take_committed_entries();
            self.apply(committed)?;
            if self.exit == Some(Exit::Removed) {
                break;
            }
            for rs in rd.take_read_states() {
                let ctx = rs
                    .request_ctx
                    .as_slice()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                if let Some((_, reads)) = self.reads_requested.remove(&ctx) {
                    self.reads_indexed.push((rs.index, reads));
                }
            }
            if !rd.entries().is_empty() {
                let ents: Vec<wal::Entry> = rd.entries().iter().map(to_wal_entry).collect();
                self.wal.append_entries(&ents);
                self.node.mut_store().append(rd.entries());
            }
            if let Some(hs) = rd.hs() {
                self.wal.set_hard_state(wal::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit,
                });
                self.node.mut_store().set_hard_state(hs.clone());
            }
            if rd.must_sync() {
                self.wal
                    .sync()
                    .await
                    .map_err(|e| boot_err(format!("WAL: {e}; stopping")))?;
            }
            self.send_messages(rd.take_persisted_messages());
            let mut light = self.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().set_commit(commit);
            }
            self.send_messages(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.node.advance_apply();
        }
        self.store.publish();
        self.node
            .mut_store()
            .set_snapshot_source(self.applied_index, self.store.consistent_term());
        if let Some(t) = &self.transport {
            t.set_applied_index(self.applied_index);
        }
        self.broadcast(out);
        self.serve_indexed_reads(out);
        self.check_move_leader(out);
        self.maybe_publish();
        Ok(())
    }

    /// Logs a leader change as etcd does, and fails this member's proposals still waiting:
    /// those forwarded to a leader that is gone would only time out later (etcd's
    /// "possibly due to previous leader failure"; they may or may not have been applied).
    fn leader_changed(&mut self, leader: u64, out: &dyn ReplySink) {
        if leader == self.known_leader {
            return;
        }
        let me = self.opts.member_id;
        let term = self.node.raft.term;
        if leader == ::raft::INVALID_ID {
            crate::runtime::log::info(
                "raft",
                &format!(
                    "raft.node: {me:x} lost leader {:x} at term {term}",
                    self.known_leader
                ),
            );
        } else {
            crate::runtime::log::info(
                "raft",
                &format!("raft.node: {me:x} elected leader {leader:x} at term {term}"),
            );
        }
        let old = std::mem::replace(&mut self.known_leader, leader);
        if old != ::raft::INVALID_ID && old != me && !self.proposals.is_empty() {
            let waiting: Vec<(CoreId, u64)> = self.proposals.drain().map(|(k, _)| k).collect();
            let status = crate::api::errors::EtcdError::TimeoutDueToLeaderFail.status();
            for (from, seq) in waiting {
                self.reply(out, from, seq, Err(status.clone()));
            }
        }
    }

    /// Sends the round's changes, published snapshot and write replies to every core,
    /// when anything was applied (or the cores have not heard from the raft core yet).
    fn broadcast(&mut self, out: &dyn ReplySink) {
        let leader = self.node.raft.leader_id;
        let learner = self.is_learner();
        if self.broadcast_index == Some(self.applied_index)
            && self.round_replies.is_empty()
            && self.broadcast_leader == (leader, learner)
        {
            return;
        }
        self.broadcast_leader = (leader, learner);
        let splits = match self.broadcast_index {
            None => Some(self.splits.clone()),
            Some(_) => None,
        };
        self.broadcast_index = Some(self.applied_index);
        let mut replies = std::mem::take(&mut self.round_replies);
        if replies.iter().any(|(to, _)| *to == cluster::FORWARDED) {
            let (fwd, local): (Vec<_>, Vec<_>) = replies
                .into_iter()
                .partition(|(to, _)| *to == cluster::FORWARDED);
            for (_, r) in fwd {
                self.reply_forwarded(r);
            }
            replies = local;
        }
        let round = Applied {
            index: self.applied_index,
            revision: self.store.current_revision(),
            compact_revision: self.store.compact_revision(),
            raft_term: self.node.raft.term,
            leader,
            learner,
            changes: vec![std::sync::Arc::new(self.store.take_changes())],
            snapshot: self.store.backend().snapshot(),
            replies: Vec::new(),
            splits,
            revoked_leases: std::sync::Arc::new(std::mem::take(&mut self.round_revoked)),
        };
        out.applied(round, replies);
    }

    /// A member that is the only voter elects itself at once instead of waiting out an
    /// election timeout (etcd fast-forwards its ticks for the same reason).
    fn campaign_if_alone(&mut self) {
        let cs = self.node.store().conf_state();
        if cs.voters.len() == 1
            && cs.voters[0] == self.opts.member_id
            && self.node.raft.state != StateRole::Leader
            && self.node.raft.state != StateRole::Candidate
        {
            let _ = self.node.campaign();
        }
    }

    fn send_messages(&mut self, mut msgs: Vec<RaftMessage>) {
        let Some(t) = &self.transport else { return };
        // A snapshot message travels with the db on its own connection.
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot)
        {
            let (snaps, rest): (Vec<_>, Vec<_>) = msgs
                .into_iter()
                .partition(|m| m.get_msg_type() == ::raft::eraftpb::MessageType::MsgSnapshot);
            for m in snaps {
                t.send_snapshot(m, self.store.backend().snapshot());
            }
            msgs = rest;
        }
        t.send(msgs);
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), BootError> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e)?,
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => {
                    return Err(boot_err("raft: joint consensus entries are not built yet"))
                }
            }
            self.applied_index = e.index;
        }
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) -> Result<(), BootError> {
        if e.data.is_empty() {
            // A new leader's empty entry: nothing to apply but the index.
            if e.index > self.store.consistent_index() {
                self.store.set_consistent_index(e.index, e.term);
            }
            // Once the leader has applied its term's first entry it times the leases,
            // each extended by an election timeout (etcd's Promote).
            if self.node.raft.state == StateRole::Leader && e.term == self.node.raft.term {
                let extend = Duration::from_millis(self.opts.election_timeout_ms);
                self.lessor
                    .promote(self.store.leases(), extend, Instant::now());
            }
            return Ok(());
        }
        let op = match crate::api::convert::decode_entry(&e.data) {
            Ok(crate::api::convert::EntryOp::Op(op)) => op,
            Ok(crate::api::convert::EntryOp::Member(m)) => return self.apply_member_entry(e, m),
            Err(what) => {
                return Err(boot_err(format!(
                    "raft entry {} does not decode: {what}",
                    e.index
                )))
            }
        };
        let Some(res) = self.store.apply_at(e.index, e.term, &op) else {
            return Ok(());
        };
        match (&op, &res) {
            (Op::LeaseGrant(g), Ok(_)) => self.lessor.granted(g.id, g.ttl, Instant::now()),
            (Op::LeaseRevoke(r), Ok(_)) => {
                self.lessor.revoked(r.id);
                self.round_revoked.push(r.id);
            }
            _ => {}
        }
        let res = match res {
            Ok(r) => Ok(ReplyBody::Op(r)),
            Err(err @ (mvcc::Error::Db(_) | mvcc::Error::Corrupt { .. })) => {
                return Err(boot_err(format!("applying entry {}: {err}", e.index)))
            }
            Err(err) => Err(status_from_mvcc(&err)),
        };
        self.reply_to_entry(e, res);
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), BootError> {
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        let cc = ConfChange::parse_from_bytes(&e.data)
            .map_err(|err| boot_err(format!("raft entry {}: conf change: {err}", e.index)))?;
        let cs = self
            .node
            .apply_conf_change(&cc)
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?;
        let cs_bytes = cs.write_to_bytes().expect("ConfState encodes");
        let key = cc.node_id.to_be_bytes();
        // The record: the proposer's, merged into the existing one for a promotion (which
        // keeps the published name and client URLs).
        let mut record = MemberRecord::decode(&cc.context[..]).unwrap_or_default();
        record.id = cc.node_id;
        if let Some(old) = self
            .store
            .backend()
            .get(TreeId::Member, &key)
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?
            .and_then(|v| MemberRecord::decode(v).ok())
        {
            record = MemberRecord {
                is_learner: cc.get_change_type() == ConfChangeType::AddLearnerNode,
                ..old
            };
        }
        let backend = self.store.backend_mut();
        let res = match cc.get_change_type() {
            ConfChangeType::RemoveNode => backend
                .remove(TreeId::Member, &key)
                .and_then(|_| backend.insert(TreeId::Meta, &cluster::removed_key(cc.node_id), &[])),
            _ => backend.insert(TreeId::Member, &key, &record.encode_to_vec()),
        }
        .and_then(|_| backend.insert(TreeId::Meta, META_CONF_STATE_KEY, &cs_bytes));
        res.map_err(|err| boot_err(format!("db: {err}")))?;
        self.node.mut_store().set_conf_state(cs);
        self.store.set_consistent_index(e.index, e.term);
        let removed = cc.get_change_type() == ConfChangeType::RemoveNode;
        crate::runtime::log::info(
            "etcdserver/membership",
            &format!(
                "{} member {:x} ({}) in cluster {:x}",
                match cc.get_change_type() {
                    ConfChangeType::AddNode => "added or promoted",
                    ConfChangeType::AddLearnerNode => "added learner",
                    ConfChangeType::RemoveNode => "removed",
                },
                cc.node_id,
                record.peer_urls.join(","),
                self.opts.cluster_id
            ),
        );
        self.membership_changed();
        if removed && cc.node_id == self.opts.member_id {
            crate::runtime::log::error(
                "etcdserver",
                "the member has been permanently removed from the cluster",
            );
            self.exit = Some(Exit::Removed);
        }
        let member = (!removed).then(|| cluster::member_info(&record));
        let members = self
            .members()
            .map_err(|err| boot_err(format!("raft entry {}: {err}", e.index)))?;
        self.reply_to_entry(e, Ok(ReplyBody::MemberChanged { member, members }));
        Ok(())
    }

    /// Queues the reply to an applied entry when this member (this boot) proposed it.
    fn reply_to_entry(&mut self, e: &Entry, body: Result<ReplyBody, Status>) {
        if let Some((member, incarnation, core, seq)) = decode_context(&e.context) {
            if member == self.opts.member_id && incarnation == self.incarnation {
                self.proposals.remove(&(core, seq));
                let reply = Reply {
                    seq,
                    raft_term: self.node.raft.term,
                    leader: self.node.raft.leader_id,
                    body,
                };
                self.round_replies.push((core, reply));
            }
        }
    }

    fn serve_indexed_reads(&mut self, out: &dyn ReplySink) {
        let applied = self.applied_index;
        let mut i = 0;
        while i < self.reads_indexed.len() {
            if self.reads_indexed[i].0 <= applied {
                let (index, reads) = self.reads_indexed.swap_remove(i);
                for r in reads {
                    let res = match &r.op {
                        Some(op) => self.read(op),
                        None => Ok(ReplyBody::ReadIndex(index)),
                    };
                    self.reply(out, r.from, r.seq, res);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Commits the db when it is due, then marks a snapshot and releases WAL segments when
    /// `snapshot_count` entries have been applied since the last one.
    pub async fn maybe_commit(&mut self, now: Instant, force: bool) -> Result<(), BootError> {
        let dirty = self.store.consistent_index() > self.db_committed_index;
        let due = now.duration_since(self.last_db_commit) >= DB_COMMIT_INTERVAL
            || self.store.consistent_index() - self.db_committed_index >= DB_COMMIT_ENTRIES_MAX;
        if !dirty || !(due || force) {
            return Ok(());
        }
        self.store
            .commit()
            .await
            .map_err(|e| boot_err(format!("db commit: {e}; stopping")))?;
        self.db_committed_index = self.store.consistent_index();
        self.last_db_commit = now;
        if self.db_committed_index - self.snapshot_index >= self.opts.snapshot_count.max(1) {
            self.snapshot().await?;
        }
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<(), BootError> {
        let index = self.db_committed_index;
        let term = self.store.consistent_term();
        self.wal
            .save_snapshot_marker(wal::SnapshotMarker { index, term });
        self.wal
            .sync()
            .await
            .map_err(|e| boot_err(format!("WAL: {e}; stopping")))?;
        self.snapshot_index = index;
        let keep_from = index.saturating_sub(SNAPSHOT_CATCH_UP_ENTRIES);
        if keep_from > self.node.store().first_index_raw() {
            self.node.mut_store().compact(keep_from - 1);
        }
        self.wal
            .release_to(keep_from)
            .await
            .map_err(|e| boot_err(format!("WAL: {e}; stopping")))?;
        Ok(())
    }

    /// Answers every queued request with `status` (at shutdown).
    pub fn fail_pending(&mut self, out: &dyn ReplySink, status: &Status) {
        let mut all: Vec<PendingRead> = std::mem::take(&mut self.reads_waiting);
        all.extend(self.reads_requested.drain().flat_map(|(_, (_, r))| r));
        all.extend(self.reads_indexed.drain(..).flat_map(|(_, r)| r));
        for r in all {
            self.reply(out, r.from, r.seq, Err(status.clone()));
        }
        let held: Vec<(CoreId, u64)> = self.held.drain(..).map(|h| (h.0, h.1)).collect();
        for (from, seq) in held {
            self.reply(out, from, seq, Err(status.clone()));
        }
        let proposals: Vec<(CoreId, u64)> = self.proposals.drain().map(|(k, _)| k).collect();
        for (from, seq) in proposals {
            self.reply(out, from, seq, Err(status.clone()));
        }
        let forwarding: Vec<cluster::Forwarding> =
            self.forwarding.drain().map(|(_, f)| f).collect();
        for f in forwarding {
            self.reply(out, f.from, f.seq, Err(status.clone()));
        }
    }
}

/// The raft core's loop: runs until `stop()` says so, then commits the db and returns.
pub async fn run(
    mut core: RaftCore,
    inbox: LocalReceiver<ToRaft>,
    out: &dyn ReplySink,
    stop: impl Fn() -> bool,
) -> Result<Exit, BootError> {
    core.process_ready(out).await?;
    while !stop() && core.exit.is_none() {
        let wait = core.next_tick().saturating_duration_since(Instant::now());
        let first = futures_lite::future::or(async { inbox.recv().await }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        if let Some(msg) = first {
            core.handle(msg, out);
            for _ in 1..REQUESTS_PER_TURN_MAX {
                match futures_lite::future::poll_once(inbox.recv()).await {
                    Some(Some(msg)) => core.handle(msg, out),
                    _ => break,
                }
            }
        }
        let now = Instant::now();
        core.tick_if_due(now);
        core.expire_leases(now);
        core.expire_requests(out, now);
        core.process_ready(out).await?;
        core.maybe_commit(now, false).await?;
    }
    core.fail_pending(out, &client::server_stopped());
    let exit = core.exit.take().unwrap_or(Exit::Stopped);
    if exit == Exit::Restart {
        // The db file was replaced under the store: never commit the old one again.
        core.mark_installed_snapshot().await?;
        return Ok(exit);
    }
    core.maybe_commit(Instant::now(), true).await?;
    Ok(exit)
}

#[cfg(test)]
mod tests;
