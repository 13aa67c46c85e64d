//! Every cross-core message, and the channels that carry them, built once at boot.
//!
//! Topology: each core has one bounded mailbox to the raft core (`ToRaft`) and the raft
//! core has one reply channel back to each core (`Reply`). On the raft core itself both
//! directions are local channels. Besides, every ordered pair of cores has a bounded
//! channel of `CoreMsg`: applied rounds (raft core → every core), Range parts and their
//! replies (shard to shard); senders queue in a `node::Outbox`, never waiting. Messages are owned and `Send`: bytes and plain structs,
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

pub mod error;

use crate::auth::tokens::TokenEvent;
use crate::auth::{AuthOutcome, AuthView};
use crate::mvcc::db::ReadSnapshot;
use crate::mvcc::{Change, Op, OpResponse, RangeRequest, RangeResponse};
use bytes::Bytes;
pub use error::ServerError;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use std::marker::PhantomData;
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

/// The read watermark of a core: what its shard has applied (from the rounds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Watermark {
    pub index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub raft_term: u64,
}

/// A core's index in the executor set (0-based, also its CPU slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreId(pub u16);

/// Who waits for a reply of type `T`: a request handler on core `from`, by sequence number.
///
/// A request carries one and the raft core answers through it (`reply`), which takes a
/// `T` and nothing else: the kind of a reply follows from the kind of the request. The
/// raft core keeps the untyped `Origin` only where it answers with an error.
pub struct ReplyTo<T> {
    pub from: CoreId,
    pub seq: u64,
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for ReplyTo<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ReplyTo<T> {}

impl<T> std::fmt::Debug for ReplyTo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({:?}, {})", self.from, self.seq)
    }
}

impl<T: ReplyKind> ReplyTo<T> {
    /// For the `RaftClient` that sends the request, and for the raft core where a request
    /// travels through the raft log (the entry's context names its proposer; the entry's
    /// kind names the reply: an `Op` answers a write, a member entry a membership change).
    pub fn new(from: CoreId, seq: u64) -> ReplyTo<T> {
        ReplyTo {
            from,
            seq,
            kind: PhantomData,
        }
    }

    pub fn origin(self) -> Origin {
        Origin {
            from: self.from,
            seq: self.seq,
        }
    }

    /// The reply, stamped with the raft term and leader the raft core knows.
    pub fn reply(self, body: Result<T, ServerError>, raft_term: u64, leader: u64) -> Reply {
        Reply {
            seq: self.seq,
            raft_term,
            leader,
            body: body.map(T::wrap),
        }
    }
}

/// A request's sender without its reply type: where an error (which every request may
/// get) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub from: CoreId,
    pub seq: u64,
}

impl Origin {
    pub fn fail(self, e: ServerError, raft_term: u64, leader: u64) -> Reply {
        Reply {
            seq: self.seq,
            raft_term,
            leader,
            body: Err(e),
        }
    }
}

