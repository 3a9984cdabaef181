#!/usr/bin/env bash
# The local cluster from real parts: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from
# the Go module proxy by hack/build-k8s.sh), our node agent (hack/node_agent) as the one Node, PostgreSQL from
# Debian and Flyway from Maven Central. Everything listens on 127.0.0.1 only, TLS everywhere, RBAC on.
#
#   hack/cluster.sh up      build/install what is missing, start what is not running, wait until Ready
#   hack/cluster.sh down    stop everything (pods first), keep the cache and data
#   hack/cluster.sh status  print what runs
#   hack/cluster.sh reset   down + wipe cluster state (etcd, certs, pods; PostgreSQL data too)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/hack/versions.sh"
STATE="$MO_CACHE/cluster"
CERTS="$STATE/certs"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
KUBECONFIG_ADMIN="$STATE/kubeconfig"
APISERVER_PORT=16443
ETCD_PORT=23790
ETCD_PEER_PORT=23800
NODE_NAME=local-node
KUBECTL="$BIN_DIR/kubectl"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wait_for <seconds> <description> <command...>: polls a condition with a deadline
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then log "timed out waiting for $what"; return 1; fi
    sleep 0.5
  done
}

# A pid file outlives a reboot or a stopped session, and its pid may since belong to another process (even the
# CI job running this script): a component counts as running only if that pid's command line is still ours.
# A second argument is text the command line must also contain (e.g. this checkout's path).
is_running() {
  [[ -f "$PIDS/$1" ]] || return 1
  local pid; pid=$(cat "$PIDS/$1")
  kill -0 "$pid" 2>/dev/null || return 1
  local expected=$1; [[ $1 == node-agent ]] && expected=node_agent
  local cmdline; cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  grep -q -- "$expected" <<<"$cmdline" && { [[ -z ${2:-} ]] || grep -qF -- "$2" <<<"$cmdline"; }
}

