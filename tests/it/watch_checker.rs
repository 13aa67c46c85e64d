//! A watch checker: ~5 s of concurrent load (3 writers doing puts, deletes, range deletes
//! and small transactions over 50 keys under /chk/, one task compacting every second to a
//! recent revision) while 40 watchers on 8 connections (one stream each) watch /chk/ or
//! parts of it, some from revisions in the past, some with prev_kv. The writers' responses
//! give the complete history (revision -> events); every watcher's stream is then checked:
//!
//! - ORDERED: revisions strictly increase across responses, never decrease within one;
//! - UNIQUE: no (revision, key) twice;
//! - RELIABLE: every revision from the watcher's start to the final one that touched its
//!   range is delivered, unless the watch was canceled for compaction, which then carries
//!   a compact_revision beyond everything delivered;
//! - ATOMIC: all of a revision's events (in the range) in one response;
//! - the events equal the writers' record: type, key, value, mod/create revision, version,
//!   and prev_kv where asked (absent only if the previous revision was compacted).
//!
//! Also passes with `KEEL_TEST_SERVER=/usr/bin/etcd`. Every wait is bounded.

use crate::common;

use common::{runtime, Rng, Server};
use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchResponseStream,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep, sleep_until, timeout, Instant};

const LOAD: Duration = Duration::from_secs(5);
/// After the load, how long watchers get to deliver everything.
const DRAIN: Duration = Duration::from_secs(15);
const KEYS: u64 = 50;
const PREFIX: &str = "/chk/";
const WRITERS: u64 = 3;
const STREAMS: usize = 8;
const WATCHERS_PER_STREAM: usize = 5;
const RPC: Duration = Duration::from_secs(10);

async fn connect(ep: &str) -> Client {
    timeout(RPC, Client::connect([ep], None))
        .await
        .expect("connect within 10 s")
        .expect("connect")
}

/// One write as the writer saw it.
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    put: bool,
    key: String,
    value: String,
}

/// An event as a watcher should see it (or saw it).
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    rev: i64,
    put: bool,
    key: String,
    value: String,
    create: i64,
    version: i64,
    /// (value, create, mod, version) of prev_kv.
    prev: Option<(String, i64, i64, i64)>,
}

#[derive(Default)]
struct Shared {
    history: Mutex<BTreeMap<i64, Vec<Rec>>>,
    violations: Mutex<Vec<String>>,
    /// The highest revision a compaction was requested (and accepted) for.
    compacted: AtomicI64,
    /// The final revision, once the writers are done (0 before).
    final_rev: AtomicI64,
    load_over: AtomicBool,
    writes: AtomicUsize,
}

impl Shared {
    fn violation(&self, v: String) {
        let mut vs = self.violations.lock().unwrap();
        if vs.len() < 50 {
            eprintln!("VIOLATION: {v}");
        }
        vs.push(v);
    }
}

fn key(rng: &mut Rng) -> String {
    format!("{PREFIX}k{}", rng.below(KEYS))
}

