//! Test harness: starts the real server binary on free loopback ports with etcd's flags,
//! waits until it says it is ready, and drives it with etcdctl.
//!
//! The binary is `keel` (this package's) unless `KEEL_TEST_SERVER` names another one:
//! `KEEL_TEST_SERVER=/usr/bin/etcd cargo test --test it etcdctl::` runs the same tests against
//! Debian's etcd 3.4, which is how their expectations were checked. Only processes started
//! here are ever signalled, by their own PID.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An etcd-client connection to `s`.
pub async fn connect(s: &Server) -> etcd_client::Client {
    etcd_client::Client::connect([s.endpoint()], None)
        .await
        .expect("connect")
}

/// The gRPC code and message of a client error that must be a gRPC status.
#[track_caller]
pub fn grpc_status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

pub const READY_TIME_MAX: Duration = Duration::from_secs(20);

/// Resident memory of process `pid` in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    status_mib(pid, "VmRSS:")
}

/// Resident anonymous memory of process `pid` in MiB (not the file pages it maps).
pub fn rss_anon_mib(pid: u32) -> u64 {
    status_mib(pid, "RssAnon:")
}

fn status_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// A seeded xorshift generator: the load and differential tests replay the same ops.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The tokio runtime the client tests drive their client crates on (one thread).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn server_binary() -> PathBuf {
    std::env::var_os("KEEL_TEST_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keel")))
}

/// True when the tests run against Keel (some check Keel-only behaviour).
pub fn is_keel() -> bool {
    std::env::var_os("KEEL_TEST_SERVER").is_none()
}

pub use keel::testing::free_port;

pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    extra: Vec<String>,
    starts: u32,
    /// Run in `dir` with `--data-dir data` (relative), as a user typing a bare name would.
    relative: bool,
    /// The whole flag list, when the caller builds it (cluster members); else the
    /// single-member flags of `args()`.
    explicit: Option<Vec<String>>,
    /// The scheme of the client URL (`http`, or `https` for a TLS member).
    pub client_scheme: String,
    /// The scheme of the peer URL (`http`, `https`, `unix`, `unixs`).
    pub peer_scheme: String,
    /// Flags every etcdctl run against this server gets (TLS: `--cacert`, `--cert`, ...).
    pub ctl_flags: Vec<String>,
}

impl Server {
    /// A fresh member with `extra` flags appended to the usual ones.
    pub fn start(tag: &str, extra: &[&str]) -> Server {
        Server::start_with(tag, extra, false)
    }

    /// Like `start`, but the server's working directory is its temp dir and the data dir
    /// is given relative to it.
    pub fn start_relative(tag: &str) -> Server {
        Server::start_with(tag, &[], true)
    }

    fn start_with(tag: &str, extra: &[&str], relative: bool) -> Server {
        let mut s = Server::unstarted(tag);
        s.extra = extra.iter().map(|s| s.to_string()).collect();
        s.relative = relative;
        s.spawn_and_wait();
        s
    }

    /// A fresh member serving clients on an `https://` URL (its TLS flags in `extra`);
    /// etcdctl runs against it get `ctl_flags` (e.g. `--cacert`, `--cert`, `--key`).
    pub fn start_https(tag: &str, ctl_flags: &[&str], extra: &[&str]) -> Server {
        let mut s = Server::unstarted(tag);
        s.client_scheme = "https".into();
        s.ctl_flags = ctl_flags.iter().map(|s| s.to_string()).collect();
        s.set_extra(extra);
        s.spawn_and_wait();
        s
    }

