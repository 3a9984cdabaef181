#!/usr/bin/env bash
# Entrypoint of the local postgres:15 stand-in (hack/images/postgres). Written for this project; it follows the
# documented contract of the official image (docker-library/postgres), not its code:
#   - `docker-entrypoint.sh postgres [args]` (or only `-c ...` args): on an empty PGDATA, initdb with
#     POSTGRES_USER (default postgres) / POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust) and
#     POSTGRES_INITDB_ARGS, create POSTGRES_DB (default: the user name), run /docker-entrypoint-initdb.d/*.sh,
#     *.sql, *.sql.gz, *.sql.xz, *.sql.zst in name order against a server that listens on no TCP address, then
#     start postgres for real. Each of those variables may instead come from a file named by <VAR>_FILE.
#   - remote hosts authenticate with POSTGRES_HOST_AUTH_METHOD (default: password_encryption, scram-sha-256);
#     local socket and loopback connections are trusted (initdb's default), as in the official image.
#   - started as root: make PGDATA and the socket directory the postgres user's, then re-exec as uid/gid 999.
#     Started as another uid: run as that uid (a uid without a passwd entry gets one through libnss_wrapper).
#   - any other command is exec'ed as is.
set -Eeuo pipefail

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# VAR or the contents of the file named by VAR_FILE (not both); exported as VAR.
from_env_or_file() {
  local var=$1 default=${2:-} file_var="$1_FILE" value
  if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then die "both $var and $file_var are set (they are exclusive)"; fi
  value=$default
  if [[ -n ${!var:-} ]]; then value=${!var}; elif [[ -n ${!file_var:-} ]]; then value=$(<"${!file_var}"); fi
  export "$var=$value"
  unset "$file_var"
}

asks_for_help() {
  local arg
  for arg in "$@"; do
    case $arg in -'?' | --help | --describe-config | -V | --version) return 0 ;; esac
  done
  return 1
}

prepare_dirs() {  # as the current user; as root also hand them to postgres
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA" 2>/dev/null || true
  mkdir -p /var/run/postgresql 2>/dev/null || true
  chmod 3775 /var/run/postgresql 2>/dev/null || true
  if [[ $(id -u) == 0 ]]; then
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
  fi
}

# A uid that has no passwd entry (a pod's runAsUser) still needs a user name for initdb.
fake_passwd_entry() {
  getent passwd "$(id -u)" >/dev/null && return 0
  local lib
  for lib in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so; do
    [[ -s $lib ]] || continue
    NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
    printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
    printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
    export LD_PRELOAD=$lib NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    return 0
  done
}

drop_fake_passwd_entry() {
  [[ ${LD_PRELOAD:-} == */libnss_wrapper.so ]] || return 0
  rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
  unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
}

psql_init() {  # psql as the superuser over the socket, stopping at the first error
  PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" "$@"
}

init_database() {  # server args...
  if [[ -z $POSTGRES_PASSWORD && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
    die "the database is not initialised and POSTGRES_PASSWORD is empty: set it (or POSTGRES_HOST_AUTH_METHOD=trust, not recommended)"
  fi
  [[ $POSTGRES_HOST_AUTH_METHOD == trust ]] && log "warning: POSTGRES_HOST_AUTH_METHOD=trust lets every host in without a password"
  ls /docker-entrypoint-initdb.d/ >/dev/null  # fail now when it is unreadable

  fake_passwd_entry
  local pwfile; pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  local -a initdb_args=()
  [[ -n ${POSTGRES_INITDB_WALDIR:-} ]] && initdb_args+=(--waldir "$POSTGRES_INITDB_WALDIR")
  # POSTGRES_INITDB_ARGS is shell words (quotes allowed), like the official image.
  eval "initdb_args+=($POSTGRES_INITDB_ARGS)"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" "${initdb_args[@]}"
  rm -f "$pwfile"
  drop_fake_passwd_entry

  local auth=$POSTGRES_HOST_AUTH_METHOD
  [[ -n $auth ]] || auth=$(postgres -C password_encryption "$@")
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

  # A server for the init scripts only: the socket, no TCP address.
  local -a opts=("$@" -c "listen_addresses=" -p "${PGPORT:-5432}")
  export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
  PGUSER=${PGUSER:-$POSTGRES_USER} pg_ctl -D "$PGDATA" -o "$(printf '%q ' "${opts[@]}")" -w start

  if [[ $POSTGRES_DB != postgres ]] &&
    [[ -z $(psql_init --dbname postgres --tuples-only --set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'") ]]; then
    psql_init --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db"'
  fi

  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e $f ]] || continue
    case $f in
      *.sh)
        if [[ -x $f ]]; then log "$0: running $f"; "$f"; else log "$0: sourcing $f"; . "$f"; fi ;;
      *.sql) log "$0: running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) log "$0: running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB" ;;
      *.sql.xz) log "$0: running $f"; xzcat "$f" | psql_init --dbname "$POSTGRES_DB" ;;
      *.sql.zst) log "$0: running $f"; zstd -dc "$f" | psql_init --dbname "$POSTGRES_DB" ;;
      *) log "$0: ignoring $f" ;;
    esac
  done

  PGUSER=${PGUSER:-postgres} pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGPASSWORD
  log "PostgreSQL init process complete; ready for start up."
}

main() {
  if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi
  if [[ ${1:-} == postgres ]] && ! asks_for_help "$@"; then
    : "${PGDATA:=/var/lib/postgresql/data}"
    export PGDATA
    from_env_or_file POSTGRES_PASSWORD
    from_env_or_file POSTGRES_USER postgres
    from_env_or_file POSTGRES_DB "$POSTGRES_USER"
    from_env_or_file POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    prepare_dirs
    if [[ $(id -u) == 0 ]]; then
      exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [[ -s $PGDATA/PG_VERSION ]]; then
      log "PostgreSQL Database directory appears to contain a database; Skipping initialization"
    else
      shift
      init_database "$@"
      set -- postgres "$@"
    fi
  fi
  exec "$@"
}

main "$@"