async fn writer(ep: String, id: u64, until: Instant, sh: Arc<Shared>) {
    let mut c = connect(&ep).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id + 1) * 0x1234_5678_9ABC_DEF1));
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let roll = rng.below(100);
        let res: Result<(i64, Vec<Rec>), String> = if roll < 50 {
            let k = key(&mut rng);
            let v = format!("w{id}-{seq}");
            match timeout(RPC, c.put(k.clone(), v.clone(), None)).await {
                Ok(Ok(r)) => Ok((
                    r.header().unwrap().revision(),
                    vec![Rec {
                        put: true,
                        key: k,
                        value: v,
                    }],
                )),
                e => Err(format!("put: {e:?}")),
            }
        } else if roll < 78 {
            // A single key, or a range (/chk/kD deletes kD and kD0..kD9).
            let (k, opts) = if roll < 70 {
                (key(&mut rng), DeleteOptions::new().with_prev_key())
            } else {
                (
                    format!("{PREFIX}k{}", 1 + rng.below(4)),
                    DeleteOptions::new().with_prefix().with_prev_key(),
                )
            };
            match timeout(RPC, c.delete(k, Some(opts))).await {
                Ok(Ok(r)) => {
                    let evs: Vec<Rec> = r
                        .prev_kvs()
                        .iter()
                        .map(|kv| Rec {
                            put: false,
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: String::new(),
                        })
                        .collect();
                    if evs.len() as i64 != r.deleted() {
                        sh.violation(format!(
                            "delete: {} prev_kvs for {} deleted",
                            evs.len(),
                            r.deleted()
                        ));
                    }
                    Ok((r.header().unwrap().revision(), evs))
                }
                e => Err(format!("delete: {e:?}")),
            }
        } else {
            // A small transaction over distinct keys: puts and deletes.
            let n = 2 + rng.below(3);
            let mut ks: Vec<String> = Vec::new();
            while (ks.len() as u64) < n {
                let k = key(&mut rng);
                if !ks.contains(&k) {
                    ks.push(k);
                }
            }
            let mut ops = Vec::new();
            let mut plan: Vec<(String, Option<String>)> = Vec::new();
            for (i, k) in ks.into_iter().enumerate() {
                if rng.below(10) < 7 {
                    let v = format!("w{id}-{seq}-t{i}");
                    ops.push(TxnOp::put(k.clone(), v.clone(), None));
                    plan.push((k, Some(v)));
                } else {
                    ops.push(TxnOp::delete(
                        k.clone(),
                        Some(DeleteOptions::new().with_prev_key()),
                    ));
                    plan.push((k, None));
                }
            }
            match timeout(RPC, c.txn(Txn::new().and_then(ops))).await {
                Ok(Ok(r)) => {
                    // In op order: a put's event, or a delete's if it deleted something.
                    let mut evs = Vec::new();
                    for (op, (k, v)) in r.op_responses().into_iter().zip(plan) {
                        match (op, v) {
                            (TxnOpResponse::Put(_), Some(v)) => evs.push(Rec {
                                put: true,
                                key: k,
                                value: v,
                            }),
                            (TxnOpResponse::Delete(d), None) => {
                                for kv in d.prev_kvs() {
                                    evs.push(Rec {
                                        put: false,
                                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                                        value: String::new(),
                                    });
                                }
                            }
                            (op, v) => {
                                sh.violation(format!("txn op response {op:?} for {k} {v:?}"))
                            }
                        }
                    }
                    Ok((r.header().unwrap().revision(), evs))
                }
                e => Err(format!("txn: {e:?}")),
            }
        };
        match res {
            Err(e) => {
                sh.violation(format!("writer {id}: {e} (the history is now unknown)"));
                return;
            }
            Ok((_, evs)) if evs.is_empty() => {}
            Ok((rev, evs)) => {
                sh.writes.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = sh.history.lock().unwrap().insert(rev, evs.clone()) {
                    sh.violation(format!(
                        "revision {rev} reported twice: {old:?} and {evs:?}"
                    ));
                }
            }
        }
    }
}

async fn compactor(ep: String, until: Instant, sh: Arc<Shared>) {
    let mut c = connect(&ep).await;
    loop {
        sleep(Duration::from_secs(1)).await;
        if Instant::now() >= until {
            return;
        }
        let cur = match timeout(
            RPC,
            c.get(PREFIX, Some(GetOptions::new().with_count_only())),
        )
        .await
        {
            Ok(Ok(r)) => r.header().unwrap().revision(),
            e => {
                sh.violation(format!("compactor get: {e:?}"));
                return;
            }
        };
        let target = cur - 15;
        if target <= sh.compacted.load(Ordering::SeqCst) || target < 2 {
            continue;
        }
        match timeout(RPC, c.compact(target, None)).await {
            Ok(Ok(_)) => {
                sh.compacted.fetch_max(target, Ordering::SeqCst);
            }
            e => sh.violation(format!("compact {target}: {e:?}")),
        }
    }
}

