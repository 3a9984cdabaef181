"""The operator's own PostgreSQL queries (psycopg 3, async: the event loop never blocks).

Everything except the Clone operations runs in read-only sessions (`default_transaction_read_only=on`), so
preflight, dry runs, monitoring and verification cannot write. Every connection says
`application_name=migration-operator`, which is how drain and monitoring tell our sessions from the app's.

Every session has a 60 s `statement_timeout`, except the Clone operations' (CREATE DATABASE ... TEMPLATE copies the
whole database; its time grows with its size): theirs is the timeout of the phase that runs them (backup, rollback),
and a `lock_timeout` keeps them from queueing behind a transaction that holds the database; the next pass retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import constants, digests, pg_scripts, reasons
from .models import AppliedMigration, DatabaseMigrationSpec, Snapshot
from .observations import CloneObservation, DatabaseCheck, Session, Verification

CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT_MS = 60_000
# CREATE DATABASE / ALTER DATABASE ... RENAME: how long to wait for a lock on the database before giving up (and
# retrying at the next pass) instead of queueing behind whoever holds it.
CLONE_LOCK_TIMEOUT_MS = 10_000
# pg_database.datconnlimit of a database a DROP DATABASE was interrupted in (PostgreSQL >= 15.4, 16): half gone,
# nobody can connect to it; DROP DATABASE is the only thing it allows.
INVALID_DATABASE = -2
CHECKSUM_ROW_LIMIT = 200_000  # larger tables get a row count only
# Tables the planner estimates above this get the estimate (pg_class.reltuples), not count(*): counting millions of
# rows twice while the app is down costs seconds of downtime; the snapshot says which counts are estimates.
COUNT_ROW_LIMIT = 1_000_000
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    # PEM of the CA that signs the server's certificate (database.caSecret), for sslmode verify-ca/verify-full.
    ca_certificate: str | None = None

    def __repr__(self) -> str:  # never print a login, even in a traceback
        return "Credentials(username=***, password=***)"


def ca_file(pem: str) -> str:
    """A file holding `pem` (libpq reads the CA from a file): named by its content's hash, written once."""
    directory = Path(tempfile.gettempdir()) / "dbops-ca"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / (hashlib.sha256(pem.encode()).hexdigest()[:32] + ".crt")
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(pem)
        partial.replace(path)
    return str(path)


def conninfo(
    spec: DatabaseMigrationSpec,
    credentials: Credentials,
    *,
    dbname: str | None = None,
    read_only: bool = True,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
) -> dict[str, Any]:
    """libpq parameters; `statement_timeout_ms` None: the 60 s of every session (0 would be none at all)."""
    timeout = STATEMENT_TIMEOUT_MS if statement_timeout_ms is None else statement_timeout_ms
    options = f"-c statement_timeout={int(timeout)}"
    if lock_timeout_ms is not None:
        options += f" -c lock_timeout={int(lock_timeout_ms)}"
    if read_only:
        options += " -c default_transaction_read_only=on"
    params: dict[str, Any] = {
        "host": spec.database.host,
        "port": spec.database.port,
        "dbname": dbname or spec.database.name,
        "user": credentials.username,
        "password": credentials.password,
        "sslmode": spec.database.effective_ssl_mode,
        "application_name": constants.APPLICATION_NAME,
        "connect_timeout": CONNECT_TIMEOUT,
        "options": options,
    }
    if spec.database.require_auth_setting:
        params["require_auth"] = spec.database.require_auth_setting
    if credentials.ca_certificate:
        params["sslrootcert"] = ca_file(credentials.ca_certificate)
    return params


async def connect(
    spec: DatabaseMigrationSpec, credentials: Credentials, **session: Any
) -> psycopg.AsyncConnection[dict[str, Any]]:
    """An autocommit connection with dict rows; `session`: conninfo's keyword options (dbname, read_only, ...)."""
    return await psycopg.AsyncConnection.connect(
        **conninfo(spec, credentials, **session), autocommit=True, row_factory=dict_row
    )


