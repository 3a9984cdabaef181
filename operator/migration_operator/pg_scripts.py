"""The shell scripts the PostgreSQL Jobs run (`sh -c`, postgres image), and the parsing of what they report.

Each script reports `key=value` lines on stdout and in the termination message (at most 4 KiB):
  backup      pg_dump -Fc to the backup volume, then a verification of the file before anything changes
  restore     the dump replayed in place of what the failed migration left
  compensate  the user's compensating SQL in one transaction
The scripts take every input from the environment (never from their command line), so no value of the spec is
ever pasted into a shell.
"""

from __future__ import annotations

import re
from typing import Any

BACKUP_SCRIPT = r"""set -u
F="/backup/$BACKUP_FILE"
fail() {
  { printf 'verified=false\nerror=%s: ' "$1"; tail -c 2500 /tmp/err; } >/tmp/message
  cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log; exit 1
}
: >/tmp/err
rm -f "$F.partial"
pg_dump --format=custom --no-password --file="$F.partial" 2>/tmp/err || fail "pg_dump failed"
pg_restore --list "$F.partial" >/tmp/toc 2>/tmp/err || fail "pg_restore --list cannot read the dump"
size=$(wc -c <"$F.partial" | tr -d ' ')
entries=$(grep -vc '^;' /tmp/toc || true)
[ "$size" -gt 0 ] || fail "the dump is empty"
[ "$entries" -gt 0 ] || fail "the dump lists no entries"
mv -f "$F.partial" "$F" 2>/tmp/err || fail "cannot rename the dump"
printf 'verified=true\nsizeBytes=%s\ntocEntries=%s\npath=%s\n' "$size" "$entries" "$BACKUP_FILE" >/tmp/message
cat /tmp/message; cp /tmp/message /dev/termination-log
"""

# pg_restore --clean cannot remove what the failed migration *added* (a new table, a new FK onto an old
# table blocks the DROP of the old one). So: drop every user schema and replay the dump, all in ONE
# transaction that is committed only when pg_restore produced the whole script; any error rolls back to the
# migrated state (which Flyway left consistent) instead of leaving a half-restored database.
RESTORE_SCRIPT = r"""set -u
F="/backup/$BACKUP_FILE"
fail() {
  { printf '%s: ' "$1"; tail -c 3000 /tmp/err; } >/tmp/message
  cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log; exit 1
}
: >/tmp/err
[ -s "$F" ] || fail "backup file $BACKUP_FILE missing or empty on the backup volume"
pg_restore --list "$F" >/tmp/toc 2>/tmp/err || fail "pg_restore --list cannot read the backup"
if grep -Eq '^[0-9]+; [0-9]+ [0-9]+ SCHEMA - public ' /tmp/toc; then create_public=""; \
else create_public="CREATE SCHEMA public;"; fi
{
  echo "BEGIN;"
  echo "SET LOCAL client_min_messages = warning;"
  echo "DO \$drop\$ DECLARE s text; BEGIN"
  echo "  FOR s IN SELECT nspname FROM pg_namespace"
  echo "           WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP"
  echo "    EXECUTE format('DROP SCHEMA %I CASCADE', s);"
  echo "  END LOOP;"
  echo "END \$drop\$;"
  echo "$create_public"
  if pg_restore --file=- "$F" 2>>/tmp/err; then echo "COMMIT;"; else echo "ROLLBACK;"; echo "\\q"; fi
} | psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 >/tmp/out 2>>/tmp/err
rc=$?
grep -q "^pg_restore:" /tmp/err && fail "pg_restore failed"
[ "$rc" -eq 0 ] || fail "restore failed (psql exit $rc), nothing was changed"
printf 'restored=true\npath=%s\n' "$BACKUP_FILE" >/tmp/message
cat /tmp/message; cp /tmp/message /dev/termination-log
"""

COMPENSATE_SCRIPT = r"""set -u
if [ -n "${COMPENSATE_FILE:-}" ]; then cp "$COMPENSATE_FILE" /tmp/compensate.sql; \
else printf '%s\n' "$COMPENSATE_SQL" >/tmp/compensate.sql; fi
psql --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction --file=/tmp/compensate.sql >/tmp/out 2>/tmp/err
rc=$?
if [ "$rc" -ne 0 ]; then
  { printf 'compensating SQL failed (psql exit %s), rolled back: ' "$rc"
    tail -c 3000 /tmp/err; } >/tmp/message
else
  printf 'compensated=true\n' >/tmp/message
fi
cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log
exit $rc
"""


def parse_key_values(output: str | None) -> dict[str, str]:
    """`key=value` lines (the backup/restore Jobs' termination message); `error=` takes the rest."""
    values: dict[str, str] = {}
    if not output:
        return values
    lines = output.splitlines()
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key):
            continue
        if key == "error":
            values["error"] = "\n".join([value, *lines[index + 1 :]]).strip()
            break
        values[key] = value
    return values


def parse_backup_output(output: str | None) -> dict[str, Any] | None:
    values = parse_key_values(output)
    if not values:
        return None
    result: dict[str, Any] = {"verified": values.get("verified") == "true"}
    for key in ("sizeBytes", "tocEntries"):
        if values.get(key, "").isdigit():
            result[key] = int(values[key])
    if "path" in values:
        result["path"] = values["path"]
    if "error" in values:
        result["error"] = values["error"]
    if result["verified"] and not result.get("sizeBytes"):
        result.update(verified=False, error="the backup is empty")
    return result
