//! The raft core: raft-rs's `RawNode` driven over Keel's WAL, applying committed entries
//! to the MVCC store in log order, and answering the cores that asked.
//!
//! Runs on: the raft core only. Other cores reach it through `RaftClient` messages
//! (`mesh`).
//!
//! One turn of the loop:
//! 1. Wait for a request, the next tick or an answer of the WAL's writer; then drain what
//!    else is queued (bounded) and whatever the writer has made durable since.
//! 2. Propose writes; queue linearizable reads and take one ReadIndex for all of them.
//! 3. For each `Ready`: apply the committed entries it hands over (raft-rs hands over only
//!    entries this member's WAL holds durably); put new entries into raft's log and hand
//!    them and the hard state to the WAL's writer (`persist.rs`, a task beside the loop,
//!    which syncs what queued since its last sync: group commit) with raft-rs's
//!    `advance_append_async`; messages raft holds until they are durable wait for the
//!    writer's answer (`on_persisted`, which is also what lets raft count this member's
//!    log as persisted). The loop does not wait for the disk: proposals, ReadIndex,
//!    keep-alives and appends to followers go on while a batch syncs.
//! 4. Publish the db and send every core the round (`ReplySink::applied`): the changes
//!    for its shard and watchers, the snapshot that holds them, and the replies to its
//!    writes, which it delivers after applying the round (so a client reads its write).
//!    Answer ReadIndex requests whose index is applied. Commit the db every
//!    `DB_COMMIT_INTERVAL` (the WAL is what makes writes durable; the db commit bounds
//!    replay at restart), and every `snapshot_count` entries mark a snapshot and release
//!    old WAL segments (the dropped log entries are freed on the blocking pool and the
//!    segment files removed by a task of their own: on the loop they were a 30–60 ms stall
//!    of every write, tuning.md "Issue 22").
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
//! Parts, each with its state in a named struct of `RaftCore`:
//! - `boot.rs`: open, bootstrap, join, recover (before the loop).
//! - `writes.rs` (`Writes`): writes held without a leader, proposed ones until applied.
//! - `reads.rs` (`ReadQueue`): linearizable reads and ReadIndex batches.
//! - `leases.rs` (`LeaseDuty`, over `lessor.rs`): keep-alives, TimeToLive, expiry.
//! - `autocompact.rs` (`AutoCompactDuty`): etcd's auto-compaction, on the leader only.
//! - `apply.rs` (`Round`): `Ready`, apply, the rounds to the cores, db commits, snapshots.
//! - `cluster.rs` (`Forwards`): membership, forwarding to the leader, leader transfer,
//!   request timeouts; `transport.rs`: the peer port; `entry.rs`: the log's entry codec.
//! - `mod.rs`: `handle` (one request in, routed to its part) and the loop (`run`).
//!
//! Every request names its reply type (`mesh::ReplyTo<T>`); `respond` takes only a `T`,
//! `fail` a `ServerError` (what the services turn into etcd's wire errors).
//!
//! Invariants (`RaftCore::invariants`, checked every loop turn in debug builds and tests):
//! - A client hears about a write only after its entry is durable in the WAL on a quorum
//!   and applied on the member it asked.
//! - Entries are applied in index order, each once: `Store::apply_at` skips indexes at or
//!   below the db's consistent index, and raft starts with `applied` = that index.
//! - The raft conf state and the member records are written in the same db transaction as
//!   the consistent index of the entry that changed them.

mod alarm;
mod apply;
pub use alarm::alarm_name;
mod auth;
pub mod autocompact;
mod boot;
pub mod client;
mod cluster;
mod compaction;
mod corrupt;
mod defrag;
pub mod entry;
pub mod etcd_db;
mod leases;
pub mod lessor;
pub mod log;
mod persist;
mod reads;
mod rebalance;
pub mod restore;
pub mod transport;
mod writes;

pub use client::{RaftClient, RaftSender};

use crate::mesh::ServerError;
use crate::mesh::{
    Applied, CoreId, HashKv, LeaseList, LeaseRenewed, LeaseTtl, MemberChanged, MemberInfo, Members,
    Origin, ReadIndex, Reply, ReplyKind, ReplyTo, StatusInfo, ToRaft,
};
use crate::mvcc::db::TreeId;
use crate::mvcc::{self, Op, OpResponse, Store, StoreOptions};
use crate::pb::keel::internal::Member as MemberRecord;
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

