//! A small gRPC client over h2 on glommio: unary calls and bidi streams, enough to drive
//! etcd and Keel alike (the benchmark's load generator, the chaos harness's clients). It
//! encodes with prost and never allocates more than the messages. Cheap on purpose: on a
//! 2-core machine the client competes with the server.
//!
//! Plaintext (`connect`) or TLS (`connect_tls`, `connect_with`: rustls through
//! `tls::stream::Connector`, e.g. mutual TLS with a client certificate).
//!
//! Runs on: the glommio executor of whoever calls it (not on a server core).

use crate::grpc::codec;
use crate::tls::stream::{Connector, Plain};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use prost::Message;
use std::net::SocketAddr;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// How a call failed: the gRPC status (code and message), or a transport error.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallError {
    Status(u32, String),
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(code, msg) => write!(f, "grpc-status {code}: {msg}"),
            CallError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

fn transport(e: impl std::fmt::Display) -> CallError {
    CallError::Transport(e.to_string())
}

/// One h2 connection, and the auth token its calls carry (`token` metadata, as etcd's
/// clients send it) if it has one.
#[derive(Clone, Debug)]
pub struct Conn {
    send: SendRequest<Bytes>,
    token: Option<std::sync::Arc<str>>,
}

impl Conn {
    /// The metadata its calls carry: the token, if it has one.
    fn metadata(&self) -> Vec<(&str, &str)> {
        self.token
            .as_deref()
            .map(|t| ("token", t))
            .into_iter()
            .collect()
    }

    /// The same connection, its calls carrying `token`.
    pub fn with_token(&self, token: &str) -> Conn {
        Conn {
            send: self.send.clone(),
            token: Some(token.into()),
        }
    }
}

/// A plaintext connection (h2 with prior knowledge).
pub async fn connect(addr: SocketAddr) -> Result<Conn, CallError> {
    let stream = TcpStream::connect(addr).await.map_err(transport)?;
    stream.set_nodelay(true).ok();
    handshake(stream).await
}

/// A TLS connection: TCP, then the TLS handshake with `connector`'s client config (its
/// certificate, its trusted CA, ALPN h2; `host` is checked against the server's
/// certificate), then h2 over it. A config with resumption disabled makes every call a
/// full handshake.
pub async fn connect_tls(
    addr: SocketAddr,
    connector: &Connector,
    host: &str,
) -> Result<Conn, CallError> {
    let tcp = TcpStream::connect(addr).await.map_err(transport)?;
    tcp.set_nodelay(true).ok();
    let stream = connector
        .connect(host, Plain::Tcp(tcp))
        .await
        .map_err(transport)?;
    handshake(stream).await
}

/// Either of the above: TLS when a connector is given (the server name checked is the
/// address's IP).
pub async fn connect_with(
    addr: SocketAddr,
    connector: Option<&Connector>,
) -> Result<Conn, CallError> {
    match connector {
        Some(c) => connect_tls(addr, c, &addr.ip().to_string()).await,
        None => connect(addr).await,
    }
}

/// h2 over a connected socket (plain, or TLS already shaken hands); the connection's driver
/// runs as a detached task on the caller's executor and ends (closing the socket) once
/// every handle to it is dropped.
pub async fn handshake<S>(io: S) -> Result<Conn, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    handshake_pinged(io).await.map(|(conn, _)| conn)
}

/// [`handshake`], also giving the connection's PING handle (to tell a silent peer).
pub async fn handshake_pinged<S>(io: S) -> Result<(Conn, Option<h2::PingPong>), CallError>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .max_concurrent_reset_streams(1024)
        .handshake(io.compat())
        .await
        .map_err(transport)?;
    let ping = connection.ping_pong();
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    Ok((
        Conn {
            send: client,
            token: None,
        },
        ping,
    ))
}

/// A request head carrying `metadata` (gRPC metadata, e.g. `token`, `hasleader`); a pair
/// that is no header name or value is left off (the server then sees none).
fn request_with(path: &str, metadata: &[(&str, &str)]) -> http::Request<()> {
    // The URI of each method once per thread, then a clone (shared bytes), and static
    // header values: building the head was ~6% of keel-bench's CPU at put c256 (issue 22).
    thread_local! {
        static URIS: std::cell::RefCell<std::collections::HashMap<String, http::Uri>> =
            Default::default();
    }
    let uri = URIS.with(|uris| {
        let mut uris = uris.borrow_mut();
        if let Some(uri) = uris.get(path) {
            return uri.clone();
        }
        let uri: http::Uri = format!("http://keel{path}").parse().expect("a method path");
        uris.insert(path.to_string(), uri.clone());
        uri
    });
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    for (k, v) in metadata {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            req.headers_mut().append(k, v);
        }
    }
    req
}

fn status_of(trailers: Option<&http::HeaderMap>) -> Result<(), CallError> {
    let Some(t) = trailers else {
        return Err(CallError::Status(2, "no trailers".into()));
    };
    let code: u32 = t
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if code == 0 {
        return Ok(());
    }
    let msg = t
        .get("grpc-message")
        .map(|v| crate::grpc::status::percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Err(CallError::Status(code, msg))
}

/// One unary call: `M` in, `R` out.
pub async fn unary<M: Message, R: Message + Default>(
    conn: &Conn,
    path: &str,
    message: &M,
) -> Result<R, CallError> {
    // Encoded once, behind its prefix (not encoded, then copied behind it).
    let len = message.encoded_len();
    let mut framed = BytesMut::with_capacity(codec::HEADER_BYTES + len);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(len).map_err(transport)?);
    message.encode(&mut framed).map_err(transport)?;
    let reply = unary_framed(conn, path, &conn.metadata(), framed.freeze()).await?;
    R::decode(reply).map_err(transport)
}

