#!/usr/bin/env bash
# Builds the images of the local cluster with buildah (daemonless, from Debian) and pushes them to the local
# registry (hack/registry.sh, 127.0.0.1:5000), under their upstream names.
#
# Registry naming: FLAT. An upstream name loses its registry host and keeps its path:
#   docker.io/library/postgres:15              -> 127.0.0.1:5000/library/postgres:15
#   docker.io/flyway/flyway:12.4               -> 127.0.0.1:5000/flyway/flyway:12.4
#   ghcr.io/dbops/migration-operator:0.1.0     -> 127.0.0.1:5000/dbops/migration-operator:0.1.0
#   registry.k8s.io/pause:3.10                 -> 127.0.0.1:5000/pause:3.10
#   registry.k8s.io/coredns/coredns:v1.12.1    -> 127.0.0.1:5000/coredns/coredns:v1.12.1
# which is exactly the path containerd asks a mirror for (`/v2/<path>/manifests/<tag>`), so containerd needs one
# plain hosts.toml per registry name and no override_path (Debian's containerd 1.6 is not relied on for it):
#   <config_path>/docker.io/hosts.toml, ghcr.io/hosts.toml, registry.k8s.io/hosts.toml, each:
#       server = "https://<that registry>"            # registry-1.docker.io for docker.io
#       [host."http://127.0.0.1:5000"]
#         capabilities = ["pull", "resolve"]
# (Two upstream registries holding the same path would collide: none of our names do.)
#
# Usage:
#   hack/build-images.sh                 build (when their inputs changed) and push every image
#   hack/build-images.sh NAME...         only those (short names, see --list), and what they are built FROM
#   hack/build-images.sh --list          short name, upstream name, registry path
#   hack/build-images.sh --force NAME..  rebuild even when the registry has the same inputs
#
# Caching: each image's inputs hash (its Dockerfile, the files of its build context that it uses, the inputs hash
# of the image it is built FROM and this script's IMAGES_REVISION) is stored in the label io.dbops.inputs-hash;
# an image whose tag in the registry carries the same label is not rebuilt. Everything cached lives under
# $MO_CACHE/images (outside the checkout): the debootstrap root file system, buildah's storage, the coredns
# binary, the prepared build contexts. The registry's data is $MO_CACHE/registry.
#
# Builder: buildah bud --isolation chroot (root, no OCI runtime needed for RUN steps), --network host (apt, pip),
# storage driver overlay under $MO_CACHE/images/storage, docker image format. MO_BUILDAH_ISOLATION overrides.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"

IMAGES_REVISION=2            # bump when this script changes how any image is built
ROOTFS_REVISION=1            # bump when make_rootfs changes (a new debootstrap is made)
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1}
REGISTRY=${MO_REGISTRY_ADDR:-127.0.0.1:5000}
LABEL=io.dbops.inputs-hash

IMG_CACHE="$MO_CACHE/images"
ROOTFS_DIR="$IMG_CACHE/rootfs/debian-$DEBIAN_SUITE-minbase-r$ROOTFS_REVISION"
CTX_DIR="$IMG_CACHE/contexts"
COREDNS_BIN="$IMG_CACHE/coredns/$COREDNS_VERSION/coredns"
LOCAL_PATH_VERSION=${LOCAL_PATH_VERSION:-v0.0.30}
LOCAL_PATH_BIN="$IMG_CACHE/local-path-provisioner/$LOCAL_PATH_VERSION/local-path-provisioner"
FLYWAY_DIST="$MO_CACHE/flyway/$FLYWAY_VERSION"
ISOLATION=${MO_BUILDAH_ISOLATION:-chroot}

log() { echo "build-images: $*" >&2; }

