//! HTTP/1.1 on the gRPC port, as etcd serves both on one client URL: a connection whose
//! first bytes are not the HTTP/2 preface is read as HTTP/1.1 requests (one at a time,
//! keep-alive as the client asks) and handed to the router's HTTP/1 handler (`/health`,
//! `/version`, …). Bounded: a request head of at most 16 KiB, a body of at most
//! `BODY_BYTES_MAX`, a head that does not arrive within the handshake timeout closes the
//! connection. A response may stream its body (chunked), as the JSON gateway's watch
//! does; meanwhile the connection is read so a client that leaves ends the stream, and
//! bytes of the next (pipelined) request are kept for after it. The same handler serves
//! plain HTTP requests that arrive over HTTP/2 (`serve_h2`: curl negotiates h2 by ALPN on
//! a TLS client URL, and etcd answers there too).
//!
//! Runs on: the core that accepted the connection.

use super::server::Router;
use bytes::Bytes;
use futures_lite::future::BoxedLocal;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Stream, StreamExt};
use std::pin::Pin;
use std::rc::Rc;

/// The HTTP/2 connection preface's first bytes (RFC 9113 §3.4).
pub const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest request body read (etcd's gateway limits its bodies too).
pub const BODY_BYTES_MAX: usize = 4 << 20;

/// One HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query (after `?`), empty if none.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The port's router, for handlers that run gRPC calls in-process (the JSON gateway).
    pub router: Option<Rc<Router>>,
}

impl HttpRequest {
    /// A header's value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of a query parameter (`a=1&a=2` gives both), percent-decoding only
    /// `%2C`/`%2c` (a comma) and `+`, which is all etcd's parameters need.
    pub fn query_values(&self, key: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == key).then(|| v.replace("%2C", ",").replace("%2c", ",").replace('+', " "))
            })
            .collect()
    }
}

/// The rest of a streamed response body, one chunk per item, in HTTP/1.1's chunked coding.
pub type BodyStream = Pin<Box<dyn Stream<Item = Bytes>>>;

/// An HTTP/1.1 response.
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// `Some`: the body is chunked, `body` (if not empty) is its first chunk, and the stream
    /// gives the rest until it ends.
    pub stream: Option<BodyStream>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body", &self.body)
            .field("streamed", &self.stream.is_some())
            .finish()
    }
}

impl HttpResponse {
    pub fn json(status: u16, body: impl Into<Bytes>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            body: body.into(),
            stream: None,
        }
    }

    pub fn text(status: u16, body: impl Into<Bytes>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            stream: None,
        }
    }
}

/// What serves the HTTP/1.1 requests of a port.
pub type HttpHandler = Rc<dyn Fn(HttpRequest) -> BoxedLocal<HttpResponse>>;

