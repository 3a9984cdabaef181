#!/usr/bin/env bash
# Checks the images in the local registry work, without a kubelet: each is pulled from the registry by its
# registry path (what containerd gets) into buildah's storage and run with `buildah run` (chroot isolation,
# the host's network: every server here listens on 127.0.0.1 only).
#   hack/images/check.sh [NAME...]      default: every image; names as in `hack/build-images.sh --list`
# Prints one line per check and "N passed, N failed" at the end; exit 1 when a check failed.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"
REGISTRY=${MO_REGISTRY_ADDR:-127.0.0.1:5000}
PG_PORT=${MO_CHECK_PG_PORT:-25432}   # the test server's port, on 127.0.0.1
export CONTAINERS_STORAGE_CONF="$MO_CACHE/images/etc/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$MO_CACHE/images/etc/registries.conf"
ISOLATION=${MO_BUILDAH_ISOLATION:-chroot}

log() { echo "check: $*" >&2; }
PASSED=0 FAILED=0 FAILURES=()
pass() { PASSED=$((PASSED + 1)); echo "ok    $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); echo "FAIL  $*"; }
check() {  # description command...: passes when the command succeeds (its output is shown on failure)
  local what=$1 out; shift
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/      /'; fi
}
expect() {  # description pattern command...: passes when the command succeeds and its output matches
  local what=$1 pattern=$2 out; shift 2
  if out=$("$@" 2>&1) && grep -Eq -- "$pattern" <<<"$out"; then pass "$what"
  else fail "$what"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/      /'; fi
}

[[ -f $CONTAINERS_STORAGE_CONF ]] || { log "run hack/build-images.sh first"; exit 1; }
"$HACK_DIR/registry.sh" start

CONTAINERS=()
BG_PIDS=()
cleanup() {
  local p c
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

new_ctr() {  # registry path -> sets CTR: a working container of the image as pulled from the registry
  CTR=$(buildah from --quiet --pull=always --tls-verify=false "$REGISTRY/$1")
  CONTAINERS+=("$CTR")
}
run() { buildah run --isolation "$ISOLATION" --network host "$@"; }

config() {  # registry path -> the image config as the registry serves it (JSON)
  skopeo inspect --tls-verify=false --config "docker://$REGISTRY/$1"
}
config_is() {  # registry path, python expression on c (the "config" object) that must be true
  config "$1" | python3 -c "import json,sys; c=json.load(sys.stdin)['config']; ok=($2); print(ok, c.get('Entrypoint'), c.get('Cmd'), c.get('User'), c.get('WorkingDir')); sys.exit(0 if ok else 1)"
}

wait_until() {  # seconds command...: poll until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

check_debian() {
  local p=library/debian:bookworm-slim
  new_ctr "$p"
  expect "debian: bookworm, apt and bash" 'VERSION_CODENAME=bookworm' run "$CTR" -- bash -c 'command -v apt-get >/dev/null && cat /etc/os-release'
}

check_python() {
  local p=library/python:3.11-slim
  new_ctr "$p"
  expect "python: python and python3 are 3.11" '^Python 3\.11.*Python 3\.11' run "$CTR" -- sh -c 'echo $(python --version) $(python3 --version)'
  check "python: /usr/local/bin/python like the official image" run "$CTR" -- /usr/local/bin/python -c 'import ssl, sqlite3, venv'
  check "python: a venv with pip" run "$CTR" -- sh -c 'python -m venv /tmp/v && /tmp/v/bin/pip --version'
  check "python: CMD python3" config_is "$p" "c.get('Cmd') == ['python3']"
}

check_busybox() {
  local p=library/busybox:1.37
  new_ctr "$p"
  expect "busybox: sh, cp, ls" '^copied$' run "$CTR" -- sh -c 'echo copied >/tmp/a && cp /tmp/a /tmp/b && ls /tmp/b >/dev/null && cat /tmp/b'
  check "busybox: CMD sh" config_is "$p" "c.get('Cmd') == ['sh']"
}

check_pause() {
  local p=pause:3.10
  new_ctr "$p"
  check "pause: ENTRYPOINT /pause, user 65535" config_is "$p" "c.get('Entrypoint') == ['/pause'] and c.get('User') == '65535:65535'"
  local m; m=$(buildah mount "$CTR")
  # Run the image's binary as PID 1 of a new PID namespace (as in a pod sandbox): SIGTERM ends it with 0.
  local out; out=$(mktemp)
  unshare --pid --fork --kill-child "$m/pause" >"$out" 2>&1 &
  local pid=$!
  BG_PIDS+=("$pid")
  if wait_until 5 pgrep -f "^$m/pause" && kill -TERM "$(pgrep -f "^$m/pause" | head -n1)" && wait "$pid"; then
    pass "pause: exits 0 on SIGTERM"
  else
    fail "pause: exits 0 on SIGTERM"; sed 's/^/      /' "$out"
  fi
  rm -f "$out"
  buildah umount "$CTR" >/dev/null
}

check_coredns() {
  local p=coredns/coredns:v1.12.1
  new_ctr "$p"
  expect "coredns: -version" '^CoreDNS-1\.12\.1' run "$CTR" -- /coredns -version
  check "coredns: ENTRYPOINT /coredns, non-root" config_is "$p" "c.get('Entrypoint') == ['/coredns'] and c.get('User') == '65532:65532'"
  local m; m=$(buildah mount "$CTR")
  expect "coredns: file capability cap_net_bind_service" 'cap_net_bind_service' getcap "$m/coredns"
  buildah umount "$CTR" >/dev/null
}

# The postgres stand-in: a server initialised as uid 999 (its data in the working container), used below by the
# flyway check too; then a second initialisation started as root (chown + re-exec as postgres).
PG_CTR=
pg_ready() { run "$PG_CTR" -- pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
check_postgres() {
  local p=library/postgres:15
  check "postgres: ENTRYPOINT docker-entrypoint.sh, CMD postgres, STOPSIGNAL SIGINT, 5432, PGDATA" config_is "$p" \
    "c.get('Entrypoint') == ['docker-entrypoint.sh'] and c.get('Cmd') == ['postgres'] and c.get('StopSignal') == 'SIGINT' and '5432/tcp' in c.get('ExposedPorts', {}) and 'PGDATA=/var/lib/postgresql/data' in c.get('Env', [])"
  if ss -Hltn "sport = :$PG_PORT" | grep -q .; then fail "postgres: port $PG_PORT is taken (MO_CHECK_PG_PORT)"; return; fi
  new_ctr "$p"; PG_CTR=$CTR
  expect "postgres: pg_dump, pg_restore, psql, pg_isready on PATH" 'pg_isready' \
    run "$PG_CTR" -- bash -c 'command -v postgres pg_dump pg_restore psql pg_isready'
  expect "postgres: listen_addresses = '*' by default" "^\*$" \
    run --user 999:999 "$PG_CTR" -- bash -c 'initdb -D /tmp/conf-check >/dev/null && postgres -D /tmp/conf-check -C listen_addresses'
  run "$PG_CTR" -- sh -c 'mkdir -p /docker-entrypoint-initdb.d &&
    printf "CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (42);\n" >/docker-entrypoint-initdb.d/10-seed.sql &&
    printf "echo init-script-ran >\$PGDATA/init-script-ran\n" >/docker-entrypoint-initdb.d/20-mark.sh'
  # TLS: a self-signed certificate, owned by the server's uid, as ssl_cert_file / ssl_key_file.
  run "$PG_CTR" -- bash -c 'mkdir -p /tls && cd /tls &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout tls.key -out tls.crt 2>/dev/null &&
    chown 999:999 tls.key tls.crt && chmod 600 tls.key' ||
    { fail "postgres: a test certificate (openssl in the image)"; }
  local logf; logf=$(mktemp)
  run --user 999:999 --env POSTGRES_PASSWORD=s3cret --env POSTGRES_USER=app --env POSTGRES_DB=appdb "$PG_CTR" -- \
    docker-entrypoint.sh postgres -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
    -c ssl=on -c ssl_cert_file=/tls/tls.crt -c ssl_key_file=/tls/tls.key >"$logf" 2>&1 &
  BG_PIDS+=("$!")
  if wait_until 60 pg_ready; then pass "postgres: as uid 999, initialises PGDATA and accepts connections"
  else fail "postgres: as uid 999, initialises PGDATA and accepts connections"; tail -n 20 "$logf" | sed 's/^/      /'; return; fi
  expect "postgres: POSTGRES_PASSWORD/POSTGRES_USER/POSTGRES_DB, the init .sql ran" '^42\|app\|appdb$' \
    run "$PG_CTR" -- bash -c "PGPASSWORD=s3cret psql -h 127.0.0.1 -p $PG_PORT -U app -d appdb -Atc \
      'SELECT (SELECT id FROM seeded), current_user, current_database()'"
  check "postgres: init .sh ran" run "$PG_CTR" -- test -f /var/lib/postgresql/data/init-script-ran
  expect "postgres: remote hosts use scram-sha-256 (pg_hba, stored verifier)" '^t\|t$' \
    run "$PG_CTR" -- psql -h 127.0.0.1 -p "$PG_PORT" -U app -d appdb -Atc \
    "SELECT EXISTS (SELECT FROM pg_hba_file_rules WHERE type = 'host' AND address = 'all' AND auth_method = 'scram-sha-256'),
            (SELECT rolpassword LIKE 'SCRAM-SHA-256\$%' FROM pg_authid WHERE rolname = 'app')"
  expect "postgres: TLS connection (sslmode=require)" '^t$' \
    run "$PG_CTR" -- psql "host=127.0.0.1 port=$PG_PORT user=app dbname=appdb sslmode=require" -Atc \
    'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'
  expect "postgres: pg_dump of the seeded table" 'CREATE TABLE public.seeded' \
    run "$PG_CTR" -- pg_dump -h 127.0.0.1 -p "$PG_PORT" -U app -d appdb --schema-only
  rm -f "$logf"
}

stop_postgres() {
  [[ -n $PG_CTR ]] || return 0
  pg_ready || return 0
  check "postgres: stops (pg_ctl -m fast)" run --user 999:999 "$PG_CTR" -- pg_ctl -D /var/lib/postgresql/data -m fast -w stop
}

check_postgres_root() {
  local p=library/postgres:15
  if ss -Hltn "sport = :$PG_PORT" | grep -q .; then fail "postgres (root): port $PG_PORT is taken"; return; fi
  new_ctr "$p"
  local ctr=$CTR logf; logf=$(mktemp)
  run --env POSTGRES_PASSWORD=rootstart --env PGDATA=/var/lib/postgresql/data/pgdata "$ctr" -- \
    docker-entrypoint.sh -c listen_addresses=127.0.0.1 -p "$PG_PORT" >"$logf" 2>&1 &
  BG_PIDS+=("$!")
  if wait_until 60 run "$ctr" -- pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    pass "postgres: started as root with args only, initialises a PGDATA subdirectory"
  else fail "postgres: started as root with args only, initialises a PGDATA subdirectory"; tail -n 20 "$logf" | sed 's/^/      /'; return; fi
  expect "postgres: as root it re-execs as postgres (999), owns PGDATA" '^999\|postgres\|postgres$' \
    run "$ctr" -- bash -c "stat -c %u /var/lib/postgresql/data/pgdata | tr -d '\n'; echo -n '|';
      PGPASSWORD=rootstart psql -h 127.0.0.1 -p $PG_PORT -U postgres -Atc \"SELECT current_user, current_database()\"" 
  expect "postgres: the server process runs as uid 999" '^999$' \
    bash -c "stat -c %u /proc/\$(pgrep -f -- '^postgres .*-p $PG_PORT' | head -n1)"
  check "postgres (root): stops" run --user 999:999 "$ctr" -- pg_ctl -D /var/lib/postgresql/data/pgdata -m fast -w stop
  rm -f "$logf"
}

check_flyway() {
  local p=flyway/flyway:12.4
  check "flyway: ENTRYPOINT flyway, WORKDIR /flyway" config_is "$p" "c.get('Entrypoint') == ['flyway'] and c.get('WorkingDir') == '/flyway'"
  new_ctr "$p"
  expect "flyway: -v" 'Flyway .*12\.4' run --workingdir /flyway "$CTR" -- flyway -v
  check "flyway: /flyway/sql and /flyway/conf exist" run "$CTR" -- test -d /flyway/sql -a -d /flyway/conf
  if [[ -z $PG_CTR ]] || ! pg_ready; then fail "flyway: info/migrate (needs the postgres check's server)"; return; fi
  run "$CTR" -- sh -c 'printf "CREATE TABLE from_flyway (id int);\n" >/flyway/sql/V1__check.sql'
  local url="jdbc:postgresql://127.0.0.1:$PG_PORT/appdb"
  # -locations as the operator passes it (the CLI of hack/install-flyway.sh does not find the default 'sql'
  # location without -workingDirectory); its own schema, since the database already has the seeded table.
  local -a args=("-url=$url" -user=app -password=s3cret -locations=filesystem:/flyway/sql -schemas=flyway_check)
  expect "flyway: migrate against the stand-in postgres" 'Successfully applied 1 migration' \
    run --workingdir /flyway "$CTR" -- flyway "${args[@]}" migrate
  expect "flyway: info" '\| Versioned +\| 1 +\| check .*\| Success' \
    run --workingdir /flyway "$CTR" -- flyway "${args[@]}" info
}

check_migration_operator() {
  local p=dbops/migration-operator:0.1.0
  check "migration-operator: ENTRYPOINT python -m migration_operator, user 65532" config_is "$p" \
    "c.get('Entrypoint') == ['python', '-m', 'migration_operator'] and c.get('User') == '65532:65532'"
  new_ctr "$p"
  expect "migration-operator: python -m migration_operator --help (as 65532)" '[Uu]sage' \
    run --user 65532:65532 "$CTR" -- python -m migration_operator --help
  check "migration-operator: its dependencies import" run --user 65532:65532 "$CTR" -- \
    python -c 'import kopf, kubernetes, psycopg, pydantic, prometheus_client, yaml'
}

check_parking_gateway() {
  local p=dbops/parking-gateway:0.1.0
  check "parking-gateway: ENTRYPOINT python /app/gateway.py" config_is "$p" "c.get('Entrypoint') == ['python', '/app/gateway.py']"
  new_ctr "$p"
  check "parking-gateway: gateway.py compiles, psycopg imports (as 65532)" run --user 65532:65532 "$CTR" -- \
    python -c 'import psycopg, py_compile; py_compile.compile("/app/gateway.py", cfile="/tmp/g.pyc", doraise=True)'
}

check_parking_migrations() {
  local p=dbops/parking-migrations:6
  new_ctr "$p"
  expect "parking-migrations: sh + cp copy /flyway/sql (as 65532)" 'release-6' \
    run --user 65532:65532 "$CTR" -- sh -c 'cp -r /flyway/sql /tmp/copy && ls -R /tmp/copy'
}

ALL=(debian python busybox pause coredns postgres flyway migration-operator parking-gateway parking-migrations)
names=("$@")
((${#names[@]})) || names=("${ALL[@]}")
pg_root=0
for n in "${names[@]}"; do
  case $n in
    postgres) [[ -n $PG_CTR ]] || check_postgres; pg_root=1 ;;
    flyway) [[ -n $PG_CTR ]] || check_postgres; check_flyway ;;  # flyway migrates the postgres check's server
    *) "check_${n//-/_}" ;;
  esac
done
stop_postgres
((pg_root == 0)) || check_postgres_root
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
