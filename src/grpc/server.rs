//! The gRPC server: accept loop, one h2 connection task per TCP connection, one task per
//! stream, routing by `:path`, and the request / response halves handed to handlers.

use super::codec::{self, Decoder};
use super::status::{Code, Status};
use super::timeout;
use crate::runtime::log;
use crate::tls::stream::{Mode, Plain};
use bytes::{Bytes, BytesMut};
use futures_lite::future::{self, BoxedLocal};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpListener;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// etcd's `--max-request-bytes` default.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// etcd adds this to `--max-request-bytes` for the gRPC receive limit (`grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Connection and stream settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest request message accepted (etcd: max-request-bytes + gRPC overhead).
    pub message_bytes_max: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection.
    pub concurrent_streams_max: u32,
    /// Initial flow-control window of each stream (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window_bytes: u32,
    /// Initial flow-control window of the whole connection.
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub frame_bytes_max: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub header_list_bytes_max: u32,
    /// Responses a handler may queue ahead of the HTTP/2 flow control before `send` waits.
    pub response_queue_max: usize,
    /// Idle time after which the server PINGs the client (etcd's
    /// `--grpc-keepalive-interval`, 2 h).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed (etcd's
    /// `--grpc-keepalive-timeout`, 20 s).
    pub keepalive_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            message_bytes_max: MAX_REQUEST_BYTES_DEFAULT + GRPC_OVERHEAD_BYTES,
            concurrent_streams_max: 1024,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 8 << 20,
            frame_bytes_max: 1 << 16,
            header_list_bytes_max: 16 << 10,
            response_queue_max: 16,
            keepalive_interval: Duration::from_secs(2 * 60 * 60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// One incoming call: its metadata and its stream of request messages.
pub struct Request {
    /// `:path`, e.g. `/etcdserverpb.KV/Range`.
    pub path: String,
    /// All request headers (gRPC metadata), e.g. `token`, `hasleader`.
    pub metadata: HeaderMap,
    /// From `grpc-timeout`; the server already enforces it around the handler.
    pub timeout: Option<Duration>,
    pub messages: Messages,
    /// The Common Name of the client certificate the connection was verified with
    /// (`--client-cert-auth` on a TLS client URL), for auth to take as the user.
    pub common_name: Option<Rc<str>>,
}

impl Request {
    /// A metadata value as text, if present and visible ASCII.
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.to_str().ok())
    }

    /// The auth token (`token` metadata) etcd clients send.
    pub fn token(&self) -> Option<&str> {
        self.metadata_str("token")
    }

    /// `hasleader: true` asks the server to fail the call when it has no leader.
    pub fn requires_leader(&self) -> bool {
        self.metadata_str("hasleader") == Some("true")
    }

    /// Who calls: the metadata and certificate name, without the messages.
    pub fn call(&self) -> Call {
        Call {
            metadata: self.metadata.clone(),
            common_name: self.common_name.clone(),
        }
    }
}

/// What a handler knows of its caller besides the message: the gRPC metadata and the
/// verified client certificate's Common Name (see [`Request::common_name`]).
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub metadata: HeaderMap,
    pub common_name: Option<Rc<str>>,
}

impl Call {
    /// The auth token: etcd's `token` metadata, else the gateway's `authorization`
    /// (without a `Bearer ` prefix, as etcd 3.5 takes it).
    pub fn token(&self) -> Option<&str> {
        let get = |k: &str| self.metadata.get(k).and_then(|v| v.to_str().ok());
        get("token")
            .or_else(|| get("authorization").map(|t| t.strip_prefix("Bearer ").unwrap_or(t)))
    }
}

/// The request messages of a call: decoded from DATA frames as the handler asks for them
/// (so HTTP/2 flow control pushes back on a client that sends faster than we handle), or
/// given in memory by an in-process caller (the JSON gateway, [`Router::call_local`]).
pub struct Messages {
    source: Source,
    /// The method's counters on this core (`None`: not a route, or an in-process call).
    metrics: Option<Rc<crate::metrics::GrpcCells>>,
}

enum Source {
    H2 {
        body: h2::RecvStream,
        decoder: Decoder,
        ended: bool,
        /// Chunks kept, not copied ([`Decoder::push_shared`]): a unary call's.
        shared: bool,
    },
    /// Handed out in order; then the end of the stream, or, when `held_open`, nothing
    /// more until the call is dropped: etcd's Watch outlives a client's half-close, and a
    /// gateway client leaves by closing its connection, which drops the call.
    Local {
        queue: std::collections::VecDeque<Bytes>,
        held_open: bool,
    },
}

