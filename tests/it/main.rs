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
mod layers;
mod lease;
mod lock_elect;
mod maintenance;
mod metrics;
mod shards;
mod tls;
mod watch;
mod watch_checker;
mod watch_raw;
mod watch_slow;
