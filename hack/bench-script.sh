#!/usr/bin/env bash
# The production runbook's migration, by hand, with nothing around it: the floor `make bench` compares the
# operator's downtime with (issue 13). What an on-call engineer types, in order:
#
#   1. kubectl scale --replicas=0, then wait until the app's pods are gone   (maintenance mode, stop the app)
#   2. pg_dump -Fc, then pg_restore --list of the file                       (backup, verified readable)
#   3. flyway migrate with the runbook's safety flags                        (the operator's migrate Job's command
#                                                                             line: migration_operator/flyway.py)
#   4. kubectl scale back to the replicas it had, kubectl rollout status     (leave maintenance, app healthy)
#
# No preflight, no snapshots, no verification, no rollback: a failing step stops the script (set -e) and leaves
# the app down, as the runbook says (investigate, then restore by hand).
#
# Environment:
#   NAMESPACE, DEPLOYMENT        the app (required)
#   SELECTOR                     label selector of its pods (default: app=$DEPLOYMENT)
#   PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD   libpq's: the database, as the migration role (never in argv)
#   PGSSLMODE                    libpq's, also given to Flyway's JDBC URL (default: prefer)
#   MIGRATIONS_DIR               the Flyway SQL files (required)
#   DUMP_FILE                    where pg_dump writes (default: ./$PGDATABASE-<epoch>.dump)
#   DUMP_COMPRESSION             pg_dump --compress level 0-9 (default: pg_dump's own, as the runbook types it);
#                                `make bench` gives the operator's backup.compression, so both sides dump alike
#   KUBECTL, FLYWAY              the binaries (default: kubectl and flyway on PATH)
#   DRAIN_TIMEOUT, READY_TIMEOUT kubectl wait / rollout status timeouts (default 300s, 600s)
#
# Prints `bench-step <step> <start|end> <epoch seconds>` lines, which tests/bench.py reads (the steps: drain, backup,
# migrate, scale-up). Everything else it prints is the tools' own output.
set -euo pipefail

: "${NAMESPACE:?}" "${DEPLOYMENT:?}" "${MIGRATIONS_DIR:?}" "${PGHOST:?}" "${PGDATABASE:?}" "${PGUSER:?}"
: "${PGPASSWORD:?}"
PGPORT=${PGPORT:-5432}
PGSSLMODE=${PGSSLMODE:-prefer}
SELECTOR=${SELECTOR:-app=$DEPLOYMENT}
DUMP_FILE=${DUMP_FILE:-./$PGDATABASE-$(date +%s).dump}
KUBECTL=${KUBECTL:-kubectl}
FLYWAY=${FLYWAY:-flyway}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300s}
READY_TIMEOUT=${READY_TIMEOUT:-600s}
export PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE

mark() { printf 'bench-step %s %s %s\n' "$1" "$2" "$(date +%s.%N)"; }
k() { "$KUBECTL" -n "$NAMESPACE" "$@"; }

replicas=$(k get deployment "$DEPLOYMENT" -o jsonpath='{.spec.replicas}')
echo "== $DEPLOYMENT has $replicas replica(s)"

mark drain start
k scale deployment "$DEPLOYMENT" --replicas=0
k wait --for=delete pod -l "$SELECTOR" --timeout="$DRAIN_TIMEOUT"
mark drain end

mark backup start
compress=()
if [ -n "${DUMP_COMPRESSION:-}" ]; then compress=("--compress=$DUMP_COMPRESSION"); fi
pg_dump --format=custom --no-password "${compress[@]}" --file="$DUMP_FILE"
pg_restore --list "$DUMP_FILE" >/dev/null
echo "== backup: $(wc -c <"$DUMP_FILE" | tr -d ' ') bytes in $DUMP_FILE"
mark backup end

mark migrate start
# The login reaches Flyway through its environment, never its command line. The operator's flags, -outputType=json
# included: Flyway 12's text output costs ~0.5 s more per run here (measured), which would hand the operator a lead it
# did not earn. With JSON Flyway exits 0 when a migration fails, so the JSON says whether it did (as in the Job).
out=$(FLYWAY_URL="jdbc:postgresql://$PGHOST:$PGPORT/$PGDATABASE?sslmode=$PGSSLMODE" FLYWAY_USER="$PGUSER" \
  FLYWAY_PASSWORD="$PGPASSWORD" "$FLYWAY" \
  -baselineOnMigrate=false -validateOnMigrate=true -outOfOrder=false -cleanDisabled=true \
  -ignoreMigrationPatterns= \
  "-locations=filesystem:$MIGRATIONS_DIR" \
  -table=flyway_schema_history \
  -connectRetries=3 \
  -postgresql.transactional.lock=false \
  -outputType=json \
  migrate) || { printf '%s\n' "$out"; echo "== flyway migrate failed" >&2; exit 1; }
printf '%s\n' "$out"
if [ -z "$out" ] || grep -q -e '"error" *: *{' -e '"success" *: *false' <<<"$out"; then
  echo "== flyway migrate failed: the app stays down (runbook: investigate, restore)" >&2
  exit 1
fi
mark migrate end

mark scale-up start
k scale deployment "$DEPLOYMENT" --replicas="$replicas"
k rollout status deployment "$DEPLOYMENT" --timeout="$READY_TIMEOUT"
mark scale-up end
