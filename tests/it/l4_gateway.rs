//! `keel gateway start`, etcd's L4 (TCP) gateway, with real members behind it and
//! etcdctl in front: put, get and watch through it; a dead endpoint skipped; connections
//! spread round robin; every endpoint dead, then one coming up and taken back after
//! `--retry-delay`; the command line's errors.
//!
//! Every wait is bounded: the gateway's readiness by its log line, etcdctl by its own dial
//! and command timeouts.

use crate::common;

use common::{etcdctl_bare, etcdctl_bare_spawn, free_port, Server};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_WAIT: Duration = Duration::from_secs(10);

fn keel() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// A running `keel gateway start`, its stdout and stderr in one log file.
struct Gateway {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Gateway {
    /// Starts a gateway on a free port in front of `endpoints` with `extra` flags, the
    /// flags before the verb as etcd's e2e test gives them; waits for its ready line.
    fn start(endpoints: &str, extra: &[&str]) -> Gateway {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("keel-l4gw-{}-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(keel())
            .arg("gateway")
            .arg(format!("--endpoints={endpoints}"))
            .arg("start")
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start keel gateway");
        let mut g = Gateway { child, log, port };
        let deadline = Instant::now() + READY_WAIT;
        while !g.log().contains("ready to proxy client requests") {
            if let Some(st) = g.child.try_wait().unwrap() {
                panic!("gateway exited with {st} before ready:\n{}", g.log());
            }
            assert!(Instant::now() < deadline, "gateway not ready:\n{}", g.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("--endpoints=127.0.0.1:{}", self.port)
    }

    /// etcdctl through the gateway, with short timeouts so a failure is quick.
    fn etcdctl(&self, args: &[&str]) -> common::Ctl {
        let mut all = vec![
            self.endpoint(),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=3s".to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        etcdctl_bare(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs `keel gateway ARGS` to its end (bounded): exit code, stdout, stderr.
fn run_gateway(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(keel())
        .arg("gateway")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel gateway");
    let deadline = Instant::now() + READY_WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "keel gateway {args:?} still runs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn etcdctl_put_get_and_watch_through_the_gateway() {
    let s = Server::start("l4gw-basic", &[]);
    let g = Gateway::start(&s.client_url(), &[]);
    g.etcdctl(&["put", "foo", "bar"]).expect_ok("OK\n");
    g.etcdctl(&["get", "foo"]).expect_ok("foo\nbar\n");
    // The member has it too: the gateway forwarded, it did not answer.
    s.etcdctl(&["get", "foo", "--print-value-only"])
        .expect_ok("bar\n");

    let watch = etcdctl_bare_spawn(&[&g.endpoint(), "watch", "w"]);
    // The watch is registered once a put through the member shows up in it; put until then.
    let deadline = Instant::now() + READY_WAIT;
    let mut i = 0;
    while !watch.stdout().contains("PUT\nw\n") {
        assert!(
            Instant::now() < deadline,
            "watch saw nothing: {:?}",
            watch.stderr()
        );
        s.etcdctl(&["put", "w", &format!("v{i}")]).expect_ok("OK\n");
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    g.etcdctl(&["put", "w", "last"]).expect_ok("OK\n");
    watch.wait_for("PUT\nw\nlast\n", READY_WAIT);
    assert!(g.log().contains(&format!(
        "ready to proxy client requests to [127.0.0.1:{}]",
        s.client_port
    )));
}

#[test]
fn bytes_pass_both_ways_and_a_half_close_is_passed_on() {
    use std::io::{Read, Write};
    // An echo server as the endpoint: it copies until the client's end of stream, then
    // closes its side. The client reads back every byte, then the end of stream.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = echo.accept().unwrap();
        c.set_read_timeout(Some(READY_WAIT)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            c.write_all(&buf[..n]).unwrap();
            total += n;
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        total
    });
    let g = Gateway::start(&echo_addr.to_string(), &[]);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    conn.set_read_timeout(Some(READY_WAIT)).unwrap();
    const SIZE_BYTES: usize = 8 << 20;
    let data: Vec<u8> = (0..SIZE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let sent = data.clone();
    let write = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(SIZE_BYTES);
    conn.read_to_end(&mut back).unwrap();
    write.join().unwrap();
    assert_eq!(server.join().unwrap(), SIZE_BYTES);
    assert!(
        back == data,
        "{} bytes came back, not the ones sent",
        back.len()
    );
}

#[test]
fn a_dead_first_endpoint_is_skipped_and_left_out() {
    let s = Server::start("l4gw-dead-first", &[]);
    let dead = free_port();
    let g = Gateway::start(&format!("127.0.0.1:{dead},{}", s.endpoint()), &[]);
    for i in 0..4 {
        g.etcdctl(&["put", &format!("k{i}"), "v"]).expect_ok("OK\n");
    }
    g.etcdctl(&["get", "k", "--prefix", "--keys-only"])
        .expect_ok("k0\n\nk1\n\nk2\n\nk3\n\n");
    let log = g.log();
    assert_eq!(
        log.matches(&format!("deactivated endpoint [127.0.0.1:{dead}]"))
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("for 1m0s"), "{log}");
}

#[test]
fn connections_go_round_robin_over_the_endpoints() {
    // Two independent one-member clusters behind one gateway: each put lands on one of
    // them, alternately.
    let a = Server::start("l4gw-rr-a", &[]);
    let b = Server::start("l4gw-rr-b", &[]);
    let g = Gateway::start(&format!("{},{}", a.endpoint(), b.endpoint()), &[]);
    for i in 0..4 {
        g.etcdctl(&["put", &format!("k{i}"), "v"]).expect_ok("OK\n");
    }
    let keys = |s: &Server| {
        let out = s.etcdctl(&["get", "k", "--prefix", "--keys-only"]);
        assert!(out.ok, "{out:?}");
        out.stdout.lines().filter(|l| !l.is_empty()).count()
    };
    assert_eq!((keys(&a), keys(&b)), (2, 2), "puts not spread 2/2");
}

#[test]
fn with_every_endpoint_dead_clients_fail_until_one_comes_back() {
    let port = free_port();
    let g = Gateway::start(&format!("127.0.0.1:{port}"), &["--retry-delay=1s"]);
    let failed = g.etcdctl(&["put", "foo", "bar"]);
    assert!(!failed.ok, "a put with no member succeeded: {failed:?}");
    assert!(g
        .log()
        .contains(&format!("deactivated endpoint [127.0.0.1:{port}]")));

    let mut s = Server::unstarted("l4gw-late");
    s.client_port = port;
    s.spawn();
    s.wait_ready(common::READY_TIME_MAX);
    // The monitor dials it back within a retry delay (1 s); until then the gateway still
    // closes connections. Bounded: a few retry delays.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = g.etcdctl(&["put", "foo", "bar"]);
        if r.ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never came back: {r:?}\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(g.log().contains(&format!("activated 127.0.0.1:{port}")));
    g.etcdctl(&["get", "foo", "--print-value-only"])
        .expect_ok("bar\n");
}

#[test]
fn an_unknown_flag_exits_1_with_the_error() {
    let (code, _, err) = run_gateway(&["start", "--nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown flag: --nope"), "{err}");
    let (code, _, err) = run_gateway(&["stop"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown command"), "{err}");
}

#[test]
fn a_bad_or_busy_listen_address_is_an_error() {
    let (code, _, err) = run_gateway(&["start", "--listen-addr=nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("failed to validate listen address: nope"),
        "{err}"
    );
    let (code, _, err) = run_gateway(&["start", "--listen-addr=no.such.host.invalid:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed to resolve listen host"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (code, _, err) = run_gateway(&["start", &format!("--listen-addr={addr}")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("listen tcp {addr}: bind:")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn help_lists_every_flag() {
    let (code, out, _) = run_gateway(&["start", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen-addr",
        "--endpoints",
        "--discovery-srv",
        "--discovery-srv-name",
        "--insecure-discovery",
        "--trusted-ca-file",
        "--retry-delay",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    let (code, _, err) = run_gateway(&["start", "--discovery-srv=example.com"]);
    assert_eq!(code, 1);
    assert!(err.contains("not supported"), "{err}");
}
