//! `keel-chaos powercut`: members whose data dirs live on a disk that forgets what was not
//! synced ([`crate::disk`]), a write load, and power cuts — one member, or every member at
//! once — at random moments or at the instant a member asks its disk to make something
//! durable. After each cut the members restart on what survived, and the run checks that
//! every acknowledged write is there, that nothing never written is, that revisions are
//! continuous, that acknowledged leases and compactions held, and (3 members) that HashKV
//! agrees. A member that cannot start is a corrupt start: it must print why and stop, and
//! the run counts it (a correct build on a Linux-faithful disk never has one).
//!
//! ```text
//!  main thread (bridge netns, one executor): writers ──gRPC──▶ members (netns each)
//!        │ cut: freeze disk(s) ─ SIGKILL ─ power_on(loss) ─ restart ─ check          │
//!        └────────────── FUSE session threads: one `Disk` per member ◀──────────────┘
//! ```
//!
//! The load: `WRITERS` writers, each owning its keys (so the outcome of every key is a
//! sequence the model can judge): puts, deletes, two-key txns guarded by a compare, lease
//! grants with a key attached, and compactions.

use crate::cluster::{self, client_addr, Cluster, Settings, System};
use crate::disk::{Disk, Loss};
use crate::rng::Rng;
use crate::rpc::{Endpoint, Failure};
use crate::sys;
use bytes::Bytes;
use keel::grpc::client::Stream;
use keel::pb::etcdserverpb as pb;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Whose power goes (3 members).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whom {
    All,
    One,
    Mixed,
}

/// When the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// After a random time of load.
    Time,
    /// At the Nth durability request (fsync, fdatasync, directory fsync, O_DSYNC write)
    /// on any file of the member's disk.
    Any,
    /// At one of the db's first few durability requests from now.
    Db,
    /// At one of the WAL segments' durability requests.
    Wal,
    /// Each cut picks: time 2/5, any, db, wal 1/5 each.
    Mixed,
}

impl std::str::FromStr for At {
    type Err = String;
    fn from_str(s: &str) -> Result<At, String> {
        Ok(match s {
            "time" => At::Time,
            "any" => At::Any,
            "db" => At::Db,
            "wal" => At::Wal,
            "mixed" => At::Mixed,
            _ => return Err(format!("--at: {s}: want time, any, db, wal or mixed")),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub server: PathBuf,
    pub members: usize,
    pub cuts: u64,
    pub seed: u64,
    pub loss: Loss,
    pub at: At,
    /// The disk's journal mode: a file fsync also keeps every pending directory change
    /// (ext4 does this in practice; Linux does not promise it).
    pub journal: bool,
    /// With 3 members: cut all at once, one, or either (3 in 4 all at once).
    pub whom: Whom,
    pub writers: usize,
    pub out: Option<PathBuf>,
    pub server_args: Vec<String>,
    pub server_env: Vec<(String, String)>,
}

const PREFIX: &str = "/pc/";
const KEYS_PER_WRITER: u64 = 24;
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long restarted members get to elect a leader and catch up.
const RECOVERY_MAX: Duration = Duration::from_secs(60);
/// A cut armed on the Nth durability request fires by hand after this long.
const ARMED_MAX: Duration = Duration::from_secs(4);

/// What became of one operation on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet (at a cut: unknown).
    Pending,
    /// Acknowledged at this revision.
    Acked(i64),
    /// Definitely not applied (a txn whose compare failed).
    NotApplied,
    /// No answer: may or may not have been applied.
    Unknown,
}

/// One write to a key: its value (`None`: a delete), the lease it carries, its outcome.
#[derive(Clone, Debug)]
struct KeyOp {
    value: Option<String>,
    lease: i64,
    outcome: Outcome,
}

#[derive(Default)]
struct Model {
    /// Every write to every key, in the order its (only) writer issued them.
    keys: BTreeMap<String, Vec<KeyOp>>,
    /// Leases granted and acknowledged.
    leases: BTreeSet<i64>,
    /// The highest acknowledged compaction.
    compacted: i64,
    /// The highest compaction ever sent (acknowledged or not).
    compact_sent: i64,
    /// Acknowledged writes (puts, deletes, txns that wrote, lease grants, compactions).
    acked: u64,
    /// The highest revision any acknowledgement carried.
    max_acked_rev: i64,
    /// The highest revision seen in any response (where to compact below).
    seen_rev: i64,
    ops: u64,
}

impl Model {
    fn push(&mut self, key: &str, value: Option<String>, lease: i64) -> usize {
        let ops = self.keys.entry(key.to_string()).or_default();
        ops.push(KeyOp {
            value,
            lease,
            outcome: Outcome::Pending,
        });
        ops.len() - 1
    }

    fn settle(&mut self, key: &str, i: usize, outcome: Outcome) {
        if let Outcome::Acked(rev) = outcome {
            self.max_acked_rev = self.max_acked_rev.max(rev);
        }
        self.keys.get_mut(key).expect("pushed")[i].outcome = outcome;
    }

    fn saw(&mut self, header: &Option<pb::ResponseHeader>) -> i64 {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        self.seen_rev = self.seen_rev.max(rev);
        rev
    }

    /// After a cut nothing is in flight any more: what was pending is unknown.
    fn cut(&mut self) {
        for ops in self.keys.values_mut() {
            for op in ops.iter_mut() {
                if op.outcome == Outcome::Pending {
                    op.outcome = Outcome::Unknown;
                }
            }
        }
    }
}

/// The key a writer's `i`th key is.
fn writer_key(w: usize, i: u64) -> String {
    format!("{PREFIX}k/{w:02}/{i:03}")
}

fn lease_key(id: i64) -> String {
    format!("{PREFIX}l/{id:016x}")
}

fn prefix_end(prefix: &str) -> Bytes {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    Bytes::from(end)
}

struct Load {
    model: RefCell<Model>,
    stop: Cell<bool>,
}

/// One writer: ops on its own keys until the load stops.
async fn writer(load: Rc<Load>, w: usize, slot: usize, mut rng: Rng, cycle: u64) {
    let mut ep = Endpoint::new(client_addr(slot));
    let mut seq = 0u64;
    while !load.stop.get() {
        seq += 1;
        let value = format!("w{w}-c{cycle}-{seq}");
        let i = rng.below(KEYS_PER_WRITER);
        let key = writer_key(w, i);
        match rng.weighted(&[50, 10, 20, 6, 2]) {
            0 => put(&load, &mut ep, &key, value, 0).await,
            1 => delete(&load, &mut ep, &key).await,
            2 => {
                let other = writer_key(w, (i + 1) % KEYS_PER_WRITER);
                txn(&load, &mut ep, &key, &other, value).await
            }
            3 => lease_and_key(&load, &mut ep, value).await,
            _ => compact(&load, &mut ep).await,
        }
        load.model.borrow_mut().ops += 1;
        if load.stop.get() {
            break;
        }
    }
}

async fn put(load: &Load, ep: &mut Endpoint, key: &str, value: String, lease: i64) {
    let i = load
        .model
        .borrow_mut()
        .push(key, Some(value.clone()), lease);
    let req = pb::PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value),
        lease,
        ..Default::default()
    };
    let r: Result<pb::PutResponse, _> = ep.unary("/etcdserverpb.KV/Put", req, OP_TIMEOUT).await;
    let mut m = load.model.borrow_mut();
    match r {
        Ok(r) => {
            let rev = m.saw(&r.header);
            m.settle(key, i, Outcome::Acked(rev));
            m.acked += 1;
        }
        Err(_) => m.settle(key, i, Outcome::Unknown),
    }
}