def classify_connection_error(error: Exception) -> tuple[str, str]:
    """(reason, message) for a failed connection; the message is scrubbed (errors.scrub) before it reaches status."""
    state = getattr(error, "sqlstate", None)
    text = " ".join(str(error).split())
    if "authentication method requirement" in text:
        return reasons.AUTHENTICATION_REFUSED, (
            f"cannot log in: {text}. The server did not offer the authentication database.requireAuth accepts: the "
            "password was not sent. Use SCRAM on the server (password_encryption = scram-sha-256), or set "
            "database.requireAuth (any: no requirement)"
        )
    if "ssl" in text.lower() or "certificate" in text:
        return reasons.TLS_FAILED, (
            f"cannot connect over TLS: {text}. Check database.sslMode and database.caSecret (sslMode disable, "
            "allow or prefer only for a database that cannot do TLS)"
        )
    if state in ("28P01", "28000") or "password authentication failed" in text or "no password supplied" in text:
        return reasons.BAD_CREDENTIALS, f"cannot log in: {text}"
    if state == "3D000" or re.search(r'database ".*" does not exist', text):
        return reasons.DATABASE_NOT_FOUND, text
    return reasons.DATABASE_UNREACHABLE, f"cannot connect: {text}"


def _history_identifier(spec: DatabaseMigrationSpec) -> sql.Composable:
    table = sql.Identifier(spec.migrations.table)
    if spec.migrations.schemas:
        return sql.SQL("{}.{}").format(sql.Identifier(spec.migrations.schemas[0]), table)
    return table


async def _history_exists(conn: psycopg.AsyncConnection[dict[str, Any]], spec: DatabaseMigrationSpec) -> bool:
    """Whether the table `_history_identifier` names exists. Flyway quotes the names it is given, so the history
    of `table: Flyway_History` is "Flyway_History": quoted here too (format %I) before to_regclass parses the name,
    which would otherwise fold it to lower case (and split it at a dot). Without schemas, like the query, the
    search_path decides."""
    if spec.migrations.schemas:
        query = "select to_regclass(format('%%I.%%I', %s::text, %s::text)) is not null as present"
        params = [spec.migrations.schemas[0], spec.migrations.table]
    else:
        query = "select to_regclass(format('%%I', %s::text)) is not null as present"
        params = [spec.migrations.table]
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return bool(row and row["present"])


def _applied(row: dict[str, Any]) -> AppliedMigration:
    installed = row.get("installed_on")
    return AppliedMigration(
        version=row.get("version"),
        description=row.get("description") or "",
        script=row.get("script") or "",
        checksum=row.get("checksum"),
        execution_time_ms=row.get("execution_time"),
        installed_on=installed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(installed, datetime)
        else None,
        success=bool(row.get("success")),
    )


async def history(
    conn: psycopg.AsyncConnection[dict[str, Any]], spec: DatabaseMigrationSpec, after_rank: int | None = None
) -> list[tuple[int, AppliedMigration]]:
    if not await _history_exists(conn, spec):
        return []
    query = sql.SQL(
        "select installed_rank, version, description, script, checksum, execution_time, installed_on, success "
        "from {} where installed_rank > %s order by installed_rank"
    ).format(_history_identifier(spec))
    cursor = await conn.execute(query, [after_rank or 0])
    return [(int(row["installed_rank"]), _applied(row)) for row in await cursor.fetchall()]


async def check(spec: DatabaseMigrationSpec, credentials: Credentials) -> DatabaseCheck:
    """Preflight: reachable with these credentials; the whole history (failed rows included)."""
    try:
        async with await connect(spec, credentials) as conn:
            rows = await history(conn, spec)
            exists = bool(rows) or await _history_exists(conn, spec)
    except psycopg.Error as error:
        reason, message = classify_connection_error(error)
        return DatabaseCheck(reachable=False, reason=reason, message=message)
    return DatabaseCheck(reachable=True, history_table_exists=exists, history=tuple(row for _, row in rows))


