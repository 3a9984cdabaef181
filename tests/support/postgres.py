"""The tests' own view of the database: admin connections, databases cloned per test, fingerprints.

Where the database is comes from the environment, else from the cluster ($KUBECONFIG), so the suite runs against
the local cluster's PostgreSQL or one inside kind alike:
  MO_E2E_PG_HOST / MO_E2E_PG_PORT            where the tests connect
  MO_E2E_PG_SUPERUSER / MO_E2E_PG_PASSWORD   an admin login for the tests (default postgres/postgres)
  MO_E2E_DB_HOST / MO_E2E_DB_PORT            the address pods and the operator use
Unset, they are discovered: the Service `databases/postgres` of the cluster (the local cluster's, hack/addons/): the
tests connect to its ClusterIP (routed on the local node's host by kube-proxy) and pods use its DNS name,
postgres.databases.svc.cluster.local:5432. Without such a Service (and no variables), the tests that need the
database skip, saying why.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from tests.support.wait import wait_for

T = TypeVar("T")

TEMPLATE_DATABASE = "parking_template"
APP_ROLE = "parking_admin"
APP_PASSWORD = os.environ.get("MO_E2E_APP_PASSWORD", "parking_admin")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


# what the tests use when the cluster has no database Service: nothing answers there, so those tests skip
NO_DATABASE = Endpoint("127.0.0.1", 5432)
DEFAULT_PORT = 5432
SERVICE_NAMESPACE, SERVICE_NAME = "databases", "postgres"


@dataclass(frozen=True)
class Discovered:
    """Where the tests connect, and where pods connect."""

    tests: Endpoint
    cluster: Endpoint


@functools.cache
def _discovered() -> Discovered:
    """The database of the cluster $KUBECONFIG points at: its Service databases/postgres."""
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        service = client.CoreV1Api(client.ApiClient()).read_namespaced_service(SERVICE_NAME, SERVICE_NAMESPACE)
    except Exception:  # no cluster at hand (unit tests), or no such Service
        return Discovered(NO_DATABASE, NO_DATABASE)
    port = next((p.port for p in service.spec.ports or [] if p.name == "postgres"), service.spec.ports[0].port)
    return Discovered(
        Endpoint(service.spec.cluster_ip, int(port)),
        Endpoint(f"{SERVICE_NAME}.{SERVICE_NAMESPACE}.svc.cluster.local", int(port)),
    )


def test_endpoint() -> Endpoint:
    if "MO_E2E_PG_HOST" in os.environ:
        return Endpoint(os.environ["MO_E2E_PG_HOST"], int(os.environ.get("MO_E2E_PG_PORT", DEFAULT_PORT)))
    found = _discovered().tests
    return Endpoint(found.host, int(os.environ.get("MO_E2E_PG_PORT", found.port)))


def cluster_endpoint() -> Endpoint:
    """The address the operator and the pods use: MO_E2E_DB_HOST, else the discovered one, else the tests' own."""
    if "MO_E2E_DB_HOST" in os.environ:
        return Endpoint(os.environ["MO_E2E_DB_HOST"], int(os.environ.get("MO_E2E_DB_PORT", test_endpoint().port)))
    if "MO_E2E_PG_HOST" in os.environ:  # only the tests' address given: the same for the pods (as before)
        local = test_endpoint()
        return Endpoint(local.host, int(os.environ.get("MO_E2E_DB_PORT", local.port)))
    found = _discovered().cluster
    return Endpoint(found.host, int(os.environ.get("MO_E2E_DB_PORT", found.port)))


def in_cluster() -> bool:
    """Whether the database is the cluster's Service databases/postgres (discovered, not given by the environment)."""
    return "MO_E2E_PG_HOST" not in os.environ and _discovered().cluster != NO_DATABASE


def connect(dbname: str = "postgres", *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    endpoint = test_endpoint()
    params: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
        "password": os.environ.get("MO_E2E_PG_PASSWORD", "postgres"),
        "dbname": dbname,
        "application_name": "migration-operator-tests",
        "connect_timeout": 10,
    }
    params.update(kwargs)
    return psycopg.connect(autocommit=autocommit, **params)


def terminate_sessions(conn: psycopg.Connection[Any], dbname: str) -> None:
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
        (dbname,),
    )


