//! The few operating-system calls the harness needs: running a command and reading its
//! output, signalling a child by PID, entering a network namespace, raising the memlock
//! limit members inherit, mounting a tmpfs.
#![allow(unsafe_code)]

use std::path::Path;
use std::process::Command;

/// Runs `argv` to completion; its stdout on success, else a message with its stderr.
pub fn run(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `name` is a command on PATH.
pub fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Sends `signal` to the process `pid` (a child of this harness; never anything else).
pub fn signal(pid: u32, signal: i32) -> Result<(), String> {
    // SAFETY: kill(2) with a PID this harness spawned and still owns (not yet reaped).
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Moves the calling thread into the network namespace `name` (`ip netns add` made it);
/// sockets it opens afterwards, and threads it starts, live there.
pub fn enter_netns(name: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file descriptor we hold open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "setns({path}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Raises RLIMIT_MEMLOCK to `bytes` (soft and hard) if it is lower: glommio registers
/// io_uring memory, and members (children) inherit the limit.
pub fn raise_memlock(bytes: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < bytes {
            lim.rlim_cur = bytes;
            if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < bytes {
                lim.rlim_max = bytes;
            }
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Asks the kernel to SIGKILL this process when the thread that spawns it exits (set in
/// a child between fork and exec): members never outlive a harness that was killed.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Free bytes on the file system that holds `path`.
pub fn free_bytes(path: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs(3) fills a struct we own from a NUL-terminated path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return Err(format!(
                "statvfs {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(s.f_bavail as u64 * s.f_frsize as u64)
    }
}

/// Nanoseconds on the monotonic clock since `origin`.
pub fn ns_since(origin: std::time::Instant) -> i64 {
    origin.elapsed().as_nanos() as i64
}

#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
