//! Loopback tests: a real h2 client over a glommio TcpStream against the server.

use super::codec::{self, Decoder};
use super::server::{serve, Config, Request, Responses, Router};
use super::status::{Code, Status};
use crate::runtime::block_on;
use bytes::Bytes;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use h2::client::SendRequest;
use http::HeaderMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

const TEST_TIME_MAX: Duration = Duration::from_secs(20);

/// Runs `test` on a fresh executor, failing it if it takes longer than `TEST_TIME_MAX`.
fn run<F: std::future::Future<Output = ()> + 'static>(test: F) {
    block_on(future::or(test, async {
        glommio::timer::sleep(TEST_TIME_MAX).await;
        panic!("test timed out");
    }));
}

fn router() -> Router {
    let mut router = Router::new();
    router.unary("/test.Echo/Unary", |_metadata, message| async move {
        Ok(message)
    });
    router.unary(
        "/test.Echo/Token",
        |call: crate::grpc::server::Call, _message| async move {
            let token = call
                .metadata
                .get("token")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            Ok(Bytes::from(token))
        },
    );
    router.unary("/test.Echo/UnarySleep", |_metadata, _message| async move {
        glommio::timer::sleep(Duration::from_secs(60)).await;
        Ok(Bytes::new())
    });
    router.route(
        "/test.Echo/Count",
        |mut req: Request, res: Responses| async move {
            let n = req.messages.single().await?;
            let n = u32::from_be_bytes(
                n[..]
                    .try_into()
                    .map_err(|_| Status::new(Code::InvalidArgument, "u32"))?,
            );
            for i in 0..n {
                res.send(Bytes::from(i.to_be_bytes().to_vec())).await?;
            }
            Ok(())
        },
    );
    router.route(
        "/test.Echo/Bidi",
        |mut req: Request, res: Responses| async move {
            while let Some(message) = req.messages.next().await {
                res.send(message?).await?;
            }
            Ok(())
        },
    );
    router.route(
        "/test.Echo/Fail",
        |_req: Request, res: Responses| async move {
            res.send(Bytes::from_static(b"partial")).await?;
            Err(Status::new(Code::FailedPrecondition, "stopped: 100% ☃"))
        },
    );
    router.route(
        "/test.Echo/Sleep",
        |_req: Request, _res: Responses| async move {
            glommio::timer::sleep(Duration::from_secs(60)).await;
            Ok(())
        },
    );
    router.route(
        "/test.Echo/Park",
        |_req: Request, _res: Responses| async move {
            let _guard = ParkedGuard::new();
            glommio::timer::sleep(Duration::from_secs(60)).await;
            Ok(())
        },
    );
    router
}

thread_local! {
    /// Handlers currently parked in `/test.Echo/Park`.
    static PARKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

struct ParkedGuard;

impl ParkedGuard {
    fn new() -> ParkedGuard {
        PARKED.with(|p| p.set(p.get() + 1));
        ParkedGuard
    }
}

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        PARKED.with(|p| p.set(p.get() - 1));
    }
}

async fn wait_parked(count: usize) {
    for _ in 0..500 {
        if PARKED.with(|p| p.get()) == count {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "parked handlers never reached {count}: {}",
        PARKED.with(|p| p.get())
    );
}

/// Starts a server on 127.0.0.1:0 on this executor.
fn start(config: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    glommio::spawn_local(async move {
        let _ = serve(
            listener,
            crate::tls::stream::Mode::Plain,
            Rc::new(router()),
            config,
        )
        .await;
    })
    .detach();
    addr
}

async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream.compat()).await.unwrap();
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    client
}

struct Reply {
    http_status: u16,
    headers: HeaderMap,
    messages: Vec<Bytes>,
    status: Option<Status>,
}

fn request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Sends `chunks` as DATA frames (each exactly as given) and collects the reply.
async fn call_raw(
    client: &SendRequest<Bytes>,
    req: http::Request<()>,
    chunks: Vec<Bytes>,
) -> Reply {
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut send) = client.send_request(req, false).unwrap();
    for chunk in chunks {
        send.send_data(chunk, false).unwrap();
    }
    let _ = send.send_data(Bytes::new(), true);
    read_reply(response).await
}

