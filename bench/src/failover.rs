//! `keel-bench failover`: how long a 3-member cluster is without a leader, and without
//! writes, after its leader is killed.
//!
//! ```text
//! keel-bench failover [--keel target/release/keel] [--etcd /usr/bin/etcd] [--reps 5]
//!                     [--members 3] [--heartbeat-interval 100] [--election-timeout 1000]
//!                     [--only keel|etcd] [--out bench/results/failover-STAMP]
//! ```
//! For each system in turn (one cluster up at a time): start the cluster, then per
//! repetition wait for an agreed leader, put from one writer on each follower every
//! `WRITE_EVERY` (each put bounded by `PUT_TIMEOUT`, a new one sent whether or not the last
//! returned), SIGKILL the leader, and measure from the kill
//! - *new leader*: until a survivor's Maintenance.Status names a leader other than the
//!   killed one (polled every `POLL_EVERY` on each survivor);
//! - *writes again*: until the first put sent after the kill succeeds;
//!
//! then restart the killed member on its data and wait until all members agree on a
//! leader again. Times are in ms and in election timeouts. Writes `OUT/failover.md`.

use crate::cluster::{Cluster, Poller, Timing};
use crate::grpc;
use crate::util::Flags;
use bytes::Bytes;
use keel::pb::etcdserverpb as pb;
use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

const WRITE_EVERY: Duration = Duration::from_millis(10);
const PUT_TIMEOUT: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(10);
/// Writes before the kill, so connections are warm and writes are known to work.
const WARMUP: Duration = Duration::from_millis(300);

/// One repetition: ms from the kill.
struct Sample {
    leader_ms: f64,
    writes_ms: f64,
}

pub fn main(flags: &Flags) {
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let reps = flags.u64("reps", 5) as usize;
    let members = flags.u64("members", 3) as usize;
    assert!(members >= 3, "--members: failover needs at least 3");
    let timing = Timing::from_flags(flags);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = PathBuf::from(flags.str("out", &format!("bench/results/failover-{stamp}")));
    std::fs::create_dir_all(&out).unwrap();
    let only = flags.str("only", "keel,etcd");
    let mut rows = Vec::new();
    for (name, binary) in [("keel", &keel), ("etcd", &etcd)] {
        if !only.split(',').any(|o| o == name) {
            continue;
        }
        if !Path::new(binary).exists() {
            rows.push((name, Err(format!("{binary} not found"))));
            continue;
        }
        let res = measure(name, binary, &out, members, timing, reps);
        rows.push((name, res));
    }
    let _ = std::fs::remove_dir_all(out.join("data"));
    let table = render(&rows, members, timing, reps);
    std::fs::write(out.join("failover.md"), &table).unwrap();
    println!("{table}\nresults: {}", out.display());
}

/// All repetitions on one cluster of `system`; the samples so far if a later one fails.
fn measure(
    system: &'static str,
    binary: &str,
    out: &Path,
    members: usize,
    timing: Timing,
    reps: usize,
) -> Result<Vec<Sample>, String> {
    let mut cluster = Cluster::start(system, binary, out, members, timing)?;
    let mut samples = Vec::new();
    for rep in 0..reps {
        match one(&mut cluster, timing) {
            Ok(s) => {
                eprintln!(
                    "{system} rep {}: new leader after {:.0} ms, writes again after {:.0} ms",
                    rep + 1,
                    s.leader_ms,
                    s.writes_ms
                );
                samples.push(s);
            }
            Err(e) if samples.is_empty() => return Err(e),
            Err(e) => {
                eprintln!("{system} rep {}: {e}; stopping after {rep} reps", rep + 1);
                break;
            }
        }
    }
    Ok(samples)
}

