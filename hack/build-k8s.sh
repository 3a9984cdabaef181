#!/usr/bin/env bash
# Builds the control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl), etcd and helm
# from the Go module proxy into a cache outside the checkout, keyed by version. A second run is a no-op.
#
# `go install k8s.io/kubernetes/cmd/...@v` does not work: k8s.io/kubernetes replaces its staging modules with
# ./staging paths, and Go honours replace directives only in the main module. So we write a wrapper module that
# requires k8s.io/kubernetes and replaces every staging module with its published v0.Y.Z twin; the list comes
# from the release's own go.mod, not from memory.
set -euo pipefail
source "$(dirname "$0")/versions.sh"

# stamp the release version the way Kubernetes' own build does, or every binary reports v0.0.0-master
k8s_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

build_k8s() {
  local out="$BIN_DIR/kube-apiserver"
  if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -x "$BIN_DIR/kube-scheduler" && -x "$BIN_DIR/kubectl" ]]; then
    return 0
  fi
  local work="$MO_CACHE/build/k8s-$K8S_VERSION"
  mkdir -p "$work" "$BIN_DIR"
  local staging_version="v0.${K8S_VERSION#v1.}"
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  local upstream_mod
  upstream_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  {
    echo "module migration-operator.local/k8s-build"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$upstream_mod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$upstream_mod" | awk '/=> \.\/staging/{print "\t" $1 " => " $1 " '"$staging_version"'"}'
    echo ")"
  } > "$work/go.mod"
  echo "building Kubernetes $K8S_VERSION control plane (cold build takes a while on 2 cores)" >&2
  (cd "$work" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$(k8s_ldflags)" -o "$BIN_DIR/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl)
}

build_node() {  # kubelet and kube-proxy, from the same wrapper module as the control plane
  [[ -x "$BIN_DIR/kubelet" && -x "$BIN_DIR/kube-proxy" ]] && return 0
  build_k8s
  local work="$MO_CACHE/build/k8s-$K8S_VERSION"
  echo "building kubelet and kube-proxy $K8S_VERSION" >&2
  (cd "$work" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$(k8s_ldflags)" -o "$BIN_DIR/" \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy)
}

build_simple() {  # name module-version package [extra-ldflags]
  local name=$1 modver=$2 pkg=$3 extra=${4:-}
  [[ -x "$BIN_DIR/$name" ]] && return 0
  local work="$MO_CACHE/build/$name-${modver##*@}"
  mkdir -p "$work" "$BIN_DIR"
  printf 'module migration-operator.local/%s-build\n\ngo 1.25\n\nrequire %s %s\n' "$name" "${modver%@*}" "${modver##*@}" > "$work/go.mod"
  echo "building $name ${modver##*@}" >&2
  (cd "$work" && GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w $extra" -o "$BIN_DIR/$name" "$pkg")
}

HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
what=${1:-all}
case "$what" in
  k8s) build_k8s ;;
  node) build_node; build_simple crictl "sigs.k8s.io/cri-tools@$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl ;;
  etcd) build_simple etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 ;;
  helm) build_simple helm "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$HELM_LDFLAGS" ;;
  all)
    build_simple etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
    build_k8s
    build_node
    build_simple crictl "sigs.k8s.io/cri-tools@$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
    build_simple helm "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$HELM_LDFLAGS"
    ;;
  *) echo "usage: $0 [k8s|node|etcd|helm|all]" >&2; exit 2 ;;
esac
