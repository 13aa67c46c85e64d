#!/usr/bin/env bash
# The whole test suite: unit, model, crash and recovery tests, the server driven by
# etcdctl and the etcd-client crate (one build, reused), keel-chaos's short fault-injection
# run and power-cut run, etcd's own e2e tests and the Python and Node etcd3 clients against Keel, then a
# short smoke run of every fuzz target.
# Run from anywhere in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# glommio registers io_uring memory; keep within the memlock limit or raise it if we may.
ulimit -l 65536 2>/dev/null || true

ci/deps.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# keel-chaos, the short mode: a seeded run with every fault kind must be clean, and a
# deliberately broken Keel must be caught (needs root; about 4 minutes with its build).
ci/chaos.sh

# keel-chaos powercut, the short mode: power cuts on the forgetful FUSE disk must lose
# nothing Keel acknowledged, and the two mutants that skip a sync must be caught (needs
# root and /dev/fuse; about 4 minutes with the mutants' builds).
ci/powercut.sh

# etcd's e2e suite, then Python and Node clients, against the binary the test build made.
ci/e2e.sh target/debug/keel
ci/interop.sh target/debug/keel

# The benchmark end to end (Keel and etcd, one short run per scenario): it must run, not
# be fast; figures come from release builds on an idle machine (tuning.md).
cargo run -q -p keel-bench -- compare --quick --seconds 1 --keel target/debug/keel \
  --no-plots --out target/bench-smoke | tail -n 40
# Defragment and Snapshot under put load (issue 19), both servers, a 20 MiB db: must run.
cargo run -q -p keel-bench -- maintenance --quick --keel target/debug/keel \
  --out target/bench-smoke-maintenance | tail -n 30

# A /metrics scrape every 100 ms under put load, and the JSON gateway's put and range
# rate (issue 20), both servers: must run.
cargo run -q -p keel-bench -- scrape --quick --keel target/debug/keel \
  --out target/bench-smoke-scrape | tail -n 5
cargo run -q -p keel-bench -- gateway --quick --keel target/debug/keel \
  --out target/bench-smoke-gateway | tail -n 6
# Watch fan-out through a gRPC proxy, puts straight to the member (issue 21), both
# servers: must run.
cargo run -q -p keel-bench -- proxy --quick --keel target/debug/keel --out target/bench-smoke-proxy | tail -n 5
# Shards that follow the data (fails if Keel moved nothing) and the growth table (issue
# 23), both servers: must run.
cargo run -q -p keel-bench -- skew --quick --keel target/debug/keel \
  --out target/bench-smoke-skew | tail -n 6
cargo run -q -p keel-bench -- growth --quick --keel target/debug/keel \
  --out target/bench-smoke-growth | tail -n 6
# Big answers and bad readers (issue 23), both servers: must run, and fails if a
# whole-store Range lost keys or a slow reader, txn or watch catch-up failed.
cargo run -q -p keel-bench -- big --quick --keel target/debug/keel \
  --out target/bench-smoke-big | tail -n 4

ci/fuzz-smoke.sh
