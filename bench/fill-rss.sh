#!/usr/bin/env bash
# Memory after a fill, Keel and etcd 3.4 side by side (issue 23's memory target): each
# server starts on an empty data dir, keel-bench puts N distinct 16-byte sequential keys
# with 256-byte values (256 clients over 8 connections), and one second later the
# server's VmRSS, RssAnon and RssFile are read from /proc; then a restart on the same dir
# and the same figures again. Interleaved Keel / etcd, REPS times per size.
#
#   bench/fill-rss.sh [--keel target/release/keel] [--etcd /usr/bin/etcd]
#                     [--sizes "500000 1000000"] [--reps 1] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=target/release/keel ETCD=/usr/bin/etcd SIZES="500000 1000000" REPS=1 OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --keel) KEEL=$2; shift 2 ;;
    --etcd) ETCD=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "fill-rss.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
BENCH=target/release/keel-bench
[ -x "$KEEL" ] && [ -x "$BENCH" ] || cargo build --release --workspace
[ -x "$ETCD" ] || { echo "fill-rss.sh: $ETCD not found (Debian: etcd-server)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/keel-fill-rss.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

mem() { awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s %d MiB  ", $1, $2/1024}' "/proc/$1/status"; }

start() { # name binary dir port
  local name=$1 bin=$2 dir=$3 port=$4
  "$bin" --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "$name=http://127.0.0.1:$((port + 1))" \
    --quota-backend-bytes 17179869184 >>"$WORK/$name.log" 2>&1 &
  PID=$!
  until ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$port" --command-timeout=1s get x >/dev/null 2>&1; do
    kill -0 "$PID" || { echo "fill-rss.sh: $name did not start"; tail "$WORK/$name.log"; exit 1; }
    sleep 0.05
  done
}

stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

echo "# fill-rss | git $(git rev-parse --short HEAD) | $(nproc) cores" | tee ${OUT:+"$OUT"}
for n in $SIZES; do
  for rep in $(seq "$REPS"); do
    for server in keel etcd; do
      bin=$KEEL; [ $server = etcd ] && bin=$ETCD
      dir="$WORK/$server-$n-$rep"; port=$((24000 + RANDOM % 20000))
      start "$server" "$bin" "$dir" "$port"
      "$BENCH" put --endpoints "127.0.0.1:$port" --conns 8 --clients 256 --total "$n" \
        --key-space-size "$n" --sequential-keys --key-size 16 --val-size 256 >/dev/null
      sleep 1
      filled=$(mem "$PID")
      stop
      start "$server" "$bin" "$dir" "$port"
      sleep 1
      restarted=$(mem "$PID")
      stop
      line="$server $n keys, rep $rep | after the fill: $filled| after a restart: $restarted"
      echo "$line" | tee -a ${OUT:+"$OUT"}
      rm -rf "$dir"
    done
  done
done