impl Messages {
    /// Messages already in memory (see [`Source::Local`] for `held_open`).
    pub fn local(messages: Vec<Bytes>, held_open: bool) -> Messages {
        Messages {
            source: Source::Local {
                queue: messages.into(),
                held_open,
            },
            metrics: None,
        }
    }

    /// The next message; `None` when the client half-closed cleanly; `Some(Err)` ends
    /// the call (oversized, compressed, truncated, or the stream was reset).
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        let (body, decoder, ended, shared) = match &mut self.source {
            Source::H2 {
                body,
                decoder,
                ended,
                shared,
            } => (body, decoder, ended, *shared),
            Source::Local { queue, held_open } => {
                if let Some(message) = queue.pop_front() {
                    return Some(Ok(message));
                }
                if *held_open {
                    future::pending::<()>().await;
                }
                return None;
            }
        };
        loop {
            match decoder.decode() {
                Ok(Some(message)) => {
                    if let Some(m) = &self.metrics {
                        m.received(message.len());
                    }
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(status) => return Some(Err(status)),
            }
            if *ended {
                return decoder.finish().err().map(Err);
            }
            match body.data().await {
                None => *ended = true,
                Some(Ok(chunk)) => {
                    // The decoder holds the bytes now (copied, or the chunk itself for a
                    // unary call), so the window can reopen; it never holds more than one
                    // message plus one chunk.
                    let _ = body.flow_control().release_capacity(chunk.len());
                    if shared {
                        decoder.push_shared(chunk);
                    } else {
                        decoder.push(&chunk);
                    }
                }
                Some(Err(e)) => return Some(Err(h2_status(&e))),
            }
        }
    }

    /// Exactly one message, as a unary call must carry.
    pub async fn single(&mut self) -> Result<Bytes, Status> {
        let message = match self.next().await {
            Some(result) => result?,
            None => {
                return Err(Status::new(
                    Code::Internal,
                    "grpc: unary request has no message",
                ))
            }
        };
        match self.next().await {
            None => Ok(message),
            Some(Err(status)) => Err(status),
            Some(Ok(_)) => Err(Status::new(
                Code::Internal,
                "grpc: unary request has more than one message",
            )),
        }
    }
}

pub use crate::runtime::responses::{Closed, Message, Responses, Room, TrySendError};

impl From<Closed> for Status {
    fn from(_: Closed) -> Status {
        Status::new(Code::Cancelled, "grpc: the call is closed")
    }
}

/// A call handler: gets the request and the response sink, returns the final status.
pub type Handler = Box<dyn Fn(Request, Responses) -> BoxedLocal<Result<(), Status>>>;

/// A unary handler as registered (see [`Router::unary`]), for `serve_stream`'s direct
/// path: the call's one message in, its reply out.
type UnaryHandler = Rc<dyn Fn(Call, Bytes) -> BoxedLocal<Result<Message, Status>>>;

