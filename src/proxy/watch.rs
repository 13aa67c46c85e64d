//! Watch coalescing: every downstream watcher of one key range (and prev_kv choice) shares
//! one upstream watch, whichever proxy core its client is on.
//!
//! Shape (thread-per-core, messages only):
//! - Each range has an **owner core** (a hash of the range). The owner keeps the one
//!   upstream watch (a [`Broadcast`]) on its upstream Watch stream, and the set of cores
//!   subscribed to it. Each upstream response goes to every subscribed core once, as the
//!   response's bytes (`Bytes`: shared, not copied).
//! - Each core keeps a [`Local`] per range its clients watch: the downstream watchers and
//!   `known`, the revision through which every event has reached this core. A response is
//!   decoded once per core, its events encoded once (keys unprefixed with `--namespace`),
//!   and each watcher's message is its header and watch ID in front of those same bytes.
//! - A watcher that needs history (a start revision at or below `known`) first reads it
//!   from a private upstream watch, while the shared responses for it are buffered; once
//!   the private watch has passed `known` (an event above it: the stream is in revision
//!   order), the buffer is replayed from the last revision sent and the private watch is
//!   dropped: no gap, no duplicate.
//! - A client that stops reading never holds up the shared stream: when its queue is full
//!   it becomes such a catching-up watcher from the first revision it missed.
//! - The owner's upstream stream breaks (member killed, partitioned): it dials the next
//!   endpoint and creates every broadcast again from the revision after the last one it
//!   delivered; the cores see nothing but the next events. A revision compacted meanwhile
//!   cancels the watchers with the compact revision, as etcd does.
//!
//! Runs on: every proxy core (the serve loop of each Watch stream, the owner's upstream
//! task, the catch-up tasks); cross-core only through [`Msg`].

use super::forward::{as_pairs, passed_metadata, status_of, Ctx};
use super::namespace::Namespace;
use super::upstream::Upstream;
use crate::grpc::client::{self, CallError};
use crate::grpc::server::{Request, Responses, TrySendError};
use crate::grpc::status::{Code, Status};
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;
use bytes::{Bytes, BytesMut};
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use prost::Message;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

/// Responses a downstream Watch stream may queue before its watchers fall back to
/// catching up on their own.
pub const STREAM_QUEUE: usize = 1024;
/// Shared responses buffered for a catching-up watcher before the buffer restarts.
const BUFFER_MAX: usize = 4096;

/// A shared watch: the upstream range (prefixed) and whether events carry prev_kv.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RangeKey {
    pub key: Bytes,
    pub end: Bytes,
    pub prev_kv: bool,
}

/// What the cores tell each other.
pub enum Msg {
    Subscribe {
        range: RangeKey,
        token: Option<String>,
        from: usize,
    },
    Unsubscribe {
        range: RangeKey,
        from: usize,
    },
    Deliver {
        range: RangeKey,
        what: Delivery,
    },
    /// A /metrics scrape on core `from` asks for this core's counts.
    MetricsAsk {
        from: usize,
        seq: u64,
    },
    MetricsReply {
        seq: u64,
        counts: Counts,
    },
}

/// One core's counts, as a scrape gathers them.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub grpc: crate::metrics::Snapshot,
    /// Upstream watches this core owns.
    pub upstream_watches: u64,
    /// Downstream watchers on this core.
    pub watchers: u64,
    /// Watchers reading on their own (history, or a client that fell behind).
    pub catching_up: u64,
    /// Watchers that joined an existing shared watch.
    pub watchers_coalesced: u64,
    /// Events sent to downstream watchers.
    pub events_sent: u64,
    pub cache_keys: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub keepalives_coalesced: u64,
}