async fn read_reply(response: h2::client::ResponseFuture) -> Reply {
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut decoder = Decoder::new(usize::MAX);
    let mut messages = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        decoder.push(&chunk);
        while let Some(m) = decoder.decode().unwrap() {
            messages.push(m);
        }
    }
    decoder.finish().unwrap();
    let trailers = body.trailers().await.unwrap();
    let status = trailers
        .as_ref()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers));
    Reply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        messages,
        status,
    }
}

async fn call(client: &SendRequest<Bytes>, path: &str, messages: &[&[u8]]) -> Reply {
    let chunks = messages.iter().map(|m| codec::encode(m)).collect();
    call_raw(client, request(path), chunks).await
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.headers["content-type"], "application/grpc");
    assert_eq!(reply.status, Some(Status::ok()));
}

#[test]
fn grpc_unary_echo_and_metadata() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let reply = call(&client, "/test.Echo/Unary", &[b"hello"]).await;
        assert_ok(&reply);
        assert_eq!(reply.messages, vec![Bytes::from_static(b"hello")]);

        let reply = call(&client, "/test.Echo/Unary", &[b""]).await;
        assert_ok(&reply);
        assert_eq!(reply.messages, vec![Bytes::new()]);

        let mut req = request("/test.Echo/Token");
        req.headers_mut().insert("token", "abc123".parse().unwrap());
        let reply = call_raw(&client, req, vec![codec::encode(b"x")]).await;
        assert_ok(&reply);
        assert_eq!(reply.messages, vec![Bytes::from_static(b"abc123")]);

        // A unary call without a message, or with two, is an error.
        let reply = call(&client, "/test.Echo/Unary", &[]).await;
        assert_eq!(reply.status.unwrap().code, Code::Internal);
        let reply = call(&client, "/test.Echo/Unary", &[b"a", b"b"]).await;
        assert_eq!(reply.status.unwrap().code, Code::Internal);
    });
}

#[test]
fn grpc_unknown_service_and_method() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let reply = call(&client, "/etcdserverpb.Foo/Range", &[b"x"]).await;
        assert_eq!(reply.http_status, 200);
        assert_eq!(
            reply.status,
            Some(Status::new(
                Code::Unimplemented,
                "unknown service etcdserverpb.Foo"
            ))
        );
        let reply = call(&client, "/test.Echo/Bar", &[b"x"]).await;
        assert_eq!(
            reply.status,
            Some(Status::new(
                Code::Unimplemented,
                "unknown method Bar for service test.Echo"
            ))
        );
        // A non-POST gRPC call is refused at the HTTP level; a request that is not gRPC
        // goes to the router's HTTP handler (none here: 404), as etcd serves HTTP over h2.
        let mut req = request("/test.Echo/Unary");
        *req.method_mut() = http::Method::GET;
        assert_eq!(call_raw(&client, req, vec![]).await.http_status, 405);
        let mut req = request("/test.Echo/Unary");
        req.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        let mut sender = client.clone().ready().await.unwrap();
        let (response, _) = sender.send_request(req, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 404);
        // A handler error after a message: DATA, then the status in trailers.
        let reply = call(&client, "/test.Echo/Fail", &[]).await;
        assert_eq!(reply.messages, vec![Bytes::from_static(b"partial")]);
        assert_eq!(
            reply.status,
            Some(Status::new(Code::FailedPrecondition, "stopped: 100% ☃"))
        );
    });
}

#[test]
fn grpc_oversized_message() {
    run(async {
        let config = Config {
            message_bytes_max: 1000,
            ..Config::default()
        };
        let addr = start(config);
        let client = connect(addr).await;
        let reply = call(&client, "/test.Echo/Unary", &[&[7; 1000]]).await;
        assert_ok(&reply);
        let reply = call(&client, "/test.Echo/Unary", &[&[7; 1001]]).await;
        assert_eq!(
            reply.status,
            Some(Status::new(
                Code::ResourceExhausted,
                "grpc: received message larger than max (1001 vs. 1000)"
            ))
        );
        // Only a header announcing 3 MiB against the default limit: refused before buffering.
        let client = {
            let addr = start(Config::default());
            connect(addr).await
        };
        let header = Bytes::from_static(&[0, 0, 0x30, 0, 0]);
        let reply = call_raw(&client, request("/test.Echo/Unary"), vec![header]).await;
        let status = reply.status.unwrap();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(
            status.message,
            "grpc: received message larger than max (3145728 vs. 2097152)"
        );
    });
}

