# The local cluster's node: containerd + runc + CNI (bridge, host-local, portmap, loopback), kubelet and
# kube-proxy, started and torn down by hack/cluster.sh (which sources this file after hack/lib.sh).
#
# Layout: everything under $STATE/node (containerd root and state, CNI config and IPAM, kubelet root), so a
# reset wipes it; the images come back from the local registry (hack/registry.sh) in seconds. The pods live on
# the bridge $NODE_BRIDGE ($POD_CIDR); the host owns its first address ($NODE_IP), where the kubelet, the
# API server and the registry mirror's clients meet the pods. Nothing here listens beyond loopback and that
# bridge.
#
# Two settings this VM needs (../shared/notes/real-node-facts.md): root lacks CAP_SYS_RESOURCE, so containerd
# must not raise oom_score_adj (restrict_oom_score_adj) and the kubelet keeps its own at 0; the host mounts the
# cgroup v1 hierarchy, which kubelet 1.35 accepts only with failCgroupV1: false (cgroupfs driver).
# shellcheck shell=bash
NODE_DIR="$STATE/node"
CONTAINERD_SOCK="$NODE_DIR/containerd/containerd.sock"
KUBELET_ROOT="$NODE_DIR/kubelet"
CNI_CONF_DIR="$NODE_DIR/cni/net.d"
CNI_BIN_DIR=/usr/lib/cni
CLUSTER_DNS=10.0.0.10
REGISTRY_MIRROR=${REGISTRY_MIRROR:-http://127.0.0.1:5000}
PAUSE_IMAGE=registry.k8s.io/pause:3.10

crictl() { "$BIN_DIR/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s "$@"; }

node_install() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [[ -x $CNI_BIN_DIR/bridge ]] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# The bridge exists before the API server starts: the API server listens on $NODE_IP so that pods reach it
# through the `kubernetes` Service. The CNI bridge plugin adopts it (same name, same gateway address).
node_network() {
  mkdir -p "$NODE_DIR"
  # the host's forwarding and bridge-netfilter settings, restored by node_cleanup
  if [[ ! -f $NODE_DIR/sysctl.saved ]]; then
    { echo "net.ipv4.ip_forward=$(sysctl -n net.ipv4.ip_forward)"
      echo "net.bridge.bridge-nf-call-iptables=$(sysctl -n net.bridge.bridge-nf-call-iptables)"; } > "$NODE_DIR/sysctl.saved"
  fi
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  # read into a string first: `ip ... | grep -q` under pipefail fails when grep leaves before ip has written its last
  # line (SIGPIPE, exit 141, 3 times in 200 here) and the add then meets "Address already assigned"
  local addrs
  addrs=$(ip -4 -o addr show dev "$NODE_BRIDGE")
  [[ $addrs == *" inet $NODE_IP/"* ]] || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Services' virtual IPs are routed to the bridge, so a host process talking to a ClusterIP uses $NODE_IP as
  # its source address (kube-proxy's DNAT in OUTPUT then sends it to the pod on the bridge)
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
}

# write_if_changed <file>: stdin becomes the file only when it differs (kube-proxy exits when its config file
# changes, and containerd and the kubelet read theirs only at start: an unchanged `up` must not touch them)
write_if_changed() {
  local file=$1 tmp; tmp=$(mktemp "$file.XXXXXX")
  cat > "$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv "$tmp" "$file"; fi
}

node_configure() {
  mkdir -p "$NODE_DIR/containerd/certs.d" "$CNI_CONF_DIR" "$NODE_DIR/cni/ipam" "$KUBELET_ROOT"
  local reg
  for reg in "${MIRRORED_REGISTRIES[@]}"; do
    mkdir -p "$NODE_DIR/containerd/certs.d/$reg"
    write_if_changed "$NODE_DIR/containerd/certs.d/$reg/hosts.toml" <<EOF
# $reg is served by the local registry (hack/registry.sh): images keep their upstream names
server = "https://$reg"
[host."$REGISTRY_MIRROR"]
  capabilities = ["pull", "resolve"]
EOF
  done
  write_if_changed "$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root lacks CAP_SYS_RESOURCE here: never raise a container's oom_score_adj above the runtime's own
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE_DIR/containerd/certs.d"
EOF
  write_if_changed "$CNI_CONF_DIR/10-mo-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "mo-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  write_if_changed "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $CERTS/kubelet-serving.crt
tlsPrivateKeyFile: $CERTS/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CERTS/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# this VM mounts cgroup v1 and PID 1 is not systemd
cgroupDriver: cgroupfs
failCgroupV1: false
# root lacks CAP_SYS_RESOURCE: leave the kubelet's own oom_score_adj alone
oomScoreAdj: 0
failSwapOn: false
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# a development machine's disk is shared with everything else: evict only when it is really full
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
maxPods: 250
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 1m
shutdownGracePeriod: 0s
# a crashed container is restarted after 10 s, 20 s, 40 s ... up to this cap (kubelet default 300 s; the
# KubeletCrashLoopBackOffMax feature, beta and on in 1.35): a development node whose tests SIGKILL the same
# container again and again would otherwise spend minutes in back-off
crashLoopBackOff: {maxContainerRestartPeriod: 2s}
EOF
  write_if_changed "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
# leave the host's conntrack sysctls alone
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {syncPeriod: 30s, minSyncPeriod: 0s}
EOF
}

node_certs() {
  cert kubelet-serving "/CN=system:node:$NODE_NAME/O=system:nodes" "DNS:$NODE_NAME,IP:$NODE_IP"
  cert kube-proxy "/CN=system:kube-proxy"
  kubeconfig "$STATE/node.kubeconfig" "system:node:$NODE_NAME" node
  kubeconfig "$STATE/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
}

start_containerd() {
  start_bg containerd containerd --config "$NODE_DIR/containerd/config.toml"
  wait_for 30 "containerd" crictl version
}

start_kubelet() {
  # a kubelet started with another configuration is restarted (its pods keep running)
  if is_running kubelet && [[ $NODE_DIR/kubelet.yaml -nt $PIDS/kubelet ]]; then
    log "kubelet configuration changed: restarting the kubelet"
    stop_bg kubelet 20
  fi
  start_bg kubelet "$BIN_DIR/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$STATE/node.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  wait_for 60 "kubelet healthz" curl -sf http://127.0.0.1:10248/healthz
}

start_kube_proxy() {
  start_bg kube-proxy "$BIN_DIR/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --v=1
  wait_for 30 "kube-proxy healthz" curl -s -o /dev/null http://127.0.0.1:10256/healthz
}

node_up() {
  node_install
  node_certs
  node_configure
  start_containerd
  start_kubelet
  start_kube_proxy
  wait_for 90 "node $NODE_NAME Ready" "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" wait --for=condition=Ready \
    "node/$NODE_NAME" --timeout=1s
}

# Stop the node and remove what it added to the host: pods (through the runtime, so CNI tears down their
# veths, IP leases and masquerade rules), processes, mounts, iptables rules, the bridge, cgroups, sysctls.
node_down() {
  stop_bg kubelet 20
  if is_running containerd; then
    local pods; pods=$(crictl pods -q 2>/dev/null || true)
    if [[ -n $pods ]]; then
      # shellcheck disable=SC2086
      crictl stopp $pods >/dev/null 2>&1 || true
      # shellcheck disable=SC2086
      crictl rmp -f $pods >/dev/null 2>&1 || true
    fi
  fi
  stop_bg kube-proxy
  stop_bg containerd 20
  # shims outlive containerd by design: stop the ones of our state dir
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
}

# remove_chains <iptables|ip6tables> <prefix>: every rule that jumps to a chain named <prefix>*, then those chains
# (iptables-nft: never iptables-legacy, whose table only a reboot removes)
remove_chains() {
  local ipt=$1 prefix=$2 table rule chain
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    # (a table without such rules makes grep fail: not an error here)
    { "$ipt" -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j $prefix" || true; } | while read -r rule; do
      # eval: a rule's comment comes quoted in -S output
      eval "$ipt -t $table ${rule/#-A/-D}" 2>/dev/null || true
    done
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk -v p="$prefix" '$1 == "-N" && index($2, p) == 1 {print $2}'); do
      "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk -v p="$prefix" '$1 == "-N" && index($2, p) == 1 {print $2}'); do
      "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

node_cleanup() {
  [[ -x $BIN_DIR/kube-proxy ]] && "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # what kube-proxy's cleanup leaves: the kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
  # KUBE-IPTABLES-HINT), and the masquerade chains of pods torn down without the runtime (CNI-*)
  local ipt
  for ipt in iptables ip6tables; do
    remove_chains "$ipt" KUBE-
    remove_chains "$ipt" CNI-
  done
  # veths left on our bridge, then the bridge
  local veth
  for veth in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 || true); do
    ip link del "$veth" 2>/dev/null || true
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  # the pods' network namespaces (containerd names them cni-<uuid>)
  local ns
  for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    umount "$ns" 2>/dev/null || true; rm -f "$ns"
  done
  # mounts under the node's state (kubelet root is a shared bind mount; overlay rootfs; volumes; shm)
  local m
  for m in $(awk -v d="$NODE_DIR" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # cgroups the kubelet and runc made (empty once the processes are gone)
  local root
  for root in /sys/fs/cgroup/*/; do
    [[ -d "$root/kubepods" ]] || continue
    find "$root/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [[ -f $NODE_DIR/sysctl.saved ]]; then
    sysctl -qw $(cat "$NODE_DIR/sysctl.saved") 2>/dev/null || true
    rm -f "$NODE_DIR/sysctl.saved"
  fi
}

node_status() {
  local c
  for c in containerd kubelet kube-proxy; do
    if is_running "$c"; then echo "$c: running (pid $(cat "$PIDS/$c"))"; else echo "$c: stopped"; fi
  done
}