use boot::to_wal_entry;
use leases::LeaseDuty;
pub use leases::LEASE_EXPIRY_CHECK_INTERVAL;
use reads::{PendingRead, ReadQueue, ReadWaiter};
use writes::{decode_context, encode_context, Writes};

/// How often the db is committed (fdatasync + meta flip) while writes arrive. etcd's
/// backend commits every 100 ms too.
pub const DB_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Applied entries after which the db is committed even before the interval.
pub const DB_COMMIT_ENTRIES_MAX: u64 = 10_000;
/// How often, between db commits, the kernel is asked to start writing the db's dirty
/// pages (`Db::start_writeback`), so that the commit's fdatasync finds little left to do.
pub const DB_WRITEBACK_INTERVAL: Duration = Duration::from_millis(10);
/// Entries kept in the log behind a snapshot for slow followers (etcd's
/// SnapshotCatchUpEntries).
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Requests taken from the mailbox per loop turn (one proposal batch at most this big).
pub const REQUESTS_PER_TURN_MAX: usize = 4096;

const META_CONF_STATE_KEY: &[u8] = b"raft_conf_state";

/// Where the member's files live and who it is.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    /// Peer TLS (certificates read at boot): dialing https / unixs peer URLs uses it.
    pub peer_tls: Option<crate::tls::Material>,
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
    /// `--snapshot-bytes`: a snapshot also when the log held in memory reaches this many
    /// bytes ([`log::LogStore::bytes`]); the entries kept after it for lagging followers
    /// are bounded by a quarter of it too.
    pub snapshot_bytes: u64,
    pub max_txn_ops: usize,
    /// Key-range shards (one per core) and configured split keys (empty: from the data).
    pub shards: usize,
    pub shard_splits: Vec<Vec<u8>>,
    /// Move split keys online as the keys drift (off with `shard_splits`).
    pub shard_rebalance: bool,
    /// `--idle-spin`: see [`persist`] (zero: never spin).
    pub idle_spin: Duration,
    /// Lease checkpoints (`None`: off).
    pub lease_checkpoint_interval: Option<Duration>,
    /// `--experimental-corrupt-check-time` (`None`: no periodic check).
    pub corrupt_check_interval: Option<Duration>,
    /// `--experimental-initial-corrupt-check`.
    pub initial_corrupt_check: bool,
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
    /// `--auto-compaction-*` (`None`: off).
    pub auto_compaction: Option<crate::config::AutoCompaction>,
    /// `--force-new-cluster`: at a restart, make this member the only one (`boot.rs`).
    pub force_new_cluster: bool,
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

/// What the next round to the cores carries, and what they last heard.
struct Round {
    /// Replies to writes applied this round; they travel with the round's changes.
    replies: Vec<(CoreId, Reply)>,
    /// The applied index the cores last heard of (`None`: not yet, send the first round).
    sent_index: Option<u64>,
    /// The leader and learner flag the cores last heard of (a change alone makes a round).
    sent_leader: (u64, bool),
    /// The shard split keys now: sent whole with the first round, then changed only by
    /// the rebalance steps the rounds carry (`rebalance.rs`).
    splits: std::sync::Arc<Vec<Vec<u8>>>,
    /// The db file's size the cores last heard of (a change alone makes a round, so a
    /// defragmentation's shrink reaches their quota checks at once).
    sent_db_bytes: u64,
    /// Send a round even with nothing new applied: the cores then drop their older
    /// snapshots (a defragmentation waits for their pins to go before it cuts the file).
    refresh: bool,
}

/// This member's announcement of its name and client URLs (etcd's publish).
struct Publish {
    /// Applied (from this boot).
    done: bool,
    /// When it was last proposed.
    proposed_at: Option<Instant>,
    on_done: Option<Box<dyn FnOnce()>>,
}

/// A MoveLeader waiting for its transferee to lead.
struct LeaderTransfer {
    to: ReplyTo<crate::mesh::LeaderMoved>,
    target: u64,
    deadline: Instant,
}