/// Go's `http.StatusText` for the statuses Keel answers with (the gateway's error
/// bodies name them too).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// A parsed request head: the request and the body length it announces.
fn parse_head(head: &[u8]) -> Result<(HttpRequest, usize, bool), &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err("malformed request line");
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (n, v) = line.split_once(':').ok_or("malformed header")?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Bytes::new(),
        router: None,
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
    {
        return Err("chunked request bodies are not supported");
    }
    let len = match req.header("content-length") {
        Some(l) => l.parse::<usize>().map_err(|_| "bad content-length")?,
        None => 0,
    };
    let close = req
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        || version == "HTTP/1.0";
    Ok((req, len, close))
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    r: &HttpResponse,
    close: bool,
) -> std::io::Result<()> {
    let length = match &r.stream {
        None => format!("Content-Length: {}\r\n", r.body.len()),
        Some(_) => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n{length}{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut all = Vec::with_capacity(head.len() + r.body.len() + 16);
    all.extend_from_slice(head.as_bytes());
    if r.stream.is_none() {
        all.extend_from_slice(&r.body);
    } else if !r.body.is_empty() {
        chunk_into(&mut all, &r.body);
    }
    stream.write_all(&all).await?;
    stream.flush().await
}

fn chunk_into(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Bytes of later requests kept while a body streams (a head and a body at most).
const PIPELINED_BYTES_MAX: usize = HEAD_BYTES_MAX + BODY_BYTES_MAX;

/// Writes the rest of a streamed body. While waiting for its next chunk the connection is
/// read: what arrives is kept in `buf` (a pipelined request), and the end of the
/// connection ends the stream. Returns false when the client is gone.
async fn write_body_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut body: BodyStream,
) -> bool {
    enum Next {
        Chunk(Option<Bytes>),
        Read(usize),
    }
    let mut chunk = [0u8; 4096];
    loop {
        let room = buf.len() < PIPELINED_BYTES_MAX;
        let next = futures_lite::future::or(async { Next::Chunk(body.next().await) }, async {
            if !room {
                return futures_lite::future::pending().await;
            }
            Next::Read(stream.read(&mut chunk).await.unwrap_or(0))
        })
        .await;
        match next {
            Next::Read(0) => return false,
            Next::Read(n) => buf.extend_from_slice(&chunk[..n]),
            Next::Chunk(Some(data)) if data.is_empty() => {}
            Next::Chunk(Some(data)) => {
                let mut out = Vec::with_capacity(data.len() + 16);
                chunk_into(&mut out, &data);
                if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                    return false;
                }
            }
            Next::Chunk(None) => {
                return stream.write_all(b"0\r\n\r\n").await.is_ok()
                    && stream.flush().await.is_ok();
            }
        }
    }
}

/// Waits for `answer` while reading the connection: what arrives is kept in `buf` (a
/// pipelined request); `None` if the client closed the connection first.
async fn answer_unless_gone<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut answer: BoxedLocal<HttpResponse>,
) -> Option<HttpResponse> {
    let mut chunk = [0u8; 4096];
    loop {
        let room = buf.len() < PIPELINED_BYTES_MAX;
        let next = futures_lite::future::or(async { Ok((&mut answer).await) }, async {
            if !room {
                return futures_lite::future::pending().await;
            }
            Err(stream.read(&mut chunk).await.unwrap_or(0))
        })
        .await;
        match next {
            Ok(resp) => return Some(resp),
            Err(0) => return None,
            Err(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Serves HTTP/1.1 requests on `stream`, whose first bytes (already read) are `first`,
/// with the router's HTTP/1 handler.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    first: Vec<u8>,
    router: Rc<Router>,
    timeout: std::time::Duration,
) {
    let handler = router.http1.clone();
    let mut buf = first;
    loop {
        // Read a whole head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HEAD_BYTES_MAX {
                let r = HttpResponse::text(400, "request head too large\n");
                let _ = write_response(&mut stream, &r, true).await;
                return;
            }
            let mut chunk = [0u8; 4096];
            let n = futures_lite::future::or(async { stream.read(&mut chunk).await.ok() }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
            match n {
                Some(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let (mut req, len, close) = match parse_head(&buf[..head_end]) {
            Ok(p) => p,
            Err(why) => {
                let r = HttpResponse::text(400, format!("{why}\n"));
                let _ = write_response(&mut stream, &r, true).await;
                return;
            }
        };
        if len > BODY_BYTES_MAX {
            let r = HttpResponse::text(413, "request body too large\n");
            let _ = write_response(&mut stream, &r, true).await;
            return;
        }
        let mut rest = buf.split_off(head_end);
        while rest.len() < len {
            // A body that stalls for the whole timeout closes the connection, as a head does.
            let mut chunk = vec![0u8; (len - rest.len()).min(64 * 1024)];
            let n = futures_lite::future::or(async { stream.read(&mut chunk).await.ok() }, async {
                glommio::timer::sleep(timeout).await;
                None
            })
            .await;
            match n {
                Some(n) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        buf = rest.split_off(len);
        req.body = Bytes::from(rest);
        req.router = Some(router.clone());
        let answer = match &handler {
            Some(h) => h(req),
            None => Box::pin(async { HttpResponse::text(404, "404 page not found\n") }),
        };
        // A client that leaves while its call runs (a lock that waits) cancels the call, as
        // Go's server cancels the request's context.
        let Some(mut resp) = answer_unless_gone(&mut stream, &mut buf, answer).await else {
            return;
        };
        if write_response(&mut stream, &resp, close).await.is_err() {
            return;
        }
        if let Some(body) = resp.stream.take() {
            if !write_body_stream(&mut stream, &mut buf, body).await {
                return;
            }
        }
        if close {
            return;
        }
    }
}

/// Serves one plain (non-gRPC) HTTP request that came as an HTTP/2 stream.
pub async fn serve_h2(
    parts: http::request::Parts,
    mut body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    router: Rc<Router>,
) {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return; // the client reset the stream
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if data.len() + chunk.len() > BODY_BYTES_MAX {
            let r = HttpResponse::text(413, "request body too large\n");
            return respond_h2(&mut respond, r).await;
        }
        data.extend_from_slice(&chunk);
    }
    let headers = parts
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let req = HttpRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: Bytes::from(data),
        router: Some(router.clone()),
    };
    let resp = match &router.http1 {
        Some(h) => h(req).await,
        None => HttpResponse::text(404, "404 page not found\n"),
    };
    respond_h2(&mut respond, resp).await;
}

/// Writes `r` on an HTTP/2 stream: head, body, then the streamed chunks (if any) as they
/// come, under flow control. A reset stream ends it (and drops the body stream).
async fn respond_h2(respond: &mut h2::server::SendResponse<Bytes>, mut r: HttpResponse) {
    let mut head = http::Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(r.content_type),
    );
    let rest = r.stream.take();
    let empty = r.body.is_empty() && rest.is_none();
    let Ok(mut send) = respond.send_response(head, empty) else {
        return;
    };
    if empty {
        return;
    }
    use super::server::send_flow_controlled;
    if !r.body.is_empty() && send_flow_controlled(&mut send, r.body).await.is_err() {
        return;
    }
    if let Some(mut rest) = rest {
        loop {
            let next = futures_lite::future::or(async { Some(rest.next().await) }, async {
                let _ = futures_lite::future::poll_fn(|cx| send.poll_reset(cx)).await;
                None
            })
            .await;
            match next {
                None => return, // reset: the client is gone
                Some(None) => break,
                Some(Some(chunk)) => {
                    if send_flow_controlled(&mut send, chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_fail_cleanly() {
        let (r, len, close) = parse_head(
            b"GET /health?serializable=true&exclude=NOSPACE HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/health"));
        assert_eq!(r.query_values("exclude"), vec!["NOSPACE".to_string()]);
        assert_eq!(r.query_values("serializable"), vec!["true".to_string()]);
        assert_eq!((len, close), (0, false));
        let (_, len, close) =
            parse_head(b"POST /v3/kv/range HTTP/1.0\r\ncontent-length: 12\r\n\r\n").unwrap();
        assert_eq!((len, close), (12, true));
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET health HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }
}
