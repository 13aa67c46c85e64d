#!/usr/bin/env bash
# Clients nobody here wrote, beyond etcdctl and etcd-client (those run in `cargo test`):
# Python etcd3 (grpcio) and Node etcd3 (grpc-js) against a Keel member on loopback: in
# plaintext, logging in with a user and password once auth is on, over mutual TLS
# (certificates made here with openssl; --client-cert-auth), and through a follower of a
# 3-member cluster.
#
#   ci/interop.sh [path/to/keel]      (default target/debug/keel)
#
# Installs the clients into target/interop (PyPI, npm) on first use. Fails when a client's
# toolchain (python3+pip, node+npm) is missing, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=${1:-target/debug/keel}
WORK=$PWD/target/interop
mkdir -p "$WORK"
# Two free ports, each from the kernel (PORT + 1 may be some connection's ephemeral port).
read -r PORT PEER <<<"$(python3 -c 'import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
DATA=$(mktemp -d /tmp/keel-interop.XXXXXX)
"$KEEL" --data-dir "$DATA" --listen-client-urls "http://127.0.0.1:$PORT" \
  --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls "http://127.0.0.1:$PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
  --initial-cluster "default=http://127.0.0.1:$PEER" >"$DATA.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA" "$DATA".*' EXIT
for _ in $(seq 100); do grep -q "ready to serve" "$DATA.log" && break; sleep 0.1; done
status=0
# Both clients against one server: $1 = the client port.
run_clients() {
  if command -v pip >/dev/null && command -v python3 >/dev/null; then
    [ -d "$WORK/py/etcd3" ] || pip install -q --target "$WORK/py" etcd3 >/dev/null 2>&1
    PYTHONPATH="$WORK/py" KEEL_MEMBERS=${KEEL_MEMBERS:-1} timeout 60 python3 ci/interop/python_etcd3.py 127.0.0.1 "$1" || status=1
  else
    echo "interop: FAILED: python3/pip missing (ci/deps.sh checks for them)"; status=1
  fi
  if command -v npm >/dev/null && command -v node >/dev/null; then
    [ -d "$WORK/node/node_modules/etcd3" ] ||
      (mkdir -p "$WORK/node" && cd "$WORK/node" && npm install -s --no-audit --no-fund etcd3@1 >/dev/null 2>&1)
    NODE_PATH="$WORK/node/node_modules" KEEL_MEMBERS=${KEEL_MEMBERS:-1} timeout 60 node ci/interop/node_etcd3.js "127.0.0.1:$1" || status=1
  else
    echo "interop: FAILED: node/npm missing (ci/deps.sh checks for them)"; status=1
  fi
}
run_clients "$PORT"

# Both clients again through `keel grpc-proxy start` in front of that member (issue 21):
# KV, watch (coalesced), leases and keep-alives, locks, all forwarded; under a --namespace,
# so the keys the first run left do not meet them.
PXPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KEEL" grpc-proxy start --endpoints="127.0.0.1:$PORT" --listen-addr="127.0.0.1:$PXPORT" \
  --namespace=viaproxy/ >"$DATA.proxy.log" 2>&1 &
PXPID=$!
for _ in $(seq 100); do grep -q "started gRPC proxy" "$DATA.proxy.log" && break; sleep 0.1; done
echo "interop: through keel grpc-proxy"
KEEL_PROXY=1 run_clients "$PXPORT"
kill $PXPID; wait $PXPID 2>/dev/null || true

# Logging in with a user and password once auth is on: user `interop` may use keys under
# auth/ only. $1 = etcdctl's flags for the member.
enable_auth() {
  local E="timeout 30 etcdctl --dial-timeout=5s --command-timeout=10s $1"
  $E user add root:root-pw >/dev/null && $E user grant-role root root >/dev/null &&
    $E role add interop >/dev/null &&
    $E role grant-permission interop readwrite --prefix auth/ >/dev/null &&
    $E user add interop:interop-pw >/dev/null && $E user grant-role interop interop >/dev/null &&
    $E auth enable >/dev/null
}
# Node here; Python (grpcio sends call credentials only over TLS) on the TLS member below.
if enable_auth "--endpoints=127.0.0.1:$PORT"; then
  echo "interop: with auth on (user interop, prefix auth/)"
  NODE_PATH="$WORK/node/node_modules" timeout 60 node ci/interop/node_auth.js "127.0.0.1:$PORT" || status=1
else
  echo "interop: FAILED: etcdctl could not set auth up"; status=1
fi
kill $PID; wait $PID 2>/dev/null || true