async fn delete(load: &Load, ep: &mut Endpoint, key: &str) {
    let i = load.model.borrow_mut().push(key, None, 0);
    let req = pb::DeleteRangeRequest {
        key: Bytes::from(key.to_string()),
        ..Default::default()
    };
    let r: Result<pb::DeleteRangeResponse, _> = ep
        .unary("/etcdserverpb.KV/DeleteRange", req, OP_TIMEOUT)
        .await;
    let mut m = load.model.borrow_mut();
    match r {
        // A delete of an absent key changes nothing and takes no revision; either way the
        // key is absent from then on (until the writer's next op).
        Ok(r) => {
            let rev = m.saw(&r.header);
            m.settle(key, i, Outcome::Acked(if r.deleted > 0 { rev } else { 0 }));
            m.acked += 1;
        }
        Err(_) => m.settle(key, i, Outcome::Unknown),
    }
}

/// `if value(a) == what the model last saw acknowledged then put a=v, put b=v else get a`.
async fn txn(load: &Load, ep: &mut Endpoint, a: &str, b: &str, value: String) {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let expected = {
        let m = load.model.borrow();
        let last = m.keys.get(a).and_then(|ops| {
            ops.iter()
                .rev()
                .find(|o| matches!(o.outcome, Outcome::Acked(_)))
        });
        last.and_then(|o| o.value.clone())
    };
    let compare = match &expected {
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: Bytes::from(a.to_string()),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
        Some(v) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: Bytes::from(a.to_string()),
            target_union: Some(TargetUnion::Value(Bytes::from(v.clone()))),
            ..Default::default()
        },
    };
    let put = |k: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(value.clone()),
            ..Default::default()
        })),
    };
    let get = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: Bytes::from(a.to_string()),
            ..Default::default()
        })),
    };
    let req = pb::TxnRequest {
        compare: vec![compare],
        success: vec![put(a), put(b)],
        failure: vec![get],
    };
    let (ia, ib) = {
        let mut m = load.model.borrow_mut();
        (
            m.push(a, Some(value.clone()), 0),
            m.push(b, Some(value.clone()), 0),
        )
    };
    let r: Result<pb::TxnResponse, _> = ep.unary("/etcdserverpb.KV/Txn", req, OP_TIMEOUT).await;
    let mut m = load.model.borrow_mut();
    let outcome = match r {
        Ok(r) => {
            let rev = m.saw(&r.header);
            if r.succeeded {
                m.acked += 1;
                Outcome::Acked(rev)
            } else {
                Outcome::NotApplied
            }
        }
        Err(_) => Outcome::Unknown,
    };
    m.settle(a, ia, outcome);
    m.settle(b, ib, outcome);
}

