//! `keel-chaos run`: lay out the cluster, start it, run clients and the nemesis for the
//! duration, heal, let the cluster settle, read its final history and judge the run.
//!
//! Threads: the main thread owns the cluster and runs the nemesis (its blocking calls —
//! `ip`, `iptables`, waiting for a process — stall no client); the workload thread runs
//! every client on one executor. Both live in the bridge namespace.

use crate::check;
use crate::cluster::{self, client_addr, Cluster, Settings, System};
use crate::history::{Event, Kind, F};
use crate::nemesis::{self, FaultKind, Nemesis};
use crate::record::Recording;
use crate::rpc::Endpoint;
use crate::sys;
use crate::verify::{self, FinalHistory, HEvent};
use crate::workload::{self, Plan, Progress, LEASE_PREFIX, ROOT_PREFIX};
use bytes::Bytes;
use keel::grpc::client::Stream;
use keel::pb::etcdserverpb as pb;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub server: PathBuf,
    pub members: usize,
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    pub clients: usize,
    pub out: Option<PathBuf>,
    /// Extra flags for every member (after etcd's).
    pub server_args: Vec<String>,
    /// Environment for every member's every start (e.g. the broken-Keel failpoint).
    pub server_env: Vec<(String, String)>,
}

/// How long the healed cluster may take to elect a leader, converge, drop lease keys.
const RECOVERY_MAX: Duration = Duration::from_secs(60);
/// Size of the tmpfs that holds the full-disk fault's member (WAL segments are
/// preallocated at 64 MiB, two at a time).
const TMPFS_BYTES: u64 = 400 << 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end the run early (and cleanly: members killed, mounts undone).
#[allow(unsafe_code)]
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Runs the whole thing; returns the process exit code (0 only when clean).
pub fn run(opts: RunOptions) -> i32 {
    if !sys::is_root() {
        eprintln!("keel-chaos run: needs root (network namespaces, iptables, tmpfs mounts)");
        return 2;
    }
    let system = match cluster::identify(&opts.server) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keel-chaos run: {e}");
            return 2;
        }
    };
    let (out, keep_out) = match &opts.out {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("keel-chaos-{}", std::process::id())),
            false,
        ),
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("keel-chaos run: {}: {e}", out.display());
        return 2;
    }
    catch_interrupts();
    // Members inherit it (glommio registers io_uring memory); best effort: without
    // CAP_SYS_RESOURCE the current limit stays, which Keel's executors fit in.
    let _ = sys::raise_memlock(256 << 20);
    let settings = Settings {
        heartbeat_ms: 100,
        election_ms: 1000,
        snapshot_count: 2000,
        extra_args: opts.server_args.clone(),
    };
    let tmpfs = opts
        .faults
        .contains(&FaultKind::Disk)
        .then_some(((opts.seed % opts.members as u64) as usize, TMPFS_BYTES));
    let slots = opts.members + 1;
    let layout = cluster::Layout {
        binary: opts.server.clone(),
        system,
        voters: opts.members,
        slots,
        seed: opts.seed,
        settings,
        tmpfs,
    };
    let cluster = match Cluster::new(layout, &out) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel-chaos run: cannot lay out the cluster: {e}");
            return 2;
        }
    };
    if let Err(e) = sys::enter_netns(&cluster.net.bridge_ns()) {
        eprintln!("keel-chaos run: {e}");
        return 2;
    }
    let code = keel::runtime::block_on(async move {
        drive(opts, cluster, system, out.clone(), keep_out).await
    });
    code
}