#[derive(Clone)]
pub enum Delivery {
    /// The shared watch exists: events after `revision` follow. `header` is its created
    /// response's header (encoded).
    Created { revision: i64, header: Bytes },
    /// An upstream WatchResponse (events, or a progress notification).
    Response(Bytes),
    /// The shared watch ended (compacted on resume, or cancelled upstream).
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

fn owner_of(range: &RangeKey, cores: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    range.hash(&mut h);
    (h.finish() % cores as u64) as usize
}

// ---------------------------------------------------------------- downstream side

/// One downstream Watch stream.
struct Down {
    res: Responses,
    watchers: RefCell<HashMap<i64, Rc<Watcher>>>,
    next_id: Cell<i64>,
}

enum State {
    Live,
    /// Reading history (or what it missed) from a private upstream watch; shared responses
    /// above `since` wait in `buffer`.
    CatchingUp {
        since: i64,
        buffer: VecDeque<Rc<Decoded>>,
    },
}

struct Watcher {
    down: Weak<Down>,
    /// The stream's auth token: its private upstream watches carry it.
    token: Option<String>,
    id: i64,
    range: RangeKey,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The lowest revision this watcher still wants.
    next: Cell<i64>,
    state: RefCell<State>,
    gone: Cell<bool>,
    /// The catch-up task reading its private upstream watch (dropped: cancelled).
    catching: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

/// One core's view of a shared watch.
struct Local {
    watchers: RefCell<Vec<Rc<Watcher>>>,
    /// Every event through this revision has reached this core (0: not yet created).
    known: Cell<i64>,
    header: RefCell<pb::ResponseHeader>,
    established: RefCell<Vec<async_oneshot::Sender>>,
}

/// A shared response as this core decoded it once.
struct Decoded {
    header: pb::ResponseHeader,
    /// `header` encoded as field 1 of a WatchResponse, once for every watcher's message.
    header_field: Bytes,
    /// (revision, is_put, encoded field-11 bytes) per event.
    events: Vec<(i64, bool, Bytes)>,
    /// Every event's field encoded back to back: what an unfiltered watcher gets.
    all: Bytes,
}

/// A one-shot wake for "the shared watch is created" (or cancelled).
mod async_oneshot {
    use std::cell::RefCell;
    use std::rc::Rc;
    pub struct Sender(
        Rc<RefCell<Option<std::task::Waker>>>,
        Rc<std::cell::Cell<bool>>,
    );
    pub struct Receiver(
        Rc<RefCell<Option<std::task::Waker>>>,
        Rc<std::cell::Cell<bool>>,
    );
    pub fn pair() -> (Sender, Receiver) {
        let w = Rc::new(RefCell::new(None));
        let f = Rc::new(std::cell::Cell::new(false));
        (Sender(w.clone(), f.clone()), Receiver(w, f))
    }
    impl Sender {
        pub fn fire(self) {
            self.1.set(true);
            if let Some(w) = self.0.borrow_mut().take() {
                w.wake();
            }
        }
    }
    impl Drop for Sender {
        fn drop(&mut self) {
            self.1.set(true);
            if let Some(w) = self.0.borrow_mut().take() {
                w.wake();
            }
        }
    }
    impl Receiver {
        pub async fn wait(self) {
            futures_lite::future::poll_fn(|cx| {
                if self.1.get() {
                    std::task::Poll::Ready(())
                } else {
                    *self.0.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
            .await
        }
    }
}

// ---------------------------------------------------------------- owner side

struct Broadcast {
    /// The upstream watch ID once created.
    id: Option<i64>,
    subscribers: Vec<usize>,
    /// The revision through which events were delivered (0: not created yet).
    delivered: i64,
    created_header: Bytes,
    token: Option<String>,
}

enum UpCmd {
    Create(RangeKey, i64),
    Cancel(i64),
}

/// The owner's upstream Watch stream for one token.
struct UpWatch {
    cmds: LocalSender<UpCmd>,
}

/// One core's watch state: both sides.
pub struct Core {
    me: usize,
    cores: usize,
    up: Rc<Upstream>,
    namespace: Option<Rc<Namespace>>,
    cache: Rc<super::cache::Cache>,
    locals: RefCell<HashMap<RangeKey, Rc<Local>>>,
    owned: RefCell<HashMap<RangeKey, Broadcast>>,
    /// Create requests sent upstream, in order, per token (answers come in order).
    pending: RefCell<HashMap<Option<String>, VecDeque<RangeKey>>>,
    by_id: RefCell<HashMap<(Option<String>, i64), RangeKey>>,
    upwatch: RefCell<HashMap<Option<String>, UpWatch>>,
    outbox: Vec<RefCell<VecDeque<Msg>>>,
    outbox_wake: Vec<RefCell<Option<std::task::Waker>>>,
    /// Counters for /metrics.
    pub coalesced: Cell<u64>,
    pub events_fanned: Cell<u64>,
    /// Scrapes waiting for other cores' counts: seq → (replies so far, still expected).
    scrapes: RefCell<HashMap<u64, (Counts, usize, Option<std::task::Waker>)>>,
    scrape_seq: Cell<u64>,
    /// This core's keep-alive coalescing counter, read at scrape.
    pub leases: RefCell<Option<Rc<super::lease::Leases>>>,
}

impl Core {
    pub fn new(
        me: usize,
        cores: usize,
        up: Rc<Upstream>,
        namespace: Option<Rc<Namespace>>,
        cache: Rc<super::cache::Cache>,
    ) -> Rc<Core> {
        Rc::new(Core {
            me,
            cores,
            up,
            namespace,
            cache,
            locals: RefCell::new(HashMap::new()),
            owned: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
            by_id: RefCell::new(HashMap::new()),
            upwatch: RefCell::new(HashMap::new()),
            outbox: (0..cores).map(|_| RefCell::new(VecDeque::new())).collect(),
            outbox_wake: (0..cores).map(|_| RefCell::new(None)).collect(),
            coalesced: Cell::new(0),
            events_fanned: Cell::new(0),
            scrapes: RefCell::new(HashMap::new()),
            scrape_seq: Cell::new(0),
            leases: RefCell::new(None),
        })
    }

    /// Starts the tasks that carry messages to and from the other cores.
    pub fn link(
        self: &Rc<Self>,
        outs: Vec<(usize, SharedSender<Msg>)>,
        ins: Vec<SharedReceiver<Msg>>,
    ) {
        // Each end connects in its own task: a connect waits for the other core's.
        for (to, tx) in outs {
            let me = self.clone();
            glommio::spawn_local(async move {
                let tx = tx.connect().await;
                loop {
                    let msg = future::poll_fn(|cx| {
                        if let Some(m) = me.outbox[to].borrow_mut().pop_front() {
                            return std::task::Poll::Ready(m);
                        }
                        *me.outbox_wake[to].borrow_mut() = Some(cx.waker().clone());
                        std::task::Poll::Pending
                    })
                    .await;
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        }
        for rx in ins {
            let me = self.clone();
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while let Some(msg) = rx.recv().await {
                    me.handle(msg);
                }
            })
            .detach();
        }
    }

    fn send_to(&self, core: usize, msg: Msg) {
        if core == self.me {
            self.handle(msg);
            return;
        }
        self.outbox[core].borrow_mut().push_back(msg);
        if let Some(w) = self.outbox_wake[core].borrow_mut().take() {
            w.wake();
        }
    }

    fn handle(&self, msg: Msg) {
        match msg {
            Msg::Subscribe { range, token, from } => self.subscribe(range, token, from),
            Msg::Unsubscribe { range, from } => self.unsubscribe(&range, from),
            Msg::Deliver { range, what } => self.deliver(&range, what),
            Msg::MetricsAsk { from, seq } => {
                let counts = self.counts();
                self.send_to(from, Msg::MetricsReply { seq, counts });
            }
            Msg::MetricsReply { seq, counts } => {
                if let Some((sum, left, waker)) = self.scrapes.borrow_mut().get_mut(&seq) {
                    absorb(sum, counts);
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        if let Some(w) = waker.take() {
                            w.wake();
                        }
                    }
                }
            }
        }
    }

    /// This core's counts.
    fn counts(&self) -> Counts {
        Counts {
            grpc: crate::metrics::snapshot(),
            upstream_watches: self.owned.borrow().len() as u64,
            watchers: self.downstream_watchers() as u64,
            catching_up: self
                .locals
                .borrow()
                .values()
                .flat_map(|l| l.watchers.borrow().clone())
                .filter(|w| matches!(&*w.state.borrow(), State::CatchingUp { .. }))
                .count() as u64,
            watchers_coalesced: self.coalesced.get(),
            events_sent: self.events_fanned.get(),
            cache_keys: self.cache.len() as u64,
            cache_hits: self.cache.hits.get(),
            cache_misses: self.cache.misses.get(),
            keepalives_coalesced: self
                .leases
                .borrow()
                .as_ref()
                .map_or(0, |l| l.coalesced.get()),
        }
    }

    /// Every core's counts summed (a core that does not answer within 2 s is left out).
    pub async fn collect(&self) -> Counts {
        let seq = self.scrape_seq.get() + 1;
        self.scrape_seq.set(seq);
        self.scrapes
            .borrow_mut()
            .insert(seq, (self.counts(), self.cores - 1, None));
        for c in (0..self.cores).filter(|&c| c != self.me) {
            self.send_to(c, Msg::MetricsAsk { from: self.me, seq });
        }
        let done = future::poll_fn(|cx| {
            let mut scrapes = self.scrapes.borrow_mut();
            let entry = scrapes.get_mut(&seq).expect("inserted above");
            if entry.1 == 0 {
                std::task::Poll::Ready(())
            } else {
                entry.2 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        });
        future::or(
            done,
            glommio::timer::sleep(std::time::Duration::from_secs(2)),
        )
        .await;
        self.scrapes
            .borrow_mut()
            .remove(&seq)
            .map(|(c, _, _)| c)
            .unwrap_or_default()
    }

    /// Upstream watches this core owns (for /metrics and tests).
    pub fn upstream_watches(&self) -> usize {
        self.owned.borrow().len()
    }

    /// The shared watch on this core whose range holds all of `[key, end)` and whose events
    /// have reached through `revision` at most (so a read at `revision` is kept fresh by it).
    pub fn cover(&self, key: &[u8], end: &[u8], revision: i64) -> Option<RangeKey> {
        let locals = self.locals.borrow();
        locals
            .iter()
            .find(|(r, l)| {
                let k = l.known.get();
                k > 0 && k <= revision && contains(r, key, end)
            })
            .map(|(r, _)| r.clone())
    }

    /// Downstream watchers on this core.
    pub fn downstream_watchers(&self) -> usize {
        self.locals
            .borrow()
            .values()
            .map(|l| l.watchers.borrow().len())
            .sum()
    }

    // ------------------------------------------------------------ owner

    fn subscribe(&self, range: RangeKey, token: Option<String>, from: usize) {
        let mut owned = self.owned.borrow_mut();
        if let Some(b) = owned.get_mut(&range) {
            if !b.subscribers.contains(&from) {
                b.subscribers.push(from);
            }
            if b.delivered > 0 {
                let what = Delivery::Created {
                    revision: b.delivered,
                    header: b.created_header.clone(),
                };
                drop(owned);
                self.send_to(from, Msg::Deliver { range, what });
            }
            return;
        }
        owned.insert(
            range.clone(),
            Broadcast {
                id: None,
                subscribers: vec![from],
                delivered: 0,
                created_header: Bytes::new(),
                token: token.clone(),
            },
        );
        drop(owned);
        self.upstream_cmd(&token, UpCmd::Create(range, 0));
    }

    /// Sends `what` about `range` to each core in `subs`.
    fn deliver_to(&self, subs: Vec<usize>, range: &RangeKey, what: Delivery) {
        for s in subs {
            self.send_to(
                s,
                Msg::Deliver {
                    range: range.clone(),
                    what: what.clone(),
                },
            );
        }
    }

    fn unsubscribe(&self, range: &RangeKey, from: usize) {
        let mut owned = self.owned.borrow_mut();
        let Some(b) = owned.get_mut(range) else {
            return;
        };
        b.subscribers.retain(|&c| c != from);
        if !b.subscribers.is_empty() {
            return;
        }
        let b = owned.remove(range).expect("present");
        drop(owned);
        if let Some(id) = b.id {
            self.by_id.borrow_mut().remove(&(b.token.clone(), id));
            self.upstream_cmd(&b.token, UpCmd::Cancel(id));
        }
    }

    fn upstream_cmd(&self, token: &Option<String>, cmd: UpCmd) {
        let mut ups = self.upwatch.borrow_mut();
        if !ups.contains_key(token) {
            let (tx, rx) = local_channel::new_unbounded();
            ups.insert(token.clone(), UpWatch { cmds: tx });
            let me = self.self_weak();
            let token = token.clone();
            glommio::spawn_local(async move { upstream_loop(me, token, rx).await }).detach();
        }
        let _ = ups[token].cmds.try_send(cmd);
    }

    fn self_weak(&self) -> Weak<Core> {
        SELF.with(|s| s.borrow().clone())
    }

    /// An upstream response on the stream of `token`.
    fn from_upstream(&self, token: &Option<String>, raw: Bytes) {
        let Ok(resp) = pb::WatchResponse::decode(raw.clone()) else {
            return;
        };
        if resp.created {
            let Some(range) = self
                .pending
                .borrow_mut()
                .get_mut(token)
                .and_then(|q| q.pop_front())
            else {
                return;
            };
            let mut owned = self.owned.borrow_mut();
            let Some(b) = owned.get_mut(&range) else {
                // Unsubscribed while being created.
                drop(owned);
                if !resp.canceled {
                    self.upstream_cmd(token, UpCmd::Cancel(resp.watch_id));
                }
                return;
            };
            if resp.canceled {
                let subs = std::mem::take(&mut b.subscribers);
                owned.remove(&range);
                drop(owned);
                let what = Delivery::Canceled {
                    compact_revision: resp.compact_revision,
                    reason: resp.cancel_reason.clone(),
                };
                self.deliver_to(subs, &range, what);
                return;
            }
            b.id = Some(resp.watch_id);
            self.by_id
                .borrow_mut()
                .insert((token.clone(), resp.watch_id), range.clone());
            if b.delivered > 0 {
                return; // created again after a failover: the cores carry on
            }
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            b.delivered = revision.max(1);
            b.created_header = resp
                .header
                .map(|h| h.encode_to_vec().into())
                .unwrap_or_default();
            let what = Delivery::Created {
                revision: b.delivered,
                header: b.created_header.clone(),
            };
            let subs = b.subscribers.clone();
            drop(owned);
            self.deliver_to(subs, &range, what);
            return;
        }
        let Some(range) = self
            .by_id
            .borrow()
            .get(&(token.clone(), resp.watch_id))
            .cloned()
        else {
            return;
        };
        let mut owned = self.owned.borrow_mut();
        let Some(b) = owned.get_mut(&range) else {
            return;
        };
        if resp.canceled {
            let subs = std::mem::take(&mut b.subscribers);
            owned.remove(&range);
            drop(owned);
            self.by_id
                .borrow_mut()
                .remove(&(token.clone(), resp.watch_id));
            let what = Delivery::Canceled {
                compact_revision: resp.compact_revision,
                reason: resp.cancel_reason,
            };
            self.deliver_to(subs, &range, what);
            return;
        }
        let rev = match resp.events.last() {
            Some(e) => e.kv.as_ref().map_or(0, |kv| kv.mod_revision),
            None => resp.header.as_ref().map_or(0, |h| h.revision),
        };
        b.delivered = b.delivered.max(rev);
        let subs = b.subscribers.clone();
        drop(owned);
        self.deliver_to(subs, &range, Delivery::Response(raw));
    }

    /// The owner's stream broke: every broadcast of `token` is created again from where
    /// it stopped, in the order the new stream will answer.
    fn resume_all(&self, token: &Option<String>) -> Vec<(RangeKey, i64)> {
        let mut out = Vec::new();
        self.by_id.borrow_mut().retain(|(t, _), _| t != token);
        let mut owned = self.owned.borrow_mut();
        for (range, b) in owned.iter_mut() {
            if &b.token == token {
                b.id = None;
                let start = if b.delivered > 0 { b.delivered + 1 } else { 0 };
                out.push((range.clone(), start));
            }
        }
        let q = out.iter().map(|(r, _)| r.clone()).collect();
        self.pending.borrow_mut().insert(token.clone(), q);
        out
    }

    // ------------------------------------------------------------ subscriber (hub)

    fn deliver(&self, range: &RangeKey, what: Delivery) {
        let Some(local) = self.locals.borrow().get(range).cloned() else {
            return;
        };
        match what {
            Delivery::Created { revision, header } => {
                if local.known.get() == 0 {
                    local.known.set(revision);
                    *local.header.borrow_mut() =
                        pb::ResponseHeader::decode(header).unwrap_or_default();
                    for w in local.watchers.borrow().iter() {
                        if let State::CatchingUp { since, .. } = &mut *w.state.borrow_mut() {
                            if *since == 0 {
                                *since = revision;
                            }
                        }
                    }
                    for s in local.established.borrow_mut().drain(..) {
                        s.fire();
                    }
                }
            }
            Delivery::Canceled {
                compact_revision,
                reason,
            } => {
                self.locals.borrow_mut().remove(range);
                self.cache.drop_cover(range);
                let header = local.header.borrow().clone();
                for w in local.watchers.borrow_mut().drain(..) {
                    w.gone.set(true);
                    if let Some(down) = w.down.upgrade() {
                        down.watchers.borrow_mut().remove(&w.id);
                        let m = pb::WatchResponse {
                            header: Some(header.clone()),
                            watch_id: w.id,
                            canceled: true,
                            compact_revision,
                            cancel_reason: reason.clone(),
                            ..Default::default()
                        };
                        let _ = down.res.try_send(Bytes::from(m.encode_to_vec()));
                    }
                }
                local.established.borrow_mut().clear();
            }
            Delivery::Response(raw) => {
                if local.known.get() == 0 {
                    return; // from a subscription before this one
                }
                let Some(d) = decode(&raw, self.namespace.as_deref()) else {
                    return;
                };
                let d = Rc::new(d);
                if !d.events.is_empty() {
                    self.cache.drop_cover(range);
                }
                let rev = d.events.last().map_or(d.header.revision, |e| e.0);
                local.known.set(local.known.get().max(rev));
                *local.header.borrow_mut() = d.header.clone();
                let watchers = local.watchers.borrow().clone();
                for w in watchers {
                    self.offer(&local, &w, &d);
                }
            }
        }
    }

    /// Gives a shared response to one watcher: sent if it is live and its client reads,
    /// buffered if it is catching up.
    fn offer(&self, local: &Rc<Local>, w: &Rc<Watcher>, d: &Rc<Decoded>) {
        let mut state = w.state.borrow_mut();
        if let State::CatchingUp { buffer, since } = &mut *state {
            if !d.events.is_empty() {
                buffer.push_back(d.clone());
                if buffer.len() > BUFFER_MAX {
                    buffer.clear();
                    *since = local.known.get();
                }
            }
            return;
        }
        drop(state);
        let Some(down) = w.down.upgrade() else { return };
        let Some(msg) = message_for(w, d) else { return };
        match down.res.try_send(msg) {
            Ok(()) => {
                if let Some(last) = d.events.last() {
                    w.next.set(last.0 + 1);
                    self.events_fanned
                        .set(self.events_fanned.get() + d.events.len() as u64);
                }
            }
            Err(TrySendError::Full) => {
                // The client does not keep up: it reads what it missed on its own.
                *w.state.borrow_mut() = State::CatchingUp {
                    since: local.known.get(),
                    buffer: VecDeque::new(),
                };
                let from = w.next.get();
                let task = glommio::spawn_local(catch_up(self.self_weak(), w.clone(), from, None))
                    .detach();
                *w.catching.borrow_mut() = Some(task);
            }
            Err(TrySendError::Closed) => w.gone.set(true),
        }
    }

    fn remove_watcher(&self, w: &Rc<Watcher>) {
        w.gone.set(true);
        // Its private upstream watch ends with the task (a task never cancels itself here:
        // catch_up takes its own handle out before it removes its watcher).
        if let Some(task) = w.catching.borrow_mut().take() {
            task.cancel();
        }
        let mut locals = self.locals.borrow_mut();
        let Some(local) = locals.get(&w.range).cloned() else {
            return;
        };
        local.watchers.borrow_mut().retain(|x| !Rc::ptr_eq(x, w));
        if local.watchers.borrow().is_empty() {
            locals.remove(&w.range);
            drop(locals);
            self.cache.drop_cover(&w.range);
            let owner = owner_of(&w.range, self.cores);
            self.send_to(
                owner,
                Msg::Unsubscribe {
                    range: w.range.clone(),
                    from: self.me,
                },
            );
        }
    }
}

fn absorb(sum: &mut Counts, c: Counts) {
    sum.grpc.absorb(c.grpc);
    sum.upstream_watches += c.upstream_watches;
    sum.watchers += c.watchers;
    sum.catching_up += c.catching_up;
    sum.watchers_coalesced += c.watchers_coalesced;
    sum.events_sent += c.events_sent;
    sum.cache_keys += c.cache_keys;
    sum.cache_hits += c.cache_hits;
    sum.cache_misses += c.cache_misses;
    sum.keepalives_coalesced += c.keepalives_coalesced;
}

/// Whether the watched range `r` holds every key of `[key, end)`.
fn contains(r: &RangeKey, key: &[u8], end: &[u8]) -> bool {
    if r.end.is_empty() {
        return end.is_empty() && key == &r.key[..];
    }
    if key < &r.key[..] {
        return false;
    }
    if r.end[..] == [0] {
        return true;
    }
    if end.is_empty() {
        return key < &r.end[..];
    }
    end != [0] && end <= &r.end[..]
}

thread_local! {
    static SELF: RefCell<Weak<Core>> = RefCell::new(Weak::new());
}

/// Makes `core` this thread's watch core (the upstream tasks find it through this).
pub fn install(core: &Rc<Core>) {
    SELF.with(|s| *s.borrow_mut() = Rc::downgrade(core));
}

fn decode(raw: &Bytes, ns: Option<&Namespace>) -> Option<Decoded> {
    let resp = pb::WatchResponse::decode(raw.clone()).ok()?;
    let mut all = BytesMut::new();
    let mut events = Vec::with_capacity(resp.events.len());
    for mut e in resp.events {
        if let Some(ns) = ns {
            if let Some(kv) = &mut e.kv {
                ns.strip(&mut kv.key);
            }
            if let Some(kv) = &mut e.prev_kv {
                ns.strip(&mut kv.key);
            }
        }
        let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let is_put = e.r#type == mvccpb::event::EventType::Put as i32;
        let start = all.len();
        prost::encoding::message::encode(11, &e, &mut all);
        events.push((rev, is_put, Bytes::new()));
        let _ = start;
    }
    let all = all.freeze();
    // Each event's own slice of `all`, for filtered watchers.
    let mut at = 0;
    let mut out = Vec::with_capacity(events.len());
    for (rev, is_put, _) in events {
        let len = field_len(&all[at..]);
        out.push((rev, is_put, all.slice(at..at + len)));
        at += len;
    }
    let header = resp.header.unwrap_or_default();
    let mut header_field = BytesMut::new();
    prost::encoding::message::encode(1, &header, &mut header_field);
    Some(Decoded {
        header,
        header_field: header_field.freeze(),
        events: out,
        all,
    })
}

/// The length of the first length-delimited field in `b` (tag, length, payload).
fn field_len(b: &[u8]) -> usize {
    let mut buf = b;
    let _ = prost::encoding::decode_varint(&mut buf);
    let len = prost::encoding::decode_varint(&mut buf).unwrap_or(0) as usize;
    (b.len() - buf.len()) + len
}

/// A watcher's message for a shared response: its header and ID in front of the events it
/// wants (all of them, unless it filters or started in the middle). `None`: nothing for it.
fn message_for(w: &Watcher, d: &Decoded) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(d.header_field.len() + 11 + d.all.len());
    out.extend_from_slice(&d.header_field);
    if w.id != 0 {
        prost::encoding::int64::encode(2, &w.id, &mut out);
    }
    if d.events.is_empty() {
        // A progress notification.
        return w.progress_notify.then(|| out.freeze());
    }
    let next = w.next.get();
    let all = !w.no_put && !w.no_delete && d.events[0].0 >= next;
    if all {
        out.extend_from_slice(&d.all);
    } else {
        let mut any = false;
        for (rev, is_put, bytes) in &d.events {
            if *rev < next || (*is_put && w.no_put) || (!*is_put && w.no_delete) {
                continue;
            }
            any = true;
            out.extend_from_slice(bytes);
        }
        if !any {
            return None;
        }
    }
    Some(out.freeze())
}

/// The owner's upstream Watch stream for `token`: commands in, responses out; dials again
/// (next endpoint) when it breaks and creates every broadcast again.
async fn upstream_loop(
    core: Weak<Core>,
    token: Option<String>,
    cmds: local_channel::LocalReceiver<UpCmd>,
) {
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let Some(c) = core.upgrade() else { return };
        let up = c.up.clone();
        drop(c);
        let meta: Vec<(&str, &str)> = token.iter().map(|t| ("token", t.as_str())).collect();
        let opened = match up.conn().await {
            Ok((conn, g)) => client::Stream::open_with(&conn, "/etcdserverpb.Watch/Watch", &meta)
                .await
                .map(|s| (s, g)),
            Err(e) => Err(e),
        };
        let (mut stream, g) = match opened {
            Ok(x) => x,
            Err(_) => {
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        // (Re)create what this stream should carry.
        let Some(c) = core.upgrade() else { return };
        let mut ok = true;
        for (range, start) in c.resume_all(&token) {
            ok &= stream.send_raw(&create_request(&range, start)).is_ok();
        }
        drop(c);
        if !ok {
            up.failed(g);
            continue;
        }
        loop {
            enum Next {
                Cmd(Option<UpCmd>),
                Resp(Result<Bytes, CallError>),
            }
            let next = future::or(async { Next::Cmd(cmds.recv().await) }, async {
                Next::Resp(stream.recv_raw().await)
            })
            .await;
            let Some(c) = core.upgrade() else { return };
            match next {
                Next::Cmd(None) => return,
                Next::Cmd(Some(UpCmd::Create(range, start))) => {
                    // Already created, or sent when this stream opened.
                    let sent = c.owned.borrow().get(&range).is_none_or(|b| b.id.is_some())
                        || c.pending
                            .borrow()
                            .get(&token)
                            .is_some_and(|q| q.contains(&range));
                    if sent {
                        continue;
                    }
                    c.pending
                        .borrow_mut()
                        .entry(token.clone())
                        .or_default()
                        .push_back(range.clone());
                    if stream.send_raw(&create_request(&range, start)).is_err() {
                        break;
                    }
                }
                Next::Cmd(Some(UpCmd::Cancel(id))) => {
                    let m = pb::WatchRequest {
                        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
                            pb::WatchCancelRequest { watch_id: id },
                        )),
                    };
                    if stream.send_raw(&m.encode_to_vec()).is_err() {
                        break;
                    }
                }
                Next::Resp(Ok(raw)) => {
                    backoff = std::time::Duration::from_millis(50);
                    c.from_upstream(&token, raw);
                }
                Next::Resp(Err(_)) => break,
            }
        }
        up.failed(g);
        crate::runtime::log::warning(
            "grpcproxy",
            "upstream watch stream broke; resuming on the next endpoint",
        );
        glommio::timer::sleep(backoff).await;
    }
}

fn create_request(range: &RangeKey, start: i64) -> Vec<u8> {
    let m = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: range.key.clone(),
                range_end: range.end.clone(),
                start_revision: start,
                progress_notify: true,
                prev_kv: range.prev_kv,
                ..Default::default()
            },
        )),
    };
    m.encode_to_vec()
}

