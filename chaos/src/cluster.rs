//! The members: one process per slot, each in its own network namespace, started with
//! etcd's flags (Keel and etcd take the same ones), killed, paused, restarted on the same
//! data dir, wiped and re-added. Every start appends to the slot's log under `OUT/logs`.
//!
//! Slots `0..members` start as the cluster; slot `members` is the spare a learner is
//! added on. A slot's process is always this harness's child; it is signalled by PID only.

use crate::net::{self, Net};
use crate::rpc::{Endpoint, Failure};
use crate::sys;
use keel::pb::etcdserverpb as pb;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// Where a stray second process on a member's data dir listens (it must never serve).
pub const STRAY_CLIENT_PORT: u16 = 3379;
pub const STRAY_PEER_PORT: u16 = 3380;
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a member gets to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Keel,
    Etcd,
}

/// Raft timing and the flags every member gets.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Low, so that snapshots are taken and sent to lagging members during a run.
    pub snapshot_count: u64,
    pub extra_args: Vec<String>,
}

/// What `Cluster::new` lays out.
pub struct Layout {
    pub binary: PathBuf,
    pub system: System,
    /// The cluster's size at the start (slots `0..voters`).
    pub voters: usize,
    /// Member slots in all (the voters and the spare).
    pub slots: usize,
    /// Names the cluster token.
    pub seed: u64,
    pub settings: Settings,
    /// (slot, bytes): the slot whose data dir lives on a tmpfs of that size.
    pub tmpfs: Option<(usize, u64)>,
}

pub struct Member {
    pub slot: usize,
    pub name: String,
    pub data_dir: PathBuf,
    /// The tmpfs mount that holds `data_dir`, for the full-disk fault.
    pub mount: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    /// Raft member ID (0 until known).
    pub id: u64,
    /// Bumped each time the data dir is wiped (a new member on this slot).
    pub incarnation: u64,
    /// Starts of this slot's process, all incarnations.
    pub lives: u64,
    pub paused: bool,
    /// Whether the slot is a member of the cluster now (added and not removed).
    pub in_cluster: bool,
    /// `--initial-cluster` and `--initial-cluster-state` of this incarnation's first start
    /// (a restart on existing data passes them again; etcd ignores them then).
    initial_cluster: String,
    cluster_state: &'static str,
    /// Environment of the current life (failpoints, preloads), cleared by a clean start.
    pub env: Vec<(String, String)>,
    /// When the process was last started.
    pub started_at: Option<Instant>,
    /// A fault expects this process to exit by itself (a failing disk, a removal).
    pub exit_expected: bool,
}

impl Member {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub system: System,
    pub members: Vec<Member>,
    /// The size the cluster starts with (slots `0..voters`).
    pub voters: usize,
    binary: PathBuf,
    token: String,
    settings: Settings,
    pub net: Net,
    out: PathBuf,
    /// Children that exited without being asked: (slot, status, when).
    pub exits: Vec<(usize, ExitStatus, Instant)>,
    /// Environment every start carries (a fault's environment is added to it).
    pub base_env: Vec<(String, String)>,
    /// (slot, when): every start of a member process (a new process life).
    pub starts: Vec<(usize, Instant)>,
}

/// `keel` or `etcd`, from what `BIN --version` prints.
pub fn identify(binary: &Path) -> Result<System, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("keel Version") {
        Ok(System::Keel)
    } else if text.contains("etcd Version") {
        Ok(System::Etcd)
    } else {
        Err(format!(
            "{}: neither keel nor etcd (--version printed {:?})",
            binary.display(),
            text.trim()
        ))
    }
}

pub fn client_addr(slot: usize) -> SocketAddr {
    SocketAddr::from((net::member_ip(slot), CLIENT_PORT))
}

pub fn client_url(slot: usize) -> String {
    format!("http://{}", client_addr(slot))
}

pub fn peer_url(slot: usize) -> String {
    format!("http://{}:{PEER_PORT}", net::member_ip(slot))
}

