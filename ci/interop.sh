#!/usr/bin/env bash
# Clients nobody here wrote, beyond etcdctl and etcd-client (those run in `cargo test`):
# Python etcd3 (grpcio) and Node etcd3 (grpc-js) against a Keel member on loopback.
#
#   ci/interop.sh [path/to/keel]      (default target/debug/keel)
#
# Installs the clients into target/interop (PyPI, npm) on first use. Skips a client whose
# toolchain (python3+pip, node+npm) is missing, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=${1:-target/debug/keel}
WORK=$PWD/target/interop
mkdir -p "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PEER=$((PORT + 1))
DATA=$(mktemp -d /tmp/keel-interop.XXXXXX)
"$KEEL" --data-dir "$DATA" --listen-client-urls "http://127.0.0.1:$PORT" \
  --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls "http://127.0.0.1:$PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
  --initial-cluster "default=http://127.0.0.1:$PEER" >"$DATA.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA" "$DATA.log"' EXIT
for _ in $(seq 100); do grep -q "ready to serve" "$DATA.log" && break; sleep 0.1; done
status=0
if command -v pip >/dev/null && command -v python3 >/dev/null; then
  [ -d "$WORK/py/etcd3" ] || pip install -q --target "$WORK/py" etcd3 >/dev/null 2>&1
  PYTHONPATH="$WORK/py" timeout 60 python3 ci/interop/python_etcd3.py 127.0.0.1 "$PORT" || status=1
else
  echo "interop: python3/pip missing; Python etcd3 skipped"
fi
if command -v npm >/dev/null && command -v node >/dev/null; then
  [ -d "$WORK/node/node_modules/etcd3" ] ||
    (mkdir -p "$WORK/node" && cd "$WORK/node" && npm install -s --no-audit --no-fund etcd3@1 >/dev/null 2>&1)
  NODE_PATH="$WORK/node/node_modules" timeout 60 node ci/interop/node_etcd3.js "127.0.0.1:$PORT" || status=1
else
  echo "interop: node/npm missing; Node etcd3 skipped"
fi
exit $status
