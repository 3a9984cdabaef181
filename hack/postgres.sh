#!/usr/bin/env bash
# A private PostgreSQL cluster for the local stack (Debian's server binaries, no Docker).
#
#   hack/postgres.sh start     initdb on first use, TLS (ensure_tls), start, wait for pg_isready (idempotent)
#   hack/postgres.sh stop      fast shutdown
#   hack/postgres.sh status    exit 0 when it accepts connections, 3 when not
#   hack/postgres.sh seed      role parking_admin + databases parking_db and parking_template, both
#                              migrated with Flyway to V5 (examples/parking/migrations); idempotent
#   hack/postgres.sh reset     drop parking_db and parking_template, then seed
#   hack/postgres.sh psql ...  psql as the superuser over TCP (extra args are passed on)
#
# Layout ($MO_CACHE from hack/versions.sh):  $MO_CACHE/cluster/postgres/$PG_MAJOR/{data,postgres.log,tls/ca.crt}
# Listens on 127.0.0.1:$PGPORT only (default 15432); the unix socket lives inside the data dir.
# Auth: scram-sha-256 for TCP, trust on the socket (reachable only by the postgres OS user and root,
# as the data dir is 0700). Superuser postgres / postgres. Durability is traded for speed (fsync=off):
# this is a throw-away dev/CI cluster.
# initdb refuses root, so when run as root the server runs as the `postgres` OS user; it needs
# search (x) permission on every ancestor of the data dir, which is granted with chmod o+x
# (e.g. /root, which is 0700 by default).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"

PG_MAJOR="${PG_MAJOR:-15}"
PGPORT="${MO_PG_PORT:-15432}"
PG_HOST="${MO_PG_HOST:-127.0.0.1}"
# MO_PG_HOST set: the server runs elsewhere (the cluster's, hack/addons/postgres.yaml): seed/psql/reset only wait
# for it and talk to it; start/stop are not ours to do.
PG_EXTERNAL=$([[ -n ${MO_PG_HOST:-} ]] && echo 1 || echo 0)
PG_SUPERUSER=postgres
PG_SUPERPASS=postgres
APP_ROLE=parking_admin
APP_PASS=parking_admin
APP_DBS=(parking_db parking_template)
TEMPLATE_DB=parking_template
SEED_TARGET="${SEED_TARGET:-5}"
MIGRATIONS_DIR="$ROOT_DIR/examples/parking/migrations"

PG_BASE="$MO_CACHE/cluster/postgres/$PG_MAJOR"
PGDATA_DIR="$PG_BASE/data"
PG_LOG="$PG_BASE/postgres.log"
PG_TLS_DIR="$PG_BASE/tls"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
START_TIMEOUT="${PG_START_TIMEOUT:-60}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Run a command as the server's OS user (postgres when we are root, ourselves otherwise).
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_server_installed() {
  [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]] && return 0
  [[ $EUID -eq 0 ]] || die "PostgreSQL $PG_MAJOR server missing and not root: apt-get install postgresql-$PG_MAJOR"
  log "installing postgresql-$PG_MAJOR with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" >/dev/null
  [[ -x "$PG_BIN/initdb" ]] || die "postgresql-$PG_MAJOR installed but $PG_BIN/initdb missing"
}

# The server user must be able to walk down to the data dir.
grant_traverse() {
  [[ $EUID -eq 0 ]] || return 0
  local d="$PG_BASE"
  while [[ "$d" != "/" ]]; do
    if ! runuser -u postgres -- test -x "$d"; then
      chmod o+x "$d"
    fi
    d="$(dirname "$d")"
  done
}

