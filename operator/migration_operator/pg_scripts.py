"""The shell scripts the PostgreSQL Jobs run (`sh -c`, postgres image), and the parsing of what they report.

Each script reports on stdout and in the termination message (at most 4 KiB):
  backup      pg_dump -Fc to the backup volume and a verification that reads the whole file back (as it is written,
              or after), before anything changes. `key=value` lines: verified, sizeBytes, tocEntries, path,
              readBack (streamed or file), freeBytes, and with DUMP_SCHEMAS
              schemas / absentSchemas; on failure verified=false and error=<why>: <stderr tail>.
  restore     the dump put back in place of what the failed migration left. restored=true, path, schemas,
              droppedSchemas; on failure a message whose first line says why (and that nothing was changed).
  compensate  the user's compensating SQL in one transaction
The scripts take every input from the environment (never from their command line), so no value of the spec is
ever pasted into a shell. Environment of backup and restore:
  PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD PGSSLMODE PGAPPNAME   libpq's: the database, as the migration role
  BACKUP_FILE      the dump's file name on the backup volume (required)
  BACKUP_DIR       where the backup volume is mounted (default /backup)
  TERMINATION_LOG  where the result is written for Kubernetes (default /dev/termination-log; at most 4 KiB)
  DUMP_SCHEMAS     optional, space-separated schema names (exact names, any case; no white space inside a name):
                   the schemas the run may touch. The backup dumps only those (each passed to pg_dump as a quoted,
                   literal --schema pattern; the ones that do not exist yet are reported in absentSchemas) and the
                   restore puts back only those. Empty or unset: the whole database as the role sees it.
  DROP_SCHEMAS     restore only, optional, space-separated: schemas that did not exist before the run and that the
                   failed migration created; dropped (CASCADE) in the restore's transaction. The restore never drops
                   a schema it is not told to: one that exists, is in its scope (every schema without DUMP_SCHEMAS)
                   and that the dump does not hold makes it refuse.
The restore must get the backup's DUMP_SCHEMAS, or the `schemas` the backup reported (those of them that existed):
a dump does not say how it was scoped, and an empty DUMP_SCHEMAS means the whole database.
Backup only, optional: GO_SQL and GO_WAIT_SECONDS, the statement a pre-started backup runs first to wait for the
operator's go, and how long it keeps trying (gosignal.py).
The scripts also honour TMPDIR (their scratch directory is `mktemp -d`) and DB_WAIT_SECONDS (default 60: how long a
server that does not accept connections yet - a restart, crash recovery, a failover - is waited for before the first
statement; compensate then exits 2 having run nothing).

Restore design: in place, in ONE transaction, and only in the schemas the dump holds. Restoring into a new
database and swapping names (like Clone) was measured and ruled out by its constraints, not its speed (3 000 000
rows, 86 MB dump: 4-5 s in place, 3.8-4.3 s for pg_restore alone into a new database; tests/db/test_pg_scripts.py):
it needs CREATEDB and the database's ownership (the migration role often has neither), it cannot carry over what a
pg_dump by that role does not hold (database settings and ACLs, other apps' schemas, extension schemas, event
triggers, publications, subscriptions), and the swap needs every session of the database closed. Nor would it be
faster here: what bounds a restore is one backend's COPY of the biggest table, which no `-j` splits (5 000 000
rows, one big table, 2 cores: one transaction 13.1-14.0 s, `pg_restore -j1` into a new database 12.8 s, `-j2`
15.8 s; the big table's COPY alone 10.9 s of it, and two sessions each copying half of it 5.9 s against 6.8 s for
one: `make bench` prints the same comparison). In place, the
restore keeps every schema that exists (so `public` keeps its owner - pg_database_owner or the role - its ACL, its
comment and its pg_init_privs baseline, and the second restore works like the first), drops the objects the
failed migration left in those schemas (never an extension's members), drops DROP_SCHEMAS, then replays the dump's
entries of those schemas only: no database-wide entry (extensions, large objects, publications, event triggers,
casts), except the global default privileges of a whole-database dump. The role's own default privileges are set
aside during the replay, so the objects get exactly the dumped ACLs; a schema's owner, ACL and comment are
rewritten only if the failed migration changed them. Everything, drops included, runs in one transaction that is
committed only once pg_restore has produced the whole script: any error leaves the database exactly as the failed
migration left it. Before it starts, the restore refuses, changing nothing, what the role could not do: objects in
those schemas owned by a role it is not a member of (or whose owner could not own them back), a schema it cannot
create in, a DROP_SCHEMAS schema it does not own, an object outside those schemas that depends on one inside (it
would be dropped with it), a schema in its scope that the dump does not hold and DROP_SCHEMAS does not list.
Left as the failed migration left them: large objects, extensions and what is outside the scope; with
DUMP_SCHEMAS also the role's global default privileges (a scoped dump does not hold them), and a publication's
membership of a table in scope is a reason to refuse (the restore would drop it and a scoped dump cannot put it
back). What PostgreSQL cannot promise through pg_dump: a generated column is recomputed on restore (same value
unless its function changed since the rows were written), and an object ACL spelled out equal to its owner's
default comes back as "no ACL" (same privileges).
RESTORE_PROBLEMS_QUERY / restore_problems() are the same checks for the operator's preflight.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# Every script: a restart of the server is waited out before its first statement.
_WAIT_FOR_SERVER = r"""
# A restart or failover of the server (crash recovery: "the database system is starting up", or nobody listening
# for a few seconds) is waited out for DB_WAIT_SECONDS (default 60) before the first statement: nothing has been
# sent yet, so waiting is always safe. pg_isready exits 0 when the server accepts connections, 1 while it refuses
# them (starting up), 2 when nothing answers, 3 when the connection parameters are wrong (not worth waiting for).
wait_for_server() {
  until_s=$(( $(date +%s) + ${DB_WAIT_SECONDS:-60} ))
  while :; do
    pg_isready -q -t 2 >/dev/null 2>&1
    case $? in 0) return 0 ;; 3) return 1 ;; esac
    [ "$(date +%s)" -lt "$until_s" ] || return 1
    sleep 1
  done
}
"""

_PRELUDE = (
    r"""set -u
