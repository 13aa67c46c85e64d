//! Multi-member clusters on loopback for `compare` and `failover`: each member started
//! with etcd's clustering flags, the leader found through Maintenance.Status, members
//! killed (SIGKILL, by PID) and restarted on their data.
//!
//! A member is started as
//! ```text
//! BIN --name SYS-I --data-dir OUT/data/SYS-I
//!     --listen-client-urls C --advertise-client-urls C
//!     --listen-peer-urls P --initial-advertise-peer-urls P
//!     --initial-cluster SYS-0=P0,SYS-1=P1,SYS-2=P2 --initial-cluster-token keel-bench-SYS
//!     --initial-cluster-state new
//!     --heartbeat-interval H --election-timeout E --snapshot-count S
//! ```
//! with every port taken fresh from the kernel. The cluster counts as up when every
//! member answers Status with the same non-zero `leader`, and that leader is one of the
//! members' own `header.member_id`.

use crate::grpc::{self, CallError, Conn};
use keel::pb::etcdserverpb as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raft timing given to every member of either system (etcd's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
}

impl Timing {
    pub fn from_flags(flags: &crate::util::Flags) -> Timing {
        Timing {
            heartbeat_ms: flags.u64("heartbeat-interval", 100),
            election_ms: flags.u64("election-timeout", 1000),
            snapshot_count: flags.u64("snapshot-count", 100_000),
        }
    }

    /// How long a fresh cluster (or one that lost its leader) may take to elect one:
    /// ten election timeouts, at least 10 s (a loaded 2-core box, debug builds).
    pub fn leader_deadline(&self) -> Duration {
        Duration::from_millis((self.election_ms * 10).max(10_000))
    }
}

struct Member {
    name: String,
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    log: PathBuf,
}

pub struct Cluster {
    pub system: &'static str,
    binary: String,
    data: PathBuf,
    out: PathBuf,
    initial_cluster: String,
    timing: Timing,
    members: Vec<Member>,
}

