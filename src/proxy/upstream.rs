//! The cluster behind a proxy, from one core: its endpoints (`--endpoints`), the one h2
//! connection this core keeps to one of them, and failover to the next when it breaks.
//!
//! Runs on: every proxy core (each core its own connection: no cross-core sharing). A call
//! that finds no connection dials the endpoints in turn, starting after the one that failed
//! last, so a dead member is passed over at once; a call that failed on a broken
//! connection marks it, and the next call dials again. Connections are checked by HTTP/2
//! PING (a paused or partitioned member answers nothing, and its socket stays open).

use crate::grpc::client::{self, CallError, Conn};
use bytes::Bytes;
use futures_lite::future;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How long a dial may take before the next endpoint is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection idle this long is PINGed; unanswered for as long again, it is dropped.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// One `--endpoints` entry: where to dial and the host name TLS checks.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
}

/// Parses `--endpoints` entries (`host:port`, `http://host:port`, `https://host:port`);
/// names are resolved now (boot, on the main thread). Whether TLS is used comes from the
/// flags, as etcd's clientv3 decides by its TLS config.
pub fn endpoints(list: &[String]) -> Result<Vec<Endpoint>, String> {
    use std::net::ToSocketAddrs;
    if list.is_empty() {
        return Err("no endpoints given (--endpoints)".into());
    }
    let mut out = Vec::new();
    for e in list {
        let hostport = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e)
            .trim_end_matches('/');
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => return Err(format!("endpoint {e:?}: missing port in address")),
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|err| format!("endpoint {e:?}: {err}"))?
            .next()
            .ok_or_else(|| format!("endpoint {e:?}: no address"))?;
        out.push(Endpoint { addr, host });
    }
    Ok(out)
}

/// This core's way to the cluster.
pub struct Upstream {
    endpoints: Vec<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The live connection, its endpoint and generation.
    current: RefCell<Option<(Conn, usize, u64)>>,
    /// The endpoint to try first on the next dial.
    next: Cell<usize>,
    generation: Cell<u64>,
    /// One dial at a time; the others wait for its result.
    dialing: glommio::sync::Semaphore,
}

impl Upstream {
    pub fn new(endpoints: Vec<Endpoint>, tls: Option<Arc<rustls::ClientConfig>>) -> Rc<Upstream> {
        Rc::new(Upstream {
            endpoints,
            tls,
            current: RefCell::new(None),
            next: Cell::new(0),
            generation: Cell::new(0),
            dialing: glommio::sync::Semaphore::new(1),
        })
    }

    /// The connection to use, dialing one if there is none; the error says why no
    /// endpoint could be reached.
    pub async fn conn(self: &Rc<Self>) -> Result<(Conn, u64), CallError> {
        if let Some((c, _, g)) = &*self.current.borrow() {
            return Ok((c.clone(), *g));
        }
        let _permit = self
            .dialing
            .acquire_permit(1)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if let Some((c, _, g)) = &*self.current.borrow() {
            return Ok((c.clone(), *g));
        }
        let n = self.endpoints.len();
        let mut last = String::new();
        for i in 0..n {
            let at = (self.next.get() + i) % n;
            match self.dial(&self.endpoints[at]).await {
                Ok((conn, ping)) => {
                    let g = self.generation.get() + 1;
                    self.generation.set(g);
                    *self.current.borrow_mut() = Some((conn.clone(), at, g));
                    self.next.set(at);
                    if let Some(ping) = ping {
                        self.watch_health(ping, g);
                    }
                    return Ok((conn, g));
                }
                Err(e) => last = format!("{}: {e}", self.endpoints[at].addr),
            }
        }
        self.next.set((self.next.get() + 1) % n);
        Err(CallError::Transport(format!(
            "connection error: desc = \"transport: Error while dialing {last}\""
        )))
    }

    /// The connection of generation `g` broke: the next call dials the next endpoint.
    pub fn failed(&self, g: u64) {
        let mut cur = self.current.borrow_mut();
        if let Some((_, at, gen)) = &*cur {
            if *gen == g {
                self.next.set((*at + 1) % self.endpoints.len());
                *cur = None;
            }
        }
    }

    /// The endpoint the live connection goes to, if any.
    pub fn current_endpoint(&self) -> Option<SocketAddr> {
        self.current
            .borrow()
            .as_ref()
            .map(|(_, at, _)| self.endpoints[*at].addr)
    }

    async fn dial(&self, ep: &Endpoint) -> Result<(Conn, Option<h2::PingPong>), CallError> {
        let tcp = TcpStream::connect_timeout(ep.addr, DIAL_TIMEOUT)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        tcp.set_nodelay(true).ok();
        match &self.tls {
            None => client::handshake_pinged(tcp).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|e| CallError::Transport(format!("{}: {e}", ep.host)))?;
                let tls = future::or(
                    async {
                        futures_rustls::TlsConnector::from(config.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(|e| CallError::Transport(e.to_string()))
                    },
                    async {
                        glommio::timer::sleep(DIAL_TIMEOUT).await;
                        Err(CallError::Transport("TLS handshake timeout".into()))
                    },
                )
                .await?;
                client::handshake_pinged(tls).await
            }
        }
    }

    /// PINGs the connection while it is current; a PING unanswered within the interval
    /// (a paused or cut-off member) makes it fail over.
    fn watch_health(self: &Rc<Self>, mut pinger: h2::PingPong, g: u64) {
        let me = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(PING_INTERVAL).await;
                let Some(up) = me.upgrade() else { return };
                if up.current.borrow().as_ref().map(|c| c.2) != Some(g) {
                    return;
                }
                drop(up);
                let answered = future::or(
                    async { pinger.ping(h2::Ping::opaque()).await.is_ok() },
                    async {
                        glommio::timer::sleep(PING_INTERVAL).await;
                        false
                    },
                )
                .await;
                if !answered {
                    if let Some(up) = me.upgrade() {
                        crate::runtime::log::warning(
                            "grpcproxy",
                            "upstream connection did not answer a PING; failing over",
                        );
                        up.failed(g);
                    }
                    return;
                }
            }
        })
        .detach();
    }

    /// One unary call forwarded as bytes; a connection that breaks under it is marked.
    /// A `repeatable` call (a read) is tried once more on the next endpoint; a write is
    /// not, since it may have been applied before the connection broke.
    pub async fn unary(
        self: &Rc<Self>,
        path: &str,
        metadata: &[(&str, &str)],
        message: Bytes,
        repeatable: bool,
    ) -> Result<Bytes, CallError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (conn, g) = self.conn().await?;
            match client::unary_raw(&conn, path, metadata, message.clone()).await {
                Err(CallError::Transport(e)) => {
                    self.failed(g);
                    if tries >= 2 || !repeatable {
                        return Err(CallError::Transport(e));
                    }
                }
                other => return other,
            }
        }
    }
}
