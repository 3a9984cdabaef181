"""Fixtures of the PostgreSQL Job script tests: the scripts of migration_operator.pg_scripts run for real, with
`sh -c` on this host (pg_dump, pg_restore and psql 15 installed), against the local PostgreSQL (`make cluster`, or
`bash hack/postgres.sh start && bash hack/postgres.sh seed`; MO_E2E_PG_* to point elsewhere).

Each test gets its own roles (unique names) and database, dropped afterwards even when the test fails. The
backup volume is a temporary directory (BACKUP_DIR), the termination message a file (TERMINATION_LOG).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migration_operator import pg_scripts
from tests.support import postgres
from tests.support.shapes import Roles, Shape

PARKING_ROLE = postgres.APP_ROLE
PARKING_PASSWORD = postgres.APP_PASSWORD


@pytest.fixture(scope="session", autouse=True)
def _postgres_reachable() -> None:
    endpoint = postgres.test_endpoint()
    try:
        with postgres.connect() as conn:
            version = conn.execute("show server_version_num").fetchone()
    except psycopg.OperationalError as error:
        pytest.exit(
            f"PostgreSQL at {endpoint.host}:{endpoint.port} does not answer ({error}): run `make cluster`, or "
            "`bash hack/postgres.sh start && bash hack/postgres.sh seed`",
            returncode=1,
        )
    assert version is not None and int(version[0]) >= 150000, "these tests need PostgreSQL 15 or newer"


@dataclass(frozen=True)
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str
    termination: str

    @property
    def values(self) -> dict[str, str]:
        return pg_scripts.parse_key_values(self.termination)


@dataclass
class Database:
    """One test's database, its roles, and a backup volume in a temporary directory."""

    name: str
    roles: Roles
    work: Path
    backup_file: str = "run.dump"
    scripts_run: list[str] = field(default_factory=list)

    @property
    def backup_dir(self) -> Path:
        return self.work / "backup"

    @property
    def dump(self) -> Path:
        return self.backup_dir / self.backup_file

    def connect_admin(self) -> psycopg.Connection[Any]:
        return postgres.connect(self.name)

    def connect_app(self) -> psycopg.Connection[Any]:
        return postgres.connect(self.name, user=self.roles.app, password=self.roles.password)

    def run(self, who: str, statements: str | list[str]) -> None:
        with self.connect_admin() if who == "admin" else self.connect_app() as conn:
            for statement in [statements] if isinstance(statements, str) else statements:
                conn.execute(statement.encode())

    def env(self, **extra: str | None) -> dict[str, str]:
        endpoint = postgres.test_endpoint()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGDATABASE": self.name,
            "PGUSER": self.roles.app,
            "PGPASSWORD": self.roles.password,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "15",
            "HOME": str(self.work),
            "TMPDIR": str(self.work / "tmp"),
            "BACKUP_DIR": str(self.backup_dir),
            "BACKUP_FILE": self.backup_file,
            "TERMINATION_LOG": str(self.work / "termination-log"),
        }
        env.update({key: value for key, value in extra.items() if value is not None})
        return env

    def script(self, script: str, step: str, **extra: str | None) -> ScriptResult:
        """Runs one of pg_scripts' scripts as its Job would (sh -c, everything in the environment)."""
        termination = self.work / "termination-log"
        termination.unlink(missing_ok=True)
        env = self.env(PGAPPNAME=f"migration-operator-test-{step}", **extra)
        done = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        self.scripts_run.append(step)
        return ScriptResult(
            done.returncode, done.stdout, done.stderr, termination.read_text() if termination.exists() else ""
        )

    def backup(self, dump_schemas: str | None = None, **extra: str | None) -> ScriptResult:
        return self.script(pg_scripts.BACKUP_SCRIPT, "backup", DUMP_SCHEMAS=dump_schemas, **extra)

    def restore(
        self, dump_schemas: str | None = None, drop_schemas: str | None = None, **extra: str | None
    ) -> ScriptResult:
        return self.script(
            pg_scripts.RESTORE_SCRIPT, "restore", DUMP_SCHEMAS=dump_schemas, DROP_SCHEMAS=drop_schemas, **extra
        )

    def preflight(self, dump_schemas: str | None, drop_schemas: str = "") -> list[str]:
        """The operator's preflight check: RESTORE_PROBLEMS_QUERY as the migration role, then restore_problems."""
        with self.connect_app() as conn:
            rows = conn.execute(
                pg_scripts.RESTORE_PROBLEMS_QUERY, {"schemas": dump_schemas, "drop_schemas": drop_schemas}
            ).fetchall()
        return pg_scripts.restore_problems(rows)


def _drop(name: str, roles: list[str]) -> None:
    with postgres.connect() as conn:
        postgres.drop_database(conn, name)
        for role in roles:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


@contextmanager
def scratch_database(
    work: Path, *, parking: bool = False, db_owner_is_app: bool = True
) -> Iterator[Database]:
    """A new database and unique roles: the migration role (its own login, or parking_admin on a clone of the
    parking sample), another app's role, a reader and a DBA; all dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    roles = Roles(
        app=PARKING_ROLE if parking else f"mo_{tag}_app",
        password=PARKING_PASSWORD if parking else f"pw_{tag}",
        other=f"mo_{tag}_other",
        reader=f"mo_{tag}_reader",
        admin=f"mo_{tag}_admin",
    )
    created = [r for r in roles.all() if not (parking and r == PARKING_ROLE)]
    name = f"mo_db_{tag}"
    (work / "backup").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    try:
        with postgres.connect() as conn:
            for role in created:
                login = sql.SQL(" login password {}").format(sql.Literal(roles.password))
                create = sql.SQL("create role {}").format(sql.Identifier(role))
                conn.execute(create + login if role == roles.app else create)
            owner = roles.app if db_owner_is_app else roles.admin
            template = postgres.TEMPLATE_DATABASE if parking else "template0"
            conn.execute(
                sql.SQL("create database {} template {} owner {}").format(
                    sql.Identifier(name), sql.Identifier(template), sql.Identifier(owner)
                )
            )
            if not db_owner_is_app:
                conn.execute(
                    sql.SQL("grant create on database {} to {}").format(sql.Identifier(name), sql.Identifier(roles.app))
                )
        if not db_owner_is_app:
            with postgres.connect(name) as conn:
                conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(roles.app)))
        yield Database(name, roles, work)
    finally:
        _drop(name, created)


@contextmanager
def shape_database(shape: Shape, work: Path) -> Iterator[Database]:
    with scratch_database(work, parking=shape.parking, db_owner_is_app=shape.db_owner_is_app) as db:
        for who, statements in shape.setup(db.roles):
            db.run(who, statements)
        yield db


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
