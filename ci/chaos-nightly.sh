#!/usr/bin/env bash
# The long mode of keel-chaos: RUNS seeded runs of SECONDS each with every fault kind,
# 3-member clusters for even seeds and 5-member ones for odd seeds, against BIN (a keel
# built with `--features failpoints` reaches the disk fault's EIO; Debian's /usr/bin/etcd
# is the reference). One summary line per run goes to OUT/summary.txt; each run's logs,
# history and violations stay in OUT/seed-N/. Exits 1 if any run was not clean.
#
#   ci/chaos-nightly.sh BIN [RUNS=20] [SECONDS=300] [FIRST_SEED=1] [OUT=target/chaos-nightly]
#
# Needs root (network namespaces, iptables, tmpfs) and ci/deps.sh's packages.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: ci/chaos-nightly.sh BIN [RUNS] [SECONDS] [FIRST_SEED] [OUT]}
runs=${2:-20}
seconds=${3:-300}
first=${4:-1}
out=${5:-target/chaos-nightly}
cargo build -q -p keel-chaos || exit 2
mkdir -p "$out"
failed=0
for ((seed = first; seed < first + runs; seed++)); do
  members=$((seed % 2 == 0 ? 3 : 5))
  dir="$out/seed-$seed"
  rm -rf "$dir"
  start=$(date +%s)
  target/debug/keel-chaos run --server "$bin" --members "$members" --duration "$seconds" \
    --seed "$seed" --faults all --out "$dir" >"$dir.txt" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  line="seed=$seed members=$members seconds=$seconds exit=$rc took=${took}s $(tail -n 1 "$dir.txt")"
  echo "$line" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
done
echo "chaos-nightly: $runs runs, $failed not clean (details in $out)"
[ "$failed" -eq 0 ]