/// Maps `/service/method` paths to handlers. One router per core (handlers are `!Send`).
#[derive(Default)]
pub struct Router {
    handlers: HashMap<String, (Handler, Option<usize>)>,
    /// The unary routes' handlers again, served without a response queue over h2.
    unary: HashMap<String, UnaryHandler>,
    services: HashSet<String>,
    /// What answers HTTP/1.1 requests on the same port (`None`: 404 to all).
    pub(super) http1: Option<super::http1::HttpHandler>,
    /// The bound on in-process calls in flight, shared by every core's router.
    local_slots: Option<std::sync::Arc<CallSlots>>,
    /// The largest reply a unary handler may send (0: grpc-go's `math.MaxInt32`).
    send_bytes_max: Rc<std::cell::Cell<usize>>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Serves HTTP/1.1 requests on the gRPC port with `handler` (etcd serves `/health`,
    /// `/version`, `/metrics` and its JSON gateway beside gRPC on a client URL).
    pub fn set_http1(&mut self, handler: super::http1::HttpHandler) -> &mut Router {
        self.http1 = Some(handler);
        self
    }

    /// Bounds the in-process calls in flight (on every core that shares `slots`): a call
    /// beyond the bound waits for one to end, as a stream beyond a gRPC connection's
    /// SETTINGS_MAX_CONCURRENT_STREAMS waits in grpc-go (etcd's gateway is one such
    /// connection to its own member).
    pub fn limit_local_calls(&mut self, slots: std::sync::Arc<CallSlots>) -> &mut Router {
        self.local_slots = Some(slots);
        self
    }

    /// The largest reply a unary handler may send (`--max-response-bytes`); a larger one
    /// ends its call with grpc-go's ResourceExhausted instead.
    pub fn set_send_bytes_max(&mut self, bytes: usize) -> &mut Router {
        self.send_bytes_max.set(bytes);
        self
    }

    /// Registers a handler for any call shape (unary, server-streaming, bidi).
    pub fn route<F, Fut>(&mut self, path: &str, handler: F) -> &mut Router
    where
        F: Fn(Request, Responses) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<(), Status>> + 'static,
    {
        self.route_with_queue(path, None, handler)
    }

    /// [`Router::route`] with its own bound on queued responses (streams that fan out
    /// many small messages, like Watch, need a deeper queue than `Config` gives calls).
    pub fn route_with_queue<F, Fut>(
        &mut self,
        path: &str,
        queue: Option<usize>,
        handler: F,
    ) -> &mut Router
    where
        F: Fn(Request, Responses) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<(), Status>> + 'static,
    {
        let (service, _method) = split_path(path).expect("route path is /service/method");
        self.services.insert(service.to_string());
        crate::metrics::grpc_route(path);
        let handler: Handler = Box::new(move |req, res| Box::pin(handler(req, res)));
        let previous = self.handlers.insert(path.to_string(), (handler, queue));
        assert!(previous.is_none(), "route {path} registered twice");
        self
    }

    /// Registers a unary handler: one message in, one message out.
    pub fn unary<F, Fut, M>(&mut self, path: &str, handler: F) -> &mut Router
    where
        F: Fn(Call, Bytes) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<M, Status>> + 'static,
        M: Into<Message>,
    {
        let unary: UnaryHandler = Rc::new(move |call, message| {
            let reply = handler(call, message);
            Box::pin(async move { reply.await.map(Into::into) })
        });
        self.unary.insert(path.to_string(), unary.clone());
        // The same handler as a route, for in-process calls (the JSON gateway).
        let send_bytes_max = self.send_bytes_max.clone();
        self.route(path, move |req: Request, res: Responses| {
            let unary = unary.clone();
            let max = send_bytes_max_of(&send_bytes_max);
            async move {
                let call = UnaryCall {
                    messages: req.messages,
                    metadata: req.metadata,
                    common_name: req.common_name,
                    timeout: None, // the route's caller enforces it
                };
                Ok(res.send(run_unary(&unary, call, max).await?).await?)
            }
        })
    }

    /// The handler of a unary route, for the direct path.
    fn unary_handler(&self, path: &str) -> Option<&UnaryHandler> {
        self.unary.get(path)
    }

    fn lookup(&self, path: &str) -> Result<&(Handler, Option<usize>), Status> {
        if let Some(route) = self.handlers.get(path) {
            return Ok(route);
        }
        // grpc-go's wording, which etcd clients show to users.
        let Some((service, method)) = split_path(path) else {
            return Err(Status::new(
                Code::Unimplemented,
                format!("malformed method name: {path:?}"),
            ));
        };
        if self.services.contains(service) {
            Err(Status::new(
                Code::Unimplemented,
                format!("unknown method {method} for service {service}"),
            ))
        } else {
            Err(Status::new(
                Code::Unimplemented,
                format!("unknown service {service}"),
            ))
        }
    }
}

fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.rsplit_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

fn h2_status(e: &h2::Error) -> Status {
    if e.is_reset() || e.is_go_away() || e.is_io() {
        Status::new(Code::Cancelled, format!("grpc: stream closed: {e}"))
    } else {
        Status::new(Code::Internal, format!("grpc: {e}"))
    }
}

/// Accepts connections forever, serving each on its own task on this executor.
/// Bind the listener with `TcpListener::bind`, which sets SO_REUSEPORT, so every core can
/// bind the same address and the kernel spreads connections across cores.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    router: Rc<Router>,
    config: Config,
) -> std::io::Result<()> {
    let listening = Listening::new(mode, router, config);
    loop {
        let stream = accept(&listener).await?;
        listening.spawn(stream.bind_to_executor(), None);
    }
}

/// Like [`serve`], but each accepted connection goes where `spread` places it: served
/// here, or handed to another core, which serves it with its own `Listening` for `slot`
/// (see [`super::spread`]).
pub async fn serve_spread(
    listener: TcpListener,
    slot: usize,
    spread: Rc<super::spread::Spread>,
    listening: Rc<Listening>,
) -> std::io::Result<()> {
    loop {
        let stream = accept(&listener).await?;
        match spread.place(slot, stream) {
            super::spread::Placed::Here(stream, live) => {
                listening.spawn(stream.bind_to_executor(), Some(live))
            }
            super::spread::Placed::Away => {}
        }
    }
}