/// Reads a watcher's events from `from` on a private upstream watch until it has passed
/// what the shared watch buffered for it, then hands it back to the shared watch. With
/// `created`, the first answer (created, or refused: compacted) goes to the client as the
/// watcher's created response through that sender instead.
async fn catch_up(
    core: Weak<Core>,
    w: Rc<Watcher>,
    from: i64,
    created: Option<async_oneshot::Sender>,
) {
    let mut created = created;
    let mut from = from;
    let mut last_sent;
    loop {
        let Some(c) = core.upgrade() else { return };
        let up = c.up.clone();
        let ns = c.namespace.clone();
        drop(c);
        let Some(down) = w.down.upgrade() else { return };
        if w.gone.get() {
            return;
        }
        let opened = match up.conn().await {
            Ok((conn, g)) => {
                let meta: Vec<(&str, &str)> =
                    w.token.iter().map(|t| ("token", t.as_str())).collect();
                client::Stream::open_with(&conn, "/etcdserverpb.Watch/Watch", &meta)
                    .await
                    .map(|s| (s, g))
            }
            Err(e) => Err(e),
        };
        let Ok((mut stream, g)) = opened else {
            glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        if stream.send_raw(&create_request(&w.range, from)).is_err() {
            up.failed(g);
            continue;
        }
        loop {
            let raw = match stream.recv_raw().await {
                Ok(raw) => raw,
                Err(_) => break,
            };
            if w.gone.get() {
                return;
            }
            let Ok(resp) = pb::WatchResponse::decode(raw.clone()) else {
                break;
            };
            if resp.created || resp.canceled {
                if resp.canceled {
                    let m = pb::WatchResponse {
                        header: resp.header.clone(),
                        watch_id: w.id,
                        created: created.is_some(),
                        canceled: true,
                        compact_revision: resp.compact_revision,
                        cancel_reason: resp.cancel_reason.clone(),
                        ..Default::default()
                    };
                    let _ = down.res.send(Bytes::from(m.encode_to_vec())).await;
                    if let Some(c) = core.upgrade() {
                        if let Some(d) = w.down.upgrade() {
                            d.watchers.borrow_mut().remove(&w.id);
                        }
                        drop(w.catching.borrow_mut().take());
                        c.remove_watcher(&w);
                    }
                    if let Some(s) = created.take() {
                        s.fire();
                    }
                    return;
                }
                if let Some(s) = created.take() {
                    let m = pb::WatchResponse {
                        header: resp.header.clone(),
                        watch_id: w.id,
                        created: true,
                        ..Default::default()
                    };
                    let _ = down.res.send(Bytes::from(m.encode_to_vec())).await;
                    s.fire();
                }
                continue;
            }
            let Some(d) = decode(&raw, ns.as_deref()) else {
                break;
            };
            if d.events.is_empty() {
                continue;
            }
            let top = d.events.last().map_or(0, |e| e.0);
            if let Some(m) = message_for(&w, &d) {
                if down.res.send(m).await.is_err() {
                    return;
                }
            }
            last_sent = top;
            w.next.set(top + 1);
            from = top + 1;
            let since = match &*w.state.borrow() {
                State::CatchingUp { since, .. } => *since,
                State::Live => return,
            };
            if top > since {
                // Past what the shared watch buffered from: replay the buffer, go live.
                loop {
                    let item = match &mut *w.state.borrow_mut() {
                        State::CatchingUp { buffer, .. } => buffer.pop_front(),
                        State::Live => None,
                    };
                    let Some(d) = item else { break };
                    if d.events.last().map_or(0, |e| e.0) <= last_sent {
                        continue;
                    }
                    if let Some(m) = message_for(&w, &d) {
                        if down.res.send(m).await.is_err() {
                            return;
                        }
                    }
                    last_sent = d.events.last().map_or(last_sent, |e| e.0);
                    w.next.set(last_sent + 1);
                }
                *w.state.borrow_mut() = State::Live;
                drop(w.catching.borrow_mut().take());
                return;
            }
        }
        // The private stream broke: again from the next revision.
        up.failed(g);
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Serves one downstream Watch stream.
pub async fn serve(ctx: &Rc<Ctx>, mut req: Request, res: Responses) -> Result<(), Status> {
    let core = ctx.watch.clone();
    let meta = passed_metadata(&req.metadata);
    let token = meta
        .iter()
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.clone());
    let down = Rc::new(Down {
        res,
        watchers: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
    });
    struct Guard(Rc<Core>, Rc<Down>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let ws: Vec<_> = self
                .1
                .watchers
                .borrow_mut()
                .drain()
                .map(|(_, w)| w)
                .collect();
            for w in ws {
                self.0.remove_watcher(&w);
            }
        }
    }
    let _guard = Guard(core.clone(), down.clone());
    while let Some(message) = req.messages.next().await {
        let request = pb::WatchRequest::decode(message?).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("grpc: error unmarshalling request: {e}"),
            )
        })?;
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                create(ctx, &core, &down, &token, &meta, c).await?;
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let w = down.watchers.borrow_mut().remove(&c.watch_id);
                if let Some(w) = w {
                    core.remove_watcher(&w);
                    let header = core
                        .locals
                        .borrow()
                        .get(&w.range)
                        .map(|l| l.header.borrow().clone());
                    let m = pb::WatchResponse {
                        header,
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    down.res.send(Bytes::from(m.encode_to_vec())).await?;
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every event through this revision was sent to every watcher on the stream.
                let locals = core.locals.borrow();
                let mut rev = i64::MAX;
                let mut header = None;
                for w in down.watchers.borrow().values() {
                    let r = match &*w.state.borrow() {
                        State::Live => locals.get(&w.range).map_or(0, |l| l.known.get()),
                        State::CatchingUp { .. } => w.next.get() - 1,
                    };
                    rev = rev.min(r);
                    if header.is_none() {
                        header = locals.get(&w.range).map(|l| l.header.borrow().clone());
                    }
                }
                drop(locals);
                let mut header = header.unwrap_or_default();
                if rev != i64::MAX {
                    header.revision = rev;
                }
                let m = pb::WatchResponse {
                    header: Some(header),
                    watch_id: -1,
                    ..Default::default()
                };
                down.res.send(Bytes::from(m.encode_to_vec())).await?;
            }
            None => {}
        }
    }
    // Half-closed: etcd keeps the stream (and its watchers) until the call ends.
    future::pending::<()>().await;
    Ok(())
}

