//! The clients: tasks on one glommio executor (in the bridge namespace), each bound to a
//! member, doing what a config store's users do, weighted like real traffic:
//! - register clients: linearizable and serializable gets, puts and compare-and-set txns
//!   on a sliding window of keys `/chaos/r/NNNNNN` (each key sees a bounded number of
//!   operations, which keeps the per-key linearizability search small);
//! - watchers: a key, a prefix or a range, from a revision some client saw, resumed after
//!   a broken stream from the revision after the last event received;
//! - lease clients: grant, put keys with the lease, keep it alive a while, then revoke it
//!   or let it expire;
//! - lock clients: Lock / Unlock (v3lockpb) with a lease.
//!
//! Every register operation goes into the Jepsen-style history: invoke, then ok, fail
//! (it did not happen: never sent, a read that failed, a cas whose compare failed) or info
//! (unknown: sent and no answer, or an error after sending). After an info the client
//! takes a new process number, as in Jepsen.
//!
//! Runs on: the workload thread's executor only (`Rc` state, no locks). Stops when the
//! shared stop flag is set; every call is bounded by a timeout, so it stops promptly.

use crate::cluster::client_addr;
use crate::history::{Event, Kind, F};
use crate::record::*;
use crate::rng::Rng;
use crate::rpc::{Endpoint, Failure};
use bytes::Bytes;
use keel::grpc::client::{CallError, Stream};
use keel::pb::etcdserverpb as pb;
use keel::pb::v3lockpb as lockpb;
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client gives up on a call after this long (the outcome of a write is then unknown).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Register keys in use at once.
pub const KEY_WINDOW: u64 = 8;
/// Register operations after which the key window moves up by one key.
const KEY_WINDOW_STEP_OPS: u64 = 150;
pub const REGISTER_PREFIX: &str = "/chaos/r/";
pub const LEASE_PREFIX: &str = "/chaos/lease/";
pub const LOCK_PREFIX: &str = "/chaos/lock/";
/// Everything the workload writes is under this prefix.
pub const ROOT_PREFIX: &str = "/chaos/";

/// Counters the progress line reads from another thread.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

#[derive(Clone)]
pub struct Plan {
    pub seed: u64,
    pub clients: usize,
    /// Client slots (the cluster's voters); clients are spread over them.
    pub slots: Vec<usize>,
    pub origin: Instant,
}

struct Shared {
    rec: RefCell<Recording>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    origin: Instant,
    next_value: RefCell<u64>,
    /// Register operations so far (moves the key window).
    register_ops: RefCell<u64>,
    /// The highest header revision any response carried.
    revision_seen: RefCell<i64>,
    /// The last value seen per key index (what a cas expects).
    last_seen: RefCell<std::collections::HashMap<u64, Value>>,
    next_watch: RefCell<u64>,
    /// The slots clients use (watchers move among them after a broken stream).
    slots: Vec<usize>,
}

