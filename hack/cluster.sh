#!/usr/bin/env bash
# The local cluster from real parts: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy (built from the Go module proxy by hack/build-k8s.sh), containerd + runc + CNI plugins from Debian
# (hack/node.sh), CoreDNS, the local-path provisioner and PostgreSQL 15 in the cluster (hack/addons/), images built
# here and served by a local registry (hack/build-images.sh, hack/registry.sh). Everything listens on 127.0.0.1 or
# on the node's address on the pod bridge (10.244.0.1); TLS everywhere, RBAC on.
#
#   hack/cluster.sh up      build/install what is missing, start what is not running, wait until Ready
#   hack/cluster.sh down    stop everything (pods first, through the runtime) and remove what the node added to
#                           the host (bridge, veths, netns, mounts, iptables chains, cgroups); keep cache and data
#   hack/cluster.sh status  print what runs
#   hack/cluster.sh reset   down + wipe cluster state (etcd, certs, pods, volumes: PostgreSQL's data too)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/hack/versions.sh"
STATE="$MO_CACHE/cluster"
NODE_NAME=local-node
NODE_BRIDGE=mobr0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.0.0.0/24
# pods reach the API server through the `kubernetes` Service, whose endpoint is the advertised address: the node's
# address on the bridge, not loopback
APISERVER_HOST=$NODE_IP
APISERVER_PORT=16443
ETCD_PORT=23790; ETCD_PEER_PORT=23800; ETCD_METRICS_PORT=23810
CM_PORT=10257; SCHED_PORT=10259
KUBECONFIG_ADMIN="$STATE/kubeconfig"
LOG_TAG=cluster
source "$REPO/hack/lib.sh"
source "$REPO/hack/node.sh"

# ---- certificates ------------------------------------------------------------------------------------------
make_certs() {
  mkdir -p "$CERTS"; chmod 700 "$CERTS"
  if [[ ! -f "$CERTS/ca.crt" ]]; then
    openssl genrsa -out "$CERTS/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$CERTS/ca.key" -subj "/CN=migration-operator-local-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$CERTS/ca.crt" 2>/dev/null
  fi
  local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1${NODE_IP:+,IP:$NODE_IP}"
  cert apiserver "/CN=kube-apiserver" "$sans"
  cert etcd "/CN=etcd" "DNS:localhost,IP:127.0.0.1"
  cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client"
  cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters"
  cert admin "/CN=kubernetes-admin/O=system:masters"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert node "/CN=system:node:$NODE_NAME/O=system:nodes" "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1"
  [[ -f "$CERTS/sa.key" ]] || { openssl genrsa -out "$CERTS/sa.key" 2048 2>/dev/null; openssl rsa -in "$CERTS/sa.key" -pubout -out "$CERTS/sa.pub" 2>/dev/null; }
}

# ---- components --------------------------------------------------------------------------------------------
start_etcd() {
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  start_bg etcd "$BIN_DIR/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT" \
    --cert-file "$CERTS/etcd.crt" --key-file "$CERTS/etcd.key" --client-cert-auth --trusted-ca-file "$CERTS/ca.crt" \
    --quota-backend-bytes 4294967296 --unsafe-no-fsync --log-level warn
  wait_for 30 "etcd health" curl -sf "http://127.0.0.1:$ETCD_METRICS_PORT/health"
}

start_apiserver() {
  start_bg kube-apiserver "$BIN_DIR/kube-apiserver" \
    --bind-address=$APISERVER_HOST --advertise-address=$APISERVER_HOST --secure-port=$APISERVER_PORT \
    --etcd-servers="https://127.0.0.1:$ETCD_PORT" --etcd-cafile="$CERTS/ca.crt" \
    --etcd-certfile="$CERTS/apiserver-etcd-client.crt" --etcd-keyfile="$CERTS/apiserver-etcd-client.key" \
    --tls-cert-file="$CERTS/apiserver.crt" --tls-private-key-file="$CERTS/apiserver.key" \
    --client-ca-file="$CERTS/ca.crt" \
    --kubelet-client-certificate="$CERTS/apiserver-kubelet-client.crt" --kubelet-client-key="$CERTS/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$CERTS/sa.pub" --service-account-signing-key-file="$CERTS/sa.key" \
    --allow-privileged=true --profiling=false --v=1
  wait_for 120 "kube-apiserver /readyz" "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz
}