# The same clients over mutual TLS: a CA, a server certificate for localhost / 127.0.0.1
# and a client certificate, all ECDSA P-256 (PKCS#8 keys), made with openssl.
PKI="$DATA/pki"
mkdir -p "$PKI"
make_certs() {
  local d=$1 who
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/O=keel interop/CN=keel interop CA" -keyout "$d/ca-key.pem" -out "$d/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth,clientAuth" "keyUsage=critical,digitalSignature,keyEncipherment" \
    >"$d/server.ext"
  printf '%s\n' "extendedKeyUsage=clientAuth" "keyUsage=critical,digitalSignature,keyEncipherment" \
    >"$d/client.ext"
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/O=keel interop/CN=keel-interop-$who" -keyout "$d/$who-key.pem" -out "$d/$who.csr"
    openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
      -CAcreateserial -days 2 -extfile "$d/$who.ext" -out "$d/$who.pem"
  done
}
if make_certs "$PKI" >"$DATA.pki.log" 2>&1; then
  TPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  TPEER=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$KEEL" --data-dir "$DATA/tls" --listen-client-urls "https://127.0.0.1:$TPORT" \
    --advertise-client-urls "https://127.0.0.1:$TPORT" --listen-peer-urls "http://127.0.0.1:$TPEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$TPEER" \
    --initial-cluster "default=http://127.0.0.1:$TPEER" \
    --cert-file "$PKI/server.pem" --key-file "$PKI/server-key.pem" \
    --trusted-ca-file "$PKI/ca.pem" --client-cert-auth >"$DATA.tls.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do grep -q "ready to serve" "$DATA.tls.log" && break; sleep 0.1; done
  echo "interop: over mutual TLS (--client-cert-auth)"
  KEEL_TLS_DIR="$PKI" run_clients "$TPORT"
  if ! grep -q "rejected connection from" "$DATA.tls.log"; then
    echo "interop: FAILED: the TLS member logged no refusal of the certificate-less client"
    status=1
  fi
  # With auth on, a token beats the certificate's CN (which names no user here).
  if enable_auth "--endpoints=https://127.0.0.1:$TPORT --cacert=$PKI/ca.pem --cert=$PKI/client.pem --key=$PKI/client-key.pem"; then
    echo "interop: with auth on over mutual TLS (user interop, prefix auth/)"
    PYTHONPATH="$WORK/py" KEEL_TLS_DIR="$PKI" timeout 60 python3 ci/interop/python_auth.py 127.0.0.1 "$TPORT" || status=1
  else
    echo "interop: FAILED: etcdctl could not set auth up over TLS"; status=1
  fi
  kill $PID; wait $PID 2>/dev/null || true
else
  echo "interop: FAILED: openssl could not make the test certificates:"; cat "$DATA.pki.log"; status=1
fi

# The same clients against a follower of a 3-member cluster: their writes, leases,
# keep-alives and locks go through it to the leader.
read -r -a P <<<"$(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
CLUSTER="m0=http://127.0.0.1:${P[3]},m1=http://127.0.0.1:${P[4]},m2=http://127.0.0.1:${P[5]}"
PIDS=()
for i in 0 1 2; do
  c=${P[$i]}; p=${P[$((i + 3))]}
  "$KEEL" --name "m$i" --data-dir "$DATA/m$i" --listen-client-urls "http://127.0.0.1:$c" \
    --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
    --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "$CLUSTER" \
    >"$DATA.m$i.log" 2>&1 &
  PIDS+=($!)
done
trap 'kill ${PIDS[*]} 2>/dev/null || true; wait ${PIDS[*]} 2>/dev/null || true; rm -rf "$DATA" "$DATA".*' EXIT
for i in 0 1 2; do
  for _ in $(seq 200); do grep -q "ready to serve" "$DATA.m$i.log" && break; sleep 0.1; done
done
EPS="127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
FOLLOWER=$(etcdctl --endpoints="$EPS" endpoint status 2>/dev/null |
  awk -F', ' '$5 == "false" { print $1; exit }')
if [ -n "$FOLLOWER" ]; then
  echo "interop: against follower $FOLLOWER of a 3-member cluster"
  KEEL_MEMBERS=3 run_clients "${FOLLOWER##*:}"
else
  echo "interop: the 3-member cluster elected no leader"; status=1
fi
kill ${PIDS[*]} 2>/dev/null || true; wait ${PIDS[*]} 2>/dev/null || true

# The HTTP side of a client URL (/health, /version, /metrics parsed by Prometheus' own
# parser, /livez, /readyz, pipelining), Keel beside a real etcd 3.4, each with a
# --listen-metrics-urls listener.
read -r -a H <<<"$(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
start_member() { # $1 binary, $2 name, $3 client, $4 peer, $5 metrics
  "$1" --name "$2" --data-dir "$DATA/$2" --listen-client-urls "http://127.0.0.1:$3" \
    --advertise-client-urls "http://127.0.0.1:$3" --listen-peer-urls "http://127.0.0.1:$4" \
    --initial-advertise-peer-urls "http://127.0.0.1:$4" \
    --initial-cluster "$2=http://127.0.0.1:$4" \
    --listen-metrics-urls "http://127.0.0.1:$5" >"$DATA.$2.log" 2>&1 &
  PIDS+=($!)
}
PIDS=()
start_member "$KEEL" hk "${H[0]}" "${H[1]}" "${H[2]}"
start_member "$(command -v etcd)" he "${H[3]}" "${H[4]}" "${H[5]}"
for m in hk he; do
  for _ in $(seq 200); do grep -q "ready to serve" "$DATA.$m.log" && break; sleep 0.1; done
done
[ -d "$WORK/py/prometheus_client" ] || pip install -q --target "$WORK/py" prometheus_client >/dev/null 2>&1
echo "interop: HTTP endpoints, Keel beside etcd $(etcd --version | head -1 | awk '{print $3}')"
PYTHONPATH="$WORK/py" timeout 120 python3 ci/interop/http_endpoints.py "${H[0]}" "${H[2]}" "${H[3]}" "${H[5]}" || status=1
exit $status