impl Shared {
    fn now(&self) -> i64 {
        crate::sys::ns_since(self.origin)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn new_process(&self) -> u64 {
        let mut r = self.rec.borrow_mut();
        r.next_process += 1;
        r.next_process - 1
    }

    fn value(&self) -> u64 {
        let mut v = self.next_value.borrow_mut();
        *v += 1;
        *v
    }

    fn saw_revision(&self, header: &Option<pb::ResponseHeader>) -> i64 {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        let mut seen = self.revision_seen.borrow_mut();
        *seen = (*seen).max(rev);
        rev
    }

    /// A key index from the current window.
    fn pick_key(&self, rng: &mut Rng) -> u64 {
        let base = *self.register_ops.borrow() / KEY_WINDOW_STEP_OPS;
        let k = base + rng.below(KEY_WINDOW);
        let mut r = self.rec.borrow_mut();
        r.keys_used = r.keys_used.max(k);
        k
    }

    fn record(&self, process: u64, kind: Kind, f: F, key: &str, value: Value) {
        let e = Event {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time_ns: self.now(),
        };
        let counter = match kind {
            Kind::Invoke => None,
            Kind::Ok => Some(&self.progress.ok),
            Kind::Fail => Some(&self.progress.fail),
            Kind::Info => Some(&self.progress.info),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
            self.op_done();
            *self.register_ops.borrow_mut() += 1;
        }
        self.rec.borrow_mut().history.push(e);
    }

    fn op_done(&self) {
        self.progress.ops.fetch_add(1, Ordering::Relaxed);
        self.rec.borrow_mut().ops += 1;
    }
}

pub fn register_key(k: u64) -> String {
    format!("{REGISTER_PREFIX}{k:06}")
}

fn key_bytes(k: &str) -> Bytes {
    Bytes::copy_from_slice(k.as_bytes())
}

/// The end of the range of keys with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    let last = b.last_mut().expect("non-empty prefix");
    *last += 1;
    String::from_utf8(b).expect("ASCII prefix")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A register value as JSON (the values are decimal numbers; anything else is kept as a
/// string, so the checker sees it never written).
pub fn json_value(b: &[u8]) -> Value {
    let s = text(b);
    match s.parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(s),
    }
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

#[derive(Clone, Copy)]
enum Role {
    Register,
    Watcher,
    Lease,
    Lock,
}

/// Runs the workload until `stop` is set and every task has finished; returns what it
/// recorded. Call on the workload thread.
pub async fn run(plan: Plan, stop: Arc<AtomicBool>, progress: Arc<Progress>) -> Recording {
    let shared = Rc::new(Shared {
        rec: RefCell::new(Recording::default()),
        stop,
        progress,
        origin: plan.origin,
        next_value: RefCell::new(0),
        register_ops: RefCell::new(0),
        revision_seen: RefCell::new(1),
        last_seen: RefCell::new(Default::default()),
        next_watch: RefCell::new(0),
        slots: plan.slots.clone(),
    });
    let mut tasks = Vec::new();
    let slot_of = |i: usize| plan.slots[i % plan.slots.len()];
    let watchers = plan.clients.div_ceil(3).max(2);
    // (role, how many, RNG stream base, first slot offset)
    let roles = [
        (Role::Register, plan.clients, 100, 0),
        (Role::Watcher, watchers, 1000, 1),
        (Role::Lease, 2, 2000, 2),
        (Role::Lock, 2, 3000, 0),
    ];
    for (role, count, stream, offset) in roles {
        for i in 0..count {
            let rng = Rng::fork(plan.seed, stream + i as u64);
            let (sh, slot) = (shared.clone(), slot_of(i + offset));
            tasks.push(glommio::spawn_local(async move {
                match role {
                    Role::Register => register_client(sh, i, slot, rng).await,
                    Role::Watcher => watcher(sh, slot, rng).await,
                    Role::Lease => lease_client(sh, slot, rng).await,
                    Role::Lock => lock_client(sh, slot, rng).await,
                }
            }));
        }
    }
    for t in tasks {
        t.await;
    }
    let shared = Rc::try_unwrap(shared).unwrap_or_else(|_| panic!("tasks still hold the state"));
    shared.rec.into_inner()
}

async fn register_client(sh: Rc<Shared>, client: usize, slot: usize, mut rng: Rng) {
    let mut ep = Endpoint::new(client_addr(slot));
    let mut process = sh.new_process();
    while !sh.stopping() {
        sleep_ms(rng.range(1, 6)).await;
        if ep.conn().await.is_err() {
            sleep_ms(200).await;
            continue;
        }
        let k = sh.pick_key(&mut rng);
        let key = register_key(k);
        let unknown = match rng.weighted(&[35, 25, 20, 20]) {
            0 => {
                linearizable_read(&sh, &mut ep, process, k, &key).await;
                false
            }
            1 => write(&sh, &mut ep, slot, process, k, &key).await,
            2 => cas(&sh, &mut ep, slot, process, k, &key).await,
            _ => {
                serializable_read(&sh, &mut ep, client, slot, &key).await;
                false
            }
        };
        if unknown {
            process = sh.new_process();
        }
    }
}

fn range_request(key: &str, serializable: bool) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key_bytes(key),
        serializable,
        ..Default::default()
    }
}

async fn linearizable_read(sh: &Shared, ep: &mut Endpoint, process: u64, k: u64, key: &str) {
    sh.record(process, Kind::Invoke, F::Read, key, Value::Null);
    let r: Result<pb::RangeResponse, _> = ep
        .unary(
            "/etcdserverpb.KV/Range",
            range_request(key, false),
            OP_TIMEOUT,
        )
        .await;
    match r {
        Ok(r) => {
            sh.saw_revision(&r.header);
            let v = r
                .kvs
                .first()
                .map_or(Value::Null, |kv| json_value(&kv.value));
            sh.last_seen.borrow_mut().insert(k, v.clone());
            sh.record(process, Kind::Ok, F::Read, key, v);
        }
        // A read changes nothing: whatever went wrong, it did not happen.
        Err(_) => sh.record(process, Kind::Fail, F::Read, key, Value::Null),
    }
}