async fn drive(
    opts: RunOptions,
    mut cluster: Cluster,
    system: System,
    out: PathBuf,
    keep_out: bool,
) -> i32 {
    let origin = Instant::now();
    println!(
        "keel-chaos: {} members of {} ({:?}), seed {}, {} s, faults [{}], {} clients, out {}",
        opts.members,
        opts.server.display(),
        system,
        opts.seed,
        opts.duration.as_secs(),
        opts.faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.clients,
        out.display()
    );
    for slot in 0..opts.members {
        if let Err(e) = cluster.start(slot, opts.server_env.clone()) {
            eprintln!("keel-chaos run: {e}");
            return 2;
        }
    }
    if let Err(e) = cluster.wait_healthy(RECOVERY_MAX).await {
        eprintln!(
            "keel-chaos run: the cluster never came up: {e} (logs in {})",
            out.join("logs").display()
        );
        return 2;
    }
    if let Err(e) = cluster.learn_ids().await {
        eprintln!("keel-chaos run: {e}");
        return 2;
    }
    // Every start of a member from now on carries the run's environment too.
    cluster.base_env = opts.server_env.clone();
    let first_revision = match Cluster::status(0).await {
        Ok(s) => s.header.map_or(1, |h| h.revision) + 1,
        Err(_) => 2,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let plan = Plan {
        seed: opts.seed,
        clients: opts.clients,
        slots: (0..opts.members).collect(),
        origin,
    };
    let workload = {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::Builder::new()
            .name("chaos-clients".into())
            .spawn(move || keel::runtime::block_on(workload::run(plan, stop, progress)))
            .expect("spawn the workload thread")
    };
    let mut nemesis = Nemesis::new(cluster, opts.seed, opts.faults.clone(), origin);
    nemesis.log("cluster up; clients started".into());
    let until = origin + opts.duration;
    {
        let progress = progress.clone();
        let printer = glommio::spawn_local(async move {
            let mut next = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && !INTERRUPTED.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(250)).await;
                if Instant::now() >= next {
                    next += Duration::from_secs(10);
                    println!(
                        "[{:7.1}s] progress: ops={} ok={} fail={} info={}",
                        origin.elapsed().as_secs_f64(),
                        progress.ops.load(Ordering::Relaxed),
                        progress.ok.load(Ordering::Relaxed),
                        progress.fail.load(Ordering::Relaxed),
                        progress.info.load(Ordering::Relaxed)
                    );
                }
            }
        });
        nemesis.run(until, &INTERRUPTED).await;
        printer.cancel().await;
    }
    nemesis.heal_all().await;
    let mut problems: Vec<String> = Vec::new();
    let recovered = match nemesis.cluster.wait_healthy(RECOVERY_MAX).await {
        Ok(l) => {
            nemesis.log(format!("recovered: every member names m{l} the leader"));
            true
        }
        Err(e) => {
            problems.push(format!("after healing, {e}"));
            false
        }
    };
    // A few seconds of traffic on the healed cluster, then stop the clients.
    glommio::timer::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let joined = glommio::executor()
        .spawn_blocking(move || workload.join())
        .await;
    let mut rec: Recording = match joined {
        Ok(r) => r,
        Err(_) => {
            eprintln!("keel-chaos run: the workload thread panicked");
            return 2;
        }
    };
    nemesis.log(format!("clients stopped: {} operations", rec.ops));

    // Settle: lease keys gone (leases expire), members converged.
    let live: Vec<usize> = nemesis
        .cluster
        .members
        .iter()
        .filter(|m| m.in_cluster)
        .map(|m| m.slot)
        .collect();
    if recovered {
        if let Err(e) = wait_lease_keys_gone(live[0]).await {
            problems.push(e);
        }
    }
    let converged = converge(&live).await;
    let (final_revision, leader) = match converged {
        Ok(x) => x,
        Err(e) => {
            problems.push(e);
            // Judge against the member furthest ahead that still answers.
            most_advanced(&live).await.unwrap_or((0, live[0]))
        }
    };
    nemesis.log(format!("settled at revision {final_revision}"));
    final_reads(&mut rec, leader, origin).await;
    let history = match fetch_history(leader, final_revision).await {
        Ok(h) => Some(FinalHistory::new(h)),
        Err(e) => {
            problems.push(format!("cannot read the final history from m{leader}: {e}"));
            None
        }
    };
    let hashes = hash_kvs(&live, final_revision).await;
    let hash_mismatch = count_mismatches(&hashes);

    let report = match check::check(&rec.history) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "the recorded history is malformed (a harness bug): {e}"
            ));
            check::Report {
                ops: 0,
                keys: Vec::new(),
            }
        }
    };
    // Without a final history nothing but linearizability can be judged.
    let judged = history.is_some();
    let history = history.unwrap_or_else(|| FinalHistory::new(Vec::new()));
    let findings = if judged {
        let lives: Vec<(usize, i64)> = nemesis
            .cluster
            .starts
            .iter()
            .map(|(slot, at)| {
                (
                    *slot,
                    at.saturating_duration_since(origin).as_nanos() as i64,
                )
            })
            .collect();
        verify::check_all(&history, &rec, &lives, first_revision)
    } else {
        verify::Findings::default()
    };
    let unexpected: Vec<String> = nemesis
        .cluster
        .exits
        .iter()
        .map(|(slot, status, at)| {
            format!(
                "m{slot} exited unexpectedly at {:.1}s: {status}",
                at.duration_since(origin).as_secs_f64()
            )
        })
        .collect();

    // Write everything down.
    let mut lines: Vec<String> = Vec::new();
    for k in report.violations() {
        lines.push(format!("NOT LINEARIZABLE: {}", describe(k)));
    }
    let sections: [(&str, &Vec<String>); 9] = [
        ("LOST ACKNOWLEDGED WRITE", &findings.lost_acked),
        ("WATCH", &findings.watch),
        ("SERIALIZABLE READ", &findings.serializable),
        ("LEASE", &findings.lease),
        ("LOCK", &findings.lock),
        ("HISTORY", &findings.history),
        ("STRAY PROCESS", &nemesis.findings),
        ("UNEXPECTED EXIT", &unexpected),
        ("RECOVERY", &problems),
    ];
    for (what, list) in sections {
        for l in list {
            lines.push(format!("{what}: {l}"));
        }
    }
    for (slot, h) in &hashes {
        lines.push(format!(
            "hashkv m{slot} at revision {final_revision}: {h:?}"
        ));
    }
    write_outputs(&out, &rec, &history, &nemesis.timeline, &lines);
    for l in lines.iter().filter(|l| !l.starts_with("hashkv")).take(20) {
        println!("{l}");
    }
    let linearizable = report.linearizable();
    println!(
        "serializable-violations={} lease-violations={} lock-violations={} history-gaps={} stray-violations={} unexpected-exits={} recovered={}",
        findings.serializable.len(),
        findings.lease.len(),
        findings.lock.len(),
        findings.history.len(),
        nemesis.findings.len(),
        unexpected.len(),
        if problems.is_empty() { "yes" } else { "no" }
    );
    if keep_out {
        println!("details: {}", out.display());
    }
    let count = |n: usize| {
        if judged {
            n.to_string()
        } else {
            "?".to_string()
        }
    };
    println!(
        "ops={} faults={} linearizable={} lost-acked={} watch-violations={} hash-mismatch={}",
        rec.ops,
        nemesis.applied,
        if linearizable { "yes" } else { "no" },
        count(findings.lost_acked.len()),
        count(findings.watch.len()),
        hash_mismatch
    );
    let clean = judged
        && linearizable
        && findings.lost_acked.is_empty()
        && findings.watch.is_empty()
        && findings.serializable.is_empty()
        && findings.lease.is_empty()
        && findings.lock.is_empty()
        && findings.history.is_empty()
        && nemesis.findings.is_empty()
        && unexpected.is_empty()
        && problems.is_empty()
        && hash_mismatch == 0;
    nemesis.cluster.shutdown();
    if !keep_out {
        let _ = std::fs::remove_dir_all(&out);
    }
    if clean {
        0
    } else {
        1
    }
}