impl Cluster {
    /// Lays out the member slots under `out` (data dirs, logs; the tmpfs slot gets its
    /// data dir on a tmpfs), creates their namespaces. Starts nothing.
    pub fn new(layout: Layout, out: &Path) -> Result<Cluster, String> {
        let Layout {
            binary,
            system,
            voters,
            slots,
            seed,
            settings,
            tmpfs,
        } = layout;
        let net = Net::create(slots)?;
        std::fs::create_dir_all(out.join("logs")).map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        for slot in 0..slots {
            let dir = out.join("data").join(format!("m{slot}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mount = match tmpfs {
                Some((s, bytes)) if s == slot => {
                    let opt = format!("size={bytes},mode=0700");
                    sys::run(&["mount", "-t", "tmpfs", "-o", &opt, "tmpfs", path_str(&dir)?])?;
                    Some(dir.clone())
                }
                _ => None,
            };
            members.push(Member {
                slot,
                name: format!("m{slot}"),
                data_dir: dir.join("data"),
                mount,
                log: out.join("logs").join(format!("m{slot}.log")),
                child: None,
                id: 0,
                incarnation: 0,
                lives: 0,
                paused: false,
                in_cluster: slot < voters,
                initial_cluster: String::new(),
                cluster_state: "new",
                env: Vec::new(),
                exit_expected: false,
                started_at: None,
            });
        }
        let initial: Vec<String> = (0..voters)
            .map(|s| format!("m{s}={}", peer_url(s)))
            .collect();
        for m in members.iter_mut().take(voters) {
            m.initial_cluster = initial.join(",");
        }
        Ok(Cluster {
            system,
            members,
            voters,
            binary,
            token: format!("keel-chaos-{seed}"),
            settings,
            net,
            out: out.to_path_buf(),
            exits: Vec::new(),
            base_env: Vec::new(),
            starts: Vec::new(),
        })
    }

    /// Appends a line to a slot's log (what the harness did to it, and when).
    pub fn note(&self, slot: usize, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[slot].log)
        {
            let _ = writeln!(f, "=== keel-chaos: {what}");
        }
    }

