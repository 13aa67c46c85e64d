//! Watch: etcd's Watch API on every core, fed by the raft core's applied rounds.
//!
//! Runs on: every core. A Watch stream lives on the core that accepted its connection;
//! that core's `Hub` holds the stream's watchers and matches every applied round against
//! them (each core receives every round), so a watch never waits on another core and
//! ordering across shards is the raft core's order.
//!
//! A watcher is, as in etcd's watchableStore:
//! - **pending** until its `created` reply is queued (nothing may precede it);
//! - **unsynced** while it replays history (`start_revision` in the past, or after it fell
//!   behind): its stream's catch-up task reads the published revision tree, at most
//!   `CATCH_UP_REVISIONS_MAX` revisions per response, and makes it synced once it reaches
//!   the core's watermark;
//! - **synced**: live rounds go to it at once, one response per revision (all events of a
//!   revision in one response), each event encoded once per core and copied into every
//!   matching response. If its stream's queue is full (the client reads slower than the
//!   writes come), it drops back to unsynced at the first revision it missed: it catches
//!   up from history later, never silently skipping anything, and never making the write
//!   path or other streams wait;
//! - **compacted** once the history it needs is gone: it gets etcd's response with
//!   `compact_revision` and `canceled`, and stays until the client cancels it;
//! - **canceled** if a page its events need fails its check (bit rot, reported by
//!   `db::corruption_found`): it gets `canceled` with etcd's corrupt error as the reason
//!   ("etcdserver: corrupt cluster") and nothing more, never an event with wrong data.
//!
//! Matching a change: single-key watchers are found by key in a hash map, range, prefix
//! and from-key watchers in an interval index (`interval.rs`), so a change costs about
//! the index's depth, O(log n), plus the watchers it matches, not a scan of every range
//! watcher. Within a revision of one change, the matched watchers are served single-key
//! ones first, each group in creation order (the order the scan gave); a revision of
//! several changes serves them by watcher id.

pub mod encode;
mod interval;

use crate::mesh::Applied;
use crate::mesh::Watermark;
use crate::mvcc::db::{self, ReadSnapshot, TreeId};
use crate::mvcc::{kv, Change, KeyRange, Revision};
use crate::runtime::responses::Responses;
use bytes::Bytes;
use encode::{event_field, events_response, header_field};
use interval::IntervalIndex;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::task::Waker;

/// etcd's watchBatchMaxRevs: revisions per catch-up response.
pub const CATCH_UP_REVISIONS_MAX: usize = 1000;
/// History bytes read per catch-up pass (whole revisions; a bigger revision goes alone).
/// etcd has no such bound, and its 1000-revision responses can exceed what clients
/// accept by default (4 MiB in grpc-go's and tonic's servers and clients).
pub const CATCH_UP_BYTES_MAX: usize = 1 << 20;

/// What the hub reads from the core it runs on, handed to the calls that need it: the
/// node owns the hub, and the hub never holds the node.
#[allow(async_fn_in_trait)]
pub trait Source {
    /// What the core's shard has applied.
    fn watermark(&self) -> Watermark;
    /// The published state at that watermark (history is read from it).
    fn snapshot(&self) -> ReadSnapshot;
    /// The value `key` had at revision `at` (an event's `prev_kv`), from the shard that
    /// owns the key.
    async fn value_at(
        &self,
        key: &[u8],
        at: i64,
    ) -> Result<Option<crate::mvcc::KeyValue>, crate::mesh::ServerError>;
}

/// Responses a Watch stream may have queued for its client (etcd: 128 per stream). Past
/// it, watchers that cannot be sent to drop back to catching up from history.
pub const STREAM_QUEUE_MAX: usize = 1024;

/// Response bytes a stream may have queued before its catch-up reads more history: a
/// client catching up over a million revisions holds about this much of the server's
/// memory, not the queue's 1024 messages of up to `CATCH_UP_BYTES_MAX` each (measured:
/// +617 MiB for one watch over 1M revisions before this bound; tuning.md).
pub const CATCH_UP_QUEUED_BYTES_MAX: usize = 4 << 20;

/// Settings every core's hub shares.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Responses over this size are split when the watcher asked for `fragment`
    /// (etcd: `--max-request-bytes` + 512 KiB).
    pub fragment_bytes: usize,
    /// The cancel reason of a watcher whose history fails its check (etcd's corrupt
    /// error, from the services' table).
    pub corrupt_reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Unsynced,
    Synced,
    Compacted,
    Canceled,
}

