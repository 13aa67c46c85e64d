#!/usr/bin/env bash
# Keel's runner for etcd 3.4's own end-to-end tests (package tests/e2e), used by ci/e2e.sh.
#
#   ci/e2e-runner.sh BIN_DIR [--timeout D] TEST... [--timeout D] TEST...
#
# BIN_DIR holds executables `etcd` (the server under test) and `etcdctl`. Each TEST is a
# top-level test name (run as ^NAME$), `Parent/SUB` (run as ^Parent$/SUB, SUB being a
# regex on subtest names as in `go test -run`; one result, the parent's), or @FILE (names, one a line, # comments). Every
# TEST runs in its own test-binary process with the per-test timeout in force where it
# appears (default 60s): the suite waits for server log lines, so a server that never
# prints them costs one test, not the run. Ends with `N passed, N failed, N skipped`;
# exits 0 only if nothing failed (a name that matches no test counts as failed).
#
# The test binary is compiled once, in GOPATH mode, straight from Debian's
# golang-etcd-server-dev sources with golang-go (nothing of etcd's source is copied),
# and cached in $KEEL_E2E_CACHE (default target/e2e) with per-test logs in its logs/.
# Tests bind localhost:20000-20030 (and 2379/2380 for TestEtcdExampleConfig): runs on
# one machine are serialised with a lock, and a run fails if those ports are taken.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=/usr/share/gocode/src/go.etcd.io/etcd
CACHE=$(mkdir -p "${KEEL_E2E_CACHE:-$REPO/target/e2e}" && cd "${KEEL_E2E_CACHE:-$REPO/target/e2e}" && pwd)
die() { echo "e2e-runner: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: $0 BIN_DIR [--timeout D] TEST..."
BIN_DIR=$(cd "$1" 2>/dev/null && pwd) || die "no such dir: $1"
shift
for b in etcd etcdctl; do [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing or not executable"; done
command -v go >/dev/null || die "go not found (Debian: golang-go; ci/deps.sh installs it)"
[ -d "$SRC/tests/e2e" ] || die "$SRC/tests/e2e not found (Debian: golang-etcd-server-dev; ci/deps.sh installs it)"
command -v curl >/dev/null || die "curl not found (some e2e tests shell out to it; ci/deps.sh installs it)"

# ---- the plan: (timeout, name) pairs -------------------------------------------------
timeouts=(); names=(); t=60s
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; t=$2; shift 2; continue ;;
    @*) [ -f "${1#@}" ] || die "no such test list: ${1#@}"
        while read -r n; do timeouts+=("$t"); names+=("$n"); done \
          < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "${1#@}" | grep -v '^$') ;;
    *) timeouts+=("$t"); names+=("$1") ;;
  esac
  shift