set -f
D="${BACKUP_DIR:-/backup}"
TL="${TERMINATION_LOG:-/dev/termination-log}"
F="$D/${BACKUP_FILE:-}"
"""
    + _WAIT_FOR_SERVER
)
# Both backup and restore: strict variables, no globbing, where the volume, the dump and the termination message
# are (above), and the wait for the server.

# ---------------------------------------------------------------------------------------------------------------
# backup

BACKUP_SCRIPT = (
    _PRELUDE
    + r"""W=$(mktemp -d) || { printf 'verified=false\nerror=cannot create a scratch directory\n'; exit 1; }
trap 'rm -rf "$W"' EXIT
: >"$W/err"
fail() {
  rm -f "$F.partial"
  { printf 'verified=false\nerror=%s' "$1"
    if [ -s "$W/err" ]; then printf ': '; tail -c 2500 "$W/err"; fi
    printf '\n'; } >"$W/message"
  cat "$W/message"; head -c 4096 "$W/message" >"$TL"; exit 1
}
free_kib() { df -Pk "$D" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
[ -n "${BACKUP_FILE:-}" ] || fail "BACKUP_FILE is not set"
{ [ -d "$D" ] && [ -w "$D" ]; } || fail "the backup volume $D is missing or not writable"
rm -f "$F.partial"
wait_for_server || fail "the database server did not accept connections within ${DB_WAIT_SECONDS:-60}s"
if [ -n "${GO_SQL:-}" ]; then
  # a pre-started backup (maintenance.prestartMigration): nothing is read before the operator's go (gosignal.py);
  # the wait is one statement, tried again while the server restarts, until GO_WAIT_SECONDS
  go_until=$(( $(date +%s) + ${GO_WAIT_SECONDS:-600} ))
  until psql -X -q -v ON_ERROR_STOP=1 -c "$GO_SQL" >/dev/null 2>"$W/err"; do
    [ "$(date +%s)" -lt "$go_until" ] || fail "no go for this pre-started backup within ${GO_WAIT_SECONDS:-600}s"
    sleep 1
    wait_for_server || :
  done
  : >"$W/err"
fi
set --
dumped=""
absent=""
if [ -n "$(printf '%s' "${DUMP_SCHEMAS:-}" | tr -d ' \t\n')" ]; then
  psql -X -A -t -q -v ON_ERROR_STOP=1 -v names="$DUMP_SCHEMAS" >"$W/existing" 2>"$W/err" <<'EOF' \
    || fail "cannot read the schemas of DUMP_SCHEMAS"
SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY (regexp_split_to_array(btrim(:'names'), '\s+'));
EOF
  for s in $DUMP_SCHEMAS; do
    if grep -qxF -e "$s" "$W/existing"; then
      # a quoted pattern: exact name, case kept, no wildcard
      set -- "$@" "--schema=\"$(printf '%s' "$s" | sed 's/"/""/g')\""
      dumped="$dumped${dumped:+ }$s"
    else
      absent="$absent${absent:+ }$s"
    fi
  done
  # none exists yet (a new app's first run): a valid archive that holds no schema
  [ $# -gt 0 ] || set -- "--exclude-schema=*" --schema-only --no-blobs --no-publications --no-subscriptions
fi
# gzip level: 1 by default (about twice pg_dump's own default's speed for a file ~11% bigger: issue 13)
case "${BACKUP_COMPRESSION:-1}" in [0-9]) ;; *) fail "BACKUP_COMPRESSION must be a digit 0-9" ;; esac
set -- --format=custom --compress="${BACKUP_COMPRESSION:-1}" --no-password --file="$F.partial" "$@"
# The full read-back (every data block decompressed: what catches a dump cut short, which `pg_restore --list`
# accepts) follows the file as pg_dump writes it, on the other CPU, instead of starting after it: GNU tail follows
# the growing file until pg_dump exits, dd counts the bytes it passed on. That read counts only if it read exactly
# the file as it is now (the same size; pg_dump's last write rewrites the table of contents in place, read again by
# --list below); otherwise - no GNU tail (busybox), a follower that failed, a file changed after - the whole file is
# read back after the dump, as before.
streamed=""
if tail --version 2>/dev/null | grep -q GNU; then
  pg_dump "$@" 2>"$W/err" &
  dump=$!
  if tail -F --pid="$dump" -s 0.1 -c +1 "$F.partial" 2>/dev/null | dd bs=65536 2>"$W/dd" \
    | pg_restore --file=/dev/null 2>/dev/null; then
    streamed=$(sed -n 's/^\([0-9][0-9]*\) bytes.*/\1/p' "$W/dd" | tail -n 1)
  fi
  wait "$dump"
  dumped_rc=$?
else
  pg_dump "$@" 2>"$W/err"
  dumped_rc=$?
fi
if [ "$dumped_rc" -ne 0 ]; then
  rm -f "$F.partial"
  if grep -qi 'no space left on device' "$W/err"; then
    fail "the backup volume is full ($(free_kib) KiB free once the partial dump is removed): pg_dump failed"
  fi
  fail "pg_dump failed"
fi
pg_restore --list "$F.partial" >"$W/toc" 2>"$W/err" || fail "pg_restore --list cannot read the dump"
size=$(wc -c <"$F.partial" | tr -d ' ')
if [ -n "$streamed" ] && [ "$streamed" = "$size" ]; then
  read_back=streamed
else
  pg_restore --file=/dev/null "$F.partial" 2>"$W/err" || fail "the dump does not read back whole (pg_restore)"
  read_back=file