#[derive(Clone)]
struct Watcher {
    stream: StreamId,
    /// The stream's response queue (so fan-out needs no stream lookup).
    responses: Rc<Responses>,
    watch_id: i64,
    key: Vec<u8>,
    /// etcd's range_end as the client meant it: empty = one key, "\0" = from `key` on.
    range_end: Vec<u8>,
    filter_put: bool,
    filter_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    state: State,
    /// Unsynced: the first revision not yet delivered. Synced: the lowest revision it
    /// wants (a `start_revision` in the future).
    next_rev: i64,
    /// Anything sent since the last progress tick.
    sent: bool,
    /// Creation order on this core's hub (watcher ids are reused; this is not).
    seq: u64,
}

impl Watcher {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }
}

/// A Watch stream on this core's hub (one gRPC Watch call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

struct Stream {
    responses: Rc<Responses>,
    /// Watch IDs in use on this stream → hub-wide watcher ids.
    ids: BTreeMap<i64, WatcherId>,
    next_auto_id: i64,
    /// Set when a watcher of this stream needs the catch-up task.
    catch_up: bool,
    /// The stream's queue has overflowed at least once (logged the first time).
    fell_behind: bool,
    waker: Option<Waker>,
    /// A WatchProgressRequest is waiting for the stream's watchers to catch up.
    progress_wanted: bool,
}

/// A watcher on this core's hub: its slot in the `Slab` (reused once freed; the
/// client's watch ID is per stream, `Stream::ids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WatcherId(u64);

/// Watchers by a dense id (no hashing on the fan-out path); freed ids are reused.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<WatcherId>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> WatcherId {
        self.len += 1;
        match self.free.pop() {
            Some(id) => {
                self.slots[id.0 as usize] = Some(value);
                id
            }
            None => {
                self.slots.push(Some(value));
                WatcherId((self.slots.len() - 1) as u64)
            }
        }
    }

    fn get(&self, id: &WatcherId) -> Option<&T> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }

    fn get_mut(&mut self, id: &WatcherId) -> Option<&mut T> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut())
    }

    fn remove(&mut self, id: &WatcherId) -> Option<T> {
        let v = self.slots.get_mut(id.0 as usize)?.take()?;
        self.free.push(*id);
        self.len -= 1;
        Some(v)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(|s| s.as_mut())
    }
}

#[derive(Default)]
struct Inner {
    streams: HashMap<StreamId, Stream>,
    watchers: Slab<Watcher>,
    /// Single-key watchers by key.
    by_key: HashMap<Vec<u8>, Vec<WatcherId>>,
    /// Range, prefix and from-key watchers, by their key range.
    ranged: IntervalIndex,
    next_stream: u64,
    /// The next watcher's `seq`.
    next_seq: u64,
}

pub struct Hub {
    inner: RefCell<Inner>,
    config: RefCell<Option<WatchConfig>>,
}

/// What a create request asks for, after etcd's normalisation.
pub struct CreateSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub watch_id: i64,
    pub filter_put: bool,
    pub filter_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

/// etcd's watch errors (mvcc package wording).
#[derive(Debug, PartialEq, Eq)]
pub enum CreateError {
    EmptyRange,
    DuplicateId,
}

impl CreateError {
    pub fn message(&self) -> &'static str {
        match self {
            CreateError::EmptyRange => "mvcc: watcher range is empty",
            CreateError::DuplicateId => "mvcc: duplicate watch ID provided on the WatchStream",
        }
    }
}