/// A lease (long enough never to expire during the run) and a key attached to it.
async fn lease_and_key(load: &Load, ep: &mut Endpoint, value: String) {
    let r: Result<pb::LeaseGrantResponse, _> = ep
        .unary(
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest { ttl: 7200, id: 0 },
            OP_TIMEOUT,
        )
        .await;
    let id = match r {
        Ok(r) if r.error.is_empty() && r.id != 0 => {
            let mut m = load.model.borrow_mut();
            m.saw(&r.header);
            m.leases.insert(r.id);
            m.acked += 1;
            r.id
        }
        _ => return,
    };
    put(load, ep, &lease_key(id), value, id).await;
}

/// Compacts a little below the newest revision seen.
async fn compact(load: &Load, ep: &mut Endpoint) {
    let revision = load.model.borrow().seen_rev - 200;
    if revision <= load.model.borrow().compacted {
        return;
    }
    {
        let mut m = load.model.borrow_mut();
        m.compact_sent = m.compact_sent.max(revision);
    }
    let r: Result<pb::CompactionResponse, _> = ep
        .unary(
            "/etcdserverpb.KV/Compact",
            pb::CompactionRequest {
                revision,
                physical: false,
            },
            OP_TIMEOUT,
        )
        .await;
    if r.is_ok() {
        let mut m = load.model.borrow_mut();
        m.compacted = m.compacted.max(revision);
        m.acked += 1;
    }
}

/// What the checks found after one cut.
#[derive(Default)]
struct Findings {
    lost: Vec<String>,
}

/// Reads every key under the prefix through `slot` and holds each against the model.
async fn check_state(model: &Model, slot: usize, f: &mut Findings) -> Result<i64, String> {
    let mut ep = Endpoint::new(client_addr(slot));
    let r: pb::RangeResponse = ep
        .unary(
            "/etcdserverpb.KV/Range",
            pb::RangeRequest {
                key: Bytes::from(PREFIX),
                range_end: prefix_end(PREFIX),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("final Range on m{slot}: {e}"))?;
    let current = r.header.as_ref().map_or(0, |h| h.revision);
    if current < model.max_acked_rev {
        f.lost.push(format!(
            "the store is at revision {current}, below the acknowledged revision {}",
            model.max_acked_rev
        ));
    }
    let mut seen: HashMap<String, (String, i64, i64)> = HashMap::new();
    for kv in r.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        seen.insert(key, (value, kv.mod_revision, kv.lease));
    }
    for (key, got) in &seen {
        if !model.keys.contains_key(key) {
            f.lost.push(format!(
                "{key} = {:?} (mod revision {}) was never written",
                got.0, got.1
            ));
        }
    }
    for (key, ops) in &model.keys {
        if let Err(e) = judge_key(ops, seen.get(key)) {
            f.lost.push(format!("{key}: {e}"));
        }
    }
    Ok(current)
}

/// Whether `got` (value, mod revision, lease; `None` when absent) is a state the key's
/// writes allow: the last acknowledged write's, or that of a later write whose outcome is
/// unknown.
fn judge_key(ops: &[KeyOp], got: Option<&(String, i64, i64)>) -> Result<(), String> {
    let last_acked = ops
        .iter()
        .rposition(|o| matches!(o.outcome, Outcome::Acked(_)));
    let (floor_rev, allowed_from) = match last_acked {
        Some(a) => {
            let op = &ops[a];
            let Outcome::Acked(rev) = op.outcome else {
                unreachable!()
            };
            let matches = match (&op.value, got) {
                (None, None) => true,
                (Some(v), Some((gv, grev, glease))) => {
                    gv == v && *grev == rev && *glease == op.lease
                }
                _ => false,
            };
            if matches {
                return Ok(());
            }
            (rev, a + 1)
        }
        None => {
            if got.is_none() {
                return Ok(());
            }
            (0, 0)
        }
    };
    let later_ok = ops[allowed_from..].iter().any(|o| {
        o.outcome == Outcome::Unknown
            && match (&o.value, got) {
                (None, None) => true,
                (Some(v), Some((gv, grev, _))) => gv == v && *grev > floor_rev,
                _ => false,
            }
    });
    if later_ok {
        return Ok(());
    }
    let want = match last_acked {
        Some(a) => match (&ops[a].value, ops[a].outcome) {
            (Some(v), Outcome::Acked(rev)) => format!("{v:?} at revision {rev}"),
            _ => "absent (an acknowledged delete)".to_string(),
        },
        None => "absent (nothing acknowledged)".to_string(),
    };
    let got = match got {
        Some((v, rev, lease)) => format!("{v:?} at revision {rev} (lease {lease:x})"),
        None => "absent".to_string(),
    };
    Err(format!(
        "acknowledged state {want} lost: found {got} ({} later writes of unknown outcome)",
        ops[allowed_from..]
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count()
    ))
}