    /// The flags appended to the single-member ones on every later start.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// A member with its temp dir and free ports, not started: the caller sets its flags
    /// (`set_args`), then `spawn`s it and `wait_ready`s.
    pub fn unstarted(tag: &str) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "keel-it-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Server {
            child: None,
            data_dir: dir.join("data"),
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            extra: Vec::new(),
            starts: 0,
            relative: false,
            explicit: None,
            client_scheme: "http".into(),
            peer_scheme: "http".into(),
            ctl_flags: Vec::new(),
        }
    }

    /// Every later start uses exactly `args`.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.explicit = Some(args);
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    /// What etcdctl's `--endpoints` gets: `127.0.0.1:port`, or the URL when not http.
    pub fn ctl_endpoint(&self) -> String {
        if self.client_scheme == "http" {
            self.endpoint()
        } else {
            self.client_url()
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn args(&self) -> Vec<String> {
        if let Some(a) = &self.explicit {
            return a.clone();
        }
        let data = if self.relative {
            "data"
        } else {
            self.data_dir.to_str().unwrap()
        };
        let cluster = format!("it={}", self.peer_url());
        member_args(self, "it", data, &cluster, "new", "keel-it", &self.extra)
    }

    /// Starts the binary and returns its exit status if it stops within `wait`.
    pub fn run_expecting_exit(&mut self, wait: Duration) -> Option<(i32, String)> {
        self.spawn();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Some((status.code().unwrap_or(-1), self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the binary without waiting for it.
    pub fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(server_binary())
            .current_dir(&self.dir)
            .args(self.args())
            .env_remove("ETCD_NAME")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the server binary");
        self.child = Some(child);
    }

    fn spawn_and_wait(&mut self) {
        self.spawn();
        self.wait_ready(READY_TIME_MAX);
    }

    /// Waits (at most `max`) until the started server says it serves clients and accepts
    /// connections; panics with its log if it exits or is not ready in time.
    pub fn wait_ready(&mut self, max: Duration) {
        let deadline = Instant::now() + max;
        loop {
            if self.log().contains("ready to serve client requests")
                && std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status} before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("server ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `max` for the running server to exit by itself: its exit code, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, max: Duration) -> Option<i32> {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill before restart");
        self.spawn_and_wait();
    }

    /// Runs etcdctl (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Ctl {
        self.etcdctl_stdin(args, "")
    }

    /// Starts etcdctl (API v3) against this server without waiting for it: for the
    /// commands that keep running (watch, lock, elect, lease keep-alive).
    pub fn etcdctl_spawn(&self, args: &[&str]) -> Spawned {
        let mut all = vec![format!("--endpoints={}", self.ctl_endpoint())];
        all.extend(self.ctl_flags.iter().cloned());
        all.extend(args.iter().map(|s| s.to_string()));
        etcdctl_bare_spawn(&all.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Ctl {
        let ep = format!("--endpoints={}", self.ctl_endpoint());
        let mut all: Vec<&str> = vec![&ep];
        all.extend(self.ctl_flags.iter().map(String::as_str));
        all.extend_from_slice(args);
        etcdctl_bare_stdin(&all, stdin)
    }
}

/// Starts etcdctl (API v3) with `args` alone, without waiting for it.
pub fn etcdctl_bare_spawn(args: &[&str]) -> Spawned {
    let mut child = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (ci/deps.sh installs Debian's etcd-client)");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    Spawned { child, out, err }
}

/// Runs etcdctl (API v3) with `args` alone, `stdin` written to it.
pub fn etcdctl_bare_stdin(args: &[&str], stdin: &str) -> Ctl {
    let mut child = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (ci/deps.sh installs Debian's etcd-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Ctl::from(child.wait_with_output().unwrap())
}

/// Runs etcdctl (API v3) with `args` alone (the caller gives `--endpoints` and any TLS
/// flags).
pub fn etcdctl_bare(args: &[&str]) -> Ctl {
    let out = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl is installed (ci/deps.sh installs Debian's etcd-client)");
    Ctl::from(out)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("server dir kept: {}", self.dir.display());
        }
    }
}

/// A thread that appends everything `from` yields to the returned string.
fn collect(mut from: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let to = sink.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            to.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    sink
}

/// A running etcdctl child (`Server::etcdctl_spawn`) whose stdout and stderr threads
/// collect. Dropping it kills it, by its own PID.
pub struct Spawned {
    pub child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

/// How long a `Spawned` wait lasts at most unless told otherwise.
pub const SPAWNED_WAIT: Duration = Duration::from_secs(10);

impl Spawned {
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits (`wait` at most) until stdout contains `text`; returns stdout.
    #[track_caller]
    pub fn wait_for(&self, text: &str, wait: Duration) -> String {
        self.wait_until(wait, &format!("no {text:?}"), |o| o.contains(text))
    }

    /// Waits (`wait` at most) until stdout has `n` lines; returns stdout.
    #[track_caller]
    pub fn wait_lines(&self, n: usize, wait: Duration) -> String {
        self.wait_until(wait, &format!("no {n} lines"), |o| {
            o.matches('\n').count() >= n
        })
    }

    #[track_caller]
    fn wait_until(&self, wait: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let o = self.stdout();
            if done(&o) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl printed {what} in {wait:?}: {o:?}, stderr {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `sig` (a name for kill(1)) to this child only.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// kill -9 of this child, by its PID; returns once it is gone.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits (`SPAWNED_WAIT` at most) for the child to exit.
    #[track_caller]
    pub fn exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + SPAWNED_WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl did not exit: {:?} {:?}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `line` to the child's stdin (etcdctl watch -i).
    pub fn stdin(&mut self, line: &str) {
        let i = self.child.stdin.as_mut().unwrap();
        i.write_all(line.as_bytes()).unwrap();
        i.flush().unwrap();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Ctl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ctl {
    fn from(o: Output) -> Ctl {
        Ctl {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Ctl {
    #[track_caller]
    pub fn expect_ok(&self, stdout: &str) {
        assert!(self.ok, "etcdctl failed: {self:?}");
        assert_eq!(self.stdout, stdout, "stderr: {}", self.stderr);
    }

    /// Fails with `message` on stderr, as etcdctl prints server errors.
    #[track_caller]
    pub fn expect_err(&self, message: &str) {
        assert!(!self.ok, "etcdctl succeeded: {self:?}");
        assert!(
            self.stderr.contains(message),
            "stderr lacks {message:?}: {}",
            self.stderr
        );
    }
}

/// Every `*.wal` under `dir`, oldest first.
pub fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Flags that make elections quick on loopback while tolerating a loaded 2-core machine
/// (etcd's defaults are 100 ms and 1000 ms).
pub const FAST_ELECTIONS: [&str; 4] = ["--heartbeat-interval", "100", "--election-timeout", "1000"];

/// How long a cluster test waits for anything that must eventually happen (ready, a
/// leader, a member catching up) before failing.
pub const LIVENESS: Duration = Duration::from_secs(30);

/// N members `m0..` on loopback, started with etcd's static-bootstrap flags
/// (`--initial-cluster m0=…,m1=… --initial-cluster-state new`). Members added at runtime
/// (`add_member`) join with `--initial-cluster-state existing`. Dropping the cluster kills
/// every member it started, by PID.
pub struct Cluster {
    pub members: Vec<Server>,
    /// `m0`, `m1`, ... by index.
    pub names: Vec<String>,
    /// Member IDs by index, as the servers report them (`MemberList`).
    pub ids: Vec<u64>,
    pub token: String,
    /// Flags every member gets after the bootstrap ones.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` members with `extra` flags each, then waits until every one is ready.
    pub fn start(tag: &str, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_peer_scheme(tag, n, extra, "http")
    }

    /// Like `start`, with peer URLs of `peer_scheme` (`https` with the peer TLS flags in
    /// `extra`); clients still use plaintext.
    pub fn start_peer_scheme(tag: &str, n: usize, extra: &[&str], peer_scheme: &str) -> Cluster {
        let token = format!("keel-it-{tag}");
        let mut members: Vec<Server> = (0..n)
            .map(|i| {
                let mut m = Server::unstarted(&format!("{tag}-m{i}"));
                m.peer_scheme = peer_scheme.to_string();
                m
            })
            .collect();
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&members)
            .map(|(name, m)| format!("{name}={}", m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for (name, m) in names.iter().zip(members.iter_mut()) {
            let data = m.data_dir.to_str().unwrap().to_string();
            let args = member_args(m, name, &data, &initial_cluster, "new", &token, &extra);
            m.set_args(args);
        }
        // Every member first: none is ready before a quorum is up.
        for m in members.iter_mut() {
            m.spawn();
        }
        for m in members.iter_mut() {
            m.wait_ready(LIVENESS);
        }
        let mut c = Cluster {
            members,
            names,
            ids: Vec::new(),
            token,
            extra,
        };
        let list = runtime().block_on(async {
            let mut cl = c.client(0).await;
            cl.member_list().await.expect("member list")
        });
        c.ids = c
            .members
            .iter()
            .map(|m| {
                list.members()
                    .iter()
                    .find(|x| x.peer_urls() == [m.peer_url()])
                    .unwrap_or_else(|| panic!("{} not in {list:?}", m.peer_url()))
                    .id()
            })
            .collect();
        c
    }

    pub fn member(&mut self, i: usize) -> &mut Server {
        &mut self.members[i]
    }

    /// `127.0.0.1:<client port>` of every member, by index.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// The endpoints of `members`, comma-separated, for etcdctl's `--endpoints`.
    pub fn endpoints_flag(&self, members: &[usize]) -> String {
        let e: Vec<String> = members
            .iter()
            .map(|&i| self.members[i].endpoint())
            .collect();
        format!("--endpoints={}", e.join(","))
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&x| x == id)
    }

    /// Indices of the members whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// A client of member `i` alone, with bounded connect and request times.
    pub async fn client(&self, i: usize) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(15));
        etcd_client::Client::connect([self.members[i].endpoint()], Some(opts))
            .await
            .expect("connect")
    }

    pub async fn status(
        &self,
        i: usize,
    ) -> Result<etcd_client::StatusResponse, etcd_client::Error> {
        self.client(i).await.status().await
    }

    /// Waits until every member in `among` names the same leader, one of `among`, and
    /// returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + LIVENESS;
        let mut last = Vec::new();
        loop {
            last.clear();
            for &i in among {
                last.push(self.status(i).await.map(|s| s.leader()).ok());
            }
            if let Some(Some(l)) = last.first() {
                if *l != 0 && last.iter().all(|x| *x == Some(*l)) {
                    if let Some(li) = self.index_of(*l).filter(|li| among.contains(li)) {
                        return li;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no common leader among members {among:?} in {LIVENESS:?}; last seen {last:?} (ids {:?})",
                self.ids
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every member in `among` reports the same revision and raft applied
    /// index twice in a row (no writes may be running), and returns that revision.
    pub async fn wait_caught_up(&self, among: &[usize]) -> i64 {
        let deadline = Instant::now() + LIVENESS;
        let mut prev = None;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                seen.push(self.status(i).await.ok().map(|s| {
                    (
                        s.header().map_or(0, |h| h.revision()),
                        s.raft_applied_index(),
                    )
                }));
            }
            let same = seen.iter().all(|s| s.is_some() && *s == seen[0]);
            if same && prev.as_ref() == Some(&seen) {
                return seen[0].unwrap().0;
            }
            assert!(
                Instant::now() < deadline,
                "members {among:?} did not converge in {LIVENESS:?}: (revision, applied index) {seen:?}"
            );
            prev = Some(seen);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// HashKV at `rev` on every member in `among`; asserts they are all equal.
    pub async fn assert_hash_kv_equal(&self, among: &[usize], rev: i64) -> u32 {
        let mut hashes = Vec::new();
        for &i in among {
            let h = self
                .client(i)
                .await
                .hash_kv(rev)
                .await
                .unwrap_or_else(|e| panic!("hash_kv({rev}) on m{i}: {e}"));
            hashes.push((i, h.hash(), h.header().map_or(0, |h| h.revision())));
        }
        assert!(
            hashes.iter().all(|h| h.1 == hashes[0].1),
            "HashKV at revision {rev} differs: (member, hash, revision) {hashes:?}"
        );
        hashes[0].1
    }

    /// Starts a member already added with `etcdctl member add` as `name`, joining with
    /// `--initial-cluster-state existing` and the `initial_cluster` etcdctl printed, and
    /// waits until it is ready. Returns its index.
    pub fn add_member(
        &mut self,
        server: Server,
        name: &str,
        id: u64,
        initial_cluster: &str,
    ) -> usize {
        let mut m = server;
        let data = m.data_dir.to_str().unwrap().to_string();
        let args = member_args(
            &m,
            name,
            &data,
            initial_cluster,
            "existing",
            &self.token,
            &self.extra,
        );
        m.set_args(args);
        m.spawn();
        m.wait_ready(LIVENESS);
        self.members.push(m);
        self.names.push(name.to_string());
        self.ids.push(id);
        self.members.len() - 1
    }
}

/// etcd's flags for one member on `m`'s ports and data dir.
fn member_args(
    m: &Server,
    name: &str,
    data_dir: &str,
    initial_cluster: &str,
    state: &str,
    token: &str,
    extra: &[String],
) -> Vec<String> {
    let (client, peer) = (m.client_url(), m.peer_url());
    let mut a: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        data_dir,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        state,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().cloned());
    a
}

/// A `keel grpc-proxy start` in front of `endpoints`, on a free loopback port; `extra`
/// flags appended. Dropping it kills it, by its PID.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy and waits until it says it serves.
    #[track_caller]
    pub fn start(_tag: &str, endpoints: &[&str], extra: &[&str]) -> Proxy {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("grpc-proxy")
            .arg("start")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel grpc-proxy");
        let log = collect(child.stderr.take().unwrap());
        let _out = collect(child.stdout.take().unwrap());
        let deadline = Instant::now() + READY_TIME_MAX;
        while !log.lock().unwrap().contains("started gRPC proxy") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("proxy exited ({status}): {}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "proxy not ready: {}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy { child, port, log }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// etcdctl (API v3) against the proxy.
    pub fn etcdctl(&self, args: &[&str]) -> Ctl {
        let ep = format!("--endpoints={}", self.endpoint());
        let mut all = vec![ep.as_str(), "--command-timeout=10s"];
        all.extend_from_slice(args);
        etcdctl_bare(&all)
    }

    /// `etcdctl txn` against the proxy with `stdin`; its stdout.
    pub fn etcdctl_txn(&self, stdin: &str) -> String {
        let ep = format!("--endpoints={}", self.endpoint());
        etcdctl_bare_stdin(&[&ep, "txn"], stdin).stdout
    }

    /// GET `path` on the proxy's port (HTTP/1.1), the body.
    pub fn http_get(&self, path: &str) -> String {
        http_get(self.port, path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`; the response body (empty on failure).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of an unlabelled Prometheus sample `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