start_controller_manager() {
  kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  start_bg kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$CM_PORT \
    --service-account-private-key-file="$CERTS/sa.key" --root-ca-file="$CERTS/ca.crt" \
    --cluster-signing-cert-file="$CERTS/ca.crt" --cluster-signing-key-file="$CERTS/ca.key" \
    --use-service-account-credentials=true --controllers='*' --leader-elect=false \
    --service-cluster-ip-range=$SERVICE_CIDR --profiling=false --v=1
}

start_scheduler() {
  kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  start_bg kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$SCHED_PORT --leader-elect=false --profiling=false --v=1
}

control_plane() {
  bash "$REPO/hack/build-k8s.sh" all
  make_certs
  kubeconfig "$KUBECONFIG_ADMIN" kubernetes-admin admin
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  wait_for 60 "default ServiceAccount" "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" get serviceaccount default -n default
}

up() {
  local t0=$SECONDS
  bash "$REPO/hack/venv.sh" >/dev/null
  bash "$REPO/hack/install-flyway.sh" >/dev/null
  node_install
  node_network
  control_plane
  node_up
  addons
  log "cluster ready in $((SECONDS - t0))s"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# What a cluster has besides its node (hack/addons/): the images in the local registry, DNS, a storage
# provisioner, and the PostgreSQL the examples and the tests use, seeded like hack/postgres.sh seeds one.
addons() {
  local k=("$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN")
  bash "$REPO/hack/build-images.sh"
  "${k[@]}" apply -f "$REPO/hack/addons/coredns.yaml" >/dev/null
  mkdir -p "$STATE/volumes"
  sed "s|@VOLUMES@|$STATE/volumes|" "$REPO/hack/addons/storage.yaml" | "${k[@]}" apply -f - >/dev/null
  # the database's TLS certificate: the Service's names, signed by the cluster's CA
  cert postgres-server "/CN=postgres.databases.svc" \
    "DNS:postgres,DNS:postgres.databases,DNS:postgres.databases.svc,DNS:postgres.databases.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  "${k[@]}" create namespace databases --dry-run=client -o yaml | "${k[@]}" apply -f - >/dev/null
  # ca.crt too: what a client verifying the server (sslMode verify-full, a run's caSecret) trusts
  "${k[@]}" -n databases create secret generic postgres-tls --type kubernetes.io/tls \
    --from-file "tls.crt=$CERTS/postgres-server.crt" --from-file "tls.key=$CERTS/postgres-server.key" \
    --from-file "ca.crt=$CERTS/ca.crt" --dry-run=client -o yaml | "${k[@]}" apply -f - >/dev/null
  "${k[@]}" apply -f "$REPO/hack/addons/postgres.yaml" >/dev/null
  "${k[@]}" -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
  "${k[@]}" -n local-path-storage rollout status deployment/local-path-provisioner --timeout=180s >/dev/null
  "${k[@]}" -n databases rollout status statefulset/postgres --timeout=300s >/dev/null
  local ip; ip=$("${k[@]}" -n databases get service postgres -o jsonpath='{.spec.clusterIP}')
  MO_PG_HOST=$ip bash "$REPO/hack/postgres.sh" seed
  log "PostgreSQL: postgres.databases.svc.cluster.local:5432 in pods, $ip:5432 from this host"
}

down() {
  node_down
  stop_bg kube-scheduler; stop_bg kube-controller-manager; stop_bg kube-apiserver 20; stop_bg etcd
  node_cleanup
  bash "$REPO/hack/registry.sh" stop
}

status() {
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    if is_running "$c"; then echo "$c: running (pid $(cat "$PIDS/$c"))"; else echo "$c: stopped"; fi
  done
  node_status
  bash "$REPO/hack/postgres.sh" status || true
  echo "KUBECONFIG=$KUBECONFIG_ADMIN"
}

case "${1:-up}" in
  up) up ;;
  control-plane) control_plane ;;
  down) down ;;
  status) status ;;
  reset) down; rm -rf "$STATE"; log "cluster state wiped" ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  *) echo "usage: $0 up|down|status|reset|kubeconfig" >&2; exit 2 ;;
esac
