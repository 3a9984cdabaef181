"""The go of the pre-started backup and migrate Jobs (spec.maintenance.prestartMigration; machine/prestart.py).

Each pre-started Job connects and, before anything else on its session, runs `wait_sql` (Flyway as its `initSql`,
the backup script in `psql` before `pg_dump`): a loop that sleeps until a PostgreSQL advisory lock keyed by the run's
uid and the step is held by someone, and fails after its budget. The operator takes that lock (`give`) only when the
step's phase starts (the backup once the app is drained, the migration once the backup is verified) and keeps its
session until the Job has ended (`withdraw`; a pass that does not give a go withdraws it: `withdraw_except`).

Why a lock held in a session, and not a row or a file: a positive signal that cannot outlive its giver. Nothing is
written to the database before its backup; an operator that dies takes its go with it (the kernel closes its socket,
PostgreSQL releases the lock), so a pod that has not seen the go by then keeps waiting until a new leader gives it
again. Flyway opens one session for PostgreSQL (checked with Flyway 12: one backend for the whole `migrate`), and the
backup script's wait is its own `psql`, so once the wait has returned, withdrawing the go changes nothing for it.

The waiting statement sets its own statement_timeout to 0 and resets it afterwards (to the role's and database's
setting): the step runs with the session the user configured. The loop's own deadline ends it when no go comes,
because PostgreSQL does not notice a vanished client while a statement sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import psycopg

from . import database
from .database import Credentials
from .models import DatabaseMigrationSpec

# pg_advisory_lock(int4, int4): the first key says "migration-operator go signal" ("dbop" in ASCII), the second is
# derived from the run's uid. Both below 2**31: pg_locks shows them as oid (unsigned), and a literal compares as is.
NAMESPACE_KEY = 0x64626F70
POLL_SECONDS = 0.05

_held: dict[tuple[str, str], psycopg.AsyncConnection[dict[str, Any]]] = {}


def key(uid: str, step: str) -> tuple[int, int]:
    """The advisory lock of the go of run `uid`'s pre-started `step` Job."""
    return NAMESPACE_KEY, int(hashlib.sha256(f"{uid}/{step}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def wait_sql(uid: str, step: str, budget_seconds: int) -> str:
    """The statement a pre-started `step` Job of run `uid` runs first (Flyway's initSql, the backup's psql): wait for
    the go, at most `budget_seconds`."""
    first, second = key(uid, step)
    budget = int(budget_seconds)
    return (
        "SET statement_timeout = 0; "
        "DO $dbops$ BEGIN "
        "WHILE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND classid = {first} AND objid = {second} AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) LOOP "
        f"IF clock_timestamp() > statement_timestamp() + interval '{budget} seconds' THEN "
        f"RAISE EXCEPTION 'migration-operator: no go for this pre-started {step} Job within {budget} s'; "
        "END IF; "
        f"PERFORM pg_catalog.pg_sleep({POLL_SECONDS}); "
        "END LOOP; END $dbops$; "
        "RESET statement_timeout"
    )


def given(uid: str, step: str) -> bool:
    """Whether this process holds the go of run `uid`'s `step` on a session it has not seen fail."""
    conn = _held.get((uid, step))
    return conn is not None and not conn.closed and not conn.broken


async def give(spec: DatabaseMigrationSpec, credentials: Credentials, uid: str, step: str) -> bool:
    """Hold the go of run `uid`'s pre-started `step` Job (idempotent: a held session is checked with one round trip,
    and taken again when it died, e.g. with a server restart). Returns True when this call took it; False when this
    process held it already, or another session does (an earlier leader whose session is still open: the go is given
    either way; a later pass takes it over once that session is gone)."""
    if given(uid, step):
        try:
            await _held[(uid, step)].execute("select 1")
            return False
        except psycopg.Error:
            pass
    await withdraw(uid, step)
    conn = await database.connect(spec, credentials)
    try:
        first, second = key(uid, step)
        cursor = await conn.execute("select pg_try_advisory_lock(%s, %s) as taken", [first, second])
        row = await cursor.fetchone()
    except BaseException:
        await conn.close()
        raise
    if not (row and row["taken"]):
        await conn.close()
        return False
    _held[(uid, step)] = conn
    return True


async def withdraw(uid: str, step: str | None = None) -> None:
    """Release the go of run `uid`'s `step` (every step: None), closing its session; nothing when none is held."""
    for held in [k for k in _held if k[0] == uid and (step is None or k[1] == step)]:
        conn = _held.pop(held)
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):  # a broken session is gone already, and its lock with it
                await conn.close()


async def withdraw_except(uid: str, keep: set[str]) -> None:
    """Release every go of run `uid` but those of the steps in `keep` (what this pass asked to hold)."""
    for held in [k for k in _held if k[0] == uid and k[1] not in keep]:
        await withdraw(*held)