/// What a watcher's range and filters look at.
struct EventRef<'a> {
    key: &'a [u8],
    delete: bool,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            inner: RefCell::new(Inner::default()),
            config: RefCell::new(None),
        }
    }

    pub fn configure(&self, config: WatchConfig) {
        *self.config.borrow_mut() = Some(config);
    }

    fn config(&self) -> WatchConfig {
        self.config.borrow().clone().expect("watch hub configured")
    }

    pub fn header(&self, raft_term: u64, revision: i64) -> Vec<u8> {
        let c = self.config();
        header_field(c.cluster_id, c.member_id, revision, raft_term)
    }

    /// Open streams, watchers, and watchers catching up (unsynced), for the metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.inner.borrow();
        let behind = inner
            .watchers
            .values()
            .filter(|w| w.state != State::Synced)
            .count();
        (inner.streams.len(), inner.watchers.len, behind)
    }

    pub fn add_stream(&self, responses: Rc<Responses>) -> StreamId {
        let mut inner = self.inner.borrow_mut();
        let id = StreamId(inner.next_stream);
        inner.next_stream += 1;
        inner.streams.insert(
            id,
            Stream {
                responses,
                ids: BTreeMap::new(),
                next_auto_id: 0,
                catch_up: false,
                fell_behind: false,
                waker: None,
                progress_wanted: false,
            },
        );
        id
    }

    pub fn remove_stream(&self, stream: StreamId) {
        let mut inner = self.inner.borrow_mut();
        let Some(s) = inner.streams.remove(&stream) else {
            return;
        };
        for wid in s.ids.values() {
            inner.unindex(*wid);
        }
    }

    /// Adds a pending watcher; returns its watch ID.
    pub fn create(&self, stream: StreamId, spec: CreateSpec) -> Result<i64, CreateError> {
        if !spec.range_end.is_empty()
            && spec.range_end != [0]
            && spec.key.as_slice() >= spec.range_end.as_slice()
        {
            return Err(CreateError::EmptyRange);
        }
        let mut inner = self.inner.borrow_mut();
        let s = inner.streams.get_mut(&stream).expect("stream registered");
        let watch_id = if spec.watch_id == 0 {
            while s.ids.contains_key(&s.next_auto_id) {
                s.next_auto_id += 1;
            }
            let id = s.next_auto_id;
            s.next_auto_id += 1;
            id
        } else if s.ids.contains_key(&spec.watch_id) {
            return Err(CreateError::DuplicateId);
        } else {
            spec.watch_id
        };
        let responses = s.responses.clone();
        let w = Watcher {
            stream,
            responses,
            watch_id,
            key: spec.key,
            range_end: spec.range_end,
            filter_put: spec.filter_put,
            filter_delete: spec.filter_delete,
            prev_kv: spec.prev_kv,
            progress_notify: spec.progress_notify,
            fragment: spec.fragment,
            state: State::Pending,
            next_rev: spec.start_revision,
            sent: false,
            seq: inner.next_seq,
        };
        inner.next_seq += 1;
        let inner = &mut *inner;
        let wid = inner.watchers.insert(w);
        let w = inner.watchers.get(&wid).expect("just inserted");
        if w.range_end.is_empty() {
            inner.by_key.entry(w.key.clone()).or_default().push(wid);
        } else {
            inner.ranged.insert(w.range(), wid.0);
        }
        inner
            .streams
            .get_mut(&stream)
            .expect("stream registered")
            .ids
            .insert(watch_id, wid);
        inner.invariants();
        Ok(watch_id)
    }

    /// The created reply is queued: from now on the watcher catches up, then goes live.
    pub fn activate(&self, stream: StreamId, watch_id: i64) {
        let mut inner = self.inner.borrow_mut();
        let Some(&wid) = inner
            .streams
            .get(&stream)
            .and_then(|s| s.ids.get(&watch_id))
        else {
            return;
        };
        if let Some(w) = inner.watchers.get_mut(&wid) {
            if w.state == State::Pending {
                w.state = State::Unsynced;
                inner.kick(stream);
            }
        }
    }

    /// Cancels a watcher; false if the stream has no such watch ID.
    pub fn cancel(&self, stream: StreamId, watch_id: i64) -> bool {
        let mut inner = self.inner.borrow_mut();
        let Some(wid) = inner
            .streams
            .get_mut(&stream)
            .and_then(|s| s.ids.remove(&watch_id))
        else {
            return false;
        };
        inner.unindex(wid);
        true
    }

    /// Matches one applied round against the synced watchers and queues their responses.
    pub fn on_applied(&self, a: &Applied) {
        let has_watchers = !self.inner.borrow().watchers.is_empty();
        if !has_watchers || a.changes.iter().all(|c| c.is_empty()) {
            return;
        }
        let raft_term = a.raft_term;
        let config = self.config();
        let mut inner = self.inner.borrow_mut();
        for chunk in &a.changes {
            inner.deliver_chunk(chunk, &a.snapshot, &config, raft_term);
        }
    }
}

