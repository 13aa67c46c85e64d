#!/usr/bin/env bash
# A short run of every cargo-fuzz target (decoders of untrusted bytes: WAL segments,
# db pages, KeyValue records). A crash fails the run. Set FUZZ_SECONDS for longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-15}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: FAILED: cargo-fuzz is not installed (ci/deps.sh installs it)" >&2
  exit 1
fi
# libFuzzer's instrumentation needs unstable rustc flags; stable rustc accepts them with
# RUSTC_BOOTSTRAP=1, so no second toolchain is needed.
export RUSTC_BOOTSTRAP=1
targets=$(cd fuzz && cargo fuzz list)
passed=0
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz-smoke: $t for ${seconds}s"
  (cd fuzz && cargo fuzz run --release "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 2>&1 | grep -E '^(#[0-9]+ *DONE|==[0-9]+==|SUMMARY|Done)' || true)
  # cargo fuzz exits non-zero (set -o pipefail) on a crash; re-check explicitly.
  if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz-smoke: $t found a crash: fuzz/artifacts/$t" >&2
    exit 1
  fi
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