/// Records a write's or cas's failure: `fail` if the request never left, else `info`.
/// Returns whether the outcome is unknown.
fn record_failure(sh: &Shared, process: u64, f: F, key: &str, value: Value, e: &Failure) -> bool {
    match e {
        Failure::NotSent(_) => {
            sh.record(process, Kind::Fail, f, key, value);
            false
        }
        _ => {
            sh.record(process, Kind::Info, f, key, value);
            true
        }
    }
}

async fn write(
    sh: &Shared,
    ep: &mut Endpoint,
    slot: usize,
    process: u64,
    k: u64,
    key: &str,
) -> bool {
    let v = sh.value();
    sh.record(process, Kind::Invoke, F::Write, key, Value::from(v));
    let req = pb::PutRequest {
        key: key_bytes(key),
        value: Bytes::from(v.to_string()),
        ..Default::default()
    };
    let r: Result<pb::PutResponse, _> = ep.unary("/etcdserverpb.KV/Put", req, OP_TIMEOUT).await;
    match r {
        Ok(r) => {
            let revision = sh.saw_revision(&r.header);
            sh.last_seen.borrow_mut().insert(k, Value::from(v));
            sh.record(process, Kind::Ok, F::Write, key, Value::from(v));
            sh.rec.borrow_mut().writes.push(AckedWrite {
                key: key.to_string(),
                value: v.to_string(),
                revision,
                slot,
                complete_ns: sh.now(),
            });
            false
        }
        Err(e) => record_failure(sh, process, F::Write, key, Value::from(v), &e),
    }
}

async fn cas(sh: &Shared, ep: &mut Endpoint, slot: usize, process: u64, k: u64, key: &str) -> bool {
    let expected = sh
        .last_seen
        .borrow()
        .get(&k)
        .cloned()
        .unwrap_or(Value::Null);
    let v = sh.value();
    let pair = Value::Array(vec![expected.clone(), Value::from(v)]);
    sh.record(process, Kind::Invoke, F::Cas, key, pair.clone());
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match &expected {
        Value::Null => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key_bytes(key),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
        e => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key_bytes(key),
            target_union: Some(TargetUnion::Value(Bytes::from(match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }))),
            ..Default::default()
        },
    };
    let put = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key_bytes(key),
            value: Bytes::from(v.to_string()),
            ..Default::default()
        })),
    };
    let req = pb::TxnRequest {
        compare: vec![compare],
        success: vec![put],
        failure: vec![],
    };
    let r: Result<pb::TxnResponse, _> = ep.unary("/etcdserverpb.KV/Txn", req, OP_TIMEOUT).await;
    match r {
        Ok(r) if r.succeeded => {
            let revision = sh.saw_revision(&r.header);
            sh.last_seen.borrow_mut().insert(k, Value::from(v));
            sh.record(process, Kind::Ok, F::Cas, key, pair);
            sh.rec.borrow_mut().writes.push(AckedWrite {
                key: key.to_string(),
                value: v.to_string(),
                revision,
                slot,
                complete_ns: sh.now(),
            });
            false
        }
        Ok(r) => {
            sh.saw_revision(&r.header);
            sh.record(process, Kind::Fail, F::Cas, key, pair);
            false
        }
        Err(e) => record_failure(sh, process, F::Cas, key, pair, &e),
    }
}

async fn serializable_read(sh: &Shared, ep: &mut Endpoint, client: usize, slot: usize, key: &str) {
    let invoke_ns = sh.now();
    let r: Result<pb::RangeResponse, _> = ep
        .unary(
            "/etcdserverpb.KV/Range",
            range_request(key, true),
            OP_TIMEOUT,
        )
        .await;
    sh.op_done();
    if let Ok(r) = r {
        let header_revision = sh.saw_revision(&r.header);
        let kv = r.kvs.first().map(|kv| (text(&kv.value), kv.mod_revision));
        sh.rec.borrow_mut().ser_reads.push(SerRead {
            slot,
            client,
            key: key.to_string(),
            kv,
            header_revision,
            invoke_ns,
            complete_ns: sh.now(),
        });
    }
}

/// Opens a Watch stream on `ep` and sends the create request.
async fn open_watch(ep: &mut Endpoint, create: pb::WatchCreateRequest) -> Result<Stream, Failure> {
    let conn = ep.conn().await?;
    let opened = glommio::timer::timeout(OP_TIMEOUT, async move {
        Ok(Stream::open(&conn, "/etcdserverpb.Watch/Watch").await)
    })
    .await
    .map_err(|_| Failure::Timeout)?;
    let mut s = opened.map_err(|e| {
        ep.reset();
        Failure::Transport(e.to_string())
    })?;
    let req = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    s.send(&req)
        .map_err(|e| Failure::Transport(e.to_string()))?;
    Ok(s)
}

