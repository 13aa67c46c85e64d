//! etcd's JSON gateway (`POST /v3/...` on the client port) against the real server binary,
//! driven with raw HTTP/1.1 over `std::net::TcpStream`: KV with base64 keys and values,
//! txn, a watch stream that receives a put's event, leases (keepalive streamed), auth
//! with the `Authorization` token header, lock, election, member list, status, the error
//! bodies and HTTP statuses of grpc-gateway v1, pipelined requests, malformed JSON and an
//! oversized body.
//!
//! Expectations are etcd 3.4.23's: the tests also pass with
//! `KEEL_TEST_SERVER=/usr/bin/etcd cargo test --test it gateway::`. Every read has a timeout.

use crate::common;

use common::Server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 connection.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response: status, lower-cased headers, body (de-chunked when whole).
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(s: &Server) -> Http {
        let stream = TcpStream::connect(s.endpoint()).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    fn request_bytes(path: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    fn send(&mut self, path: &str, body: &str, headers: &[(&str, &str)]) {
        let bytes = Http::request_bytes(path, body, headers);
        self.stream.write_all(&bytes).unwrap();
    }

    fn post(&mut self, path: &str, body: &str) -> Response {
        self.post_with(path, body, &[])
    }

    fn post_with(&mut self, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        self.send(path, body, headers);
        self.read_response()
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("read within the timeout");
        assert!(n > 0, "connection closed early; have {:?}", self.text());
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The status line and headers of the next response.
    fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        (status, headers)
    }

    fn read_exact_buf(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill();
        }
        self.buf.drain(..n).collect()
    }

    /// The next chunk of a chunked body; `None` at the last (empty) chunk.
    fn read_chunk(&mut self) -> Option<String> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            self.fill();
        };
        let size_line = String::from_utf8(self.buf.drain(..line_end + 2).collect()).unwrap();
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
        if size == 0 {
            // Trailers (etcd's gateway sends `Grpc-Trailer-*` after an error), then CRLF.
            loop {
                let end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.fill();
                };
                self.buf.drain(..end + 2);
                if end == 0 {
                    return None;
                }
            }
        }
        let data = self.read_exact_buf(size + 2);
        Some(String::from_utf8(data[..size].to_vec()).unwrap())
    }

    fn read_response(&mut self) -> Response {
        let (status, headers) = self.read_head();
        let mut r = Response {
            status,
            headers,
            body: String::new(),
        };
        if r.header("transfer-encoding") == Some("chunked") {
            while let Some(chunk) = self.read_chunk() {
                r.body.push_str(&chunk);
            }
        } else {
            let len = r
                .header("content-length")
                .unwrap_or_else(|| panic!("{r:?}"));
            let len: usize = len.parse().unwrap();
            r.body = String::from_utf8(self.read_exact_buf(len)).unwrap();
        }
        r
    }
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of a `"name":"value"` string member (the first one).
fn member(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":\"");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + key.len();
    json[at..at + json[at..].find('"').unwrap()].to_string()
}

fn ok(r: &Response) -> &str {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    &r.body
}