pub struct RaftCore {
    node: RawNode<LogStore>,
    store: Store,
    /// The WAL, behind its writer task (`persist.rs`).
    wal: persist::Persister,
    /// Messages raft holds until the `Ready` that made them is durable (a follower's
    /// append response, a vote), by `Ready` number.
    held: VecDeque<(u64, Vec<RaftMessage>)>,
    opts: RaftOptions,
    /// Linearizable reads and ReadIndex requests.
    reads: ReadQueue,
    applied_index: u64,
    snapshot_index: u64,
    db_committed_index: u64,
    last_db_commit: Instant,
    /// When the db's writeback was last started, and whether it is still running.
    last_db_writeback: Instant,
    db_writeback_running: Rc<std::cell::Cell<bool>>,
    next_tick: Instant,
    incarnation: u64,
    /// What the next round to the cores carries, and what they last heard.
    round: Round,
    /// Lease deadlines and the lease entries the leader owes.
    leases: LeaseDuty,
    /// Users, roles and permissions; what the next round owes the cores.
    auth: auth::AuthDuty,
    /// The cluster's active alarms.
    alarms: alarm::AlarmDuty,
    /// Defragment calls and the defragmentation they wait for.
    defrag: defrag::DefragDuty,
    /// The auto-compactor (`None`: off).
    auto_compact: Option<autocompact::AutoCompactDuty>,
    /// The compaction's sweep and the physical Compact calls waiting for it.
    compaction: compaction::CompactionDuty,
    rebalance: rebalance::Rebalance,
    /// Corruption checks: damaged pages found, hash rounds with the peers.
    corrupt: corrupt::CorruptDuty,
    /// This member's writes: waiting for a leader, and proposed but not yet applied.
    writes: Writes,
    /// The leader as of the last `Ready` (0: none), for logging its changes.
    known_leader: u64,
    /// The peer transport (`None` in unit tests of a single member).
    transport: Option<Rc<Transport>>,
    /// The members a joining member was told of, until its log brings the membership.
    seed_members: Vec<MemberInfo>,
    /// Requests forwarded between this member and the leader.
    forwards: cluster::Forwards,
    move_leader: Option<LeaderTransfer>,
    /// This member's announcement of its name and client URLs.
    publish: Publish,
    exit: Option<Exit>,
    /// The (index, term) of a snapshot installed as the db, to mark in the WAL.
    installed_snapshot: Option<(u64, u64)>,
    request_timeout: Duration,
}

