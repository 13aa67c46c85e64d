//! `keel-bench put`: closed-loop Put over gRPC (h2 on glommio), against any etcd v3
//! endpoint, so Keel and etcd are measured by the same client.
//!
//! ```text
//! keel-bench put --endpoint 127.0.0.1:2379 [--clients 1,64] [--conns 1] [--total N]
//!                [--key-bytes 8] [--val-bytes 256] [--key-space 100000] [--server-pid P]
//! ```
//! Each client sends one Put at a time on one of `--conns` HTTP/2 connections. Printed per
//! client count: throughput, latency percentiles (µs, hdrhistogram), the load generator's
//! own CPU per request, and — with `--server-pid` — the server's CPU per request from
//! /proc/PID/stat.

use crate::util::{self, Flags};
use bytes::Bytes;
use glommio::net::TcpStream;
use keel::grpc::codec;
use keel::pb::etcdserverpb::PutRequest;
use prost::Message;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

pub struct PutStats {
    pub clients: u64,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub histogram: hdrhistogram::Histogram<u64>,
    pub client_cpu_us: f64,
    pub server_cpu_us: Option<f64>,
}

/// CPU time (user + system) of a process in microseconds, from /proc/PID/stat.
pub fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1_000_000.0 / 100.0) // USER_HZ is 100 on Linux
}

fn self_cpu_us() -> f64 {
    process_cpu_us(std::process::id()).unwrap_or(0.0)
}

async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the endpoint");
    stream.set_nodelay(true).ok();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(stream.compat())
        .await
        .expect("HTTP/2 handshake");
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    client
}

/// One unary call; Ok when grpc-status is 0.
async fn unary(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    message: Bytes,
) -> Result<Bytes, String> {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://keel{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut send) = ready
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    send.send_data(codec::encode(&message), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2")
        .to_string();
    if status != "0" {
        return Err(format!("grpc-status {status}"));
    }
    Ok(Bytes::from(data))
}

/// Runs `total` puts with `clients` concurrent clients over `conns` connections.
pub fn run_once(
    addr: SocketAddr,
    clients: u64,
    conns: u64,
    total: u64,
    key_bytes: usize,
    val_bytes: usize,
    key_space: u64,
    server_pid: Option<u32>,
) -> PutStats {
    keel::runtime::block_on(async move {
        let mut connections = Vec::new();
        for _ in 0..conns.max(1) {
            connections.push(connect(addr).await);
        }
        let histogram = Rc::new(RefCell::new(util::histogram()));
        let errors = Rc::new(RefCell::new(0u64));
        let next = Rc::new(RefCell::new(0u64));
        let value = Bytes::from(vec![b'v'; val_bytes]);
        let cpu0 = self_cpu_us();
        let server0 = server_pid.and_then(process_cpu_us);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut conn = connections[(c % conns.max(1)) as usize].clone();
            let (histogram, errors, next, value) = (
                histogram.clone(),
                errors.clone(),
                next.clone(),
                value.clone(),
            );
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let i = {
                        let mut n = next.borrow_mut();
                        if *n >= total {
                            break;
                        }
                        *n += 1;
                        *n
                    };
                    let mut key = format!("{:0width$}", i % key_space, width = key_bytes);
                    key.truncate(key_bytes.max(1));
                    let req = PutRequest {
                        key: Bytes::from(key.into_bytes()),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let t = Instant::now();
                    let res = unary(
                        &mut conn,
                        "/etcdserverpb.KV/Put",
                        req.encode_to_vec().into(),
                    )
                    .await;
                    let us = t.elapsed().as_micros() as u64;
                    match res {
                        Ok(_) => histogram.borrow_mut().record(us.max(1)).unwrap(),
                        Err(_) => *errors.borrow_mut() += 1,
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let elapsed = start.elapsed();
        let cpu = self_cpu_us() - cpu0;
        let server = match (server0, server_pid.and_then(process_cpu_us)) {
            (Some(a), Some(b)) => Some((b - a) / total as f64),
            _ => None,
        };
        let histogram = histogram.borrow().clone();
        let errors = *errors.borrow();
        PutStats {
            clients,
            requests: total,
            errors,
            elapsed,
            histogram,
            client_cpu_us: cpu / total as f64,
            server_cpu_us: server,
        }
    })
}

pub fn print(label: &str, s: &PutStats) {
    let server = s
        .server_cpu_us
        .map_or("-".to_string(), |v| format!("{v:.1} µs"));
    println!(
        "{label} put clients={} total={} errors={} | {:.0} req/s | {} | client cpu {:.1} µs/req | server cpu {server}/req",
        s.clients,
        s.requests,
        s.errors,
        s.requests as f64 / s.elapsed.as_secs_f64(),
        util::percentiles_us(&s.histogram),
        s.client_cpu_us,
    );
}

pub fn run(opts: &Flags) {
    let addr: SocketAddr = opts
        .str("endpoint", "127.0.0.1:2379")
        .parse()
        .expect("--endpoint host:port");
    let server_pid = match opts.u64("server-pid", 0) {
        0 => None,
        p => Some(p as u32),
    };
    for clients in opts.list("clients", &[1, 64]) {
        let total = opts.u64("total", (clients * 300).clamp(2000, 50_000));
        let stats = run_once(
            addr,
            clients,
            opts.u64("conns", 1),
            total,
            opts.u64("key-bytes", 8) as usize,
            opts.u64("val-bytes", 256) as usize,
            opts.u64("key-space", 100_000),
            server_pid,
        );
        print(&opts.str("label", "endpoint"), &stats);
    }
}
