"""The go of the pre-started Jobs (gosignal.py), with the real Flyway command line, the real backup script and a real
PostgreSQL. Flyway, started with the armed Job's exact flags, connects and waits in its initSql without touching the
database; the operator's `give` lets it migrate; another run's go does not; without a go it fails at its budget and
leaves the database as it was. The backup script waits the same way before it reads anything. Needs the host's
Flyway (`hack/install-flyway.sh`, installed by `make cluster`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Database, scratch_database

from migration_operator import flyway, gosignal, pg_scripts
from migration_operator.database import Credentials
from migration_operator.models import parse_spec
from tests.support import postgres
from tests.support.wait import wait_for

CACHE = Path(os.environ.get("MO_CACHE", Path.home() / ".cache" / "migration-operator"))
FLYWAY = CACHE / "flyway" / "current" / "flyway"
APP_NAME = "migration-operator-armed-migrate"
UID = "5d1c7c5e-0000-4000-8000-000000000001"


def _spec(db: Database) -> Any:
    endpoint = postgres.test_endpoint()
    return parse_spec(
        {
            "database": {
                "host": endpoint.host,
                "port": endpoint.port,
                "name": db.name,
                "sslMode": "disable",
                "credentialsSecret": {"name": "unused"},
            },
            "migrations": {"configMap": {"name": "unused"}},
            "backup": {"enabled": False},
        }
    )


def _start_flyway(db: Database, spec: Any, budget: int, uid: str = UID) -> subprocess.Popen[str]:
    migrations = db.work / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "V1__armed.sql").write_text("create table armed_check (id int primary key);\n")
    args = flyway.command_line(spec, "migrate", init_sql=gosignal.wait_sql(uid, "migrate", budget))
    args = [str(FLYWAY), *[a.replace("filesystem:/migrations", f"filesystem:{migrations}") for a in args[1:]]]
    endpoint = postgres.test_endpoint()
    env = {
        **os.environ,
        "FLYWAY_URL": f"jdbc:postgresql://{endpoint.host}:{endpoint.port}/{db.name}?ApplicationName={APP_NAME}",
        "FLYWAY_USER": db.roles.app,
        "FLYWAY_PASSWORD": db.roles.password,
    }
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _waiting(db: Database) -> bool | None:
    with db.connect_admin() as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s and query like %s",
            [APP_NAME, "DO $dbops$%"],
        ).fetchone()
    return True if row and row[0] == 1 else None


def _table_exists(db: Database, name: str) -> bool:
    with db.connect_admin() as conn:
        row = conn.execute("select to_regclass(%s) is not null", [name]).fetchone()
    return bool(row and row[0])


def _result(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = process.communicate(timeout=timeout)
    document: dict[str, Any] = json.loads(out)
    return document


@pytest.fixture
def db(work: Path) -> Any:
    if not FLYWAY.exists():
        pytest.fail(f"{FLYWAY} is missing: run hack/install-flyway.sh (make cluster does)")
    with scratch_database(work) as database:
        yield database


def test_flyway_waits_for_the_go_then_migrates(db: Database) -> None:
    spec = _spec(db)
    process = _start_flyway(db, spec, budget=120)
    try:
        wait_for(lambda: _waiting(db), timeout=60, what="Flyway waiting in its initSql")
        assert process.poll() is None
        assert not _table_exists(db, "flyway_schema_history")  # nothing before the go

        async def go() -> dict[str, Any]:
            credentials = Credentials(db.roles.app, db.roles.password)
            other = "another-run-uid"
            assert await gosignal.give(spec, credentials, other, "migrate")  # another run's go: not this Job's
            await asyncio.sleep(0)
            assert gosignal.given(other, "migrate")
            try:
                with pytest.raises(subprocess.TimeoutExpired):
                    await asyncio.to_thread(process.wait, 1.0)
            finally:
                await gosignal.withdraw(other, "migrate")
            assert await gosignal.give(spec, credentials, UID, "migrate")
            assert not await gosignal.give(spec, credentials, UID, "migrate")  # idempotent: held already
            try:
                return await asyncio.to_thread(_result, process, 60)
            finally:
                await gosignal.withdraw(UID, "migrate")
                assert not gosignal.given(UID, "migrate")

        document = asyncio.run(go())
        assert document.get("success") is True and document.get("migrationsExecuted") == 1, document
        assert _table_exists(db, "armed_check")
    finally:
        process.kill()


def test_without_a_go_flyway_fails_at_its_budget_and_changes_nothing(db: Database) -> None:
    process = _start_flyway(db, _spec(db), budget=3)
    try:
        document = _result(process, 90)
    finally:
        process.kill()
    assert "no go for this pre-started migrate Job within 3 s" in json.dumps(document)
    assert document.get("success") is not True
    assert not _table_exists(db, "flyway_schema_history") and not _table_exists(db, "armed_check")
    with db.connect_admin() as conn:
        row = conn.execute("select count(*) from pg_stat_activity where application_name = %s", [APP_NAME]).fetchone()
    assert row is not None and row[0] == 0  # the waiting backend ended with its statement


def _backup_waiting(db: Database) -> bool | None:
    with db.connect_admin() as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s and query like %s",
            ["migration-operator-test-armed-backup", "%DO $dbops$%"],
        ).fetchone()
    return True if row and row[0] == 1 else None


def test_a_prestarted_backup_waits_for_its_go_then_dumps(db: Database) -> None:
    spec = _spec(db)
    db.run("app", "create table before_go (id int primary key); insert into before_go values (1)")
    go_sql = gosignal.wait_sql(UID, "backup", 120)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(db.script, pg_scripts.BACKUP_SCRIPT, "armed-backup", GO_SQL=go_sql, GO_WAIT_SECONDS="120")
        wait_for(lambda: _backup_waiting(db), timeout=60, what="the backup script waiting for its go")
        assert not running.done() and not db.dump.exists() and not Path(f"{db.dump}.partial").exists()

        async def go() -> None:
            credentials = Credentials(db.roles.app, db.roles.password)
            assert await gosignal.give(spec, credentials, UID, "backup")
            try:
                await asyncio.to_thread(running.result, 120)
            finally:
                await gosignal.withdraw(UID)

        asyncio.run(go())
        result = running.result()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.values.get("verified") == "true" and db.dump.exists()


def test_a_prestarted_backup_without_a_go_fails_having_read_nothing(db: Database) -> None:
    result = db.backup(GO_SQL=gosignal.wait_sql(UID, "backup", 2), GO_WAIT_SECONDS="2")
    assert result.returncode != 0
    assert result.values.get("verified") == "false"
    assert "no go for this pre-started backup within 2s" in result.values.get("error", ""), result.stdout
    assert not db.dump.exists()
