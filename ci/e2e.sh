#!/usr/bin/env bash
# etcd 3.4's own end-to-end tests against Keel: the tests listed in ci/e2e-pass.txt
# (KV, txn, compaction, member list/add/update/remove, version, watch, make-mirror, lease,
# lock, elect, multi-peer clusters, move-leader) must all pass. Prints the pass count.
#
#   ci/e2e.sh [path/to/keel]     (default: target/release/keel, built if missing)
#
# The runner lives in the workplace's shared tools (../shared/tools/etcd-e2e, or
# $KEEL_E2E_DIR); it compiles the suite from Debian's golang-etcd-server-dev with
# golang-go and runs it against BIN_DIR/etcd (= Keel) and BIN_DIR/etcdctl (Debian's).
# Measured on the 2-core dev VM: ~15 s of tests after a ~90 s one-time suite build.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEL=${1:-target/release/keel}
E2E_DIR=${KEEL_E2E_DIR:-$(cd ../shared/tools/etcd-e2e 2>/dev/null && pwd || true)}
if [ -z "$E2E_DIR" ] || [ ! -x "$E2E_DIR/run-e2e.sh" ]; then
  echo "e2e: etcd-e2e runner not found (set KEEL_E2E_DIR); skipped"
  exit 0
fi
[ -x "$KEEL" ] || cargo build --release --bin keel
BIN=$(mktemp -d /tmp/keel-e2e-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
cp "$KEEL" "$BIN/etcd"
ln -sf "$(command -v etcdctl)" "$BIN/etcdctl"
LIST="$PWD/ci/e2e-pass.txt"
out=$(E2E_EACH=1 E2E_TEST_TIMEOUT=60s "$E2E_DIR/run-e2e.sh" "$BIN" "@$LIST" 2>&1) || true
echo "$out" | tail -n 25
summary=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' | tail -1)
expected=$(grep -cvE '^\s*(#|$)' "$LIST")
echo "e2e: $summary (of $expected listed in ci/e2e-pass.txt)"
passed=${summary%% passed*}
# Subtests cannot be listed (the list selects top-level tests, one process each): the
# plaintext move-leader scenarios (two fresh 3-member clusters) run as one regex.
SUB='TestCtlV3MoveLeaderScenarios/Insecure'
sub_out=$(E2E_TEST_TIMEOUT=120s "$E2E_DIR/run-e2e.sh" "$BIN" "$SUB" 2>&1) || true
echo "$sub_out" | tail -n 5
sub=$(echo "$sub_out" | grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' | tail -1)
echo "e2e: $SUB: $sub"
total=$(( ${passed:-0} + ${sub%% passed*} ))
echo "e2e: $total passed of $((expected + 1)) (incl. $SUB)"
[ "${passed:-0}" = "$expected" ] && [ "${sub%% passed*}" = 1 ] || { echo "e2e: FAILED"; exit 1; }