impl Hub {
    /// Progress notifications: synced watchers that asked for them and got nothing since
    /// the last tick get an empty response at the current revision.
    pub fn progress_tick(&self, mark: Watermark) {
        let header = self.header(mark.raft_term, mark.revision);
        let mut inner = self.inner.borrow_mut();
        for w in inner.watchers.values_mut() {
            if !w.progress_notify {
                continue;
            }
            if w.state == State::Synced && !w.sent {
                let msg = events_response(&header, w.watch_id, false, std::iter::empty());
                let _ = w.responses.try_send(Bytes::from(msg));
            }
            w.sent = false;
        }
    }

    /// Waits until a watcher of `stream` needs catching up; false once the stream is gone.
    pub async fn catch_up_wanted(&self, stream: StreamId) -> bool {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            match inner.streams.get_mut(&stream) {
                None => std::task::Poll::Ready(false),
                Some(s) if s.catch_up => {
                    s.catch_up = false;
                    std::task::Poll::Ready(true)
                }
                Some(s) => {
                    s.waker = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }

    /// One catch-up pass for `stream`: compaction notices, then up to
    /// `CATCH_UP_REVISIONS_MAX` revisions (or `CATCH_UP_BYTES_MAX` bytes) of history for
    /// its unsynced watchers. History is read in one go from the snapshot that matches the
    /// core's watermark, and the snapshot is let go before anything waits (a snapshot
    /// held across waits would keep pages from reuse and pin an epoch slot).
    pub async fn catch_up<S: Source>(&self, node: &S, stream: StreamId) {
        // Only while the client keeps up: what it has not read yet stays small. (Before
        // the watchers are looked at: one canceled meanwhile gets nothing more.)
        let queue = self
            .inner
            .borrow()
            .streams
            .get(&stream)
            .map(|s| s.responses.clone());
        match queue {
            Some(q) => q.wait_queued_below(CATCH_UP_QUEUED_BYTES_MAX).await,
            None => return,
        }
        let (responses, todo) = {
            let inner = self.inner.borrow();
            let Some(s) = inner.streams.get(&stream) else {
                return;
            };
            let todo: Vec<(WatcherId, Watcher)> = s
                .ids
                .values()
                .filter_map(|wid| inner.watchers.get(wid).map(|w| (*wid, w.clone())))
                .filter(|(_, w)| w.state == State::Unsynced)
                .collect();
            (s.responses.clone(), todo)
        };
        if todo.is_empty() {
            return;
        }
        // History below the compact revision is gone (etcd: strictly below).
        let mark = node.watermark();
        let (compacted, live): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|(_, w)| w.next_rev < mark.compact_revision && w.next_rev <= mark.revision);
        let from = live
            .iter()
            .map(|(_, w)| w.next_rev)
            .min()
            .unwrap_or(mark.revision + 1);
        let read = if live.is_empty() || from > mark.revision {
            Ok((Vec::new(), mark.revision))
        } else {
            read_history(&node.snapshot(), from, mark.revision)
        };
        let (history, upto) = match read {
            Ok(read) => read,
            Err(_) => {
                let ids: Vec<(WatcherId, i64)> =
                    live.iter().map(|(id, w)| (*id, w.next_rev)).collect();
                return self.cancel_corrupt(node, stream, &responses, &ids).await;
            }
        };
        for (wid, w) in &compacted {
            let msg = crate::pb::etcdserverpb::WatchResponse {
                header: Some(self.pb_header(mark.raft_term, 0)),
                watch_id: w.watch_id,
                compact_revision: mark.compact_revision,
                canceled: true,
                ..Default::default()
            };
            if responses.send(encode_pb(&msg)).await.is_err() {
                return;
            }
            if let Some(now) = self.inner.borrow_mut().watchers.get_mut(wid) {
                if now.state == State::Unsynced && now.next_rev == w.next_rev {
                    now.state = State::Compacted;
                }
            }
        }
        if live.is_empty() {
            return;
        }
        let mut per: Vec<Vec<Vec<u8>>> = vec![Vec::new(); live.len()];
        for e in &history {
            let ev = EventRef {
                key: &e.key,
                delete: e.delete,
            };
            for (n, (_, w)) in live.iter().enumerate() {
                if e.main < w.next_rev || !wants(w, &ev) {
                    continue;
                }
                let prev = if w.prev_kv && !e.create {
                    match node.value_at(&e.key, e.main - 1).await {
                        Ok(kv) => kv.map(|kv| {
                            let mut b = Vec::new();
                            kv.encode(&mut b);
                            b
                        }),
                        Err(e) if e.is_corruption() => {
                            let ids = [(live[n].0, live[n].1.next_rev)];
                            return self.cancel_corrupt(node, stream, &responses, &ids).await;
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                per[n].push(event_field(e.delete, &e.kv, prev.as_deref()));
            }
        }
        // etcd's catch-up responses carry the store's revision in the header.
        let header = self.header(mark.raft_term, mark.revision);
        let config = self.config();
        for (n, (_, w)) in live.iter().enumerate() {
            if per[n].is_empty() {
                continue;
            }
            let events: Vec<&[u8]> = per[n].iter().map(Vec::as_slice).collect();
            crate::metrics::add(crate::metrics::Counter::WatchEvents, events.len() as u64);
            for msg in split_fragments(&header, w, &events, config.fragment_bytes) {
                if responses.send(Bytes::from(msg)).await.is_err() {
                    return;
                }
            }
        }
        let now = node.watermark().revision;
        let mut inner = self.inner.borrow_mut();
        let mut again = false;
        for (n, (wid, old)) in live.iter().enumerate() {
            let Some(w) = inner.watchers.get_mut(wid) else {
                continue;
            };
            if w.state != State::Unsynced || w.next_rev != old.next_rev {
                continue;
            }
            if !per[n].is_empty() {
                w.sent = true;
            }
            w.next_rev = w.next_rev.max(upto + 1);
            if w.next_rev > now {
                w.state = State::Synced;
            } else {
                again = true;
            }
        }
        if again {
            inner.kick(stream);
            return;
        }
        // Every event up to `now` is queued for every watcher of the stream now: a waiting
        // progress request can be answered.
        if inner.take_progress(stream) {
            drop(inner);
            let msg = self.progress_response(mark.raft_term, now);
            let _ = responses.send(msg).await;
        }
    }

    /// Cancels the unsynced watchers `ids` (with the `next_rev` they had) because a page
    /// their history needs failed its check: etcd's corrupt error as the cancel reason.
    /// The stream's other unsynced watchers get another catch-up pass.
    async fn cancel_corrupt<S: Source>(
        &self,
        node: &S,
        stream: StreamId,
        responses: &Responses,
        ids: &[(WatcherId, i64)],
    ) {
        let reason = self.config().corrupt_reason;
        for &(wid, next_rev) in ids {
            let watch_id = match self.inner.borrow_mut().watchers.get_mut(&wid) {
                Some(w) if w.state == State::Unsynced && w.next_rev == next_rev => {
                    w.state = State::Canceled;
                    w.watch_id
                }
                _ => continue,
            };
            let msg = crate::pb::etcdserverpb::WatchResponse {
                header: Some(self.pb_header(node.watermark().raft_term, 0)),
                watch_id,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            };
            if responses.send(encode_pb(&msg)).await.is_err() {
                return;
            }
        }
        self.inner.borrow_mut().kick(stream);
    }

    /// A WatchProgressRequest on `stream` (etcd 3.4.31 / 3.5.13's rule, which Kubernetes'
    /// consistent reads from its watch cache rely on): the response's revision promises
    /// that every event up to it was sent on the stream, so it is answered at once (at
    /// `mark`'s revision, watch ID -1) only when no watcher of the stream is catching up;
    /// else it waits and the catch-up task sends it when the last one is synced. Returns
    /// the response to send now, if any.
    pub fn request_progress(&self, stream: StreamId, mark: Watermark) -> Option<Bytes> {
        let mut inner = self.inner.borrow_mut();
        if inner.stream_synced(stream) {
            drop(inner);
            return Some(self.progress_response(mark.raft_term, mark.revision));
        }
        if let Some(s) = inner.streams.get_mut(&stream) {
            s.progress_wanted = true;
        }
        None
    }

    fn progress_response(&self, raft_term: u64, revision: i64) -> Bytes {
        encode_pb(&crate::pb::etcdserverpb::WatchResponse {
            header: Some(self.pb_header(raft_term, revision)),
            watch_id: -1,
            ..Default::default()
        })
    }

    pub fn pb_header(
        &self,
        raft_term: u64,
        revision: i64,
    ) -> crate::pb::etcdserverpb::ResponseHeader {
        let c = self.config();
        crate::pb::etcdserverpb::ResponseHeader {
            cluster_id: c.cluster_id,
            member_id: c.member_id,
            revision,
            raft_term,
        }
    }
}

/// One event read from history (owned: the snapshot is released before it is used).
struct HistoryEvent {
    main: i64,
    key: Vec<u8>,
    delete: bool,
    /// KeyValue wire bytes.
    kv: Vec<u8>,
    /// A PUT that created the key (no prev_kv, as etcd).
    create: bool,
}

/// The events of revisions `from..=to` (at most `CATCH_UP_REVISIONS_MAX` revisions and
/// about `CATCH_UP_BYTES_MAX` bytes, whole revisions), and the last revision covered;
/// `db::Error::Corrupt` if a page of that history fails its check.
fn read_history(
    snapshot: &ReadSnapshot,
    from: i64,
    to: i64,
) -> Result<(Vec<HistoryEvent>, i64), db::Error> {
    let mut out = Vec::new();
    let start = Revision::new(from.max(0), 0).encode();
    let mut revisions = 0usize;
    let mut bytes = 0usize;
    let mut last_main = -1;
    for entry in snapshot.range(TreeId::Revision, &start, &[]) {
        let (k, v) = entry?;
        let Some(rev) = Revision::decode(k) else {
            continue;
        };
        if rev.main > to {
            break;
        }
        if rev.main != last_main {
            if revisions == CATCH_UP_REVISIONS_MAX || bytes >= CATCH_UP_BYTES_MAX {
                return Ok((out, last_main));
            }
            revisions += 1;
            last_main = rev.main;
        }
        bytes += v.len();
        let Ok((kind, record)) = kv::decode_record_ref(v) else {
            continue;
        };
        out.push(HistoryEvent {
            main: rev.main,
            key: record.key.to_vec(),
            delete: kind == kv::RecordKind::Tombstone,
            kv: v[1..].to_vec(),
            create: kind == kv::RecordKind::Put && record.create_revision == record.mod_revision,
        });
    }
    Ok((out, to))
}

fn encode_pb<M: prost::Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// A change as a watch event: whether it is a DELETE, and the record of the value before
/// it (none for a PUT that created the key: etcd attaches no prev_kv there).
fn event_kind(c: &Change) -> Option<(bool, Option<Revision>)> {
    match c {
        Change::Put { kv, prev, .. } => Some((false, if kv.version == 1 { None } else { *prev })),
        Change::Delete { prev, .. } => Some((true, *prev)),
        Change::Compact { .. } => None,
    }
}

/// The watcher's range and filters accept the event.
/// One event as the `events` field of a WatchResponse: the change's kv as a record, and
/// the previous value (`prev`'s record in `snapshot`) when asked and still a put.
fn encode_event(
    c: &Change,
    delete: bool,
    prev: Option<Revision>,
    snapshot: &ReadSnapshot,
    kv_bytes: &mut Vec<u8>,
) -> Result<Vec<u8>, db::Error> {
    // The event's kv as a record (flag byte + KeyValue wire bytes).
    kv_bytes.clear();
    match c {
        Change::Put { kv, .. } => kv::encode_put_record(&kv.as_ref(), kv_bytes),
        Change::Delete { rev, key, .. } => kv::encode_tombstone_record(key, rev.main, kv_bytes),
        Change::Compact { .. } => {}
    }
    let prev_bytes = match prev {
        Some(p) => snapshot
            .get(TreeId::Revision, &p.encode())?
            .filter(|r| r.first() == Some(&(kv::RecordKind::Put as u8)))
            .map(|r| &r[1..]),
        None => None,
    };
    Ok(event_field(delete, &kv_bytes[1..], prev_bytes))
}

fn wants(w: &Watcher, e: &EventRef<'_>) -> bool {
    if (e.delete && w.filter_delete) || (!e.delete && w.filter_put) {
        return false;
    }
    w.range().contains(e.key)
}

/// The responses for one watcher's events: one, or (fragment asked, too big, more than
/// one event) several, each but the last marked `fragment`, as etcd splits them.
fn split_fragments(header: &[u8], w: &Watcher, events: &[&[u8]], limit: usize) -> Vec<Vec<u8>> {
    let total: usize = events.iter().map(|e| e.len()).sum::<usize>() + header.len();
    if !w.fragment || total < limit || events.len() < 2 {
        return vec![events_response(
            header,
            w.watch_id,
            false,
            events.iter().copied(),
        )];
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        let mut size = header.len() + events[start].len();
        while end < events.len() && size + events[end].len() < limit {
            size += events[end].len();
            end += 1;
        }
        out.push((start, end));
        start = end;
    }
    let last = out.len() - 1;
    out.iter()
        .enumerate()
        .map(|(i, &(s, e))| {
            events_response(header, w.watch_id, i != last, events[s..e].iter().copied())
        })
        .collect()
}

impl Hub {
    /// What holds between calls (checked after each applied round in debug builds and
    /// tests): every stream's watch IDs name live watchers of that stream, and every
    /// watcher belongs to a live stream.
    #[cfg(debug_assertions)]
    pub fn invariants(&self) {
        let inner = self.inner.borrow();
        for (sid, s) in &inner.streams {
            for (watch_id, wid) in &s.ids {
                let w = inner
                    .watchers
                    .get(wid)
                    .expect("a stream names a live watcher");
                assert_eq!(w.stream, *sid, "a watcher on the stream that names it");
                assert_eq!(w.watch_id, *watch_id);
            }
        }
        for w in inner.watchers.values() {
            let s = inner
                .streams
                .get(&w.stream)
                .expect("a watcher's stream is live");
            assert!(
                s.ids.contains_key(&w.watch_id),
                "a watcher its stream knows"
            );
        }
    }
}

impl Inner {
    /// Checked after every watcher added or removed, in debug builds.
    fn invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(self.by_key.len() + self.ranged.len() <= self.watchers.len);
    }

    fn unindex(&mut self, wid: WatcherId) {
        let Some(w) = self.watchers.remove(&wid) else {
            return;
        };
        if w.range_end.is_empty() {
            if let Some(v) = self.by_key.get_mut(&w.key) {
                v.retain(|x| *x != wid);
                if v.is_empty() {
                    self.by_key.remove(&w.key);
                }
            }
        } else {
            let found = self.ranged.remove(&w.key, wid.0);
            assert!(found, "range watcher {wid:?} not in the interval index");
        }
        self.invariants();
    }

    /// Whether every watcher of `stream` is synced (none catching up).
    fn stream_synced(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| {
            s.ids.values().all(|id| {
                self.watchers
                    .get(id)
                    .is_none_or(|w| w.state != State::Unsynced)
            })
        })
    }

    /// Takes a waiting progress request once the stream's watchers are all synced.
    fn take_progress(&mut self, stream: StreamId) -> bool {
        let ready = self.stream_synced(stream);
        match self.streams.get_mut(&stream) {
            Some(s) if s.progress_wanted && ready => {
                s.progress_wanted = false;
                true
            }
            _ => false,
        }
    }

    fn kick(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.catch_up = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    /// One round's changes (whole revisions), revision by revision.
    fn deliver_chunk(
        &mut self,
        changes: &[Change],
        snapshot: &ReadSnapshot,
        config: &WatchConfig,
        raft_term: u64,
    ) {
        let mut i = 0;
        while i < changes.len() {
            // One revision: changes[i..j].
            let main = match &changes[i] {
                Change::Put { rev, .. } | Change::Delete { rev, .. } => rev.main,
                Change::Compact { .. } => {
                    i += 1;
                    continue;
                }
            };
            let mut j = i + 1;
            while j < changes.len()
                && matches!(&changes[j], Change::Put { rev, .. } | Change::Delete { rev, .. } if rev.main == main)
            {
                j += 1;
            }
            self.deliver_revision(&changes[i..j], main, snapshot, config, raft_term);
            i = j;
        }
    }

    /// Queues, for every synced watcher the revision's events match, one response with
    /// all of them; a watcher whose stream is full drops back to catching up, and so does
    /// one whose prev_kv is on a page that fails its check (catching up cancels it).
    fn deliver_revision(
        &mut self,
        changes: &[Change],
        main: i64,
        snapshot: &ReadSnapshot,
        config: &WatchConfig,
        raft_term: u64,
    ) {
        let hits = self.match_changes(changes);
        if hits.is_empty() {
            return;
        }
        let header = header_field(config.cluster_id, config.member_id, main, raft_term);
        // Encoded once per revision: each event without, and (lazily) with prev_kv.
        let mut plain: Vec<Option<Vec<u8>>> = vec![None; changes.len()];
        let mut with_prev: Vec<Option<Vec<u8>>> = vec![None; changes.len()];
        let mut kv_bytes = Vec::new();
        let mut k = 0;
        while k < hits.len() {
            let wid = hits[k].0;
            let mut end = k + 1;
            while end < hits.len() && hits[end].0 == wid {
                end += 1;
            }
            let group = &hits[k..end];
            k = end;
            let Some(w) = self.watchers.get(&wid) else {
                continue;
            };
            if w.state != State::Synced || main < w.next_rev {
                continue;
            }
            // The watcher's events of this revision, each encoded once per revision (with
            // or without prev_kv) and shared by every watcher that wants it.
            let mut picks: Vec<(usize, bool)> = Vec::with_capacity(group.len());
            let mut corrupt = false;
            for &(_, i) in group {
                let c = &changes[i];
                let Some((delete, prev)) = event_kind(c) else {
                    continue;
                };
                if (delete && w.filter_delete) || (!delete && w.filter_put) {
                    continue;
                }
                let with = w.prev_kv && prev.is_some();
                picks.push((i, with));
                let slot = if with {
                    &mut with_prev[i]
                } else {
                    &mut plain[i]
                };
                if slot.is_none() {
                    let prev = prev.filter(|_| with);
                    match encode_event(c, delete, prev, snapshot, &mut kv_bytes) {
                        Ok(event) => *slot = Some(event),
                        Err(_) => {
                            // Never an event with wrong data: the watcher catches up from
                            // history, meets the damage there and is canceled.
                            picks.pop();
                            corrupt = true;
                            break;
                        }
                    }
                }
            }
            if corrupt {
                self.fall_behind(wid, main);
                continue;
            }
            let events: Vec<&[u8]> = picks
                .iter()
                .map(|&(i, with)| {
                    let slot = if with { &with_prev[i] } else { &plain[i] };
                    slot.as_deref().expect("encoded above")
                })
                .collect();
            if events.is_empty() {
                continue;
            }
            let msgs = split_fragments(&header, w, &events, config.fragment_bytes);
            // All of a revision or none of it: a fragment sent alone would come again
            // with the whole revision once the watcher catches up.
            let full = corrupt || w.responses.room() < msgs.len();
            if !full {
                crate::metrics::add(crate::metrics::Counter::WatchEvents, events.len() as u64);
                for m in msgs {
                    let _ = w.responses.try_send(Bytes::from(m));
                }
            }
            if full {
                self.fall_behind(wid, main);
            } else {
                self.watchers.get_mut(&wid).expect("watcher").sent = true;
            }
        }
    }

    /// The (watcher, change index) pairs of a revision's changes: single keys by hash,
    /// ranges by the interval index; grouped by watcher when there are several changes.
    fn match_changes(&self, changes: &[Change]) -> Vec<(WatcherId, usize)> {
        let mut hits: Vec<(WatcherId, usize)> = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            let key = c.key().expect("put or delete");
            if let Some(ws) = self.by_key.get(key) {
                hits.extend(ws.iter().map(|w| (*w, i)));
            }
            let ranged_from = hits.len();
            self.ranged
                .for_each_containing(key, |wid| hits.push((WatcherId(wid), i)));
            if changes.len() == 1 {
                // The index gives key order; serve range watchers in creation order, as
                // the scan it replaced did (several changes are regrouped by id below).
                let watchers = &self.watchers;
                hits[ranged_from..].sort_unstable_by_key(|h| watchers.get(&h.0).map(|w| w.seq));
            }
        }
        if changes.len() > 1 {
            // Group each watcher's events (stable: in change order).
            hits.sort_by_key(|h| h.0);
        }
        hits
    }

    /// A watcher whose client reads slower than events arrive: it catches up from history
    /// from revision `main` on (its stream's catch-up task is kicked).
    fn fall_behind(&mut self, wid: WatcherId, main: i64) {
        let w = self.watchers.get_mut(&wid).expect("watcher");
        w.state = State::Unsynced;
        w.next_rev = main;
        let stream = w.stream;
        if let Some(s) = self.streams.get_mut(&stream) {
            if !s.fell_behind {
                s.fell_behind = true;
                crate::runtime::log::notice(
                    "watch",
                    &format!(
                        "a watch stream's client reads slower than events arrive; its \
                         watchers catch up from history (from revision {main})"
                    ),
                );
            }
        }
        self.kick(stream);
    }
}
