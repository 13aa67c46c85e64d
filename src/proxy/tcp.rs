//! `keel gateway start`: etcd's L4 gateway. Every accepted TCP connection is spliced, byte
//! for byte, to one of `--endpoints`; nothing above TCP is looked at.
//!
//! Runs on: the main thread parses the flags, resolves the addresses and checks the
//! listen address is free; then one pinned executor per core (`available_parallelism`)
//! binds the listen address (glommio binds with SO_REUSEPORT, so the kernel spreads the
//! connections over the cores) and splices each connection it accepts on that core, with
//! two copy tasks, one per direction. Core 0 also runs the monitor that retries inactive
//! endpoints. The main thread then only waits.
//!
//! Picking an endpoint follows etcd's `proxy/tcpproxy`: round robin over the endpoints
//! that are active; a dial that fails marks its endpoint inactive and the next one is
//! tried; when none is left the client's connection is closed. Every `--retry-delay` the
//! monitor dials each inactive endpoint once and makes it active again if that works.
//!
//! The active set is shared by the cores through atomics (one flag per endpoint and the
//! round-robin counter), not kept per core: a dead endpoint then costs one failed dial
//! for the whole process instead of one per core, one monitor dials it back, and the log
//! says "deactivated" / "activated" once per change, as etcd's does. The price is a
//! relaxed load per endpoint and one `fetch_add` per accepted connection, nothing next to
//! the dial that follows. No lock is taken anywhere.
//!
//! Invariants: a connection lives and dies on the core that accepted it; its two sockets
//! are closed once both directions have ended (an end of stream is passed on as a
//! half-close, an error shuts both sockets down so the other direction ends too).
//!
//! Differences from etcd 3.4, on purpose: DNS SRV discovery (`--discovery-srv`) is refused
//! with an error (`--insecure-discovery`, `--trusted-ca-file` and `--discovery-srv-name`
//! only matter with it and are accepted); endpoint host names are resolved once at start
//! (etcd resolves them at start to validate, and again at every dial); a dial gives up
//! after `DIAL_TIMEOUT` (etcd has none, so a blackholed endpoint holds a client for the
//! kernel's SYN retries, about two minutes).

use crate::proxy::args::{self, Args, Spec};
use crate::runtime::{executor_builder, log};
use futures_lite::future::poll_fn;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::Placement;
use std::cell::RefCell;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The log package name etcd's gateway logs under.
const LOG_PACKAGE: &str = "proxy/tcpproxy";

/// How long a dial to an endpoint may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes each direction of a spliced connection reads at a time.
const COPY_BUFFER_BYTES: usize = 16 * 1024;

/// How long start waits for an earlier listener on the listen address to go away (a
/// gateway restarted at once: io_uring closes its sockets a moment after the process).
const ADDRESS_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// After a failed accept (out of file descriptors, say), the pause before the next one.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// etcd's `--retry-delay` of 0: its monitor then runs every five minutes.
const RETRY_DELAY_ZERO_MEANS: Duration = Duration::from_secs(5 * 60);

const SPECS: &[Spec] = &[
    Spec {
        name: "listen-addr",
        boolean: false,
        default: "127.0.0.1:23790",
        help: "listen address",
    },
    Spec {
        name: "endpoints",
        boolean: false,
        default: "127.0.0.1:2379",
        help: "comma separated etcd cluster endpoints",
    },
    Spec {
        name: "discovery-srv",
        boolean: false,
        default: "",
        help: "DNS domain used to bootstrap initial cluster (not supported by Keel)",
    },
    Spec {
        name: "discovery-srv-name",
        boolean: false,
        default: "",
        help: "service name to query when using DNS discovery",
    },
    Spec {
        name: "insecure-discovery",
        boolean: true,
        default: "false",
        help: "accept insecure SRV records",
    },
    Spec {
        name: "trusted-ca-file",
        boolean: false,
        default: "",
        help: "path to the client server TLS CA file for verifying the discovered \
               endpoints when discovery-srv is provided.",
    },
    Spec {
        name: "retry-delay",
        boolean: false,
        default: "1m0s",
        help: "duration of delay before retrying failed endpoints",
    },
];