/// The next connection; transient errors (out of fds, a connection reset before accept)
/// are waited out so the others keep being served.
async fn accept(listener: &TcpListener) -> std::io::Result<glommio::net::AcceptedTcpStream> {
    loop {
        match listener.shared_accept().await {
            Ok(stream) => return Ok(stream),
            Err(e) if is_transient_accept_error(&e) => {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How one listener's connections are served on this core: TLS or not, the handlers,
/// the limits.
pub struct Listening {
    mode: Rc<Mode>,
    router: Rc<Router>,
    config: Rc<Config>,
}

impl Listening {
    pub fn new(mode: Mode, router: Rc<Router>, config: Config) -> Self {
        Self {
            mode: Rc::new(mode),
            router,
            config: Rc::new(config),
        }
    }

    /// Serves `stream` on its own task on this executor; `live` (its place in the
    /// spread's counts) is dropped when the connection ends.
    pub fn spawn(&self, stream: glommio::net::TcpStream, live: Option<super::spread::Live>) {
        let _ = stream.set_nodelay(true);
        let (mode, router, config) = (self.mode.clone(), self.router.clone(), self.config.clone());
        glommio::spawn_local(async move {
            let _live = live;
            let plain = Plain::Tcp(stream);
            let from = plain.peer_text();
            match mode.accept(plain).await {
                Ok(accepted) => {
                    let cn = match &*mode {
                        Mode::Tls(a) | Mode::Both(a) if a.client_cert_auth() => {
                            accepted.common_name
                        }
                        _ => None,
                    };
                    serve_connection(accepted.stream, cn, router, config).await
                }
                // A failed handshake closes this connection only (etcd logs it the same way).
                Err(e) => log::warning(
                    "embed",
                    &format!(
                        "rejected connection from {from:?} (error {:?}, ServerName \"\")",
                        e.to_string()
                    ),
                ),
            }
        })
        .detach();
    }
}

fn is_transient_accept_error(e: &glommio::GlommioError<()>) -> bool {
    match e {
        glommio::GlommioError::IoError(io) => matches!(
            io.raw_os_error(),
            Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ECONNABORTED)
                | Some(libc_errno::ENOBUFS | libc_errno::ENOMEM)
        ),
        _ => false,
    }
}

/// errno values, spelled out to avoid a libc dependency for four constants (Linux).
mod libc_errno {
    pub const EMFILE: i32 = 24;
    pub const ENFILE: i32 = 23;
    pub const ECONNABORTED: i32 = 103;
    pub const ENOBUFS: i32 = 105;
    pub const ENOMEM: i32 = 12;
}

/// Serves one HTTP/2 connection until the client goes away or breaks the protocol.
/// A handshake or protocol error closes this connection only.
pub async fn serve_connection<S>(
    stream: S,
    common_name: Option<Rc<str>>,
    router: Rc<Router>,
    config: Rc<Config>,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    // HTTP/2's preface, or an HTTP/1.1 request (etcd serves both on a client URL).
    let mut stream = stream;
    let mut first = Vec::with_capacity(64);
    while first.len() < 4 {
        let mut b = [0u8; 64];
        let n = future::or(
            async {
                futures_lite::AsyncReadExt::read(&mut stream, &mut b)
                    .await
                    .ok()
            },
            async {
                glommio::timer::sleep(crate::tls::stream::HANDSHAKE_TIMEOUT).await;
                None
            },
        )
        .await;
        match n {
            Some(n) if n > 0 => first.extend_from_slice(&b[..n]),
            _ => return, // silent or gone
        }
        if !super::http1::H2_PREFACE_START.starts_with(&first[..first.len().min(4)]) {
            break;
        }
    }
    if !first.starts_with(&super::http1::H2_PREFACE_START[..4]) {
        super::http1::serve(stream, first, router, crate::tls::stream::HANDSHAKE_TIMEOUT).await;
        return;
    }
    let stream = Prefixed {
        prefix: first,
        at: 0,
        inner: stream,
    };
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(config.concurrent_streams_max)
        .initial_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes)
        .max_frame_size(config.frame_bytes_max)
        .max_header_list_size(config.header_list_bytes_max)
        .max_send_buffer_size(config.frame_bytes_max as usize * 4);
    // h2 writes a frame header and its payload separately, so without a buffer every DATA
    // frame costs two send(2)s and a tiny TCP segment (TCP_NODELAY is on). The buffer
    // gathers what h2 writes between flushes into one send.
    let io = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream.compat());
    // A client that never sends the HTTP/2 preface is cut like a stalled TLS handshake, so
    // silent connections cannot pile up.
    let handshake = future::or(
        async { builder.handshake::<_, Bytes>(io).await.ok() },
        async {
            glommio::timer::sleep(crate::tls::stream::HANDSHAKE_TIMEOUT).await;
            None
        },
    );
    let Some(mut connection) = handshake.await else {
        return; // not HTTP/2, silent, or the client left: dropping the stream closes it.
    };
    // h2 answers PINGs and window updates while this loop polls the connection. After
    // `keepalive_interval` without a new stream the server PINGs the client itself; a
    // client that does not answer within `keepalive_timeout` is gone, and so is its
    // connection (grpc-go's server keepalive).
    let mut ping_pong = connection.ping_pong();
    loop {
        let accepted = future::or(async { Some(connection.accept().await) }, async {
            keepalive(ping_pong.as_mut(), &config).await;
            None
        })
        .await;
        let Some(Some(Ok((request, respond)))) = accepted else {
            return; // client gone, protocol error, or keepalive timeout: drop the connection.
        };
        let router = router.clone();
        let config = config.clone();
        let common_name = common_name.clone();
        glommio::spawn_local(async move {
            serve_stream(request, respond, common_name, router, &config).await;
        })
        .detach();
    }
}

/// A stream whose first bytes were read already: they are read again first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.len());
            let at = self.at;
            buf[..n].copy_from_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Returns when the client failed to answer a keepalive PING in time; never otherwise.
async fn keepalive(ping_pong: Option<&mut h2::PingPong>, config: &Config) {
    let Some(ping_pong) = ping_pong else {
        return future::pending().await;
    };
    loop {
        glommio::timer::sleep(config.keepalive_interval).await;
        let answered = future::or(
            async { ping_pong.ping(h2::Ping::opaque()).await.is_ok() },
            async {
                glommio::timer::sleep(config.keepalive_timeout).await;
                false
            },
        )
        .await;
        if !answered {
            return;
        }
    }
}

async fn serve_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    common_name: Option<Rc<str>>,
    router: Rc<Router>,
    config: &Config,
) {
    let (parts, body) = request.into_parts();
    let is_grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if !is_grpc {
        // Plain HTTP over HTTP/2 (curl negotiates h2 by ALPN on a TLS client URL): served
        // as etcd serves it there, by the HTTP handler (/health, the JSON gateway).
        return super::http1::serve_h2(parts, body, respond, router).await;
    }
    if parts.method != Method::POST {
        return reply_http(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
    }
    let path = parts.uri.path().to_string();
    let unary = router.unary_handler(&path).cloned();
    let route = match unary {
        Some(_) => None,
        None => match router.lookup(&path) {
            Ok(route) => Some(route),
            Err(status) => return reply_trailers_only(&mut respond, &status),
        },
    };
    let timeout = match parts.headers.get("grpc-timeout").map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) if timeout::parse(value).is_ok() => timeout::parse(value).ok(),
        Some(_) => {
            let status = Status::new(Code::Internal, "transport: malformed grpc-timeout");
            return reply_trailers_only(&mut respond, &status);
        }
    };
    let metrics = crate::metrics::grpc_started(&path);
    let started = std::time::Instant::now();
    let messages = Messages {
        source: Source::H2 {
            body,
            decoder: Decoder::new(config.message_bytes_max),
            ended: false,
            shared: unary.is_some(),
        },
        metrics: metrics.clone(),
    };
    if let Some(unary) = unary {
        let max = send_bytes_max_of(&router.send_bytes_max);
        let call = UnaryCall {
            messages,
            metadata: parts.headers,
            common_name,
            timeout,
        };
        let code = serve_unary(&unary, call, max, &mut respond, metrics.as_deref()).await;
        if let Some(m) = &metrics {
            m.handled(code as u32, started.elapsed());
        }
        return;
    }
    let (handler, queue) = route.expect("looked up when not unary");
    let request = Request {
        path,
        metadata: parts.headers,
        timeout,
        messages,
        common_name,
    };
    let (responses, receiver, room) = response_queue(*queue, config.response_queue_max);
    let call = with_deadline(handler(request, responses), timeout);
    // The handler and the writer run side by side: the handler queues, the writer drains
    // into h2 under flow control. If the stream breaks (client reset, connection gone),
    // the handler is dropped at once, even if it is parked waiting for events.
    let mut handler = call;
    let mut writer = Box::pin(write_responses(
        &mut respond,
        receiver,
        room,
        metrics.as_deref(),
    ));
    let mut status: Option<Status> = None;
    let mut written: Option<Result<Option<h2::SendStream<Bytes>>, ()>> = None;
    future::poll_fn(|cx| {
        if status.is_none() {
            if let Poll::Ready(s) = handler.as_mut().poll(cx) {
                status = Some(s);
            }
        }
        if written.is_none() {
            if let Poll::Ready(w) = writer.as_mut().poll(cx) {
                written = Some(w);
            }
        }
        match (&status, &written) {
            (_, Some(Err(()))) | (Some(_), Some(_)) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    })
    .await;
    drop(handler);
    drop(writer);
    let code = match (&status, &written) {
        (Some(status), Some(Ok(_))) => status.code as u32,
        _ => Code::Cancelled as u32, // the client went away first (grpc-go: Canceled)
    };
    if let Some(m) = &metrics {
        m.handled(code, started.elapsed());
    }
    match (status, written) {
        (Some(status), Some(Ok(None))) => reply_trailers_only(&mut respond, &status),
        (Some(status), Some(Ok(Some(mut send)))) => {
            let _ = send.send_trailers(status.to_header_map());
        }
        _ => {} // the client is gone; nothing more to tell it.
    }
}