/// Watches the prefix from just above the compaction to `current`: every revision must
/// be there, and every acknowledged write above the compaction at its revision.
async fn check_history(
    model: &Model,
    slot: usize,
    current: i64,
    f: &mut Findings,
) -> Result<(), String> {
    // The store's compaction C is the acknowledged one or a later one whose answer never
    // came. A compaction at C drops the tombstones at C, so revision C itself may have no
    // event left: watch from the acknowledged compaction (canceled, naming C, when C is
    // above it) and check the revisions above the floor. Revision 1 is the empty store's.
    let mut floor = model.compacted.max(1);
    let events = loop {
        if floor >= current {
            return Ok(());
        }
        match watch_range(slot, floor, current).await? {
            Ok(events) => break events,
            Err(c) if c > floor => {
                if c > model.compact_sent {
                    f.lost.push(format!(
                        "the store is compacted at {c}, above any compaction requested ({})",
                        model.compact_sent
                    ));
                }
                floor = c;
            }
            Err(c) => return Err(format!("watch from {floor} canceled as compacted at {c}")),
        }
    };
    let start = floor + 1;
    let mut at: BTreeMap<i64, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (rev, key, value) in events {
        at.entry(rev).or_default().push((key, value));
    }
    let missing: Vec<i64> = (start..=current).filter(|r| !at.contains_key(r)).collect();
    if !missing.is_empty() {
        f.lost.push(format!(
            "revisions not continuous: {} of {start}..={current} have no event (first {:?})",
            missing.len(),
            &missing[..missing.len().min(8)]
        ));
    }
    for (key, ops) in &model.keys {
        for op in ops {
            let Outcome::Acked(rev) = op.outcome else {
                continue;
            };
            if rev < start || rev == 0 {
                continue;
            }
            let found = at
                .get(&rev)
                .is_some_and(|evs| evs.iter().any(|(k, v)| k == key && *v == op.value));
            if !found {
                f.lost.push(format!(
                    "acknowledged {} of {key} at revision {rev} is not in the history",
                    op.value
                        .as_ref()
                        .map_or("delete".to_string(), |v| format!("put {v:?}"))
                ));
            }
        }
    }
    Ok(())
}

/// Events (revision, key, value or `None` for a delete) from `start` to `last`, or
/// `Err(compact_revision)` when the watch was canceled as compacted.
async fn watch_range(
    slot: usize,
    start: i64,
    last: i64,
) -> Result<Result<Vec<(i64, String, Option<String>)>, i64>, String> {
    let mut events = Vec::new();
    if start > last {
        return Ok(Ok(events));
    }
    let mut ep = Endpoint::new(client_addr(slot));
    let conn = ep.conn().await.map_err(|e| e.to_string())?;
    let mut s = Stream::open(&conn, "/etcdserverpb.Watch/Watch")
        .await
        .map_err(|e| e.to_string())?;
    s.send(&pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: Bytes::from(PREFIX),
                range_end: prefix_end(PREFIX),
                start_revision: start,
                ..Default::default()
            },
        )),
    })
    .map_err(|e| e.to_string())?;
    let mut reached = start - 1;
    while reached < last {
        let r = glommio::timer::timeout(Duration::from_secs(10), async {
            Ok(s.recv::<pb::WatchResponse>().await)
        })
        .await
        .map_err(|_| format!("watch: no event for 10 s after revision {reached} (want {last})"))?
        .map_err(|e| e.to_string())?;
        if r.compact_revision > 0 {
            return Ok(Err(r.compact_revision));
        }
        if r.canceled {
            return Err(format!("watch canceled: {}", r.cancel_reason));
        }
        for e in r.events {
            let kv = e.kv.unwrap_or_default();
            reached = reached.max(kv.mod_revision);
            if kv.mod_revision <= last {
                events.push((
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    (e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                ));
            }
        }
    }
    Ok(Ok(events))
}