# One line per catalog fact of the user schemas, hashed: equal hashes mean the same definitions, owners and
# privileges (and the same sequence positions: nextval is not rolled back with a failed transaction).
SCHEMA_HASH_SQL = """
with user_ns as (
  select oid, nspname from pg_namespace
  where nspname <> all(%(system)s) and nspname not like 'pg\\_temp%%' and nspname not like 'pg\\_toast%%'
), facts as (
  select 'schema ' || n.nspname || ' ' || pg_get_userbyid(s.nspowner) || ' ' || coalesce(s.nspacl::text, '') as line
  from user_ns n join pg_namespace s on s.oid = n.oid
  union all
  select 'rel ' || c.oid::regclass::text || ' ' || c.relkind::text || ' ' || pg_get_userbyid(c.relowner) || ' '
         || coalesce(c.relacl::text, '')
  from pg_class c join user_ns n on n.oid = c.relnamespace where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
  union all
  select 'col ' || a.attrelid::regclass::text || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || a.attgenerated::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
         || ' ' || coalesce(a.attacl::text, '')
  from pg_attribute a join pg_class c on c.oid = a.attrelid join user_ns n on n.oid = c.relnamespace
  left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
  where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f')
  union all
  select 'con ' || con.conrelid::regclass::text || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
  from pg_constraint con join user_ns n on n.oid = con.connamespace
  union all
  select 'idx ' || i.indexrelid::regclass::text || ' ' || pg_get_indexdef(i.indexrelid)
  from pg_index i join pg_class c on c.oid = i.indexrelid join user_ns n on n.oid = c.relnamespace
  union all
  select 'fn ' || p.oid::regprocedure::text || ' ' || pg_get_userbyid(p.proowner) || ' ' || coalesce(p.proacl::text, '')
         || ' ' || md5(p.prosrc)
  from pg_proc p join user_ns n on n.oid = p.pronamespace
  union all
  select 'enum ' || e.enumtypid::regtype::text || ' ' || string_agg(e.enumlabel, ',' order by e.enumsortorder)
  from pg_enum e join pg_type t on t.oid = e.enumtypid join user_ns n on n.oid = t.typnamespace
  group by e.enumtypid
  union all
  select 'seq ' || s.schemaname || '.' || s.sequencename || ' ' || coalesce(s.last_value::text, '-')
  from pg_sequences s join user_ns n on n.nspname = s.schemaname
  union all
  select 'defacl ' || pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text
         || ' ' || d.defaclacl::text
  from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace
  union all
  select 'ext ' || x.extname || ' ' || x.extversion || ' ' || x.extnamespace::regnamespace::text from pg_extension x
)
select md5(coalesce(string_agg(line, E'\\n' order by line), '')) as hash from facts
"""


async def user_schemas(conn: psycopg.AsyncConnection[dict[str, Any]]) -> list[str]:
    cursor = await conn.execute(
        "select nspname from pg_namespace where nspname <> all(%s) and nspname !~ '^pg_' order by 1",
        [list(SYSTEM_SCHEMAS)],
    )
    return [str(row["nspname"]) for row in await cursor.fetchall()]


async def default_schema(conn: psycopg.AsyncConnection[dict[str, Any]]) -> str | None:
    cursor = await conn.execute("select current_schema() as name")
    row = await cursor.fetchone()
    return str(row["name"]) if row and row["name"] else None


async def restore_problems(spec: DatabaseMigrationSpec, credentials: Credentials, schemas: list[str]) -> list[str]:
    """What would make a Restore of these schemas impossible for the migration role (pg_scripts' preflight)."""
    async with await connect(spec, credentials) as conn:
        cursor = await conn.execute(
            pg_scripts.RESTORE_PROBLEMS_QUERY, {"schemas": " ".join(schemas) or None, "drop_schemas": ""}
        )
        rows = await cursor.fetchall()
    return pg_scripts.restore_problems([tuple(row.values()) for row in rows])


