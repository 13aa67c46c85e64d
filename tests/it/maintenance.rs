//! Maintenance through real clients: snapshots between Keel and etcd 3.4 both ways
//! (`etcdctl snapshot save/status/restore`, `keel snapshot restore/status`, Keel booting on
//! a dir etcdctl restored), bad snapshot files, a 3-member cluster restored from one
//! snapshot, the backend quota and its NOSPACE alarm (one member and three), defrag under a
//! write load, and the Maintenance calls through the etcd-client crate.
//!
//! Real etcd 3.4 (`/usr/bin/etcd`) and etcdctl (`/usr/bin/etcdctl`) are required: the tests
//! that need them fail when they are missing. Servers run on loopback with free ports; only
//! processes started here are signalled, by their own PID. The tests that do not name a
//! binary run `common::server_binary()`, so `KEEL_TEST_SERVER=/usr/bin/etcd` runs them
//! against etcd (the restores then use `etcdctl snapshot restore`).

use crate::common;

use common::{etcdctl_bare, grpc_status, runtime, Ctl, Server, FAST_ELECTIONS, LIVENESS};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, GetOptions, Txn, TxnOp};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const ROOT: &str = "--user=root:rootpw";
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// The backend quota of the NOSPACE tests: an empty db (Keel's or etcd's) is well below it,
/// a few dozen 4 KiB values reach it.
const QUOTA_BYTES: &str = "262144";

/// Real etcd 3.4; the test fails (not skips) without it.
fn etcd_bin() -> PathBuf {
    assert!(
        Path::new(ETCD).exists() && Path::new(ETCDCTL).exists(),
        "{ETCD} and {ETCDCTL} (Debian's etcd 3.4) are required by this test"
    );
    PathBuf::from(ETCD)
}

fn keel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// Runs `keel <args>` (the offline tools) to completion.
fn keel_tool(args: &[&str]) -> Ctl {
    let out = Command::new(keel_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run keel");
    Ctl::from(out)
}

/// A member process of one binary, on its own temp dir and free loopback ports, started
/// with etcd's bootstrap flags. Dropping it kills the process it started, by PID.
struct Node {
    bin: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    starts: u32,
    /// Flags every etcdctl run against this node gets (`--user` once auth is on).
    ctl_flags: Vec<String>,
}

impl Node {
    fn new(tag: &str, bin: PathBuf) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "keel-mt-{tag}-{}-{}",
            std::process::id(),
            common::free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            bin,
            data_dir: dir.join("data"),
            dir,
            client_port: common::free_port(),
            peer_port: common::free_port(),
            args: Vec::new(),
            child: None,
            starts: 0,
            ctl_flags: Vec::new(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Every later start is member `name` of `initial_cluster` (state new) with `extra`.
    fn bootstrap(&mut self, name: &str, initial_cluster: &str, token: &str, extra: &[&str]) {
        let client = format!("http://{}", self.endpoint());
        let peer = self.peer_url();
        let data = self.data_dir.to_str().unwrap().to_string();
        let mut a: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &data,
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
            "new",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        self.args = a;
    }

    /// A single-member bootstrap as `name`.
    fn single(&mut self, name: &str, extra: &[&str]) {
        let cluster = format!("{name}={}", self.peer_url());
        self.bootstrap(name, &cluster, &format!("keel-mt-{name}"), extra);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(&self.args)
            .env_remove("ETCD_NAME")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits (at most `max`) until the server says it serves clients and accepts
    /// connections; panics with its log if it exits first or is late.
    fn wait_ready(&mut self, max: Duration) {
        let deadline = Instant::now() + max;
        loop {
            if self.log().contains("ready to serve client requests")
                && std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited with {st} before ready:\n{}",
                    self.bin.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in {max:?}:\n{}",
                self.bin.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(&mut self) {
        self.spawn();
        self.wait_ready(LIVENESS);
    }

    /// SIGTERM to this node's process, then a bounded wait for it to exit.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} ignored SIGTERM for 10 s", self.bin.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// etcdctl (API v3) against this node alone.
    fn ctl(&self, args: &[&str]) -> Ctl {
        let mut all = vec![format!("--endpoints={}", self.endpoint())];
        all.extend(self.ctl_flags.iter().cloned());
        all.extend(args.iter().map(|s| s.to_string()));
        etcdctl_bare(&all.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    }

    /// etcdctl that must succeed; its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let c = self.ctl(args);
        assert!(c.ok, "etcdctl {args:?} failed: {c:?}");
        c.stdout
    }

    /// A client of this node alone, with bounded connect and request times.
    async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(15));
        etcd_client::Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("connect")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node dir kept: {}", self.dir.display());
        }
    }
}

/// The raw value of `"field":` in etcdctl's JSON (the first one), up to `,` or `}`.
#[track_caller]
fn json_field<'a>(json: &'a str, field: &str) -> &'a str {
    let pat = format!("\"{field}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {pat} in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

#[track_caller]
fn json_u64(json: &str, field: &str) -> u64 {
    json_field(json, field)
        .parse()
        .unwrap_or_else(|e| panic!("{field} in {json}: {e}"))
}

/// `dbSize` as `etcdctl endpoint status -w json` reports it.
fn db_size(n: &Node) -> u64 {
    json_u64(&n.ok(&["endpoint", "status", "-w", "json"]), "dbSize")
}

fn member_id(n: &Node) -> u64 {
    json_u64(&n.ok(&["endpoint", "status", "-w", "json"]), "member_id")
}

/// A plain HTTP/1.1 GET on the client port: (status code, body without trailing
/// whitespace: etcd 3.4 ends its JSON bodies with a newline, Keel does not).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = text[..head_end].to_ascii_lowercase();
            let body = &text[head_end + 4..];
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            if len.is_some_and(|l| body.len() >= l) {
                let code = text.split(' ').nth(1).unwrap().parse().unwrap();
                return (code, body.trim_end().to_string());
            }
        }
        assert!(Instant::now() < deadline, "no full response: {text:?}");
        match s.read(&mut chunk) {
            Ok(0) => {
                let code = text.split(' ').nth(1).unwrap().parse().unwrap();
                let body = text.split_once("\r\n\r\n").map_or("", |b| b.1.trim_end());
                return (code, body.to_string());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read {path}: {e} after {text:?}"),
        }
    }
}