fi
entries=$(grep -c '^[0-9][0-9]*;' "$W/toc" || true)
[ "$size" -gt 0 ] || fail "the dump is empty"
mv -f "$F.partial" "$F" 2>"$W/err" || fail "cannot rename the dump"
free=$(free_kib)
{ printf 'verified=true\nsizeBytes=%s\ntocEntries=%s\npath=%s\nreadBack=%s\n' "$size" "$entries" "$BACKUP_FILE" \
    "$read_back"
  if [ -n "$(printf '%s' "${DUMP_SCHEMAS:-}" | tr -d ' \t\n')" ]; then
    printf 'schemas=%s\nabsentSchemas=%s\n' "$dumped" "$absent"
  fi
  if [ -n "$free" ]; then printf 'freeBytes=%s\n' "$((free * 1024))"; fi
} >"$W/message"
cat "$W/message"; head -c 4096 "$W/message" >"$TL"
"""
)

# ---------------------------------------------------------------------------------------------------------------
# SQL shared by the preflight query and the restore script

# Every object that lives in a schema: catalog, oid, schema, owner (NULL: owned through its table or type).
_OBJECTS = """
  SELECT 'pg_class'::regclass AS classid, oid AS objid, relnamespace AS nsp, relowner AS owner FROM pg_class
  UNION ALL SELECT 'pg_type'::regclass, oid, typnamespace, typowner FROM pg_type
  UNION ALL SELECT 'pg_proc'::regclass, oid, pronamespace, proowner FROM pg_proc
  UNION ALL SELECT 'pg_constraint'::regclass, oid, connamespace, NULL FROM pg_constraint
  UNION ALL SELECT 'pg_collation'::regclass, oid, collnamespace, collowner FROM pg_collation
  UNION ALL SELECT 'pg_conversion'::regclass, oid, connamespace, conowner FROM pg_conversion
  UNION ALL SELECT 'pg_operator'::regclass, oid, oprnamespace, oprowner FROM pg_operator
  UNION ALL SELECT 'pg_opclass'::regclass, oid, opcnamespace, opcowner FROM pg_opclass
  UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfnamespace, opfowner FROM pg_opfamily
  UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgnamespace, cfgowner FROM pg_ts_config
  UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictnamespace, dictowner FROM pg_ts_dict
  UNION ALL SELECT 'pg_ts_parser'::regclass, oid, prsnamespace, NULL FROM pg_ts_parser
  UNION ALL SELECT 'pg_ts_template'::regclass, oid, tmplnamespace, NULL FROM pg_ts_template
  UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, stxnamespace, stxowner FROM pg_statistic_ext