    fn member_command(&self, slot: usize, client_port: u16, peer_port: u16) -> Command {
        let m = &self.members[slot];
        let ip = net::member_ip(slot);
        let client = format!("http://{ip}:{client_port}");
        let peer = format!("http://{ip}:{peer_port}");
        // A stray process names itself on its own peer port, so its flags are valid and
        // only the data dir stands in its way.
        let initial_cluster = m.initial_cluster.replace(&peer_url(slot), &peer);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.member_ns(slot)])
            .arg(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", m.cluster_state])
            .args(["--initial-cluster-token", &self.token])
            .args([
                "--heartbeat-interval",
                &self.settings.heartbeat_ms.to_string(),
            ])
            .args(["--election-timeout", &self.settings.election_ms.to_string()])
            .args([
                "--snapshot-count",
                &self.settings.snapshot_count.to_string(),
            ])
            .args(&self.settings.extra_args);
        cmd
    }

    fn log_file(&self, slot: usize) -> Result<std::fs::File, String> {
        let path = &self.members[slot].log;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Starts the slot's process with the environment in `env` (empty: a clean start).
    pub fn start(&mut self, slot: usize, env: Vec<(String, String)>) -> Result<(), String> {
        assert!(self.members[slot].child.is_none(), "m{slot} already runs");
        let mut cmd = self.member_command(slot, CLIENT_PORT, PEER_PORT);
        for (k, v) in merge_env(&self.base_env, &env) {
            cmd.env(k, v);
        }
        let log = self.log_file(slot)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        sys::die_with_parent(&mut cmd);
        let m = &self.members[slot];
        let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let what = format!(
            "start m{slot} (incarnation {}, life {}, state {}) {}",
            m.incarnation,
            m.lives + 1,
            m.cluster_state,
            env_text.join(" ")
        );
        self.note(slot, &what);
        let child = cmd.spawn().map_err(|e| format!("spawn m{slot}: {e}"))?;
        self.starts.push((slot, Instant::now()));
        let m = &mut self.members[slot];
        m.child = Some(child);
        m.lives += 1;
        m.paused = false;
        m.env = env;
        m.exit_expected = false;
        m.started_at = Some(Instant::now());
        Ok(())
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self, slot: usize) {
        let Some(mut child) = self.members[slot].child.take() else {
            return;
        };
        let _ = sys::signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        self.members[slot].paused = false;
        self.note(slot, &format!("killed m{slot} (SIGKILL)"));
    }

    /// SIGTERM, waits up to `STOP_WAIT`, then SIGKILL. The exit status, if it stopped.
    pub fn stop(&mut self, slot: usize) -> Option<ExitStatus> {
        let mut child = self.members[slot].child.take()?;
        if self.members[slot].paused {
            let _ = sys::signal(child.id(), libc::SIGCONT);
        }
        let _ = sys::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = sys::signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    break None;
                }
            }
        };
        self.members[slot].paused = false;
        self.note(slot, &format!("stopped m{slot} (SIGTERM): {status:?}"));
        status
    }

    pub fn pause(&mut self, slot: usize) -> Result<(), String> {
        let pid = self.members[slot].pid().ok_or("not running")?;
        sys::signal(pid, libc::SIGSTOP)?;
        self.members[slot].paused = true;
        self.note(slot, &format!("paused m{slot} (SIGSTOP)"));
        Ok(())
    }

    pub fn resume(&mut self, slot: usize) {
        if let Some(pid) = self.members[slot].pid() {
            if self.members[slot].paused {
                let _ = sys::signal(pid, libc::SIGCONT);
                self.note(slot, &format!("resumed m{slot} (SIGCONT)"));
            }
        }
        self.members[slot].paused = false;
    }

    /// Reaps every process that exited by itself; records and returns them.
    pub fn reap(&mut self) -> Vec<(usize, ExitStatus, bool)> {
        let mut gone = Vec::new();
        for slot in 0..self.members.len() {
            let Some(child) = self.members[slot].child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.members[slot].child = None;
                self.members[slot].paused = false;
                let expected = self.members[slot].exit_expected;
                self.note(
                    slot,
                    &format!("m{slot} exited by itself: {status} (expected: {expected})"),
                );
                if !expected {
                    self.exits.push((slot, status, Instant::now()));
                }
                gone.push((slot, status, expected));
            }
        }
        gone
    }

    /// Removes the slot's data dir (the member must not run); the next start is a new
    /// member that joins the running cluster with `initial_cluster`.
    pub fn wipe(&mut self, slot: usize, initial_cluster: String) -> Result<(), String> {
        assert!(
            self.members[slot].child.is_none(),
            "wipe of running m{slot}"
        );
        let m = &mut self.members[slot];
        match std::fs::remove_dir_all(&m.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", m.data_dir.display())),
        }
        m.incarnation += 1;
        m.initial_cluster = initial_cluster;
        m.cluster_state = "existing";
        m.id = 0;
        self.note(slot, &format!("wiped m{slot}'s data dir"));
        Ok(())
    }

    /// A second process on slot `slot`'s data dir, on other ports: it must refuse to run
    /// (or at least never serve). Returns the child so the caller can judge and kill it.
    pub fn spawn_stray(&mut self, slot: usize) -> Result<Child, String> {
        let mut cmd = self.member_command(slot, STRAY_CLIENT_PORT, STRAY_PEER_PORT);
        let log = self.log_file(slot)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        sys::die_with_parent(&mut cmd);
        self.note(slot, &format!("stray second process on m{slot}'s data dir"));
        cmd.spawn()
            .map_err(|e| format!("spawn stray on m{slot}: {e}"))
    }

    /// Status of one member (a fresh connection, bounded).
    pub async fn status(slot: usize) -> Result<pb::StatusResponse, Failure> {
        Endpoint::new(client_addr(slot))
            .unary(
                "/etcdserverpb.Maintenance/Status",
                pb::StatusRequest {},
                STATUS_TIMEOUT,
            )
            .await
    }

    /// Slots whose process runs and is not paused.
    pub fn live(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.running() && !m.paused)
            .map(|m| m.slot)
            .collect()
    }

    /// The slot whose member ID is `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.members
            .iter()
            .find(|m| m.id == id && id != 0)
            .map(|m| m.slot)
    }

    /// The leader as the live members see it: the slot every answering member names,
    /// if they agree (`None` while electing or split).
    pub async fn leader(&self) -> Option<usize> {
        let mut named = None;
        for slot in self.live() {
            if !self.members[slot].in_cluster {
                continue;
            }
            match Self::status(slot).await {
                Ok(s) if s.leader != 0 => match named {
                    None => named = Some(s.leader),
                    Some(l) if l == s.leader => {}
                    Some(_) => return None,
                },
                _ => {}
            }
        }
        named.and_then(|id| self.slot_of(id))
    }

    /// The member IDs the cluster lists, asked through any live member but `not`.
    pub async fn member_ids(&self, not: usize) -> Result<Vec<u64>, String> {
        let mut last = String::from("no live member");
        for slot in self.live().into_iter().filter(|&s| s != not) {
            let r: Result<pb::MemberListResponse, _> = Endpoint::new(client_addr(slot))
                .unary(
                    "/etcdserverpb.Cluster/MemberList",
                    pb::MemberListRequest { linearizable: true },
                    STATUS_TIMEOUT * 4,
                )
                .await;
            match r {
                Ok(list) => return Ok(list.members.iter().map(|m| m.id).collect()),
                Err(e) => last = format!("m{slot}: {e}"),
            }
        }
        Err(format!("MemberList: {last}"))
    }

    /// Learns member IDs from MemberList (through any live member).
    pub async fn learn_ids(&mut self) -> Result<(), String> {
        let mut last = String::from("no live member");
        for slot in self.live() {
            let r: Result<pb::MemberListResponse, _> = Endpoint::new(client_addr(slot))
                .unary(
                    "/etcdserverpb.Cluster/MemberList",
                    pb::MemberListRequest {
                        linearizable: false,
                    },
                    STATUS_TIMEOUT * 4,
                )
                .await;
            match r {
                Ok(list) => {
                    for m in &list.members {
                        if let Some(s) = (0..self.members.len())
                            .find(|&s| m.peer_ur_ls.iter().any(|u| *u == peer_url(s)))
                        {
                            self.members[s].id = m.id;
                        }
                    }
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("MemberList: {last}"))
    }

    /// Waits until every slot in the cluster runs and all of them name one leader.
    pub async fn wait_healthy(&mut self, max: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + max;
        loop {
            let mut leaders = Vec::new();
            for m in self.members.iter().filter(|m| m.in_cluster) {
                leaders.push(match Self::status(m.slot).await {
                    Ok(s) => Some(s.leader),
                    Err(_) => None,
                });
            }
            if let Some(Some(l)) = leaders.first() {
                if *l != 0 && leaders.iter().all(|x| *x == Some(*l)) {
                    if self.slot_of(*l).is_none() {
                        let _ = self.learn_ids().await;
                    }
                    if let Some(slot) = self.slot_of(*l) {
                        return Ok(slot);
                    }
                }
            }
            let seen = format!("{leaders:x?}");
            if Instant::now() >= deadline {
                return Err(format!(
                    "the cluster did not agree on a leader within {max:?} (leader IDs seen by each member: {seen})"
                ));
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_path(&self, slot: usize) -> &Path {
        &self.members[slot].log
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Kills every process, unmounts the tmpfs, removes the namespaces.
    pub fn shutdown(&mut self) {
        for slot in 0..self.members.len() {
            if self.members[slot].running() {
                self.kill(slot);
            }
        }
        for m in &self.members {
            if let Some(mount) = &m.mount {
                let _ = sys::run(&["umount", "-l", path_str(mount).unwrap_or("")]);
            }
        }
        self.net.destroy();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `base` with `extra` on top; the lists that take several values (failpoints,
/// preloads) are joined rather than replaced.
fn merge_env(base: &[(String, String)], extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base.to_vec();
    for (k, v) in extra {
        match out.iter_mut().find(|(bk, _)| bk == k) {
            Some((_, bv)) if k == "KEEL_FAILPOINTS" => *bv = format!("{bv},{v}"),
            Some((_, bv)) if k == "LD_PRELOAD" => *bv = format!("{bv} {v}"),
            Some((_, bv)) => *bv = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{}: not UTF-8", p.display()))
}
