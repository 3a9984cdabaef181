"""The Compensate Job's script runs the user's SQL in one transaction and never a psql meta-command: a `\\!` in the
middle of the SQL goes to the server (a syntax error, nothing run on the pod), one at the start is refused."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from migration_operator import pg_scripts
from tests.support import postgres


@pytest.fixture
def database() -> Iterator[str]:
    name = f"mo_comp_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with postgres.connect(name) as conn:
            conn.execute("create table t (id int primary key)")
        yield name
    finally:
        with postgres.connect() as admin:
            postgres.drop_database(admin, name)


def run(database: str, tmp_path: Path, compensate_sql: str, **extra: str) -> subprocess.CompletedProcess[str]:
    endpoint = postgres.test_endpoint()
    env = {
        **os.environ,
        "PGHOST": endpoint.host, "PGPORT": str(endpoint.port), "PGDATABASE": database,
        "PGUSER": os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
        "PGPASSWORD": os.environ.get("MO_E2E_PG_PASSWORD", "postgres"),
        "PGSSLMODE": "prefer", "COMPENSATE_SQL": compensate_sql,
        "TMPDIR": str(tmp_path), "TERMINATION_LOG": str(tmp_path / "termination"),
        **extra,
    }
    return subprocess.run(["sh", "-c", pg_scripts.COMPENSATE_SCRIPT], env=env, capture_output=True, text=True)


def rows(database: str) -> list[int]:
    with postgres.connect(database) as conn:
        return [r[0] for r in conn.execute("select id from t order by id").fetchall()]


def test_the_sql_runs_in_one_transaction(database: str, tmp_path: Path) -> None:
    done = run(database, tmp_path, "insert into t values (1);\ninsert into t values (2);")
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(database) == [1, 2]
    failed = run(database, tmp_path, "insert into t values (3);\ninsert into t values (1);")
    assert failed.returncode != 0 and "rolled back" in failed.stdout
    assert rows(database) == [1, 2]  # the first insert went with the failed second


def test_a_meta_command_inside_the_sql_is_never_run(database: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run(database, tmp_path, f"insert into t values (5);\n\\! touch {marker}\n")
    assert result.returncode != 0, result.stdout
    assert not marker.exists()
    assert rows(database) == []


def test_a_meta_command_at_the_start_is_refused(database: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run(database, tmp_path, f"  \\! touch {marker}")
    assert result.returncode != 0 and "refused" in result.stdout
    assert not marker.exists()
    assert (tmp_path / "termination").read_text().startswith("compensating SQL refused")


def test_a_server_that_does_not_come_back_is_waited_for_then_nothing_is_run(database: str, tmp_path: Path) -> None:
    """The script waits out a restart of the server (DB_WAIT_SECONDS) before its transaction; a server that stays
    away ends it with exit 2 and a message saying the SQL was not run."""
    done = run(database, tmp_path, "insert into t values (9);", PGPORT="1", DB_WAIT_SECONDS="2")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not run: the database server did not accept connections within 2s" in done.stdout
    assert (tmp_path / "termination").read_text() == done.stdout
    assert rows(database) == []