"""

# An object the restore drops by name: not a member of an extension, not a part of another object (a table's
# row type or index, an array type, a serial's sequence, a constraint: they go with their owner).
_TOP_LEVEL = """o.classid <> 'pg_constraint'::regclass
    AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = o.classid AND e.objid = o.objid AND e.objsubid = 0
                    AND e.deptype IN ('e', 'i', 'a'))"""

_NOT_EXTENSION_MEMBER = """NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = {c} AND e.objid = {o}
                                  AND e.deptype = 'e')"""

# The schema (oid) of the object a pg_depend row names as dependent; NULL for objects outside schemas.
_DEPENDENT_SCHEMA = """CASE d.classid
      WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = d.objid)
      WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.objid)
      WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.objid)
      WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = d.objid)
      WHEN 'pg_trigger'::regclass THEN
        (SELECT c.relnamespace FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
      WHEN 'pg_rewrite'::regclass THEN
        (SELECT c.relnamespace FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
      WHEN 'pg_policy'::regclass THEN
        (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
      WHEN 'pg_attrdef'::regclass THEN
        (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
      WHEN 'pg_amop'::regclass THEN
        (SELECT f.opfnamespace FROM pg_amop a JOIN pg_opfamily f ON f.oid = a.amopfamily WHERE a.oid = d.objid)
      WHEN 'pg_amproc'::regclass THEN
        (SELECT f.opfnamespace FROM pg_amproc a JOIN pg_opfamily f ON f.oid = a.amprocfamily WHERE a.oid = d.objid)
      ELSE (SELECT n.oid FROM pg_namespace n
            WHERE n.nspname = (pg_identify_object(d.classid, d.objid, 0)).schema)
    END"""

RESTORE_PROBLEMS_QUERY = (
    """-- What would make a Restore impossible for current_user, one row each: (problem, schema, object, message).
-- %(schemas)s: the schemas the run may touch (DUMP_SCHEMAS, space-separated); NULL or '*' = the whole database.
-- %(drop_schemas)s: schemas the restore would drop (DROP_SCHEMAS), or ''.
WITH params AS (
  SELECT btrim(coalesce(%(schemas)s::text, '*')) = '*' AS whole,
         regexp_split_to_array(btrim(coalesce(%(schemas)s::text, '')), '\\s+') AS listed,
         regexp_split_to_array(btrim(coalesce(%(drop_schemas)s::text, '')), '\\s+') AS dropping
), user_schemas AS (
  SELECT n.oid, n.nspname, n.nspowner FROM pg_namespace n
  WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    AND """
    + _NOT_EXTENSION_MEMBER.format(c="'pg_namespace'::regclass", o="n.oid")
    + """
), restored AS (
  SELECT s.* FROM user_schemas s, params p
  WHERE (p.whole OR s.nspname = ANY (p.listed)) AND NOT s.nspname = ANY (p.dropping)
), dropped AS (
  SELECT n.oid, n.nspname, n.nspowner FROM pg_namespace n, params p WHERE n.nspname = ANY (p.dropping)
), touched AS (
  SELECT oid, nspname FROM restored UNION SELECT oid, nspname FROM dropped
), objects AS (
  SELECT o.*, t.nspname,
         NOT """
    + _NOT_EXTENSION_MEMBER.format(c="o.classid", o="o.objid")
    + """ AS member
  FROM ("""
    + _OBJECTS
    + """) o JOIN touched t ON t.oid = o.nsp
), problems AS (
  SELECT 'owner' AS problem, o.nspname AS schema, i.identity AS object,
         format('%%s %%s is owned by %%s: %%s cannot drop and recreate it (not a member of that role)',
                i.type, i.identity, quote_ident(pg_get_userbyid(o.owner)), quote_ident(current_user)) AS message
  FROM objects o, pg_identify_object(o.classid, o.objid, 0) i
  WHERE o.nsp IN (SELECT oid FROM restored) AND NOT o.member AND o.owner IS NOT NULL
    AND NOT pg_has_role(current_user, o.owner, 'USAGE')
    AND """
    + _TOP_LEVEL
    + """
  UNION ALL
  SELECT 'owner', o.nspname, i.identity,
         format('%%s %%s is owned by %%s, which lacks CREATE on schema %%I: the restore could not give it back',
                i.type, i.identity, quote_ident(pg_get_userbyid(o.owner)), o.nspname)
  FROM objects o, pg_identify_object(o.classid, o.objid, 0) i
  WHERE o.nsp IN (SELECT oid FROM restored) AND NOT o.member AND o.owner IS NOT NULL
    AND pg_get_userbyid(o.owner) <> current_user AND NOT has_schema_privilege(o.owner, o.nsp, 'CREATE')
    AND """
    + _TOP_LEVEL
    + """
  UNION ALL
  SELECT 'read', n.nspname, format('%%I.%%I', n.nspname, c.relname),
         format('%%s cannot read %%s %%I.%%I (no SELECT privilege): pg_dump would fail',
                quote_ident(current_user), CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
                n.nspname, c.relname)
  FROM pg_class c JOIN restored n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'S') AND NOT has_table_privilege(c.oid, 'SELECT')
    AND """
    + _NOT_EXTENSION_MEMBER.format(c="'pg_class'::regclass", o="c.oid")
    + """
  UNION ALL
  SELECT 'schema', n.nspname, quote_ident(n.nspname),
         format('%%s lacks %%s on schema %%I (owned by %%s): it could not dump it or create its objects back',
                quote_ident(current_user),
                concat_ws(' and ', CASE WHEN NOT has_schema_privilege(n.oid, 'USAGE') THEN 'USAGE' END,
                                   CASE WHEN NOT has_schema_privilege(n.oid, 'CREATE') THEN 'CREATE' END),
                n.nspname, quote_ident(pg_get_userbyid(n.nspowner)))
  FROM restored n
  WHERE NOT (has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE'))
    AND EXISTS (SELECT FROM objects o WHERE o.nsp = n.oid AND NOT o.member AND """
    + _TOP_LEVEL
    + """)
  UNION ALL
  SELECT 'drop', n.nspname, quote_ident(n.nspname),
         format('schema %%I is owned by %%s: %%s cannot drop it', n.nspname,
                quote_ident(pg_get_userbyid(n.nspowner)), quote_ident(current_user))
  FROM dropped n WHERE NOT pg_has_role(current_user, n.nspowner, 'USAGE')
  UNION ALL
  SELECT 'dependent', coalesce(dn.nspname, ''), di.identity,
         format('%%s %%s depends on %%s %%s: the restore would drop it too', di.type, di.identity, ri.type,
                ri.identity)
  FROM pg_depend d
  JOIN objects r ON r.classid = d.refclassid AND r.objid = d.refobjid AND NOT r.member
  CROSS JOIN LATERAL (SELECT """
    + _DEPENDENT_SCHEMA
    + """ AS nsp) ds
  LEFT JOIN pg_namespace dn ON dn.oid = ds.nsp
  CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) di
  CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, 0) ri
  CROSS JOIN params p
  WHERE d.deptype IN ('n', 'a')
    AND (ds.nsp IS NULL OR ds.nsp NOT IN (SELECT oid FROM touched))
    -- a whole-database dump puts a table back in its publications (ALTER PUBLICATION: the owner's right)
    AND NOT (p.whole AND d.classid = 'pg_publication_rel'::regclass
             AND pg_has_role(current_user, (SELECT b.pubowner FROM pg_publication_rel pr
                                            JOIN pg_publication b ON b.oid = pr.prpubid WHERE pr.oid = d.objid),
                             'USAGE'))
    AND """
    + _NOT_EXTENSION_MEMBER.format(c="d.classid", o="d.objid")
    + """
)
SELECT DISTINCT problem, schema, object, message FROM problems ORDER BY problem, schema, object, message"""
)
"""The preflight check of a Restore, for psycopg: `conn.execute(RESTORE_PROBLEMS_QUERY, {"schemas": ...,
"drop_schemas": ""}).fetchall()`, as the migration role, then restore_problems(rows). `schemas` is DUMP_SCHEMAS
(None for the whole database). Rows: (problem, schema, object, message); problem is one of
  owner      an object the restore must drop and recreate is owned by a role current_user is not a member of
  read       a table or sequence current_user cannot SELECT (pg_dump would fail)
  schema     a schema without USAGE and CREATE for current_user
  drop       a schema of drop_schemas current_user does not own
  dependent  an object outside the schemas depends on one inside (a view, a foreign key, a column of that type,
             a trigger, a cast; a table's membership of a publication when schemas are listed, or when the
             publication's owner is not a role of current_user's): the restore would drop it
No row: the restore can run."""


def restore_problems(rows: Iterable[Sequence[Any]]) -> list[str]:
    """The messages of RESTORE_PROBLEMS_QUERY's rows, once each, in order; empty when the restore can run."""
    messages: list[str] = []
    for row in rows:
        message = str(row[-1])
        if message not in messages:
            messages.append(message)
    return messages


def _psql(query: str) -> str:
    """A psycopg-style query as psql reads it (psql variables instead of parameters)."""
    return re.sub(r"%\((\w+)\)s", r":'\1'", query).replace("%%", "%")


# ---------------------------------------------------------------------------------------------------------------
# restore


def _acl_diff(current: str, target: str, prefix: str, on: str) -> str:
    """A query of the GRANT/REVOKE statements that turn ACL `current` into `target`, in an order that rebuilds
    target's items in target's order. `prefix` and `on` are SQL text expressions: the statement's head ('' or
    'ALTER DEFAULT PRIVILEGES FOR ROLE r IN SCHEMA s ') and its object ('ON SCHEMA s', 'ON TABLES')."""
    grantee = "CASE WHEN {a}.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid({a}.grantee)) END"
    current, target = (f"nullif({acl}, '{{}}'::aclitem[])" for acl in (current, target))  # aclexplode('{}') fails
    return f"""SELECT acl_sql FROM (
      SELECT 1 AS step, 0::bigint AS ord,
             format('%sREVOKE %s %s FROM %s CASCADE', {prefix}, c.privilege_type, {on},
                    {grantee.format(a="c")}) AS acl_sql
      FROM aclexplode({current}) c
      WHERE NOT EXISTS (SELECT FROM aclexplode({target}) t
                        WHERE t.grantee = c.grantee AND t.privilege_type = c.privilege_type)
      UNION ALL
      SELECT 2, 0, format('%sREVOKE GRANT OPTION FOR %s %s FROM %s CASCADE', {prefix}, c.privilege_type, {on},
                          {grantee.format(a="c")})
      FROM aclexplode({current}) c JOIN aclexplode({target}) t
        ON t.grantee = c.grantee AND t.privilege_type = c.privilege_type
      WHERE c.is_grantable AND NOT t.is_grantable
      UNION ALL
      SELECT 3, t.ord, format('%sGRANT %s %s TO %s%s', {prefix}, t.privilege_type, {on}, {grantee.format(a="t")},
                              CASE WHEN t.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
      FROM aclexplode({target}) WITH ORDINALITY AS t(grantor, grantee, privilege_type, is_grantable, ord)
      WHERE NOT EXISTS (SELECT FROM aclexplode({current}) c
                        WHERE c.grantee = t.grantee AND c.privilege_type = t.privilege_type
                          AND (c.is_grantable OR NOT t.is_grantable))
    ) diff ORDER BY step, ord"""


_DEFACL_KEYWORD = (
    "CASE {t} WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' "
    "ELSE 'SCHEMAS' END"
)
_DEFACL_DEFAULT = "acldefault(CASE {t} WHEN 'S' THEN 's' ELSE {t} END::\"char\", {role})"

# Which schemas the restore keeps, creates and drops; what it must leave to the extensions. Lines `kind name`.
_RESTORE_PLAN = """WITH p AS (
  SELECT btrim(:'dump_schemas') = '' AS whole,
         regexp_split_to_array(btrim(:'dump_schemas'), '\\s+') AS listed,
         regexp_split_to_array(btrim(:'dumped'), '\\s+') AS dumped,
         regexp_split_to_array(btrim(:'drop_schemas'), '\\s+') AS dropping
), now AS (
  SELECT n.oid, n.nspname FROM pg_namespace n
  WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    AND """ + _NOT_EXTENSION_MEMBER.format(c="'pg_namespace'::regclass", o="n.oid") + """
)
SELECT 'problem', format('schema %I is listed in DROP_SCHEMAS, but the backup holds it', d)
FROM p, unnest(p.dropping) d WHERE d <> '' AND d = ANY (p.dumped)
UNION ALL
SELECT 'problem', format('schema %I exists but the backup does not hold it (it did not exist when the backup was '
                         'taken, or the backup had other DUMP_SCHEMAS): list it in DROP_SCHEMAS to drop it', n.nspname)
FROM now n, p
WHERE (p.whole OR n.nspname = ANY (p.listed)) AND NOT n.nspname = ANY (p.dumped) AND NOT n.nspname = ANY (p.dropping)
  AND NOT (p.whole AND n.nspname = 'public')
UNION ALL
SELECT 'keep', n.nspname FROM now n, p
WHERE (n.nspname = ANY (p.dumped) OR (p.whole AND n.nspname = 'public')) AND NOT n.nspname = ANY (p.dropping)
UNION ALL
SELECT 'create', d FROM p, unnest(p.dumped) d
WHERE d <> '' AND NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = d)
UNION ALL
SELECT 'drop', n.nspname FROM now n, p WHERE n.nspname = ANY (p.dropping)
UNION ALL
SELECT 'member', rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER')
UNION ALL
SELECT 'extrel', n.nspname || ' ' || c.relname FROM pg_class c JOIN now n ON n.oid = c.relnamespace
WHERE NOT """ + _NOT_EXTENSION_MEMBER.format(c="'pg_class'::regclass", o="c.oid") + """;
"""

# Opens the restore's transaction: drops DROP_SCHEMAS, sets the role's global default privileges aside (saved in
# a transaction-local setting), clears the default privileges and the objects of the kept schemas.
_RESTORE_PRE = (
    """\\set ON_ERROR_STOP 1
SET search_path = pg_catalog;
BEGIN;
SET LOCAL client_min_messages = warning;
SET LOCAL statement_timeout = 0;
SELECT set_config('migration_operator.keep', :'keep', true), set_config('migration_operator.drop', :'drop', true),
       set_config('migration_operator.whole', :'whole', true);
DO $mo$
DECLARE
  s text;
BEGIN
  FOREACH s IN ARRAY regexp_split_to_array(btrim(current_setting('migration_operator.drop')), '\\s+') LOOP
    CONTINUE WHEN s = '';
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s);
  END LOOP;
END $mo$;
DO $mo$
DECLARE
  me oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
  keep text[] := regexp_split_to_array(btrim(current_setting('migration_operator.keep')), '\\s+');
  whole boolean := current_setting('migration_operator.whole') = 'on';
  r record;
  stmt text;
BEGIN
  -- The role's global default privileges would apply to every object the replay creates: set them aside, and
  -- put them back at the end. A whole-database dump holds the global default privileges: those of every role it
  -- may change are cleared, and the dump's entries put them back.
  PERFORM set_config('migration_operator.default_acl',
    coalesce((SELECT json_agg(json_build_object('t', defaclobjtype, 'acl', defaclacl::text))::text
              FROM pg_default_acl WHERE defaclrole = me AND defaclnamespace = 0 AND NOT whole), '[]'), true);
  FOR r IN SELECT defaclobjtype AS t, defaclacl AS acl, defaclrole AS role FROM pg_default_acl
           WHERE defaclnamespace = 0
             AND CASE WHEN whole THEN pg_has_role(current_user, defaclrole, 'MEMBER') ELSE defaclrole = me END
  LOOP
    FOR stmt IN """
    + _acl_diff(
        "r.acl",
        _DEFACL_DEFAULT.format(t="r.t", role="r.role"),
        "'ALTER DEFAULT PRIVILEGES FOR ROLE ' || quote_ident(pg_get_userbyid(r.role)) || ' '",
        "'ON ' || " + _DEFACL_KEYWORD.format(t="r.t"),
    )
    + """ LOOP
      EXECUTE stmt;
    END LOOP;
  END LOOP;
  -- the kept schemas' own default privileges (of the roles it may change): the dump's entries put them back
  FOR r IN SELECT d.defaclobjtype AS t, d.defaclacl AS acl, pg_get_userbyid(d.defaclrole) AS role, n.nspname AS nsp
           FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
           WHERE n.nspname = ANY (keep) AND pg_has_role(current_user, d.defaclrole, 'MEMBER') LOOP
    FOR stmt IN """
    + _acl_diff(
        "r.acl",
        "NULL::aclitem[]",
        "format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I ', r.role, r.nsp)",
        "'ON ' || " + _DEFACL_KEYWORD.format(t="r.t"),
    )
    + """ LOOP
      EXECUTE stmt;
    END LOOP;
  END LOOP;
END $mo$;
DO $mo$
DECLARE
  keep text[] := regexp_split_to_array(btrim(current_setting('migration_operator.keep')), '\\s+');
  drops text[];
  stmt text;
  left_over text;
BEGIN
  SELECT array_agg(format('DROP %s IF EXISTS %s CASCADE',
                          CASE i.type WHEN 'statistics object' THEN 'STATISTICS' ELSE upper(i.type) END, i.identity))
    INTO drops
  FROM ("""
    + _OBJECTS
    + """) o JOIN pg_namespace n ON n.oid = o.nsp, pg_identify_object(o.classid, o.objid, 0) i
  WHERE n.nspname = ANY (keep) AND """
    + _TOP_LEVEL
    + """;
  FOREACH stmt IN ARRAY coalesce(drops, '{}') LOOP
    IF stmt !~ ('^DROP (TABLE|VIEW|MATERIALIZED VIEW|FOREIGN TABLE|SEQUENCE|TYPE|DOMAIN|FUNCTION|PROCEDURE|'
                'AGGREGATE|COLLATION|CONVERSION|OPERATOR|OPERATOR CLASS|OPERATOR FAMILY|TEXT SEARCH '
                '(CONFIGURATION|DICTIONARY|PARSER|TEMPLATE)|STATISTICS) IF EXISTS ') THEN
      RAISE EXCEPTION 'the restore does not know how to drop this object: %', stmt;
    END IF;
    EXECUTE stmt;
  END LOOP;
  SELECT string_agg(i.type || ' ' || i.identity, ', ') INTO left_over
  FROM ("""
    + _OBJECTS
    + """) o JOIN pg_namespace n ON n.oid = o.nsp, pg_identify_object(o.classid, o.objid, 0) i
  WHERE n.nspname = ANY (keep) AND """
    + _TOP_LEVEL
    + """;
  IF left_over IS NOT NULL THEN
    RAISE EXCEPTION 'could not clear the schemas before the replay: % remain', left_over;
  END IF;
END $mo$;
"""
)

# One kept schema's owner, ACL and comment, as the dump says, kept untouched unless the failed migration changed
# them (then rebuilt from pg_dump's baseline - pg_init_privs or the owner's default - plus the dump's ACL
# commands). A change the role has no right to make is one the failed migration, as that role, could not have
# made: it is left as it is. Filled in by the script: @S@ the schema, @OWNER@ its dumped owner (literals), @SQL@
# the dump's ACL and COMMENT statements of the schema (an EXECUTE, or nothing).
_SCHEMA_META = (
    """DO $mo$
DECLARE
  s text := @S@;
  want text := @OWNER@;
  nsp oid := (SELECT oid FROM pg_namespace WHERE nspname = @S@);
  before text[];
  after text[];
  cur aclitem[];
  tgt aclitem[];
  stmt text;
BEGIN
  SELECT ARRAY[nspowner::text, coalesce(obj_description(oid, 'pg_namespace'), '-')]
         || ARRAY(SELECT a::text FROM aclexplode(nullif(coalesce(nspacl, acldefault('n', nspowner)), '{}')) a
                  ORDER BY 1)
    INTO before FROM pg_namespace WHERE oid = nsp;
  BEGIN
    IF (SELECT nspowner FROM pg_namespace WHERE oid = nsp) IS DISTINCT FROM
       (SELECT oid FROM pg_roles WHERE rolname = want) THEN
      EXECUTE format('ALTER SCHEMA %I OWNER TO %I', s, want);
    END IF;
    -- pg_dump's baseline: initdb's ACL of the schema (pg_init_privs: public) as ALTER SCHEMA OWNER leaves it,
    -- else the owner's default
    SELECT coalesce(n.nspacl, acldefault('n', n.nspowner)),
           coalesce((SELECT array_agg(makeaclitem(
                               CASE WHEN a.grantee = 'pg_database_owner'::regrole THEN n.nspowner ELSE a.grantee END,
                               CASE WHEN a.grantor = 'pg_database_owner'::regrole THEN n.nspowner ELSE a.grantor END,
                               a.privilege_type, a.is_grantable) ORDER BY a.ord)
                     FROM aclexplode(i.initprivs) WITH ORDINALITY AS a(grantor, grantee, privilege_type,
                                                                        is_grantable, ord)),
                    acldefault('n', n.nspowner))
      INTO cur, tgt
    FROM pg_namespace n
    LEFT JOIN pg_init_privs i ON i.objoid = n.oid AND i.classoid = 'pg_namespace'::regclass AND i.objsubid = 0
    WHERE n.oid = nsp;
    FOR stmt IN """
    + _acl_diff("cur", "tgt", "''", "'ON SCHEMA ' || quote_ident(s)")
    + """ LOOP
      EXECUTE stmt;
    END LOOP;
@SQL@
    SELECT ARRAY[nspowner::text, coalesce(obj_description(oid, 'pg_namespace'), '-')]
           || ARRAY(SELECT a::text FROM aclexplode(nullif(coalesce(nspacl, acldefault('n', nspowner)), '{}')) a
                    ORDER BY 1)
      INTO after FROM pg_namespace WHERE oid = nsp;
    IF after = before THEN
      RAISE SQLSTATE 'MOSAM';  -- unchanged: undo the rewrite, so even the ACL's exact form stays
    END IF;
  EXCEPTION
    WHEN SQLSTATE 'MOSAM' OR insufficient_privilege THEN NULL;
  END;
END $mo$;
"""
)

# Puts the role's global default privileges back as they were when the restore started, then commits.
_RESTORE_POST = (
    """DO $mo$
DECLARE
  me oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
  r record;
  stmt text;
BEGIN
  FOR r IN SELECT x.t, x.acl::aclitem[] AS acl
           FROM json_to_recordset(current_setting('migration_operator.default_acl')::json) AS x(t "char", acl text)
  LOOP
    FOR stmt IN """
    + _acl_diff(
        _DEFACL_DEFAULT.format(t="r.t", role="me"),
        "r.acl",
        "'ALTER DEFAULT PRIVILEGES FOR ROLE ' || quote_ident(current_user) || ' '",
        "'ON ' || " + _DEFACL_KEYWORD.format(t="r.t"),
    )
    + """ LOOP
      EXECUTE stmt;
    END LOOP;
  END LOOP;
END $mo$;
"""
)

RESTORE_SCRIPT = (
    _PRELUDE
    + r"""W=$(mktemp -d) || { echo 'restore failed: cannot create a scratch directory'; exit 1; }
trap 'rm -rf "$W"' EXIT
: >"$W/err"
fail() {
  { printf '%s' "$1"; if [ -s "$W/err" ]; then printf ':\n'; tail -c 3000 "$W/err"; fi; printf '\n'; } >"$W/message"
  cat "$W/message"; head -c 4096 "$W/message" >"$TL"; exit 1
}
lit() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }
[ -n "${BACKUP_FILE:-}" ] || fail "restore refused: BACKUP_FILE is not set"
[ -s "$F" ] || fail "restore refused: backup file $BACKUP_FILE missing or empty on the backup volume"
pg_restore --list "$F" >"$W/toc" 2>"$W/err" || fail "restore refused: pg_restore --list cannot read the backup"
wait_for_server || fail "restore refused: the database server did not accept connections within ${DB_WAIT_SECONDS:-60}s"
# the schemas the dump holds, and their owners
awk '$4 == "SCHEMA" && $5 == "-" { if (NF != 7) { bad = 1; exit } print $6, $7 } END { exit bad }' \
  "$W/toc" >"$W/dumped" || fail "restore refused: the backup holds a schema or owner name with white space"
psql -X -A -t -q -F ' ' -v ON_ERROR_STOP=1 -v dump_schemas="${DUMP_SCHEMAS:-}" \
  -v dumped="$(cut -d ' ' -f 1 "$W/dumped" | tr '\n' ' ')" -v drop_schemas="${DROP_SCHEMAS:-}" \
  >"$W/plan" 2>"$W/err" <<'EOF' || fail "restore refused: cannot read the database's schemas"
@PLAN@EOF
for k in keep create drop member extrel problem; do sed -n "s/^$k //p" "$W/plan" >"$W/$k"; done
keep=$(tr '\n' ' ' <"$W/keep")
drop=$(tr '\n' ' ' <"$W/drop")
whole=on; scope='*'
if [ -n "$(printf '%s' "${DUMP_SCHEMAS:-}" | tr -d ' \t\n')" ]; then whole=off; scope="$keep"; fi
psql -X -A -t -q -v ON_ERROR_STOP=1 -v schemas="$scope" -v drop_schemas="$drop" \
  >>"$W/problem" 2>"$W/err" <<'EOF' || fail "restore refused: cannot check the role's privileges"
SELECT message FROM (@PROBLEMS@) problems;
EOF
if [ -s "$W/problem" ]; then
  cp "$W/problem" "$W/err"
  fail "restore refused, nothing was changed: $(wc -l <"$W/problem" | tr -d ' ') problem(s) for role ${PGUSER:-?}"
fi
# TOC lines of the schemas to create back (the failed migration dropped them): SCHEMA, and its ACL and COMMENT
# (names go through the environment: awk -v would interpret their backslashes)
names="$(cat "$W/create")" awk '
  function unq(s) { if (s ~ /^".*"$/) { s = substr(s, 2, length(s) - 2); gsub(/""/, "\"", s) } return s }
  BEGIN { n = split(ENVIRON["names"], a, "\n"); for (i = 1; i <= n; i++) want[a[i]] = 1 }
  ($4 == "SCHEMA" && $5 == "-" && ($6 in want)) ||
  (($4 == "ACL" || $4 == "COMMENT") && $5 == "-" && $6 == "SCHEMA" && (unq($7) in want))' "$W/toc" >"$W/create.list"
# TOC lines of everything inside the kept and created schemas, but the default privileges of roles it may not
# change and the data of extensions' tables
set --
while IFS= read -r s; do [ -z "$s" ] || set -- "$@" "--schema=$s"; done <<EOF
$(cat "$W/keep" "$W/create")
EOF
: >"$W/content.list"
if [ -s "$W/keep" ] || [ -s "$W/create" ]; then
  pg_restore --list "$@" "$F" 2>"$W/err" | members="$(cat "$W/member")" extrels="$(cat "$W/extrel")" awk '
    BEGIN { n = split(ENVIRON["members"], a, "\n"); for (i = 1; i <= n; i++) member[a[i]] = 1
            n = split(ENVIRON["extrels"], a, "\n"); for (i = 1; i <= n; i++) extrel[a[i]] = 1 }
    /^;/ { next }
    $4 == "DEFAULT" && $5 == "ACL" && !($NF in member) { next }
    (($4 == "TABLE" && $5 == "DATA") || ($4 == "SEQUENCE" && $5 == "SET")) && (($6 " " $7) in extrel) { next }
    { print }' >"$W/content.list" || fail "restore refused: pg_restore --list cannot read the backup"
fi
if [ "$whole" = on ]; then
  # a whole-database dump's global default privileges (of the roles it may change), last like pg_dump puts them
  members="$(cat "$W/member")" awk '
    BEGIN { n = split(ENVIRON["members"], a, "\n"); for (i = 1; i <= n; i++) member[a[i]] = 1 }
    $4 == "DEFAULT" && $5 == "ACL" && $6 == "-" && ($NF in member)' "$W/toc" >>"$W/content.list"
fi
# the kept schemas' owner, ACL and comment
cat <<'EOF' >"$W/meta.tpl"
@META@EOF
: >"$W/post.sql"
while IFS= read -r s; do
  [ -n "$s" ] || continue
  owner=$(s="$s" awk '$1 == ENVIRON["s"] { print $2 }' "$W/dumped")
  s="$s" awk '
    function unq(x) { if (x ~ /^".*"$/) { x = substr(x, 2, length(x) - 2); gsub(/""/, "\"", x) } return x }
    ($4 == "ACL" || $4 == "COMMENT") && $5 == "-" && $6 == "SCHEMA" && unq($7) == ENVIRON["s"]' "$W/toc" \
    >"$W/meta.list"
  : >"$W/meta.sql"
  if [ -s "$W/meta.list" ]; then
    pg_restore -L "$W/meta.list" --file=- "$F" 2>"$W/err" \
      | awk '/^-- PostgreSQL database dump complete/ { exit } /^-- Name: / { on = 1 } on' >"$W/meta.sql" \
      || fail "restore refused: pg_restore cannot read the backup"
    if grep -qF '$mo_sql$' "$W/meta.sql"; then fail "restore refused: schema $s has an unexpected ACL or comment"; fi
  fi
  : >"$W/meta.exec"
  if [ -s "$W/meta.sql" ]; then
    { printf '    EXECUTE $mo_sql$'; cat "$W/meta.sql"; printf '$mo_sql$;\n'; } >"$W/meta.exec"
  fi
  if ! grep -q '^[0-9]*; [0-9]* [0-9]* COMMENT - SCHEMA ' "$W/meta.list"; then
    # no comment in the dump: none, or public's default one (pg_dump leaves it out of a whole-database dump)
    c=NULL; if [ "$s" = public ] && [ "$whole" = on ]; then c="'standard public schema'"; fi
    printf "    EXECUTE format('COMMENT ON SCHEMA %%I IS %%L', s, %s);\n" "$c" >>"$W/meta.exec"
  fi
  sl=$(lit "$s" | sed 's/[&/\\]/\\&/g'); ol=$(lit "${owner:-pg_database_owner}" | sed 's/[&/\\]/\\&/g')
  sed -e "s/@S@/$sl/g" -e "s/@OWNER@/$ol/g" -e '/^@SQL@$/{' -e "r $W/meta.exec" -e 'd' -e '}' "$W/meta.tpl" \
    >>"$W/post.sql"
done <"$W/keep"
cat <<'EOF' >>"$W/post.sql"
@POST@EOF
cat <<'EOF' >"$W/pre.sql"
@PRE@EOF
rm -f "$W/failed.pg_restore"
: >"$W/err"
{
  cat "$W/pre.sql"
  # pg_restore's output is streamed into the open transaction; COMMIT is written only once pg_restore has
  # produced all of it. On a failure nothing more is written: psql ends, and the transaction rolls back.
  if [ -s "$W/create.list" ] && ! pg_restore -L "$W/create.list" --file=- "$F" 2>>"$W/err"; then
    : >"$W/failed.pg_restore"
  elif [ -s "$W/content.list" ] && ! pg_restore -L "$W/content.list" --file=- "$F" 2>>"$W/err"; then
    : >"$W/failed.pg_restore"
  else
    cat "$W/post.sql"
    echo 'COMMIT;'
  fi
} | psql -X -q -v ON_ERROR_STOP=1 -v keep="$keep" -v drop="$drop" -v whole="$whole" >"$W/out" 2>>"$W/err"
rc=$?
# pg_restore dies quietly of SIGPIPE when psql stopped first: then psql's error is the cause
if grep -q '^pg_restore: error' "$W/err"; then
  fail "restore failed, nothing was changed: pg_restore could not read the backup"
fi
[ "$rc" -eq 0 ] || fail "restore failed, nothing was changed (psql exit $rc)"
[ ! -e "$W/failed.pg_restore" ] || fail "restore failed, nothing was changed: pg_restore failed"
{ printf 'restored=true\npath=%s\nschemas=%s\ndroppedSchemas=%s\n' "$BACKUP_FILE" \
    "$(cat "$W/keep" "$W/create" | tr '\n' ' ' | sed 's/ $//')" "$(printf '%s' "$drop" | sed 's/ $//')"
} >"$W/message"
cat "$W/message"; head -c 4096 "$W/message" >"$TL"
"""
    .replace("@PLAN@", _RESTORE_PLAN)
    .replace("@PROBLEMS@", _psql(RESTORE_PROBLEMS_QUERY))
    .replace("@META@", _SCHEMA_META)
    .replace("@POST@", _RESTORE_POST)
    .replace("@PRE@", _RESTORE_PRE)
)

COMPENSATE_SCRIPT = (
    r"""set -u
TL="${TERMINATION_LOG:-/dev/termination-log}"
T="${TMPDIR:-/tmp}"
"""
    + _WAIT_FOR_SERVER
    + r"""
if [ -n "${COMPENSATE_FILE:-}" ]; then SQL=$(cat "$COMPENSATE_FILE") || exit 1; else SQL="${COMPENSATE_SQL:-}"; fi
# psql --command sends SQL to the server as it is: no meta-command (\! \o \set ...) is ever run, except a string
# that is one meta-command as a whole, which is refused here.
if [ "$(printf '%s' "$SQL" | tr -d ' \t\r\n' | head -c 1)" = '\' ]; then
  printf 'compensating SQL refused: it starts with a psql meta-command\n' >"$T/message"
  cat "$T/message"; head -c 4096 "$T/message" >"$TL"; exit 1
fi
if ! wait_for_server; then
  printf 'compensating SQL not run: the database server did not accept connections within %ss\n' \
    "${DB_WAIT_SECONDS:-60}" >"$T/message"
  cat "$T/message"; head -c 4096 "$T/message" >"$TL"; exit 2
fi
psql --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction --command="$SQL" >"$T/out" 2>"$T/err"
rc=$?
if [ "$rc" -ne 0 ]; then
  { printf 'compensating SQL failed (psql exit %s), rolled back: ' "$rc"
    tail -c 3000 "$T/err"; } >"$T/message"
else
  printf 'compensated=true\n' >"$T/message"
fi
cat "$T/message"; head -c 4096 "$T/message" >"$TL"
exit $rc
"""
)


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
    """The backup Job's result: verified, sizeBytes, tocEntries, path, error; and when reported freeBytes (free
    space left on the backup volume), readBack (how the whole dump was read back: "streamed" as pg_dump wrote it, or
    "file" after it), schemas and absentSchemas (lists; DUMP_SCHEMAS dumped / not there yet)."""
    values = parse_key_values(output)
    if not values:
        return None
    result: dict[str, Any] = {"verified": values.get("verified") == "true"}
    for key in ("sizeBytes", "tocEntries", "freeBytes"):
        if values.get(key, "").isdigit():
            result[key] = int(values[key])
    for key in ("path", "readBack"):
        if key in values:
            result[key] = values[key]
    for key in ("schemas", "absentSchemas"):
        if key in values:
            result[key] = values[key].split()
    if "error" in values:
        result["error"] = values["error"]
    if result["verified"] and not result.get("sizeBytes"):
        result.update(verified=False, error="the backup is empty")
    return result