/// The largest reply a unary handler may send: `--max-response-bytes`, or grpc-go's
/// `math.MaxInt32` when unset.
fn send_bytes_max_of(max: &std::cell::Cell<usize>) -> usize {
    match max.get() {
        0 => i32::MAX as usize,
        n => n,
    }
}

/// `reply`, or grpc-go's ResourceExhausted when it is larger than `max`.
fn check_reply_size(reply: Message, max: usize) -> Result<Message, Status> {
    if reply.len() > max {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "grpc: trying to send message larger than max ({} vs. {max})",
                reply.len()
            ),
        ));
    }
    Ok(reply)
}

/// A unary call on the direct path, as `serve_stream` parsed it.
struct UnaryCall {
    messages: Messages,
    metadata: HeaderMap,
    common_name: Option<Rc<str>>,
    timeout: Option<Duration>,
}

/// A unary call's handler run on its one message: the reply, within `max` bytes.
async fn run_unary(handler: &UnaryHandler, call: UnaryCall, max: usize) -> Result<Message, Status> {
    let UnaryCall {
        mut messages,
        metadata,
        common_name,
        ..
    } = call;
    let message = messages.single().await?;
    let started = std::time::Instant::now();
    let reply = handler(
        Call {
            metadata,
            common_name,
        },
        message,
    )
    .await;
    crate::metrics::observe(crate::metrics::Hist::StageUnary, started.elapsed());
    check_reply_size(reply?, max)
}