fn boot_err(what: impl std::fmt::Display) -> BootError {
    BootError(what.to_string())
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

/// The sender of a client request (`None`: peer and transport input).
fn client_request_origin(msg: &ToRaft) -> Option<Origin> {
    Some(match msg {
        ToRaft::Propose { to, .. } | ToRaft::Read { to, .. } => to.origin(),
        ToRaft::ProposeAuth { to, .. } => to.origin(),
        ToRaft::ProposeAlarm { to, .. } => to.origin(),
        ToRaft::Defrag { to } => to.origin(),
        ToRaft::Status { to } => to.origin(),
        ToRaft::MemberList { to } => to.origin(),
        ToRaft::HashKv { to, .. } => to.origin(),
        ToRaft::ReadIndex { to } => to.origin(),
        ToRaft::LeaseRenew { to, .. } => to.origin(),
        ToRaft::LeaseTimeToLive { to, .. } => to.origin(),
        ToRaft::LeaseLeases { to } => to.origin(),
        ToRaft::Member { to, .. } => to.origin(),
        ToRaft::MoveLeader { to, .. } => to.origin(),
        _ => return None,
    })
}

impl RaftCore {
    /// What holds at the end of every loop turn (checked in debug builds and tests).
    #[cfg(debug_assertions)]
    pub fn invariants(&self) {
        let committed = self.node.raft.raft_log.committed;
        assert!(self.applied_index <= committed, "applied past the commit");
        // Applied (and so answered) only what this member's WAL holds durably.
        assert!(
            self.applied_index <= self.node.raft.raft_log.persisted,
            "applied past this member's durable log"
        );
        let consistent = self.store.consistent_index();
        assert!(
            self.db_committed_index <= consistent,
            "the db committed past apply"
        );
        assert!(
            consistent <= self.applied_index,
            "the db holds unapplied entries"
        );
        assert!(
            self.snapshot_index <= self.db_committed_index,
            "a snapshot past the db"
        );
        // Every read whose index was applied has been answered.
        assert!(self
            .reads
            .indexed
            .iter()
            .all(|(i, _)| *i > self.applied_index));
        // The round went out: no reply waits for the next one.
        assert!(
            self.round.replies.is_empty(),
            "replies left behind by the round"
        );
        self.writes.invariants();
        assert!(self
            .forwards
            .to_leader
            .keys()
            .all(|id| *id < self.forwards.next_leader_id));
        assert!(self
            .forwards
            .from_followers
            .keys()
            .all(|seq| *seq < self.forwards.next_follower_seq));
    }

    /// The store's key index, for the shard of this core (`Node::read_raft_index`).
    pub fn shared_index(&self) -> std::rc::Rc<mvcc::store::SharedIndex> {
        self.store.shared_index()
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
        if let Some(origin) = client_request_origin(&msg) {
            let allowed = matches!(
                msg,
                ToRaft::Status { .. }
                    | ToRaft::Read {
                        linearizable: false,
                        ..
                    }
            );
            if !allowed && self.is_learner() {
                self.fail(out, origin, ServerError::NotSupportedForLearner);
                return;
            }
        }
        match msg {
            ToRaft::Propose { to, data } => self.hold_proposal(out, to.origin(), data),
            ToRaft::ProposeAuth { to, data } => self.hold_proposal(out, to.origin(), data),
            ToRaft::ProposeAlarm { to, data } => self.hold_proposal(out, to.origin(), data),
            ToRaft::Read {
                to,
                op,
                linearizable,
            } => {
                if linearizable {
                    let deadline = Instant::now() + self.request_timeout;
                    self.reads.waiting.push(PendingRead {
                        deadline,
                        waiter: ReadWaiter::Op(to, op),
                    });
                } else {
                    let res = self.read(&op);
                    self.respond(out, to, res);
                }
            }
            ToRaft::ReadIndex { to } => {
                let deadline = Instant::now() + self.request_timeout;
                self.reads.waiting.push(PendingRead {
                    deadline,
                    waiter: ReadWaiter::Index(to),
                });
            }
            ToRaft::LeaseRenew { to, renewals } => self.lease_renew(out, to, renewals),
            ToRaft::LeaseTimeToLive { to, id, keys } => self.lease_time_to_live(out, to, id, keys),
            ToRaft::LeaseLeases { to } => {
                let body = LeaseList {
                    revision: self.store.current_revision(),
                    ids: self.store.leases().iter().map(|(id, _)| id).collect(),
                };
                self.respond(out, to, Ok(body));
            }
            ToRaft::Defrag { to } => self.start_defrag(to),
            ToRaft::Status { to } => {
                let info = self.status_info();
                self.respond(out, to, Ok(info));
            }
            ToRaft::MemberList { to } => {
                let members = self.members().map(Members).map_err(ServerError::from);
                self.respond(out, to, members);
            }
            ToRaft::HashKv { to, revision } => {
                let res = self
                    .store
                    .hash_kv(revision)
                    .map(|(hash, compact_revision)| HashKv {
                        hash,
                        compact_revision,
                        revision: self.store.current_revision(),
                    })
                    .map_err(ServerError::from);
                self.respond(out, to, res);
            }
            ToRaft::Member { to, op } => self.member_change(out, to, op),
            ToRaft::MoveLeader { to, target } => self.move_leader(out, to, target),
            ToRaft::Peer(msgs) => {
                for m in msgs {
                    if m.get_msg_type() == ::raft::eraftpb::MessageType::MsgHeartbeatResponse {
                        crate::metrics::heartbeat_answered(m.from);
                    }
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
        }
    }

    /// Answers `to` (a local core, or the member that forwarded the request).
    fn respond<T: ReplyKind>(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<T>,
        body: Result<T, ServerError>,
    ) {
        let reply = to.reply(body, self.node.raft.term, self.node.raft.leader_id);
        self.send_reply(out, to.from, reply);
    }

    /// Answers `origin` with an error.
    fn fail(&mut self, out: &dyn ReplySink, origin: Origin, e: ServerError) {
        if matches!(
            e,
            ServerError::NoLeader
                | ServerError::Timeout
                | ServerError::TimeoutDueToLeaderFail
                | ServerError::Stopped
                | ServerError::ProposalRefused(_)
        ) {
            crate::metrics::inc(crate::metrics::Counter::ProposalsFailed);
        }
        let reply = origin.fail(e, self.node.raft.term, self.node.raft.leader_id);
        self.send_reply(out, origin.from, reply);
    }

    fn send_reply(&mut self, out: &dyn ReplySink, to: CoreId, reply: Reply) {
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

    pub fn status_info(&self) -> StatusInfo {
        let stats = self.store.backend().stats();
        StatusInfo {
            leader: self.node.raft.leader_id,
            raft_index: self.node.raft.raft_log.last_index(),
            raft_term: self.node.raft.term,
            raft_applied_index: self.applied_index,
            // etcd's: the high-water mark (bbolt's size), and the pages in use of it.
            db_size_bytes: self.store.backend().size_bytes() as i64,
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

    /// Answers every queued request with etcd's "server stopped" (at shutdown).
    pub fn fail_pending(&mut self, out: &dyn ReplySink) {
        let mut origins: Vec<Origin> = Vec::new();
        origins.extend(self.reads.waiting.drain(..).map(|r| r.origin()));
        origins.extend(
            self.reads
                .requested
                .drain()
                .flat_map(|(_, (_, r))| r)
                .map(|r| r.origin()),
        );
        origins.extend(
            self.reads
                .indexed
                .drain(..)
                .flat_map(|(_, r)| r)
                .map(|r| r.origin()),
        );
        origins.extend(self.writes.held.drain(..).map(|h| h.origin));
        origins.extend(self.writes.waiting.drain().map(|(k, _)| k));
        origins.extend(self.take_physical_compacts());
        origins.extend(
            self.forwards
                .to_leader
                .drain()
                .filter_map(|(_, f)| f.origin()),
        );
        for origin in origins {
            self.fail(out, origin, ServerError::Stopped);
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
        let next = [
            core.defrag.due(),
            core.corrupt.due(),
            core.compaction_due(),
            core.rebalance.due(),
        ]
        .into_iter()
        .flatten()
        .fold(core.next_tick(), Instant::min);
        let next = core.auto_compact_due().map_or(next, |t| t.min(next));
        let wait = next.saturating_duration_since(Instant::now());
        let wal = &mut core.wal;
        let first = futures_lite::future::or(
            async { Woken::Request(inbox.recv().await) },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(wait).await;
                    Woken::Timer
                },
                async { Woken::Wal(wal.next().await) },
            ),
        )
        .await;
        match first {
            Woken::Request(Some(msg)) => {
                core.handle(msg, out);
                for _ in 1..REQUESTS_PER_TURN_MAX {
                    match futures_lite::future::poll_once(inbox.recv()).await {
                        Some(Some(msg)) => core.handle(msg, out),
                        _ => break,
                    }
                }
            }
            Woken::Wal(done) => core.on_wal_done(done)?,
            Woken::Request(None) | Woken::Timer => {}
        }
        // Whatever else the WAL's writer has made durable meanwhile.
        while let Some(done) = core.wal.try_next().await {
            core.on_wal_done(done)?;
        }
        let now = Instant::now();
        core.tick_if_due(now);
        core.expire_leases(now);
        core.auto_compact(now);
        core.expire_requests(out, now);
        core.process_ready(out).await?;
        core.maybe_commit(now, false).await?;
        core.defrag_turn(out).await?;
        core.corrupt_turn(out)?;
        core.compaction_turn(out)?;
        core.rebalance_turn(out);
        #[cfg(debug_assertions)]
        if core.exit.is_none() {
            core.invariants();
        }
    }
    core.fail_pending(out);
    let exit = core.exit.take().unwrap_or(Exit::Stopped);
    if exit == Exit::Restart {
        // The db file was replaced under the store: never commit the old one again.
        core.mark_installed_snapshot().await?;
        core.wal.close().await;
        return Ok(exit);
    }
    core.maybe_commit(Instant::now(), true).await?;
    core.wal.close().await;
    Ok(exit)
}

/// What woke the raft loop.
enum Woken {
    Request(Option<ToRaft>),
    Timer,
    Wal(persist::Done),
}

#[cfg(test)]
mod tests;