/// Polls `f` (every 100 ms, `LIVENESS` at most) until it returns true.
#[track_caller]
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIVENESS;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {LIVENESS:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The snapshot tool that writes a data dir for `common::server_binary()`.
#[derive(Clone, Copy, Debug)]
enum Restorer {
    Keel,
    Etcdctl,
}

impl Restorer {
    /// Keel's own tool when the tests run Keel, etcdctl's when they run etcd.
    fn for_server() -> Restorer {
        if common::is_keel() {
            Restorer::Keel
        } else {
            Restorer::Etcdctl
        }
    }

    /// Restores `snap` into `node`'s data dir as member `name` of `cluster`.
    fn restore(self, snap: &Path, node: &Node, name: &str, cluster: &str, token: &str) -> Ctl {
        let data = node.data_dir.to_str().unwrap();
        let peer = node.peer_url();
        let args = [
            "snapshot",
            "restore",
            snap.to_str().unwrap(),
            "--name",
            name,
            "--data-dir",
            data,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            &peer,
        ];
        match self {
            Restorer::Keel => keel_tool(&args),
            Restorer::Etcdctl => {
                etcd_bin();
                etcdctl_bare(&args)
            }
        }
    }
}

/// Writes a history with overwrites, deletes, a compaction at revision 5, a lease with a
/// key, users and roles, then turns auth on (`n.ctl_flags` then carry root's password).
/// Returns the lease ID in hex. Revisions: a1 2, b1 3, a2 4, c1 5, del b 6, a3 7,
/// (compact 5), b2 8, c2 9, lk 10, d1 11, del d 12.
fn make_history(n: &mut Node) -> String {
    for (args, out) in [
        (&["put", "a", "a1"][..], "OK\n"),
        (&["put", "b", "b1"], "OK\n"),
        (&["put", "a", "a2"], "OK\n"),
        (&["put", "c", "c1"], "OK\n"),
        (&["del", "b"], "1\n"),
        (&["put", "a", "a3"], "OK\n"),
        (&["compact", "5", "--physical"], "compacted revision 5\n"),
        (&["put", "b", "b2"], "OK\n"),
        (&["put", "c", "c2"], "OK\n"),
    ] {
        n.ctl(args).expect_ok(out);
    }
    let grant = n.ok(&["lease", "grant", "600"]);
    let lease = grant.split(' ').nth(1).expect("lease ID").to_string();
    n.ctl(&["put", "lk", "lv", &format!("--lease={lease}")])
        .expect_ok("OK\n");
    n.ctl(&["put", "d", "d1"]).expect_ok("OK\n");
    n.ctl(&["del", "d"]).expect_ok("1\n");
    n.ctl(&["role", "add", "r1"]).expect_ok("Role r1 created\n");
    n.ctl(&[
        "role",
        "grant-permission",
        "r1",
        "--prefix=true",
        "readwrite",
        "/app/",
    ])
    .expect_ok("Role r1 updated\n");
    n.ctl(&["user", "add", "alice:alicepw"])
        .expect_ok("User alice created\n");
    n.ctl(&["user", "grant-role", "alice", "r1"])
        .expect_ok("Role r1 is granted to user alice\n");
    n.ctl(&["user", "add", "root:rootpw"])
        .expect_ok("User root created\n");
    n.ctl(&["role", "add", "root"])
        .expect_ok("Role root created\n");
    n.ctl(&["user", "grant-role", "root", "root"])
        .expect_ok("Role root is granted to user root\n");
    n.ctl(&["auth", "enable"])
        .expect_ok("Authentication Enabled\n");
    n.ctl_flags = vec![ROOT.to_string()];
    lease
}

/// What clients see of `make_history`'s data on `n`, as lines to compare between a source
/// and a member restored from its snapshot (times left out).
fn history_view(n: &Node, lease: &str) -> Vec<String> {
    let mut v = Vec::new();
    let all = n.ok(&["get", "", "--from-key", "-w", "json"]);
    v.push(format!("revision {}", json_field(&all, "revision")));
    v.push(
        all[all.find("\"kvs\":").expect("kvs")..]
            .trim_end()
            .to_string(),
    );
    for rev in ["5", "6", "8", "11", "12"] {
        for k in ["a", "b", "c", "d", "lk"] {
            let c = n.ctl(&["get", k, "--rev", rev]);
            v.push(format!("{k}@{rev}: {} {:?}", c.ok, c.stdout));
        }
    }
    let old = n.ctl(&["get", "a", "--rev", "4"]);
    v.push(format!(
        "a@4: {} compacted {}",
        old.ok,
        old.stderr.contains(COMPACTED)
    ));
    v.push(n.ok(&["lease", "list"]));
    let ttl = n.ok(&["lease", "timetolive", lease, "--keys"]);
    v.push(match ttl.split_once(", remaining(") {
        Some((head, tail)) => format!("{head} {}", tail.split_once("), ").map_or("", |t| t.1)),
        None => ttl,
    });
    for args in [
        &["user", "list"][..],
        &["role", "list"],
        &["role", "get", "r1"],
        &["role", "get", "root"],
        &["user", "get", "alice"],
        &["user", "get", "root"],
    ] {
        v.push(n.ok(args));
    }
    let anon = etcdctl_bare(&[&format!("--endpoints={}", n.endpoint()), "get", "a"]);
    v.push(format!("anonymous get ok: {}", anon.ok));
    let alice = |args: &[&str]| {
        let mut a = vec![
            format!("--endpoints={}", n.endpoint()),
            "--user=alice:alicepw".into(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        etcdctl_bare(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>()).ok
    };
    v.push(format!(
        "alice reads /app/: {}, reads a: {}",
        alice(&["get", "/app/", "--prefix"]),
        alice(&["get", "a"])
    ));
    v
}

/// Asserts the view of `make_history`'s data is what it wrote.
#[track_caller]
fn assert_history(view: &[String], lease: &str) {
    let text = view.join("\n");
    let want = [
        "revision 12".to_string(),
        "{\"key\":\"YQ==\",\"create_revision\":2,\"mod_revision\":7,\"version\":3,\"value\":\"YTM=\"}"
            .to_string(),
        "{\"key\":\"Yg==\",\"create_revision\":8,\"mod_revision\":8,\"version\":1,\"value\":\"YjI=\"}"
            .to_string(),
        "{\"key\":\"Yw==\",\"create_revision\":5,\"mod_revision\":9,\"version\":2,\"value\":\"YzI=\"}"
            .to_string(),
        "\"key\":\"bGs=\",\"create_revision\":10,\"mod_revision\":10,\"version\":1,\"value\":\"bHY=\",\"lease\":"
            .to_string(),
        "\"count\":4".to_string(),
        "a@5: true \"a\\na2\\n\"".to_string(),
        "b@5: true \"b\\nb1\\n\"".to_string(),
        "b@6: true \"\"".to_string(),
        "c@8: true \"c\\nc1\\n\"".to_string(),
        "d@11: true \"d\\nd1\\n\"".to_string(),
        "d@12: true \"\"".to_string(),
        "lk@11: true \"lk\\nlv\\n\"".to_string(),
        "a@4: false compacted true".to_string(),
        format!("found 1 leases\n{lease}\n"),
        format!("lease {lease} granted with TTL(600s) attached keys([lk])"),
        "alice\nroot\n".to_string(),
        "r1\nroot\n".to_string(),
        "Role r1\nKV Read:\n\t[/app/, /app0) (prefix /app/)\nKV Write:\n\t[/app/, /app0) (prefix /app/)\n"
            .to_string(),
        "User: alice\nRoles: r1\n".to_string(),
        "User: root\nRoles: root\n".to_string(),
        "anonymous get ok: false".to_string(),
        "alice reads /app/: true, reads a: false".to_string(),
    ];
    for w in want {
        assert!(text.contains(&w), "view lacks {w:?}:\n{text}");
    }
}

/// `etcdctl snapshot save` of `n` into `n`'s dir.
fn save(n: &Node, file: &str) -> PathBuf {
    let path = n.dir.join(file);
    let out = n.ok(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(out.contains("Snapshot saved at"), "{out}");
    path
}

/// Boots `node` on the data dir a restore wrote into it, as the single member `name`;
/// its etcdctl runs are root's from then on (the restored data has auth on).
fn boot_restored(node: &mut Node, name: &str, token: &str) {
    let cluster = format!("{name}={}", node.peer_url());
    node.bootstrap(name, &cluster, token, &[]);
    node.start();
    node.ctl_flags = vec![ROOT.to_string()];
}

/// Keel → etcd: a snapshot of Keel, restored by etcdctl, boots real etcd with the same
/// keys, revisions, history past the compaction mark, lease, users, roles and auth.
#[test]
fn keel_snapshot_restored_by_etcdctl_boots_etcd_with_the_same_data() {
    let etcd = etcd_bin();
    let mut src = Node::new("k2e-src", common::server_binary());
    src.single("src", &[]);
    src.start();
    let lease = make_history(&mut src);
    let before = history_view(&src, &lease);
    assert_history(&before, &lease);
    let snap = save(&src, "keel.db");
    src.stop();

    let mut dst = Node::new("k2e-dst", etcd);
    let cluster = format!("e1={}", dst.peer_url());
    let r = Restorer::Etcdctl.restore(&snap, &dst, "e1", &cluster, "k2e");
    assert!(r.ok, "etcdctl snapshot restore: {r:?}");
    boot_restored(&mut dst, "e1", "k2e");
    let after = history_view(&dst, &lease);
    assert_eq!(before, after, "etcd restored from Keel's snapshot differs");
    // The restored member goes on from the snapshot's revision.
    dst.ctl(&["put", "e", "e1"]).expect_ok("OK\n");
    let e = dst.ok(&["get", "e", "-w", "json"]);
    assert_eq!(json_u64(&e, "mod_revision"), 13, "{e}");
}

/// etcd → Keel: a snapshot of real etcd, restored by `keel snapshot restore`, boots Keel
/// with the same data; `keel snapshot status` prints what `etcdctl snapshot status` does.
#[test]
fn etcd_snapshot_restored_by_keel_boots_keel_with_the_same_data() {
    let mut src = Node::new("e2k-src", etcd_bin());
    src.single("src", &[]);
    src.start();
    let lease = make_history(&mut src);
    let before = history_view(&src, &lease);
    assert_history(&before, &lease);
    let snap = save(&src, "etcd.db");
    src.stop();

    for w in ["json", "table", "simple"] {
        let f = snap.to_str().unwrap();
        let theirs = etcdctl_bare(&["snapshot", "status", f, "-w", w]);
        let ours = keel_tool(&["snapshot", "status", f, "-w", w]);
        assert!(theirs.ok && ours.ok, "{theirs:?} {ours:?}");
        assert_eq!(ours.stdout, theirs.stdout, "keel snapshot status -w {w}");
    }
    let json = keel_tool(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]).stdout;
    assert_eq!(json_u64(&json, "revision"), 12, "{json}");

    let mut dst = Node::new("e2k-dst", keel_bin());
    let cluster = format!("k1={}", dst.peer_url());
    let r = Restorer::Keel.restore(&snap, &dst, "k1", &cluster, "e2k");
    assert!(r.ok, "keel snapshot restore: {r:?}");
    boot_restored(&mut dst, "k1", "e2k");
    let after = history_view(&dst, &lease);
    assert_eq!(before, after, "Keel restored from etcd's snapshot differs");
    dst.ctl(&["put", "e", "e1"]).expect_ok("OK\n");
    let e = dst.ok(&["get", "e", "-w", "json"]);
    assert_eq!(json_u64(&e, "mod_revision"), 13, "{e}");
    // And again after a restart (the restored state is durable, not replayed).
    dst.stop();
    dst.start();
    let again = history_view(&dst, &lease);
    assert_eq!(before[2..], again[2..], "after a restart");
}

/// Keel boots on a data dir `etcdctl snapshot restore` wrote (the import path): the data
/// is there, etcd's own files are kept aside in member/snap.etcd and member/wal.etcd, and a
/// restart does not import again.
#[test]
fn keel_boots_on_a_dir_etcdctl_restored() {
    let mut src = Node::new("imp-src", etcd_bin());
    src.single("src", &[]);
    src.start();
    let lease = make_history(&mut src);
    let before = history_view(&src, &lease);
    assert_history(&before, &lease);
    let snap = save(&src, "etcd.db");
    src.stop();

    let mut dst = Node::new("imp-dst", keel_bin());
    let cluster = format!("k1={}", dst.peer_url());
    let r = Restorer::Etcdctl.restore(&snap, &dst, "k1", &cluster, "imp");
    assert!(r.ok, "etcdctl snapshot restore: {r:?}");
    assert!(dst.data_dir.join("member/snap/db").exists());
    boot_restored(&mut dst, "k1", "imp");
    let after = history_view(&dst, &lease);
    assert_eq!(before, after, "Keel on etcdctl's restored dir differs");
    let member = dst.data_dir.join("member");
    for kept in ["snap.etcd", "wal.etcd"] {
        let p = member.join(kept);
        let n = std::fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .count();
        assert!(n > 0, "{} is empty", p.display());
    }
    assert!(
        member.join("snap.etcd/db").exists(),
        "etcd's db not kept in snap.etcd"
    );
    dst.ctl(&["put", "e", "e1"]).expect_ok("OK\n");
    dst.stop();
    dst.start();
    let again = history_view(&dst, &lease);
    assert_eq!(before[2..], again[2..], "after a restart");
    dst.ctl(&["get", "e", "--print-value-only"])
        .expect_ok("e1\n");
    let status = dst.ok(&["endpoint", "status", "-w", "json"]);
    assert_eq!(json_u64(&status, "revision"), 13, "{status}");
}

/// Restores that must fail, each with a clear message, a non-zero exit, no panic, and no
/// data dir left behind.
#[test]
fn restore_refuses_bad_snapshots_and_bad_targets() {
    let s = Server::start("badsnap", &[]);
    for i in 0..50 {
        s.etcdctl(&["put", &format!("k{i:03}"), &"v".repeat(200)])
            .expect_ok("OK\n");
    }
    let good = s.dir.join("good.db");
    let saved = s.etcdctl(&["snapshot", "save", good.to_str().unwrap()]);
    assert!(saved.ok, "{saved:?}");
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(bytes.len() % 512, 32, "a snapshot ends in a sha256");
    assert!(bytes.len() > 8192, "{} bytes", bytes.len());
    let cluster = "r1=http://127.0.0.1:1";
    let mut n = 0;
    let mut restore = |file: &[u8], extra: &[&str], name: &str, prepare: &dyn Fn(&Path)| {
        n += 1;
        let f = s.dir.join(format!("bad-{n}.db"));
        std::fs::write(&f, file).unwrap();
        let data = s.dir.join(format!("restored-{n}"));
        prepare(&data);
        let mut args = vec![
            "snapshot",
            "restore",
            f.to_str().unwrap(),
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            "bad",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ];
        args.extend(extra);
        let out = keel_tool(&args);
        assert!(!out.ok, "restore {n} succeeded: {out:?}");
        assert!(
            !out.stderr.contains("panicked"),
            "restore {n} panicked: {out:?}"
        );
        assert!(
            !data.join("member").exists(),
            "restore {n} left {}",
            data.join("member").display()
        );
        out.stderr
    };
    let none = |_: &Path| {};

    // Cut short at a length that cannot hold a trailer: the hash is missing.
    let half = &bytes[..bytes.len() / 2 + 7];
    let e = restore(half, &[], "r1", &none);
    assert!(
        e.contains("snapshot missing hash but --skip-hash-check=false"),
        "{e}"
    );
    // Cut short by whole pages: the last 32 bytes are taken for a hash, which is wrong.
    let cut = &bytes[..bytes.len() - 4096];
    let e = restore(cut, &[], "r1", &none);
    assert!(e.contains("expected sha256"), "{e}");
    // Cut short and the hash check skipped: the bbolt file itself is incomplete.
    let e = restore(
        &bytes[..bytes.len() / 2],
        &["--skip-hash-check"],
        "r1",
        &none,
    );
    assert!(e.contains("truncated"), "{e}");
    // 512 bytes overwritten in the middle: the trailer no longer matches.
    let mut flipped = bytes.clone();
    let mid = (bytes.len() / 2) & !511;
    flipped[mid..mid + 512].fill(0xa5);
    let e = restore(&flipped, &[], "r1", &none);
    assert!(e.contains("expected sha256"), "{e}");
    // Not a bbolt file at all, hash check skipped.
    let text = "this is not a bbolt file\n".repeat(200);
    let e = restore(text.as_bytes(), &["--skip-hash-check"], "r1", &none);
    assert!(e.contains("not a bbolt file"), "{e}");
    // A name the initial cluster does not have.
    let e = restore(&bytes, &[], "stranger", &none);
    assert!(e.contains("couldn't find local name"), "{e}");
    assert!(e.contains("stranger"), "{e}");
    // A data dir that is not empty is left alone.
    let occupied = |d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("precious"), "keep me").unwrap();
    };
    let e = restore(&bytes, &[], "r1", &occupied);
    assert!(e.contains("not empty"), "{e}");
    let precious = s.dir.join(format!("restored-{n}")).join("precious");
    assert_eq!(std::fs::read_to_string(precious).unwrap(), "keep me");

    // The good file restores (the failures above were about the input, not the tool).
    let data = s.dir.join("restored-good");
    let out = keel_tool(&[
        "snapshot",
        "restore",
        good.to_str().unwrap(),
        "--name",
        "r1",
        "--data-dir",
        data.to_str().unwrap(),
        "--initial-cluster",
        cluster,
        "--initial-cluster-token",
        "bad",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
    ]);
    assert!(out.ok, "{out:?}");
    assert!(data.join("member").exists());
}

/// Three members restored from one snapshot (same --initial-cluster and token, each its
/// own name and peer URL) form one cluster that serves the data; a write on one is read on
/// the others.
#[test]
fn cluster_restored_from_one_snapshot_serves_the_data() {
    let mut src = Node::new("c3-src", common::server_binary());
    src.single("src", &[]);
    src.start();
    for i in 0..100 {
        src.ctl(&["put", &format!("k{i:03}"), &format!("v{i}")])
            .expect_ok("OK\n");
    }
    src.ctl(&["put", "k000", "v0-again"]).expect_ok("OK\n");
    let snap = save(&src, "src.db");
    let want = src.ok(&["get", "k", "--prefix", "-w", "json"]);
    let want_kvs = want[want.find("\"kvs\":").unwrap()..].to_string();
    assert_eq!(json_u64(&want, "revision"), 102, "{want}");
    src.stop();

    let mut members: Vec<Node> = (0..3)
        .map(|i| Node::new(&format!("c3-m{i}"), common::server_binary()))
        .collect();
    let cluster = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("r{i}={}", m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let token = "keel-mt-restored";
    for (i, m) in members.iter_mut().enumerate() {
        let name = format!("r{i}");
        let r = Restorer::for_server().restore(&snap, m, &name, &cluster, token);
        assert!(r.ok, "restore r{i}: {r:?}");
        m.bootstrap(&name, &cluster, token, &FAST_ELECTIONS);
    }
    for m in members.iter_mut() {
        m.spawn();
    }
    for m in members.iter_mut() {
        m.wait_ready(LIVENESS);
    }
    for (i, m) in members.iter().enumerate() {
        let list = m.ok(&["member", "list"]);
        for j in 0..3 {
            assert!(list.contains(&format!(", r{j}, ")), "m{i}: {list}");
        }
        assert_eq!(list.lines().count(), 3, "m{i}: {list}");
        let got = m.ok(&["get", "k", "--prefix", "-w", "json"]);
        assert_eq!(
            &got[got.find("\"kvs\":").unwrap()..],
            want_kvs,
            "member r{i} serves other data"
        );
        assert_eq!(json_u64(&got, "revision"), 102, "r{i}: {got}");
    }
    members[0].ctl(&["put", "new", "from-r0"]).expect_ok("OK\n");
    members[2].ctl(&["get", "new"]).expect_ok("new\nfrom-r0\n");
    members[1]
        .ctl(&["put", "new2", "from-r1"])
        .expect_ok("OK\n");
    members[0]
        .ctl(&["get", "new2"])
        .expect_ok("new2\nfrom-r1\n");
    let n2 = members[2].ok(&["get", "new2", "-w", "json"]);
    assert_eq!(json_u64(&n2, "mod_revision"), 104, "{n2}");
    wait_until("r1 serves r0's write serializably", || {
        members[1].ok(&["get", "new", "--consistency=s"]) == "new\nfrom-r0\n"
    });
}

/// Puts 4 KiB values through `n` until the quota refuses one; returns how many fitted.
fn fill_to_quota(n: &Node) -> usize {
    runtime().block_on(async {
        let mut c = n.client().await;
        let value = "x".repeat(4096);
        for i in 0..500 {
            match c.put(format!("fill/{i:04}"), value.clone(), None).await {
                Ok(_) => {}
                Err(e) => {
                    let (code, msg) = grpc_status(e);
                    assert_eq!(
                        (code, msg.as_str()),
                        (tonic::Code::ResourceExhausted, NOSPACE),
                        "put {i}"
                    );
                    return i;
                }
            }
        }
        panic!("500 puts of 4 KiB fitted in a {QUOTA_BYTES}-byte quota");
    })
}

/// NOSPACE on one member: raised by the put that would pass the quota, listed, /health
/// says false (unless excluded), writes that grow the db refused while reads, deletes,
/// compaction and defrag work; it survives a restart; disarmed, puts work again.
#[test]
fn nospace_alarm_refuses_growth_until_disarmed_and_survives_a_restart() {
    let mut n = Node::new("nospace", common::server_binary());
    n.single("ns", &["--quota-backend-bytes", QUOTA_BYTES]);
    n.start();
    let id = member_id(&n);
    assert_eq!(http_get(n.client_port, "/health").0, 200);
    let fitted = fill_to_quota(&n);
    assert!(fitted > 10, "only {fitted} values of 4 KiB fitted");
    let listed = format!("memberID:{id} alarm:NOSPACE \n");
    n.ctl(&["alarm", "list"]).expect_ok(&listed);
    let (code, body) = http_get(n.client_port, "/health");
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}"));
    let (code, body) = http_get(n.client_port, "/health?exclude=NOSPACE");
    assert_eq!((code, body.as_str()), (200, "{\"health\":\"true\"}"));
    // etcd's Status lists active alarms in `errors`; checked at the end so the rest runs.
    let status_under_alarm = n.ok(&["endpoint", "status", "-w", "json"]);

    // Growth refused, everything else works.
    n.ctl(&["put", "small", "1"]).expect_err(NOSPACE);
    n.ctl(&["lease", "grant", "60"]).expect_err(NOSPACE);
    runtime().block_on(async {
        let mut c = n.client().await;
        let txn = Txn::new().and_then([TxnOp::put("t", "1", None)]);
        let (code, msg) = grpc_status(c.txn(txn).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (tonic::Code::ResourceExhausted, NOSPACE)
        );
        // A txn that only reads is not a write.
        let read = Txn::new().and_then([TxnOp::get("fill/0000", None)]);
        c.txn(read).await.expect("read-only txn under NOSPACE");
    });
    let v = n.ok(&["get", "fill/0000", "--print-value-only"]);
    assert_eq!(v.len(), 4097);
    let rev = json_u64(&n.ok(&["endpoint", "status", "-w", "json"]), "revision");
    n.ctl(&["del", "fill/", "--prefix"])
        .expect_ok(&format!("{fitted}\n"));
    n.ctl(&["compact", &(rev + 1).to_string(), "--physical"])
        .expect_ok(&format!("compacted revision {}\n", rev + 1));
    let d = n.ok(&["defrag"]);
    assert!(d.contains("Finished defragmenting etcd member"), "{d}");
    let size = db_size(&n);
    assert!(
        size < 200_000,
        "db still {size} bytes after delete, compact, defrag"
    );
    // The alarm stays until disarmed, also across a restart.
    n.ctl(&["alarm", "list"]).expect_ok(&listed);
    n.ctl(&["put", "small", "1"]).expect_err(NOSPACE);
    n.stop();
    n.start();
    n.ctl(&["alarm", "list"]).expect_ok(&listed);
    n.ctl(&["put", "small", "1"]).expect_err(NOSPACE);
    assert_eq!(http_get(n.client_port, "/health").0, 503);

    n.ctl(&["alarm", "disarm"]).expect_ok(&listed);
    n.ctl(&["alarm", "list"]).expect_ok("");
    n.ctl(&["put", "small", "1"]).expect_ok("OK\n");
    let grant = n.ok(&["lease", "grant", "60"]);
    assert!(grant.contains("granted with TTL(60s)"), "{grant}");
    let (code, body) = http_get(n.client_port, "/health");
    assert_eq!((code, body.as_str()), (200, "{\"health\":\"true\"}"));
    assert!(
        status_under_alarm.contains(&format!("\"errors\":[\"memberID:{id} alarm:NOSPACE \"]")),
        "endpoint status under NOSPACE lacks the alarm in errors: {status_under_alarm}"
    );
}

/// NOSPACE raised on one member of three is refused through every member; disarmed
/// through another, it is gone everywhere.
#[test]
fn cluster_nospace_on_one_member_is_refused_on_all_until_disarmed() {
    let mut members: Vec<Node> = (0..3)
        .map(|i| Node::new(&format!("c3ns-m{i}"), common::server_binary()))
        .collect();
    let cluster = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("n{i}={}", m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let mut extra = FAST_ELECTIONS.to_vec();
    extra.extend(["--quota-backend-bytes", QUOTA_BYTES]);
    for (i, m) in members.iter_mut().enumerate() {
        m.bootstrap(&format!("n{i}"), &cluster, "keel-mt-c3ns", &extra);
    }
    for m in members.iter_mut() {
        m.spawn();
    }
    for m in members.iter_mut() {
        m.wait_ready(LIVENESS);
    }
    let ids: Vec<u64> = members.iter().map(member_id).collect();
    let fitted = fill_to_quota(&members[0]);
    assert!(fitted > 10, "only {fitted} values of 4 KiB fitted");
    // Keel raises NOSPACE for the member whose quota check refused the put (n0). etcd also
    // checks the quota when applying, on every member: there the first alarm may be any
    // member's. Either way, once applied every member lists the same alarm.
    let valid = |list: &str| {
        !list.is_empty()
            && list.lines().all(|line| {
                ids.iter()
                    .any(|id| line == format!("memberID:{id} alarm:NOSPACE "))
            })
    };
    let mut listed = String::new();
    wait_until("all members list the same NOSPACE alarm", || {
        let lists: Vec<String> = members
            .iter()
            .map(|m| m.ctl(&["alarm", "list"]).stdout)
            .collect();
        listed = lists[0].clone();
        valid(&listed) && lists.iter().all(|l| *l == listed)
    });
    if common::is_keel() {
        assert_eq!(listed, format!("memberID:{} alarm:NOSPACE \n", ids[0]));
    }
    // Refused through every member (one whose own db is over the quota too raises its own
    // alarm on the way, as etcd does: the list may grow, n0's stays).
    for (i, m) in members.iter().enumerate() {
        m.ctl(&["put", "small", "1"]).expect_err(NOSPACE);
        m.ctl(&["lease", "grant", "60"]).expect_err(NOSPACE);
        assert_eq!(http_get(m.client_port, "/health").0, 503, "n{i}");
        let list = m.ok(&["alarm", "list"]);
        assert!(list.contains(&listed), "n{i}: {list}");
        for line in list.lines() {
            assert!(
                ids.iter()
                    .any(|id| line == format!("memberID:{id} alarm:NOSPACE ")),
                "n{i}: {list}"
            );
        }
    }
    // Make room everywhere, then disarm through another member.
    let rev = json_u64(
        &members[1].ok(&["endpoint", "status", "-w", "json"]),
        "revision",
    );
    members[1]
        .ctl(&["del", "fill/", "--prefix"])
        .expect_ok(&format!("{fitted}\n"));
    members[2]
        .ctl(&["compact", &(rev + 1).to_string(), "--physical"])
        .expect_ok(&format!("compacted revision {}\n", rev + 1));
    for m in &members {
        let d = m.ok(&["defrag"]);
        assert!(d.contains("Finished defragmenting etcd member"), "{d}");
    }
    let disarmed = members[1].ok(&["alarm", "disarm"]);
    assert!(disarmed.contains(&listed), "{disarmed}");
    for (i, m) in members.iter().enumerate() {
        wait_until(&format!("n{i} lists no alarm"), || {
            m.ctl(&["alarm", "list"]).stdout.is_empty()
        });
        m.ctl(&["put", &format!("after{i}"), "1"]).expect_ok("OK\n");
        assert_eq!(http_get(m.client_port, "/health").0, 200, "n{i}");
    }
    members[2]
        .ctl(&["get", "after", "--prefix", "--keys-only"])
        .expect_ok("after0\n\nafter1\n\nafter2\n\n");
}

/// Online defrag while a client writes: every acknowledged put is readable with its value
/// afterwards (and after a restart), and delete + compact + defrag shrank the db.
#[test]
fn defrag_under_a_write_load_loses_no_acknowledged_put() {
    const PREFILL: usize = 3000;
    const DELETED: usize = 2700;
    const WRITE_TIME_MAX: Duration = Duration::from_secs(20);
    const DEFRAG_TIME_MAX: Duration = Duration::from_secs(10);
    let mut n = Node::new("defrag", common::server_binary());
    n.single("df", &[]);
    n.start();
    runtime().block_on(async {
        let mut c = n.client().await;
        let value = "p".repeat(1024);
        for batch in 0..PREFILL / 100 {
            let ops: Vec<TxnOp> = (batch * 100..(batch + 1) * 100)
                .map(|i| TxnOp::put(format!("p/{i:05}"), value.clone(), None))
                .collect();
            c.txn(Txn::new().and_then(ops)).await.expect("prefill");
        }
    });
    // etcd reports its backend's size as of the last batch commit (every 100 ms).
    let mut size_before = 0;
    wait_until("the prefill shows in the db size", || {
        size_before = db_size(&n);
        size_before > PREFILL as u64 * 1024
    });

    let stop = Arc::new(AtomicBool::new(false));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let stop = stop.clone();
        let writing = writing.clone();
        let endpoint = n.endpoint();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(15));
                let mut c = etcd_client::Client::connect([endpoint], Some(opts))
                    .await
                    .expect("connect");
                let started = Instant::now();
                let mut acked = BTreeMap::new();
                let mut failed = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < WRITE_TIME_MAX {
                    let (k, v) = (format!("w/{i:06}"), format!("value-{i}"));
                    match c.put(k.clone(), v.clone(), None).await {
                        Ok(_) => {
                            acked.insert(k, v);
                        }
                        Err(e) => failed.push(format!("{k}: {e}")),
                    }
                    i += 1;
                }
                writing.store(false, Ordering::Relaxed);
                (acked, failed)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    n.ctl(&["del", "p/00000", &format!("p/{DELETED:05}")])
        .expect_ok(&format!("{DELETED}\n"));
    let rev = json_u64(&n.ok(&["endpoint", "status", "-w", "json"]), "revision");
    n.ctl(&["compact", &rev.to_string(), "--physical"])
        .expect_ok(&format!("compacted revision {rev}\n"));
    // (time taken, whether the writer still ran when it finished) of each defrag.
    let mut defrags = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let d = n.ok(&["defrag", "--command-timeout=60s"]);
        defrags.push((t.elapsed(), writing.load(Ordering::Relaxed)));
        assert!(d.contains("Finished defragmenting etcd member"), "{d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.join().expect("writer");
    assert!(failed.is_empty(), "puts failed during defrag: {failed:?}");
    assert!(
        acked.len() >= 20,
        "only {} puts during the test",
        acked.len()
    );
    let size_after = db_size(&n);
    eprintln!(
        "defrag under load: {} puts acknowledged; db {size_before} -> {size_after} bytes; \
         defrags (time, under load) {defrags:?}",
        acked.len()
    );
    assert!(
        size_after < size_before,
        "db did not shrink: {size_before} -> {size_after} bytes"
    );

    let check = |n: &Node, when: &str| {
        runtime().block_on(async {
            let mut c = n.client().await;
            let got = c
                .get("w/", Some(GetOptions::new().with_prefix()))
                .await
                .expect("get w/");
            let seen: BTreeMap<String, String> = got
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().unwrap().to_string(),
                        kv.value_str().unwrap().to_string(),
                    )
                })
                .collect();
            for (k, v) in &acked {
                assert_eq!(seen.get(k), Some(v), "{when}: acknowledged {k} lost");
            }
            let p = c
                .get(
                    "p/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .expect("count p/");
            assert_eq!(p.count() as usize, PREFILL - DELETED, "{when}: p/ keys");
        })
    };
    check(&n, "after defrag");
    // Keel's offline defrag: refused while the member runs, then run on the stopped one.
    let data = n.data_dir.to_str().unwrap().to_string();
    if common::is_keel() {
        let d = keel_tool(&["defrag", "--data-dir", &data]);
        assert!(!d.ok && d.stderr.contains("still running"), "{d:?}");
    }
    n.stop();
    if common::is_keel() {
        let d = keel_tool(&["defrag", "--data-dir", &data]);
        assert!(d.ok, "{d:?}");
        assert!(
            d.stdout.contains("Finished defragmenting etcd data"),
            "{d:?}"
        );
    }
    n.start();
    check(&n, "after a restart");
    assert!(db_size(&n) < size_before);
    // Checked last so the rest runs: a defrag finishes while the writes go on (etcd's,
    // which stops the world, takes well under a second here).
    for (i, (took, under_load)) in defrags.iter().enumerate() {
        assert!(
            *under_load && *took < DEFRAG_TIME_MAX,
            "defrag {i} took {took:?} and finished {} (all: {defrags:?})",
            if *under_load {
                "under the write load"
            } else {
                "only after the writer stopped"
            }
        );
    }
}