/// Every acknowledged lease is still granted; an acknowledged compaction still holds.
async fn check_leases_and_compaction(
    model: &Model,
    slot: usize,
    f: &mut Findings,
) -> Result<(), String> {
    let mut ep = Endpoint::new(client_addr(slot));
    let r: pb::LeaseLeasesResponse = ep
        .unary(
            "/etcdserverpb.Lease/LeaseLeases",
            pb::LeaseLeasesRequest {},
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("LeaseLeases on m{slot}: {e}"))?;
    let have: BTreeSet<i64> = r.leases.iter().map(|l| l.id).collect();
    let lost: Vec<String> = model
        .leases
        .difference(&have)
        .map(|id| format!("{id:x}"))
        .collect();
    if !lost.is_empty() {
        f.lost.push(format!(
            "{} acknowledged leases are gone: {}{}",
            lost.len(),
            lost[..lost.len().min(8)].join(" "),
            if lost.len() > 8 { " …" } else { "" }
        ));
    }
    if model.compacted > 1 {
        let r: Result<pb::RangeResponse, _> = ep
            .unary(
                "/etcdserverpb.KV/Range",
                pb::RangeRequest {
                    key: Bytes::from(PREFIX),
                    range_end: prefix_end(PREFIX),
                    revision: model.compacted - 1,
                    count_only: true,
                    ..Default::default()
                },
                Duration::from_secs(10),
            )
            .await;
        match r {
            Err(Failure::Status(_, m)) if m.contains("compacted") => {}
            Err(Failure::Status(_, m)) if m.contains("future revision") => f.lost.push(format!(
                "the store is below the acknowledged compaction at {}: {m}",
                model.compacted
            )),
            Ok(_) => f.lost.push(format!(
                "the acknowledged compaction at {} is undone: revision {} is readable",
                model.compacted,
                model.compacted - 1
            )),
            Err(e) => return Err(format!("Range at a compacted revision on m{slot}: {e}")),
        }
    }
    Ok(())
}

/// Waits until the members report one revision and applied index twice in a row.
async fn converge(slots: &[usize]) -> Result<i64, String> {
    let deadline = Instant::now() + RECOVERY_MAX;
    let mut prev = None;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen.clear();
        for &s in slots {
            let st = Cluster::status(s).await.ok();
            seen.push(st.map(|st| (st.header.map_or(0, |h| h.revision), st.raft_applied_index)));
        }
        let same = seen.iter().all(|x| x.is_some() && *x == seen[0]);
        if same && prev.as_ref() == Some(&seen) {
            return Ok(seen[0].expect("all some").0);
        }
        prev = Some(seen.clone());
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "members {slots:?} did not converge in {RECOVERY_MAX:?}: (revision, applied index) {seen:?}"
    ))
}

/// The last `n` lines of a member's log.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `slots` and waits for a leader. `Err((slot, why))` when a member exited
/// instead (a corrupt start) or the cluster never came up.
async fn start_members(
    cluster: &mut Cluster,
    slots: &[usize],
    env: &[(String, String)],
) -> Result<(), (Option<usize>, String)> {
    for &s in slots {
        cluster.start(s, env.to_vec()).map_err(|e| (Some(s), e))?;
    }
    let deadline = Instant::now() + RECOVERY_MAX;
    loop {
        if let Some((slot, status, _)) = cluster.reap().into_iter().next() {
            return Err((Some(slot), format!("m{slot} exited at start: {status}")));
        }
        let mut up = true;
        let mut leader = None;
        for m in &cluster.members {
            match Cluster::status(m.slot).await {
                Ok(st) if st.leader != 0 => match leader {
                    None => leader = Some(st.leader),
                    Some(l) if l == st.leader => {}
                    Some(_) => up = false,
                },
                _ => up = false,
            }
        }
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err((None, format!("no leader within {RECOVERY_MAX:?}")));
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

pub fn run(opts: Options) -> i32 {
    if !sys::is_root() {
        eprintln!("keel-chaos powercut: needs root (FUSE mounts, network namespaces)");
        return 2;
    }
    let system = match cluster::identify(&opts.server) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keel-chaos powercut: {e}");
            return 2;
        }
    };
    let (out, keep_out) = match &opts.out {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("keel-chaos-powercut-{}", std::process::id())),
            false,
        ),
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("keel-chaos powercut: {}: {e}", out.display());
        return 2;
    }
    crate::run::catch_interrupts();
    let _ = sys::raise_memlock(256 << 20);
    let settings = Settings {
        heartbeat_ms: 100,
        election_ms: 1000,
        // Low: raft snapshots, db commits and WAL segment releases happen between cuts.
        snapshot_count: 500,
        extra_args: opts.server_args.clone(),
    };
    let layout = cluster::Layout {
        binary: opts.server.clone(),
        system,
        voters: opts.members,
        slots: opts.members,
        seed: opts.seed,
        settings,
        tmpfs: None,
    };
    let mut cluster = match Cluster::new(layout, &out) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel-chaos powercut: cannot lay out the cluster: {e}");
            return 2;
        }
    };
    // Each member's data dir (`…/data/mN/data`) lives on its own disk, mounted on `mN`.
    let mut disks = Vec::new();
    for m in &cluster.members {
        let mountpoint = m
            .data_dir
            .parent()
            .expect("data dir has a parent")
            .to_path_buf();
        match Disk::mount(&mountpoint) {
            Ok(mut d) => {
                d.set_journal(opts.journal);
                disks.push(d)
            }
            Err(e) => {
                eprintln!("keel-chaos powercut: {e}");
                return 2;
            }
        }
    }
    if let Err(e) = sys::enter_netns(&cluster.net.bridge_ns()) {
        eprintln!("keel-chaos powercut: {e}");
        return 2;
    }
    let (code, mut cluster, mut disks, opts, out) = keel::runtime::block_on(async move {
        let code = drive(&opts, &mut cluster, &mut disks, system, &out).await;
        (code, cluster, disks, opts, out)
    });
    let _ = &opts;
    cluster.shutdown();
    for d in &mut disks {
        d.unmount();
    }
    if code <= 1 && !keep_out && code == 0 {
        let _ = std::fs::remove_dir_all(&out);
    }
    code
}