async def schema_hash(conn: psycopg.AsyncConnection[dict[str, Any]]) -> str:
    cursor = await conn.execute(SCHEMA_HASH_SQL, {"system": list(SYSTEM_SCHEMAS)})
    return str((await cursor.fetchone() or {"hash": ""})["hash"])


async def snapshot(
    conn: psycopg.AsyncConnection[dict[str, Any]], spec: DatabaseMigrationSpec, run: str = ""
) -> Snapshot:
    """The runbook's "document current state": version, tables, FKs, indexes, rows (and content checksums). The
    checksums and the catalog hash are keyed with the run's key (`digests.keyed`, `run` = the run's uid): status may
    show them, and only the operator can compare them."""
    cursor = await conn.execute(
        "select schemaname, tablename from pg_tables where schemaname <> all(%s) "
        "and schemaname not like 'pg\\_temp%%' order by 1, 2",
        [list(SYSTEM_SCHEMAS)],
    )
    tables = [(row["schemaname"], row["tablename"]) for row in await cursor.fetchall()]
    cursor = await conn.execute(
        "select count(*) as n from pg_constraint c join pg_namespace n on n.oid = c.connamespace "
        "where c.contype = 'f' and n.nspname <> all(%s)",
        [list(SYSTEM_SCHEMAS)],
    )
    foreign_keys = int((await cursor.fetchone() or {"n": 0})["n"])
    cursor = await conn.execute(
        "select count(*) as n from pg_indexes where schemaname <> all(%s)", [list(SYSTEM_SCHEMAS)]
    )
    indexes = int((await cursor.fetchone() or {"n": 0})["n"])
    # the planner's estimate, so the largest tables are not counted while the app is down
    cursor = await conn.execute(
        "select n.nspname, c.relname, c.reltuples::bigint as estimate from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'p') and n.nspname <> all(%s)",
        [list(SYSTEM_SCHEMAS)],
    )
    estimates = {(row["nspname"], row["relname"]): int(row["estimate"]) for row in await cursor.fetchall()}
    rows: dict[str, int] = {}
    checksums: dict[str, str] = {}
    estimated: list[str] = []
    for schema, table in tables:
        identifier = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        key = f"{schema}.{table}"
        estimate = estimates.get((schema, table), -1)
        if estimate > COUNT_ROW_LIMIT:
            rows[key] = estimate
            estimated.append(key)
            continue
        cursor = await conn.execute(sql.SQL("select count(*) as n from {}").format(identifier))
        rows[key] = int((await cursor.fetchone() or {"n": 0})["n"])
        if rows[key] <= CHECKSUM_ROW_LIMIT:
            cursor = await conn.execute(
                sql.SQL(
                    "select coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), md5('')) as sum from {} t"
                ).format(identifier)
            )
            checksums[key] = digests.keyed(run, str((await cursor.fetchone() or {"sum": ""})["sum"]))
    version = None
    last_rank = None
    for rank, row in await history(conn, spec):
        last_rank = rank
        if row.success and row.version:
            version = row.version
    return Snapshot(
        version=version,
        tables=len(tables),
        foreign_keys=foreign_keys,
        indexes=indexes,
        rows=rows,
        table_names=[f"{s}.{t}" for s, t in tables],
        checksums=checksums,
        last_installed_rank=last_rank,
        taken_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        schema_hash=digests.keyed(run, await schema_hash(conn)),
        estimated_rows=estimated,
        schemas=await user_schemas(conn),
        default_schema=await default_schema(conn),
    )


async def take_snapshot(
    spec: DatabaseMigrationSpec, credentials: Credentials, run: str = "", lock_timeout_ms: int | None = None
) -> Snapshot:
    """`snapshot` in a session of its own; a run passes its uid (`run`), so its snapshots compare with each other."""
    async with await connect(spec, credentials, lock_timeout_ms=lock_timeout_ms) as conn:
        return await snapshot(conn, spec, run)


