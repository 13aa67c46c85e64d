//! `Node`: what one core runs besides its connections: its shard, its watch hub, its
//! links to the other cores, and the read path that scatters a Range over the shards.
//!
//! Runs on: every core; one `Node` per core, shared by that core's tasks through `Rc`.
//!
//! Messages in (`CoreMsg`, FIFO per sending core): `Applied` rounds from the raft core
//! (core 0) — applied to the shard, then matched against the watchers, then the round's
//! write replies are delivered, in that order; `Range` parts to serve; `RangeReply`
//! answers to this core's own parts. Messages out go through an [`Outbox`] per
//! destination, drained by a task into the bounded cross-core channel, so no caller (the
//! raft core least of all) ever waits for another core.

use crate::auth::tokens::SimpleTokens;
use crate::auth::AuthView;
use crate::mesh::ServerError;
use crate::mesh::{Applied, CoreId, CoreMsg, ReadIndex, RoundMark, ToRaft};
use crate::mvcc::{self, RangeRequest, RangeResponse};
use crate::raft::RaftClient;
use crate::runtime::log;
use crate::shard::{merge, part_request, shards_for, Shard};
use crate::watch::Hub;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

pub use crate::mesh::Watermark;

type RangeResult = Result<RangeResponse, ServerError>;

/// Keys one slice of a large read covers before its core polls its rings and runs its
/// other tasks (`Node::part_rest`): about a millisecond.
pub const SLICE_KEYS: usize = 4096;

/// A part's first slice ([`Node::part_start`]).
enum PartStart {
    /// The whole part (or its failure).
    Done(RangeResult),
    /// More to read from this key on, under these split keys.
    More(mvcc::SliceRead, Vec<u8>, Arc<Vec<Vec<u8>>>),
}
type RangeSlot = Rc<Slot<(u64, RangeResult)>>;
type IndexSlot = Rc<Slot<Result<u64, ServerError>>>;

/// A value one task fills and another waits for (a Range part's reply, a ReadIndex).
pub struct Slot<T> {
    value: RefCell<(Option<T>, Option<Waker>)>,
}

impl<T> Slot<T> {
    pub fn new() -> Rc<Slot<T>> {
        Rc::new(Slot {
            value: RefCell::new((None, None)),
        })
    }

    pub fn fill(&self, value: T) {
        let mut v = self.value.borrow_mut();
        v.0 = Some(value);
        if let Some(w) = v.1.take() {
            w.wake();
        }
    }