fn describe(k: &check::KeyResult) -> String {
    match &k.outcome {
        check::Outcome::NotLinearizable {
            window,
            explanation,
        } => {
            let ops: Vec<String> = window.iter().map(|e| e.to_json_line()).collect();
            format!(
                "key {} ({} ops): {explanation}\n    {}",
                k.key,
                k.ops,
                ops.join("\n    ")
            )
        }
        check::Outcome::Unknown(why) => format!("key {}: undecided: {why}", k.key),
        check::Outcome::Linearizable => format!("key {}: linearizable", k.key),
    }
}

fn write_outputs(
    out: &Path,
    rec: &Recording,
    history: &FinalHistory,
    timeline: &[(i64, String)],
    lines: &[String],
) {
    let write = |name: &str, body: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>| {
        let path = out.join(name);
        let r = std::fs::File::create(&path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            body(&mut w)?;
            w.flush()
        });
        if let Err(e) = r {
            eprintln!("keel-chaos: {}: {e}", path.display());
        }
    };
    write("history.jsonl", &mut |w| {
        for e in &rec.history {
            writeln!(w, "{}", e.to_json_line())?;
        }
        Ok(())
    });
    write("faults.log", &mut |w| {
        for (t, what) in timeline {
            writeln!(w, "{:9.3}s {what}", *t as f64 / 1e9)?;
        }
        Ok(())
    });
    write("violations.txt", &mut |w| {
        for l in lines {
            writeln!(w, "{l}")?;
        }
        Ok(())
    });
    write("final-history.txt", &mut |w| {
        for e in &history.events {
            writeln!(
                w,
                "{} {} {:?} (created {})",
                e.revision, e.key, e.value, e.create_revision
            )?;
        }
        Ok(())
    });
}