def _is_app_session(row: dict[str, Any], spec: DatabaseMigrationSpec) -> bool:
    application = row.get("application_name") or ""
    if application.startswith(constants.APPLICATION_NAME):
        return False
    session_filter = spec.maintenance.app_session_filter if spec.maintenance else None
    if session_filter and session_filter.usernames and row.get("usename") not in session_filter.usernames:
        return False
    return not (
        session_filter and session_filter.application_names and application not in session_filter.application_names
    )


async def sessions(spec: DatabaseMigrationSpec, credentials: Credentials) -> list[Session]:
    """Sessions on the database that belong to the app (not ours, not our Jobs')."""
    async with await connect(spec, credentials) as conn:
        cursor = await conn.execute(
            "select pid, usename, application_name, state, host(client_addr) as client from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid() "
            "and coalesce(backend_type, 'client backend') = 'client backend' order by pid"
        )
        return [
            Session(
                pid=row["pid"],
                usename=row["usename"],
                application_name=row["application_name"],
                state=row["state"],
                client=row["client"],
            )
            for row in await cursor.fetchall()
            if _is_app_session(row, spec)
        ]


async def waiting_for_go(
    spec: DatabaseMigrationSpec, credentials: Credentials, application_names: list[str]
) -> list[str]:
    """Which of `application_names` have a session on the database running the wait for its go (gosignal.wait_sql:
    Flyway's initSql, the backup's psql): its pod, and Flyway's JVM, have started and connected."""
    async with await connect(spec, credentials) as conn:
        cursor = await conn.execute(
            "select distinct application_name from pg_stat_activity where datname = current_database() "
            "and application_name = any(%s) and state = 'active' and query like %s",
            [application_names, "%DO $dbops$%"],
        )
        return sorted(row["application_name"] for row in await cursor.fetchall())


async def blocked_locks(spec: DatabaseMigrationSpec, credentials: Credentials) -> list[str]:
    """The runbook's lock monitoring: who waits for which lock, and who holds it."""
    async with await connect(spec, credentials) as conn:
        cursor = await conn.execute(
            "select l.pid, l.mode, l.locktype, l.relation::regclass::text as relation, "
            "pg_blocking_pids(l.pid) as blockers, a.application_name "
            "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
            "where not l.granted and a.datname = current_database() order by l.pid"
        )
        return [
            f"pid {row['pid']} ({row['application_name'] or '-'}) waits for {row['mode']} on "
            f"{row['relation'] or row['locktype']} held by pid(s) {', '.join(map(str, row['blockers'] or [])) or '?'}"
            for row in await cursor.fetchall()
        ]


async def run_check(conn: psycopg.AsyncConnection[dict[str, Any]], sql_text: str, timeout_seconds: int) -> bool | str:
    """One user check, read-only for real: a transaction that is READ ONLY from its first statement and always rolled
    back, its own statement and lock timeouts, and the check sent with the extended protocol (`binary=True`: psycopg
    sends a parameterless query with the simple protocol otherwise), which runs exactly one statement, so
    `select true; commit; begin read write; delete ...` is refused by the server instead of committing the delete.
    True when it returned one row of one column that is true; False when false; else the error text (scrubbed at the
    status write, like every text)."""
    timeout = str(int(timeout_seconds) * 1000)
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute("set transaction read only")
            await conn.execute(
                "select set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                [timeout, timeout],
            )
            cursor = conn.cursor(binary=True)
            await cursor.execute(sql_text)
            columns = len(cursor.description or [])
            rows = await cursor.fetchmany(2)
    except psycopg.Error as error:
        state = f" (SQLSTATE {error.sqlstate})" if error.sqlstate else ""
        primary = error.diag.message_primary or " ".join(str(error).split())
        return f"{primary}{state}"[:500]
    if columns != 1 or len(rows) != 1:
        return f"must return one row of one boolean column (returned {len(rows)}+ row(s) of {columns} column(s))"
    value = next(iter(rows[0].values()))
    if not isinstance(value, bool):
        return f"must return a boolean (returned a {type(value).__name__})"
    return value


