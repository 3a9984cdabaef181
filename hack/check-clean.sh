#!/usr/bin/env bash
# What a local cluster leaves on the host, checked without hack/cluster.sh (so a bug there cannot hide here).
#
#   hack/check-clean.sh [--state DIR] [--bridge NAME]            after `hack/cluster.sh down` or `reset`: exits 1
#                                                               and lists every leftover (processes, bridge and
#                                                               veths, /run/netns/cni-*, mounts, KUBE-*/CNI-*/MO-FAULT, the fault suite's tmpfs mounts
#                                                               chains, kube-proxy nft tables, kubepods cgroups)
#   hack/check-clean.sh listeners [--state DIR] [--bridge NAME]  while the cluster runs: exits 1 and lists every
#                                                               listening TCP/UDP socket of the cluster's processes
#                                                               that is not on loopback or the bridge's subnet
#
# The state dir (default: the directory of $KUBECONFIG when it lies under the cache, else $MO_CACHE/cluster) is how
# the cluster's processes are told from others': each one names it on its command line (configs, certs, data, the
# containerd socket), so another cluster on the same machine (other state dir) is not reported.
# Reads iptables through the nft backend only: iptables-legacy registers a table that only a reboot removes.
set -euo pipefail

MO_CACHE=${MO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migration-operator}
MODE=all
STATE=${MO_STATE:-}
BRIDGE=${MO_BRIDGE:-mobr0}
while (($#)); do
  case $1 in
    listeners|all) MODE=$1 ;;
    --state) STATE=$2; shift ;;
    --bridge) BRIDGE=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "usage: $0 [all|listeners] [--state DIR] [--bridge NAME]" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $STATE ]]; then
  if [[ -n ${KUBECONFIG:-} && $(dirname "$KUBECONFIG") == "$MO_CACHE"/* ]]; then
    STATE=$(dirname "$KUBECONFIG")
  else
    STATE=$MO_CACHE/cluster
  fi
fi
STATE=$(realpath -m "$STATE")

problems=()
problem() { problems+=("$*"); }

# pids whose command line names the state dir (every daemon of the cluster and the containerd shims do)
cluster_pids() {
  local p cmdline
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    cmdline=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) || continue
    [[ -n $cmdline && $cmdline == *"$STATE/"* ]] || continue
    # this script's own pipeline (e.g. its --state argument) is not the cluster
    [[ $cmdline == *check-clean.sh* ]] && continue
    echo "$p"
  done
}

# whether an address (no port, no brackets) is on loopback or in the bridge's IPv4 subnets
allowed_address() {
  python3 - "$1" "${BRIDGE_NETS[@]}" <<'EOF'
import ipaddress, sys
addr = ipaddress.ip_address(sys.argv[1].split("%")[0])
nets = [ipaddress.ip_interface(n).network for n in sys.argv[2:]]
sys.exit(0 if addr.is_loopback or any(addr in n for n in nets) else 1)
EOF
}

check_listeners() {
  mapfile -t BRIDGE_NETS < <(ip -4 -o addr show dev "$BRIDGE" 2>/dev/null | awk '{print $4}')
  ((${#BRIDGE_NETS[@]})) || echo "note: no bridge $BRIDGE: only loopback counts as allowed" >&2
  local pids; pids=" $(cluster_pids | tr '\n' ' ') "
  [[ $pids != "  " ]] || { echo "no process of the cluster in $STATE runs: start it first" >&2; exit 2; }
  local count=0 line proto local_addr users pid addr port name
  # Netid State Recv-Q Send-Q Local:Port Peer:Port Process
  while read -r line; do
    proto=$(awk '{print $1}' <<<"$line"); local_addr=$(awk '{print $5}' <<<"$line")
    users=$(grep -o 'users:(.*' <<<"$line" || true)
    for pid in $(grep -o 'pid=[0-9]*' <<<"$users" | cut -d= -f2 | sort -u); do
      [[ $pids == *" $pid "* ]] || continue
      count=$((count + 1))
      addr=${local_addr%:*}; port=${local_addr##*:}; addr=${addr#[}; addr=${addr%]}
      name=$(cat "/proc/$pid/comm" 2>/dev/null || echo "?")
      if [[ $addr == "*" || $addr == 0.0.0.0 || $addr == "::" ]] || ! allowed_address "$addr"; then
        problem "listener: $name (pid $pid) $proto $local_addr"
      fi
    done
  done < <(ss -H -lntup 2>/dev/null)
  echo "checked $count listening sockets of the cluster's processes (state $STATE; allowed: loopback${BRIDGE_NETS[*]:+, ${BRIDGE_NETS[*]}})"
}

check_all() {
  local p
  # processes: the daemons and shims (command line names the state dir), and anything in a pod's cgroup
  for p in $(cluster_pids); do
    problem "process: $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-160)"
  done
  for p in /proc/[0-9]*; do
    grep -q kubepods "$p/cgroup" 2>/dev/null || continue
    problem "process in a pod cgroup: ${p#/proc/} $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-120)"
  done

  # network: the bridge, veths on it, the pods' network namespaces
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    problem "bridge: $BRIDGE"
    local veth
    for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      problem "veth on $BRIDGE: $veth"
    done
  fi
  for p in /run/netns/cni-*; do
    [[ -e $p ]] && problem "network namespace: $p"
  done

  # mounts under the state dir or the kubelet's fixed /var/lib/kubelet (and pods' netns bind mounts)
  local m
  while read -r m; do
    problem "mount: $m"
  done < <(awk -v s="$STATE/" -v f="$MO_CACHE/faults/" '{gsub(/\\040/, " ", $2)} index($2, s) == 1 || index($2, f) == 1 ||
    $2 == "/var/lib/kubelet" ||
    index($2, "/var/lib/kubelet/") == 1 || index($2, "/run/netns/cni-") == 1 {print $2}' /proc/self/mounts)

  # iptables chains (nft backend only) and kube-proxy's own nft tables
  local cmd table chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    if ! "$cmd" --version 2>/dev/null | grep -q nf_tables; then
      problem "$cmd is not the nf_tables variant: not reading it (iptables-legacy registers a table until reboot)"
      continue
    fi
    for table in filter nat mangle raw; do
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CNI-/ || $2 == "MO-FAULT") {print $2}'); do
        problem "$cmd chain: $table/$chain"
      done
      while read -r rule; do
        problem "$cmd rule: $table: $rule"
      done < <("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-A" && $2 !~ /^(KUBE|CNI)-/ && $2 != "MO-FAULT" && /-j (KUBE|CNI|MO)-/')
    done
  done
  if command -v nft >/dev/null; then
    while read -r table; do
      problem "nft table: $table"
    done < <(nft list tables 2>/dev/null | awk '$3 == "kube-proxy" {print $2" "$3}')
  fi

  # cgroups the kubelet and runc made, in every hierarchy (v1 controllers and the unified one)
  local cg
  for cg in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
    [[ -d $cg ]] && problem "cgroup: $cg"
  done
  echo "checked processes, $BRIDGE, netns, mounts, iptables/nft, cgroups (state $STATE)"
}

case $MODE in
  listeners) check_listeners ;;
  all) check_all ;;
esac
if ((${#problems[@]})); then
  printf '%s\n' "${problems[@]}"
  echo "${#problems[@]} left over" >&2
  exit 1
fi
echo clean