def drop_database(conn: psycopg.Connection[Any], dbname: str, deadline: float = 30.0) -> None:
    """DROP DATABASE ... WITH (FORCE): it ends the sessions itself, in the same statement (a terminate-then-drop lets
    a client that reconnects in between, an app pod still going, make the drop fail). Retried until `deadline`
    seconds while the server still reports the database in use (a session that did not end in time)."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.5)


@contextmanager
def cloned_database(prefix: str = "e2e") -> Iterator[str]:
    """A database per test, a copy of the seeded parking_template (V1..V5 applied), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with connect() as conn:
        conn.execute(
            sql.SQL("create database {} template {} owner {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DATABASE), sql.Identifier(APP_ROLE)
            )
        )
    try:
        yield name
    finally:
        if os.environ.get("MO_KEEP_NAMESPACES") != "1":
            with connect() as conn:
                for like in (name, f"{name}_pre_%", f"{name}_failed_%"):
                    rows = conn.execute("select datname from pg_database where datname like %s", (like,)).fetchall()
                    for (db,) in rows:
                        drop_database(conn, db)


def fingerprint(dbname: str) -> dict[str, Any]:
    """What "the database equals the pre-run state" means in the tests: the public schema's definition (tables,
    columns, constraints, indexes), the history table, and per-table row counts and content checksums."""
    with connect(dbname) as conn:
        columns = conn.execute(
            """select table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
               from information_schema.columns where table_schema = 'public'
               order by table_name, ordinal_position"""
        ).fetchall()
        constraints = conn.execute(
            """select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
               from pg_constraint where connamespace = 'public'::regnamespace order by 1, 2"""
        ).fetchall()
        indexes = conn.execute(
            "select tablename, indexname, indexdef from pg_indexes where schemaname = 'public' order by 1, 2"
        ).fetchall()
        tables = [
            r[0]
            for r in conn.execute(
                "select tablename from pg_tables where schemaname = 'public' order by 1"
            ).fetchall()
        ]
        rows: dict[str, tuple[int, str]] = {}
        for table in tables:
            query = sql.SQL(
                "select count(*), coalesce(md5(string_agg(t::text, '|' order by t::text)), '') from {} t"
            ).format(sql.Identifier(table))
            count, checksum = conn.execute(query).fetchone()  # type: ignore[misc]
            rows[table] = (count, checksum)
    return {"columns": columns, "constraints": constraints, "indexes": indexes, "tables": tables, "rows": rows}


def history(dbname: str) -> list[tuple[Any, ...]]:
    with connect(dbname) as conn:
        return conn.execute(
            "select version, description, script, checksum, success from flyway_schema_history order by installed_rank"
        ).fetchall()


def write_counters(dbname: str) -> tuple[int, int, int]:
    """Tuples inserted, updated and deleted in the user's tables (pg_stat_user_tables, flushed by
    pg_stat_force_next_flush). The system catalogs are left out: autovacuum's ANALYZE writes pg_statistic rows
    whenever it likes, and that is not a write by anything under test."""
    with connect(dbname) as conn:
        conn.execute("select pg_stat_force_next_flush()")
        row = conn.execute(
            """select coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_upd), 0)::bigint,
                      coalesce(sum(n_tup_del), 0)::bigint
               from pg_stat_user_tables"""
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])


# The schemas fingerprint_full leaves out: PostgreSQL's own.
_SYSTEM_SCHEMAS = "n.nspname !~ '^pg_' and n.nspname <> 'information_schema'"


