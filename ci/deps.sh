#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, only when missing:
# etcdctl (etcd-client) for the interop tests, etcd (etcd-server) to compare against,
# golang-go + golang-etcd-server-dev + curl for etcd's own e2e suite, protoc for the
# etcd-client crate's build.
set -euo pipefail
need=()
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v etcd >/dev/null || need+=(etcd-server)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/tests/e2e ] || need+=(golang-etcd-server-dev)
command -v curl >/dev/null || need+=(curl)
# The etcd-client crate (tests) compiles etcd's protos with protoc at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
