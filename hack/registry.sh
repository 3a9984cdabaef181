#!/usr/bin/env bash
# The local image registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1:5000 only.
# containerd uses it as the mirror of docker.io, ghcr.io and registry.k8s.io (see hack/build-images.sh for the
# name mapping); hack/build-images.sh pushes the images built here into it.
#
#   hack/registry.sh start    start it unless it runs (idempotent), wait until /v2/ answers
#   hack/registry.sh stop     stop it (the stored images stay)
#   hack/registry.sh status   exit 0 when it runs and answers
#
# Everything lives under $MO_CACHE/registry/ (outside the checkout, so a fresh clone and a cluster reset keep the
# images): config.yml, data/ (the blobs), registry.pid, registry.log. Not the system service: apt starts no daemon
# here, and ours has its own config, storage and address. MO_REGISTRY_ADDR overrides the address (loopback only).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"

REG_DIR="$MO_CACHE/registry"
REG_ADDR="${MO_REGISTRY_ADDR:-127.0.0.1:5000}"
REG_BIN="${MO_REGISTRY_BIN:-/usr/bin/docker-registry}"
CONFIG="$REG_DIR/config.yml"
PIDFILE="$REG_DIR/registry.pid"
LOGFILE="$REG_DIR/registry.log"

log() { echo "registry: $*" >&2; }

case "$REG_ADDR" in
  127.*:*|localhost:*) ;;
  *) log "refusing to listen on $REG_ADDR: loopback only"; exit 2 ;;
esac

is_running() {  # our registry process, by pid file and cmdline (a recycled pid is not ours)
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  local cmdline; cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  grep -q -- "docker-registry" <<<"$cmdline" && grep -qF -- "$CONFIG" <<<"$cmdline"
}

answers() { curl -fsS -o /dev/null --max-time 2 "http://$REG_ADDR/v2/" 2>/dev/null; }

write_config() {
  mkdir -p "$REG_DIR/data"
  local tmp; tmp=$(mktemp "$REG_DIR/.config.XXXXXX")
  cat >"$tmp" <<EOF
# Written by hack/registry.sh: the local registry of the migration-operator cluster (loopback only, no auth).
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: $REG_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
  if cmp -s "$tmp" "$CONFIG"; then rm -f "$tmp"; else mv "$tmp" "$CONFIG"; fi
}

start() {
  if is_running; then
    answers && return 0
  else
    [[ -x "$REG_BIN" ]] || {
      log "$REG_BIN missing: apt-get install -y --no-install-recommends docker-registry"; exit 1; }
    if answers; then
      log "something else already answers on http://$REG_ADDR/v2/ (not ours: no pid file $PIDFILE)"; exit 1
    fi
    write_config
    setsid "$REG_BIN" serve "$CONFIG" >>"$LOGFILE" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    log "started (pid $!, http://$REG_ADDR, data $REG_DIR/data, log $LOGFILE)"
  fi
  local deadline=$((SECONDS + ${MO_REGISTRY_TIMEOUT:-30}))
  until answers; do
    # alive, not is_running: right after the fork the child may not have exec'ed the registry yet, and its
    # cmdline is still this script's (a busy machine made that race fail a CI run after 23 s)
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "exited; last lines of $LOGFILE:"; tail -n 20 "$LOGFILE" >&2; exit 1
    fi
    if ((SECONDS >= deadline)); then log "no answer on http://$REG_ADDR/v2/ in time; see $LOGFILE"; exit 1; fi
    sleep 0.1
  done
}

stop() {
  if ! is_running; then rm -f "$PIDFILE"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then log "pid $pid ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.1
  done
  rm -f "$PIDFILE"
  log "stopped"
}

status() {
  if is_running && answers; then
    echo "registry: running (pid $(cat "$PIDFILE"), http://$REG_ADDR, data $REG_DIR/data)"
  else
    echo "registry: not running"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
