# Shared helpers of the local cluster scripts (hack/cluster.sh, hack/node.sh); sourced, not run.
# The caller sets STATE (the cluster's state dir) before sourcing; LOGS, PIDS and CERTS live under it.
# shellcheck shell=bash
LOGS="$STATE/logs"
PIDS="$STATE/pids"
CERTS="$STATE/certs"
KUBECTL="$BIN_DIR/kubectl"

log() { printf '[%s %s] %s\n' "${LOG_TAG:-cluster}" "$(date +%H:%M:%S)" "$*" >&2; }

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
  local expected=$1
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

kubeconfig() {  # file user cert
  local file=$1 user=$2 cert=$3
  cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$APISERVER_HOST:$APISERVER_PORT
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
