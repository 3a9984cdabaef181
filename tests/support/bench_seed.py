"""The databases of `make bench`: the parking example at V5 plus one wide table of N rows, seeded once per size and
kept (a template for the copies every run migrates), and the migration the benchmark runs on them.

The seed `bench_seed_<rows>_v<SHAPE>` is a copy of parking_template (V1..V5 applied: clients, users, parking_spots,
tickets, the small tables the app reads) with `parking_events`: 12 columns (~190 bytes a row), a primary key, a
foreign key to parking_spots and a second index. It is marked complete by a comment on the database, written last:
a seed without it (an interrupted seeding) is dropped and seeded again. BENCH_RESEED=1 seeds again anyway;
BENCH_DROP_SEEDS=1 drops them at the end of the run (they take ~190 MB per million rows).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from tests.support import postgres

SHAPE = 1  # bump when the seeded shape changes: older seeds are then ignored (and can be dropped by hand)
BIG_TABLE = "parking_events"
SEED_PREFIX = "bench_seed_"
COPY_PREFIX = "bench_"

SEED_SQL = f"""
create table {BIG_TABLE} (
  id bigint primary key,
  spot_id bigint not null,
  client_id bigint,
  plate text not null,
  entered_at timestamptz not null,
  exited_at timestamptz,
  amount_cents integer not null,
  currency char(3) not null default 'EUR',
  payment_method text not null,
  gate text not null,
  status text not null,
  note text
);
insert into {BIG_TABLE}
select g,
       (select min(id) from parking_spots) + (g % (select count(*) from parking_spots)),
       case when g % 7 = 0 then null else 1 + g % 50 end,
       upper(substr(md5(g::text), 1, 7)),
       timestamptz '2024-01-01' + g * interval '17 seconds',
       timestamptz '2024-01-01' + g * interval '17 seconds' + (g % 300) * interval '1 minute',
       (g % 5000) + 100,
       'EUR',
       (array['card', 'cash', 'app', 'invoice'])[1 + g % 4],
       'gate-' || (g % 12),
       (array['closed', 'paid', 'open'])[1 + g % 3],
       md5((g * 31)::text)
