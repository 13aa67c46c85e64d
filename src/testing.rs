//! Helpers for the tests: the crate's own (`#[cfg(test)]` modules) and `tests/it`, which
//! reach them as `keel::testing`. Not part of Keel's interface.

/// A loopback port nothing listens on, for a server the test starts next.
///
/// Picked below the kernel's ephemeral range, not by binding port 0: a port the kernel
/// hands out for port 0 comes from the same range as the source ports of outgoing
/// connections, and with many tests connecting at once one of them took such a port in
/// the gap before the server bound it ("bind: address already in use", seen in about one
/// run in three of the cluster tests side by side). Below that range only servers bind.
///
/// Test processes run side by side (nextest runs each test in its own) and each hands
/// out ports for servers it has not started yet, so a bind check alone cannot tell two
/// processes apart: one CI run lost a proxy's port to another test that had been handed
/// the same one. So a port is also claimed across processes, by an `flock` on a file
/// named after it in a shared temp folder, held until this process exits (the kernel
/// drops the lock then, however it ends).
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
        if claim(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + span);
}

/// Whether this process now holds `port`'s claim file (see `free_port`). Claims are
/// kept for the life of the process; the files stay, empty, for the next runs to reuse.
fn claim(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("keel-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return false;
    };
    // std's try_lock is flock(LOCK_EX | LOCK_NB).
    if file.try_lock().is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_port_claimed_by_another_process_is_never_handed_out() {
        let port = super::free_port();
        // Another open file description of the same claim file stands for another
        // process: flock conflicts between descriptions, not between processes as such.
        let path = std::env::temp_dir()
            .join("keel-test-ports")
            .join(port.to_string());
        let other = std::fs::File::open(&path).unwrap();
        assert!(other.try_lock().is_err(), "the claim on {port} is not held");
        assert!(!super::claim(port));
    }
}
