"""The tests' own view of the database: admin connections, databases cloned per test, fingerprints.

Where the database is comes from the environment, so the suite runs against the local cluster's PostgreSQL or
one inside kind alike:
  MO_E2E_PG_HOST / MO_E2E_PG_PORT            where the tests connect (default 127.0.0.1:15432)
  MO_E2E_PG_SUPERUSER / MO_E2E_PG_PASSWORD   an admin login for the tests (default postgres/postgres)
  MO_E2E_DB_HOST / MO_E2E_DB_PORT            the address pods and the operator use (default: the same)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

TEMPLATE_DATABASE = "parking_template"
APP_ROLE = "parking_admin"
APP_PASSWORD = os.environ.get("MO_E2E_APP_PASSWORD", "parking_admin")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def test_endpoint() -> Endpoint:
    return Endpoint(os.environ.get("MO_E2E_PG_HOST", "127.0.0.1"), int(os.environ.get("MO_E2E_PG_PORT", "15432")))


def cluster_endpoint() -> Endpoint:
    local = test_endpoint()
    return Endpoint(os.environ.get("MO_E2E_DB_HOST", local.host), int(os.environ.get("MO_E2E_DB_PORT", local.port)))


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
                        terminate_sessions(conn, db)
                        conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(db)))


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
        return row  # type: ignore[return-value]