is_running() {
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

is_ready() {
  "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PGPORT" -d postgres -t 2 >/dev/null 2>&1
}

init_cluster() {
  log "initdb into $PGDATA_DIR"
  mkdir -p "$PG_BASE"
  grant_traverse
  [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_BASE"
  local pwfile
  pwfile="$(mktemp)"
  printf '%s\n' "$PG_SUPERPASS" >"$pwfile"
  [[ $EUID -eq 0 ]] && chown postgres "$pwfile"
  chmod 0600 "$pwfile"
  if ! as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
      >"$PG_BASE/initdb.log" 2>&1; then
    rm -f "$pwfile"
    cat "$PG_BASE/initdb.log" >&2
    die "initdb failed"
  fi
  rm -f "$pwfile"
  as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- migration-operator local cluster (hack/postgres.sh) ---
listen_addresses = '$PG_HOST'
port = $PGPORT
unix_socket_directories = '$PGDATA_DIR'
password_encryption = 'scram-sha-256'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d/%a '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  # TCP from loopback only, password (scram); local socket trust (dir is 0700).
  as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
}

# TLS, as a production database has it: a CA of our own ($PG_TLS_DIR/ca.crt, what a DatabaseMigration's caSecret
# holds for sslMode verify-full) and a server certificate for 127.0.0.1 and localhost signed by it. The operator's
# default sslMode is `require`; pg_hba stays `host` (TLS or not) so plain clients keep working. Idempotent: adds the
# settings to an existing cluster and reloads it (ssl is a reloadable setting).
ensure_tls() {
  local tls="$PG_TLS_DIR"
  if [[ ! -s "$tls/server.crt" || ! -s "$tls/ca.crt" ]]; then
    log "creating a CA and a server certificate in $tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=migration-operator local CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" \
      >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 3650 \
      -extfile "$tls/server.ext" -out "$tls/server.crt" >/dev/null 2>&1
    chmod 0644 "$tls/ca.crt" "$tls/server.crt"
    chmod 0600 "$tls/ca.key" "$tls/server.key"
    if [[ $EUID -eq 0 ]]; then chown postgres:postgres "$tls/server.key" "$tls/server.crt"; fi
  fi
  if ! as_pg grep -q '^ssl = on' "$PGDATA_DIR/postgresql.conf"; then
    as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
EOF
    if is_running; then as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" reload >/dev/null; log "TLS enabled (reloaded)"; fi
  fi
}

cmd_start() {
  if ((PG_EXTERNAL)); then
    local deadline=$((SECONDS + START_TIMEOUT))
    until is_ready; do
      ((SECONDS < deadline)) || die "PostgreSQL at $PG_HOST:$PGPORT not ready within ${START_TIMEOUT}s"
      sleep 0.5
    done
    return 0
  fi
  ensure_server_installed
  if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
    init_cluster
  fi
  grant_traverse
  ensure_tls
  if is_running; then
    if is_ready; then return 0; fi
  else
    [[ $EUID -eq 0 ]] && { touch "$PG_LOG"; chown postgres:postgres "$PG_LOG"; }
    # -W: don't let pg_ctl wait; we wait ourselves with a deadline below.
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -W start >/dev/null
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until is_ready; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$PG_LOG" >&2 || true
      die "PostgreSQL did not become ready on $PG_HOST:$PGPORT within ${START_TIMEOUT}s (log: $PG_LOG)"
    fi
    sleep 0.2
  done
  log "ready on $PG_HOST:$PGPORT (data $PGDATA_DIR, log $PG_LOG)"
}

cmd_stop() {
  if is_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null
    log "stopped"
  fi
}

cmd_status() {
  if is_running && is_ready; then
    echo "running on $PG_HOST:$PGPORT (data $PGDATA_DIR)"
    return 0
  fi
  echo "not running"
  return 3
}

# psql as the superuser over TCP (password from the environment, never on the command line).
su_psql() {
  PGPASSWORD="$PG_SUPERPASS" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PGPORT" \
    -U "$PG_SUPERUSER" "$@"
}

flyway_migrate() {
  local db="$1"
  local flyway="$MO_CACHE/flyway/current/flyway"
  mkdir -p "$PG_BASE"
  FLYWAY_PASSWORD="$APP_PASS" "$flyway" migrate \
    "-url=jdbc:postgresql://$PG_HOST:$PGPORT/$db" "-user=$APP_ROLE" \
    "-locations=filesystem:$MIGRATIONS_DIR" "-target=$SEED_TARGET" \
    -baselineOnMigrate=false -validateOnMigrate=true -outOfOrder=false -cleanDisabled=true \
    -connectRetries=3 >"$PG_BASE/flyway-seed-$db.log" 2>&1 \
    || { cat "$PG_BASE/flyway-seed-$db.log" >&2; die "flyway migrate of $db failed"; }
}

cmd_seed() {
  cmd_start
  "$HACK_DIR/install-flyway.sh"
  su_psql -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$APP_ROLE')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_ROLE') \gexec
ALTER ROLE $APP_ROLE WITH LOGIN CREATEDB PASSWORD '$APP_PASS';
SQL
  local db
  for db in "${APP_DBS[@]}"; do
    su_psql -d postgres <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', '$db', '$APP_ROLE')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db') \gexec
ALTER DATABASE $db OWNER TO $APP_ROLE;
SQL
    if [[ "$db" == "$TEMPLATE_DB" ]]; then
      su_psql -d postgres -c "ALTER DATABASE $db WITH ALLOW_CONNECTIONS true"
    fi
    flyway_migrate "$db"
    if [[ "$db" == "$TEMPLATE_DB" ]]; then
      # A template nobody connects to, so CREATE DATABASE x TEMPLATE parking_template always works.
      su_psql -d postgres -c "ALTER DATABASE $db WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
      su_psql -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$db'" >/dev/null
    fi
  done
  log "seeded: role $APP_ROLE, databases ${APP_DBS[*]} at V$SEED_TARGET"
}

cmd_reset() {
  cmd_start
  local db
  for db in "${APP_DBS[@]}"; do
    su_psql -d postgres <<SQL
SELECT format('ALTER DATABASE %I WITH IS_TEMPLATE false', '$db')
WHERE EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db') \gexec
DROP DATABASE IF EXISTS $db WITH (FORCE);
SQL
  done
  cmd_seed
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  seed) cmd_seed ;;
  reset) cmd_reset ;;
  psql) shift; cmd_start; su_psql "$@" ;;
  *) echo "usage: $0 start|stop|status|seed|reset|psql [psql args]" >&2; exit 2 ;;
esac