/// Waits until no key under the lease prefix is left (every lease revoked or expired).
async fn wait_lease_keys_gone(slot: usize) -> Result<(), String> {
    let deadline = Instant::now() + RECOVERY_MAX;
    let mut ep = Endpoint::new(client_addr(slot));
    let mut count = -1;
    while Instant::now() < deadline {
        let r: Result<pb::RangeResponse, _> = ep
            .unary(
                "/etcdserverpb.KV/Range",
                pb::RangeRequest {
                    key: Bytes::from(LEASE_PREFIX),
                    range_end: Bytes::from(workload::prefix_end(LEASE_PREFIX)),
                    count_only: true,
                    ..Default::default()
                },
                workload::OP_TIMEOUT,
            )
            .await;
        if let Ok(r) = r {
            count = r.count;
            if count == 0 {
                return Ok(());
            }
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "{count} keys under {LEASE_PREFIX} outlived their leases by {RECOVERY_MAX:?} after the clients stopped"
    ))
}

/// Waits until every member reports the same revision and applied index twice in a row;
/// returns that revision and the leader's slot.
async fn converge(slots: &[usize]) -> Result<(i64, usize), String> {
    let deadline = Instant::now() + RECOVERY_MAX;
    let mut prev = None;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen.clear();
        let mut leader = None;
        for &s in slots {
            let st = Cluster::status(s).await.ok();
            if let Some(st) = &st {
                if st.header.as_ref().map(|h| h.member_id) == Some(st.leader) {
                    leader = Some(s);
                }
            }
            seen.push(st.map(|st| (st.header.map_or(0, |h| h.revision), st.raft_applied_index)));
        }
        let same = seen.iter().all(|x| x.is_some() && *x == seen[0]);
        if same && prev.as_ref() == Some(&seen) {
            if let Some(l) = leader {
                return Ok((seen[0].expect("all some").0, l));
            }
        }
        prev = Some(seen.clone());
        glommio::timer::sleep(Duration::from_millis(300)).await;
    }
    Err(format!(
        "members {slots:?} did not converge in {RECOVERY_MAX:?}: (revision, applied index) {seen:?}"
    ))
}

/// The answering member with the highest revision: (revision, slot).
async fn most_advanced(slots: &[usize]) -> Option<(i64, usize)> {
    let mut best: Option<(i64, usize)> = None;
    for &s in slots {
        if let Ok(st) = Cluster::status(s).await {
            let rev = st.header.map_or(0, |h| h.revision);
            if best.is_none_or(|(r, _)| rev > r) {
                best = Some((rev, s));
            }
        }
    }
    best
}

/// One linearizable read of every register key, recorded in the history.
async fn final_reads(rec: &mut Recording, slot: usize, origin: Instant) {
    let mut ep = Endpoint::new(client_addr(slot));
    for k in 0..=rec.keys_used + workload::KEY_WINDOW {
        let key = workload::register_key(k);
        let process = rec.next_process;
        rec.next_process += 1;
        let invoke = Event {
            process,
            kind: Kind::Invoke,
            f: F::Read,
            key: key.clone(),
            value: serde_json::Value::Null,
            time_ns: sys::ns_since(origin),
        };
        let r: Result<pb::RangeResponse, _> = ep
            .unary(
                "/etcdserverpb.KV/Range",
                pb::RangeRequest {
                    key: Bytes::from(key.clone()),
                    ..Default::default()
                },
                workload::OP_TIMEOUT,
            )
            .await;
        let Ok(r) = r else {
            continue;
        };
        let value = r.kvs.first().map_or(serde_json::Value::Null, |kv| {
            workload::json_value(&kv.value)
        });
        rec.history.push(invoke);
        rec.history.push(Event {
            process,
            kind: Kind::Ok,
            f: F::Read,
            key,
            value,
            time_ns: sys::ns_since(origin),
        });
        rec.ops += 1;
    }
}