#[derive(Clone, Debug)]
struct Spec {
    name: String,
    key: String,
    /// [lo, hi)
    lo: String,
    hi: String,
    prefix: bool,
    /// 0: from now; -n: n revisions before the current one; 1: everything.
    back: i64,
    prev_kv: bool,
    /// When to create it, after the load started.
    at: Duration,
}

impl Spec {
    fn covers(&self, k: &str) -> bool {
        k >= self.lo.as_str() && k < self.hi.as_str()
    }
}

struct Resp {
    header_rev: i64,
    events: Vec<Ev>,
}

struct WState {
    spec: Spec,
    id: i64,
    start: i64,
    canceled: bool,
    compact_rev: i64,
    resps: Vec<Resp>,
    max_rev: i64,
    /// The last revision it must deliver (known once the load is over).
    must_reach: Option<i64>,
}

fn prefix_end(p: &str) -> String {
    let mut b = p.as_bytes().to_vec();
    *b.last_mut().unwrap() += 1;
    String::from_utf8(b).unwrap()
}

fn specs(stream: usize) -> Vec<Spec> {
    (0..WATCHERS_PER_STREAM)
        .map(|i| {
            let w = stream * WATCHERS_PER_STREAM + i;
            let (key, lo, hi, prefix) = match w % 4 {
                0 => (
                    format!("{PREFIX}k1"),
                    format!("{PREFIX}k1"),
                    format!("{PREFIX}k2"),
                    true,
                ),
                1 => (
                    format!("{PREFIX}k2"),
                    format!("{PREFIX}k2"),
                    format!("{PREFIX}k3"),
                    false,
                ),
                _ => (
                    PREFIX.to_string(),
                    PREFIX.to_string(),
                    prefix_end(PREFIX),
                    true,
                ),
            };
            let back = match w % 3 {
                0 => -(5 * (w as i64 % 7) + 3),
                1 => 1,
                _ => 0,
            };
            Spec {
                name: format!(
                    "w{w}(stream {stream}, {key}{}, back {back}, prev_kv {})",
                    if prefix { "*" } else { "..k3" },
                    w % 2 == 1
                ),
                key,
                lo,
                hi,
                prefix,
                back,
                prev_kv: w % 2 == 1,
                // Spread over the first 4.4 s of load, streams interleaved.
                at: Duration::from_millis(110 * (i * STREAMS + stream) as u64),
            }
        })
        .collect()
}

/// Creates the stream's watchers at their times; returns when all requests are sent.
async fn creator(
    mut c: Client,
    mut tx: etcd_client::WatchRequestSender,
    t0: Instant,
    specs: Vec<Spec>,
    pending: Arc<Mutex<VecDeque<(Spec, i64)>>>,
    sh: Arc<Shared>,
) {
    for spec in specs {
        sleep_until(t0 + spec.at).await;
        let start = match spec.back {
            0 => 0,
            1 => 1,
            n => match timeout(
                RPC,
                c.get(PREFIX, Some(GetOptions::new().with_count_only())),
            )
            .await
            {
                Ok(Ok(r)) => (r.header().unwrap().revision() + n).max(1),
                e => {
                    sh.violation(format!("creator get: {e:?}"));
                    return;
                }
            },
        };
        let mut o = WatchOptions::new();
        o = if spec.prefix {
            o.with_prefix()
        } else {
            o.with_range(spec.hi.clone())
        };
        if start > 0 {
            o = o.with_start_revision(start);
        }
        if spec.prev_kv {
            o = o.with_prev_key();
        }
        pending.lock().unwrap().push_back((spec.clone(), start));
        if let Err(e) = tx.watch(spec.key.clone(), Some(o)).await {
            sh.violation(format!("{}: watch request: {e:?}", spec.name));
            return;
        }
    }
    // Keep the request side open until the reader is done (dropping it may end the
    // stream); the caller drops this task's future only after that.
    while !sh.load_over.load(Ordering::SeqCst) || sh.final_rev.load(Ordering::SeqCst) == 0 {
        sleep(Duration::from_millis(50)).await;
    }
    sleep(DRAIN + Duration::from_secs(1)).await;
    drop(tx);
}

