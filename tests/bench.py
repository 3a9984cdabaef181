"""make bench: the speed and memory figures of the operator, printed, never asserted in timed tests.

1. decide(): the pure phase machine, microseconds per decision (runs on every wake-up of every migration).
2. snapshot(): the "before"/"after" snapshot (row counts + content checksums) against tables of growing size,
   with the cost per 100k rows and the growth ratio (linear is ~1.0 per 10x); tables above
   database.CHECKSUM_ROW_LIMIT get a count only, which the figures show.
3. operator memory: RSS of `python -m migration_operator` once it is up and idle (needs $KUBECONFIG).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from psycopg import sql

from migration_operator import database, machine, observations
from migration_operator.models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase, parse_spec
from tests.support import postgres
from tests.support.operator import free_port

REPO = Path(__file__).resolve().parents[1]


def spec_for(db: str) -> DatabaseMigrationSpec:
    endpoint = postgres.test_endpoint()
    return parse_spec({
        "database": {"host": endpoint.host, "port": endpoint.port, "name": db,
                     "credentialsSecret": {"name": "unused"}},
        "migrations": {"configMap": {"name": "m"}},
        "backup": {"volume": {"claimName": "b"}},
        "maintenance": {"deployment": {"name": "app"}},
    })


def bench_decide() -> None:
    spec = spec_for("bench")
    status = DatabaseMigrationStatus.model_validate({
        "phase": Phase.MIGRATING.value, "phaseStartedAt": "2026-01-01T00:00:00Z",
        "maintenance": {"deployment": "app", "originalReplicas": 3}})
    obs = observations.Observations(
        lock=observations.LockObservation(acquired=True),
        deployment=observations.DeploymentObservation(exists=True, replicas=0, pods=0, original_replicas_annotation=3),
        jobs={"migrate": observations.JobObservation(state="Running")},
    )
    runs = 20000
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(runs):
            machine.decide(spec, status, obs, "bench", "uid")
        samples.append((time.perf_counter() - start) / runs * 1e6)
    print(f"decide() while Migrating:        {statistics.median(samples):8.1f} us/decision "
          f"(median of 5 x {runs}; {1e6 / statistics.median(samples):,.0f} decisions/s)")


def _make_table(conn: Any, rows: int) -> None:
    conn.execute("drop table if exists bench_rows")
    conn.execute("create table bench_rows (id bigint primary key, name text, amount numeric, at timestamptz)")
    conn.execute("insert into bench_rows select g, md5(g::text), g * 1.5, now() from generate_series(1, %s) g",
                 (rows,))
    conn.execute("analyze bench_rows")


def bench_snapshot() -> None:
    credentials = database.Credentials(os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
                                       os.environ.get("MO_E2E_PG_PASSWORD", "postgres"))
    sizes = [10_000, 100_000, database.CHECKSUM_ROW_LIMIT, database.CHECKSUM_ROW_LIMIT * 5]
    print(f"snapshot() (count + md5 checksum per table up to {database.CHECKSUM_ROW_LIMIT:,} rows, count above):")
    previous: tuple[int, float] | None = None
    with postgres.cloned_database("bench") as db:
        spec = spec_for(db)
        for rows in sizes:
            with postgres.connect(db) as conn:
                _make_table(conn, rows)
            timings = []
            for _ in range(3):
                start = time.perf_counter()
                snap = asyncio.run(database.take_snapshot(spec, credentials))
                timings.append(time.perf_counter() - start)
            best = min(timings)
            checksummed = "public.bench_rows" in snap.checksums
            per_100k = best / rows * 100_000 * 1000
            ratio = ""
            if previous:
                ratio = f"  x{best / previous[1]:.1f} time for x{rows / previous[0]:.0f} rows"
            print(f"  {rows:>9,} rows  {best * 1000:8.1f} ms  {per_100k:7.1f} ms/100k rows  "
                  f"checksum={'yes' if checksummed else 'no '}{ratio}")
            previous = (rows, best)
        with postgres.connect(db) as conn:
            conn.execute(sql.SQL("drop table bench_rows"))


def bench_operator_memory() -> None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).exists():
        print("operator memory:                 skipped (no KUBECONFIG)")
        return
    health = free_port()
    env = os.environ | {"METRICS_PORT": str(free_port()), "METRICS_HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "migration_operator", "--namespace", "bench-nothing-*",
         "--liveness", f"http://127.0.0.1:{health}/healthz"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        print(f"operator memory (idle, started): {rss_kib / 1024:8.1f} MiB RSS")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    print("== migration-operator benchmarks")
    bench_decide()
    bench_snapshot()
    bench_operator_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