/// Serves a unary call without a response queue or a writer beside the handler (issue
/// 22: those were a channel, two boxed futures and a task's wakes per call): reads the one
/// message, runs the handler (to the deadline, dropped at once if the client resets the
/// stream), then sends headers, the reply and trailers, or a Trailers-Only status, as
/// the queued path does. Returns the code the call ended with (Cancelled when the client
/// went away first, as grpc-go counts it).
async fn serve_unary(
    handler: &UnaryHandler,
    call: UnaryCall,
    max: usize,
    respond: &mut h2::server::SendResponse<Bytes>,
    metrics: Option<&crate::metrics::GrpcCells>,
) -> Code {
    let timeout = call.timeout;
    let run = until_deadline(run_unary(handler, call, max), timeout);
    let outcome = future::or(async { Some(run.await) }, async {
        let _ = future::poll_fn(|cx| respond.poll_reset(cx)).await;
        None
    })
    .await;
    let reply = match outcome {
        None => return Code::Cancelled,
        Some(Err(status)) => {
            reply_trailers_only(respond, &status);
            return status.code;
        }
        Some(Ok(reply)) => reply,
    };
    if let Some(m) = metrics {
        m.sent(reply.len());
    }
    let Ok(mut send) = respond.send_response(grpc_response(HeaderMap::new()), false) else {
        return Code::Cancelled;
    };
    let sent = if reply.len() >= COALESCE_BYTES_MAX {
        send_uncopied(&mut send, &reply).await
    } else {
        let mut framed = BytesMut::with_capacity(reply.len() + codec::HEADER_BYTES);
        frame_into(&mut framed, &reply);
        send_flow_controlled(&mut send, framed.freeze()).await
    };
    if sent.is_err() {
        return Code::Cancelled;
    }
    let _ = send.send_trailers(Status::ok().to_header_map());
    Code::Ok
}

/// A call's response queue: the route's own bound (`queue`, on an unbounded channel whose
/// writer wakes waiting senders through the `Room`) or the channel's (`queue_max`).
fn response_queue(
    queue: Option<usize>,
    queue_max: usize,
) -> (Responses, LocalReceiver<Message>, Option<Rc<Room>>) {
    match queue {
        None => {
            let (tx, rx) = local_channel::new_bounded(queue_max);
            (Responses::new(tx, None), rx, None)
        }
        Some(n) => {
            let (tx, rx) = local_channel::new_unbounded();
            let room = Rc::new(Room::default());
            (Responses::new(tx, Some((n, room.clone()))), rx, Some(room))
        }
    }
}