fn last_touch(sh: &Shared, spec: &Spec, final_rev: i64) -> i64 {
    sh.history
        .lock()
        .unwrap()
        .range(..=final_rev)
        .rev()
        .find(|(_, evs)| evs.iter().any(|e| spec.covers(&e.key)))
        .map(|(r, _)| *r)
        .unwrap_or(0)
}

async fn reader(
    stream: usize,
    mut rx: WatchResponseStream,
    total: usize,
    pending: Arc<Mutex<VecDeque<(Spec, i64)>>>,
    sh: Arc<Shared>,
    hard_deadline: Instant,
) -> Vec<WState> {
    let mut ws: Vec<WState> = Vec::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    loop {
        let final_rev = sh.final_rev.load(Ordering::SeqCst);
        if final_rev > 0 && ws.len() == total {
            for w in ws.iter_mut() {
                if w.must_reach.is_none() {
                    w.must_reach = Some(last_touch(&sh, &w.spec, final_rev));
                }
            }
            if ws
                .iter()
                .all(|w| w.canceled || w.max_rev >= w.must_reach.unwrap())
            {
                break;
            }
        }
        if Instant::now() > hard_deadline {
            sh.violation(format!(
                "stream {stream}: not everything delivered by the deadline: {}",
                ws.iter()
                    .filter(|w| !w.canceled && Some(w.max_rev) < w.must_reach)
                    .map(|w| format!("{} at {} of {:?}", w.spec.name, w.max_rev, w.must_reach))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            break;
        }
        let r = match timeout(Duration::from_millis(200), rx.message()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                sh.violation(format!("stream {stream}: error {e:?}"));
                break;
            }
            Ok(Ok(None)) => {
                sh.violation(format!("stream {stream}: ended early"));
                break;
            }
            Ok(Ok(Some(r))) => r,
        };
        let header_rev = r.header().map(|h| h.revision()).unwrap_or(-1);
        if r.created() {
            let Some((spec, start)) = pending.lock().unwrap().pop_front() else {
                sh.violation(format!(
                    "stream {stream}: created response nobody asked for: {r:?}"
                ));
                continue;
            };
            if by_id.contains_key(&r.watch_id()) {
                sh.violation(format!(
                    "stream {stream}: watch id {} given twice",
                    r.watch_id()
                ));
            }
            if !r.events().is_empty() {
                sh.violation(format!("{}: created response with events", spec.name));
            }
            by_id.insert(r.watch_id(), ws.len());
            ws.push(WState {
                start: if start > 0 { start } else { header_rev + 1 },
                spec,
                id: r.watch_id(),
                canceled: false,
                compact_rev: 0,
                resps: Vec::new(),
                max_rev: 0,
                must_reach: None,
            });
            if r.canceled() {
                let w = ws.last_mut().unwrap();
                w.canceled = true;
                sh.violation(format!("{}: canceled at creation: {r:?}", w.spec.name));
            }
            continue;
        }
        let Some(&i) = by_id.get(&r.watch_id()) else {
            sh.violation(format!(
                "stream {stream}: response for unknown watch id: {r:?}"
            ));
            continue;
        };
        let w = &mut ws[i];
        if w.canceled {
            sh.violation(format!("{}: response after cancel: {r:?}", w.spec.name));
        }
        let events: Vec<Ev> = r
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().expect("event kv");
                Ev {
                    rev: kv.mod_revision(),
                    put: e.event_type() == EventType::Put,
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    create: kv.create_revision(),
                    version: kv.version(),
                    prev: e.prev_kv().map(|p| {
                        (
                            String::from_utf8_lossy(p.value()).into_owned(),
                            p.create_revision(),
                            p.mod_revision(),
                            p.version(),
                        )
                    }),
                }
            })
            .collect();
        if let Some(m) = events.iter().map(|e| e.rev).max() {
            w.max_rev = w.max_rev.max(m);
        }
        if r.canceled() {
            w.canceled = true;
            w.compact_rev = r.compact_revision();
        } else if r.compact_revision() != 0 {
            sh.violation(format!(
                "{}: compact_revision without cancel: {r:?}",
                w.spec.name
            ));
        }
        w.resps.push(Resp { header_rev, events });
    }
    ws
}