/// Distinct free loopback ports (the kernel's choice; kept distinct among themselves).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Cluster {
    /// Starts `n` members of `system` and waits until each accepts client connections
    /// (not for a leader: see `wait_leader`).
    pub fn start(
        system: &'static str,
        binary: &str,
        out: &Path,
        n: usize,
        timing: Timing,
    ) -> Result<Cluster, String> {
        let ports = free_ports(2 * n);
        let data = out.join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("{system}-{i}");
                let _ = std::fs::remove_dir_all(data.join(&name));
                Member {
                    log: out.join(format!("{name}.log")),
                    name,
                    child: None,
                    client: SocketAddr::from(([127, 0, 0, 1], ports[2 * i])),
                    peer: SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1])),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            system,
            binary: binary.to_string(),
            data,
            out: out.to_path_buf(),
            initial_cluster,
            timing,
            members,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_listening(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let t = self.timing;
        let m = &mut self.members[i];
        // Appends: a restarted member's log follows its first life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let c = format!("http://{}", m.client);
        let p = format!("http://{}", m.peer);
        let data = self.data.join(&m.name);
        let child = member_command(&self.binary, &m.name, &data, &c, &p, &self.initial_cluster)
            .args([
                "--initial-cluster-token",
                &format!("keel-bench-{}", self.system),
            ])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", &t.heartbeat_ms.to_string()])
            .args(["--election-timeout", &t.election_ms.to_string()])
            .args(["--snapshot-count", &t.snapshot_count.to_string()])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary))?;
        m.child = Some(child);
        Ok(())
    }

    /// Until member `i` accepts TCP connections on its client URL, or fails if it exits.
    fn wait_listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let m = &mut self.members[i];
        loop {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "{} exited ({status}) at start: {}",
                    m.name,
                    log_tail(&m.log)
                ));
            }
            if std::net::TcpStream::connect(m.client).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not listening on {} after 20 s: see {}",
                    m.name,
                    m.client,
                    m.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Client endpoints of the running members, in member order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn endpoint(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// SIGKILLs member `i` (its PID, a process this cluster started) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Member `i`'s process, to kill at a moment of the caller's choosing (then `restart`).
    pub fn take_child(&mut self, i: usize) -> Option<Child> {
        self.members[i].child.take()
    }

    /// Starts member `i` again on its data dir, with its first flags.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill9(i);
        self.spawn(i)?;
        self.wait_listening(i)
    }

    /// Waits until every running member reports the same leader, one of them; returns
    /// the leader's index among the members. A clear error (what each member last said,
    /// where its log is) instead of a hang when none is elected within the deadline.
    pub fn wait_leader(&mut self) -> Result<usize, String> {
        let deadline = self.timing.leader_deadline();
        let up: Vec<usize> = (0..self.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        let addrs: Vec<SocketAddr> = up.iter().map(|&i| self.members[i].client).collect();
        let last = keel::runtime::block_on(async move {
            let mut pollers: Vec<Poller> = addrs.into_iter().map(Poller::new).collect();
            let start = Instant::now();
            loop {
                let mut seen = Vec::new();
                for p in &mut pollers {
                    seen.push(p.status().await);
                }
                if let Some(leader) = agreed_leader(&seen) {
                    return Ok(leader);
                }
                if start.elapsed() > deadline {
                    return Err(seen);
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        });
        match last {
            Ok(leader_id) => Ok(up[leader_id]),
            Err(seen) => Err(format!(
                "{}: no leader agreed by {} members within {:.0} s ({}); logs {}",
                self.system,
                up.len(),
                deadline.as_secs_f64(),
                describe(&seen),
                self.out.join(format!("{}-*.log", self.system)).display()
            )),
        }
    }

    /// Member `i`'s Raft member ID (from its Status header).
    pub fn member_id(&self, i: usize) -> Result<u64, String> {
        let addr = self.members[i].client;
        keel::runtime::block_on(async move { Poller::new(addr).status().await })
            .map(|s| s.header.map_or(0, |h| h.member_id))
            .map_err(|e| e.to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

/// The index of the member every answer names as leader, when all answered and agree.
fn agreed_leader(seen: &[Result<pb::StatusResponse, CallError>]) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leader = None;
    for s in seen {
        let s = s.as_ref().ok()?;
        if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
            return None;
        }
        leader = Some(s.leader);
        ids.push(s.header.as_ref().map_or(0, |h| h.member_id));
    }
    ids.iter().position(|&id| Some(id) == leader)
}

/// "leader 0 / leader 0 / transport: ..." for an error message.
fn describe(seen: &[Result<pb::StatusResponse, CallError>]) -> String {
    seen.iter()
        .map(|s| match s {
            Ok(s) => format!(
                "{:x} says leader {:x}",
                s.header.as_ref().map_or(0, |h| h.member_id),
                s.leader
            ),
            Err(e) => e.to_string().chars().take(60).collect(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Maintenance.Status on one member over a kept connection (reopened after an error),
/// each call bounded by a timeout.
pub struct Poller {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Poller {
    pub fn new(addr: SocketAddr) -> Poller {
        Poller { addr, conn: None }
    }

    pub async fn status(&mut self) -> Result<pb::StatusResponse, CallError> {
        let addr = self.addr;
        let conn = self.conn.take();
        let call = async move {
            let conn = match conn {
                Some(c) => c,
                None => grpc::connect(addr).await?,
            };
            let r = grpc::unary(
                &conn,
                "/etcdserverpb.Maintenance/Status",
                &pb::StatusRequest {},
            )
            .await?;
            Ok((conn, r))
        };
        let res = glommio::timer::timeout(Duration::from_millis(500), async { Ok(call.await) })
            .await
            .unwrap_or_else(|_| Err(CallError::Transport("Status timed out (500 ms)".into())));
        res.map(|(conn, r)| {
            self.conn = Some(conn);
            r
        })
    }
}

/// A server started with etcd's flags for one member: name, data dir, client and peer
/// URLs (listen = advertise) and the initial cluster; the caller adds the rest.
pub fn member_command(
    binary: &str,
    name: &str,
    data: &std::path::Path,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["--name", name])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", initial_cluster]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, leader: u64) -> Result<pb::StatusResponse, CallError> {
        Ok(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                member_id: id,
                ..Default::default()
            }),
            leader,
            ..Default::default()
        })
    }

    #[test]
    fn a_leader_counts_when_every_member_names_the_same_one_of_them() {
        assert_eq!(
            agreed_leader(&[status(1, 2), status(2, 2), status(3, 2)]),
            Some(1)
        );
        // Not yet elected, split views, a member that did not answer, a leader that is
        // not among the answering members (the one just killed).
        assert_eq!(agreed_leader(&[status(1, 0), status(2, 0)]), None);
        assert_eq!(agreed_leader(&[status(1, 1), status(2, 2)]), None);
        let down = Err(CallError::Transport("refused".into()));
        assert_eq!(agreed_leader(&[status(1, 1), down]), None);
        assert_eq!(agreed_leader(&[status(1, 9), status(2, 9)]), None);
    }
}