from generate_series(1, %(rows)s) g;
alter table {BIG_TABLE} add constraint {BIG_TABLE}_spot_fk foreign key (spot_id) references parking_spots (id);
create index {BIG_TABLE}_spot_entered_idx on {BIG_TABLE} (spot_id, entered_at);
alter table {BIG_TABLE} owner to {postgres.APP_ROLE};
"""

# The migration every run applies: what the issue measures (ADD COLUMN + CREATE INDEX on the big table).
MIGRATION_NAME = "V6__bench_plate_index.sql"
MIGRATION_SQL = (
    f"ALTER TABLE {BIG_TABLE} ADD COLUMN receipt_no text;\n"
    f"CREATE INDEX {BIG_TABLE}_plate_idx ON {BIG_TABLE} (plate);\n"
)
# The same migration failing at its end, inside its transaction: Flyway rolls it back, after the index build's time.
FAILING_MIGRATION_SQL = MIGRATION_SQL + "SELECT 1 / 0;\n"


@dataclass(frozen=True)
class Seed:
    name: str
    rows: int
    seconds: float | None  # seeding time of this run; None when an existing seed was reused
    seeded_seconds: float  # the seeding time recorded when it was made
    database_bytes: int
    table_bytes: int


def seed_name(rows: int) -> str:
    return f"{SEED_PREFIX}{rows}_v{SHAPE}"


def _marker(conn: Any, name: str) -> dict[str, str] | None:
    row = conn.execute(
        "select shobj_description(oid, 'pg_database') from pg_database where datname = %s", (name,)
    ).fetchone()
    if row is None:
        return None
    text = row[0] or ""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    return fields if fields.get("bench-seed") == str(SHAPE) else {}


def _sizes(name: str) -> tuple[int, int]:
    with postgres.connect(name) as conn:
        row = conn.execute(
            "select pg_database_size(current_database()), pg_total_relation_size(%s)", (BIG_TABLE,)
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def drop_database(conn: Any, name: str) -> None:
    postgres.drop_database(conn, name)


def ensure_seed(rows: int) -> Seed:
    """The seed of `rows` rows: reused when a complete one exists, else made (and timed)."""
    name = seed_name(rows)
    with postgres.connect() as conn:
        marker = _marker(conn, name)
        if marker and os.environ.get("BENCH_RESEED") != "1":
            database_bytes, table_bytes = _sizes(name)
            return Seed(name, rows, None, float(marker.get("seconds", "0")), database_bytes, table_bytes)
        if marker is not None:
            drop_database(conn, name)
        started = time.monotonic()
        conn.execute(sql.SQL("create database {} template {} owner {}").format(
            sql.Identifier(name), sql.Identifier(postgres.TEMPLATE_DATABASE), sql.Identifier(postgres.APP_ROLE)))
    with postgres.connect(name) as seed:
        seed.execute("set maintenance_work_mem = '256MB'")
        # no parallel maintenance workers: their shared memory lives in /dev/shm, 64 MiB in a container (the database's
        # pod on the real node), and a parallel vacuum sized by maintenance_work_mem fails there (DiskFull, 20M rows)
        seed.execute("set max_parallel_maintenance_workers = 0")
        for statement in (s.strip() for s in SEED_SQL.split(";")):
            if statement:
                seed.execute(statement.replace("%(rows)s", str(int(rows))))
        # frozen and analysed: every copy starts with the same hint bits, visibility map and statistics
        seed.execute(f"vacuum (freeze, analyze) {BIG_TABLE}")
        seed.execute("vacuum (analyze)")
    seconds = time.monotonic() - started
    with postgres.connect() as conn:
        conn.execute(sql.SQL("comment on database {} is {}").format(
            sql.Identifier(name), sql.Literal(f"bench-seed={SHAPE} rows={rows} seconds={seconds:.1f}")))
    database_bytes, table_bytes = _sizes(name)
    return Seed(name, rows, seconds, seconds, database_bytes, table_bytes)


def copy(seed: Seed, name: str, strategy: str = "wal_log") -> float:
    """CREATE DATABASE `name` TEMPLATE the seed (owned by the migration role); the seconds it took."""
    with postgres.connect() as conn:
        postgres.terminate_sessions(conn, seed.name)
        started = time.monotonic()
        conn.execute(sql.SQL("create database {} template {} owner {} strategy {}").format(
            sql.Identifier(name), sql.Identifier(seed.name), sql.Identifier(postgres.APP_ROLE),
            sql.SQL(strategy)))
        return time.monotonic() - started


def drop_copies(name: str) -> None:
    """The copy and what the operator made of it: the Clone backup `<db>_pre_<id>`, a failed copy `<db>_failed_<id>`."""
    with postgres.connect() as conn:
        for like in (name, f"{name}_pre_%", f"{name}_failed_%"):
            for (found,) in conn.execute("select datname from pg_database where datname like %s", (like,)).fetchall():
                drop_database(conn, found)


def drop_seeds() -> None:
    with postgres.connect() as conn:
        for (found,) in conn.execute("select datname from pg_database where datname like %s",
                                     (f"{SEED_PREFIX}%",)).fetchall():
            drop_database(conn, found)


def rows_of(database: str) -> dict[str, int]:
    """Exact row counts per table of the public schema."""
    with postgres.connect(database) as conn:
        tables = [r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = 'public' order by 1").fetchall()]
        counts = {}
        for table in tables:
            row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts


def database_bytes(database: str) -> int:
    with postgres.connect() as conn:
        row = conn.execute("select pg_database_size(%s)", (database,)).fetchone()
        return int(row[0]) if row else 0