async def verify(
    spec: DatabaseMigrationSpec,
    credentials: Credentials,
    last_rank: int | None,
    check_credentials: Credentials | None = None,
    run: str = "",
) -> Verification:
    """Facts after the migration: snapshot, failed rows, this run's history rows, the user's checks (`run_check`; as
    the role of `verify.credentialsSecret` when given, in a session of their own)."""
    try:
        async with await connect(spec, credentials) as conn:
            after = await snapshot(conn, spec, run)
            rows = await history(conn, spec)
            failed = tuple(row for _, row in rows if not row.success)
            applied = tuple(row for rank, row in rows if last_rank is None or rank > last_rank)
            results: dict[str, bool | str] = {}
            if spec.verify.checks:
                async with contextlib.AsyncExitStack() as stack:
                    checks_conn = conn
                    if check_credentials is not None:
                        checks_conn = await stack.enter_async_context(await connect(spec, check_credentials))
                    for user_check in spec.verify.checks:
                        results[user_check.name] = await run_check(
                            checks_conn, user_check.sql, spec.verify.check_timeout_seconds
                        )
    except psycopg.Error as error:
        return Verification(snapshot=Snapshot(), error=" ".join(str(error).split()))
    return Verification(snapshot=after, failed_rows=failed, applied=applied, check_results=results)


# --------------------------------------------------------------------------------- Clone (writes, careful)
async def _connect_for_clone(
    spec: DatabaseMigrationSpec, credentials: Credentials, phase_seconds: int
) -> psycopg.AsyncConnection[dict[str, Any]]:
    """A writable session on the maintenance database for CREATE/ALTER DATABASE: not the 60 s statement timeout
    (copying a large database takes longer) but the phase's own, so a pass cannot outlive its phase by more than
    one phase; and a lock timeout, so it does not wait for ever behind a session holding the database."""
    return await connect(
        spec,
        credentials,
        dbname=spec.database.maintenance_database,
        read_only=False,
        statement_timeout_ms=phase_seconds * 1000,
        lock_timeout_ms=CLONE_LOCK_TIMEOUT_MS,
    )