# ---- the images -----------------------------------------------------------------------------------------------
# name | upstream reference | Dockerfile (repo-relative) | built FROM (our name or -)
IMAGES=(
  "debian|docker.io/library/debian:bookworm-slim|hack/images/debian/Dockerfile|-"
  "python|docker.io/library/python:3.11-slim|hack/images/python/Dockerfile|debian"
  "busybox|docker.io/library/busybox:1.37|hack/images/busybox/Dockerfile|-"
  "postgres|docker.io/library/postgres:15|hack/images/postgres/Dockerfile|debian"
  "flyway|docker.io/flyway/flyway:${FLYWAY_VERSION%.*}|hack/images/flyway/Dockerfile|debian"
  "pause|registry.k8s.io/pause:3.10|hack/images/pause/Dockerfile|-"
  "coredns|registry.k8s.io/coredns/coredns:$COREDNS_VERSION|hack/images/coredns/Dockerfile|-"
  "local-path-provisioner|docker.io/rancher/local-path-provisioner:$LOCAL_PATH_VERSION|hack/images/local-path-provisioner/Dockerfile|-"
  "migration-operator|ghcr.io/dbops/migration-operator:0.1.0|Dockerfile|python"
  "parking-gateway|ghcr.io/dbops/parking-gateway:0.1.0|examples/parking/gateway/Dockerfile|python"
  "parking-migrations|ghcr.io/dbops/parking-migrations:6|examples/parking/migrations.Dockerfile|busybox"
)

# Per image: the build context and the inputs that go into its hash ("root:relative path" entries, directories
# are walked). Contexts outside the checkout are prepared by prepare_<name> only when the image is built.
context_of() {
  case $1 in
    debian) echo "$ROOTFS_DIR" ;;
    python) echo "$REPO/hack/images/python" ;;
    busybox) echo "$CTX_DIR/busybox" ;;
    postgres) echo "$REPO/hack/images/postgres" ;;
    flyway) echo "$FLYWAY_DIST" ;;
    pause) echo "$CTX_DIR/pause" ;;
    coredns) echo "$CTX_DIR/coredns" ;;
    local-path-provisioner) echo "$CTX_DIR/local-path-provisioner" ;;
    migration-operator) echo "$REPO" ;;
    parking-gateway) echo "$REPO/examples/parking/gateway" ;;
    parking-migrations) echo "$REPO/examples/parking" ;;
  esac
}

hash_inputs_of() {  # prints what, besides the Dockerfile and the base, identifies the image's content
  case $1 in
    debian) ensure_rootfs; echo "rootfs $(cat "$ROOTFS_DIR/rootfs.tar.sha256")" ;;
    python) ;;
    busybox) echo "busybox $(sha256sum </usr/bin/busybox | cut -d' ' -f1)" ;;
    postgres) hash_tree "$REPO/hack/images/postgres" docker-entrypoint.sh ;;
    flyway) ensure_flyway; hash_tree "$FLYWAY_DIST" lib drivers flyway ;;
    pause) hash_tree "$REPO/hack/images/pause" pause.c; echo "gcc $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)" ;;
    coredns) echo "coredns $COREDNS_VERSION CGO_ENABLED=0 -trimpath -ldflags=-s -w" ;;
    local-path-provisioner) echo "local-path-provisioner $LOCAL_PATH_VERSION CGO_ENABLED=0 -trimpath -ldflags=-s -w" ;;
    migration-operator) hash_tree "$REPO" .dockerignore pyproject.toml README.md operator ;;
    parking-gateway) hash_tree "$REPO/examples/parking/gateway" gateway.py ;;
    parking-migrations) hash_tree "$REPO/examples/parking" migrations migrations-next/good ;;
  esac
}

prepare_context() {  # name: make the build context exist (outside the checkout) right before building
  case $1 in
    debian) ensure_rootfs ;;
    busybox)
      mkdir -p "$CTX_DIR/busybox"
      file -L /usr/bin/busybox | grep -q 'statically linked' || { log "/usr/bin/busybox is not static (busybox-static)"; exit 1; }
      cp /usr/bin/busybox "$CTX_DIR/busybox/busybox" ;;
    flyway) ensure_flyway ;;
    pause)
      mkdir -p "$CTX_DIR/pause"
      gcc -static -Os -Wall -Wextra -o "$CTX_DIR/pause/pause" "$REPO/hack/images/pause/pause.c"
      strip "$CTX_DIR/pause/pause" ;;
    coredns)
      ensure_coredns
      mkdir -p "$CTX_DIR/coredns"
      cp "$COREDNS_BIN" "$CTX_DIR/coredns/coredns"
      # Upstream gives the binary this file capability so that its non-root user binds port 53.
      setcap cap_net_bind_service=+ep "$CTX_DIR/coredns/coredns" ;;
    local-path-provisioner)
      ensure_go_binary local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" "$LOCAL_PATH_BIN"
      mkdir -p "$CTX_DIR/local-path-provisioner"
      cp "$LOCAL_PATH_BIN" "$CTX_DIR/local-path-provisioner/local-path-provisioner" ;;
  esac
}

