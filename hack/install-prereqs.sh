#!/usr/bin/env bash
# Installs the system packages the local cluster needs when the machine lacks them (Debian). Idempotent and
# quick when everything is present. Go, Java 17 and Python 3.11 come with the machine. The node's packages
# (containerd, runc, CNI plugins, iptables) and the image builder's (buildah, skopeo, debootstrap, docker-registry)
# are installed by hack/node.sh and hack/build-images.sh when they first need them.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
# PostgreSQL's client tools (pg_dump, pg_restore, psql) for the tests' own checks; the server runs in the cluster
command -v pg_dump >/dev/null || need+=(postgresql-client-15)
command -v mvn >/dev/null || need+=(maven)
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
for tool in go java python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: this machine kind ships it; install it first" >&2; exit 1; }
done
