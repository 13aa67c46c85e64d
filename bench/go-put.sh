#!/usr/bin/env bash
# Keel and etcd 3.4 side by side under a second, independent loader: bench/go-put (etcd's
# own Go client, clientv3 from Debian's golang-etcd-server-dev; no keel-bench code in the
# loop). Both servers on loopback with fresh data dirs, one put row after the other,
# interleaved Keel / etcd, REPS times; prints each run and a table of medians.
#
#   bench/go-put.sh [--keel target/release/keel] [--etcd /usr/bin/etcd] [--reps 3]
#                   [--seconds 5] [--rows "1:1 64:4"]   (clients:connections per row)
#
# Needs golang-go and golang-etcd-server-dev (ci/deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=target/release/keel ETCD=/usr/bin/etcd REPS=3 SECONDS_=5 ROWS="1:1 64:4"
while [ $# -gt 0 ]; do
  case $1 in
    --keel) KEEL=$2; shift 2 ;;
    --etcd) ETCD=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "go-put.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -x "$KEEL" ] || cargo build --release --bin keel
[ -x "$ETCD" ] || { echo "go-put.sh: $ETCD not found (Debian: etcd-server)" >&2; exit 2; }

CACHE=$PWD/target/go-put
mkdir -p "$CACHE/gocache" "$CACHE/gopath"
( cd bench/go-put && GO111MODULE=off GOPATH="$CACHE/gopath:/usr/share/gocode" \
    GOCACHE="$CACHE/gocache" GOFLAGS= GOPROXY=off go build -o "$CACHE/go-put" . )

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-go-put.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# start NAME BIN: a fresh single member on a free loopback port; sets PORT and PID.
start() {
  local name=$1 bin=$2
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local peer
  peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" --name "$name" --data-dir "$WORK/$name-$PORT" \
    --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$name=http://127.0.0.1:$peer" > "$WORK/$name-$PORT.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "go-put.sh: $name did not start:" >&2; tail -5 "$WORK/$name-$PORT.log" >&2; exit 1
}

RESULTS=$WORK/results
: > "$RESULTS"
for row in $ROWS; do
  clients=${row%%:*} conns=${row##*:}
  for rep in $(seq "$REPS"); do
    for sys in keel etcd; do
      bin=$KEEL; [ $sys = etcd ] && bin=$ETCD
      start "$sys" "$bin"
      line=$("$CACHE/go-put" --endpoints "127.0.0.1:$PORT" --clients "$clients" --conns "$conns" \
        --seconds "$SECONDS_" --server-pid "$PID" --label "$sys")
      kill "$PID"; wait "$PID" 2>/dev/null || true
      echo "c$clients rep $rep: $line"
      echo "$clients $sys $line" >> "$RESULTS"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    clients, sysname, rest = line.split(" ", 2)
    m = re.search(r"\| (\d+) req/s \| p50 (\d+) µs, p90 \d+ µs, p99 (\d+) µs, p99.9 (\d+) µs.*server cpu ([\d.]+)", rest)
    if m:
        rows.setdefault((int(clients), sysname), []).append([float(x) for x in m.groups()])
print("| put (go-put, clientv3) | Keel req/s | etcd req/s | ratio | Keel p50 µs | etcd p50 µs | ratio | Keel p99 µs | etcd p99 µs | ratio | Keel CPU µs/put | etcd CPU µs/put | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in sorted({k[0] for k in rows}):
    k = rows.get((c, "keel")); e = rows.get((c, "etcd"))
    if not k or not e:
        continue
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    cells = []
    for i in (0, 1, 2, 4):
        a, b = med(k, i), med(e, i)
        cells += [f"{a:.0f}" if i != 4 else f"{a:.1f}", f"{b:.0f}" if i != 4 else f"{b:.1f}", f"{a / b:.2f}×"]
    print(f"| c{c} | " + " | ".join(cells) + " |")
PY