#[test]
fn grpc_split_and_packed_frames() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        // One 200 KB message in 1-to-997-byte DATA frames.
        let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let wire = codec::encode(&message);
        let mut chunks = Vec::new();
        let mut offset = 0;
        let mut size = 1;
        while offset < wire.len() {
            let end = (offset + size).min(wire.len());
            chunks.push(wire.slice(offset..end));
            offset = end;
            size = size % 997 + 1;
        }
        let reply = call_raw(&client, request("/test.Echo/Unary"), chunks).await;
        assert_ok(&reply);
        assert_eq!(reply.messages, vec![Bytes::from(message)]);

        // 500 messages packed into one DATA frame, echoed by the bidi handler.
        let messages: Vec<Vec<u8>> = (0..500u32)
            .map(|i| i.to_be_bytes().repeat(i as usize % 5))
            .collect();
        let packed: Vec<u8> = messages
            .iter()
            .flat_map(|m| codec::encode(m).to_vec())
            .collect();
        let reply = call_raw(
            &client,
            request("/test.Echo/Bidi"),
            vec![Bytes::from(packed)],
        )
        .await;
        assert_ok(&reply);
        assert_eq!(reply.messages, messages);
    });
}

#[test]
fn grpc_server_streaming() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let reply = call(&client, "/test.Echo/Count", &[&1000u32.to_be_bytes()]).await;
        assert_ok(&reply);
        assert_eq!(reply.messages.len(), 1000);
        for (i, m) in reply.messages.iter().enumerate() {
            assert_eq!(m[..], (i as u32).to_be_bytes());
        }
        // Zero messages: a Trailers-Only reply.
        let reply = call(&client, "/test.Echo/Count", &[&0u32.to_be_bytes()]).await;
        assert_ok(&reply);
        assert!(reply.messages.is_empty());
    });
}

#[test]
fn grpc_bidi_interleaved() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let mut client = client.ready().await.unwrap();
        let (response, mut send) = client
            .send_request(request("/test.Echo/Bidi"), false)
            .unwrap();
        send.send_data(codec::encode(b"first"), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut decoder = Decoder::new(usize::MAX);
        for i in 0..50u32 {
            if i > 0 {
                send.send_data(codec::encode(&i.to_be_bytes()), false)
                    .unwrap();
            }
            let message = loop {
                if let Some(m) = decoder.decode().unwrap() {
                    break m;
                }
                let chunk = body.data().await.unwrap().unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(&chunk);
            };
            if i == 0 {
                assert_eq!(&message[..], b"first");
            } else {
                assert_eq!(message[..], i.to_be_bytes());
            }
        }
        send.send_data(Bytes::new(), true).unwrap();
        assert!(body.data().await.is_none());
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(Status::from_header_map(&trailers), Some(Status::ok()));
    });
}

#[test]
fn grpc_garbage_frames_fail_only_their_stream() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        // Truncated: the header announces 10 bytes, the stream ends after 3.
        let truncated = Bytes::from_static(&[0, 0, 0, 0, 10, 1, 2, 3]);
        let reply = call_raw(&client, request("/test.Echo/Unary"), vec![truncated]).await;
        assert_eq!(reply.status.unwrap().code, Code::Internal);
        // Compressed flag without a negotiated encoding; unknown flag byte.
        for flag in [1u8, 0xff] {
            let frame = Bytes::from(vec![flag, 0, 0, 0, 1, 9]);
            let reply = call_raw(&client, request("/test.Echo/Unary"), vec![frame]).await;
            assert_eq!(reply.status.unwrap().code, Code::Internal);
        }
        // Malformed grpc-timeout.
        let mut req = request("/test.Echo/Unary");
        req.headers_mut()
            .insert("grpc-timeout", "soon".parse().unwrap());
        let reply = call_raw(&client, req, vec![codec::encode(b"x")]).await;
        assert_eq!(reply.status.unwrap().code, Code::Internal);
        // The same connection still serves.
        assert_ok(&call(&client, "/test.Echo/Unary", &[b"still here"]).await);
    });
}