    pub async fn wait(&self) -> T {
        poll_fn(|cx| {
            let mut v = self.value.borrow_mut();
            match v.0.take() {
                Some(value) => Poll::Ready(value),
                None => {
                    v.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

pub struct Node {
    core: CoreId,
    /// The member's newest round sent out (see `mesh::RoundMark`).
    round_mark: RoundMark,
    shard: RefCell<Option<Shard>>,
    /// On the raft core's core: the raft core's key index, which this core's shard reads
    /// instead of building a replica (`Node::read_raft_index`).
    raft_index: RefCell<Option<Rc<crate::mvcc::store::SharedIndex>>>,
    /// On the other cores: where the replica built at boot from the kept split keys comes
    /// from (`Node::expect_prebuilt`).
    prebuilt: RefCell<Option<std::sync::mpsc::Receiver<crate::shard::Prebuilt>>>,
    watermark: Cell<Watermark>,
    waiters: RefCell<Vec<Waker>>,
    outbox: Vec<Rc<Outbox>>,
    calls: RefCell<HashMap<u64, RangeSlot>>,
    /// Metric scrapes waiting for other cores' counts.
    metric_calls: RefCell<HashMap<u64, Rc<Slot<crate::metrics::Snapshot>>>>,
    next_seq: Cell<u64>,
    raft: Rc<RaftClient>,
    /// Linearizable reads that arrived since this core last asked for a ReadIndex.
    index_waiting: RefCell<Vec<IndexSlot>>,
    index_asking: Cell<bool>,
    pub hub: Hub,
    /// Deadlines of the leases this core's streams keep alive.
    pub leases: crate::lease::LeaseCache,
    /// Key-range subscriptions of this core's Lock and Election calls.
    subscriptions: RefCell<Vec<Rc<SubscriptionState>>>,
    /// The auth view and simple tokens as of the last round.
    auth: RefCell<CoreAuth>,
    /// The cluster's active alarms and the db file's size, as of the last round.
    alarms: RefCell<Arc<Vec<crate::mesh::Alarm>>>,
    db_bytes: Cell<u64>,
    /// A task is running the shard replica's compaction (`compact_replica`).
    compacting: Cell<bool>,
}

/// A core's auth: the view its checks read and its simple-token table.
struct CoreAuth {
    /// This core's own copy (an `Rc`: a request's clone never touches a cache line another
    /// core uses, as an `Arc`'s count would).
    view: Rc<AuthView>,
    tokens: SimpleTokens,
    last_sweep: std::time::Instant,
}

/// How long a request with a simple token from a raft index this core has not applied
/// yet waits for it (etcd waits for the index until the request's deadline).
pub const TOKEN_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A ReadIndex slower than this counts in `etcd_server_slow_read_indexes_total` (etcd's
/// request timeout).
const SLOW_READ_INDEX: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a scrape waits for another core's metric counts.
pub const METRICS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Subscribed changes queued beyond this are dropped and the subscriber told to re-read.
pub const SUBSCRIPTION_QUEUE_MAX: usize = 4096;

struct SubscriptionState {
    key: Vec<u8>,
    range_end: Vec<u8>,
    queue: RefCell<std::collections::VecDeque<mvcc::Change>>,
    lost: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The changes to a key range that this core applies after [`Node::subscribe`], in
/// revision order (what the Lock and Election services wait on, instead of a watch).
/// Dropping it unsubscribes.
pub struct Subscription {
    node: Rc<Node>,
    state: Rc<SubscriptionState>,
}

impl Subscription {
    /// The next change; `None` if changes were dropped because the subscriber fell more
    /// than `SUBSCRIPTION_QUEUE_MAX` behind (it must read the state again).
    pub async fn next(&self) -> Option<mvcc::Change> {
        poll_fn(|cx| {
            if self.state.lost.get() {
                return Poll::Ready(None);
            }
            match self.state.queue.borrow_mut().pop_front() {
                Some(c) => Poll::Ready(Some(c)),
                None => {
                    *self.state.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.node
            .subscriptions
            .borrow_mut()
            .retain(|s| !Rc::ptr_eq(s, &self.state));
    }
}

impl Node {
    pub fn new(
        core: CoreId,
        cores: usize,
        raft: Rc<RaftClient>,
        round_mark: RoundMark,
    ) -> Rc<Node> {
        Rc::new(Node {
            core,
            round_mark,
            shard: RefCell::new(None),
            raft_index: RefCell::new(None),
            prebuilt: RefCell::new(None),
            watermark: Cell::new(Watermark::default()),
            waiters: RefCell::new(Vec::new()),
            outbox: (0..cores).map(|_| Rc::new(Outbox::default())).collect(),
            calls: RefCell::new(HashMap::new()),
            metric_calls: RefCell::new(HashMap::new()),
            next_seq: Cell::new(1),
            raft,
            index_waiting: RefCell::new(Vec::new()),
            index_asking: Cell::new(false),
            compacting: Cell::new(false),
            subscriptions: RefCell::new(Vec::new()),
            leases: Default::default(),
            hub: Hub::new(),
            auth: RefCell::new(CoreAuth {
                view: Default::default(),
                tokens: SimpleTokens::new(crate::auth::tokens::DEFAULT_TTL),
                last_sweep: std::time::Instant::now(),
            }),
            alarms: RefCell::new(Arc::new(Vec::new())),
            db_bytes: Cell::new(0),
        })
    }

    /// The cluster's active alarms as of this core's last round.
    pub fn alarms(&self) -> Arc<Vec<crate::mesh::Alarm>> {
        self.alarms.borrow().clone()
    }

    /// Whether an alarm of etcd type `kind` is active (for any member); no clone.
    pub fn alarm_active(&self, kind: i32) -> bool {
        self.alarms.borrow().iter().any(|a| a.kind == kind)
    }

    /// The db file's size as of this core's last round (the quota check's base).
    pub fn db_bytes(&self) -> u64 {
        self.db_bytes.get()
    }

    /// The member's newest round sent out (see `mesh::RoundMark`).
    pub fn round_mark(&self) -> u64 {
        self.round_mark.get()
    }

    /// `--auth-token-ttl` (before the first round).
    pub fn set_token_ttl(&self, ttl: std::time::Duration) {
        self.auth.borrow_mut().tokens.set_ttl(ttl);
    }

    /// The auth view this core checks requests against.
    pub fn auth_view(&self) -> Rc<AuthView> {
        self.auth.borrow().view.clone()
    }

    /// Whether auth is on (as of this core's last round); no clone.
    pub fn auth_enabled(&self) -> bool {
        self.auth.borrow().view.enabled
    }

    /// The user of a simple token, once this core has applied the index it was assigned
    /// at (waiting at most [`TOKEN_INDEX_WAIT`]); `None`: not a live token here.
    pub async fn simple_token_user(&self, token: &str) -> Option<String> {
        if let Some(user) = self.token_user_now(token) {
            return Some(user);
        }
        let index = crate::auth::tokens::simple_token_index(token)?;
        if self.watermark.get().index >= index {
            return None;
        }
        let wait = self.wait_applied(index);
        let timeout = async {
            glommio::timer::sleep(TOKEN_INDEX_WAIT).await;
        };
        futures_lite::future::or(wait, timeout).await;
        self.token_user_now(token)
    }

    fn token_user_now(&self, token: &str) -> Option<String> {
        let now = std::time::Instant::now();
        let mut auth = self.auth.borrow_mut();
        auth.tokens.lookup(token, now).map(str::to_string)
    }

    pub fn core(&self) -> CoreId {
        self.core
    }

    /// What this core's shard has applied (all zero before the first round).
    pub fn watermark(&self) -> Watermark {
        self.watermark.get()
    }

    pub fn is_ready(&self) -> bool {
        self.shard.borrow().is_some()
    }

    /// Runs `f` on the shard (which must be booted).
    pub fn with_shard<T>(&self, f: impl FnOnce(&Shard) -> T) -> T {
        f(self.shard.borrow().as_ref().expect("shard booted"))
    }

    /// Connects the links to the other cores: a task per incoming channel, and an
    /// [`Outbox`] plus a draining task per outgoing one.
    pub fn connect(
        self: &Rc<Node>,
        peers_out: Vec<(CoreId, SharedSender<CoreMsg>)>,
        peers_in: Vec<(CoreId, SharedReceiver<CoreMsg>)>,
    ) {
        for (to, tx) in peers_out {
            let outbox = self.outbox[to.0 as usize].clone();
            glommio::spawn_local(async move {
                let tx = tx.connect().await;
                while let Some(msg) = outbox.pop().await {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
        for (_, rx) in peers_in {
            let node = self.clone();
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while let Some(msg) = rx.recv().await {
                    node.handle(msg);
                }
            })
            .detach();
        }
    }

    fn send(&self, to: CoreId, msg: CoreMsg) {
        if let Some(outbox) = self.outbox.get(to.0 as usize) {
            outbox.push(msg);
        }
    }

    /// Sends a round to another core (the raft core's side).
    pub fn send_applied(&self, to: CoreId, applied: Applied) {
        self.send(to, CoreMsg::Applied(applied));
    }

    /// Takes one message from another core (or the raft core's own round).
    pub fn handle(self: &Rc<Node>, msg: CoreMsg) {
        match msg {
            CoreMsg::Applied(a) => self.apply(a),
            CoreMsg::Range {
                from,
                seq,
                req,
                at_revision,
                min_index,
                splits,
            } => {
                if self.is_ready() && self.watermark().index >= min_index {
                    // The usual case: served at once, no task.
                    self.reply_part(from, seq, req, at_revision, &splits);
                    return;
                }
                let node = self.clone();
                glommio::spawn_local(async move {
                    node.wait_applied(min_index).await;
                    node.reply_part(from, seq, req, at_revision, &splits);
                })
                .detach();
            }
            CoreMsg::Metrics { from, seq } => {
                let counts = Box::new(self.metric_counts());
                self.send(from, CoreMsg::MetricsReply { seq, counts });
            }
            CoreMsg::MetricsReply { seq, counts } => {
                let slot = self.metric_calls.borrow_mut().remove(&seq);
                if let Some(slot) = slot {
                    slot.fill(*counts);
                }
            }
            CoreMsg::RangeReply { seq, index, body } => {
                let slot = self.calls.borrow_mut().remove(&seq);
                if let Some(slot) = slot {
                    slot.fill((index, body));
                }
            }
        }
    }

    /// This core's metric counts, with its watch gauges as of now.
    pub fn metric_counts(&self) -> crate::metrics::Snapshot {
        use crate::metrics::{set, Gauge};
        let (streams, watchers, behind) = self.hub.counts();
        set(Gauge::WatchStreams, streams as f64);
        set(Gauge::Watchers, watchers as f64);
        set(Gauge::SlowWatchers, behind as f64);
        crate::metrics::snapshot()
    }

    /// Every core's metric counts, summed (a core that does not answer within
    /// `METRICS_WAIT` is left out of this scrape).
    pub async fn collect_metrics(self: &Rc<Node>) -> crate::metrics::Snapshot {
        let mut total = self.metric_counts();
        let mut waiting = Vec::new();
        for to in 0..self.outbox.len() {
            if to == self.core.0 as usize {
                continue;
            }
            let seq = self.next_seq.get();
            self.next_seq.set(seq + 1);
            let slot = Slot::new();
            self.metric_calls.borrow_mut().insert(seq, slot.clone());
            self.send(
                CoreId(to as u16),
                CoreMsg::Metrics {
                    from: self.core,
                    seq,
                },
            );
            waiting.push((seq, slot));
        }
        for (seq, slot) in waiting {
            let counts = futures_lite::future::or(async { Some(slot.wait().await) }, async {
                glommio::timer::sleep(METRICS_WAIT).await;
                None
            })
            .await;
            self.metric_calls.borrow_mut().remove(&seq);
            if let Some(c) = counts {
                total.absorb(c);
            }
        }
        total
    }

    /// On a core other than the raft core's, before the first round: a replica may come
    /// from a thread that builds it while the raft core rebuilds its own index.
    pub fn expect_prebuilt(&self, rx: std::sync::mpsc::Receiver<crate::shard::Prebuilt>) {
        *self.prebuilt.borrow_mut() = Some(rx);
    }

    /// The replica built at boot, if one was started: waits for its thread to finish (at
    /// the first round, before which this core has no shard to serve from anyway, and
    /// which comes after the raft core's own rebuild of the same records).
    fn take_prebuilt(&self) -> Option<crate::shard::Prebuilt> {
        let rx = self.prebuilt.borrow_mut().take()?;
        rx.recv().ok()
    }

    /// On the raft core's core, before the first round: this core's shard reads the raft
    /// core's index instead of building a replica of its range.
    pub fn read_raft_index(&self, index: Rc<crate::mvcc::store::SharedIndex>) {
        *self.raft_index.borrow_mut() = Some(index);
    }

    fn reply_part(
        self: &Rc<Node>,
        from: CoreId,
        seq: u64,
        req: RangeRequest,
        at_revision: i64,
        splits: &Arc<Vec<Vec<u8>>>,
    ) {
        let body = if self.with_shard(|s| s.serves_as(splits)) {
            match self.part_start(&req, at_revision) {
                PartStart::Done(body) => body,
                PartStart::More(read, key, splits) => {
                    // A large part: the rest of it in a task, a slice at a time.
                    let node = self.clone();
                    glommio::spawn_local(async move {
                        let body = node.part_rest(&req, at_revision, read, key, splits).await;
                        let index = node.watermark().index;
                        node.send(from, CoreMsg::RangeReply { seq, index, body });
                    })
                    .detach();
                    return;
                }
            }
        } else {
            // A step of a rebalance lies between the sender's round and this core's.
            Err(ServerError::ShardMoved)
        };
        let index = self.watermark().index;
        self.send(from, CoreMsg::RangeReply { seq, index, body });
    }

    fn apply(self: &Rc<Node>, a: Applied) {
        self.raft.set_known_leader(a.leader);
        self.raft.set_learner(a.learner);
        {
            let mut shard = self.shard.borrow_mut();
            match shard.as_mut() {
                Some(s) => s.take_round(&a),
                None => {
                    // The first round (perhaps with later ones merged into it): the
                    // snapshot already holds its changes, and its split keys are the last
                    // step's.
                    let Some(splits) = a.splits.clone() else {
                        log::error("shard", "a round arrived before the shard's boot round");
                        return;
                    };
                    let id = self.core.0 as usize;
                    if let Some(p) = self.take_prebuilt() {
                        match Shard::from_prebuilt(id, p, &splits, a.snapshot.clone()) {
                            Ok(mut s) => {
                                s.take_round(&a);
                                *shard = Some(s);
                            }
                            Err(_) => log::info(
                                "shard",
                                "the split keys changed since the replica built at boot: building it again",
                            ),
                        }
                    }
                    let splits = a.moves.last().map_or(splits, |(_, m)| m.splits.clone());
                    if shard.is_some() {
                        // Built at boot.
                    } else if let Some(index) = self.raft_index.borrow().clone() {
                        *shard = Some(Shard::shared(
                            id,
                            splits,
                            index,
                            a.snapshot.clone(),
                            a.index,
                            a.revision,
                            a.compact_revision,
                        ));
                    } else {
                        match Shard::boot(
                            id,
                            splits,
                            a.snapshot.clone(),
                            a.index,
                            a.revision,
                            a.compact_revision,
                        ) {
                            Ok(s) => *shard = Some(s),
                            Err(e) => {
                                log::error("shard", &format!("cannot build the key index: {e}"));
                                return;
                            }
                        }
                    }
                }
            }
        }
        // The boot round's changes are already in its snapshot, and no watcher exists yet.
        let booted = self.watermark.get().revision != 0;
        // Rounds arrive in order: a core's watermark never goes back.
        debug_assert!(
            a.index >= self.watermark.get().index,
            "a round older than the last"
        );
        debug_assert!(a.revision >= self.watermark.get().revision);
        self.watermark.set(Watermark {
            index: a.index,
            revision: a.revision,
            compact_revision: a.compact_revision,
            raft_term: a.raft_term,
        });
        self.leases.on_applied(&a);
        self.apply_auth(&a.auth);
        if !Arc::ptr_eq(&self.alarms.borrow(), &a.alarms) {
            *self.alarms.borrow_mut() = a.alarms.clone();
        }
        self.db_bytes.set(a.db_bytes);
        if booted {
            self.hub.on_applied(&a);
            self.feed_subscriptions(&a);
        }
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        for reply in a.replies {
            self.raft.deliver(reply);
        }
        self.compact_replica();
        #[cfg(debug_assertions)]
        self.invariants();
    }

    /// Runs the shard replica's pending compaction a step at a time in a task of its own,
    /// pausing between steps (`runtime::background_pause`): a compaction of millions of
    /// keys never holds this core's reads, watchers or (on the raft core) rounds for
    /// longer than a step.
    fn compact_replica(self: &Rc<Node>) {
        let pending = self
            .shard
            .borrow()
            .as_ref()
            .is_some_and(|s| s.compaction_pending());
        if !pending || self.compacting.replace(true) {
            return;
        }
        let node = self.clone();
        glommio::spawn_local(async move {
            loop {
                let started = std::time::Instant::now();
                let more = node
                    .shard
                    .borrow_mut()
                    .as_mut()
                    .is_some_and(|s| s.compact_step(crate::shard::COMPACT_STEP_KEYS));
                if !more {
                    break;
                }
                let pause = crate::runtime::background_pause(started.elapsed());
                glommio::timer::sleep(pause).await;
            }
            node.compacting.set(false);
        })
        .detach();
    }

    fn apply_auth(&self, round: &crate::mesh::AuthRound) {
        let mut auth = self.auth.borrow_mut();
        if let Some(v) = &round.view {
            auth.view = Rc::new(AuthView::clone(v));
        }
        let now = std::time::Instant::now();
        for ev in round.tokens.iter().flat_map(|t| t.iter()) {
            auth.tokens.apply(ev, now);
        }
        if now.duration_since(auth.last_sweep) >= std::time::Duration::from_secs(1) {
            auth.last_sweep = now;
            auth.tokens.sweep(now);
        }
    }

    /// What holds between rounds (checked after each round in debug builds and tests).
    #[cfg(debug_assertions)]
    pub fn invariants(&self) {
        let mark = self.watermark.get();
        assert!(
            mark.compact_revision <= mark.revision,
            "compacted past the revision"
        );
        assert!(
            self.index_asking.get() || self.index_waiting.borrow().is_empty(),
            "reads wait for a ReadIndex nobody asks for"
        );
        for s in self.subscriptions.borrow().iter() {
            assert!(s.queue.borrow().len() <= SUBSCRIPTION_QUEUE_MAX);
        }
        self.hub.invariants();
    }

    /// Subscribes to the changes to `[key, range_end)` (etcd's range rules) that this
    /// core applies from now on.
    pub fn subscribe(self: &Rc<Node>, key: &[u8], range_end: &[u8]) -> Subscription {
        let state = Rc::new(SubscriptionState {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            queue: RefCell::new(Default::default()),
            lost: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.subscriptions.borrow_mut().push(state.clone());
        Subscription {
            node: self.clone(),
            state,
        }
    }

    fn feed_subscriptions(&self, a: &Applied) {
        let subs = self.subscriptions.borrow();
        if subs.is_empty() {
            return;
        }
        for sub in subs.iter() {
            let range = mvcc::KeyRange::new(&sub.key, &sub.range_end);
            let mut fed = false;
            for change in a.changes.iter().flat_map(|c| c.iter()) {
                let Some(k) = change.key() else { continue };
                if !range.contains(k) || sub.lost.get() {
                    continue;
                }
                let mut q = sub.queue.borrow_mut();
                if q.len() >= SUBSCRIPTION_QUEUE_MAX {
                    q.clear();
                    sub.lost.set(true);
                } else {
                    q.push_back(change.clone());
                }
                fed = true;
            }
            if fed {
                if let Some(w) = sub.waker.borrow_mut().take() {
                    w.wake();
                }
            }
        }
    }

    /// Waits until this core's shard has applied raft index `index` (and has booted).
    pub async fn wait_applied(&self, index: u64) {
        poll_fn(|cx| {
            if self.is_ready() && self.watermark.get().index >= index {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// This core's shard's part of a Range at revision `at`, or its first slice: a read
    /// of more than [`SLICE_KEYS`] keys (raw, decoded or counted) goes on in
    /// [`Node::part_rest`], so that a Range over millions of keys never holds the core
    /// (the raft core included) for longer than a slice.
    fn part_start(&self, req: &RangeRequest, at: i64) -> PartStart {
        let mut read = mvcc::SliceRead::default();
        let (next, splits) = self.with_shard(|s| {
            let next = s.range_slice(req, at, None, SLICE_KEYS, &mut read);
            (next, s.splits().clone())
        });
        match next {
            Ok(None) => PartStart::Done(Ok(read.finish(req, at))),
            Ok(Some(from)) => PartStart::More(read, from, splits),
            Err(e) => PartStart::Done(Err(e.into())),
        }
    }

    /// The slices after [`Node::part_start`]'s, with the core's other work between them.
    /// Rounds applied meanwhile do not change a read at `at`, unless one moved keys off
    /// this shard (`ShardMoved`) or compacted past `at` (`Compacted`): the caller then
    /// reads again, routed by the new split keys or at the new revision.
    async fn part_rest(
        &self,
        req: &RangeRequest,
        at: i64,
        mut read: mvcc::SliceRead,
        from: Vec<u8>,
        splits: Arc<Vec<Vec<u8>>>,
    ) -> RangeResult {
        let mut from = Some(from);
        while let Some(key) = from.take() {
            crate::runtime::yield_to_rings().await;
            if !self.with_shard(|s| s.serves_as(&splits)) {
                return Err(ServerError::ShardMoved);
            }
            from = self
                .with_shard(|s| s.range_slice(req, at, Some(&key), SLICE_KEYS, &mut read))
                .map_err(ServerError::from)?;
        }
        Ok(read.finish(req, at))
    }

    /// This core's part, all slices.
    async fn serve_part(
        &self,
        req: &RangeRequest,
        at: i64,
    ) -> Result<RangeResponse, (Option<u64>, ServerError)> {
        match self.part_start(req, at) {
            PartStart::Done(res) => res.map_err(|e| (None, e)),
            PartStart::More(read, from, splits) => self
                .part_rest(req, at, read, from, splits)
                .await
                // A round came between the slices: this core's watermark is past it.
                .map_err(|e| (Some(self.watermark().index), e)),
        }
    }

    /// etcd's Range over every shard the request touches: linearizable ones first wait
    /// for a ReadIndex and for this core to apply up to it; serializable ones for this
    /// core to apply the member's newest round sent out (`RoundMark`). Returns the response and the
    /// raft term for the header.
    pub async fn range(
        self: &Rc<Node>,
        req: RangeRequest,
        linearizable: bool,
    ) -> Result<(RangeResponse, u64), ServerError> {
        crate::metrics::inc(crate::metrics::Counter::MvccRange);
        let min_index = if linearizable {
            self.read_index().await?
        } else {
            // Not older than any round another core may have served from (a reply to a
            // write, another client's read): one member's serializable reads never go
            // back, as etcd's single store guarantees.
            self.round_mark.get()
        };
        self.wait_applied(min_index).await;
        if !linearizable && req.revision > self.watermark().revision {
            // A revision this core has not applied yet may exist on the raft core (a
            // write acknowledged on another core): catch up before calling it future,
            // as a single etcd member, which applies before it answers, would.
            let index = self.read_index().await?;
            self.wait_applied(index).await;
        }
        let mut retried = false;
        loop {
            let mark = self.watermark();
            match self.range_at(&req, mark).await {
                // A shard ahead of this core compacted past the revision this core read
                // at: catch up to that shard and read again, once.
                Err((Some(index), _)) if !retried && req.revision <= 0 && index > mark.index => {
                    retried = true;
                    self.wait_applied(index).await;
                }
                Err((_, status)) => return Err(status),
                Ok(res) => return Ok((res, mark.raft_term)),
            }
        }
    }

    /// A ReadIndex taken after this call began. The core asks the raft core once for
    /// all the reads that arrived while its previous question was out (one cross-core
    /// round trip per batch, not per read).
    pub async fn read_index(self: &Rc<Node>) -> Result<u64, ServerError> {
        let slot = Slot::new();
        self.index_waiting.borrow_mut().push(slot.clone());
        if !self.index_asking.get() {
            self.index_asking.set(true);
            let node = self.clone();
            glommio::spawn_local(async move { node.ask_read_indexes().await }).detach();
        }
        slot.wait().await
    }

    async fn ask_read_indexes(self: Rc<Node>) {
        loop {
            let batch = std::mem::take(&mut *self.index_waiting.borrow_mut());
            if batch.is_empty() {
                self.index_asking.set(false);
                return;
            }
            let started = std::time::Instant::now();
            let result = self
                .raft
                .call::<ReadIndex>(|to| ToRaft::ReadIndex { to })
                .await
                .map(|a| a.value.0);
            // etcd counts a ReadIndex that failed, and one slower than its 5 s timeout.
            if result.is_err() {
                crate::metrics::inc(crate::metrics::Counter::ReadIndexesFailed);
            } else if started.elapsed() >= SLOW_READ_INDEX {
                crate::metrics::inc(crate::metrics::Counter::SlowReadIndexes);
            }
            for w in batch {
                w.fill(result.clone());
            }
        }
    }

    /// One read at this core's watermark `mark`, or later: a part refused by a shard
    /// that a rebalance step changed since `mark` is routed again once this core has
    /// applied that step too (the read is then at the later watermark).
    async fn range_at(
        self: &Rc<Node>,
        req: &RangeRequest,
        mut mark: Watermark,
    ) -> Result<RangeResponse, (Option<u64>, ServerError)> {
        loop {
            match self.range_routed(req, mark).await {
                Err((Some(index), ServerError::ShardMoved)) => {
                    if index <= mark.index {
                        // Never expected: the shard had applied no step this core has not.
                        let why = "a shard refused a part routed by its own split keys";
                        return Err((None, ServerError::Internal(why.into())));
                    }
                    crate::metrics::inc(crate::metrics::Counter::ShardRerouted);
                    self.wait_applied(index).await;
                    mark = self.watermark();
                }
                done => return done,
            }
        }
    }

    /// One read at `mark`, routed by this core's split keys.
    async fn range_routed(
        self: &Rc<Node>,
        req: &RangeRequest,
        mark: Watermark,
    ) -> Result<RangeResponse, (Option<u64>, ServerError)> {
        let splits = self.with_shard(|s| s.splits().clone());
        let shards = shards_for(&splits, &req.key, &req.range_end);
        let me = self.core.0 as usize;
        if shards.len() == 1 && shards.start == me {
            return self.serve_part(req, mark.revision).await;
        }
        let part = if shards.len() == 1 {
            req.clone()
        } else {
            part_request(req)
        };
        let mut pending = Vec::new();
        let mut local = None;
        for s in shards.clone() {
            if s == me {
                local = Some(self.serve_part(&part, mark.revision).await);
            } else {
                pending.push(self.call_part(CoreId(s as u16), part.clone(), mark, &splits));
            }
        }
        let mut parts = Vec::with_capacity(shards.len());
        let mut remote = Vec::with_capacity(pending.len());
        for p in pending {
            remote.push(p.await);
        }
        let mut remote = remote.into_iter();
        for s in shards {
            let res = if s == me {
                local.take().expect("local part")
            } else {
                let (index, res) = remote.next().expect("remote part");
                res.map_err(|status| (Some(index), status))
            };
            parts.push(res?);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        Ok(merge(req, parts, mark.revision))
    }

    /// Sends a part to shard `to` and returns a future for its reply. The message goes
    /// out now (before the first poll), so the parts run in parallel.
    fn call_part(
        self: &Rc<Node>,
        to: CoreId,
        req: RangeRequest,
        mark: Watermark,
        splits: &Arc<Vec<Vec<u8>>>,
    ) -> impl std::future::Future<Output = (u64, RangeResult)> {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let slot = Slot::new();
        self.calls.borrow_mut().insert(seq, slot.clone());
        self.send(
            to,
            CoreMsg::Range {
                from: self.core,
                seq,
                req,
                at_revision: mark.revision,
                min_index: mark.index,
                splits: splits.clone(),
            },
        );
        let guard = CallGuard {
            node: self.clone(),
            seq,
        };
        async move {
            let out = slot.wait().await;
            drop(guard);
            out
        }
    }

    /// The value `key` had at revision `at` (for a watch event's `prev_kv`), from the
    /// shard that owns it.
    async fn value_at(
        self: &Rc<Node>,
        key: &[u8],
        at: i64,
    ) -> Result<Option<mvcc::KeyValue>, ServerError> {
        let req = RangeRequest {
            key: key.to_vec(),
            revision: at,
            serializable: true,
            ..RangeRequest::default()
        };
        let mark = self.watermark();
        let res = self.range_at(&req, mark).await.map_err(|(_, s)| s)?;
        Ok(res.kvs.into_iter().next())
    }
}

/// Messages for one other core, waiting for room in the cross-core channel. Never
/// blocks the sender (the raft core least of all); a round queued behind another round
/// merges into it, so however long the other core is busy, at most one queued round
/// (and one pinned snapshot) waits here beside the channel's.
#[derive(Default)]
pub struct Outbox {
    queue: RefCell<std::collections::VecDeque<CoreMsg>>,
    waker: RefCell<Option<Waker>>,
}

impl Outbox {
    pub fn push(&self, msg: CoreMsg) {
        let mut queue = self.queue.borrow_mut();
        match (queue.back_mut(), msg) {
            (Some(CoreMsg::Applied(last)), CoreMsg::Applied(next)) => last.absorb(next),
            (_, msg) => queue.push_back(msg),
        }
        drop(queue);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The next message (waits while there is none; never ends).
    pub async fn pop(&self) -> Option<CoreMsg> {
        poll_fn(|cx| match self.queue.borrow_mut().pop_front() {
            Some(m) => Poll::Ready(Some(m)),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

struct CallGuard {
    node: Rc<Node>,
    seq: u64,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.node.calls.borrow_mut().remove(&self.seq);
    }
}

/// What the watch hub reads from its core, handed to it per call (the node owns the hub).
impl crate::watch::Source for Rc<Node> {
    fn watermark(&self) -> Watermark {
        Node::watermark(self)
    }

    fn snapshot(&self) -> crate::mvcc::db::ReadSnapshot {
        self.with_shard(|s| s.snapshot().clone())
    }

    async fn value_at(&self, key: &[u8], at: i64) -> Result<Option<mvcc::KeyValue>, ServerError> {
        Node::value_at(self, key, at).await
    }
}

#[cfg(test)]
mod tests;