async fn recv_within<R: prost::Message + Default + 'static>(
    s: &mut Stream,
    wait: Duration,
) -> Result<R, String> {
    match glommio::timer::timeout(wait, async { Ok(s.recv::<R>().await) }).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(CallError::Status(c, m))) => Err(format!("status {c}: {m}")),
        Ok(Err(CallError::Transport(e))) => Err(format!("transport: {e}")),
        Err(_) => Err("idle".into()),
    }
}

async fn watcher(sh: Rc<Shared>, home: usize, mut rng: Rng) {
    let mut slot = home;
    while !sh.stopping() {
        sleep_ms(rng.range(50, 500)).await;
        let k = sh.pick_key(&mut rng);
        let (key, range_end) = match rng.weighted(&[40, 30, 20, 10]) {
            0 => (REGISTER_PREFIX.to_string(), prefix_end(REGISTER_PREFIX)),
            1 => (register_key(k), String::new()),
            2 => (ROOT_PREFIX.to_string(), prefix_end(ROOT_PREFIX)),
            _ => (register_key(k), register_key(k + 1 + rng.below(4))),
        };
        let seen = *sh.revision_seen.borrow();
        let start_revision = (seen - rng.below(300) as i64).max(1);
        let id = {
            let mut n = sh.next_watch.borrow_mut();
            *n += 1;
            *n
        };
        let mut log = WatchLog {
            id,
            key,
            range_end,
            start_revision,
            segments: Vec::new(),
        };
        let until = Instant::now() + Duration::from_secs(rng.range(2, 12));
        let mut next = start_revision;
        while Instant::now() < until && !sh.stopping() {
            let mut ep = Endpoint::new(client_addr(slot));
            let create = pb::WatchCreateRequest {
                key: key_bytes(&log.key),
                range_end: key_bytes(&log.range_end),
                start_revision: next,
                ..Default::default()
            };
            let mut seg = WatchSegment {
                slot,
                start_revision: next,
                created: false,
                responses: Vec::new(),
                end: String::new(),
            };
            match open_watch(&mut ep, create).await {
                Err(e) => seg.end = format!("open: {e}"),
                Ok(mut s) => loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || sh.stopping() {
                        seg.end = "deadline".into();
                        break;
                    }
                    match recv_within::<pb::WatchResponse>(&mut s, left.min(OP_TIMEOUT)).await {
                        Err(e) if e == "idle" => continue,
                        Err(e) => {
                            seg.end = e;
                            break;
                        }
                        Ok(r) => {
                            sh.saw_revision(&r.header);
                            if r.created {
                                seg.created = true;
                            }
                            if !r.events.is_empty() {
                                let evs: Vec<WatchEvent> = r
                                    .events
                                    .iter()
                                    .map(|e| {
                                        let kv = e.kv.clone().unwrap_or_default();
                                        WatchEvent {
                                            revision: kv.mod_revision,
                                            key: text(&kv.key),
                                            value: (e.r#type == 0).then(|| text(&kv.value)),
                                        }
                                    })
                                    .collect();
                                next = evs.last().map_or(next, |e| e.revision + 1);
                                seg.responses.push(evs);
                            }
                            if r.canceled {
                                seg.end = format!(
                                    "canceled: {} (compact revision {})",
                                    r.cancel_reason, r.compact_revision
                                );
                                break;
                            }
                        }
                    }
                },
            }
            sh.op_done();
            let broke = seg.end != "deadline";
            log.segments.push(seg);
            if broke {
                // Resume on another member, as a client with several endpoints does.
                let i = sh.slots.iter().position(|&s| s == slot).unwrap_or(0);
                slot = sh.slots[(i + 1) % sh.slots.len()];
                sleep_ms(rng.range(100, 400)).await;
            }
        }
        sh.rec.borrow_mut().watches.push(log);
    }
}

async fn grant(sh: &Shared, ep: &mut Endpoint, ttl_s: i64) -> Option<i64> {
    let r: Result<pb::LeaseGrantResponse, _> = ep
        .unary(
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest { ttl: ttl_s, id: 0 },
            OP_TIMEOUT,
        )
        .await;
    sh.op_done();
    match r {
        Ok(r) if r.error.is_empty() => {
            sh.saw_revision(&r.header);
            Some(r.id)
        }
        _ => None,
    }
}

async fn revoke(sh: &Shared, ep: &mut Endpoint, id: i64) -> Option<i64> {
    let r: Result<pb::LeaseRevokeResponse, _> = ep
        .unary(
            "/etcdserverpb.Lease/LeaseRevoke",
            pb::LeaseRevokeRequest { id },
            OP_TIMEOUT,
        )
        .await;
    sh.op_done();
    r.ok().map(|r| sh.saw_revision(&r.header))
}

