#!/usr/bin/env bash
# Put latency and CPU, Keel against etcd 3.4 on the same machine, same client, one run.
#
#   bench/compare-put.sh [ROUNDS]        (default 3 rounds, A/B interleaved)
#
# Starts Debian's etcd (if /usr/bin/etcd exists) and target/release/keel on loopback with
# data dirs side by side under $BENCH_DIR (default /tmp/keel-compare), runs
# `keel-bench put` with 1 and 64 clients against each in turn, and stops both (by PID).
# Prints each run; the medians go into tuning.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DIR=${BENCH_DIR:-/tmp/keel-compare}
CLIENTS=${CLIENTS:-1,64,256}
cargo build --release -q -p keel --bin keel && cargo build --release -q -p keel-bench
rm -rf "$DIR" && mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # name binary client_port peer_port
  local name=$1 bin=$2 cport=$3 pport=$4
  "$bin" --name "$name" --data-dir "$DIR/$name" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport" >"$DIR/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$DIR/$name.pid"
  for _ in $(seq 100); do
    grep -q "ready to serve client requests" "$DIR/$name.log" && return 0
    sleep 0.1
  done
  echo "$name did not start; see $DIR/$name.log" >&2
  exit 1
}

servers=("keel target/release/keel 22379 22380")
if [ -x /usr/bin/etcd ]; then
  servers+=("etcd /usr/bin/etcd 23379 23380")
else
  echo "# /usr/bin/etcd not installed: Keel alone"
fi
for s in "${servers[@]}"; do start $s; done
for round in $(seq "$ROUNDS"); do
  for s in "${servers[@]}"; do
    set -- $s
    target/release/keel-bench put --endpoint "127.0.0.1:$3" --clients "$CLIENTS" \
      --server-pid "$(cat "$DIR/$1.pid")" --label "$1 round=$round" | grep -v '^#'
  done
done