# ---- helpers --------------------------------------------------------------------------------------------------
field() { local IFS='|'; read -r -a f <<<"$1"; echo "${f[$2]}"; }
entry_of() {
  local e
  for e in "${IMAGES[@]}"; do [[ $(field "$e" 0) == "$1" ]] && { echo "$e"; return 0; }; done
  return 1
}
registry_path() {  # upstream reference -> path in the local registry (flat: the registry host dropped)
  local ref=$1 first=${1%%/*}
  if [[ $ref == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then ref=${ref#*/}; fi
  echo "$ref"
}

hash_tree() {  # root path...: "mode sha256 path" of every file under the given paths (relative to root)
  local root=$1; shift
  (cd "$root" && find "$@" \( -name __pycache__ -o -name '*.pyc' \) -prune -o -type f -printf '%m %p\n' | LC_ALL=C sort -k2 |
    while read -r mode path; do printf '%s %s %s\n' "$mode" "$(sha256sum <"$path" | cut -d' ' -f1)" "$path"; done)
}

declare -A HASHES=()
inputs_hash() {  # name: compute HASHES[name], the inputs hash (once per run; no subshell, so it is memoised)
  local name=$1
  [[ -n ${HASHES[$name]:-} ]] && return 0
  local e; e=$(entry_of "$name")
  local base; base=$(field "$e" 3)
  local base_hash=-
  if [[ $base != - ]]; then inputs_hash "$base"; base_hash=${HASHES[$base]}; fi
  HASHES[$name]=$({
    echo "revision $IMAGES_REVISION"
    echo "ref $(field "$e" 1)"
    echo "base $base_hash"
    echo "dockerfile $(sha256sum <"$REPO/$(field "$e" 2)" | cut -d' ' -f1)"
    hash_inputs_of "$name"
  } | sha256sum | cut -d' ' -f1)
}

remote_hash() {  # name: the label of the image in the registry, empty when it has no such tag
  local ref; ref=$(field "$(entry_of "$1")" 1)
  skopeo inspect --tls-verify=false --retry-times 0 --format "{{index .Labels \"$LABEL\"}}" \
    "docker://$REGISTRY/$(registry_path "$ref")" 2>/dev/null || true
}

local_hash() {  # name: the label of the image in buildah's storage
  local ref; ref=$(field "$(entry_of "$1")" 1)
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$ref" 2>/dev/null || true
}

