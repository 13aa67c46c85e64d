#!/usr/bin/env bash
# keel-chaos powercut, the short CI mode (needs root and /dev/fuse; a few minutes):
#   1. the real Keel: CUTS power cuts on one member, then CUTS/2 on three (all at once or
#      one), with data dirs on keel-chaos's forgetful FUSE disk, and CUTS aimed at the db's
#      syncs on one member: 0 lost, 0 corrupt starts;
#   2. the `skip-wal-sync` mutant (the WAL never makes anything durable) and
#   3. the `skip-db-sync` mutant (the db's meta page is written over unsynced data
#      pages) must each be caught within 20 cuts: exit 1 with lost > 0 or corrupt-starts > 0.
# The mutants are failpoints of the `failpoints` build (target/debug/keel-failpoints, the
# one ci/chaos.sh uses too: one extra build for both scripts), armed through
# KEEL_FAILPOINTS; target/debug/keel is the normal build again afterwards. Logs:
# target/powercut/.
#
#   ci/powercut.sh [CUTS]      (default 20 on one member, CUTS/2 on three)
set -euo pipefail
cd "$(dirname "$0")/.."
cuts=${1:-20}
seed=${KEEL_POWERCUT_SEED:-20261204}

[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if [ ! -e /dev/fuse ]; then
  echo "powercut: FAILED: /dev/fuse is missing (the forgetful disk is a FUSE filesystem)"
  exit 1
fi

cargo build -q -p keel-chaos
cargo build -q --features failpoints --bin keel
cp target/debug/keel target/debug/keel-failpoints
cargo build -q --bin keel

out=target/powercut
# A run that died may leave its FUSE disks mounted under its data dirs.
{ grep -o " $PWD/$out/[^ ]*" /proc/mounts || true; } | while read -r m; do umount -l "$m" || true; done
rm -rf "$out"
mkdir -p "$out"
chaos=target/debug/keel-chaos

clean() { # NAME MEMBERS CUTS [FLAGS...]
  local name=$1 members=$2 n=$3
  shift 3
  echo "powercut: Keel, $members member(s), $n cuts${*:+ ($*)}, seed $seed"
  if ! "$chaos" powercut --server target/debug/keel --members "$members" --cuts "$n" \
    --seed "$seed" "$@" --out "$out/$name" >"$out/$name.txt" 2>&1; then
    tail -n 40 "$out/$name.txt"
    echo "powercut: FAILED: Keel lost acknowledged writes or did not start (see $out/$name)"
    exit 1
  fi
  tail -n 1 "$out/$name.txt"
}

caught() { # MUTANT [FLAGS...]
  local mutant=$1
  shift
  echo "powercut: the $mutant mutant, 1 member, up to 20 cuts${*:+ ($*)}: must be caught"
  set +e
  "$chaos" powercut --server target/debug/keel-failpoints --members 1 --cuts 20 \
    --seed "$seed" --server-env "KEEL_FAILPOINTS=$mutant=on" "$@" --out "$out/$mutant" \
    >"$out/$mutant.txt" 2>&1
  local rc=$?
  set -e
  local last
  last=$(tail -n 1 "$out/$mutant.txt")
  echo "$last"
  if [ "$rc" -ne 1 ] || ! echo "$last" | grep -Eq 'lost=[1-9]|corrupt-starts=[1-9]'; then
    tail -n 30 "$out/$mutant.txt"
    echo "powercut: FAILED: the $mutant mutant was not caught (exit $rc)"
    exit 1
  fi
}

clean one "1" "$cuts"
clean three "3" "$((cuts / 2))"
# Cuts at random moments and at any durability request catch the WAL mutant at once. The
# db mutant is exposed only between its meta page write and the one fdatasync left (a cut
# there that keeps the meta page and loses data pages), so its cuts aim at the db's syncs
# and keep a random prefix of the pending writes; the default mix catches it too, slower.
caught skip-wal-sync
caught skip-db-sync --at db --loss prefix
clean one-at-db 1 "$cuts" --at db --loss prefix
echo "powercut: the real build kept every acknowledged write; both mutants were caught"