async fn lease_client(sh: Rc<Shared>, slot: usize, mut rng: Rng) {
    let mut ep = Endpoint::new(client_addr(slot));
    while !sh.stopping() {
        sleep_ms(rng.range(100, 1000)).await;
        let ttl_s = rng.range(4, 8) as i64;
        let Some(id) = grant(&sh, &mut ep, ttl_s).await else {
            sleep_ms(300).await;
            continue;
        };
        let mut log = LeaseLog {
            id,
            ttl_s,
            keys: Vec::new(),
            revoked_revision: None,
        };
        for j in 0..rng.range(1, 3) {
            let key = format!("{LEASE_PREFIX}{id:016x}/{j}");
            let value = format!("lease-{}", sh.value());
            log.keys.push(key.clone());
            let req = pb::PutRequest {
                key: key_bytes(&key),
                value: Bytes::from(value.clone()),
                lease: id,
                ..Default::default()
            };
            let r: Result<pb::PutResponse, _> =
                ep.unary("/etcdserverpb.KV/Put", req, OP_TIMEOUT).await;
            sh.op_done();
            if let Ok(r) = r {
                let revision = sh.saw_revision(&r.header);
                sh.rec.borrow_mut().writes.push(AckedWrite {
                    key,
                    value,
                    revision,
                    slot,
                    complete_ns: sh.now(),
                });
            }
        }
        keep_alive(
            &sh,
            &mut ep,
            id,
            ttl_s,
            Duration::from_secs(rng.range(0, 10)),
        )
        .await;
        if rng.chance(0.6) {
            log.revoked_revision = revoke(&sh, &mut ep, id).await;
        }
        sh.rec.borrow_mut().leases.push(log);
    }
}

/// Keeps lease `id` alive for `how_long` over one LeaseKeepAlive stream (reopened after
/// an error), a renewal every third of the TTL. Stops early if the lease is gone.
async fn keep_alive(sh: &Shared, ep: &mut Endpoint, id: i64, ttl_s: i64, how_long: Duration) {
    let until = Instant::now() + how_long;
    let every = Duration::from_millis(ttl_s as u64 * 1000 / 3);
    let mut stream: Option<Stream> = None;
    while Instant::now() < until && !sh.stopping() {
        if stream.is_none() {
            let Ok(conn) = ep.conn().await else {
                sleep_ms(300).await;
                continue;
            };
            stream = Stream::open(&conn, "/etcdserverpb.Lease/LeaseKeepAlive")
                .await
                .ok();
            if stream.is_none() {
                ep.reset();
                sleep_ms(300).await;
                continue;
            }
        }
        let s = stream.as_mut().expect("opened above");
        let sent = s.send(&pb::LeaseKeepAliveRequest { id });
        let got = match sent {
            Ok(()) => recv_within::<pb::LeaseKeepAliveResponse>(s, OP_TIMEOUT).await,
            Err(e) => Err(e.to_string()),
        };
        sh.op_done();
        match got {
            Ok(r) if r.ttl <= 0 => return,
            Ok(_) => sleep_ms(every.as_millis() as u64).await,
            Err(_) => {
                stream = None;
                ep.reset();
                sleep_ms(300).await;
            }
        }
    }
}

async fn lock_client(sh: Rc<Shared>, slot: usize, mut rng: Rng) {
    let mut ep = Endpoint::new(client_addr(slot));
    while !sh.stopping() {
        sleep_ms(rng.range(50, 500)).await;
        let Some(lease) = grant(&sh, &mut ep, 6).await else {
            sleep_ms(300).await;
            continue;
        };
        let name = format!("{LOCK_PREFIX}{}", rng.below(2));
        let r: Result<lockpb::LockResponse, _> = ep
            .unary(
                "/v3lockpb.Lock/Lock",
                lockpb::LockRequest {
                    name: key_bytes(&name),
                    lease,
                },
                OP_TIMEOUT,
            )
            .await;
        sh.op_done();
        if let Ok(r) = r {
            let revision = sh.saw_revision(&r.header);
            sh.rec.borrow_mut().locks.push(LockLog {
                name,
                key: text(&r.key),
                revision,
                slot,
            });
            sleep_ms(rng.range(0, 200)).await;
            let _: Result<lockpb::UnlockResponse, _> = ep
                .unary(
                    "/v3lockpb.Lock/Unlock",
                    lockpb::UnlockRequest { key: r.key },
                    OP_TIMEOUT,
                )
                .await;
            sh.op_done();
        }
        revoke(&sh, &mut ep, lease).await;
    }
}