# ---- setup ----------------------------------------------------------------------------------------------------
install_tools() {
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [[ -x /usr/bin/busybox ]] && file -L /usr/bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
  [[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
  command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
  command -v file >/dev/null || need+=(file)
  command -v setcap >/dev/null || need+=(libcap2-bin)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  command -v curl >/dev/null || need+=(curl)
  if ((${#need[@]})); then
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

setup_buildah() {  # our own storage and registries config: nothing of the machine's container setup is touched
  mkdir -p "$IMG_CACHE/storage" "$IMG_CACHE/etc"
  cat >"$IMG_CACHE/etc/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "$IMG_CACHE/storage"
runroot = "/run/migration-operator-buildah"
EOF
  local reg
  {
    echo '# Short names (FROM python:3.11-slim) are docker.io names; every registry name we use is mirrored locally.'
    echo 'unqualified-search-registries = ["docker.io"]'
    echo 'short-name-mode = "permissive"'
    for reg in "${MIRRORED_REGISTRIES[@]}"; do
      printf '[[registry]]\nprefix = "%s"\nlocation = "%s"\n[[registry.mirror]]\nlocation = "%s"\ninsecure = true\n' \
        "$reg" "$reg" "$REGISTRY"
    done
    printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY"
  } >"$IMG_CACHE/etc/registries.conf.tmp"
  local f
  for f in storage registries; do
    if cmp -s "$IMG_CACHE/etc/$f.conf.tmp" "$IMG_CACHE/etc/$f.conf"; then rm "$IMG_CACHE/etc/$f.conf.tmp"
    else mv "$IMG_CACHE/etc/$f.conf.tmp" "$IMG_CACHE/etc/$f.conf"; fi
  done
  export CONTAINERS_STORAGE_CONF="$IMG_CACHE/etc/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$IMG_CACHE/etc/registries.conf"
  export BUILDAH_FORMAT=docker
  # pip in RUN steps: when this machine reaches the package index through a TLS proxy, its CA bundle must be
  # trusted there too. The images FROM python get the host's bundle mounted read-only over the image's own
  # /etc/ssl/certs/ca-certificates.crt for the build only (pip in a Debian venv reads that file); a path that
  # exists in the image, so no empty mount point is left in a layer.
  BUILD_MOUNTS=()
  if [[ -n ${PIP_CERT:-} || -f /etc/pip.conf ]] && [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    BUILD_MOUNTS+=(-v "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
}

ensure_rootfs() {  # the debootstrap root file system, made once (about 1 min) and kept as rootfs.tar
  [[ -s $ROOTFS_DIR/rootfs.tar && -s $ROOTFS_DIR/rootfs.tar.sha256 ]] && return 0
  mkdir -p "$ROOTFS_DIR"
  local work; work=$(mktemp -d "$IMG_CACHE/rootfs/.work.XXXXXX")
  local started=$SECONDS
  log "debootstrap --variant=minbase $DEBIAN_SUITE (once; kept in $ROOTFS_DIR)"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$work/root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
  local r="$work/root"
  # Like the official slim image: no docs, man pages or translations from later package installs; apt cleans up.
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
EOF
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Point releases and security updates, then drop what the image does not need.
  (chroot "$r" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$r" apt-get -y -qq upgrade) \
    >>"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old "$r"/var/log/* \
    "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/tmp/* "$r"/var/tmp/* \
    "$r"/dev/* "$r"/proc/* "$r"/sys/* "$r"/run/*
  find "$r/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  : >"$r/etc/resolv.conf"; : >"$r/etc/hostname"
  tar --numeric-owner --xattrs --sort=name -C "$r" -cf "$work/rootfs.tar" .
  sha256sum <"$work/rootfs.tar" | cut -d' ' -f1 >"$work/rootfs.tar.sha256"
  mv "$work/rootfs.tar" "$ROOTFS_DIR/rootfs.tar"
  mv "$work/rootfs.tar.sha256" "$ROOTFS_DIR/rootfs.tar.sha256"
  rm -rf "$work"
  log "root file system ready: $(du -h "$ROOTFS_DIR/rootfs.tar" | cut -f1) in $((SECONDS - started)) s"
}

ensure_flyway() {
  [[ -f $FLYWAY_DIST/.complete ]] && return 0
  command -v mvn >/dev/null || {
    log "installing maven (for hack/install-flyway.sh)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends maven >/dev/null; }
  "$HACK_DIR/install-flyway.sh"
}

ensure_coredns() {  # built from the Go module proxy once per version (a few minutes), kept outside the checkout
  [[ -x $COREDNS_BIN ]] && return 0
  local started=$SECONDS
  log "building coredns $COREDNS_VERSION from the Go module proxy (once)"
  mkdir -p "$(dirname "$COREDNS_BIN")"
  local gobin; gobin=$(mktemp -d "$(dirname "$COREDNS_BIN")/.gobin.XXXXXX")
  env CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$gobin" \
    go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$gobin/coredns" "$COREDNS_BIN"
  rmdir "$gobin"
  log "coredns built in $((SECONDS - started)) s"
}

ensure_go_binary() {  # name module@version output: `go install` of a main module from the Go proxy, once per version
  local name=$1 modver=$2 out=$3
  [[ -x $out ]] && return 0
  local started=$SECONDS
  log "building $name ${modver##*@} from the Go module proxy (once)"
  mkdir -p "$(dirname "$out")"
  local gobin; gobin=$(mktemp -d "$(dirname "$out")/.gobin.XXXXXX")
  env CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$modver"
  mv "$gobin/$name" "$out"
  rmdir "$gobin"
  log "$name built in $((SECONDS - started)) s"
}

ensure_local_base() {  # name: the image in buildah's storage is the one with the current inputs (pull it if not)
  local name=$1
  inputs_hash "$name"
  [[ $(local_hash "$name") == "${HASHES[$name]}" ]] && return 0
  local ref; ref=$(field "$(entry_of "$name")" 1)
  buildah pull --quiet --tls-verify=false "docker://$REGISTRY/$(registry_path "$ref")" >/dev/null
  buildah tag "$REGISTRY/$(registry_path "$ref")" "$ref"
}

# ---- build ----------------------------------------------------------------------------------------------------
declare -A DONE=()
FORCE=0
TIMINGS=()

ensure_image() {  # name: build and push unless the registry has it with the same inputs
  local name=$1
  [[ -n ${DONE[$name]:-} ]] && return 0
  local e; e=$(entry_of "$name") || { log "unknown image $name (see --list)"; exit 2; }
  local ref dockerfile base
  ref=$(field "$e" 1); dockerfile=$(field "$e" 2); base=$(field "$e" 3)
  [[ $base == - ]] || ensure_image "$base"
  local want have
  inputs_hash "$name"
  want=${HASHES[$name]}
  have=$(remote_hash "$name")
  if [[ $FORCE == 0 && $have == "$want" ]]; then
    log "$name: up to date ($ref, inputs ${want:0:12})"
    DONE[$name]=1
    return 0
  fi
  local started=$SECONDS
  [[ $base == - ]] || ensure_local_base "$base"
  prepare_context "$name"
  log "$name: building $ref (inputs ${want:0:12}; registry: ${have:-no such tag})"
  local logfile="$IMG_CACHE/logs/$name.log"
  mkdir -p "$IMG_CACHE/logs"
  local mounts=()
  [[ $base == python ]] && mounts=("${BUILD_MOUNTS[@]}")
  # --layers: a Dockerfile's steps are cached (the operator's dependencies layer survives a code change: ~11 s
  # instead of ~42 s); BUILDAH_LAYERS=false turns it off
  if ! buildah bud --layers="${BUILDAH_LAYERS:-true}" --isolation "$ISOLATION" --network host --pull=never --format docker \
    "${mounts[@]}" --label "$LABEL=$want" -f "$REPO/$dockerfile" -t "$ref" \
    "$(context_of "$name")" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    log "$name: build failed (full log $logfile)"
    exit 1
  fi
  local built=$((SECONDS - started))
  buildah push --quiet --tls-verify=false "$ref" "docker://$REGISTRY/$(registry_path "$ref")" >>"$logfile" 2>&1 ||
    { tail -n 20 "$logfile" >&2; log "$name: push failed"; exit 1; }
  local size; size=$(buildah inspect --type image --format '{{.Size}}' "$ref" 2>/dev/null || echo '?')
  log "$name: pushed $REGISTRY/$(registry_path "$ref") (build ${built} s, push $((SECONDS - started - built)) s)"
  TIMINGS+=("$name build=${built}s push=$((SECONDS - started - built))s")
  DONE[$name]=1
}

list() {
  local e
  printf '%-20s %-45s %s\n' NAME UPSTREAM "REGISTRY ($REGISTRY)"
  for e in "${IMAGES[@]}"; do
    printf '%-20s %-45s %s\n' "$(field "$e" 0)" "$(field "$e" 1)" "$REGISTRY/$(registry_path "$(field "$e" 1)")"
  done
}

main() {
  local names=()
  while (($#)); do
    case $1 in
      --list) list; return 0 ;;
      --force) FORCE=1 ;;
      -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; return 0 ;;
      -*) log "unknown option $1"; exit 2 ;;
      *) entry_of "$1" >/dev/null || { log "unknown image $1 (see --list)"; exit 2; }; names+=("$1") ;;
    esac
    shift
  done
  if ((${#names[@]} == 0)); then
    local e
    for e in "${IMAGES[@]}"; do names+=("$(field "$e" 0)"); done
  fi
  local started=$SECONDS
  install_tools
  setup_buildah
  "$HACK_DIR/registry.sh" start
  local n
  for n in "${names[@]}"; do ensure_image "$n"; done
  if ((${#TIMINGS[@]})); then
    # Drop what the rebuilt tags left behind (untagged images) so the storage does not grow with every build.
    buildah rmi --prune >/dev/null 2>&1 || true
  fi
  log "done in $((SECONDS - started)) s (${#TIMINGS[@]} built${TIMINGS[*]:+: ${TIMINGS[*]}})"
}

main "$@"
