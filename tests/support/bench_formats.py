"""The backup's cost by pg_dump compression level (issue 13: "backup throughput >= 2x today's pg_dump -Fc"), on the
benchmark's seed, with the host's client tools: for each level, `pg_dump -Fc` then the two reads the backup Job makes
before it calls a dump verified (`pg_restore --list`, and `pg_restore --file=/dev/null`, every data block
decompressed). "default" is pg_dump's own level (gzip 6), what the operator used before `backup.compression`.

The server's side (COPY out, TLS) is the same for every level; the levels differ in the client's gzip, which on the
2 cores here shares the machine with the server.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import postgres

LEVELS = ("default", "1", "0")


def _timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def measure(database: str, rounds: int = 1, levels: tuple[str, ...] = LEVELS) -> list[dict[str, Any]]:
    """One row per (round, level), levels interleaved within a round so that the load hits each alike."""
    endpoint = postgres.test_endpoint()
    env = os.environ | {
        "PGHOST": endpoint.host, "PGPORT": str(endpoint.port), "PGDATABASE": database,
        "PGUSER": postgres.APP_ROLE, "PGPASSWORD": postgres.APP_PASSWORD,
        "PGSSLMODE": os.environ.get("BENCH_SSLMODE", "require"),
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as work:
        for round_ in range(1, rounds + 1):
            for level in levels:
                dump = Path(work) / f"{level}.dump"
                compress = [] if level == "default" else [f"--compress={level}"]
                load = os.getloadavg()[0]
                dump_s = _timed(["pg_dump", "--format=custom", "--no-password", *compress, f"--file={dump}"], env)
                list_s = _timed(["pg_restore", "--list", str(dump)], env)
                read_s = _timed(["pg_restore", "--file=/dev/null", str(dump)], env)
                rows.append({"round": round_, "level": level, "dump": dump_s, "list": list_s, "read_back": read_s,
                             "total": dump_s + list_s + read_s, "bytes": dump.stat().st_size, "load": load})
                dump.unlink()
    return rows


def print_rows(rows: list[dict[str, Any]], database_bytes: int, table_rows: int) -> None:
    print(f"\n   backup by compression level (host pg_dump -Fc + pg_restore --list + full read-back, database "
          f"{database_bytes / 1e6:,.1f} MB, {table_rows:,} rows):")
    base = {r["round"]: r["total"] for r in rows if r["level"] == "default"}
    for r in rows:
        speedup = base.get(r["round"], 0) / r["total"] if r["total"] else 0
        print(f"     round {r['round']} -Z {r['level']:<8} dump {r['dump']:6.2f} s  list {r['list']:5.2f} s  "
              f"read-back {r['read_back']:6.2f} s  total {r['total']:6.2f} s  "
              f"{database_bytes / 1e6 / r['total']:7.1f} MB/s  x{speedup:4.2f} of default  "
              f"file {r['bytes'] / 1e6:8.1f} MB  (load {r['load']:.1f})")
