#!/usr/bin/env bash
# keel-chaos powercut, the short CI mode (needs root and /dev/fuse; a few minutes):
#   1. the real Keel: CUTS power cuts on one member, then on three (all at once or one),
#      with data dirs on keel-chaos's forgetful FUSE disk: 0 lost, 0 corrupt starts;
#   2. the `test-skip-wal-sync` mutant (the WAL never makes anything durable) and
#   3. the `test-skip-db-sync` mutant (the db's meta page is written over unsynced data
#      pages) must each be caught within 20 cuts: exit 1 with lost > 0 or corrupt-starts > 0.
# The mutants are built into target/debug/keel-skip-{wal,db}-sync; target/debug/keel is the
# normal build again afterwards. Logs: target/powercut/.
#
#   ci/powercut.sh [CUTS]      (default 20 on one member, CUTS/2 on three)
set -euo pipefail
cd "$(dirname "$0")/.."
cuts=${1:-20}
seed=${KEEL_POWERCUT_SEED:-20261204}

cargo build -q -p keel-chaos
cargo build -q --features test-skip-wal-sync --bin keel
cp target/debug/keel target/debug/keel-skip-wal-sync
cargo build -q --features test-skip-db-sync --bin keel
cp target/debug/keel target/debug/keel-skip-db-sync
cargo build -q --bin keel

out=target/powercut
# A run that died may leave its FUSE disks mounted under its data dirs.
{ grep -o " $PWD/$out/[^ ]*" /proc/mounts || true; } | while read -r m; do umount -l "$m" || true; done
rm -rf "$out"
mkdir -p "$out"
chaos=target/debug/keel-chaos

clean() { # NAME MEMBERS CUTS
  echo "powercut: Keel, $2 member(s), $3 cuts, seed $seed"
  if ! "$chaos" powercut --server target/debug/keel --members "$2" --cuts "$3" --seed "$seed" \
    --out "$out/$1" >"$out/$1.txt" 2>&1; then
    tail -n 40 "$out/$1.txt"
    echo "powercut: FAILED: Keel lost acknowledged writes or did not start (see $out/$1)"
    exit 1
  fi
  tail -n 1 "$out/$1.txt"
}

caught() { # MUTANT
  echo "powercut: the $1 mutant, 1 member, up to 20 cuts: must be caught"
  set +e
  "$chaos" powercut --server "target/debug/keel-$1" --members 1 --cuts 20 --seed "$seed" \
    --out "$out/$1" >"$out/$1.txt" 2>&1
  local rc=$?
  set -e
  local last
  last=$(tail -n 1 "$out/$1.txt")
  echo "$last"
  if [ "$rc" -ne 1 ] || ! echo "$last" | grep -Eq 'lost=[1-9]|corrupt-starts=[1-9]'; then
    tail -n 30 "$out/$1.txt"
    echo "powercut: FAILED: the $1 mutant was not caught (exit $rc)"
    exit 1
  fi
}

clean one "1" "$cuts"
clean three "3" "$((cuts / 2))"
caught skip-wal-sync
caught skip-db-sync
echo "powercut: the real build kept every acknowledged write; both mutants were caught"