/// `call`'s outcome, or grpc-go's DeadlineExceeded once `timeout` has passed.
async fn until_deadline<T>(
    call: impl std::future::Future<Output = Result<T, Status>>,
    timeout: Option<Duration>,
) -> Result<T, Status> {
    match timeout {
        None => call.await,
        Some(duration) => {
            future::or(call, async move {
                glommio::timer::sleep(duration).await;
                Err(Status::new(
                    Code::DeadlineExceeded,
                    "context deadline exceeded",
                ))
            })
            .await
        }
    }
}

/// The handler's future, ended with DeadlineExceeded after `timeout`, as its final status.
fn with_deadline(
    handler: BoxedLocal<Result<(), Status>>,
    timeout: Option<Duration>,
) -> BoxedLocal<Status> {
    Box::pin(async move {
        let result = until_deadline(handler, timeout).await;
        result.err().unwrap_or_else(Status::ok)
    })
}

/// What an in-process call yields next.
pub enum LocalNext {
    /// One response message, in order.
    Message(Bytes),
    /// The handler is done and every message was taken: its final status (maybe OK).
    End(Status),
}

/// A call run in-process through the router (the JSON gateway), on this core: the same
/// handler, auth and errors as over gRPC. Dropping it cancels the handler.
pub struct LocalCall {
    receiver: LocalReceiver<Message>,
    room: Option<Rc<Room>>,
    handler: Option<BoxedLocal<Status>>,
    status: Option<Status>,
    /// Held until the call is dropped (the gateway drops it when the reply is written).
    _slot: Option<CallSlot>,
}

impl LocalCall {
    /// The next response message, or the final status; runs the handler meanwhile.
    pub async fn next(&mut self) -> LocalNext {
        loop {
            let Some(handler) = self.handler.as_mut() else {
                return match self.receiver.recv().await {
                    Some(message) => {
                        if let Some(room) = &self.room {
                            room.took(message.len());
                            room.wake();
                        }
                        LocalNext::Message(message.into_bytes())
                    }
                    None => LocalNext::End(self.status.take().unwrap_or_else(Status::ok)),
                };
            };
            let receiver = &self.receiver;
            let next = future::or(async { Ok(receiver.recv().await) }, async {
                Err(handler.await)
            })
            .await;
            match next {
                Ok(Some(message)) => {
                    if let Some(room) = &self.room {
                        room.took(message.len());
                        room.wake();
                    }
                    return LocalNext::Message(message.into_bytes());
                }
                // The handler dropped its sender: its status follows.
                Ok(None) => {
                    let handler = self.handler.take();
                    self.status = Some(match handler {
                        Some(h) => h.await,
                        None => Status::ok(),
                    });
                }
                Err(status) => {
                    // Dropping the finished future drops its sender: the queue drains.
                    self.handler = None;
                    self.status = Some(status);
                }
            }
        }
    }
}

impl Router {
    /// Runs the call at `path` in-process with `messages`, as if it came over gRPC
    /// (without a client certificate: etcd's gateway never passes one on). Waits for a
    /// slot first when the router bounds its local calls.
    pub async fn call_local(
        &self,
        path: &str,
        metadata: HeaderMap,
        timeout: Option<Duration>,
        messages: Messages,
        queue_max: usize,
    ) -> Result<LocalCall, Status> {
        let (handler, queue) = self.lookup(path)?;
        let slot = match &self.local_slots {
            Some(slots) => Some(CallSlots::acquire(slots).await),
            None => None,
        };
        let (responses, receiver, room) = response_queue(*queue, queue_max);
        let request = Request {
            path: path.to_string(),
            metadata,
            timeout,
            messages,
            common_name: None,
        };
        let handler = with_deadline(handler(request, responses), timeout);
        Ok(LocalCall {
            receiver,
            room,
            handler: Some(handler),
            status: None,
            _slot: slot,
        })
    }
}

/// A bound on calls in flight shared by all cores: a counter, no lock. A caller that finds
/// it full polls every `CallSlots::POLL` (the cores share no waker; waiting is rare, only
/// at the configured bound).
#[derive(Debug)]
pub struct CallSlots {
    used: std::sync::atomic::AtomicU32,
    max: u32,
}

/// One call's slot, given back when dropped.
pub struct CallSlot(std::sync::Arc<CallSlots>);

impl CallSlots {
    const POLL: Duration = Duration::from_millis(5);

    pub fn new(max: u32) -> CallSlots {
        CallSlots {
            used: std::sync::atomic::AtomicU32::new(0),
            max,
        }
    }