async fn drive(
    opts: &Options,
    cluster: &mut Cluster,
    disks: &mut [Disk],
    system: System,
    out: &std::path::Path,
) -> i32 {
    println!(
        "keel-chaos powercut: {} member(s) of {} ({system:?}), seed {}, {} cuts, loss {:?}, at {:?}, dirs {}, {} writers, out {}",
        opts.members,
        opts.server.display(),
        opts.seed,
        opts.cuts,
        opts.loss,
        opts.at,
        if opts.journal { "journal" } else { "strict" },
        opts.writers,
        out.display()
    );
    let all: Vec<usize> = (0..opts.members).collect();
    if let Err((_, e)) = start_members(cluster, &all, &opts.server_env).await {
        eprintln!(
            "keel-chaos powercut: the cluster never came up: {e} (logs in {})",
            out.join("logs").display()
        );
        return 2;
    }
    let _ = cluster.learn_ids().await;
    cluster.base_env = opts.server_env.clone();
    let mut rng = Rng::fork(opts.seed, 0x9c);
    let load = Rc::new(Load {
        model: RefCell::new(Model::default()),
        stop: Cell::new(false),
    });
    let mut report = std::fs::File::create(out.join("powercut.log")).ok();
    let mut lost_total = 0usize;
    let mut corrupt = 0u64;
    let mut cuts_done = 0u64;
    let origin = Instant::now();
    let mut at_sync_cuts = 0u64;
    for cut in 1..=opts.cuts {
        if crate::run::interrupted() {
            println!("keel-chaos powercut: interrupted");
            break;
        }
        // The load, on every member.
        load.stop.set(false);
        let mut tasks = Vec::new();
        for w in 0..opts.writers {
            let slot = all[w % all.len()];
            let wrng = Rng::fork(opts.seed, (cut << 8) | w as u64);
            tasks.push(glommio::spawn_local(writer(load.clone(), w, slot, wrng, cut)).detach());
        }
        // Whom, and when.
        let all_at_once = match opts.whom {
            Whom::All => true,
            Whom::One => false,
            Whom::Mixed => rng.chance(0.75),
        };
        let targets: Vec<usize> = if opts.members == 1 || all_at_once {
            all.clone()
        } else {
            vec![*rng.pick(&all)]
        };
        let at = match opts.at {
            At::Mixed => *rng.pick(&[At::Time, At::Time, At::Any, At::Db, At::Wal]),
            a => a,
        };
        let how = if at != At::Time {
            // Any file's Nth durability request, or one of the db's (rare: a commit
            // every batch interval) or the WAL's. Keel and etcd name them alike.
            let (suffix, n) = match at {
                At::Db => (Some("db"), rng.range(1, 6)),
                At::Wal => (Some(".wal"), rng.range(1, 100)),
                _ => (None, rng.range(1, 300)),
            };
            let d = *rng.pick(&targets);
            glommio::timer::sleep(Duration::from_millis(rng.range(20, 200))).await;
            disks[d].arm(n, suffix);
            let armed = Instant::now();
            while !disks[d].frozen() && armed.elapsed() < ARMED_MAX {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            if disks[d].frozen() {
                at_sync_cuts += 1;
                format!(
                    "at m{d}'s durability request #{n} on {}",
                    suffix.unwrap_or("any file")
                )
            } else {
                format!(
                    "by hand after {ARMED_MAX:?} (m{d}'s request #{n} on {} never came)",
                    suffix.unwrap_or("any file")
                )
            }
        } else {
            let ms = rng.range(30, 1500);
            glommio::timer::sleep(Duration::from_millis(ms)).await;
            format!("after {ms} ms")
        };
        // The power goes: every target's disk at once, then its process.
        for &t in &targets {
            disks[t].freeze();
        }
        for &t in &targets {
            cluster.kill(t);
        }
        load.stop.set(true);
        for t in tasks {
            let _ = glommio::timer::timeout(Duration::from_secs(10), async move {
                let _ = t.await;
                Ok(())
            })
            .await;
        }
        // Writers on members that stayed up finished cleanly; only in-flight ops to the cut
        // members remain pending.
        load.model.borrow_mut().cut();
        let mut reports = Vec::new();
        for &t in &targets {
            let loss = opts.loss;
            match disks[t].power_on(loss, &mut rng) {
                Ok(r) => reports.push(format!("m{t}: {r}")),
                Err(e) => {
                    eprintln!("keel-chaos powercut: power on m{t}'s disk: {e}");
                    return 2;
                }
            }
        }
        cuts_done += 1;
        let line = format!(
            "cut {cut}/{}: {} {how}; {}",
            opts.cuts,
            if targets.len() == opts.members && opts.members > 1 {
                "all members".to_string()
            } else {
                format!("m{}", targets[0])
            },
            reports.join("; ")
        );
        if let Some(f) = report.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        for &t in &targets {
            cluster.note(t, &format!("power cut {cut}: {line}"));
        }
        // Power back on.
        if let Err((slot, e)) = start_members(cluster, &targets, &[]).await {
            corrupt += 1;
            let tail = slot.map_or(String::new(), |s| log_tail(cluster.log_path(s), 12));
            println!("keel-chaos powercut: corrupt start after cut {cut}: {e}\n{tail}");
            if let Some(f) = report.as_mut() {
                let _ = writeln!(f, "corrupt start after cut {cut}: {e}\n{tail}");
            }
            break;
        }
        // Judge.
        let mut f = Findings::default();
        let judged: Result<(), String> = async {
            let current = if opts.members > 1 {
                converge(&all).await?
            } else {
                0
            };
            let model = load.model.borrow().clone_for_check();
            let rev = check_state(&model, 0, &mut f).await?;
            check_history(&model, 0, rev.max(current), &mut f).await?;
            check_leases_and_compaction(&model, 0, &mut f).await?;
            if opts.members > 1 {
                let hashes = crate::run::hash_kvs(&all, current).await;
                let first = hashes[0].1.clone();
                if hashes.iter().any(|(_, h)| *h != first || h.is_err()) {
                    f.lost
                        .push(format!("HashKV at {current} differs: {hashes:?}"));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = &judged {
            // The cluster could not be judged: a member that cannot serve after a cut.
            corrupt += 1;
            println!("keel-chaos powercut: after cut {cut} the cluster could not be checked: {e}");
        }
        for (i, l) in f.lost.iter().enumerate() {
            if i < 20 {
                println!("keel-chaos powercut: after cut {cut}: LOST {l}");
            } else if i == 20 {
                println!(
                    "keel-chaos powercut: after cut {cut}: … {} more in {}",
                    f.lost.len() - 20,
                    out.join("powercut.log").display()
                );
            }
            if let Some(file) = report.as_mut() {
                let _ = writeln!(file, "after cut {cut}: LOST {l}");
            }
        }
        lost_total += f.lost.len();
        if f.lost.is_empty() && judged.is_ok() {
            load.model.borrow_mut().prune();
        }
        let m = load.model.borrow();
        if cut % 10 == 0 || cut == opts.cuts || !f.lost.is_empty() {
            println!(
                "[{:>5.0}s] {line} | acked {} ops {} lost {lost_total}",
                origin.elapsed().as_secs_f64(),
                m.acked,
                m.ops
            );
        }
        drop(m);
        if !f.lost.is_empty() || judged.is_err() {
            // One damaged cut is enough to judge the build; the next cuts would only
            // repeat it.
            break;
        }
    }
    let m = load.model.borrow();
    println!(
        "keel-chaos powercut: {cuts_done} cuts ({at_sync_cuts} at a durability request) in {:.0} s; logs in {}",
        origin.elapsed().as_secs_f64(),
        out.display()
    );
    println!(
        "cuts={cuts_done} acked={} lost={lost_total} corrupt-starts={corrupt}",
        m.acked
    );
    i32::from(lost_total > 0 || corrupt > 0)
}

impl Model {
    /// Forgets what no later check can use (after a clean check): a key's writes before
    /// its last acknowledged one, except acknowledged ones above the compaction (the
    /// history check still looks for them). Keeps the checks' cost flat over a long run.
    fn prune(&mut self) {
        let compacted = self.compacted;
        for ops in self.keys.values_mut() {
            let Some(last) = ops
                .iter()
                .rposition(|o| matches!(o.outcome, Outcome::Acked(_)))
            else {
                continue;
            };
            let mut i = 0;
            ops.retain(|o| {
                i += 1;
                i > last || matches!(o.outcome, Outcome::Acked(r) if r > compacted)
            });
        }
    }

    /// A copy for the checks (which await while holding it).
    fn clone_for_check(&self) -> Model {
        Model {
            keys: self.keys.clone(),
            leases: self.leases.clone(),
            compacted: self.compacted,
            compact_sent: self.compact_sent,
            acked: self.acked,
            max_acked_rev: self.max_acked_rev,
            seen_rev: self.seen_rev,
            ops: self.ops,
        }
    }
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        server: PathBuf::new(),
        members: 1,
        cuts: 20,
        seed: 1,
        loss: Loss::Mixed,
        at: At::Mixed,
        journal: false,
        whom: Whom::Mixed,
        writers: 6,
        out: None,
        server_args: Vec::new(),
        server_env: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match name {
            "--server" => o.server = PathBuf::from(value()?),
            "--members" => {
                o.members = number(value()?)? as usize;
                if o.members != 1 && o.members != 3 {
                    return Err("--members must be 1 or 3".into());
                }
            }
            "--cuts" => o.cuts = number(value()?)?.max(1),
            "--seed" => o.seed = number(value()?)?,
            "--loss" => o.loss = value()?.parse()?,
            "--at" => o.at = value()?.parse()?,
            "--whom" => {
                o.whom = match value()?.as_str() {
                    "all" => Whom::All,
                    "one" => Whom::One,
                    "mixed" => Whom::Mixed,
                    v => return Err(format!("--whom: {v}: want all, one or mixed")),
                }
            }
            "--dirs" => {
                o.journal = match value()?.as_str() {
                    "strict" => false,
                    "journal" => true,
                    v => return Err(format!("--dirs: {v}: want strict or journal")),
                }
            }
            "--writers" => o.writers = (number(value()?)? as usize).max(1),
            "--out" => o.out = Some(PathBuf::from(value()?)),
            "--server-arg" => o.server_args.push(value()?),
            "--server-env" => {
                let v = value()?;
                let (k, x) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--server-env wants NAME=VALUE, got {v}"))?;
                o.server_env.push((k.to_string(), x.to_string()));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.server.as_os_str().is_empty() {
        return Err("--server BIN is required (a keel or etcd binary)".into());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(value: Option<&str>, outcome: Outcome) -> KeyOp {
        KeyOp {
            value: value.map(str::to_string),
            lease: 0,
            outcome,
        }
    }

    fn got(v: &str, rev: i64) -> (String, i64, i64) {
        (v.to_string(), rev, 0)
    }

    #[test]
    fn the_last_acknowledged_write_or_a_later_unknown_one_is_allowed() {
        let ops = vec![
            op(Some("a"), Outcome::Acked(5)),
            op(Some("b"), Outcome::Acked(9)),
            op(Some("c"), Outcome::Unknown),
            op(None, Outcome::Unknown),
        ];
        assert!(judge_key(&ops, Some(&got("b", 9))).is_ok());
        assert!(judge_key(&ops, Some(&got("c", 12))).is_ok());
        assert!(
            judge_key(&ops, None).is_ok(),
            "the unknown delete may have applied"
        );
        // An older acknowledged value is a lost write; so is the right value at a wrong
        // revision, and a value never written.
        assert!(judge_key(&ops, Some(&got("a", 5))).is_err());
        assert!(judge_key(&ops, Some(&got("b", 8))).is_err());
        assert!(judge_key(&ops, Some(&got("zz", 20))).is_err());
        // An unknown write cannot land below the acknowledged one.
        assert!(judge_key(&ops, Some(&got("c", 7))).is_err());
    }

    #[test]
    fn an_acknowledged_delete_must_leave_the_key_absent() {
        let ops = vec![
            op(Some("a"), Outcome::Acked(5)),
            op(None, Outcome::Acked(6)),
        ];
        assert!(judge_key(&ops, None).is_ok());
        assert!(judge_key(&ops, Some(&got("a", 5))).is_err());
    }

    #[test]
    fn a_key_with_nothing_acknowledged_is_absent_or_an_unknown_write() {
        let ops = vec![
            op(Some("a"), Outcome::Unknown),
            op(Some("b"), Outcome::NotApplied),
        ];
        assert!(judge_key(&ops, None).is_ok());
        assert!(judge_key(&ops, Some(&got("a", 3))).is_ok());
        assert!(
            judge_key(&ops, Some(&got("b", 3))).is_err(),
            "a failed compare wrote nothing"
        );
    }

    #[test]
    fn pruning_keeps_what_the_checks_still_use() {
        let mut m = Model {
            compacted: 6,
            ..Model::default()
        };
        m.keys.insert(
            "k".into(),
            vec![
                op(Some("a"), Outcome::Acked(5)),
                op(Some("b"), Outcome::Unknown),
                op(Some("c"), Outcome::Acked(8)),
                op(Some("d"), Outcome::Acked(9)),
                op(Some("e"), Outcome::Unknown),
            ],
        );
        m.prune();
        let left: Vec<_> = m.keys["k"]
            .iter()
            .map(|o| o.value.clone().unwrap())
            .collect();
        assert_eq!(left, ["c", "d", "e"]);
        assert!(judge_key(&m.keys["k"], Some(&got("d", 9))).is_ok());
        assert!(judge_key(&m.keys["k"], Some(&got("c", 8))).is_err());
    }

    #[test]
    fn flags() {
        let a: Vec<String> = "--server /bin/keel --members 3 --cuts 7 --seed 9 --loss torn"
            .split(' ')
            .map(String::from)
            .collect();
        let o = parse(&a).unwrap();
        assert_eq!((o.members, o.cuts, o.seed, o.loss), (3, 7, 9, Loss::Torn));
        assert!(parse(&[
            "--members".into(),
            "2".into(),
            "--server".into(),
            "x".into()
        ])
        .is_err());
        assert!(
            parse(&["--members".into(), "1".into()]).is_err(),
            "no --server"
        );
    }
}
