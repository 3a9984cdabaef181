"""database.py against the real local PostgreSQL (127.0.0.1:15432 by default, see tests/support/postgres.py): the
Clone statements and their timeouts, what a cancelled or interrupted clone leaves, and the history table looked up
under names PostgreSQL would fold (mixed case, dots). Each test gets its own database, owned by the migration role
(parking_admin, CREATEDB like the role the operator logs in with); skipped when the database cannot be reached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from migration_operator import database
from migration_operator.models import DatabaseMigrationSpec, parse_spec
from tests.support import postgres

pytestmark = pytest.mark.skipif(not postgres.reachable(), reason="needs the local PostgreSQL (make cluster)")

LOGIN = database.Credentials(postgres.APP_ROLE, postgres.APP_PASSWORD)


@pytest.fixture
def scratch() -> Iterator[str]:
    """An empty database owned by the migration role; it and its clones are dropped afterwards."""
    with postgres.app_owned_database("dbsql") as name:
        yield name


def spec_for(db: str, **migrations: Any) -> DatabaseMigrationSpec:
    endpoint = postgres.test_endpoint()
    return parse_spec(
        {
            "database": {
                "host": endpoint.host,
                "port": endpoint.port,
                "name": db,
                "credentialsSecret": {"name": "s"},
            },
            "migrations": {"configMap": {"name": "m"}, **migrations},
            "backup": {"method": "Clone"},
        }
    )


def as_owner(db: str, *statements: str) -> None:
    with postgres.connect(db, user=postgres.APP_ROLE, password=postgres.APP_PASSWORD) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def datconnlimit(db: str) -> int | None:
    with postgres.connect() as conn:
        row = conn.execute("select datconnlimit from pg_database where datname = %s", (db,)).fetchone()
    return None if row is None else int(row[0])


def rows_in(db: str, table: str) -> int:
    with postgres.connect(db) as conn:
        row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------------------------------------ Clone
async def test_a_clone_that_takes_longer_than_the_statement_timeout_completes(
    scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 60 s statement timeout of every other connection, shrunk to 1 ms here (any copy takes longer than that,
    as a large database's takes longer than 60 s), must not apply to CREATE DATABASE ... TEMPLATE."""
    as_owner(scratch, "create table spots as select g as id, md5(g::text) as label from generate_series(1, 20000) g")
    clone = f"{scratch}_pre_a"
    with monkeypatch.context() as patched:
        patched.setattr(database, "STATEMENT_TIMEOUT_MS", 1)
        await database.create_clone(spec_for(scratch), LOGIN, clone)
    assert rows_in(clone, "spots") == 20000
    state = await database.clone_state(spec_for(scratch), LOGIN, clone, f"{scratch}_failed_a")
    assert state.clone_exists and (state.size_bytes or 0) > 0