async def _databases(conn: psycopg.AsyncConnection[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    cursor = await conn.execute(
        "select datname, datconnlimit, "
        "case when datconnlimit <> %s then pg_database_size(oid) end as size "
        "from pg_database where datname = any(%s)",
        [INVALID_DATABASE, names],
    )
    return {row["datname"]: row for row in await cursor.fetchall()}


def _valid(found: dict[str, dict[str, Any]], name: str) -> bool:
    return name in found and found[name]["datconnlimit"] != INVALID_DATABASE


async def clone_state(
    spec: DatabaseMigrationSpec, credentials: Credentials, clone_name: str, failed_name: str
) -> CloneObservation:
    """Which of the database, its clone and the failed copy exist. A database PostgreSQL marked invalid (an
    interrupted DROP DATABASE) does not count: it cannot be connected to, let alone restored from. A cancelled
    CREATE DATABASE leaves nothing to see (it is transactional: no row, its files removed)."""
    async with await connect(spec, credentials, dbname=spec.database.maintenance_database) as conn:
        found = await _databases(conn, [spec.database.name, clone_name, failed_name])
    return CloneObservation(
        source_exists=_valid(found, spec.database.name),
        clone_exists=_valid(found, clone_name),
        failed_copy_exists=_valid(found, failed_name),
        size_bytes=int(found[clone_name]["size"]) if _valid(found, clone_name) else None,
    )


# CREATE DATABASE's copy strategy (PostgreSQL >= 15). WAL_LOG, the default, copies block by block and writes every
# block to the WAL: its cost grows with the database. FILE_COPY copies the files and logs one record, at the price of a
# checkpoint before the copy, whose cost is what the whole server has dirty in shared_buffers (at most all of it),
# not the database's size. Measured on this machine (PostgreSQL 15, shared_buffers 128 MB; README "Performance"):
# 3.9 GB copied in 3.0 s against 8.4 s, 204 MB in 0.14 s against 0.34 s; 48 MB in 0.26 s either way on a quiet
# server but 0.49 s against 0.38 s with ~60 MB dirty elsewhere; 8 MB in 0.09 s against 0.08 s (0.18 s against 0.10 s
# dirty). So FILE_COPY once the database is larger than what its checkpoint can cost at worst (shared_buffers), and
# never below FILE_COPY_FROM_BYTES.
FILE_COPY_FROM_BYTES = 64 * 1024 * 1024
SERVER_VERSION_WITH_STRATEGY = 150000
CloneStrategy = Literal["file_copy", "wal_log"]


def clone_strategy(server_version: int, source_bytes: int, shared_buffers_bytes: int = 0) -> CloneStrategy | None:
    """The STRATEGY of CREATE DATABASE for a source of this size (None: the server has no such clause)."""
    if server_version < SERVER_VERSION_WITH_STRATEGY:
        return None
    return "file_copy" if source_bytes >= max(FILE_COPY_FROM_BYTES, shared_buffers_bytes) else "wal_log"


def clone_statement(clone_name: str, source: str, strategy: CloneStrategy | None) -> sql.Composed:
    statement = sql.SQL("create database {} template {}").format(sql.Identifier(clone_name), sql.Identifier(source))
    if strategy is None:
        return statement
    keyword = {"file_copy": sql.SQL("file_copy"), "wal_log": sql.SQL("wal_log")}[strategy]
    return statement + sql.SQL(" strategy ") + keyword


async def create_clone(
    spec: DatabaseMigrationSpec, credentials: Credentials, clone_name: str
) -> CloneStrategy | None:
    """CREATE DATABASE <clone> TEMPLATE <db> [STRATEGY `clone_strategy`]: needs the app drained (no session may use
    the source). An invalid clone left by an interrupted DROP DATABASE is dropped and made again. Returns the
    strategy used (None: the server's only one, or the clone was already there)."""
    async with await _connect_for_clone(spec, credentials, spec.timeouts.backup_seconds) as conn:
        found = await _databases(conn, [clone_name, spec.database.name])
        if _valid(found, clone_name):
            return None
        if clone_name in found:
            await conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(clone_name)))
        source_bytes = int((found.get(spec.database.name) or {}).get("size") or 0)
        cursor = await conn.execute(
            "select setting::bigint * current_setting('block_size')::bigint as bytes from pg_settings "
            "where name = 'shared_buffers'"
        )
        shared_buffers = int((await cursor.fetchone() or {}).get("bytes") or 0)
        strategy = clone_strategy(conn.info.server_version, source_bytes, shared_buffers)
        try:
            await conn.execute(clone_statement(clone_name, spec.database.name, strategy))
        except psycopg.errors.DuplicateDatabase:
            return None  # an earlier attempt's CREATE DATABASE, still running when this one started, committed it
        return strategy


async def swap_clone_back(
    spec: DatabaseMigrationSpec, credentials: Credentials, clone_name: str, failed_name: str
) -> None:
    """Rename the migrated database aside and the pre-run clone into its place (idempotent)."""
    database = spec.database.name
    async with await _connect_for_clone(spec, credentials, spec.timeouts.rollback_seconds) as conn:
        found = await _databases(conn, [database, clone_name, failed_name])
        if not _valid(found, clone_name):
            return  # already in place, or nothing to put back (clone_state says which): leave the database be
        present = set(found)
        await conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = any(%s) and pid <> pg_backend_pid()",
            [[database, clone_name]],
        )
        if database in present and failed_name not in present:
            await conn.execute(
                sql.SQL("alter database {} rename to {}").format(sql.Identifier(database), sql.Identifier(failed_name))
            )
            present = (present - {database}) | {failed_name}
        if database not in present:
            await conn.execute(
                sql.SQL("alter database {} rename to {}").format(sql.Identifier(clone_name), sql.Identifier(database))
            )