/// key -> (value, create, mod, version)
type KeyState = BTreeMap<String, (String, i64, i64, i64)>;

/// The full expected events per revision, with create/version/prev from replaying history.
fn expand(history: &BTreeMap<i64, Vec<Rec>>) -> (BTreeMap<i64, Vec<Ev>>, KeyState) {
    let mut state: KeyState = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (&rev, recs) in history {
        let mut evs = Vec::new();
        for r in recs {
            let prev = state.get(&r.key).cloned();
            if r.put {
                let (create, version) = match &prev {
                    Some(p) => (p.1, p.3 + 1),
                    None => (rev, 1),
                };
                state.insert(r.key.clone(), (r.value.clone(), create, rev, version));
                evs.push(Ev {
                    rev,
                    put: true,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    create,
                    version,
                    prev,
                });
            } else {
                state.remove(&r.key);
                evs.push(Ev {
                    rev,
                    put: false,
                    key: r.key.clone(),
                    value: String::new(),
                    create: 0,
                    version: 0,
                    prev,
                });
            }
        }
        out.insert(rev, evs);
    }
    (out, state)
}

fn check_watcher(
    w: &WState,
    full: &BTreeMap<i64, Vec<Ev>>,
    final_rev: i64,
    compacted: i64,
    out: &mut Vec<String>,
) -> usize {
    let name = &format!("{} id {}", w.spec.name, w.id);
    let mut n = 0;
    let mut last_rev = w.start - 1;
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    // revision -> index of the response that carried it
    let mut rev_resp: BTreeMap<i64, usize> = BTreeMap::new();
    for (ri, r) in w.resps.iter().enumerate() {
        if let Some(first) = r.events.first() {
            if first.rev <= last_rev {
                out.push(format!(
                    "{name}: ORDERED: response {ri} starts at {} after {last_rev}",
                    first.rev
                ));
            }
        }
        let mut prev_in = i64::MIN;
        for e in &r.events {
            n += 1;
            if e.rev < prev_in {
                out.push(format!(
                    "{name}: ORDERED: revision {} after {prev_in} in one response",
                    e.rev
                ));
            }
            prev_in = e.rev;
            if !seen.insert((e.rev, e.key.clone())) {
                out.push(format!("{name}: UNIQUE: ({}, {}) twice", e.rev, e.key));
            }
            if let Some(&other) = rev_resp.get(&e.rev) {
                if other != ri {
                    out.push(format!(
                        "{name}: ATOMIC: revision {} in responses {other} and {ri}",
                        e.rev
                    ));
                }
            }
            rev_resp.insert(e.rev, ri);
            if !w.spec.covers(&e.key) {
                out.push(format!("{name}: key {} outside the watched range", e.key));
            }
            if e.rev < w.start {
                out.push(format!(
                    "{name}: revision {} before the start {}",
                    e.rev, w.start
                ));
            }
            if e.rev > r.header_rev {
                out.push(format!(
                    "{name}: event at {} in a response with header revision {}",
                    e.rev, r.header_rev
                ));
            }
        }
        if let Some(l) = r.events.last() {
            last_rev = last_rev.max(l.rev);
        }
    }
    let delivered_max = rev_resp.keys().next_back().copied().unwrap_or(0);
    let upper = if w.canceled {
        if w.compact_rev == 0 {
            out.push(format!(
                "{name}: canceled without compact_revision (nobody canceled it)"
            ));
        } else if w.compact_rev <= delivered_max {
            out.push(format!(
                "{name}: compact_revision {} not beyond delivered {delivered_max}",
                w.compact_rev
            ));
        } else if w.compact_rev <= w.start {
            out.push(format!(
                "{name}: compacted at {} though it started at {}",
                w.compact_rev, w.start
            ));
        } else if w.compact_rev > compacted {
            out.push(format!(
                "{name}: compact_revision {} above the highest compaction {compacted}",
                w.compact_rev
            ));
        }
        delivered_max
    } else {
        final_rev
    };
    // RELIABLE and the record: every revision in [start, upper] that touched the range.
    let lo = w.start.max(1);
    let span = if upper >= lo {
        full.range(lo..=upper)
    } else {
        full.range(0..0)
    };
    for (&rev, evs) in span {
        let want: Vec<&Ev> = evs.iter().filter(|e| w.spec.covers(&e.key)).collect();
        if want.is_empty() {
            continue;
        }
        let Some(&ri) = rev_resp.get(&rev) else {
            out.push(format!(
                "{name}: RELIABLE: revision {rev} missing ({} events)",
                want.len()
            ));
            continue;
        };
        let got: Vec<&Ev> = w.resps[ri].events.iter().filter(|e| e.rev == rev).collect();
        if got.len() != want.len() {
            out.push(format!("{name}: ATOMIC: revision {rev}: {} of {} events in one response: {got:?} vs {want:?}", got.len(), want.len()));
            continue;
        }
        for (g, x) in got.iter().zip(&want) {
            let same = g.put == x.put
                && g.key == x.key
                && g.value == x.value
                && g.create == x.create
                && g.version == x.version;
            let prev_ok = if !w.spec.prev_kv {
                g.prev.is_none()
            } else {
                g.prev == x.prev || (g.prev.is_none() && rev - 1 < compacted)
            };
            if !same || !prev_ok {
                out.push(format!(
                    "{name}: revision {rev}: got {g:?}, the writers did {x:?}"
                ));
            }
        }
    }
    for &rev in rev_resp.keys() {
        if !full
            .get(&rev)
            .is_some_and(|evs| evs.iter().any(|e| w.spec.covers(&e.key)))
        {
            out.push(format!(
                "{name}: revision {rev} delivered but nobody wrote it in range"
            ));
        }
    }
    n
}

