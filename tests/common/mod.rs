//! Test harness: starts the real server binary on free loopback ports with etcd's flags,
//! waits until it says it is ready, and drives it with etcdctl.
//!
//! The binary is `keel` (this package's) unless `KEEL_TEST_SERVER` names another one:
//! `KEEL_TEST_SERVER=/usr/bin/etcd cargo test --test etcdctl` runs the same tests against
//! Debian's etcd 3.4, which is how their expectations were checked. Only processes started
//! here are ever signalled, by their own PID.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
        let dir = std::env::temp_dir().join(format!(
            "keel-it-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Server {
            child: None,
            data_dir: dir.join("data"),
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
            relative,
        };
        s.spawn_and_wait();
        s
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut a: Vec<String> = [
            "--name",
            "it",
            "--data-dir",
            if self.relative {
                "data"
            } else {
                self.data_dir.to_str().unwrap()
            },
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("it={peer}"),
            "--initial-cluster-token",
            "keel-it",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.extra.iter().cloned());
        a
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

    fn spawn(&mut self) {
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
        let deadline = Instant::now() + READY_TIME_MAX;
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

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill before restart");
        self.spawn_and_wait();
    }

    /// Runs etcdctl (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Ctl {
        self.etcdctl_stdin(args, "")
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Ctl {
        let mut child = Command::new("etcdctl")
            .arg(format!("--endpoints={}", self.endpoint()))
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
        let out = child.wait_with_output().unwrap();
        Ctl::from(out)
    }
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
