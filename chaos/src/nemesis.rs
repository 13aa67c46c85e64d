//! The nemesis: one fault at a time, chosen by the seeded RNG from `--faults`, held for a
//! few seconds, then healed; between faults, a calm spell. While it waits it tends the
//! cluster: a member that exited when no fault expected it to is logged (a crash) and
//! started again.
//!
//! Faults (each names its variants in the timeline, `faults.log`):
//! - `kill`: SIGKILL a member (the leader half the time; now and then every member at
//!   once), restart it on the same data dir after the hold.
//! - `partition`: iptables cuts: a random minority, the leader alone, a bridge member
//!   that sees both halves, one-way cuts into or out of the leader.
//! - `pause`: SIGSTOP the leader or another member, SIGCONT after the hold.
//! - `member`: remove a member, wipe it and add it back as a new member; or add a learner
//!   on the spare slot, promote it once it has caught up, remove it after the hold.
//! - `disk`: restart a member with fsync/write failing (Keel's failpoints through the
//!   io_uring path, libfiu for libc calls), or fill its tmpfs (and sometimes restart it
//!   on the full disk); the member may stop, never acknowledge what it did not persist.
//! - `clock`: restart a member under libfaketime with its clock moved or running at
//!   another rate; restart it normally after the hold.
//! - `stray`: start a second process on a running member's data dir (other ports): it
//!   must refuse to run, or at least never serve.
//!
//! Runs on: the harness's main thread (its own executor: the blocking calls it makes
//! never stall the clients, which run on the workload thread).

use crate::cluster::{self, client_addr, peer_url, Cluster, System};
use crate::rng::Rng;
use crate::rpc::{Endpoint, Failure};
use crate::sys;
use keel::pb::etcdserverpb as pb;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Partition,
    Pause,
    Member,
    Disk,
    Clock,
    Stray,
    /// Defragment a member while the workload runs (its db pages move under load).
    Maint,
}

pub const ALL_FAULTS: &str = "kill,partition,pause,member,disk,clock,stray,maint";

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Partition => "partition",
            FaultKind::Pause => "pause",
            FaultKind::Member => "member",
            FaultKind::Disk => "disk",
            FaultKind::Clock => "clock",
            FaultKind::Stray => "stray",
            FaultKind::Maint => "maint",
        }
    }
}

