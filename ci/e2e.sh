#!/usr/bin/env bash
# etcd 3.4's own end-to-end tests against Keel: the tests listed in ci/e2e-pass.txt
# (KV, txn, compaction, member list/add/update/remove, version, watch, make-mirror, lease,
# lock, elect, multi-peer clusters) plus the plaintext move-leader scenarios must all
# pass. Prints the pass count; exits non-zero if anything it needs is missing or if fewer
# tests pass than are listed.
#
#   ci/e2e.sh [path/to/keel]     (default: target/release/keel, built if missing)
#
# ci/e2e-runner.sh compiles the suite from Debian's golang-etcd-server-dev with golang-go
# (ci/deps.sh installs both, and etcd-client and curl) and runs it against a directory
# holding Keel as `etcd` and Debian's `etcdctl`.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=${1:-target/release/keel}

missing=()
command -v go >/dev/null || missing+=("go (golang-go)")
[ -d /usr/share/gocode/src/go.etcd.io/etcd/tests/e2e ] || missing+=("etcd's e2e sources (golang-etcd-server-dev)")
command -v etcdctl >/dev/null || missing+=("etcdctl (etcd-client)")
command -v curl >/dev/null || missing+=("curl")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'e2e: FAILED: missing %s\n' "${missing[@]}" >&2
  echo "e2e: run ci/deps.sh to install them" >&2
  exit 1
fi
[ -x "$KEEL" ] || cargo build --release --bin keel

BIN=$(mktemp -d /tmp/keel-e2e-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
cp "$KEEL" "$BIN/etcd"
ln -s "$(command -v etcdctl)" "$BIN/etcdctl"

LIST=ci/e2e-pass.txt
# The move-leader scenarios (plaintext and mutual TLS: fresh 3-member clusters) need a
# longer timeout than the list: one more entry.
SUB='TestCtlV3MoveLeaderScenarios'
expected=$(( $(sed 's/#.*//' "$LIST" | grep -c '[^[:space:]]') + 1 ))

rc=0
ci/e2e-runner.sh "$BIN" --timeout 60s "@$LIST" --timeout 240s "$SUB" 2>&1 | tee "$BIN/runner.log" || rc=$?
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$BIN/runner.log" | tail -n 1 || true)
passed=${summary%% passed*}
passed=${passed:-0}
echo "e2e: $passed passed of $expected ($LIST plus $SUB)"
if [ "$rc" -ne 0 ] || [ "$passed" -lt "$expected" ]; then
  echo "e2e: FAILED (runner exit $rc, ${summary:-no summary})" >&2
  exit 1
fi