/// Sender: a request handler on core `to.from`, through its `RaftClient`.
/// Receiver: the raft core. Reply: exactly one `Reply` through `to` (an error through
/// its `Origin`).
#[derive(Debug)]
pub enum ToRaft {
    /// A write: an encoded `keel.internal.RaftRequest`, proposed to raft; replied after
    /// it is committed (durable) and applied, with the store's response.
    Propose {
        to: ReplyTo<OpResponse>,
        data: Bytes,
    },
    /// An Auth call: an encoded `keel.internal.RaftRequest`, proposed to raft like a
    /// write; replied once applied, with its outcome.
    ProposeAuth {
        to: ReplyTo<AuthOutcome>,
        data: Bytes,
    },
    /// A Range or read-only Txn. Linearizable: served once the store has applied up to a
    /// ReadIndex taken after the request arrived (batched). Serializable: served at once.
    Read {
        to: ReplyTo<OpResponse>,
        op: Op,
        linearizable: bool,
    },
    /// Maintenance.Alarm: an encoded `keel.internal.RaftRequest` (an AlarmRequest),
    /// proposed like a write; replied once applied, with the alarms it concerns.
    ProposeAlarm { to: ReplyTo<AlarmList>, data: Bytes },
    /// Maintenance.Defragment: replied once the db is defragmented (moved in slices
    /// between rounds; reads and writes go on).
    Defrag { to: ReplyTo<Defragmented> },
    /// Maintenance.Status: raft and db state.
    Status { to: ReplyTo<StatusInfo> },
    /// Cluster.MemberList.
    MemberList { to: ReplyTo<Members> },
    /// Maintenance.HashKV at `revision` (0 = current).
    HashKv { to: ReplyTo<HashKv>, revision: i64 },
    /// A ReadIndex for a linearizable read served by the shards, replied once the leader
    /// confirmed it (batched with others).
    ReadIndex { to: ReplyTo<ReadIndex> },
    /// Lease keep-alives, each with the time its core received it: the lease's deadline
    /// moves to that time + TTL on the leader's clock, without a raft proposal. One
    /// result per renewal, in order. A core batches the keep-alives its streams received
    /// meanwhile (see `api::lease::Renewer`).
    LeaseRenew {
        to: ReplyTo<LeaseRenewed>,
        renewals: Vec<(i64, std::time::Instant)>,
    },
    /// Lease.LeaseTimeToLive.
    LeaseTimeToLive {
        to: ReplyTo<LeaseTtl>,
        id: i64,
        keys: bool,
    },
    /// Lease.LeaseLeases.
    LeaseLeases { to: ReplyTo<LeaseList> },
    /// A membership change (decided by the leader; a follower forwards it), replied once
    /// applied.
    Member {
        to: ReplyTo<MemberChanged>,
        op: MemberOp,
    },
    /// Maintenance.MoveLeader (on the leader only), replied once `target` leads.
    MoveLeader {
        to: ReplyTo<LeaderMoved>,
        target: u64,
    },

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
    pub body: Result<ReplyBody, ServerError>,
}

/// Cluster.MemberList's answer.
#[derive(Debug)]
pub struct Members(pub Vec<MemberInfo>);

/// After a membership change: the member it concerned (added) and the new list.
#[derive(Debug)]
pub struct MemberChanged {
    pub member: Option<MemberInfo>,
    pub members: Vec<MemberInfo>,
}

/// MoveLeader's answer: the transferee leads.
#[derive(Debug)]
pub struct LeaderMoved;

#[derive(Debug)]
pub struct HashKv {
    pub hash: u32,
    pub compact_revision: i64,
    pub revision: i64,
}

/// The read index the leader confirmed.
#[derive(Debug)]
pub struct ReadIndex(pub u64);

/// Per renewal: the TTL and the new deadline, or `None` if the lease is gone (or was past
/// its deadline when the keep-alive arrived).
#[derive(Debug)]
pub struct LeaseRenewed {
    pub revision: i64,
    pub results: Vec<Option<(i64, std::time::Instant)>>,
}

