#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, only when missing:
# etcdctl (etcd-client) for the interop tests, etcd (etcd-server) to compare against,
# golang-go + golang-etcd-server-dev + curl for etcd's own e2e suite, protoc for the
# etcd-client crate's build, iproute2, iptables, nftables, faketime and fiu-utils for
# keel-chaos, cargo-fuzz for the fuzz smoke run; checks python3/pip and node/npm.
set -euo pipefail
need=()
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v etcd >/dev/null || need+=(etcd-server)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/tests/e2e ] || need+=(golang-etcd-server-dev)
command -v curl >/dev/null || need+=(curl)
# The etcd-client crate (tests) compiles etcd's protos with protoc at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
# keel-chaos (ci/chaos.sh): network namespaces, partitions, clock skew, failing fsyncs.
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
command -v fiu-run >/dev/null || need+=(fiu-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# cargo-fuzz drives ci/fuzz-smoke.sh (built once into ~/.cargo/bin, about 2 minutes).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "deps: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
# python3/pip and node/npm carry ci/interop.sh's clients (Python and Node etcd3).
for tool in python3 pip node npm; do
  command -v "$tool" >/dev/null || { echo "deps: FAILED: $tool is missing (ci/interop.sh needs it)" >&2; exit 1; }
done