async fn create(
    ctx: &Rc<Ctx>,
    core: &Rc<Core>,
    down: &Rc<Down>,
    token: &Option<String>,
    meta: &[(&'static str, String)],
    c: pb::WatchCreateRequest,
) -> Result<(), Status> {
    let (key, end) = match &ctx.namespace {
        Some(ns) => (ns.key(&c.key), ns.end(&c.range_end)),
        None => (c.key.clone(), c.range_end.clone()),
    };
    // With a token, the caller must be allowed to read the range (etcd's proxy asks the
    // cluster with a one-key range; the shared watch itself may be someone else's).
    if token.is_some() {
        let check = pb::RangeRequest {
            key: key.clone(),
            range_end: end.clone(),
            limit: 1,
            serializable: true,
            keys_only: true,
            ..Default::default()
        };
        if let Err(e) = ctx
            .up
            .unary(
                "/etcdserverpb.KV/Range",
                &as_pairs(meta),
                check.encode_to_vec().into(),
                true,
            )
            .await
        {
            let s = status_of(e);
            let m = pb::WatchResponse {
                header: Some(pb::ResponseHeader::default()),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: format!(
                    "rpc error: code = {} desc = {}",
                    s.code.go_name(),
                    s.message
                ),
                ..Default::default()
            };
            down.res.send(Bytes::from(m.encode_to_vec())).await?;
            return Ok(());
        }
    }
    let id = if c.watch_id != 0 {
        if down.watchers.borrow().contains_key(&c.watch_id) {
            // etcd's answer to an ID already in use on the stream.
            let m = pb::WatchResponse {
                header: Some(pb::ResponseHeader::default()),
                watch_id: c.watch_id,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ..Default::default()
            };
            down.res.send(Bytes::from(m.encode_to_vec())).await?;
            return Ok(());
        }
        c.watch_id
    } else {
        let mut id = down.next_id.get();
        while down.watchers.borrow().contains_key(&id) {
            id += 1;
        }
        down.next_id.set(id + 1);
        id
    };
    let range = RangeKey {
        key,
        end,
        prev_kv: c.prev_kv,
    };
    let mut no_put = false;
    let mut no_delete = false;
    for f in &c.filters {
        match *f {
            0 => no_put = true,
            1 => no_delete = true,
            _ => {}
        }
    }
    // This core's view of the shared watch: join it, or subscribe and wait for it.
    let local = {
        let existing = core.locals.borrow().get(&range).cloned();
        match existing {
            Some(l) => {
                core.coalesced.set(core.coalesced.get() + 1);
                l
            }
            None => {
                let l = Rc::new(Local {
                    watchers: RefCell::new(Vec::new()),
                    known: Cell::new(0),
                    header: RefCell::new(pb::ResponseHeader::default()),
                    established: RefCell::new(Vec::new()),
                });
                core.locals.borrow_mut().insert(range.clone(), l.clone());
                let owner = owner_of(&range, core.cores);
                core.send_to(
                    owner,
                    Msg::Subscribe {
                        range: range.clone(),
                        token: token.clone(),
                        from: core.me,
                    },
                );
                l
            }
        }
    };
    let w = Rc::new(Watcher {
        down: Rc::downgrade(down),
        token: token.clone(),
        id,
        range: range.clone(),
        no_put,
        no_delete,
        progress_notify: c.progress_notify,
        next: Cell::new(0),
        state: RefCell::new(State::Live),
        gone: Cell::new(false),
        catching: RefCell::new(None),
    });
    local.watchers.borrow_mut().push(w.clone());
    down.watchers.borrow_mut().insert(id, w.clone());
    let known = if local.known.get() == 0 {
        // Until the shared watch exists, what it delivers is buffered for this watcher.
        let (tx, rx) = async_oneshot::pair();
        local.established.borrow_mut().push(tx);
        *w.state.borrow_mut() = State::CatchingUp {
            since: 0,
            buffer: VecDeque::new(),
        };
        rx.wait().await;
        match &*w.state.borrow() {
            State::CatchingUp { since, .. } if *since > 0 => *since,
            // Cancelled before it was created (the cancel went to the client).
            _ => return Ok(()),
        }
    } else {
        local.known.get()
    };
    let start = c.start_revision;
    if start == 0 || start > known {
        w.next.set(if start == 0 { known + 1 } else { start });
        let mut header = local.header.borrow().clone();
        header.revision = known;
        let m = pb::WatchResponse {
            header: Some(header),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        down.res.send(Bytes::from(m.encode_to_vec())).await?;
        // What the shared watch delivered while this one waited for it, then live.
        loop {
            let item = match &mut *w.state.borrow_mut() {
                State::CatchingUp { buffer, .. } => buffer.pop_front(),
                State::Live => None,
            };
            let Some(d) = item else { break };
            if let Some(m) = message_for(&w, &d) {
                down.res.send(m).await?;
            }
            if let Some(last) = d.events.last() {
                w.next.set(w.next.get().max(last.0 + 1));
            }
        }
        *w.state.borrow_mut() = State::Live;
        return Ok(());
    }
    // History first, from a private watch; the created response comes from it. (What the
    // shared watch buffered while it was being created stays: it is all above `known`.)
    w.next.set(start);
    match &mut *w.state.borrow_mut() {
        State::CatchingUp { since, .. } => *since = known,
        st => {
            *st = State::CatchingUp {
                since: known,
                buffer: VecDeque::new(),
            }
        }
    }
    let (tx, rx) = async_oneshot::pair();
    let task =
        glommio::spawn_local(catch_up(Rc::downgrade(core), w.clone(), start, Some(tx))).detach();
    *w.catching.borrow_mut() = Some(task);
    rx.wait().await;
    Ok(())
}