async def test_the_rename_back_is_not_cut_by_the_statement_timeout(
    scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone, failed = f"{scratch}_pre_b", f"{scratch}_failed_b"
    await database.create_clone(spec_for(scratch), LOGIN, clone)
    with monkeypatch.context() as patched:
        patched.setattr(database, "STATEMENT_TIMEOUT_MS", 1)
        await database.swap_clone_back(spec_for(scratch), LOGIN, clone, failed)
    state = await database.clone_state(spec_for(scratch), LOGIN, clone, failed)
    assert (state.source_exists, state.clone_exists, state.failed_copy_exists) == (True, False, True)


async def test_clone_and_rename_give_up_on_a_held_lock_after_the_lock_timeout(
    scratch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a statement timeout, only lock_timeout keeps CREATE DATABASE and ALTER DATABASE ... RENAME from
    queueing for ever behind a transaction holding the database (here COMMENT ON DATABASE, never committed)."""
    monkeypatch.setattr(database, "CLONE_LOCK_TIMEOUT_MS", 300)
    clone, failed = f"{scratch}_pre_c", f"{scratch}_failed_c"
    spec = spec_for(scratch)
    comment = sql.SQL("comment on database {} is 'held by a test'").format(sql.Identifier(scratch))
    with postgres.connect(autocommit=False) as holder:
        holder.execute(comment)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await asyncio.wait_for(database.create_clone(spec, LOGIN, clone), timeout=30)
        assert time.monotonic() - started < 15
        holder.rollback()
    await database.create_clone(spec, LOGIN, clone)
    with postgres.connect(autocommit=False) as holder:
        holder.execute(comment)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await asyncio.wait_for(database.swap_clone_back(spec, LOGIN, clone, failed), timeout=30)
        assert time.monotonic() - started < 15
        holder.rollback()
    state = await database.clone_state(spec, LOGIN, clone, failed)
    assert (state.source_exists, state.clone_exists, state.failed_copy_exists) == (True, True, False)


async def test_a_cancelled_create_database_leaves_no_clone_behind(scratch: str) -> None:
    """What PostgreSQL leaves when CREATE DATABASE is cancelled mid-copy: nothing (the statement is transactional;
    the row in pg_database is never committed and the copied files are removed). The next attempt starts clean."""
    clone = f"{scratch}_pre_d"
    as_owner(scratch, "create table spots as select g as id from generate_series(1, 20000) g")
    with pytest.raises(psycopg.errors.QueryCanceled):
        as_owner(
            "postgres",
            "set statement_timeout = 1",
            f'create database "{clone}" template "{scratch}"',
        )
    assert datconnlimit(clone) is None
    state = await database.clone_state(spec_for(scratch), LOGIN, clone, f"{scratch}_failed_d")
    assert not state.clone_exists
    await database.create_clone(spec_for(scratch), LOGIN, clone)
    assert rows_in(clone, "spots") == 20000


async def test_an_invalid_clone_is_not_a_backup_and_is_made_again(scratch: str) -> None:
    """The one half-made database PostgreSQL leaves: a DROP DATABASE interrupted after it started removing files
    marks the database invalid (datconnlimit = -2, PostgreSQL >= 15.4 and the other supported branches' releases
    of August 2023), and nobody can connect to it. Such a clone is not a backup: it is dropped and made again."""
    clone = f"{scratch}_pre_e"
    as_owner(scratch, "create table spots as select g as id from generate_series(1, 100) g")
    await database.create_clone(spec_for(scratch), LOGIN, clone)
    with postgres.connect() as conn:
        conn.execute("update pg_database set datconnlimit = -2 where datname = %s", (clone,))
    state = await database.clone_state(spec_for(scratch), LOGIN, clone, f"{scratch}_failed_e")
    assert not state.clone_exists
    await database.create_clone(spec_for(scratch), LOGIN, clone)
    assert datconnlimit(clone) == -1
    assert rows_in(clone, "spots") == 100


MIB = 2**20


@pytest.mark.parametrize(
    ("version", "size", "shared_buffers", "expected"),
    [
        (140011, 10 * 2**30, 128 * MIB, None),  # PostgreSQL 14: no STRATEGY clause
        (150004, 8 * MIB, 0, "wal_log"),  # small: FILE_COPY's checkpoint costs more than the copy
        (150004, database.FILE_COPY_FROM_BYTES - 1, 16 * MIB, "wal_log"),
        (150004, database.FILE_COPY_FROM_BYTES, 16 * MIB, "file_copy"),
        (150004, 200 * MIB, 128 * MIB, "file_copy"),  # the 1M-row benchmark database
        (150004, 200 * MIB, 8 * 2**30, "wal_log"),  # the checkpoint could write more than the copy
        (170000, 4 * 2**30, 128 * MIB, "file_copy"),  # large: a file copy, not every block through the WAL
    ],
)
def test_the_clone_strategy_is_picked_by_server_and_size(
    version: int, size: int, shared_buffers: int, expected: str | None
) -> None:
    assert database.clone_strategy(version, size, shared_buffers) == expected
    statement = database.clone_statement("db_pre_1", "Db", expected)  # type: ignore[arg-type]
    with postgres.connect() as conn:
        text = statement.as_string(conn)
    assert text == 'create database "db_pre_1" template "Db"' + (f" strategy {expected}" if expected else "")


async def test_a_large_database_is_cloned_with_file_copy(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FILE_COPY from the threshold up (shrunk here): the clone is whole, and the server checkpointed for it."""
    as_owner(scratch, "create table spots as select g as id, md5(g::text) as label from generate_series(1, 20000) g")
    monkeypatch.setattr(database, "FILE_COPY_FROM_BYTES", 1)
    by_size_only = database.clone_strategy  # this server's shared_buffers is larger than the scratch database
    monkeypatch.setattr(database, "clone_strategy", lambda version, size, _: by_size_only(version, size, 0))
    before = requested_checkpoints()
    assert await database.create_clone(spec_for(scratch), LOGIN, f"{scratch}_pre_f") == "file_copy"
    assert requested_checkpoints() > before  # FILE_COPY's own checkpoints (other sessions can only add to it)
    assert rows_in(f"{scratch}_pre_f", "spots") == 20000
    monkeypatch.setattr(database, "FILE_COPY_FROM_BYTES", 2**60)
    assert await database.create_clone(spec_for(scratch), LOGIN, f"{scratch}_pre_g") == "wal_log"
    assert rows_in(f"{scratch}_pre_g", "spots") == 20000
    assert await database.create_clone(spec_for(scratch), LOGIN, f"{scratch}_pre_g") is None  # already there


def requested_checkpoints() -> int:
    with postgres.connect() as conn:
        row = conn.execute("select checkpoints_req from pg_stat_bgwriter").fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------------------------------------ history
HISTORY_COLUMNS = (
    "installed_rank int primary key, version varchar(50), description varchar(200) not null, "
    "type varchar(20) not null, script varchar(1000) not null, checksum int, installed_by varchar(100) not null, "
    "installed_on timestamp not null default now(), execution_time int not null, success boolean not null"
)


def make_history(db: str, qualified: str) -> None:
    """A Flyway history table as Flyway creates it (Flyway quotes the names it is given), with two rows."""
    as_owner(
        db,
        f"create table {qualified} ({HISTORY_COLUMNS})",
        f"insert into {qualified} (installed_rank, version, description, type, script, checksum, installed_by, "
        "execution_time, success) values (1, '1', 'init', 'SQL', 'V1__init.sql', 11, 'app', 5, true), "
        "(2, '2', 'zones', 'SQL', 'V2__zones.sql', 22, 'app', 7, true)",
    )


@pytest.mark.parametrize(
    ("schemas", "table", "create"),
    [
        (["App"], "Flyway_History", ['create schema "App"', '"App"."Flyway_History"']),
        (["app"], "Flyway_History", ["create schema app", 'app."Flyway_History"']),
        (["App"], "flyway_schema_history", ['create schema "App"', '"App".flyway_schema_history']),
        ([], "Flyway_History", ['"Flyway_History"']),
        ([], "history.v2", ['"history.v2"']),
    ],
)
async def test_a_history_table_is_found_under_its_exact_name(
    scratch: str, schemas: list[str], table: str, create: list[str]
) -> None:
    *statements, qualified = create
    if statements:
        as_owner(scratch, *statements)
    make_history(scratch, qualified)
    spec = spec_for(scratch, schemas=schemas, table=table)
    check = await database.check(spec, LOGIN)
    assert check.reachable and check.history_table_exists, check
    assert [row.version for row in check.history] == ["1", "2"]
    snapshot = await database.take_snapshot(spec, LOGIN)
    assert snapshot.version == "2" and snapshot.last_installed_rank == 2


async def test_a_lower_case_lookalike_is_not_the_history_table(scratch: str) -> None:
    """`Flyway_History` asked for, only `flyway_history` present: no history (not an error reading it)."""
    make_history(scratch, "flyway_history")
    check = await database.check(spec_for(scratch, table="Flyway_History"), LOGIN)
    assert check.reachable and not check.history_table_exists and check.history == ()
