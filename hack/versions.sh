# Pinned versions of everything the local cluster is built from; sourced by the hack/ scripts.
# The cache lives outside the checkout so a fresh clone (CI) reuses it; every path is keyed by version.
K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}
FLYWAY_VERSION=${FLYWAY_VERSION:-12.4.0}
POSTGRES_JDBC_VERSION=${POSTGRES_JDBC_VERSION:-42.7.14}
MO_CACHE=${MO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migration-operator}
BUILD_REVISION=2  # bump when hack/build-k8s.sh changes how binaries are built
BIN_DIR="$MO_CACHE/bin/r$BUILD_REVISION-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
export MO_CACHE BIN_DIR
# the upstream registries our images and manifests name: containerd (hack/node.sh) and buildah
# (hack/build-images.sh) ask the local registry (hack/registry.sh) for each of them
MIRRORED_REGISTRIES=(docker.io ghcr.io registry.k8s.io quay.io)
