//! `keel-bench gateway`: the JSON gateway's put and range rate, Keel and etcd 3.4 in one
//! run.
//!
//! ```text
//! keel-bench gateway [--keel target/release/keel] [--etcd /usr/bin/etcd] [--seconds 5]
//!     [--conns 1,16,64] [--quick] [--out bench/results/NAME]
//! ```
//! Each server (fresh data dir) gets, for each connection count, `--seconds` of closed-loop
//! `POST /v3/kv/put` (8-byte keys of a 10,000-key space, 256-byte values, base64 as the
//! gateway wants) and then of `POST /v3/kv/range` (one key, linearizable), one request in
//! flight per keep-alive HTTP/1.1 connection, each connection on its own thread. Reported:
//! requests/s and p50 / p99 / p99.9 latency (hdrhistogram), and the server's CPU per
//! request. Writes `OUT/table.md`.

use crate::compare::start;
use crate::load;
use crate::util::{self, Flags};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request on a keep-alive connection; the status code.
fn request(
    stream: &mut BufReader<TcpStream>,
    path: &str,
    body: &str,
    scratch: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let w = stream.get_mut();
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status: u16 = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            scratch.resize(n + 2, 0);
            stream.read_exact(scratch)?;
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        scratch.resize(n, 0);
        stream.read_exact(scratch)?;
    }
    Ok(status)
}

struct Result {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    histogram: hdrhistogram::Histogram<u64>,
    server_cpu_us: Option<f64>,
}

fn run(addr: SocketAddr, pid: u32, conns: usize, seconds: u64, range: bool) -> Result {
    let cpu0 = load::process_cpu_us(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            std::thread::spawn(move || {
                let mut h = util::histogram();
                let mut errors = 0u64;
                let Ok(s) = TcpStream::connect(addr) else {
                    return (h, 1);
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut s = BufReader::new(s);
                let value = base64(&[b'v'; 256]);
                let mut scratch = Vec::new();
                let mut i = t as u64 * 7919;
                while Instant::now() < deadline {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = base64(format!("{:08}", (i >> 33) % 10_000).as_bytes());
                    let (path, body) = if range {
                        ("/v3/kv/range", format!("{{\"key\":\"{key}\"}}"))
                    } else {
                        (
                            "/v3/kv/put",
                            format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}"),
                        )
                    };
                    let t0 = Instant::now();
                    match request(&mut s, path, &body, &mut scratch) {
                        Ok(200) => {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (h, errors)
            })
        })
        .collect();
    let mut histogram = util::histogram();
    let mut errors = 0;
    for t in threads {
        let (h, e) = t.join().expect("gateway load thread");
        histogram.add(&h).expect("same bounds");
        errors += e;
    }
    let elapsed = started.elapsed();
    let requests = histogram.len();
    let server_cpu_us = match (cpu0, load::process_cpu_us(pid)) {
        (Some(a), Some(b)) if requests > 0 => Some((b - a) / requests as f64),
        _ => None,
    };
    Result {
        requests,
        errors,
        elapsed,
        histogram,
        server_cpu_us,
    }
}

pub fn main(flags: &Flags) {
    let quick = flags.has("quick");
    let keel = flags.str("keel", "target/release/keel");
    let etcd = flags.str("etcd", "/usr/bin/etcd");
    let seconds = flags.u64("seconds", if quick { 1 } else { 5 });
    let conns: Vec<usize> = flags
        .str("conns", if quick { "16" } else { "1,16,64" })
        .split(',')
        .map(|c| c.trim().parse().expect("--conns: N[,N]"))
        .collect();
    let out = PathBuf::from(flags.str("out", "target/bench-gateway"));
    std::fs::create_dir_all(&out).expect("create --out");
    let mut table = String::from(
        "| case | server | req/s | p50 / p99 / p99.9 µs | server CPU µs/req | errors |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for (name, binary) in [("keel", keel.as_str()), ("etcd", etcd.as_str())] {
        let server = start(name, binary, &out, &[], false);
        let pid = server.child.id();
        // Warm-up: fills the key space.
        let _ = run(server.addr, pid, 16, 1, false);
        for &c in &conns {
            for range in [false, true] {
                let r = run(server.addr, pid, c, seconds, range);
                let h = &r.histogram;
                let _ = writeln!(
                    table,
                    "| gateway {} c{c} | {name} | {:.0} | {} / {} / {} | {} | {} |",
                    if range { "range" } else { "put" },
                    r.requests as f64 / r.elapsed.as_secs_f64(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    r.server_cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
                    r.errors
                );
                if r.requests == 0 {
                    eprintln!("gateway: {name}: no request succeeded");
                    std::process::exit(1);
                }
            }
        }
        drop(server);
    }
    std::fs::write(out.join("table.md"), &table).expect("write table.md");
    println!("{table}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"f"), "Zg==");
    }
}