done
[ ${#names[@]} -gt 0 ] || die "no tests given"

# ---- one machine, one run: the tests use fixed ports ---------------------------------
mkdir -p "$CACHE/logs"
exec 9>"${TMPDIR:-/tmp}/keel-e2e.lock"
if ! flock -n 9; then
  echo "e2e-runner: another e2e run holds ${TMPDIR:-/tmp}/keel-e2e.lock; waiting (up to 30 min)" >&2
  flock -w 1800 9 || die "timed out waiting for the other e2e run"
fi
busy=$( (ss -ltnH 2>/dev/null || true) | awk '{print $4}' \
  | grep -E ':(200[0-2][0-9]|20030|2379|2380)$' | tr '\n' ' ')
[ -z "$busy" ] || die "ports the tests need are in use: $busy"

# ---- build the test binary once --------------------------------------------------------
TESTBIN=$CACHE/e2e.test
stamp="$(go version) / golang-etcd-server-dev $(dpkg-query -W -f='${Version}' golang-etcd-server-dev 2>/dev/null || echo '?')"
build_start=$(date +%s)
if [ ! -x "$TESTBIN" ] || [ "$(cat "$TESTBIN.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "e2e-runner: compiling etcd's e2e suite from $SRC/tests/e2e ($stamp)" >&2
  mkdir -p "$CACHE/gocache" "$CACHE/gopath"
  ( cd "$SRC/tests/e2e" && GO111MODULE=off GOPATH="$CACHE/gopath:/usr/share/gocode" \
      GOCACHE="$CACHE/gocache" GOFLAGS= GOPROXY=off go test -c -o "$TESTBIN.tmp.$$" . ) \
    || { rm -f "$TESTBIN.tmp.$$"; die "go test -c failed (see above)"; }
  mv -f "$TESTBIN.tmp.$$" "$TESTBIN" && echo "$stamp" > "$TESTBIN.stamp"
fi
build_secs=$(( $(date +%s) - build_start ))

# ---- scratch tree for the suite's relative paths --------------------------------------
# The suite runs in <root>/tests/e2e and reads ../../integration/fixtures (certs, JWT keys)
# and ../../etcd.conf.yml.sample (TestEtcdExampleConfig); data dirs go to $TMPDIR.
RUN=$(mktemp -d /tmp/keel-e2e-run.XXXXXX)
mkdir -p "$RUN/tests/e2e" "$RUN/integration" "$RUN/tmp" "$RUN/bin"
ln -s "$SRC/integration/fixtures" "$RUN/integration/fixtures"
ln -s "$BIN_DIR/etcd" "$RUN/bin/etcd"
ln -s "$BIN_DIR/etcdctl" "$RUN/bin/etcdctl"
cat > "$RUN/etcd.conf.yml.sample" <<EOF
name: 'default'
data-dir: $RUN/tmp/example-config.etcd
listen-peer-urls: http://localhost:2380
listen-client-urls: http://localhost:2379
initial-advertise-peer-urls: http://localhost:2380
advertise-client-urls: http://localhost:2379
initial-cluster: 'default=http://localhost:2380'
initial-cluster-state: 'new'
initial-cluster-token: 'etcd-cluster'
EOF

# The suite starts servers and etcdctl on a pty in their own sessions, so a test binary
# that times out can leave them running. Everything it started runs from $RUN/bin with
# data under $RUN/tmp: kill those processes (by PID) after every test.
reap() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    if tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline" | grep -qF "$RUN/"; then kill -9 "$p" 2>/dev/null; fi
  done
}
trap 'reap; rm -rf "$RUN"' EXIT
trap 'exit 130' INT TERM

# ---- run -------------------------------------------------------------------------------
rm -f "$CACHE"/logs/*.log
echo "e2e-runner: ${#names[@]} tests against $BIN_DIR/etcd (logs: $CACHE/logs)" >&2
pass=0; fail=0; skip=0; failed=()
test_start=$(date +%s)
for i in "${!names[@]}"; do
  name=${names[$i]}; to=${timeouts[$i]}; top=${name%%/*}
  if [ "$name" = "$top" ]; then re="^$name\$"; else re="^$top\$/${name#*/}"; fi
  log="$CACHE/logs/${name//\//_}.log"
  secs=${to%s}; [[ $secs =~ ^[0-9]+$ ]] || secs=600   # backstop only if -test.timeout fails
  t0=$(date +%s)
  ( cd "$RUN/tests/e2e" && export TMPDIR="$RUN/tmp" && unset ETCDCTL_API ETCDCTL_ENDPOINTS &&
    exec timeout -k 5 $((secs + 30)) "$TESTBIN" -test.v -test.timeout "$to" -test.run "$re" \
      -bin-dir "$RUN/bin" -cert-dir "$RUN/integration/fixtures" ) > "$log" 2>&1 9>&-
  rc=$?
  reap
  dt=$(( $(date +%s) - t0 ))
  # A Parent/Sub selection that matches no subtest would still pass the parent: demand
  # that some subtest ran and passed.
  subok=1
  [ "$name" = "$top" ] || grep -qE "^ +--- PASS: $top/" "$log" || subok=0
  # etcd's harness leaves some etcdctl processes unclosed (ctlV3User returns once the
  # expected line is printed): if one is still exiting when the test binary ends, its
  # post-run leak check fails a passed test. That, and only that (every leaked goroutine
  # is an expect reader of a spawned process), counts as the pass it was.
  if [ $rc != 0 ] && [ $subok = 1 ] && grep -qE "^--- PASS: $top " "$log" &&
    grep -q '^Too many goroutines running after all test(s)' "$log" &&
    ! sed -n '/^Too many goroutines running/,$p' "$log" | grep '^created by ' |
      grep -vq '^created by go.etcd.io/etcd/pkg/expect.NewExpectWithEnv'; then
    echo "NOTE $name: passed; an etcdctl it spawned was still exiting at the leak check"
    rc=0
  fi
  if grep -qE "^--- SKIP: $top " "$log" && [ $rc = 0 ]; then
    skip=$((skip + 1)); echo "SKIP $name (${dt}s)"
  elif grep -qE "^--- PASS: $top " "$log" && [ $rc = 0 ] && [ $subok = 1 ]; then
    pass=$((pass + 1)); echo "PASS $name (${dt}s)"
  else
    if grep -qE "^--- FAIL: $top " "$log"; then why="failed"
    elif grep -qE '^panic: test timed out' "$log"; then why="timed out after $to"
    elif grep -qE "^--- PASS: $top " "$log" && [ $subok = 0 ]; then why="no subtest matched ${name#*/}"
    elif grep -qE "^--- PASS: $top " "$log"; then why="passed but the binary exited $rc (leaked goroutines?)"
    elif grep -q '^testing: warning: no tests to run' "$log"; then why="no such test"
    else why="exit $rc: $(tail -n 1 "$log")"
    fi
    fail=$((fail + 1)); failed+=("$name: $why"); echo "FAIL $name (${dt}s): $why"
    sed '/^goroutine [0-9]* \[/,$d' "$log" | grep -vE '^(=== |--- PASS)' | tail -n 15 | sed 's/^/    /'
  fi
done
test_secs=$(( $(date +%s) - test_start ))

if [ $fail -gt 0 ]; then
  echo "failed tests (logs in $CACHE/logs):"
  printf '  %s\n' "${failed[@]}"
fi
echo "e2e-runner: suite build ${build_secs}s, tests ${test_secs}s"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