fn one(cluster: &mut Cluster, timing: Timing) -> Result<Sample, String> {
    let leader = cluster.wait_leader()?;
    let old_id = cluster.member_id(leader)?;
    let survivors: Vec<_> = (0..cluster.len())
        .filter(|&i| i != leader)
        .map(|i| cluster.endpoint(i))
        .collect();
    // Killed (and reaped) however the measurement ends, before the restart below.
    let mut victim = KillOnDrop(cluster.take_child(leader).ok_or("leader not running")?);
    let deadline = timing.leader_deadline();
    let res = keel::runtime::block_on(async move {
        let kill_at: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let first_write: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let ok_before = Rc::new(Cell::new(0u64));
        let stop = Rc::new(Cell::new(false));
        for &addr in &survivors {
            let conn = grpc::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let (kill_at, first_write, ok_before, stop) = (
                kill_at.clone(),
                first_write.clone(),
                ok_before.clone(),
                stop.clone(),
            );
            glommio::spawn_local(async move {
                let mut n = 0u64;
                while !stop.get() {
                    n += 1;
                    let (conn, kill_at, first_write, ok_before) = (
                        conn.clone(),
                        kill_at.clone(),
                        first_write.clone(),
                        ok_before.clone(),
                    );
                    let key = Bytes::from(format!("keel-bench-failover/{addr}/{}", n % 100));
                    glommio::spawn_local(async move {
                        let sent = Instant::now();
                        let req = pb::PutRequest {
                            key,
                            value: Bytes::from_static(b"v"),
                            ..Default::default()
                        };
                        let put = async {
                            Ok(grpc::unary::<_, pb::PutResponse>(
                                &conn,
                                "/etcdserverpb.KV/Put",
                                &req,
                            )
                            .await)
                        };
                        let ok =
                            matches!(glommio::timer::timeout(PUT_TIMEOUT, put).await, Ok(Ok(_)));
                        let done = Instant::now();
                        match kill_at.get() {
                            None if ok => ok_before.set(ok_before.get() + 1),
                            Some(k)
                                if ok
                                    && sent >= k
                                    && first_write.get().is_none_or(|f| done < f) =>
                            {
                                first_write.set(Some(done))
                            }
                            _ => {}
                        }
                    })
                    .detach();
                    glommio::timer::sleep(WRITE_EVERY).await;
                }
            })
            .detach();
        }
        glommio::timer::sleep(WARMUP).await;
        if ok_before.get() == 0 {
            stop.set(true);
            return Err("no put succeeded before the kill".to_string());
        }
        let _ = victim.0.kill();
        let killed = Instant::now();
        kill_at.set(Some(killed));
        let _ = victim.0.wait();
        let mut pollers: Vec<Poller> = survivors.iter().map(|&a| Poller::new(a)).collect();
        let mut new_leader = None;
        while new_leader.is_none() || first_write.get().is_none() {
            if killed.elapsed() > deadline {
                break;
            }
            if new_leader.is_none() {
                for p in &mut pollers {
                    if let Ok(s) = p.status().await {
                        if s.leader != 0 && s.leader != old_id {
                            new_leader = Some(Instant::now());
                            break;
                        }
                    }
                }
            }
            glommio::timer::sleep(POLL_EVERY).await;
        }
        stop.set(true);
        let ms = |t: Option<Instant>| t.map(|t| (t - killed).as_secs_f64() * 1000.0);
        match (ms(new_leader), ms(first_write.get())) {
            (Some(leader_ms), Some(writes_ms)) => Ok(Sample {
                leader_ms,
                writes_ms,
            }),
            (l, w) => Err(format!(
                "after the leader's kill, within {:.0} s: {} and {}",
                deadline.as_secs_f64(),
                l.map_or("no new leader".into(), |l| format!(
                    "a new leader at {l:.0} ms"
                )),
                w.map_or("no successful write".into(), |w| format!(
                    "writes at {w:.0} ms"
                )),
            )),
        }
    });
    // Back to full strength for the next repetition.
    cluster.restart(leader)?;
    res
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn render(
    rows: &[(&str, Result<Vec<Sample>, String>)],
    members: usize,
    timing: Timing,
    reps: usize,
) -> String {
    let et = timing.election_ms as f64;
    let mut t = format!(
        "Failover of a {members}-member cluster on loopback: SIGKILL of the leader under {:.0} puts/s (one writer per follower); heartbeat {} ms, election timeout {} ms; {reps} reps. Times from the kill: median (min–max), in ms and in election timeouts (ET).\n\n\
         | system | new leader | new leader (ET) | writes again | writes again (ET) | per rep (leader / writes, ms) |\n| --- | --- | --- | --- | --- | --- |\n",
        (members - 1) as f64 * 1000.0 / WRITE_EVERY.as_millis() as f64,
        timing.heartbeat_ms,
        timing.election_ms,
    );
    for (name, res) in rows {
        match res {
            Ok(s) if !s.is_empty() => {
                let l: Vec<f64> = s.iter().map(|s| s.leader_ms).collect();
                let w: Vec<f64> = s.iter().map(|s| s.writes_ms).collect();
                let ((lm, l0, l1), (wm, w0, w1)) = (stats(&l), stats(&w));
                let per: Vec<String> = s
                    .iter()
                    .map(|s| format!("{:.0}/{:.0}", s.leader_ms, s.writes_ms))
                    .collect();
                let _ = writeln!(
                    t,
                    "| {name} | {lm:.0} ms ({l0:.0}–{l1:.0}) | {:.2} ({:.2}–{:.2}) | {wm:.0} ms ({w0:.0}–{w1:.0}) | {:.2} ({:.2}–{:.2}) | {} |",
                    lm / et,
                    l0 / et,
                    l1 / et,
                    wm / et,
                    w0 / et,
                    w1 / et,
                    per.join(", ")
                );
            }
            Ok(_) => {
                let _ = writeln!(t, "| {name} | n/a (no repetitions) | | | | |");
            }
            Err(e) => {
                let _ = writeln!(t, "| {name} | n/a: {e} | | | | |");
            }
        }
    }
    t
}