def fingerprint_full(dbname: str) -> dict[str, Any]:
    """Everything a Restore promises to put back, in EVERY schema (so "the other schemas are untouched" is checked
    too): schemas with owner, ACL and comment; relations with kind, owner, ACL and options; columns (type, default,
    generated expression, identity, column ACL); constraints, indexes, triggers, policies, views' and functions'
    definitions, types (enum labels in order, domains), sequences (definition, last value, is_called), every
    table's rows (count and a checksum of the sorted rows, generated columns included), default privileges,
    extensions, publications and their tables, comments on objects and the large objects. Names, never OIDs, so a
    dropped and recreated object equals the original. ACLs are compared as stored, with one exception: a
    relation's, function's or type's ACL spelled out equal to its owner's default counts as no ACL. pg_dump writes
    neither, so no restore from a dump can tell them apart (same privileges; only `\\dp` shows the first)."""
    with connect(dbname) as conn:

        def rows(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(query, params).fetchall()]

        result: dict[str, Any] = {
            "schemas": rows(
                f"""select n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text,
                          obj_description(n.oid, 'pg_namespace')
                   from pg_namespace n where {_SYSTEM_SCHEMAS} order by 1"""
            ),
            "relations": rows(
                f"""select n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner),
                          nullif(c.relacl, acldefault(case c.relkind when 'S' then 's' else 'r' end::"char",
                                                      c.relowner))::text,
                          c.reloptions::text, c.relpersistence::text, c.relrowsecurity, c.relispartition,
                          pg_get_expr(c.relpartbound, c.oid), obj_description(c.oid, 'pg_class')
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                   where {_SYSTEM_SCHEMAS} order by 1, 2"""
            ),
            "columns": rows(
                f"""select n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                          a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text,
                          a.attidentity::text, a.attacl::text, col_description(c.oid, a.attnum)
                   from pg_attribute a join pg_class c on c.oid = a.attrelid
                   join pg_namespace n on n.oid = c.relnamespace
                   left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                   where {_SYSTEM_SCHEMAS} and a.attnum > 0 and not a.attisdropped order by 1, 2, 3"""
            ),
            "constraints": rows(
                f"""select n.nspname, coalesce(c.conrelid::regclass::text, c.contypid::regtype::text), c.conname,
                          pg_get_constraintdef(c.oid)
                   from pg_constraint c join pg_namespace n on n.oid = c.connamespace
                   where {_SYSTEM_SCHEMAS} order by 1, 2, 3"""
            ),
            "indexes": rows(
                f"""select schemaname, tablename, indexname, indexdef from pg_indexes n
                   where {_SYSTEM_SCHEMAS.replace("n.nspname", "n.schemaname")} order by 1, 2, 3"""
            ),
            "triggers": rows(
                f"""select n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
                   from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
                   where {_SYSTEM_SCHEMAS} and not t.tgisinternal order by 1, 2, 3"""
            ),
            "policies": rows(
                "select schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check "
                "from pg_policies order by 1, 2, 3"
            ),
            "views": rows(
                f"""select n.nspname, c.relname, pg_get_viewdef(c.oid)
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                   where {_SYSTEM_SCHEMAS} and c.relkind in ('v', 'm') order by 1, 2"""
            ),
            "functions": rows(
                f"""select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind::text,
                          pg_get_userbyid(p.proowner), nullif(p.proacl, acldefault('f', p.proowner))::text,
                          case when p.prokind <> 'a' then md5(pg_get_functiondef(p.oid)) end
                   from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                   where {_SYSTEM_SCHEMAS} order by 1, 2, 3"""
            ),
            "types": rows(
                f"""select n.nspname, t.typname, t.typtype::text, pg_get_userbyid(t.typowner),
                          nullif(t.typacl, acldefault('T', t.typowner))::text,
                          format_type(t.typbasetype, t.typtypmod), t.typnotnull,
                          (select array_agg(e.enumlabel order by e.enumsortorder) from pg_enum e
                           where e.enumtypid = t.oid)::text
                   from pg_type t join pg_namespace n on n.oid = t.typnamespace
                   where {_SYSTEM_SCHEMAS} order by 1, 2"""
            ),
            "default_privileges": rows(
                """select pg_get_userbyid(d.defaclrole), coalesce(n.nspname, ''), d.defaclobjtype::text,
                          d.defaclacl::text
                   from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace order by 1, 2, 3"""
            ),
            "extensions": rows(
                """select e.extname, e.extversion, n.nspname, pg_get_userbyid(e.extowner)
                   from pg_extension e join pg_namespace n on n.oid = e.extnamespace order by 1"""
            ),
            "publications": rows(
                """select p.pubname, pg_get_userbyid(p.pubowner), p.puballtables,
                          (select array_agg(t.schemaname || '.' || t.tablename order by 1)
                           from pg_publication_tables t where t.pubname = p.pubname)::text
                   from pg_publication p order by 1"""
            ),
            "large_objects": rows(
                "select oid::bigint, pg_get_userbyid(lomowner), lomacl::text from pg_largeobject_metadata order by 1"
            ),
            "comments": rows(
                """select d.classoid::regclass::text, i.identity, d.description
                   from pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) i
                   where d.classoid in ('pg_class'::regclass, 'pg_type'::regclass, 'pg_proc'::regclass,
                                        'pg_constraint'::regclass)
                     and i.schema !~ '^pg_' and i.schema <> 'information_schema' order by 1, 2"""
            ),
        }
        sequences = rows(
            f"""select n.nspname, c.relname, s.seqtypid::regtype::text, s.seqstart, s.seqincrement, s.seqmin,
                      s.seqmax, s.seqcache, s.seqcycle
               from pg_sequence s join pg_class c on c.oid = s.seqrelid join pg_namespace n on n.oid = c.relnamespace
               where {_SYSTEM_SCHEMAS} order by 1, 2"""
        )
        result["sequences"] = [
            (
                *seq,
                *conn.execute(
                    sql.SQL("select last_value, is_called from {}.{}").format(
                        sql.Identifier(seq[0]), sql.Identifier(seq[1])
                    )
                ).fetchone(),  # type: ignore[misc]
            )
            for seq in sequences
        ]
        tables = rows(
            f"""select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
               where {_SYSTEM_SCHEMAS} and c.relkind = 'r' order by 1, 2"""
        )
        contents: dict[str, tuple[int, str]] = {}
        for schema, table in tables:
            query = sql.SQL(
                "select count(*), coalesce(md5(string_agg(t::text, '|' order by t::text collate \"C\")), '') "
                "from only {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
            count, checksum = conn.execute(query).fetchone()  # type: ignore[misc]
            contents[f"{schema}.{table}"] = (count, checksum)
        result["rows"] = contents
    return result


def object_oids(dbname: str, schemas: list[str]) -> list[tuple[Any, ...]]:
    """The OIDs of every object in these schemas (and of the schemas): equal before and after means nothing in them
    was dropped and recreated, not only that it looks the same."""
    with connect(dbname) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                """select 'schema', n.nspname, n.oid::bigint from pg_namespace n where n.nspname = any(%(s)s)
                   union all select 'class', c.relname, c.oid::bigint from pg_class c
                     join pg_namespace n on n.oid = c.relnamespace where n.nspname = any(%(s)s)
                   union all select 'type', t.typname, t.oid::bigint from pg_type t
                     join pg_namespace n on n.oid = t.typnamespace where n.nspname = any(%(s)s)
                   union all select 'proc', p.proname, p.oid::bigint from pg_proc p
                     join pg_namespace n on n.oid = p.pronamespace where n.nspname = any(%(s)s)
                   order by 1, 2, 3""",
                {"s": schemas},
            ).fetchall()
        ]