#[test]
fn gateway_kv_txn_lease_lock_election_cluster_status() {
    let s = Server::start("gateway-kv", &[]);
    let mut h = Http::connect(&s);
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar"));
    assert!(ok(&h.post("/v3/kv/put", &put)).contains(r#""revision":"2""#));
    let r = h.post("/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert!(ok(&r).contains(
        r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
    ));
    // grpc-gateway's spellings in: lowerCamelCase, strings for int64, enum names; `null`.
    let r = h.post(
        "/v3/kv/range",
        r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"5","sort_order":"DESCEND","keys_only":true,"revision":null}"#,
    );
    assert!(ok(&r).ends_with(r#""version":"1"}],"count":"1"}"#), "{r:?}");
    // etcd's own e2e txn (TestV3CurlTxn).
    let txn = r#"{"compare":[{"key":"dA==","result":"EQUAL","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"dA==","value":"YmFy"}}]}"#;
    assert!(ok(&h.post("/v3/kv/txn", txn)).contains(
        r#""succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}}]"#
    ));
    let r = h.post("/v3/kv/txn", txn);
    assert!(!ok(&r).contains("succeeded"), "{r:?}");
    let r = h.post("/v3/kv/deleterange", r#"{"key":"dA==","prev_kv":true}"#);
    assert!(
        ok(&r).contains(r#""deleted":"1","prev_kvs":[{"key":"dA==""#),
        "{r:?}"
    );

    // Leases, keepalive as a one-message stream.
    let r = h.post("/v3/lease/grant", r#"{"TTL":60,"ID":"1234"}"#);
    assert!(ok(&r).ends_with(r#""ID":"1234","TTL":"60"}"#), "{r:?}");
    let r = h.post("/v3/lease/keepalive", r#"{"ID":"1234"}"#);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.body.starts_with(r#"{"result":{"header":{"#), "{r:?}");
    assert!(
        r.body.ends_with("\"ID\":\"1234\",\"TTL\":\"60\"}}\n"),
        "{r:?}"
    );
    let r = h.post("/v3/kv/lease/timetolive", r#"{"ID":"1234","keys":true}"#);
    assert!(ok(&r).contains(r#""grantedTTL":"60""#), "{r:?}");
    assert!(ok(&h.post("/v3/lease/leases", "{}")).contains(r#""leases":[{"ID":"1234"}]"#));
    ok(&h.post("/v3/lease/revoke", r#"{"ID":"1234"}"#));
    let r = h.post("/v3/kv/lease/revoke", r#"{"ID":"1234"}"#);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#
    );

    // Lock and election.
    let r = h.post("/v3/lock/lock", &format!(r#"{{"name":"{}"}}"#, b64("lk")));
    let key = member(ok(&r), "key");
    assert!(key.starts_with(&b64("lk/")[..4]), "{key}");
    ok(&h.post("/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#)));
    let r = h.post("/v3/election/campaign", r#"{"name":"ZWw=","value":"djE="}"#);
    let body = ok(&r).to_string();
    assert!(
        body.contains(r#""leader":{"name":"ZWw=","key":""#),
        "{body}"
    );
    let (lkey, rev, lease) = (
        member(&body, "key"),
        member(&body, "rev"),
        member(&body, "lease"),
    );
    let leader = format!(r#"{{"name":"ZWw=","key":"{lkey}","rev":{rev},"lease":"{lease}"}}"#);
    ok(&h.post(
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"djI="}}"#),
    ));
    let r = h.post("/v3/election/leader", r#"{"name":"ZWw="}"#);
    assert!(ok(&r).contains(r#""value":"djI=""#), "{r:?}");
    ok(&h.post("/v3/election/resign", &format!(r#"{{"leader":{leader}}}"#)));
    for path in ["/v3/election/proclaim", "/v3/election/resign"] {
        let r = h.post(path, "{}");
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                500,
                r#"{"error":"\"leader\" field must be provided","message":"\"leader\" field must be provided","code":2}"#
            )
        );
    }

    // Cluster and maintenance.
    let r = h.post("/v3/cluster/member/list", "{}");
    assert!(
        ok(&r).contains(&format!(
            r#""peerURLs":["{}"],"clientURLs":["#,
            s.peer_url()
        )),
        "{r:?}"
    );
    assert!(ok(&h.post("/v3/maintenance/status", "{}")).contains(r#""version":"3.4."#));
    // The etcd 3.4 prefix that is still answered.
    assert!(ok(&h.post("/v3beta/kv/range", r#"{"key":"Zm9v"}"#)).contains(r#""count":"1""#));
}

#[test]
fn gateway_errors_pipelining_and_bad_input() {
    let s = Server::start("gateway-errors", &[]);
    let mut h = Http::connect(&s);
    let r = h.post("/v3/kv/range", r#"{"key":"Zm9v""#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"error":"unexpected EOF","message":"unexpected EOF","code":3}"#
    );
    let r = h.post("/v3/kv/range", r#"{"key":5}"#);
    assert_eq!(r.status, 400);
    assert!(r.body.ends_with(r#","code":3}"#), "{r:?}");
    let r = h.post("/v3/kv/range", "{}");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
        )
    );
    let r = h.post("/v3/kv/nope", "{}");
    assert_eq!((r.status, r.body.as_str()), (404, "Not Found\n"));
    let r = h.post("/v3alpha/kv/range", "{}");
    assert_eq!((r.status, r.body.as_str()), (404, "404 page not found\n"));
    h.stream
        .write_all(b"GET /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = h.read_response();
    assert_eq!((r.status, r.body.as_str()), (405, "Method Not Allowed\n"));
    // A stream's bad first request: grpc-gateway passes the decoder's error as Unknown.
    let r = h.post("/v3/watch", r#"{"create_request":{"key":5}}"#);
    assert_eq!(r.status, 500);
    assert!(r.body.ends_with(r#","code":2}"#), "{r:?}");

    // Pipelining: three requests in one write, three answers in order.
    let mut all = Vec::new();
    for (i, path) in ["/v3/kv/put", "/v3/kv/range", "/v3/kv/nope"]
        .iter()
        .enumerate()
    {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64("p"),
            b64(&i.to_string())
        );
        all.extend(Http::request_bytes(path, &body, &[]));
    }
    h.stream.write_all(&all).unwrap();
    assert!(ok(&h.read_response()).contains(r#""revision":"2""#));
    assert!(ok(&h.read_response()).contains(&format!(r#""value":"{}""#, b64("0"))));
    assert_eq!(h.read_response().status, 404);

    // A body over Keel's limit is refused and the connection closed (etcd waits for it);
    // others are unaffected.
    if common::is_keel() {
        let mut big = Http::connect(&s);
        big.stream
            .write_all(b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
            .unwrap();
        assert_eq!(big.read_response().status, 413);
    }
    assert!(ok(&h.post("/v3/kv/range", r#"{"key":"cA=="}"#)).contains(r#""count":"1""#));
}

#[test]
fn gateway_watch_stream_receives_a_put() {
    let s = Server::start("gateway-watch", &[]);
    let mut w = Http::connect(&s);
    w.send("/v3/watch", r#"{"create_request":{"key":"dw=="}}"#, &[]);
    let (status, headers) = w.read_head();
    assert_eq!(status, 200);
    assert!(headers.contains(&("transfer-encoding".into(), "chunked".into())));
    let created = w.read_chunk().unwrap();
    assert!(created.starts_with(r#"{"result":{"header":{"#), "{created}");
    assert!(created.ends_with(",\"created\":true}}\n"), "{created}");
    let mut h = Http::connect(&s);
    ok(&h.post("/v3/kv/put", r#"{"key":"dw==","value":"djE="}"#));
    let event = w.read_chunk().unwrap();
    assert!(
        event.ends_with(
            "\"events\":[{\"kv\":{\"key\":\"dw==\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\",\"value\":\"djE=\"}}]}}\n"
        ),
        "{event}"
    );
    // The client leaving ends the watch; the member goes on serving.
    drop(w);
    ok(&h.post("/v3/kv/put", r#"{"key":"dw==","value":"djI="}"#));
    assert!(ok(&h.post("/v3/kv/range", r#"{"key":"dw=="}"#)).contains(r#""value":"djI=""#));
}

#[test]
fn gateway_auth_token_header_and_permission_denied() {
    let s = Server::start("gateway-auth", &[]);
    let mut h = Http::connect(&s);
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"toor"}"#),
        ("/v3/auth/user/add", r#"{"name":"u","password":"p"}"#),
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        assert!(
            ok(&h.post(path, body)).contains(r#""revision":""#),
            "{path}"
        );
    }
    let put = r#"{"key":"YQ==","value":"Yg=="}"#;
    let r = h.post("/v3/kv/put", put);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#
        )
    );
    let r = h.post(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"toor"}"#,
    );
    let root = member(ok(&r), "token");
    ok(&h.post_with("/v3/kv/put", put, &[("Authorization", &root)]));
    let r = h.post("/v3/auth/authenticate", r#"{"name":"u","password":"p"}"#);
    let u = member(ok(&r), "token");
    let r = h.post_with("/v3/kv/put", put, &[("Authorization", &u)]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            403,
            r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}"#
        )
    );
    let r = h.post_with("/v3/kv/put", put, &[("Authorization", "garbage")]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains(r#""code":16"#));
    let r = h.post_with("/v3/auth/user/list", "{}", &[("Authorization", &root)]);
    assert!(ok(&r).contains(r#""users":["root","u"]"#), "{r:?}");
}

#[test]
fn gateway_client_that_leaves_cancels_its_waiting_lock() {
    let s = Server::start("gateway-lock-cancel", &[]);
    let mut h = Http::connect(&s);
    for id in [101, 102, 103] {
        ok(&h.post("/v3/lease/grant", &format!(r#"{{"TTL":60,"ID":{id}}}"#)));
    }
    let lock = |lease: i64| format!(r#"{{"name":"eA==","lease":"{lease}"}}"#);
    let held = member(ok(&h.post("/v3/lock/lock", &lock(101))), "key");
    // A second locker waits, then leaves: its wait (and its key) must go with it.
    let mut waiter = Http::connect(&s);
    waiter.send("/v3/lock/lock", &lock(102), &[]);
    std::thread::sleep(Duration::from_millis(300));
    drop(waiter);
    std::thread::sleep(Duration::from_millis(300));
    ok(&h.post("/v3/lock/unlock", &format!(r#"{{"key":"{held}"}}"#)));
    // The next locker gets the lock at once (not after lease 102 expires).
    let r = h.post("/v3/lock/lock", &lock(103));
    assert!(ok(&r).contains(r#""key":""#), "{r:?}");
}