fn usage() -> String {
    format!(
        "start the gateway: an L4 (TCP) forwarder to a cluster's client URLs\n\n\
         Usage:\n  keel gateway start [flags]\n\nFlags:\n{}{:<44} help for start",
        args::flags_help(SPECS),
        "  -h, --help"
    )
}

/// Why the gateway cannot start; each prints as etcd's gateway says it.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A flag that does not parse (the parser's message, or a bad value).
    Flags(String),
    DiscoveryUnsupported,
    BadEndpoint(String),
    UnresolvedEndpoint(String),
    BadListenAddr(String),
    UnresolvedListenHost(String),
    /// An endpoint resolves to the gateway's own listen address: (endpoint, address).
    EndpointIsSelf(String, SocketAddr, String),
    NoEndpoints,
    Bind(SocketAddr, String),
    Executor(usize, String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Flags(m) => write!(f, "{m}"),
            Error::DiscoveryUnsupported => write!(
                f,
                "--discovery-srv: DNS SRV discovery is not supported by keel gateway; \
                 list the members' client URLs with --endpoints"
            ),
            Error::BadEndpoint(ep) => write!(f, "error parsing endpoint {ep:?}"),
            Error::UnresolvedEndpoint(host) => {
                write!(f, "failed to resolve endpoint host: {host}")
            }
            Error::BadListenAddr(a) => write!(f, "failed to validate listen address: {a}"),
            Error::UnresolvedListenHost(h) => write!(f, "failed to resolve listen host: {h}"),
            Error::EndpointIsSelf(ep, ea, listen) => write!(
                f,
                "SRV or endpoint ({ep}->{ea}) should not resolve to the gateway listen addr \
                 ({listen})"
            ),
            Error::NoEndpoints => write!(f, "no endpoints found"),
            Error::Bind(addr, e) => write!(f, "listen tcp {addr}: bind: {e}"),
            Error::Executor(core, e) => write!(f, "cannot start gateway core {core}: {e}"),
        }
    }
}

/// What `keel gateway start` was asked to do, resolved.
#[derive(Debug)]
pub struct Config {
    /// The address every core listens on (the first `--listen-addr` resolves to).
    pub listen: SocketAddr,
    pub remotes: Vec<Remote>,
    pub retry_delay: Duration,
}

/// One endpoint: as it is named in logs (`host:port`) and the addresses a dial tries, in
/// order.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

/// Runs `keel gateway …` (`args` after `gateway`).
pub fn main(args: &[String]) -> Result<(), String> {
    let parsed = args::parse(args, SPECS).map_err(|e| format!("{e}\n\n{}", usage()))?;
    if parsed.help {
        println!("{}", usage());
        return Ok(());
    }
    crate::proxy::verb(&parsed.positional, &usage())?;
    if parsed.positional.is_empty() {
        return Ok(());
    }
    let config = config_from(&parsed).map_err(|e| e.to_string())?;
    run(config).map_err(|e| e.to_string())
}

/// The flags checked and resolved in etcd's order: discovery, endpoints, listen address,
/// endpoints that are the gateway itself.
pub fn config_from(a: &Args) -> Result<Config, Error> {
    if !a.get(SPECS, "discovery-srv").is_empty() {
        return Err(Error::DiscoveryUnsupported);
    }
    let retry_text = a.get(SPECS, "retry-delay");
    let retry_delay = crate::config::go_duration(retry_text).ok_or_else(|| {
        Error::Flags(format!(
            "invalid argument {retry_text:?} for \"--retry-delay\" flag: time: invalid \
             duration {retry_text:?}"
        ))
    })?;
    let retry_delay = if retry_delay.is_zero() {
        RETRY_DELAY_ZERO_MEANS
    } else {
        retry_delay
    };
    let endpoints: Vec<(String, u16)> = a
        .list(SPECS, "endpoints")
        .iter()
        .map(|ep| {
            let (host, port) =
                split_host_port(strip_scheme(ep)).ok_or_else(|| Error::BadEndpoint(ep.clone()))?;
            Ok((host.to_string(), port))
        })
        .collect::<Result<_, Error>>()?;
    let listen_text = a.get(SPECS, "listen-addr");
    let (listen_host, listen_port) =
        split_host_port(listen_text).ok_or_else(|| Error::BadListenAddr(listen_text.into()))?;
    let listen_addrs = resolve(listen_host, listen_port)
        .ok_or_else(|| Error::UnresolvedListenHost(listen_host.into()))?;
    let mut remotes = Vec::with_capacity(endpoints.len());
    for (host, port) in endpoints {
        let addrs = resolve(&host, port).ok_or_else(|| Error::UnresolvedEndpoint(host.clone()))?;
        let name = join_host_port(&host, port);
        if port == listen_port {
            if let Some(a) = addrs.iter().find(|a| listen_addrs.contains(a)) {
                return Err(Error::EndpointIsSelf(name, *a, listen_text.into()));
            }
        }
        remotes.push(Remote { name, addrs });
    }
    if remotes.is_empty() {
        return Err(Error::NoEndpoints);
    }
    Ok(Config {
        listen: listen_addrs[0],
        remotes,
        retry_delay,
    })
}