    fn try_acquire(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    async fn acquire(slots: &std::sync::Arc<CallSlots>) -> CallSlot {
        while !slots.try_acquire() {
            glommio::timer::sleep(CallSlots::POLL).await;
        }
        CallSlot(slots.clone())
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let before = self
            .0
            .used
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        assert!(before > 0, "a call slot given back twice");
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

/// Bytes gathered per connection before a send(2).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Queued response bytes written to h2 in one go.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// Writes queued responses until the handler drops its sender. Returns the open send
/// stream if headers were sent, `None` if no message was sent (trailers-only reply), or
/// `Err` if the stream broke.
async fn write_responses(
    respond: &mut h2::server::SendResponse<Bytes>,
    receiver: LocalReceiver<Message>,
    room: Option<Rc<Room>>,
    metrics: Option<&crate::metrics::GrpcCells>,
) -> Result<Option<h2::SendStream<Bytes>>, ()> {
    let count = |m: &Message| {
        if let Some(c) = metrics {
            c.sent(m.len());
        }
    };
    let mut send: Option<h2::SendStream<Bytes>> = None;
    loop {
        let next = future::or(async { Some(receiver.recv().await) }, async {
            // A reset arrives here even while the handler sends nothing.
            let _ = future::poll_fn(|cx| match send.as_mut() {
                Some(stream) => stream.poll_reset(cx),
                None => respond.poll_reset(cx),
            })
            .await;
            None
        })
        .await;
        let Some(next) = next else {
            return Err(());
        };
        let Some(message) = next else {
            break;
        };
        if let Some(room) = &room {
            room.took(message.len());
        }
        if send.is_none() {
            let response = grpc_response(HeaderMap::new());
            send = Some(respond.send_response(response, false).map_err(|_| ())?);
        }
        // Coalesce what the handler has already queued into one write: many small
        // messages (watch events, keepalives) would otherwise cost one DATA frame each,
        // and peers (h2 itself) close connections that send too many tiny frames.
        // A unary reply gets exactly its size.
        // Room for this message and a few more of its size: a batch grows (doubling) when
        // more are queued; a full COALESCE_BYTES_MAX block per write would make every
        // lone small message a 64 KiB malloc and free (measured: malloc was the top of a
        // fanned-out watch's profile).
        let capacity = if room.is_some() {
            ((message.len() + 5) * 8).clamp(256, COALESCE_BYTES_MAX + message.len() + 5)
        } else {
            message.len() + 5
        };
        count(&message);
        if message.len() >= COALESCE_BYTES_MAX {
            // A large message (a big Range answer) goes out as it is, after its prefix,
            // not copied into a batch.
            if let Some(room) = &room {
                room.wake();
            }
            send_uncopied(send.as_mut().unwrap(), &message).await?;
            continue;
        }
        let mut batch = BytesMut::with_capacity(capacity);
        frame_into(&mut batch, &message);
        while batch.len() < COALESCE_BYTES_MAX {
            match future::poll_once(receiver.recv()).await {
                Some(Some(next)) => {
                    if let Some(room) = &room {
                        room.took(next.len());
                    }
                    count(&next);
                    frame_into(&mut batch, &next)
                }
                _ => break,
            }
        }
        if let Some(room) = &room {
            room.wake();
        }
        let stream = send.as_mut().unwrap();
        send_flow_controlled(stream, batch.freeze()).await?;
    }
    Ok(send)
}

/// Appends one framed message (its pieces one after another) to `out`.
fn frame_into(out: &mut BytesMut, message: &Message) {
    match message {
        Message::Whole(b) => codec::encode_into(out, b),
        Message::Pieces(pieces) => {
            out.extend_from_slice(&codec::prefix(message.len()));
            for p in pieces {
                out.extend_from_slice(p);
            }
        }
    }
}

/// Sends a large message (a big Range answer) as it is, after its prefix, not copied into
/// a batch.
async fn send_uncopied(stream: &mut h2::SendStream<Bytes>, message: &Message) -> Result<(), ()> {
    send_flow_controlled(stream, codec::prefix(message.len())).await?;
    for piece in message.pieces() {
        send_flow_controlled(stream, piece.clone()).await?;
    }
    Ok(())
}

/// Sends `data` as window capacity becomes available, so a slow reader is pushed back on
/// instead of buffered for without bound.
pub(super) async fn send_flow_controlled(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = match future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}

fn grpc_response(headers: HeaderMap) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A response with no messages: status in the headers, end of stream (gRPC "Trailers-Only").
fn reply_trailers_only(respond: &mut h2::server::SendResponse<Bytes>, status: &Status) {
    let _ = respond.send_response(grpc_response(status.to_header_map()), true);
}

fn reply_http(respond: &mut h2::server::SendResponse<Bytes>, code: StatusCode) {
    let mut response = http::Response::new(());
    *response.status_mut() = code;
    let _ = respond.send_response(response, true);
}
