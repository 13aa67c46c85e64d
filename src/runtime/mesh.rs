//! Every cross-core message, and the channels that carry them, built once at boot.
//!
//! Topology: each core has one bounded mailbox to the raft core (`ToRaft`) and the raft
//! core has one reply channel back to each core (`Reply`). On the raft core itself both
//! directions are local channels. Besides, every ordered pair of cores has a bounded
//! channel of `CoreMsg`: applied rounds (raft core → every core), Range parts and their
//! replies (shard to shard); senders queue in a `shard::node::Outbox`, never waiting. Messages are owned and `Send`: bytes and plain structs,
//! never `Rc` or references.
//!
//! One value is shared instead of sent: the [`RoundMark`], the applied index of the last
//! round the raft core sent out (written by the raft core before it sends the round, read
//! by any core before it serves a serializable read), so no core serves a read older than
//! one another core may already have served.
//!
//! Bounds: a core has at most `requests_inflight_max` requests waiting for a reply (its
//! `RaftClient` refuses more with etcd's "too many requests"), and both channel directions
//! are that deep, so the raft core's `try_send` of a reply never finds the channel full.

use crate::grpc::Status;
use crate::mvcc::db::ReadSnapshot;
use crate::mvcc::{Change, Op, OpResponse, RangeRequest, RangeResponse};
use bytes::Bytes;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The applied index of the newest round the raft core has sent to the cores.
///
/// Writer: the raft core, before it sends the round (`publish`). Readers: every core,
/// before serving a serializable read: a core first applies up to this index, so a read
/// anywhere on the member is never older than what any core has served (a reply to a
/// write, another client's read). The rounds themselves still travel as messages; this is
/// only their high-water mark. Never decreases within a process.
#[derive(Clone, Debug, Default)]
pub struct RoundMark(Arc<AtomicU64>);

