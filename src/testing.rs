//! Helpers for the tests: the crate's own (`#[cfg(test)]` modules) and `tests/it`, which
//! reach them as `keel::testing`. Not part of Keel's interface.

/// A loopback port nothing listens on, for a server the test starts next.
///
/// Picked below the kernel's ephemeral range, not by binding port 0: a port the kernel
/// hands out for port 0 comes from the same range as the source ports of outgoing
/// connections, and with many tests connecting at once one of them took such a port in
/// the gap before the server bound it ("bind: address already in use", seen in about one
/// run in three of the cluster tests side by side). Below that range only servers bind;
/// each test process starts at a random port, never hands out a port twice, and skips
/// ports something already listens on.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000).max(1000));
    let _ = NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(2_654_435_761) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (first + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + span);
}