/// `kill,partition,…` (or `all`, or `none`) into fault kinds.
pub fn parse_faults(list: &str) -> Result<Vec<FaultKind>, String> {
    let list = match list.trim() {
        "all" => ALL_FAULTS,
        "none" | "" => return Ok(Vec::new()),
        l => l,
    };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim) {
        let k = match name {
            "kill" => FaultKind::Kill,
            "partition" => FaultKind::Partition,
            "pause" => FaultKind::Pause,
            "member" => FaultKind::Member,
            "disk" => FaultKind::Disk,
            "clock" => FaultKind::Clock,
            "stray" => FaultKind::Stray,
            "maint" => FaultKind::Maint,
            other => return Err(format!("unknown fault {other:?} (known: {ALL_FAULTS})")),
        };
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// What undoes the fault in force.
#[derive(Debug)]
enum Heal {
    Network,
    Resume(usize),
    /// Start these slots again (clean environment) if they are not running.
    Start(Vec<usize>),
    /// Kill the slot if it runs and start it clean (it ran with a fault's environment).
    Restart(usize),
    /// Delete the ballast that fills a tmpfs, then start the slot if it stopped.
    Unfill(usize, PathBuf),
    /// Add the removed slot back as a new member.
    Readd(usize),
    /// Remove the learner (promoted or not) added on this slot.
    RemoveLearner(usize),
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Nemesis {
    pub cluster: Cluster,
    rng: Rng,
    kinds: Vec<FaultKind>,
    origin: Instant,
    /// (ns since the start, what happened).
    pub timeline: Vec<(i64, String)>,
    pub applied: u64,
    /// Violations the nemesis itself saw (a stray process that served).
    pub findings: Vec<String>,
    /// Slots a fault keeps down (not restarted by `tend`).
    held: Vec<usize>,
    /// Slots removed and not yet added back.
    pending_readd: Vec<usize>,
    /// What is in force now, for the progress line.
    pub current: String,
}

impl Nemesis {
    pub fn new(cluster: Cluster, seed: u64, kinds: Vec<FaultKind>, origin: Instant) -> Nemesis {
        Nemesis {
            cluster,
            rng: Rng::fork(seed, 1),
            kinds,
            origin,
            timeline: Vec::new(),
            applied: 0,
            findings: Vec::new(),
            held: Vec::new(),
            pending_readd: Vec::new(),
            current: "none".into(),
        }
    }

    pub fn log(&mut self, what: String) {
        let t = sys::ns_since(self.origin);
        println!("[{:7.1}s] {what}", t as f64 / 1e9);
        self.timeline.push((t, what));
    }

    /// Faults until `until`, then heals everything.
    pub async fn run(&mut self, until: Instant, interrupted: &std::sync::atomic::AtomicBool) {
        let stop = || interrupted.load(std::sync::atomic::Ordering::Relaxed);
        while Instant::now() < until && !stop() {
            let calm = Duration::from_millis(self.rng.range(1000, 4000));
            self.wait(calm.min(until.saturating_duration_since(Instant::now())))
                .await;
            if Instant::now() >= until || self.kinds.is_empty() || stop() {
                continue;
            }
            let kind = *self.rng.pick(&self.kinds);
            match self.apply(kind).await {
                Ok(heals) => {
                    self.applied += 1;
                    let hold = Duration::from_millis(self.rng.range(2000, 8000));
                    self.wait(hold.min(until.saturating_duration_since(Instant::now())))
                        .await;
                    for h in heals {
                        self.heal(h).await;
                    }
                    self.current = "none".into();
                }
                Err(why) => {
                    self.log(format!("{} not applied: {why}", kind.name()));
                    self.current = "none".into();
                }
            }
        }
        self.wait(Duration::ZERO).await;
    }

    /// Tends the cluster for `d`: reaps exits, restarts crashed members, retries
    /// re-adds.
    async fn wait(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.tend().await;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            glommio::timer::sleep(left.min(Duration::from_millis(250))).await;
        }
    }

    async fn tend(&mut self) {
        for (slot, status, expected) in self.cluster.reap() {
            if expected {
                self.log(format!("m{slot} stopped as its fault allows: {status}"));
            } else {
                self.log(format!(
                    "m{slot} EXITED unexpectedly: {status} (see logs/m{slot}.log)"
                ));
            }
        }
        for slot in 0..self.cluster.members.len() {
            let m = &self.cluster.members[slot];
            let recently = m
                .started_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
            if m.in_cluster && !m.running() && !self.held.contains(&slot) && !recently {
                self.log(format!("restart m{slot}"));
                if let Err(e) = self.cluster.start(slot, Vec::new()) {
                    self.log(format!("cannot start m{slot}: {e}"));
                }
            }
        }
        if let Some(&slot) = self.pending_readd.first() {
            if self.readd(slot).await.is_ok() {
                self.pending_readd.retain(|&s| s != slot);
            }
        }
    }

    /// The leader's slot, if the live members agree on one.
    async fn leader(&self) -> Option<usize> {
        self.cluster.leader().await
    }

    /// Running, unpaused members of the cluster.
    fn voters_live(&self) -> Vec<usize> {
        self.cluster
            .live()
            .into_iter()
            .filter(|&s| self.cluster.members[s].in_cluster)
            .collect()
    }

    fn in_cluster(&self) -> Vec<usize> {
        self.cluster
            .members
            .iter()
            .filter(|m| m.in_cluster)
            .map(|m| m.slot)
            .collect()
    }

    /// The leader half the time (if known), else any live member.
    async fn target(&mut self) -> Result<(usize, bool), String> {
        let live = self.voters_live();
        if live.is_empty() {
            return Err("no live member".into());
        }
        if self.rng.chance(0.5) {
            if let Some(l) = self.leader().await {
                return Ok((l, true));
            }
        }
        let s = *self.rng.pick(&live);
        Ok((s, false))
    }

    async fn apply(&mut self, kind: FaultKind) -> Result<Vec<Heal>, String> {
        match kind {
            FaultKind::Kill => self.kill().await,
            FaultKind::Partition => self.partition().await,
            FaultKind::Pause => {
                let (s, leader) = self.target().await?;
                self.cluster.pause(s)?;
                self.current = format!("pause m{s}");
                self.log(format!(
                    "pause m{s}{}",
                    if leader { " (leader)" } else { "" }
                ));
                Ok(vec![Heal::Resume(s)])
            }
            FaultKind::Member => {
                if self.rng.chance(0.6) {
                    self.remove_member().await
                } else {
                    self.add_learner().await
                }
            }
            FaultKind::Disk => self.disk().await,
            FaultKind::Clock => self.clock().await,
            FaultKind::Stray => self.stray().await.map(|()| Vec::new()),
            FaultKind::Maint => self.maint().await.map(|()| Vec::new()),
        }
    }

    /// Defragments a live member (Maintenance.Defragment) under the workload: its pages
    /// move down and the file is cut while it serves; the checker then finds any write it
    /// lost or any read that saw wrong data.
    async fn maint(&mut self) -> Result<(), String> {
        let live = self.voters_live();
        if live.is_empty() {
            return Err("no live member".into());
        }
        let s = *self.rng.pick(&live);
        self.current = format!("defrag m{s}");
        let started = Instant::now();
        let r: Result<pb::DefragmentResponse, _> = Endpoint::new(client_addr(s))
            .unary(
                "/etcdserverpb.Maintenance/Defragment",
                pb::DefragmentRequest {},
                Duration::from_secs(20),
            )
            .await;
        let took = started.elapsed();
        self.log(match r {
            Ok(_) => format!("defragment m{s}: done in {took:?}"),
            Err(e) => format!("defragment m{s}: {e:?} after {took:?}"),
        });
        Ok(())
    }

    async fn kill(&mut self) -> Result<Vec<Heal>, String> {
        if self.rng.chance(0.1) {
            let all = self.in_cluster();
            for &s in &all {
                self.cluster.kill(s);
                self.held.push(s);
            }
            self.current = "kill all".into();
            self.log(format!("kill every member {all:?}"));
            return Ok(vec![Heal::Start(all)]);
        }
        let (s, leader) = self.target().await?;
        self.cluster.kill(s);
        self.held.push(s);
        self.current = format!("kill m{s}");
        self.log(format!(
            "kill m{s}{}",
            if leader { " (leader)" } else { "" }
        ));
        Ok(vec![Heal::Start(vec![s])])
    }

    async fn partition(&mut self) -> Result<Vec<Heal>, String> {
        let mut members = self.in_cluster();
        if members.len() < 2 {
            return Err("fewer than two members".into());
        }
        // Shuffle (Fisher–Yates with the nemesis RNG).
        for i in (1..members.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            members.swap(i, j);
        }
        let leader = self.leader().await;
        let variant = self.rng.below(5);
        let desc = match (variant, leader) {
            (1, Some(l)) => {
                let rest: Vec<usize> = members.iter().copied().filter(|&s| s != l).collect();
                self.cluster.net.split(&[l], &rest)?;
                format!("isolate the leader m{l} from {rest:?}")
            }
            (2, _) if members.len() >= 3 => {
                // A bridge: the middle member sees both halves, which do not see each other.
                let bridge = members[0];
                let rest = &members[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                self.cluster.net.split(a, b)?;
                format!("bridge m{bridge} between {a:?} and {b:?}")
            }
            (3, Some(l)) => {
                for &s in members.iter().filter(|&&s| s != l) {
                    self.cluster.net.cut(s, l)?;
                }
                format!("one-way: the leader m{l} hears no one")
            }
            (4, Some(l)) => {
                for &s in members.iter().filter(|&&s| s != l) {
                    self.cluster.net.cut(l, s)?;
                }
                format!("one-way: no one hears the leader m{l}")
            }
            _ => {
                let minority = self.rng.range(1, ((members.len() - 1) / 2).max(1) as u64) as usize;
                let (a, b) = members.split_at(minority);
                self.cluster.net.split(a, b)?;
                format!("partition minority {a:?} | majority {b:?}")
            }
        };
        self.current = desc.clone();
        self.log(desc);
        Ok(vec![Heal::Network])
    }

    /// A live member other than `not` to send a membership request to (the leader if
    /// known).
    async fn via(&self, not: usize) -> Option<usize> {
        if let Some(l) = self.leader().await.filter(|&l| l != not) {
            return Some(l);
        }
        self.voters_live().into_iter().find(|&s| s != not)
    }

    async fn member_call<M: prost::Message + 'static, R: prost::Message + Default + 'static>(
        &self,
        not: usize,
        path: &'static str,
        msg: M,
    ) -> Result<R, String> {
        let via = self.via(not).await.ok_or("no live member to ask")?;
        Endpoint::new(client_addr(via))
            .unary(path, msg, REQUEST_TIMEOUT)
            .await
            .map_err(|e: Failure| format!("{path} via m{via}: {e}"))
    }

    /// Waits up to `max` for the slot's process to exit by itself, then kills it.
    async fn wait_exit(&mut self, slot: usize, max: Duration) {
        let until = Instant::now() + max;
        while self.cluster.members[slot].running() && Instant::now() < until {
            self.cluster.reap();
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        if self.cluster.members[slot].running() {
            self.log(format!("m{slot} still runs after its removal: killing it"));
            self.cluster.kill(slot);
        }
    }

    async fn remove_member(&mut self) -> Result<Vec<Heal>, String> {
        let (s, leader) = self.target().await?;
        self.remove(s, leader).await?;
        Ok(vec![Heal::Readd(s)])
    }

    /// Removes slot `s` from the cluster (when every member runs) and waits for its
    /// process to leave.
    async fn remove(&mut self, s: usize, leader: bool) -> Result<(), String> {
        let live = self.voters_live();
        if live.len() < self.in_cluster().len() || live.len() < 2 {
            return Err("a member is down: removing another could cost the quorum".into());
        }
        let id = self.cluster.members[s].id;
        if id == 0 {
            return Err(format!("m{s}'s member ID is unknown"));
        }
        let r: Result<pb::MemberRemoveResponse, String> = self
            .member_call(
                s,
                "/etcdserverpb.Cluster/MemberRemove",
                pb::MemberRemoveRequest { id },
            )
            .await;
        if let Err(e) = r {
            // The removal may have been applied all the same (the leader that took it
            // may have gone): ask the cluster.
            if self.still_member(s, id).await {
                return Err(e);
            }
            self.log(format!(
                "MemberRemove of m{s} failed ({e}) but the member is gone"
            ));
        }
        self.cluster.members[s].in_cluster = false;
        self.cluster.members[s].exit_expected = true;
        self.held.push(s);
        self.current = format!("m{s} removed");
        self.log(format!(
            "remove m{s} ({id:x}){}",
            if leader { " (leader)" } else { "" }
        ));
        self.wait_exit(s, Duration::from_secs(5)).await;
        Ok(())
    }

    /// Whether `id` is still listed, asking for up to 10 s (true if no one answers).
    async fn still_member(&mut self, not: usize, id: u64) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(ids) = self.cluster.member_ids(not).await {
                return ids.contains(&id);
            }
            self.wait(Duration::from_millis(500)).await;
        }
        true
    }

    /// Waits (bounded) until every live member but `slot` lists member `id` in its own
    /// (serializable) member list.
    async fn wait_listed(&self, slot: usize, id: u64) {
        let until = Instant::now() + Duration::from_secs(10);
        for other in self.cluster.live().into_iter().filter(|&s| s != slot) {
            while Instant::now() < until {
                let r: Result<pb::MemberListResponse, _> =
                    crate::rpc::Endpoint::new(crate::cluster::client_addr(other))
                        .unary(
                            "/etcdserverpb.Cluster/MemberList",
                            pb::MemberListRequest {
                                linearizable: false,
                            },
                            Duration::from_secs(1),
                        )
                        .await;
                if r.is_ok_and(|l| l.members.iter().any(|m| m.id == id)) {
                    break;
                }
                // Not `self.wait`: tending may re-add, which waits here.
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// MemberAdd for `slot` (as a learner or a voter), wipe its data dir, start it.
    async fn add(&mut self, slot: usize, learner: bool) -> Result<u64, String> {
        self.add_with(slot, learner, None).await
    }

    /// `add`, filling the slot's disk with `ballast` (after the wipe, before the start)
    /// when given: the new member's first boot meets a full disk.
    async fn add_with(
        &mut self,
        slot: usize,
        learner: bool,
        ballast: Option<&std::path::Path>,
    ) -> Result<u64, String> {
        let r: pb::MemberAddResponse = self
            .member_call(
                slot,
                "/etcdserverpb.Cluster/MemberAdd",
                pb::MemberAddRequest {
                    peer_ur_ls: vec![peer_url(slot)],
                    is_learner: learner,
                },
            )
            .await?;
        let id = r.member.as_ref().map_or(0, |m| m.id);
        let initial: Vec<String> = r
            .members
            .iter()
            .filter_map(|m| {
                let url = m.peer_ur_ls.first()?;
                let s = (0..self.cluster.members.len()).find(|&s| peer_url(s) == *url)?;
                Some(format!("m{s}={url}"))
            })
            .collect();
        if self.cluster.members[slot].running() {
            self.cluster.kill(slot);
        }
        self.cluster.wipe(slot, initial.join(","))?;
        self.cluster.members[slot].id = id;
        self.cluster.members[slot].in_cluster = true;
        self.held.retain(|&h| h != slot);
        let filled = match ballast.map(fill) {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(e)) => {
                self.log(format!("cannot fill m{slot}'s disk: {e}"));
                None
            }
            None => None,
        };
        // A new member learns the cluster from whichever peer answers first, as etcd's
        // does; one that has not applied the MemberAdd yet makes it refuse to start
        // ("no match found for existing member"), in etcd too. Start it once every live
        // member lists it (found by seed 22 of the long mode).
        self.wait_listed(slot, id).await;
        self.cluster.start(slot, Vec::new())?;
        if let Some(bytes) = filled {
            self.cluster.members[slot].exit_expected = true;
            self.held.push(slot);
            self.log(format!(
                "m{slot}'s disk was filled ({} MiB) before its first boot",
                bytes >> 20
            ));
        }
        Ok(id)
    }

    async fn readd(&mut self, slot: usize) -> Result<(), String> {
        match self.add(slot, false).await {
            Ok(id) => {
                self.log(format!("add m{slot} back as a new member ({id:x})"));
                Ok(())
            }
            Err(e) => {
                self.log(format!("re-adding m{slot} failed (retrying): {e}"));
                if !self.pending_readd.contains(&slot) {
                    self.pending_readd.push(slot);
                }
                Err(e)
            }
        }
    }

    async fn add_learner(&mut self) -> Result<Vec<Heal>, String> {
        let spare = self.cluster.voters;
        if self.cluster.members.len() <= spare || self.cluster.members[spare].in_cluster {
            return Err("no spare slot".into());
        }
        if self.voters_live().len() < self.in_cluster().len() {
            return Err("a member is down".into());
        }
        let id = self.add(spare, true).await?;
        self.current = format!("learner m{spare}");
        self.log(format!("add learner m{spare} ({id:x})"));
        let until = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < until {
            let r: Result<pb::MemberPromoteResponse, String> = self
                .member_call(
                    spare,
                    "/etcdserverpb.Cluster/MemberPromote",
                    pb::MemberPromoteRequest { id },
                )
                .await;
            match r {
                Ok(_) => {
                    self.log(format!("promoted learner m{spare}"));
                    last.clear();
                    break;
                }
                Err(e) => last = e,
            }
            self.wait(Duration::from_millis(500)).await;
        }
        if !last.is_empty() {
            self.log(format!("learner m{spare} not promoted in 30 s: {last}"));
        }
        Ok(vec![Heal::RemoveLearner(spare)])
    }

    async fn disk(&mut self) -> Result<Vec<Heal>, String> {
        let members = self.in_cluster();
        let mounted: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&s| self.cluster.members[s].mount.is_some())
            .collect();
        if !mounted.is_empty() && self.rng.chance(0.5) {
            let s = mounted[0];
            let ballast = self.cluster.members[s]
                .mount
                .clone()
                .expect("mounted")
                .join("ballast");
            if self.rng.chance(0.3) {
                // A replacement member whose disk is full at its first boot: it must stop
                // or wait, and boot once the disk has room.
                self.remove(s, false).await?;
                return match self.add_with(s, false, Some(&ballast)).await {
                    Ok(id) => {
                        self.current = format!("m{s} new on a full disk");
                        self.log(format!(
                            "add m{s} back as a new member ({id:x}) on a full disk"
                        ));
                        Ok(vec![Heal::Unfill(s, ballast)])
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&ballast);
                        self.log(format!("re-adding m{s} failed (retrying): {e}"));
                        if !self.pending_readd.contains(&s) {
                            self.pending_readd.push(s);
                        }
                        Ok(Vec::new())
                    }
                };
            }
            let filled = fill(&ballast)?;
            self.cluster.members[s].exit_expected = true;
            self.held.push(s);
            let restart = self.rng.chance(0.4) && self.cluster.members[s].running();
            self.current = format!("m{s}'s disk full");
            self.log(format!(
                "fill m{s}'s disk ({} MiB of ballast){}",
                filled >> 20,
                if restart {
                    ", then restart it on the full disk"
                } else {
                    ""
                }
            ));
            if restart {
                self.cluster.kill(s);
                self.cluster.start(s, Vec::new())?;
                self.cluster.members[s].exit_expected = true;
            }
            return Ok(vec![Heal::Unfill(s, ballast)]);
        }
        let s = *self.rng.pick(&members);
        let seed = self.rng.next_u64();
        let mut env = vec![
            (
                "KEEL_FAILPOINTS".to_string(),
                "wal-fsync=eio@0.02,wal-write=eio@0.01,db-fsync=eio@0.05".to_string(),
            ),
            ("KEEL_FAILPOINTS_SEED".to_string(), seed.to_string()),
        ];
        if std::path::Path::new(FIU_PRELOAD_DIR).exists() {
            env.push((
                "LD_PRELOAD".into(),
                format!(
                    "{FIU_PRELOAD_DIR}/fiu_run_preload.so {FIU_PRELOAD_DIR}/fiu_posix_preload.so"
                ),
            ));
            env.push((
                "FIU_ENABLE".into(),
                "enable_random name=posix/io/sync/*,probability=0.05".into(),
            ));
        }
        self.cluster.kill(s);
        self.cluster.start(s, env)?;
        self.cluster.members[s].exit_expected = true;
        self.held.push(s);
        self.current = format!("m{s}'s disk fails");
        let reach = match self.cluster.system {
            System::Keel => "Keel's failpoints (if built with them) and libfiu",
            System::Etcd => "libfiu only, which Go's raw syscalls bypass",
        };
        self.log(format!(
            "restart m{s} with fsync/write failing (EIO through {reach})"
        ));
        Ok(vec![Heal::Restart(s)])
    }

    async fn clock(&mut self) -> Result<Vec<Heal>, String> {
        if !std::path::Path::new(FAKETIME_LIB).exists() {
            return Err(format!("{FAKETIME_LIB} missing (Debian package faketime)"));
        }
        let members = self.in_cluster();
        let s = *self.rng.pick(&members);
        let skew = match self.rng.below(4) {
            0 => format!("+{}s", self.rng.range(1, 600)),
            1 => format!("-{}s", self.rng.range(1, 600)),
            2 => "+0 x1.5".to_string(),
            _ => "+0 x0.7".to_string(),
        };
        let env = vec![
            ("LD_PRELOAD".to_string(), FAKETIME_LIB.to_string()),
            ("FAKETIME".to_string(), skew.clone()),
        ];
        self.cluster.kill(s);
        self.cluster.start(s, env)?;
        self.held.push(s);
        self.current = format!("m{s}'s clock {skew}");
        let note = match self.cluster.system {
            System::Keel => "",
            System::Etcd => " (Go reads the clock through the vDSO: libfaketime does not reach it)",
        };
        self.log(format!(
            "restart m{s} with its clock skewed: FAKETIME={skew:?}{note}"
        ));
        Ok(vec![Heal::Restart(s)])
    }

    async fn stray(&mut self) -> Result<(), String> {
        let live = self.voters_live();
        if live.is_empty() {
            return Err("no live member".into());
        }
        let s = *self.rng.pick(&live);
        let mut child = self.cluster.spawn_stray(s)?;
        self.current = format!("stray on m{s}");
        self.log(format!("start a second process on m{s}'s data dir"));
        let until = Instant::now() + Duration::from_secs(3);
        let stray_addr =
            std::net::SocketAddr::from((crate::net::member_ip(s), cluster::STRAY_CLIENT_PORT));
        let mut served = false;
        let mut exited = None;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            let r: Result<pb::StatusResponse, _> = Endpoint::new(stray_addr)
                .unary(
                    "/etcdserverpb.Maintenance/Status",
                    pb::StatusRequest {},
                    Duration::from_millis(300),
                )
                .await;
            served |= r.is_ok();
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        let outcome = match exited {
            Some(st) => format!("it exited: {st}"),
            None => {
                let _ = sys::signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                "it was still running after 3 s (killed)".to_string()
            }
        };
        if served {
            self.findings.push(format!(
                "a second process on m{s}'s data dir served requests ({outcome})"
            ));
        }
        if exited.is_none() && self.cluster.system == System::Keel {
            self.findings.push(format!(
                "a second keel on m{s}'s data dir was not refused within 3 s"
            ));
        }
        self.log(format!(
            "stray on m{s}: {outcome}{}",
            if served { "; IT SERVED" } else { "" }
        ));
        Ok(())
    }

    async fn heal(&mut self, h: Heal) {
        match h {
            Heal::Network => {
                if let Err(e) = self.cluster.net.heal() {
                    self.log(format!("heal network failed: {e}"));
                } else {
                    self.log("heal network".into());
                }
            }
            Heal::Resume(s) => {
                self.cluster.resume(s);
                self.log(format!("resume m{s}"));
            }
            Heal::Start(slots) => {
                for s in slots {
                    self.held.retain(|&h| h != s);
                    if !self.cluster.members[s].running() && self.cluster.members[s].in_cluster {
                        match self.cluster.start(s, Vec::new()) {
                            Ok(()) => self.log(format!("restart m{s}")),
                            Err(e) => self.log(format!("cannot start m{s}: {e}")),
                        }
                    }
                }
            }
            Heal::Restart(s) => {
                self.held.retain(|&h| h != s);
                self.cluster.reap();
                if self.cluster.members[s].running() {
                    self.cluster.kill(s);
                }
                if self.cluster.members[s].in_cluster {
                    match self.cluster.start(s, Vec::new()) {
                        Ok(()) => self.log(format!("restart m{s} clean")),
                        Err(e) => self.log(format!("cannot start m{s}: {e}")),
                    }
                }
            }
            Heal::Unfill(s, ballast) => {
                let _ = std::fs::remove_file(&ballast);
                self.held.retain(|&h| h != s);
                self.cluster.reap();
                if self.cluster.members[s].running() {
                    self.cluster.members[s].exit_expected = false;
                    self.log(format!("free m{s}'s disk (it kept running)"));
                } else if self.cluster.members[s].in_cluster {
                    match self.cluster.start(s, Vec::new()) {
                        Ok(()) => self.log(format!("free m{s}'s disk and restart it")),
                        Err(e) => self.log(format!("cannot start m{s}: {e}")),
                    }
                }
            }
            Heal::Readd(s) => {
                let _ = self.readd(s).await;
            }
            Heal::RemoveLearner(s) => {
                let id = self.cluster.members[s].id;
                let r: Result<pb::MemberRemoveResponse, String> = self
                    .member_call(
                        s,
                        "/etcdserverpb.Cluster/MemberRemove",
                        pb::MemberRemoveRequest { id },
                    )
                    .await;
                let gone = match &r {
                    Ok(_) => true,
                    Err(_) => !self.still_member(s, id).await,
                };
                match r {
                    _ if gone => {
                        self.cluster.members[s].in_cluster = false;
                        self.cluster.members[s].exit_expected = true;
                        self.held.push(s);
                        self.log(format!("remove m{s} ({id:x}), the learner"));
                        self.wait_exit(s, Duration::from_secs(5)).await;
                    }
                    Err(e) => {
                        // Still a member: it stays (a later learner fault finds no spare).
                        self.log(format!("removing m{s} failed, it stays: {e}"));
                    }
                    Ok(_) => unreachable!("an answered removal is gone"),
                }
            }
        }
    }

    /// Undoes everything still in force and lets every member of the cluster run.
    pub async fn heal_all(&mut self) {
        let _ = self.cluster.net.heal();
        for s in 0..self.cluster.members.len() {
            self.cluster.resume(s);
            if let Some(mount) = self.cluster.members[s].mount.clone() {
                let _ = std::fs::remove_file(mount.join("ballast"));
            }
            if !self.cluster.members[s].env.is_empty() && self.cluster.members[s].running() {
                self.cluster.kill(s);
            }
        }
        self.held.clear();
        for _ in 0..20 {
            if self.pending_readd.is_empty() {
                break;
            }
            self.wait(Duration::from_millis(500)).await;
        }
        self.wait(Duration::ZERO).await;
        self.log("healed: every fault undone".into());
    }
}

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const FIU_PRELOAD_DIR: &str = "/usr/lib/fiu";

/// Writes zeros into `path` until the file system is full; returns the bytes written.
fn fill(path: &std::path::Path) -> Result<u64, String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for size in [1 << 20, 4096] {
        loop {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists() {
        assert_eq!(parse_faults("all").unwrap().len(), 8);
        assert!(parse_faults("none").unwrap().is_empty());
        assert_eq!(
            parse_faults("kill, pause,kill").unwrap(),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        let err = parse_faults("kill,flood").unwrap_err();
        assert!(err.contains("unknown fault \"flood\""), "{err}");
    }
}