/// A handler past its `grpc-timeout` ends with grpc-go's status, as a Trailers-Only reply,
/// and the connection goes on: on the queued path (a route) and on the direct unary one
/// (`serve_unary`).
#[test]
fn grpc_timeout_enforced() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        for path in ["/test.Echo/Sleep", "/test.Echo/UnarySleep"] {
            let mut req = request(path);
            req.headers_mut()
                .insert("grpc-timeout", "50m".parse().unwrap());
            let reply = call_raw(&client, req, vec![codec::encode(b"x")]).await;
            assert_eq!(
                reply.status,
                Some(Status::new(
                    Code::DeadlineExceeded,
                    "context deadline exceeded"
                )),
                "{path}"
            );
            assert!(reply.messages.is_empty(), "{path}");
            assert_ok(&call(&client, "/test.Echo/Unary", &[b"ok"]).await);
        }
    });
}

#[test]
fn grpc_100_concurrent_streams() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let client = client.clone();
                glommio::spawn_local(async move {
                    let message = i.to_be_bytes().repeat(1 + i as usize * 100);
                    let path = if i % 2 == 0 {
                        "/test.Echo/Unary"
                    } else {
                        "/test.Echo/Bidi"
                    };
                    let reply = call(&client, path, &[&message]).await;
                    assert_ok(&reply);
                    assert_eq!(reply.messages, vec![Bytes::from(message)]);
                })
            })
            .collect();
        for c in calls {
            c.await;
        }
    });
}

#[test]
fn grpc_garbage_connection_is_closed() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        // Pseudo-random bytes instead of the HTTP/2 preface.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = garbage.write_all(&bytes).await;
        let mut sink = Vec::new();
        // The server closes it: read reaches EOF (or a reset) rather than hanging.
        let _ = garbage.read_to_end(&mut sink).await;
        // A connection that sends a valid preface and then garbage frames.
        let mut bad = TcpStream::connect(addr).await.unwrap();
        let _ = bad.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let _ = bad.write_all(&bytes).await;
        let _ = bad.read_to_end(&mut sink).await;
        // Existing and new connections are unharmed.
        assert_ok(&call(&client, "/test.Echo/Unary", &[b"ok"]).await);
        let fresh = connect(addr).await;
        assert_ok(&call(&fresh, "/test.Echo/Unary", &[b"ok"]).await);
    });
}

// OPEN: the handler parks, but the client's RST_STREAM(CANCEL) is not yet seen by the
// writer's `poll_reset` watch, so the handler stays parked until it next sends. Ignored
// until understood. (With `futures_lite::future::pending` instead of a sleep the stream
// task was dropped right after parking: also not yet understood.)
#[test]
#[ignore]
fn grpc_client_reset_drops_parked_handler() {
    run(async {
        let addr = start(Config::default());
        let client = connect(addr).await;
        let mut sender = client.clone().ready().await.unwrap();
        let (_response, mut send) = sender
            .send_request(request("/test.Echo/Park"), false)
            .unwrap();
        send.send_data(codec::encode(b"x"), false).unwrap();
        wait_parked(1).await;
        send.send_reset(h2::Reason::CANCEL);
        wait_parked(0).await;
        // A closed connection drops its parked handlers too.
        {
            let other = connect(addr).await;
            let mut sender = other.ready().await.unwrap();
            let (_response, mut send) = sender
                .send_request(request("/test.Echo/Park"), false)
                .unwrap();
            send.send_data(codec::encode(b"x"), false).unwrap();
            wait_parked(1).await;
        }
        assert_ok(&call(&client, "/test.Echo/Unary", &[b"ok"]).await);
    });
}

#[test]
fn grpc_keepalive_closes_a_silent_client_and_keeps_a_live_one() {
    run(async {
        let config = Config {
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        let addr = start(config);
        // A live h2 client answers the server's PINGs (h2 does it while polled).
        let live = connect(addr).await;
        // A client that sends the preface and its SETTINGS, then never reads or answers.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        silent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        glommio::timer::sleep(Duration::from_millis(800)).await;
        // By now the silent client missed a PING deadline: the server has closed it, so
        // reading drains what the server sent and reaches EOF instead of hanging.
        let mut sink = Vec::new();
        let read = future::or(
            async { silent.read_to_end(&mut sink).await.is_ok() },
            async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                false
            },
        )
        .await;
        assert!(read, "the silent connection is still open");
        // The server's PING frame (type 6) was among what it sent.
        assert!(sink.windows(4).any(|w| w[3] == 6 && w[..3] == [0, 0, 8]));
        // The live one went through several keepalive rounds and still works.
        assert_ok(&call(&live, "/test.Echo/Unary", &[b"ok"]).await);
    });
}