impl RoundMark {
    pub fn publish(&self, index: u64) {
        self.0.fetch_max(index, Ordering::Release);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A core's index in the executor set (0-based, also its CPU slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreId(pub u16);

/// Sender: a request handler on core `from`, through its `RaftClient`.
/// Receiver: the raft core. Reply: exactly one `Reply` with the same `seq`, to `from`.
#[derive(Debug)]
pub enum ToRaft {
    /// A write: an encoded `keel.internal.RaftRequest`, proposed to raft; replied after
    /// it is committed (durable) and applied, with the store's response.
    Propose { from: CoreId, seq: u64, data: Bytes },
    /// A Range or read-only Txn. Linearizable: served once the store has applied up to a
    /// ReadIndex taken after the request arrived (batched). Serializable: served at once.
    Read {
        from: CoreId,
        seq: u64,
        op: Op,
        linearizable: bool,
    },
    /// Maintenance.Status: raft and db state.
    Status { from: CoreId, seq: u64 },
    /// Cluster.MemberList.
    MemberList { from: CoreId, seq: u64 },
    /// Maintenance.HashKV at `revision` (0 = current).
    HashKv {
        from: CoreId,
        seq: u64,
        revision: i64,
    },
    /// A ReadIndex for a linearizable read served by the shards: replied with
    /// `ReplyBody::ReadIndex(r)` once the leader confirmed `r` (batched with others).
    ReadIndex { from: CoreId, seq: u64 },
    /// Lease keep-alives, each with the time its core received it: the lease's deadline
    /// moves to that time + TTL on the leader's clock, without a raft proposal. Replied
    /// `ReplyBody::LeaseRenewed` (one result per renewal, in order). A core batches the
    /// keep-alives its streams received meanwhile (see `api::lease::Renewer`).
    LeaseRenew {
        from: CoreId,
        seq: u64,
        renewals: Vec<(i64, std::time::Instant)>,
    },
    /// Lease.LeaseTimeToLive: replied `ReplyBody::LeaseTimeToLive`.
    LeaseTimeToLive {
        from: CoreId,
        seq: u64,
        id: i64,
        keys: bool,
    },
    /// Lease.LeaseLeases: replied `ReplyBody::Leases`.
    LeaseLeases { from: CoreId, seq: u64 },
    /// A membership change (decided by the leader; a follower forwards it): replied
    /// `ReplyBody::MemberChanged` once applied.
    Member {
        from: CoreId,
        seq: u64,
        op: MemberOp,
    },
    /// Maintenance.MoveLeader (on the leader only): replied `ReplyBody::Done` once
    /// `target` leads.
    MoveLeader { from: CoreId, seq: u64, target: u64 },

    // From the peer transport (the raft core's own tasks; no reply).
    /// Raft messages from a peer.
    Peer(Vec<::raft::eraftpb::Message>),
    /// A request a follower forwarded to this member (as leader).
    Forwarded {
        member: u64,
        fwd: crate::pb::keel::internal::Forward,
    },
    /// The leader's answer to a request this member forwarded.
    ForwardReply(crate::pb::keel::internal::ForwardReply),
    /// A peer could not be reached (raft probes it again).
    Unreachable(u64),
    /// Whether a snapshot reached `to`.
    SnapshotReport { to: u64, ok: bool },
    /// A snapshot from the leader is in place as the db (at this raft index and term):
    /// restart on it.
    SnapshotInstalled { index: u64, term: u64 },
    /// A peer said this member was removed from the cluster.
    Removed,
}

/// A membership change, as etcd's Cluster service asks for it.
#[derive(Debug, Clone)]
pub enum MemberOp {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

/// Sender: the raft core. Receiver: the `RaftClient` of the core that sent the request.
#[derive(Debug)]
pub struct Reply {
    pub seq: u64,
    /// The raft term when the reply was made (for the ResponseHeader).
    pub raft_term: u64,
    /// The leader the raft core knew of (0: none), so every core knows it without asking
    /// (for `hasleader` requests).
    pub leader: u64,
    pub body: Result<ReplyBody, Status>,
}

#[derive(Debug)]
pub enum ReplyBody {
    Op(OpResponse),
    Status(StatusInfo),
    Members(Vec<MemberInfo>),
    /// After a membership change: the member it concerned (added) and the new list.
    MemberChanged {
        member: Option<MemberInfo>,
        members: Vec<MemberInfo>,
    },
    /// Done, nothing to say (MoveLeader).
    Done,
    HashKv {
        hash: u32,
        compact_revision: i64,
        revision: i64,
    },
    ReadIndex(u64),
    /// Per renewal: the TTL and the new deadline, or `None` if the lease is gone (or
    /// was past its deadline when the keep-alive arrived).
    LeaseRenewed {
        revision: i64,
        results: Vec<Option<(i64, std::time::Instant)>>,
    },
    /// `ttl` -1: no such lease.
    LeaseTimeToLive {
        revision: i64,
        ttl: i64,
        granted_ttl: i64,
        keys: Vec<Vec<u8>>,
    },
    Leases {
        revision: i64,
        ids: Vec<i64>,
    },
}

/// What the raft core applied in one round, sent to every core (one message per core per
/// round): the changes in revision order, the published snapshot that holds them, the
/// watermark they bring the core to, and the replies to this core's writes among them
/// (in the same message so a client that got its reply reads its write on that core).
pub struct Applied {
    /// Raft index applied up to.
    pub index: u64,
    /// Store revision and compact revision after the round.
    pub revision: i64,
    pub compact_revision: i64,
    pub raft_term: u64,
    /// The leader as the raft core knows it (0: none): every core learns it from the
    /// rounds, so `hasleader` requests are judged right on a core that never asked.
    pub leader: u64,
    /// This member is a learner (its cores refuse streams, as etcd's interceptor does).
    pub learner: bool,
    /// In chunks (one per round; more when queued rounds were merged), each whole
    /// revisions, in order.
    pub changes: Vec<Arc<Vec<Change>>>,
    pub snapshot: ReadSnapshot,
    pub replies: Vec<Reply>,
    /// The shard split keys, in the first round only (the shards' boot).
    pub splits: Option<Arc<Vec<Vec<u8>>>>,
    /// Leases revoked in the round (each core drops them from its keep-alive cache).
    pub revoked_leases: Arc<Vec<i64>>,
}

impl Applied {
    /// The same round without replies, for another core (the changes and the snapshot
    /// are shared, not copied).
    pub fn share(&self) -> Applied {
        Applied {
            index: self.index,
            revision: self.revision,
            compact_revision: self.compact_revision,
            raft_term: self.raft_term,
            leader: self.leader,
            learner: self.learner,
            changes: self.changes.clone(),
            snapshot: self.snapshot.clone(),
            replies: Vec::new(),
            splits: self.splits.clone(),
            revoked_leases: self.revoked_leases.clone(),
        }
    }

    /// Merges the round after this one into it (rounds queued for a busy core travel as
    /// one): all changes in order, the later snapshot and watermark, all replies. Keeps
    /// the number of distinct snapshots in flight bounded by the channel depth.
    pub fn absorb(&mut self, later: Applied) {
        self.index = later.index;
        self.revision = later.revision;
        self.compact_revision = later.compact_revision;
        self.raft_term = later.raft_term;
        self.leader = later.leader;
        self.learner = later.learner;
        self.changes.extend(later.changes);
        self.snapshot = later.snapshot;
        self.replies.extend(later.replies);
        if self.splits.is_none() {
            self.splits = later.splits;
        }
        if !later.revoked_leases.is_empty() {
            let mut all = self.revoked_leases.to_vec();
            all.extend(later.revoked_leases.iter());
            self.revoked_leases = Arc::new(all);
        }
    }
}

/// Core-to-core messages (the raft core is core 0 and sends `Applied` this way too).
pub enum CoreMsg {
    Applied(Applied),
    /// Serve `req` on the receiver's shard at `at_revision` once it has applied
    /// `min_index`; reply `RangeReply` with the same `seq` to `from`.
    Range {
        from: CoreId,
        seq: u64,
        req: RangeRequest,
        at_revision: i64,
        min_index: u64,
    },
    RangeReply {
        seq: u64,
        /// The replying shard's applied index (so a caller that raced a compaction can
        /// catch up and retry).
        index: u64,
        body: Result<RangeResponse, Status>,
    },
}

/// What Maintenance.Status reports.
#[derive(Clone, Debug, Default)]
pub struct StatusInfo {
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub raft_applied_index: u64,
    pub db_size_bytes: i64,
    pub db_size_in_use_bytes: i64,
    pub revision: i64,
    pub is_learner: bool,
}

/// One member, as Cluster.MemberList shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// One core's ends of the mesh, moved into its executor thread at boot.
pub struct CoreLinks {
    pub core: CoreId,
    /// Requests to the raft core (`None` on the raft core: it uses local channels).
    pub to_raft: Option<SharedSender<ToRaft>>,
    /// Replies from the raft core (`None` on the raft core).
    pub replies: Option<SharedReceiver<Reply>>,
    /// To every other core.
    pub peers_out: Vec<(CoreId, SharedSender<CoreMsg>)>,
    /// From every other core.
    pub peers_in: Vec<(CoreId, SharedReceiver<CoreMsg>)>,
    /// The member's round mark (one, shared by every core).
    pub round_mark: RoundMark,
}

/// Depth of each core-to-core channel (senders queue locally beyond it, never block).
/// Each `Applied` in flight pins one published snapshot: cores × depth stays well under
/// the Db's `EPOCH_SLOTS_MAX`.
pub const PEER_CHANNEL_DEPTH: usize = 128;

/// The raft core's ends: one request receiver and one reply sender per other core.
pub struct RaftLinks {
    pub requests: Vec<(CoreId, SharedReceiver<ToRaft>)>,
    pub replies: Vec<(CoreId, SharedSender<Reply>)>,
}

/// Builds the channels for `core_count` cores with the raft core at `raft_core`.
pub fn build(
    core_count: usize,
    raft_core: CoreId,
    requests_inflight_max: usize,
) -> (Vec<CoreLinks>, RaftLinks) {
    let mut cores = Vec::with_capacity(core_count);
    let round_mark = RoundMark::default();
    let mut raft = RaftLinks {
        requests: Vec::new(),
        replies: Vec::new(),
    };
    for i in 0..core_count {
        let core = CoreId(i as u16);
        if core == raft_core {
            cores.push(CoreLinks {
                core,
                to_raft: None,
                replies: None,
                peers_out: Vec::new(),
                peers_in: Vec::new(),
                round_mark: round_mark.clone(),
            });
            continue;
        }
        let (req_tx, req_rx) = shared_channel::new_bounded(requests_inflight_max);
        let (rep_tx, rep_rx) = shared_channel::new_bounded(requests_inflight_max);
        raft.requests.push((core, req_rx));
        raft.replies.push((core, rep_tx));
        cores.push(CoreLinks {
            core,
            to_raft: Some(req_tx),
            replies: Some(rep_rx),
            peers_out: Vec::new(),
            peers_in: Vec::new(),
            round_mark: round_mark.clone(),
        });
    }
    for a in 0..core_count {
        for b in 0..core_count {
            if a != b {
                let (tx, rx) = shared_channel::new_bounded(PEER_CHANNEL_DEPTH);
                cores[a].peers_out.push((CoreId(b as u16), tx));
                cores[b].peers_in.push((CoreId(a as u16), rx));
            }
        }
    }
    (cores, raft)
}