def fingerprint_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two fingerprint_full() results, one line each (for assertion messages)."""
    lines: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    lines.append(f"{key}[{name}]: {old.get(name)!r} -> {new.get(name)!r}")
        elif isinstance(old, list) and isinstance(new, list):
            lines += [f"{key} only before: {row!r}" for row in old if row not in new]
            lines += [f"{key} only after: {row!r}" for row in new if row not in old]
        else:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


def extension_oids(dbname: str) -> list[tuple[Any, ...]]:
    """Every extension and every member object with its OID: equal before and after means no extension was
    dropped and created again (which would break what refers to its objects by OID)."""
    with connect(dbname) as conn:
        return [
            tuple(r)
            for r in conn.execute(
                """select x.extname, x.oid::bigint, d.classid::regclass::text, d.objid::bigint
                   from pg_extension x left join pg_depend d
                     on d.refclassid = 'pg_extension'::regclass and d.refobjid = x.oid and d.deptype = 'e'
                   order by 1, 3, 4"""
            ).fetchall()
        ]


def reachable() -> bool:
    """Whether the tests' PostgreSQL answers (unit tests that need it skip otherwise)."""
    try:
        with connect(connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def wait_answering(timeout: float, what: str = "the tests' PostgreSQL answering", *, interval: float = 1.0,
                   **params: Any) -> float:
    """Waits until PostgreSQL accepts a connection and answers a query; returns the seconds it took. `params` are
    `connect()`'s (another host, database or login). On timeout, WaitTimeout names `what` and the last error."""
    started = time.monotonic()

    def answers() -> bool:
        with connect(**{"connect_timeout": 3, **params}) as conn:
            conn.execute("select 1")
        return True

    wait_for(answers, timeout=timeout, what=what, interval=interval)
    return time.monotonic() - started


def read_through_outage(read: Callable[[], T], grace: float,
                        answering: Callable[[], bool] = reachable,
                        wait: Callable[[float], float] = wait_answering) -> tuple[T, str | None]:
    """`read()`, and when it fails because the server does not answer at all (not the read's own error: the
    server answers), waits for the server up to `grace` seconds and reads once more. Returns the value and, when it
    waited, a sentence saying what it waited out (for a test's notes), else None. A failure that is not an outage,
    or an outage longer than `grace`, is raised."""
    try:
        return read(), None
    except psycopg.OperationalError as error:
        if answering():
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    waited = wait(grace)
    return read(), f"PostgreSQL did not answer ({first}): waited {waited:.0f} s for it"


@contextmanager
def app_owned_database(prefix: str) -> Iterator[str]:
    """An empty database owned by the migration role; it and any database named after it (its clones) are dropped
    afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with connect() as conn:
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE)))
    try:
        yield name
    finally:
        with connect() as conn:
            rows = conn.execute("select datname from pg_database where datname like %s", (f"{name}%",)).fetchall()
            for (db,) in rows:
                drop_database(conn, db)