/// One unary call on encoded messages, with `metadata` (a proxy forwards the caller's
/// `token` and `hasleader`): the request message's bytes in, the reply's out.
pub async fn unary_raw(
    conn: &Conn,
    path: &str,
    metadata: &[(&str, &str)],
    message: Bytes,
) -> Result<Bytes, CallError> {
    unary_framed(conn, path, metadata, codec::encode(&message)).await
}

/// [`unary_raw`] with the request message already behind its gRPC prefix.
async fn unary_framed(
    conn: &Conn,
    path: &str,
    metadata: &[(&str, &str)],
    framed: Bytes,
) -> Result<Bytes, CallError> {
    let mut ready = conn.send.clone().ready().await.map_err(transport)?;
    let (response, mut send) = ready
        .send_request(request_with(path, metadata), false)
        .map_err(transport)?;
    send.send_data(framed, true).map_err(transport)?;
    let response = response.await.map_err(transport)?;
    // A Trailers-Only error response carries grpc-status in its headers.
    if response.headers().contains_key("grpc-status") {
        status_of(Some(response.headers()))?;
    }
    let mut body = response.into_body();
    // One DATA frame (a small reply) is kept as it came; more are gathered.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    buf.extend_from_slice(&earlier);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    let trailers = body.trailers().await.map_err(transport)?;
    status_of(trailers.as_ref())?;
    let mut reply = first.unwrap_or_else(|| buf.freeze());
    if reply.len() < 5 {
        return Err(CallError::Status(13, "empty response".into()));
    }
    reply.advance(5);
    Ok(reply)
}

/// A bidi stream: send messages, receive decoded ones in order. The response headers are
/// awaited on the first `recv`, since grpc-go servers send them with the first message.
pub struct Stream {
    send: SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    recv: Option<RecvStream>,
    buf: BytesMut,
}

impl Stream {
    pub async fn open(conn: &Conn, path: &str) -> Result<Stream, CallError> {
        Stream::open_with(conn, path, &conn.metadata()).await
    }

    /// A stream whose request carries `metadata`.
    pub async fn open_with(
        conn: &Conn,
        path: &str,
        metadata: &[(&str, &str)],
    ) -> Result<Stream, CallError> {
        let mut ready = conn.send.clone().ready().await.map_err(transport)?;
        let (response, send) = ready
            .send_request(request_with(path, metadata), false)
            .map_err(transport)?;
        Ok(Stream {
            send,
            response: Some(response),
            recv: None,
            buf: BytesMut::new(),
        })
    }

    pub fn send<M: Message>(&mut self, m: &M) -> Result<(), CallError> {
        self.send
            .send_data(codec::encode(&m.encode_to_vec()), false)
            .map_err(transport)
    }

    /// Sends one encoded message.
    pub fn send_raw(&mut self, message: &[u8]) -> Result<(), CallError> {
        self.send
            .send_data(codec::encode(message), false)
            .map_err(transport)
    }

    /// Half-closes the request side (no more messages).
    pub fn close_send(&mut self) {
        let _ = self.send.send_data(Bytes::new(), true);
    }

    async fn body(&mut self) -> Result<&mut RecvStream, CallError> {
        if let Some(f) = self.response.take() {
            let response = f.await.map_err(transport)?;
            if response.headers().contains_key("grpc-status") {
                status_of(Some(response.headers()))?;
            }
            self.recv = Some(response.into_body());
        }
        self.recv
            .as_mut()
            .ok_or_else(|| CallError::Transport("stream already failed".into()))
    }

    /// One DATA chunk of the reply, dropped unread: its length, or `None` once the server
    /// ended the call with OK. Its flow-control window is given back, so a caller that
    /// waits between chunks reads as slowly as it likes (a slow reader, in the benches).
    pub async fn recv_chunk(&mut self) -> Result<Option<usize>, CallError> {
        let body = self.body().await?;
        match body.data().await {
            Some(chunk) => {
                let chunk = chunk.map_err(transport)?;
                let _ = body.flow_control().release_capacity(chunk.len());
                Ok(Some(chunk.len()))
            }
            None => {
                let trailers = body.trailers().await.map_err(transport)?;
                status_of(trailers.as_ref())?;
                Ok(None)
            }
        }
    }

    /// The next message, or the call's final status when the server ends it.
    pub async fn recv<R: Message + Default>(&mut self) -> Result<R, CallError> {
        let message = self.recv_raw().await?;
        R::decode(message).map_err(transport)
    }

    /// The next message's bytes; `Status(0, "stream ended")` when the server ended the
    /// call with OK.
    pub async fn recv_raw(&mut self) -> Result<Bytes, CallError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(self.buf.split_to(len).freeze());
                }
            }
            let body = self.body().await?;
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(transport)?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = body.trailers().await.map_err(transport)?;
                    status_of(trailers.as_ref())?;
                    return Err(CallError::Status(0, "stream ended".into()));
                }
            }
        }
    }
}
