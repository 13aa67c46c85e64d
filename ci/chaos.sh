#!/usr/bin/env bash
# keel-chaos against Keel, the short CI mode (about 3 minutes; needs root for network
# namespaces, iptables and a tmpfs; ci/deps.sh installs iptables, faketime, fiu-utils):
#   1. a seeded 3-member run with every fault kind (kill, partition, pause, member, disk,
#      clock, stray, maint = defragment under load) must end clean (exit 0);
#   2. a deliberately broken Keel (linearizable reads served locally, without ReadIndex:
#      the `stale-read` failpoint) must be caught: exit 1 with linearizable=no.
# Both run a keel built with the `failpoints` cargo feature (the disk fault's fsync/write
# EIO goes through it), copied to target/debug/keel-failpoints; target/debug/keel is the
# normal build again afterwards. Logs, histories and violations: target/chaos/.
#
#   ci/chaos.sh [SECONDS]      (default 90 for the clean run; the broken run takes 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-90}
seed=${KEEL_CHAOS_SEED:-20261204}

cargo build -q -p keel-chaos
cargo build -q --features failpoints --bin keel
cp target/debug/keel target/debug/keel-failpoints
cargo build -q --bin keel

out=target/chaos
# A run that died leaves its tmpfs mounted under its data dir: unmount before cleaning.
{ grep -o " $PWD/$out/[^ ]*" /proc/mounts || true; } | while read -r m; do umount -l "$m" || true; done
rm -rf "$out"
mkdir -p "$out"
chaos=target/debug/keel-chaos
keel=target/debug/keel-failpoints

echo "chaos: clean run, seed $seed, ${seconds} s, every fault kind"
# The clean run also churns the shard split keys (a few keys every 5 ms: the
# `shard-churn` failpoint, a stress, not a fault), so reads, watches and writes meet
# rebalance steps all the time in the run's small key space.
if ! "$chaos" run --server "$keel" --members 3 --duration "$seconds" --seed "$seed" \
  --faults all --server-env KEEL_FAILPOINTS=shard-churn=on \
  --out "$out/clean" >"$out/clean.txt" 2>&1; then
  tail -n 40 "$out/clean.txt"
  echo "chaos: FAILED: the run against Keel found violations (see $out/clean)"
  exit 1
fi
tail -n 3 "$out/clean.txt"

echo "chaos: broken Keel (stale-read failpoint), seed 7, 60 s: must be caught"
set +e
"$chaos" run --server "$keel" --members 3 --duration 60 --seed 7 --faults partition,pause \
  --server-env KEEL_FAILPOINTS=stale-read=on --out "$out/broken" >"$out/broken.txt" 2>&1
rc=$?
set -e
tail -n 3 "$out/broken.txt"
if [ "$rc" -ne 1 ] || ! tail -n 1 "$out/broken.txt" | grep -q 'linearizable=no'; then
  echo "chaos: FAILED: the broken Keel was not caught (exit $rc)"
  exit 1
fi
echo "chaos: the broken Keel was caught"
