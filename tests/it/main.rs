//! Keel's integration tests, one test binary (`it`). Each file here was a test binary of
//! its own under `tests/`, and each of those linked the whole dependency tree again; now
//! each is a module, and a test's name starts with it:
//! `cluster::membership_changes_under_load`. One file's tests:
//! `cargo nextest run --test it -E 'test(/^cluster::/)'` (a plain `cluster::` filter
//! matches by substring, so it takes `force_new_cluster::` too); `.config/nextest.toml`
//! selects files the same way.
//!
//! A new test file goes here, `tests/it/<name>.rs`, with a `mod <name>;` line below (a
//! file directly under `tests/` would be a binary of its own again). The shared harness
//! is `common`: `use crate::common;`.

mod common;

mod auth;
mod autocompact;
mod client;
mod cluster;
mod corruption;
mod crash;
mod discovery;
mod durability;
mod etcdctl;
mod force_new_cluster;
mod gateway;
mod l4_gateway;
mod layers;
mod lease;
mod lock_elect;
mod maintenance;
mod metrics;
mod proxy;
mod shards;
mod tls;
mod watch;
mod watch_checker;
mod watch_raw;
mod watch_slow;

/// Every test file is a module of this binary: a `.rs` file (or a directory with a
/// `main.rs`) directly under `tests/` would be a test binary of its own, linking the whole
/// tree again, and a file in `tests/it/` without its `mod` line here would never run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(tests.join("it/main.rs")).unwrap();
    let declared = |name: &str| main.lines().any(|l| l.trim() == format!("mod {name};"));
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "it" {
            continue;
        }
        if let Some(module) = name.strip_suffix(".rs") {
            wrong.push(format!(
                "tests/{name} is a test binary of its own: `git mv tests/{name} tests/it/` and \
                 add `mod {module};` to tests/it/main.rs"
            ));
        } else if path.join("main.rs").exists() {
            wrong.push(format!(
                "tests/{name}/ is a test binary of its own: move it into tests/it/"
            ));
        }
    }
    for entry in std::fs::read_dir(tests.join("it")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = match name.strip_suffix(".rs") {
            Some("main") => continue,
            Some(module) => module.to_string(),
            None if path.join("mod.rs").exists() => name.clone(),
            None => continue,
        };
        if !declared(&module) {
            wrong.push(format!(
                "tests/it/{name} never runs: add `mod {module};` to tests/it/main.rs"
            ));
        }
    }
    wrong.sort();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