/// An endpoint given as a URL (`http://host:port`, `https://…`) is its `host:port`, as
/// etcd's gateway takes it; anything else is kept as it is.
fn strip_scheme(ep: &str) -> &str {
    let Some((_, rest)) = ep.split_once("://") else {
        return ep;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() {
        ep
    } else {
        host
    }
}

/// Go's `net.SplitHostPort` followed by the port read as a number: `host:port` or
/// `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    if host.contains(['[', ']']) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The addresses `host` resolves to (an empty host is every local address, as in Go).
/// Blocking: called on the main thread before any executor runs.
fn resolve(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// A Go duration as `time.Duration.String` prints it (`1m0s`, `1.5s`, `300ms`).
fn go_duration_text(d: Duration) -> String {
    let ns = d.as_nanos();
    let trimmed = |whole: u128, frac: u128, digits: usize| {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    match ns {
        0 => "0s".into(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}µs", trimmed(ns / 1_000, ns % 1_000, 3)),
        1_000_000..=999_999_999 => format!("{}ms", trimmed(ns / 1_000_000, ns % 1_000_000, 6)),
        _ => {
            let secs = ns / 1_000_000_000;
            let s = trimmed(secs % 60, ns % 1_000_000_000, 9);
            match (secs / 3600, secs / 60 % 60) {
                (0, 0) => format!("{s}s"),
                (0, m) => format!("{m}m{s}s"),
                (h, m) => format!("{h}h{m}m{s}s"),
            }
        }
    }
}

/// The endpoints and which of them are active, shared by every core.
pub struct Remotes {
    remotes: Vec<Remote>,
    /// `inactive[i]`: remote `i`'s last dial failed and the monitor has not dialled it
    /// back since.
    inactive: Vec<AtomicBool>,
    /// Connections served so far: the round-robin position.
    picks: AtomicUsize,
    retry_delay: Duration,
}

impl Remotes {
    pub fn new(remotes: Vec<Remote>, retry_delay: Duration) -> Remotes {
        assert!(!remotes.is_empty(), "a gateway needs an endpoint");
        Remotes {
            inactive: remotes.iter().map(|_| AtomicBool::new(false)).collect(),
            remotes,
            picks: AtomicUsize::new(0),
            retry_delay,
        }
    }

    /// The next active remote in round-robin order, if any is active.
    fn pick(&self) -> Option<usize> {
        let n = self.remotes.len();
        (0..n)
            .map(|_| self.picks.fetch_add(1, Ordering::Relaxed) % n)
            .find(|&i| !self.inactive[i].load(Ordering::Relaxed))
    }

    /// Marks remote `i` inactive after a failed dial; logs the change once.
    fn deactivate(&self, i: usize, e: &std::io::Error) {
        if !self.inactive[i].swap(true, Ordering::Relaxed) {
            log::warning(
                LOG_PACKAGE,
                &format!(
                    "deactivated endpoint [{}] due to {e} for {}",
                    self.remotes[i].name,
                    go_duration_text(self.retry_delay)
                ),
            );
        }
    }

    /// A connection to remote `i`: each of its addresses in turn; the last error if none
    /// answers.
    async fn dial(&self, i: usize) -> std::io::Result<TcpStream> {
        let mut last = None;
        for addr in &self.remotes[i].addrs {
            match TcpStream::connect_timeout(*addr, DIAL_TIMEOUT).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(std::io::Error::from(e)),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    }

    /// Dials remote `i` once and makes it active again if that works.
    async fn try_reactivate(&self, i: usize) {
        let name = &self.remotes[i].name;
        match self.dial(i).await {
            Ok(probe) => {
                drop(probe);
                self.inactive[i].store(false, Ordering::Relaxed);
                log::info(LOG_PACKAGE, &format!("activated {name}"));
            }
            Err(e) => log::warning(
                LOG_PACKAGE,
                &format!(
                    "failed to activate endpoint [{name}] due to {e} (stay inactive for \
                     another {})",
                    go_duration_text(self.retry_delay)
                ),
            ),
        }
    }
}

/// Starts the cores and serves until the process is killed.
pub fn run(config: Config) -> Result<(), Error> {
    wait_until_free(config.listen)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let names: Vec<String> = config.remotes.iter().map(|r| r.name.clone()).collect();
    let remotes = Arc::new(Remotes::new(config.remotes, config.retry_delay));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
    let mut handles = Vec::with_capacity(cores);
    for core in 0..cores {
        let (remotes, bound_tx, listen) = (remotes.clone(), bound_tx.clone(), config.listen);
        let handle = executor_builder(&format!("keel-gateway-{core}"), Placement::Fixed(core))
            .spawn(move || async move {
                let listener = match TcpListener::bind(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(Error::Bind(listen, e.to_string())));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                if core == 0 {
                    glommio::spawn_local(monitor(remotes.clone())).detach();
                }
                accept_loop(listener, remotes).await;
            })
            .map_err(|e| Error::Executor(core, e.to_string()))?;
        handles.push(handle);
    }
    drop(bound_tx);
    for _ in 0..cores {
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Executor(0, "stopped before it listened".into())),
        }
    }
    log::info(
        LOG_PACKAGE,
        &format!("ready to proxy client requests to [{}]", names.join(" ")),
    );
    for (core, handle) in handles.into_iter().enumerate() {
        handle
            .join()
            .map_err(|e| Error::Executor(core, e.to_string()))?;
    }
    Ok(())
}

/// Fails as etcd's `net.Listen` would when a socket already listens on `addr`. Every core
/// binds with SO_REUSEPORT, which would otherwise share the address silently with another
/// gateway; a plain bind first tells.
fn wait_until_free(addr: SocketAddr) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + ADDRESS_RELEASE_WAIT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(Error::Bind(addr, e.to_string())),
        }
    }
}