/// (member ID, alarm) of an Alarm response.
fn alarms(r: &etcd_client::AlarmResponse) -> Vec<(u64, AlarmType)> {
    r.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

/// Hash, Defragment, Alarm and Snapshot through the etcd-client crate.
#[test]
fn maintenance_calls_through_etcd_client() {
    let mut n = Node::new("mclient", common::server_binary());
    n.single("mc", &[]);
    n.start();
    let snap_path = n.dir.join("stream.db");
    let (revision, id) = runtime().block_on(async {
        let mut c = n.client().await;
        for i in 0..200 {
            c.put(format!("k{i:03}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        let mut m = c.maintenance_client();
        let h1 = m.hash().await.expect("hash").hash();
        let h2 = m.hash().await.expect("hash").hash();
        assert_eq!(h1, h2, "Hash changed without writes");
        c.put("k000", "changed", None).await.unwrap();
        let h3 = m.hash().await.expect("hash").hash();
        assert_ne!(h1, h3, "Hash did not change with a put");
        m.defragment().await.expect("defragment");
        assert_eq!(
            m.hash().await.unwrap().hash(),
            h3,
            "defrag changed the data"
        );

        let status = c.status().await.unwrap();
        let id = status.header().unwrap().member_id();
        let none = m
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm get");
        assert!(none.alarms().is_empty(), "{:?}", alarms(&none));
        let mut opts = AlarmOptions::new();
        opts.with_member(id);
        let on = m
            .alarm(
                AlarmAction::Activate,
                AlarmType::Nospace,
                Some(opts.clone()),
            )
            .await
            .expect("alarm activate");
        assert_eq!(on.alarms().len(), 1, "{:?}", alarms(&on));
        assert_eq!(on.alarms()[0].member_id(), id);
        assert_eq!(on.alarms()[0].alarm(), AlarmType::Nospace);
        let listed = m
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert_eq!(listed.alarms().len(), 1, "{:?}", alarms(&listed));
        let (code, msg) = grpc_status(c.put("x", "1", None).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (tonic::Code::ResourceExhausted, NOSPACE)
        );
        c.get("k001", None).await.expect("get under NOSPACE");
        m.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
            .await
            .expect("alarm deactivate");
        let after = m
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap();
        assert!(after.alarms().is_empty(), "{:?}", alarms(&after));
        c.put("x", "1", None).await.expect("put after deactivate");

        let revision = c.get("x", None).await.unwrap().header().unwrap().revision();
        let mut stream = m.snapshot().await.expect("snapshot");
        let mut file = Vec::new();
        let mut messages = 0;
        let mut last_remaining = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(part) = stream.message().await.expect("snapshot stream") {
            file.extend_from_slice(part.blob());
            last_remaining = Some(part.remaining_bytes());
            messages += 1;
            assert!(Instant::now() < deadline, "snapshot stream too slow");
        }
        assert!(messages > 0);
        assert_eq!(last_remaining, Some(0), "last message's remaining_bytes");
        assert_eq!(
            file.len() % 512,
            32,
            "{} bytes: no sha256 trailer",
            file.len()
        );
        let (db, trailer) = file.split_at(file.len() - 32);
        let sum = ring::digest::digest(&ring::digest::SHA256, db);
        assert_eq!(sum.as_ref(), trailer, "the trailer is not the db's sha256");
        std::fs::write(&snap_path, &file).unwrap();
        (revision, id)
    });
    assert_ne!(id, 0);
    let ours = keel_tool(&[
        "snapshot",
        "status",
        snap_path.to_str().unwrap(),
        "-w",
        "json",
    ]);
    assert!(ours.ok, "{ours:?}");
    assert_eq!(
        json_u64(&ours.stdout, "revision"),
        revision as u64,
        "{}",
        ours.stdout
    );
    // Every revision of the key bucket (202) and the other buckets' keys.
    let total = json_u64(&ours.stdout, "totalKey");
    assert!(total >= 202, "{}", ours.stdout);
    let theirs = etcdctl_bare(&[
        "snapshot",
        "status",
        snap_path.to_str().unwrap(),
        "-w",
        "json",
    ]);
    assert!(theirs.ok, "{theirs:?}");
    assert_eq!(ours.stdout, theirs.stdout);
}