start_bg() {  # name command...: start a daemon in its own session, log and pid under the state dir
  local name=$1; shift
  if is_running "$name"; then return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

stop_bg() {  # name [grace-seconds]
  local name=$1 grace=${2:-10}
  [[ -f "$PIDS/$name" ]] || return 0
  local pid; pid=$(cat "$PIDS/$name")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped $name"
  fi
  rm -f "$PIDS/$name"
}

# ---- certificates ------------------------------------------------------------------------------------------
cert() {  # name subject [san]: a key pair signed by our CA
  local name=$1 subject=$2 san=${3:-}
  [[ -f "$CERTS/$name.crt" ]] && return 0
  openssl genrsa -out "$CERTS/$name.key" 2048 2>/dev/null
  openssl req -new -key "$CERTS/$name.key" -subj "$subject" -out "$CERTS/$name.csr" 2>/dev/null
  local ext="$CERTS/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } > "$ext"
  openssl x509 -req -in "$CERTS/$name.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$CERTS/$name.crt" 2>/dev/null
  rm -f "$CERTS/$name.csr" "$ext"
}

make_certs() {
  mkdir -p "$CERTS"; chmod 700 "$CERTS"
  if [[ ! -f "$CERTS/ca.crt" ]]; then
    openssl genrsa -out "$CERTS/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$CERTS/ca.key" -subj "/CN=migration-operator-local-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$CERTS/ca.crt" 2>/dev/null
  fi
  local sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
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

kubeconfig() {  # file user cert
  local file=$1 user=$2 cert=$3
  cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $CERTS/ca.crt
users:
- name: $user
  user:
    client-certificate: $CERTS/$cert.crt
    client-key: $CERTS/$cert.key
contexts:
- name: local
  context: {cluster: local, user: $user}
current-context: local
KC
  chmod 600 "$file"
}

# ---- components --------------------------------------------------------------------------------------------
start_etcd() {
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  start_bg etcd "$BIN_DIR/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:23810" \
    --cert-file "$CERTS/etcd.crt" --key-file "$CERTS/etcd.key" --client-cert-auth --trusted-ca-file "$CERTS/ca.crt" \
    --quota-backend-bytes 4294967296 --unsafe-no-fsync --log-level warn
  wait_for 30 "etcd health" curl -sf http://127.0.0.1:23810/health
}

start_apiserver() {
  start_bg kube-apiserver "$BIN_DIR/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$APISERVER_PORT \
    --etcd-servers="https://127.0.0.1:$ETCD_PORT" --etcd-cafile="$CERTS/ca.crt" \
    --etcd-certfile="$CERTS/apiserver-etcd-client.crt" --etcd-keyfile="$CERTS/apiserver-etcd-client.key" \
    --tls-cert-file="$CERTS/apiserver.crt" --tls-private-key-file="$CERTS/apiserver.key" \
    --client-ca-file="$CERTS/ca.crt" \
    --kubelet-client-certificate="$CERTS/apiserver-kubelet-client.crt" --kubelet-client-key="$CERTS/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=10.0.0.0/24 \
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
    --bind-address=127.0.0.1 --secure-port=10257 \
    --service-account-private-key-file="$CERTS/sa.key" --root-ca-file="$CERTS/ca.crt" \
    --cluster-signing-cert-file="$CERTS/ca.crt" --cluster-signing-key-file="$CERTS/ca.key" \
    --use-service-account-credentials=true --controllers='*' --leader-elect=false \
    --service-cluster-ip-range=10.0.0.0/24 --profiling=false --v=1
}

start_scheduler() {
  kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  start_bg kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false --v=1
}

node_agent_python() { echo "$MO_CACHE/venv/current/bin/python"; }

start_node_agent() {
  kubeconfig "$STATE/node.kubeconfig" "system:node:$NODE_NAME" node
  # the node may recycle Released local PVs (a kubelet never does; a local provisioner would)
  "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" apply -f "$REPO/hack/node-rbac.yaml" >/dev/null
  mkdir -p "$STATE/node"
  # pods run this checkout's code (hack/images.yaml: the gateway, the operator image): a node agent started from
  # another checkout is restarted from this one (its pods keep running, as across a kubelet restart)
  if is_running node-agent && ! is_running node-agent "$REPO/hack/images.yaml"; then
    log "node-agent runs another checkout's code: restarting it from $REPO"
    stop_bg node-agent 15
  fi
  start_bg node-agent env PYTHONPATH="$REPO/hack" "$(node_agent_python)" -m node_agent \
    --kubeconfig "$STATE/node.kubeconfig" --state-dir "$STATE/node" --node-name "$NODE_NAME" \
    --images "$REPO/hack/images.yaml"
  wait_for 60 "node $NODE_NAME Ready" "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" wait --for=condition=Ready \
    "node/$NODE_NAME" --timeout=1s
}

setup_storage() {
  "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" apply -f "$REPO/hack/storage.yaml" >/dev/null
  mkdir -p "$STATE/pv"
  PYTHONPATH="$REPO/hack" "$(node_agent_python)" -m node_agent make-pvs --kubeconfig "$KUBECONFIG_ADMIN" \
    --count 20 --dir "$STATE/pv" --size 5Gi --node-name "$NODE_NAME" >/dev/null
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
  bash "$REPO/hack/postgres.sh" start
  bash "$REPO/hack/postgres.sh" seed
  control_plane
  setup_storage
  start_node_agent
  log "cluster ready in $((SECONDS - t0))s"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

down() {
  if is_running node-agent; then
    stop_bg node-agent 15
  fi
  # the node agent leaves pods running on purpose when it stops (like a kubelet restart): clean them now
  if [[ -d "$STATE/node" && -x "$(node_agent_python)" ]]; then
    PYTHONPATH="$REPO/hack" "$(node_agent_python)" -m node_agent cleanup --state-dir "$STATE/node" || true
  fi
  stop_bg kube-scheduler; stop_bg kube-controller-manager; stop_bg kube-apiserver 20; stop_bg etcd
  bash "$REPO/hack/postgres.sh" stop || true
}

status() {
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler node-agent; do
    if is_running "$c"; then echo "$c: running (pid $(cat "$PIDS/$c"))"; else echo "$c: stopped"; fi
  done
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