async fn accept_loop(listener: TcpListener, remotes: Arc<Remotes>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                glommio::spawn_local(serve(conn, remotes.clone())).detach();
            }
            Err(e) => {
                log::error(LOG_PACKAGE, &format!("accept: {e}"));
                glommio::timer::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Every `retry_delay`, dials each inactive remote once (each in its own task, so a slow
/// one holds up no other).
async fn monitor(remotes: Arc<Remotes>) {
    loop {
        glommio::timer::sleep(remotes.retry_delay).await;
        for i in 0..remotes.remotes.len() {
            if remotes.inactive[i].load(Ordering::Relaxed) {
                let remotes = remotes.clone();
                glommio::spawn_local(async move { remotes.try_reactivate(i).await }).detach();
            }
        }
    }
}

/// One client connection: a remote picked and dialled, then the bytes copied both ways.
/// With no remote left the client's connection is closed (dropped).
async fn serve(client: TcpStream, remotes: Arc<Remotes>) {
    let upstream = loop {
        let Some(i) = remotes.pick() else {
            return;
        };
        match remotes.dial(i).await {
            Ok(s) => break s,
            Err(e) => remotes.deactivate(i, &e),
        }
    };
    // Go's sockets have TCP_NODELAY on; gRPC's small frames must not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let client = Rc::new(RefCell::new(client));
    let upstream = Rc::new(RefCell::new(upstream));
    let up = glommio::spawn_local(copy(client.clone(), upstream.clone()));
    copy(upstream, client).await;
    up.await;
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`) or either fails (then
/// shuts both down, which ends the other direction's copy too).
///
/// The two directions share each socket through a `RefCell`; a borrow never lives across
/// an await (each is taken inside one `poll`), and glommio keeps a socket's read and write
/// readiness apart, so the two tasks never wake each other's waiters.
async fn copy(from: Rc<RefCell<TcpStream>>, to: Rc<RefCell<TcpStream>>) {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let read = poll_fn(|cx| Pin::new(&mut *from.borrow_mut()).poll_read(cx, &mut buf)).await;
        let n = match read {
            Ok(0) => {
                shutdown(&to, Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        if write_all(&to, &buf[..n]).await.is_err() {
            break;
        }
    }
    shutdown(&from, Shutdown::Both);
    shutdown(&to, Shutdown::Both);
}

async fn write_all(to: &RefCell<TcpStream>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *to.borrow_mut()).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// shutdown(2) on a socket; errors (already shut, peer gone) change nothing here.
fn shutdown(stream: &RefCell<TcpStream>, how: Shutdown) {
    // glommio's `shutdown` is the plain system call behind an async signature: it is ready
    // at its first poll, so it is polled once here instead of awaited.
    let s = stream.borrow();
    let _ = futures_lite::future::block_on(futures_lite::future::poll_once(s.shutdown(how)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Config, Error> {
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        config_from(&args::parse(&a, SPECS).unwrap())
    }

    #[test]
    fn endpoints_lose_their_scheme_as_in_etcd() {
        assert_eq!(strip_scheme("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(strip_scheme("https://a.example:2379/x?y"), "a.example:2379");
        assert_eq!(strip_scheme("http://u:p@h:1"), "h:1");
        assert_eq!(strip_scheme("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(split_host_port("[::1]:2379"), Some(("::1", 2379)));
        assert_eq!(split_host_port("h:2379"), Some(("h", 2379)));
        assert_eq!(split_host_port(":23790"), Some(("", 23790)));
        assert_eq!(split_host_port("::1:2379"), None);
        assert_eq!(split_host_port("h"), None);
        assert_eq!(split_host_port("h:x"), None);
    }

    #[test]
    fn flags_resolve_or_fail_with_etcds_words() {
        let c = parse(&["--endpoints=http://127.0.0.1:1,localhost:2", "start"]).unwrap();
        assert_eq!(c.remotes[0].name, "127.0.0.1:1");
        assert_eq!(c.remotes[1].name, "localhost:2");
        assert!(!c.remotes[1].addrs.is_empty());
        assert_eq!(c.listen, "127.0.0.1:23790".parse().unwrap());
        assert_eq!(c.retry_delay, Duration::from_secs(60));
        let c = parse(&["--retry-delay", "1.5s"]).unwrap();
        assert_eq!(c.retry_delay, Duration::from_millis(1500));
        assert!(matches!(
            parse(&["--retry-delay=soon"]),
            Err(Error::Flags(_))
        ));
        assert_eq!(
            parse(&["--listen-addr=nope"]).unwrap_err(),
            Error::BadListenAddr("nope".into())
        );
        assert_eq!(
            parse(&["--endpoints=x"]).unwrap_err(),
            Error::BadEndpoint("x".into())
        );
        assert_eq!(parse(&["--endpoints=,"]).unwrap_err(), Error::NoEndpoints);
        assert_eq!(
            parse(&["--discovery-srv=example.com"]).unwrap_err(),
            Error::DiscoveryUnsupported
        );
        assert!(matches!(
            parse(&["--endpoints=127.0.0.1:23790"]),
            Err(Error::EndpointIsSelf(..))
        ));
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(go_duration_text(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration_text(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration_text(Duration::from_millis(300)), "300ms");
        assert_eq!(go_duration_text(Duration::from_micros(2)), "2µs");
        assert_eq!(go_duration_text(Duration::ZERO), "0s");
    }

    #[test]
    fn picks_go_round_robin_over_active_remotes() {
        let remote = |n: &str| Remote {
            name: n.into(),
            addrs: vec![],
        };
        let r = Remotes::new(
            vec![remote("a"), remote("b"), remote("c")],
            Duration::from_secs(1),
        );
        let picks: Vec<_> = (0..4).map(|_| r.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        r.inactive[1].store(true, Ordering::Relaxed);
        let picks: Vec<_> = (0..4).map(|_| r.pick().unwrap()).collect();
        assert_eq!(picks, [2, 0, 2, 0]);
        for f in &r.inactive {
            f.store(true, Ordering::Relaxed);
        }
        assert_eq!(r.pick(), None);
    }
}