/// `ttl` -1: no such lease.
#[derive(Debug)]
pub struct LeaseTtl {
    pub revision: i64,
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct LeaseList {
    pub revision: i64,
    pub ids: Vec<i64>,
}

/// A payload type of `ReplyBody`: what `ReplyTo<T>` carries.
pub trait ReplyKind: Sized {
    fn wrap(self) -> ReplyBody;
    /// The payload of a body made by `wrap` (`None` for another kind: never, as only
    /// `ReplyTo<Self>` makes replies to a request that waits for `Self`).
    fn unwrap(body: ReplyBody) -> Option<Self>;
}

/// `ReplyBody`, one variant per kind of request, and each payload's `ReplyKind`, from one
/// list (a new kind is one line).
macro_rules! reply_kinds {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A reply's payload, one variant per kind of request.
        #[derive(Debug)]
        pub enum ReplyBody {
            $($variant($ty),)*
        }

        $(impl ReplyKind for $ty {
            fn wrap(self) -> ReplyBody {
                ReplyBody::$variant(self)
            }
            fn unwrap(body: ReplyBody) -> Option<Self> {
                match body {
                    ReplyBody::$variant(v) => Some(v),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        })*
    };
}

reply_kinds! {
    Op(OpResponse),
    Status(StatusInfo),
    Members(Members),
    MemberChanged(MemberChanged),
    LeaderMoved(LeaderMoved),
    HashKv(HashKv),
    ReadIndex(ReadIndex),
    LeaseRenewed(LeaseRenewed),
    LeaseTtl(LeaseTtl),
    LeaseList(LeaseList),
    Auth(AuthOutcome),
    Alarms(AlarmList),
    Defragmented(Defragmented),
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
    /// Rebalance steps, each after the number of `changes` chunks given with it (a
    /// round's own step comes after its changes).
    pub moves: Vec<(usize, Arc<ShardMove>)>,
    /// Leases revoked in the round (each core drops them from its keep-alive cache).
    pub revoked_leases: Arc<Vec<i64>>,
    /// Auth changes of the round: the new view, token assignments and drops.
    pub auth: AuthRound,
    /// The cluster's active alarms after the round (shared; a new list only when they
    /// change).
    pub alarms: Arc<Vec<Alarm>>,
    /// The db's size after the round (its high-water mark, what `--quota-backend-bytes`
    /// is checked against, as etcd checks bbolt's size).
    pub db_bytes: u64,
}

/// One step of a rebalance: the keys of `[lo, hi)` go from shard `from` to shard `to`,
/// with their histories as the raft core's index had them after the changes of the round
/// that carries the step; `splits` are the split keys after it.
#[derive(Debug)]
pub struct ShardMove {
    pub splits: Arc<Vec<Vec<u8>>>,
    pub from: usize,
    pub to: usize,
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
    pub keys: crate::mvcc::key_index::MovedKeys,
    /// How many of `keys` are alive.
    pub live: usize,
}

/// One active alarm: the member it was raised for and etcd's `AlarmType` number
/// (1 NOSPACE, 2 CORRUPT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub member: u64,
    pub kind: i32,
}

/// etcd's `AlarmType` numbers.
pub const ALARM_NOSPACE: i32 = 1;
pub const ALARM_CORRUPT: i32 = 2;

/// Maintenance.Defragment's answer: the db file's size before and after.
#[derive(Debug, Default)]
pub struct Defragmented {
    pub before_bytes: u64,
    pub after_bytes: u64,
}

/// Maintenance.Alarm's answer: the alarms the request concerns (GET: all active;
/// ACTIVATE: the one raised; DEACTIVATE: the one cleared, none if it was not active).
#[derive(Debug, Default)]
pub struct AlarmList(pub Vec<Alarm>);

/// What a round changed in auth, for every core's checks and token table.
#[derive(Clone, Debug, Default)]
pub struct AuthRound {
    /// The view after the round (`None`: unchanged). The first round always has one.
    pub view: Option<Arc<AuthView>>,
    /// Token events in apply order (`None`: none; most rounds, which then allocate
    /// nothing for auth).
    pub tokens: Option<Arc<Vec<TokenEvent>>>,
}

impl AuthRound {
    /// This round followed by `later`.
    fn absorb(&mut self, later: AuthRound) {
        if later.view.is_some() {
            self.view = later.view;
        }
        self.tokens = match (self.tokens.take(), later.tokens) {
            (Some(mine), Some(theirs)) => {
                let mut all = mine.to_vec();
                all.extend(theirs.iter().cloned());
                Some(Arc::new(all))
            }
            (mine, theirs) => mine.or(theirs),
        };
    }
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
            moves: self.moves.clone(),
            revoked_leases: self.revoked_leases.clone(),
            auth: self.auth.clone(),
            alarms: self.alarms.clone(),
            db_bytes: self.db_bytes,
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
        let before = self.changes.len();
        self.moves
            .extend(later.moves.into_iter().map(|(at, m)| (before + at, m)));
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
        self.auth.absorb(later.auth);
        self.alarms = later.alarms;
        self.db_bytes = later.db_bytes;
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
        /// The split keys the part was routed by (refused with `ShardMoved` unless the
        /// receiver's range is the same under its own).
        splits: Arc<Vec<Vec<u8>>>,
    },
    /// Send this core's metric counts (`MetricsReply` with the same `seq`) to `from`.
    Metrics {
        from: CoreId,
        seq: u64,
    },
    MetricsReply {
        seq: u64,
        counts: Box<crate::metrics::Snapshot>,
    },
    RangeReply {
        seq: u64,
        /// The replying shard's applied index (so a caller that raced a compaction can
        /// catch up and retry).
        index: u64,
        body: Result<RangeResponse, ServerError>,
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
