#!/usr/bin/env bash
# The cluster's PostgreSQL (hack/addons/postgres.yaml), from the host: seed it, reset it, or run psql on it.
#
#   hack/postgres.sh seed      role parking_admin + databases parking_db and parking_template, both migrated
#                              with Flyway to V5 (examples/parking/migrations); idempotent
#   hack/postgres.sh reset     drop parking_db and parking_template, then seed
#   hack/postgres.sh status    exit 0 when it accepts connections, 3 when not
#   hack/postgres.sh psql ...  psql as the superuser (extra args are passed on)
#
# Where: MO_PG_HOST/MO_PG_PORT, else the ClusterIP of the Service databases/postgres of $KUBECONFIG's cluster
# (kube-proxy routes it from the host). Superuser postgres / postgres (a throw-away cluster). The client tools are
# Debian's (postgresql-client-15, installed by hack/install-prereqs.sh).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"

PG_SUPERUSER=postgres
PG_SUPERPASS=postgres
APP_ROLE=parking_admin
APP_PASS=parking_admin
APP_DBS=(parking_db parking_template)
TEMPLATE_DB=parking_template
SEED_TARGET="${SEED_TARGET:-5}"
MIGRATIONS_DIR="$ROOT_DIR/examples/parking/migrations"
LOG_DIR="$MO_CACHE/cluster/logs"
START_TIMEOUT="${PG_START_TIMEOUT:-120}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

locate() {
  PGPORT="${MO_PG_PORT:-5432}"
  if [[ -n ${MO_PG_HOST:-} ]]; then PG_HOST=$MO_PG_HOST; return 0; fi
  export KUBECONFIG=${KUBECONFIG:-$MO_CACHE/cluster/kubeconfig}
  PG_HOST=$("$BIN_DIR/kubectl" -n databases get service postgres -o jsonpath='{.spec.clusterIP}' 2>/dev/null) ||
    die "no Service databases/postgres in the cluster of $KUBECONFIG (hack/cluster.sh up makes it)"
}

is_ready() { pg_isready -q -h "$PG_HOST" -p "$PGPORT" -d postgres -t 2 >/dev/null 2>&1; }

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until is_ready; do
    ((SECONDS < deadline)) || die "PostgreSQL at $PG_HOST:$PGPORT not ready within ${START_TIMEOUT}s"
    sleep 0.5
  done
}

# psql as the superuser over TCP (password from the environment, never on the command line).
su_psql() {
  PGPASSWORD="$PG_SUPERPASS" psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PGPORT" -U "$PG_SUPERUSER" "$@"
}

flyway_migrate() {
  local db="$1" out="$LOG_DIR/flyway-seed-$db.log"
  mkdir -p "$LOG_DIR"
  FLYWAY_PASSWORD="$APP_PASS" "$MO_CACHE/flyway/current/flyway" migrate \
    "-url=jdbc:postgresql://$PG_HOST:$PGPORT/$db" "-user=$APP_ROLE" \
    "-locations=filesystem:$MIGRATIONS_DIR" "-target=$SEED_TARGET" \
    -baselineOnMigrate=false -validateOnMigrate=true -outOfOrder=false -cleanDisabled=true \
    -connectRetries=3 >"$out" 2>&1 || { cat "$out" >&2; die "flyway migrate of $db failed"; }
}

cmd_seed() {
  wait_ready
  "$HACK_DIR/install-flyway.sh" >/dev/null
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
  log "seeded: role $APP_ROLE, databases ${APP_DBS[*]} at V$SEED_TARGET ($PG_HOST:$PGPORT)"
}

cmd_reset() {
  wait_ready
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

locate
case "${1:-}" in
  seed) cmd_seed ;;
  reset) cmd_reset ;;
  status) if is_ready; then echo "ready on $PG_HOST:$PGPORT"; else echo "not ready ($PG_HOST:$PGPORT)"; exit 3; fi ;;
  psql) shift; wait_ready; su_psql "$@" ;;
  *) echo "usage: $0 seed|reset|status|psql [psql args]" >&2; exit 2 ;;
esac