/// Every event under `/chaos/` from revision 1 to `last`, by one Watch on `slot`.
async fn fetch_history(slot: usize, last: i64) -> Result<Vec<HEvent>, String> {
    let mut ep = Endpoint::new(client_addr(slot));
    let conn = ep.conn().await.map_err(|e| e.to_string())?;
    let mut s = Stream::open(&conn, "/etcdserverpb.Watch/Watch")
        .await
        .map_err(|e| e.to_string())?;
    s.send(&pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: Bytes::from(ROOT_PREFIX),
                range_end: Bytes::from(workload::prefix_end(ROOT_PREFIX)),
                start_revision: 1,
                ..Default::default()
            },
        )),
    })
    .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    let mut reached = 0;
    while reached < last {
        let r = glommio::timer::timeout(Duration::from_secs(10), async {
            Ok(s.recv::<pb::WatchResponse>().await)
        })
        .await
        .map_err(|_| format!("no event for 10 s after revision {reached} (want {last})"))?
        .map_err(|e| e.to_string())?;
        if r.canceled {
            return Err(format!("watch canceled: {}", r.cancel_reason));
        }
        for e in r.events {
            let kv = e.kv.unwrap_or_default();
            reached = kv.mod_revision;
            events.push(HEvent {
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: (e.r#type == 0).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                create_revision: kv.create_revision,
            });
        }
    }
    Ok(events)
}

/// HashKV of every slot at `revision` (each its own connection).
pub async fn hash_kvs(slots: &[usize], revision: i64) -> Vec<(usize, Result<u32, String>)> {
    let mut out = Vec::new();
    for &s in slots {
        let r: Result<pb::HashKvResponse, _> = Endpoint::new(client_addr(s))
            .unary(
                "/etcdserverpb.Maintenance/HashKV",
                pb::HashKvRequest { revision },
                Duration::from_secs(10),
            )
            .await;
        out.push((s, r.map(|r| r.hash).map_err(|e| e.to_string())));
    }
    out
}

/// Members whose hash differs from the most common one (or that could not answer).
fn count_mismatches(hashes: &[(usize, Result<u32, String>)]) -> usize {
    let mut counts: std::collections::HashMap<u32, usize> = Default::default();
    for (_, h) in hashes {
        if let Ok(h) = h {
            *counts.entry(*h).or_default() += 1;
        }
    }
    let top = counts.values().copied().max().unwrap_or(0);
    hashes.len() - top
}

pub fn parse(args: &[String]) -> Result<RunOptions, String> {
    let mut o = RunOptions {
        server: PathBuf::new(),
        members: 3,
        duration: Duration::from_secs(60),
        seed: 1,
        faults: nemesis::parse_faults(nemesis::ALL_FAULTS)?,
        clients: 10,
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
                if o.members != 3 && o.members != 5 {
                    return Err("--members must be 3 or 5".into());
                }
            }
            "--duration" => o.duration = Duration::from_secs(number(value()?)?),
            "--seed" => o.seed = number(value()?)?,
            "--faults" => o.faults = nemesis::parse_faults(&value()?)?,
            "--clients" => o.clients = (number(value()?)? as usize).max(1),
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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags() {
        let o = parse(&args(
            "--server /bin/keel --members 5 --duration=30 --seed 9 --faults kill,pause \
             --clients 4 --out /tmp/x --server-env KEEL_FAILPOINTS=stale-read=on",
        ))
        .unwrap();
        assert_eq!(o.server, PathBuf::from("/bin/keel"));
        assert_eq!(
            (o.members, o.duration.as_secs(), o.seed, o.clients),
            (5, 30, 9, 4)
        );
        assert_eq!(o.faults, vec![FaultKind::Kill, FaultKind::Pause]);
        assert_eq!(o.out, Some(PathBuf::from("/tmp/x")));
        assert_eq!(
            o.server_env,
            vec![("KEEL_FAILPOINTS".to_string(), "stale-read=on".to_string())]
        );
        // Every fault kind by default.
        assert_eq!(parse(&args("--server x")).unwrap().faults.len(), 8);
        for bad in [
            "",
            "--server x --members 4",
            "--server x --seed y",
            "--server x --bogus 1",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
