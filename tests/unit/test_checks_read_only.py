"""`verify.checks` are read-only for real (issue 11): a check used to go over the simple protocol, so
`select true; commit; begin read write; delete ...; commit` passed as a check and committed the delete, from the
operator's own session. Now: one statement (extended protocol), a READ ONLY transaction always rolled back, a
statement timeout of its own. Against the local PostgreSQL (skipped when it cannot be reached), as the migration
role, in a database of its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from migration_operator import database
from migration_operator.models import DatabaseMigrationSpec, parse_spec
from tests.support import postgres

pytestmark = pytest.mark.skipif(not postgres.reachable(), reason="needs the local PostgreSQL (make cluster)")
LOGIN = database.Credentials(postgres.APP_ROLE, postgres.APP_PASSWORD)


@pytest.fixture
def checked() -> Iterator[str]:
    """A database owned by the migration role with one table of two rows."""
    with postgres.app_owned_database("checks") as name:
        with postgres.connect(name, user=postgres.APP_ROLE, password=postgres.APP_PASSWORD) as conn:
            conn.execute("create table tickets (id int primary key, token text)")
            conn.execute("insert into tickets values (1, 'tok_row_secret_1'), (2, 'tok_row_secret_2')")
        yield name


def spec_for(db: str, checks: list[dict[str, str]], **verify: Any) -> DatabaseMigrationSpec:
    endpoint = postgres.test_endpoint()
    return parse_spec(
        {
            "database": {
                "host": endpoint.host,
                "port": endpoint.port,
                "name": db,
                "credentialsSecret": {"name": "s"},
                "sslMode": "prefer",
            },
            "migrations": {"configMap": {"name": "m"}},
            "backup": {"enabled": False},
            "rollback": {"strategy": "None"},
            "verify": {"checks": checks, **verify},
        }
    )


def results(db: str, *queries: str, **verify: Any) -> dict[str, bool | str]:
    checks = [{"name": f"c{i}", "sql": q} for i, q in enumerate(queries)]
    verification = asyncio.run(database.verify(spec_for(db, checks, **verify), LOGIN, None))
    assert verification.error is None, verification.error
    return verification.check_results


def rows(db: str) -> int:
    with postgres.connect(db) as conn:
        return int(conn.execute("select count(*) from tickets").fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize(
    "hostile",
    [
        "select true; commit; begin read write; delete from tickets; commit",  # the issue's
        "select true; delete from tickets",
        "delete from tickets returning true",
        "with gone as (delete from tickets returning 1) select count(*) > 0 from gone",
        "select true from (select set_config('transaction_read_only', 'off', true)) x; delete from tickets",
        "do $$ begin delete from tickets; end $$",
        "select set_config('default_transaction_read_only', 'off', false) is not null",
    ],
)
def test_a_check_cannot_write(checked: str, hostile: str) -> None:
    outcome = results(checked, hostile)["c0"]
    assert outcome is not True or "set_config" in hostile, outcome
    assert rows(checked) == 2
    # and the session it ran in is still read-only for the next check
    assert isinstance(results(checked, hostile, "insert into tickets values (3, 'x') returning true")["c1"], str)
    assert rows(checked) == 2


def test_a_check_passes_fails_or_says_what_is_wrong(checked: str) -> None:
    found = results(
        checked,
        "select count(*) = 2 from tickets",
        "select count(*) = 3 from tickets;",
        "select 1, 2",
        "select id from tickets",
        "select 'yes'",
        "select count(*) from nothing_here",
    )
    assert found["c0"] is True and found["c1"] is False
    assert "one row of one boolean column" in str(found["c2"]) and "one row of one boolean column" in str(found["c3"])
    assert "boolean" in str(found["c4"])
    assert "does not exist" in str(found["c5"]) and "42P01" in str(found["c5"])


def test_a_check_has_its_own_statement_timeout(checked: str) -> None:
    started = time.monotonic()
    found = results(checked, "select pg_sleep(30) is not null", checkTimeoutSeconds=1)
    assert time.monotonic() - started < 15
    assert "statement timeout" in str(found["c0"]), found


def test_a_check_error_carries_no_row_data_once_scrubbed(checked: str) -> None:
    from migration_operator import errors

    found = results(checked, "select token::int = 1 from tickets where id = 1")
    assert "tok_row_secret_1" not in errors.scrub(str(found["c0"])), found


def test_checks_may_run_as_a_role_of_their_own(checked: str) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with postgres.connect(checked) as conn:
        conn.execute(sql.SQL("create role {} login password 'reader-pass'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("grant select on tickets to {}").format(sql.Identifier(role)))
    try:
        checks = [{"name": "who", "sql": f"select current_user = '{role}'"}]
        spec = spec_for(checked, checks)
        reader = database.Credentials(role, "reader-pass")
        verification = asyncio.run(database.verify(spec, LOGIN, None, reader))
        assert verification.check_results == {"who": True}
    finally:
        with postgres.connect(checked) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
