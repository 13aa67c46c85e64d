//! `keel-chaos powercut` against the real Keel, every pending change lost at each cut
//! (`--loss all`): a member must come back with every acknowledged write. Regression test
//! for the directory entries Keel created at its first boot without fsyncing their parents
//! (the data dir, `member/`, `member/snap/`): the first cut dropped them and the member came
//! back empty (src/durable_dir.rs). Needs root and /dev/fuse; fails (never skips) without.

use std::path::PathBuf;
use std::process::Command;

/// The `keel` binary the workspace build made (`KEEL_BIN` overrides).
fn keel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bin = target
        .parent()
        .expect("target dir")
        .join("debug")
        .join("keel");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --bin keel) or set KEEL_BIN",
        bin.display()
    );
    bin
}

#[test]
fn a_single_member_keeps_every_acknowledged_write_across_total_power_cuts() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("powercut-all");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_keel-chaos"))
        .args([
            "powercut",
            "--members",
            "1",
            "--cuts",
            "4",
            "--seed",
            "11",
            "--loss",
            "all",
        ])
        .arg("--server")
        .arg(keel_bin())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run keel-chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        run.status.success()
            && last.starts_with("cuts=4 ")
            && last.ends_with("lost=0 corrupt-starts=0"),
        "exit {:?}\n{stdout}\n{stderr}",
        run.status.code()
    );
}
