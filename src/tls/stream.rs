//! Sockets plain or TLS: [`Stream`] is what the gRPC server and the peer transport read
//! and write; [`Acceptor`] turns an accepted socket into one (TLS handshake under a
//! timeout, certificate files re-read when they change); [`Connector`] dials.

use super::{accept_error_text, Material, TlsInfo};
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::{TcpStream, UnixStream};
use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A handshake not done in this time is cut (GHSA-6vch-q96h-7gc3: connections that never
/// send a ClientHello must not pile up).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Certificate files are read again at most this often, on a new connection.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A TLS record starts with this byte when it carries a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A socket before any TLS.
pub enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connection: plain, or TLS on top of a plain socket.
pub enum Stream {
    Plain(Plain),
    Server(Box<futures_rustls::server::TlsStream<Plain>>),
    Client(Box<futures_rustls::client::TlsStream<Plain>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain(Plain::Tcp($s)) => $e,
            Stream::Plain(Plain::Unix($s)) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

macro_rules! delegate_plain {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Plain::Tcp($s) => $e,
            Plain::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate_plain!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_plain!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_plain!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_plain!(self, s => Pin::new(s).poll_close(cx))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_close(cx))
    }
}

impl Plain {
    async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self {
            Plain::Tcp(s) => s.peek(buf).await,
            Plain::Unix(s) => s.peek(buf).await,
        };
        n.map_err(io::Error::from)
    }

    /// The remote address, for logs.
    pub fn peer_text(&self) -> String {
        match self {
            Plain::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            Plain::Unix(_) => "unix".to_string(),
        }
    }
}

/// An accepted connection and who the client proved to be.
pub struct Accepted {
    pub stream: Stream,
    /// The verified client certificate's Common Name (TLS with a client certificate only).
    pub common_name: Option<Rc<str>>,
}

/// What a listener speaks.
#[derive(Clone)]
pub enum Mode {
    Plain,
    Tls(Rc<Acceptor>),
    /// The same address listed as http and https: the first byte tells.
    Both(Rc<Acceptor>),
}

impl Mode {
    /// Turns an accepted socket into a connection: for TLS, the handshake (cut after
    /// [`HANDSHAKE_TIMEOUT`]). A failure is logged by the caller; it closes this
    /// connection only.
    pub async fn accept(&self, plain: Plain) -> io::Result<Accepted> {
        let acceptor = match self {
            Mode::Plain => {
                return Ok(Accepted {
                    stream: Stream::Plain(plain),
                    common_name: None,
                })
            }
            Mode::Tls(a) => a,
            Mode::Both(a) => {
                let mut first = [0u8; 1];
                let peeked = with_timeout(HANDSHAKE_TIMEOUT, plain.peek(&mut first)).await?;
                if peeked == 0 || first[0] != TLS_HANDSHAKE_RECORD {
                    return Ok(Accepted {
                        stream: Stream::Plain(plain),
                        common_name: None,
                    });
                }
                a
            }
        };
        acceptor.accept(plain).await
    }
}

/// One side's configs, built from its files: on a handshake at least [`RELOAD_INTERVAL`]
/// after the last look, the files are read again (on glommio's blocking pool) and the
/// configs rebuilt when they changed. A file caught half rewritten keeps the old configs
/// until the next look.
struct Reloading {
    material: RefCell<Material>,
    checked: Cell<Instant>,
    checking: Cell<bool>,
}

impl Reloading {
    fn new(material: Material) -> Reloading {
        Reloading {
            material: RefCell::new(material),
            checked: Cell::new(Instant::now()),
            checking: Cell::new(false),
        }
    }

    fn info(&self) -> TlsInfo {
        self.material.borrow().info.clone()
    }

    /// Looks at the files again if it is time to.
    async fn refresh(&self) {
        if self.checked.get().elapsed() < RELOAD_INTERVAL || self.checking.get() {
            return;
        }
        self.checking.set(true);
        let info = self.info();
        let read = glommio::executor()
            .spawn_blocking(move || info.read_files())
            .await;
        self.checked.set(Instant::now());
        self.checking.set(false);
        let Ok(files) = read else {
            return;
        };
        if files == self.material.borrow().files {
            return;
        }
        let info = self.info();
        match Material::build(&info, &files) {
            Ok(m) => {
                crate::runtime::log::info(
                    "embed",
                    &format!(
                        "reloaded TLS certificate files ({})",
                        info.cert_file.display()
                    ),
                );
                *self.material.borrow_mut() = m;
            }
            Err(e) => crate::runtime::log::warning(
                "embed",
                &format!("keeping the current TLS certificate: {e}"),
            ),
        }
    }
}

/// One side's TLS acceptor on one core, its configs [`Reloading`] from the files.
pub struct Acceptor {
    client_cert_auth: bool,
    files: Reloading,
}

impl Acceptor {
    pub fn new(material: Material) -> Rc<Acceptor> {
        Rc::new(Acceptor {
            client_cert_auth: material.info.client_cert_auth,
            files: Reloading::new(material),
        })
    }

    /// Whether client certificates are checked and their CN is the caller's identity.
    pub fn client_cert_auth(&self) -> bool {
        self.client_cert_auth
    }

    async fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.files.refresh().await;
        self.files.material.borrow().server.clone()
    }

    /// The handshake, cut after [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, plain: Plain) -> io::Result<Accepted> {
        let config = self.server_config().await;
        let tls = with_timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(plain))
            .await
            .map_err(|e| io::Error::new(e.kind(), accept_error_text(&e)))?;
        let common_name = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| super::x509::common_name(cert))
            .map(Rc::from);
        Ok(Accepted {
            stream: Stream::Server(Box::new(tls)),
            common_name,
        })
    }
}

/// Dials with one side's client config (the peer transport), [`Reloading`] it from the
/// files: a rotated certificate (or CA) is used on the next connection, as etcd does.
pub struct Connector {
    files: Reloading,
}

impl Connector {
    pub fn new(material: &Material) -> Connector {
        Connector {
            files: Reloading::new(material.clone()),
        }
    }

    /// The TLS handshake over a dialed socket; `host` is the URL's host (checked against
    /// the server's certificate unless the pair is self-signed).
    pub async fn connect(&self, host: &str, plain: Plain) -> io::Result<Stream> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        self.files.refresh().await;
        let config = self.files.material.borrow().client.clone();
        let tls = with_timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(name, plain),
        )
        .await
        .map_err(|e| io::Error::new(e.kind(), super::error_text(&e)))?;
        Ok(Stream::Client(Box::new(tls)))
    }
}

async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(fut, async move {
        glommio::timer::sleep(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "tls: handshake timed out",
        ))
    })
    .await
}