#[test]
fn watch_checker() {
    let s = Server::start("wchk", &[]);
    check("watch checker", &s.endpoint(), &s.endpoint());
}

/// The same load and checks with every watcher on a `keel grpc-proxy` in front of the
/// member (the writers and the compactor go to the member): coalesced watches, watchers
/// from past revisions merged into shared ones, compaction cancels, prev_kv.
#[test]
fn watch_checker_through_the_grpc_proxy() {
    if !common::is_keel() {
        return;
    }
    let s = Server::start("wchkp", &[]);
    let p = common::Proxy::start("wchkp", &[&s.endpoint()], &[]);
    check("watch checker (proxy)", &p.endpoint(), &s.endpoint());
}

/// Runs the load against `ep` and the watchers on `wep`, then checks every watcher.
fn check(label: &str, wep: &str, ep: &str) {
    let ep = ep.to_string();
    let wep = wep.to_string();
    let sh = Arc::new(Shared::default());
    let rt = runtime();
    let (streams, watchers, events, final_rev, compacted, canceled) = rt.block_on(async {
        let t0 = Instant::now();
        let until = t0 + LOAD;
        let hard_deadline = until + DRAIN;
        // Watchers first (their connections), then load.
        let mut readers = Vec::new();
        let mut creators = Vec::new();
        for st in 0..STREAMS {
            let mut c = connect(&wep).await;
            let sp = specs(st);
            let total = sp.len();
            // The stream opens with its first watcher; the creator sends the rest.
            let first = sp[0].clone();
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            let mut o = WatchOptions::new();
            o = if first.prefix {
                o.with_prefix()
            } else {
                o.with_range(first.hi.clone())
            };
            if first.prev_kv {
                o = o.with_prev_key();
            }
            let start = match first.back {
                0 => 0,
                _ => 1,
            };
            if start > 0 {
                o = o.with_start_revision(start);
            }
            pending.lock().unwrap().push_back((first.clone(), start));
            let wsm = timeout(RPC, c.watch(first.key.clone(), Some(o)))
                .await
                .expect("watch within 10 s")
                .expect("watch");
            let (tx, rx) = wsm.split();
            readers.push(tokio::spawn(reader(
                st,
                rx,
                total,
                pending.clone(),
                sh.clone(),
                hard_deadline,
            )));
            creators.push(tokio::spawn(creator(
                c,
                tx,
                t0,
                sp[1..].to_vec(),
                pending,
                sh.clone(),
            )));
        }
        let mut load = Vec::new();
        for id in 0..WRITERS {
            load.push(tokio::spawn(writer(ep.clone(), id, until, sh.clone())));
        }
        load.push(tokio::spawn(compactor(ep.clone(), until, sh.clone())));
        for h in load {
            timeout(LOAD + RPC * 2, h)
                .await
                .expect("load ends")
                .expect("load task");
        }
        sh.load_over.store(true, Ordering::SeqCst);
        // The final state, with its revision.
        let mut c = connect(&ep).await;
        let fin = timeout(RPC, c.get(PREFIX, Some(GetOptions::new().with_prefix())))
            .await
            .expect("final range within 10 s")
            .expect("final range");
        let final_rev = fin.header().unwrap().revision();
        sh.final_rev.store(final_rev, Ordering::SeqCst);
        let mut all: Vec<WState> = Vec::new();
        let mut streams = 0;
        for h in readers {
            all.extend(
                timeout(DRAIN + RPC, h)
                    .await
                    .expect("reader ends")
                    .expect("reader task"),
            );
            streams += 1;
        }
        for h in creators {
            h.abort();
        }
        // Check the record itself: contiguous revisions and the final Range.
        let history = sh.history.lock().unwrap().clone();
        let (full, state) = expand(&history);
        let mut out = Vec::new();
        let revs: Vec<i64> = history.keys().copied().collect();
        if revs != (2..=final_rev).collect::<Vec<_>>() {
            out.push(format!(
                "history: revisions {:?}..{:?} ({}) are not exactly 2..={final_rev}",
                revs.first(),
                revs.last(),
                revs.len()
            ));
        }
        let got: Vec<(String, (String, i64, i64, i64))> = fin
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    (
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.create_revision(),
                        kv.mod_revision(),
                        kv.version(),
                    ),
                )
            })
            .collect();
        let want: Vec<(String, (String, i64, i64, i64))> = state.into_iter().collect();
        if got != want {
            out.push(format!(
                "final range differs from the writers' record:\n got {got:?}\nwant {want:?}"
            ));
        }
        let compacted = sh.compacted.load(Ordering::SeqCst);
        let mut events = 0;
        for w in &all {
            events += check_watcher(w, &full, final_rev, compacted, &mut out);
        }
        let canceled = all.iter().filter(|w| w.canceled).count();
        if all.len() != STREAMS * WATCHERS_PER_STREAM {
            out.push(format!(
                "only {} of {} watchers were created",
                all.len(),
                STREAMS * WATCHERS_PER_STREAM
            ));
        }
        for v in out {
            sh.violation(v);
        }
        (streams, all.len(), events, final_rev, compacted, canceled)
    });
    let violations = sh.violations.lock().unwrap().clone();
    println!(
        "{label}: streams={streams} watchers={watchers} events={events} violations={} \
         (revisions={final_rev} writes={} compacted_to={compacted} canceled_by_compaction={canceled})",
        violations.len(),
        sh.writes.load(Ordering::Relaxed),
    );
    assert!(
        violations.is_empty(),
        "{} violations, the first ones:\n{}",
        violations.len(),
        violations[..violations.len().min(50)].join("\n")
    );
}
