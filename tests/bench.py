"""make bench: the speed and memory figures of the operator, printed, never asserted in timed tests.

1. decide(): the pure phase machine, microseconds per decision (runs on every wake-up of every migration).
2. snapshot(): the "before"/"after" snapshot (row counts + content checksums) against tables of growing size,
   with the cost per 100k rows and the growth ratio (linear is ~1.0 per 10x); tables above
   database.CHECKSUM_ROW_LIMIT get a count only, which the figures show.
3. operator memory: RSS of `python -m migration_operator` once it is up and idle (needs $KUBECONFIG).

On a cluster ($KUBECONFIG, the local one by default), issue 13's benchmark, for each size of BENCH_ROWS:
4. downtime: a database seeded with the parking example plus a wide table of N rows (tests/support/bench_seed.py),
   copied (CREATE DATABASE ... TEMPLATE), migrated (ADD COLUMN + CREATE INDEX on the big table) once by the operator
   (Dump to a PVC, the parking gateway as the maintenance Deployment) and once by hack/bench-script.sh, the minimal
   hand-written runbook, on identical copies; the app's downtime (fewer than all replicas available -> all
   available again, from a watch of the Deployment) and the phases side by side, the ratio operator/script, and
   where inside the window the operator's time goes. Then the same with backup.method Clone.
5. backup and restore throughput per method (a run whose verification fails on purpose times the Restore).
6. reaction latencies p50/p95 over every operator run: created -> first Job; a Job's container ended (as the API first
   shows it; negative when the operator saw the end in the step's log first) -> the next phase (and from the Job's
   status, which comes up to a second after the pod's end).
7. operator RSS with 100 DatabaseMigrations in 20 namespaces (95 finished, 5 migrating).
Everything also goes to bench-results/<UTC time>.json (and the operators' logs to bench-results/<UTC time>/).

Knobs: BENCH_ROWS (comma-separated sizes, default 1000000,20000000), BENCH_ROUNDS (operator/script pairs per size,
default 2; even rounds run the script first, so neither always runs on the machine the other just loaded),
BENCH_FORMATS (rounds of the host-side backup by compression level, default 1; 0 skips it: bench_formats.py),
BENCH_SCRIPT_COMPRESSION (the script's pg_dump level, default the operator's backup.compression default; empty:
pg_dump's own), BENCH_CLONE=0 / BENCH_RESTORE=0 / BENCH_UNCHANGED=0 (skip the Clone run / the two rolled-back runs / the
run whose migration fails inside its transaction, rolled back without a restore),
BENCH_RESTORE_PATHS=0 (skip timing round 1's script dump restored two ways on the host: one transaction, -j2),
BENCH_JOB_CPU (the operator's Jobs' CPU request, default 250m; empty: none, BestEffort pods: bench_runs.JOB_CPU),
BENCH_REACTION_RUNS (extra small runs for the latencies, default 5), BENCH_RSS=0, BENCH_SSLMODE (both sides'
sslmode, default require), BENCH_PRESTART (1, the default: the operator's Dump runs pre-start their Jobs,
maintenance.prestartMigration; 0: they do not; both: each round adds an operator run without it, paired),
BENCH_RESEED=1 / BENCH_DROP_SEEDS=1 (tests/support/bench_seed.py), BENCH_CLUSTER=0 (figures 1-3 only),
BENCH_WAIT_QUIET=<seconds> (before each timed run, wait up to that long for other sessions' tests to end),
BENCH_OPERATOR_REV=<commit> (benchmark the operator of that commit, exported with `git archive` and put first on
PYTHONPATH, instead of the checkout's working tree; the benchmark's own code stays the checkout's).
Each timed run starts after the previous run's namespace is gone, a CHECKPOINT and a sync.
The namespaces are bench-run-* and bench-rss-*, each prefix watched by an operator process of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from psycopg import sql

from migration_operator import database, machine, observations
from migration_operator.models import BackupSpec, DatabaseMigrationSpec, DatabaseMigrationStatus, Phase, parse_spec
from tests.support import bench_formats, bench_runs, bench_seed, postgres
from tests.support.bench_watch import GROUP, PLURAL, VERSION
from tests.support.kube import load_config
from tests.support.operator import OperatorProcess, free_port

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


def bench_decide() -> dict[str, Any]:
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
    return {"us_per_decision": statistics.median(samples)}


def _make_table(conn: Any, rows: int) -> None:
    conn.execute("drop table if exists bench_rows")
    conn.execute("create table bench_rows (id bigint primary key, name text, amount numeric, at timestamptz)")
    conn.execute("insert into bench_rows select g, md5(g::text), g * 1.5, now() from generate_series(1, %s) g",
                 (rows,))
    conn.execute("analyze bench_rows")


def bench_snapshot() -> list[dict[str, Any]]:
    credentials = database.Credentials(os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
                                       os.environ.get("MO_E2E_PG_PASSWORD", "postgres"))
    sizes = [10_000, 100_000, database.CHECKSUM_ROW_LIMIT, database.CHECKSUM_ROW_LIMIT * 5]
    print(f"snapshot() (count + md5 checksum per table up to {database.CHECKSUM_ROW_LIMIT:,} rows, count above):")
    previous: tuple[int, float] | None = None
    figures: list[dict[str, Any]] = []
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
            figures.append({"rows": rows, "seconds": best, "checksum": checksummed})
        with postgres.connect(db) as conn:
            conn.execute(sql.SQL("drop table bench_rows"))
    return figures


def bench_operator_memory() -> float | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).exists():
        print("operator memory:                 skipped (no KUBECONFIG)")
        return None
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
        return rss_kib / 1024
    finally:
        process.terminate()
        process.wait(timeout=30)


# ================================================================================ issue 13: downtime and friends
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value.replace("_", "")) if value else default


def _sizes() -> list[int]:
    text = os.environ.get("BENCH_ROWS", "").strip() or "1000000,20000000"
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def _s(seconds: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if seconds is None else f"{seconds:>{width - 2}.1f} s"


def _ratio(a: float | None, b: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if a is None or not b else f"{a / b:>{width}.2f}"


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (q in 0..1)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def other_sessions() -> list[str]:
    """What else runs on this machine that loads it: other operators (their namespace pattern) and pytest suites."""
    found: set[str] = set()
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "migration_operator" in args and "--namespace" in args:
            pattern = args[args.index("--namespace") + 1]
            if not pattern.startswith(("bench-run", "bench-rss", "bench-nothing")):
                found.add(f"operator watching {pattern}")
        elif any(a.endswith("pytest") for a in args[:3]) or (len(args) > 2 and args[1:3] == ["-m", "pytest"]):
            found.add("pytest " + " ".join(a for a in args[3:] if a.startswith("tests/"))[:60])
    return sorted(found)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "operator_changes": git("status", "--porcelain", "--", "operator").splitlines()}


def _run_name(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:5]}"


def wait_quiet() -> float:
    """BENCH_WAIT_QUIET=<seconds>: before a timed run, wait (at most that long) until no other session's tests or
    operators run on the machine. Returns the seconds waited."""
    limit = _env_int("BENCH_WAIT_QUIET", 0)
    started = time.monotonic()
    announced = False
    while limit > 0 and time.monotonic() - started < limit:
        others = other_sessions()
        if not others:
            break
        if not announced:
            print(f"   (waiting up to {limit} s for: {', '.join(others)})", flush=True)
            announced = True
        time.sleep(5)
    return time.monotonic() - started


def _conditions() -> dict[str, Any]:
    """What else loaded the machine as a run started (it shares 2 cores with other sessions' suites)."""
    return {"loadavg": os.getloadavg()[0], "others": other_sessions()}


def _say(run: dict[str, Any], took: float) -> None:
    extra = f", rolled back in {run['rollback_to_restored']:.1f} s" if run.get("rollback_to_restored") else ""
    state = run.get("phase") or ("finished" if run.get("ended") else "did not finish")
    conditions = run.get("conditions") or {}
    others = "; also running: " + ", ".join(conditions["others"]) if conditions.get("others") else ""
    print(f"   {run['label']:<30} {state:<11} downtime {_s(run.get('downtime')).strip():>8}{extra}  "
          f"(run took {took:.0f} s; load {conditions.get('loadavg', 0):.1f}{others})", flush=True)
    if not run.get("ended") or run.get("phase") == "Failed":
        print("     " + (run.get("message") or run.get("output_tail") or "")[-1500:].replace("\n", "\n     "))


def one_copy(seed: bench_seed.Seed, tag: str, strategy: str = "wal_log") -> tuple[str, float]:
    name = f"{bench_seed.COPY_PREFIX}{seed.rows}_{tag}_{uuid.uuid4().hex[:6]}"
    return name, bench_seed.copy(seed, name, strategy)


def operator_case(api: Any, seed: bench_seed.Seed, tag: str, label: str, timeout: float,
                  copies: dict[str, list[float]], strategy: str = "wal_log", migrations: dict[str, str] | None = None,
                  **spec: Any) -> dict[str, Any]:
    name, seconds = one_copy(seed, tag, strategy)
    copies.setdefault(strategy, []).append(seconds)
    try:
        with bench_runs.place(api, name, wait_gone=True, migrations=migrations) as here:
            waited = wait_quiet()
            settled = bench_runs.settle()
            conditions = _conditions() | {"waited_for_quiet": waited}
            started = time.monotonic()
            run = bench_runs.run_operator(here, _run_name(tag), here.spec(name, **spec), label, timeout)
            figures = bench_runs.operator_figures(run)
            figures["conditions"], figures["settle_seconds"] = conditions, settled
            if figures.get("phase") == "Succeeded":
                figures["flyway_sql"] = bench_runs.flyway_sql_seconds(name)
            _say(figures, time.monotonic() - started)
            return figures
    finally:
        bench_seed.drop_copies(name)


def script_case(api: Any, seed: bench_seed.Seed, label: str, timeout: float, copies: dict[str, list[float]],
                workdir: Path, restore_paths: bool = False) -> dict[str, Any]:
    name, seconds = one_copy(seed, "script")
    copies.setdefault("wal_log", []).append(seconds)
    try:
        with bench_runs.place(api, name, wait_gone=True) as here:
            waited = wait_quiet()
            settled = bench_runs.settle()
            conditions = _conditions() | {"waited_for_quiet": waited}
            started = time.monotonic()
            run = bench_runs.run_script(here, name, bench_runs.make_workdir(workdir), label, timeout, restore_paths)
            figures = bench_runs.script_figures(run)
            figures["conditions"], figures["settle_seconds"] = conditions, settled
            figures["flyway_sql"] = bench_runs.flyway_sql_seconds(name)
            _say(figures, time.monotonic() - started)
            return figures
    finally:
        bench_seed.drop_copies(name)


def prestart_modes() -> tuple[bool, bool]:
    """BENCH_PRESTART: 1 (default) the operator's Dump runs use maintenance.prestartMigration; 0 they do not; both:
    each round adds an operator run without it, right after the one with it (what the pre-start buys, paired)."""
    mode = os.environ.get("BENCH_PRESTART", "1").strip().lower()
    return mode in ("1", "both"), mode == "both"


def size_suite(api: Any, rows: int, workdir: Path) -> dict[str, Any]:
    rounds = _env_int("BENCH_ROUNDS", 2)
    timeout = 600 + rows * 100e-6  # 20M rows: ~40 min, a bound, not an expectation
    print(f"\n-- {rows:,} rows", flush=True)
    seed = bench_seed.ensure_seed(rows)
    how = f"seeded in {seed.seconds:.1f} s" if seed.seconds is not None else (
        f"seed reused (seeded in {seed.seeded_seconds:.1f} s)")
    table_rows = bench_seed.rows_of(seed.name)
    print(f"   {seed.name}: {bench_seed.BIG_TABLE} {_mb(seed.table_bytes)}, database {_mb(seed.database_bytes)}, "
          f"{sum(table_rows.values()):,} rows in {len(table_rows)} tables; {how}", flush=True)
    copies: dict[str, list[float]] = {}
    result: dict[str, Any] = {"rows": rows, "seed": vars(seed), "table_rows": table_rows, "rounds": []}
    format_rounds = _env_int("BENCH_FORMATS", 1)
    if format_rounds > 0:
        result["formats"] = bench_formats.measure(seed.name, format_rounds)
        bench_formats.print_rows(result["formats"], seed.database_bytes, sum(table_rows.values()))
    cpu = bench_runs.JOB_CPU or "(none: BestEffort pods)"
    print(f"   the operator's Jobs request cpu {cpu}; the script runs on the host", flush=True)
    print(f"   the script dumps with --compress={bench_runs.script_compression() or '(pg_dump default)'}, the operator "
          f"with backup.compression {BackupSpec().compression} (its default)", flush=True)
    prestart, plain_too = prestart_modes()
    verb = "pre-start" if prestart else "do not pre-start"
    print(f"   the operator's Dump runs {verb} their backup and migrate Jobs (maintenance.prestartMigration)"
          f"{'; each round adds one without it' if plain_too else ''}", flush=True)
    for index in range(rounds):
        script_first = index % 2 == 1
        pair: dict[str, Any] = {"script_first": script_first, "prestart": prestart}
        order = ["script", "operator"] if script_first else ["operator", "script"]
        for who in order:
            if who == "operator":
                pair["operator"] = operator_case(api, seed, "dump", f"operator (Dump), round {index + 1}",
                                                 timeout, copies, prestart=prestart)
                if plain_too:
                    pair["operator_plain"] = operator_case(
                        api, seed, "plain", f"operator (Dump, no pre-start), round {index + 1}", timeout, copies)
            else:
                pair["script"] = script_case(api, seed, f"script, round {index + 1}", timeout, copies, workdir,
                                             restore_paths=index == 0 and os.environ.get("BENCH_RESTORE_PATHS") != "0")
        result["rounds"].append(pair)
    if os.environ.get("BENCH_CLONE", "1") != "0":
        result["clone"] = operator_case(api, seed, "clone", "operator (Clone)", timeout, copies,
                                        strategy="file_copy", method="Clone")
    if os.environ.get("BENCH_RESTORE", "1") != "0":
        result["restore_dump"] = operator_case(api, seed, "rdump", "operator (Dump), check fails", timeout,
                                               copies, failing_check=True, prestart=prestart)
        result["restore_clone"] = operator_case(api, seed, "rclone", "operator (Clone), check fails", timeout,
                                                copies, method="Clone", failing_check=True)
    if os.environ.get("BENCH_UNCHANGED", "1") != "0":
        failing = bench_runs.migration_files({bench_seed.MIGRATION_NAME: bench_seed.FAILING_MIGRATION_SQL})
        result["unchanged"] = operator_case(api, seed, "unch", "operator (Dump), migration fails in its transaction",
                                            timeout, copies, migrations=failing, prestart=prestart)
    result["copies"] = copies
    print_size(result)
    return result


# ---------------------------------------------------------------------------------------------- printing
TABLE_ROWS = ("preflight", "head start (app up)", "drain", "backup", "migrate", "verify", "scale-up")


def print_size(result: dict[str, Any]) -> None:
    rows = result["rows"]
    columns: list[tuple[str, dict[str, Any] | None]] = []
    for index, pair in enumerate(result["rounds"]):
        suffix = f" r{index + 1}" if len(result["rounds"]) > 1 else ""
        columns += [(f"operator{suffix}", pair.get("operator")), (f"script{suffix}", pair.get("script")),
                    ("ratio", None)]
        if pair.get("operator_plain"):
            columns.append((f"no pre-st.{suffix}", pair["operator_plain"]))
    if result.get("clone"):
        columns.append(("op. Clone", result["clone"]))
    width = 12
    print(f"\n   {rows:,} rows: the app's downtime and the phases (seconds; operator = backup.method Dump)")
    print("   " + f"{'':<22}" + "".join(f"{title:>{width}}" for title, _ in columns))

    def cell(run: dict[str, Any] | None, key: str) -> float | None:
        if run is None:
            return None
        return run.get("downtime") if key == "downtime" else run["durations"].get(key)

    for key in (*TABLE_ROWS, "downtime"):
        label = {"preflight": "preflight (app up)", "downtime": "DOWNTIME"}.get(key, key)
        cells = []
        for index, (title, run) in enumerate(columns):
            if title == "ratio":
                cells.append(_ratio(cell(columns[index - 2][1], key), cell(columns[index - 1][1], key), width))
            else:
                cells.append(_s(cell(run, key), width))
        print("   " + f"{label:<22}" + "".join(cells))
    ratios = [pair["operator"]["downtime"] / pair["script"]["downtime"] for pair in result["rounds"]
              if (pair.get("operator") or {}).get("downtime") and (pair.get("script") or {}).get("downtime")]
    if ratios:
        print(f"   downtime ratio operator/script: {', '.join(f'{r:.2f}' for r in ratios)}"
              + (f" (mean {statistics.mean(ratios):.2f})" if len(ratios) > 1 else "") + "; goal <= 1.05")
    paired = [(pair["operator"]["downtime"], pair["operator_plain"]["downtime"]) for pair in result["rounds"]
              if (pair.get("operator") or {}).get("downtime") and (pair.get("operator_plain") or {}).get("downtime")]
    if paired:
        print("   downtime with / without the pre-started Jobs: "
              + ", ".join(f"{a:.1f} / {b:.1f} s ({a / b:.2f})" for a, b in paired))
    sql_times = [f"{title} {run['flyway_sql']:.2f} s" for title, run in columns
                 if run is not None and run.get("flyway_sql") is not None]
    print(f"   the migration's own SQL time (flyway_schema_history.execution_time): {'; '.join(sql_times) or '-'}")
    first = result["rounds"][0] if result["rounds"] else {}  # BENCH_ROUNDS=0: only the Clone/rollback runs
    op, sc = first.get("operator") or {}, first.get("script") or {}
    for run in (op, sc):
        if run.get("timeline"):
            print(f"\n   inside the window, {run['label']} (s from the window's opening):")
            previous = None
            for at, text in run["timeline"]:
                delta = f"(+{at - previous:5.2f})" if previous is not None else " " * 8
                print(f"     {at:7.2f} {delta}  {text}")
                previous = at
    print_throughput(result)


def print_throughput(result: dict[str, Any]) -> None:
    rows = sum(result["table_rows"].values())
    size = result["seed"]["database_bytes"]
    first = result["rounds"][0] if result["rounds"] else {}
    op, sc = first.get("operator") or {}, first.get("script") or {}
    lines: list[tuple[str, float | None, str]] = []
    backup_job = (op.get("jobs") or {}).get("backup")
    if backup_job or "armed-backup" not in (op.get("jobs") or {}):
        lines.append(("Dump backup, operator Job", (backup_job or {}).get("seconds"),
                      f"dump {_mb(op.get('backup_bytes'))}; pod start + pg_dump -Fc -Z{BackupSpec().compression} + "
                      "pg_restore --list + full read-back"))
    else:  # pre-started: the Job waited for its go before the window; the phase is what it did after it
        lines.append(("Dump backup, operator", (op.get("durations") or {}).get("backup"),
                      f"dump {_mb(op.get('backup_bytes'))}; BackingUp phase, pre-started Job: go -> pg_dump -Fc "
                      f"-Z{BackupSpec().compression} + pg_restore --list + full read-back"))
    level = bench_runs.script_compression()
    lines.append(("Dump backup, script", (sc.get("durations") or {}).get("backup"),
                  f"dump {_mb(sc.get('dump_bytes'))}; pg_dump -Fc{f' -Z{level}' if level else ''} + pg_restore --list "
                  "on the host"))
    lines.append(("  read-back of that dump", sc.get("read_back_seconds"),
                  "pg_restore --file=/dev/null, after the run: the verification the operator's Job adds"))
    restore = result.get("restore_dump") or {}
    restore_job = (restore.get("jobs") or {}).get("restore") or {}
    lines.append(("Dump restore, operator Job", restore_job.get("seconds"),
                  "pod start + in-place replay in one transaction (pg_restore | psql); RollingBack -> restored "
                  f"{_s(restore.get('rollback_to_restored')).strip()}"))
    paths = sc.get("restore_paths") or {}
    lines.append(("  same dump, one transaction", paths.get("one transaction"),
                  "host pg_restore | psql -1 into an empty database (the Job's replay without pod start); longest "
                  f"statement {_s(paths.get('longest statement')).strip()} (the big table's COPY)"))
    lines.append(("  same dump, pg_restore -j2", paths.get("parallel"),
                  "host pg_restore -j2 into a new database (not used: see pg_scripts.py); one table, one COPY"))
    clone = result.get("clone") or {}
    lines.append(("Clone backup, operator", (clone.get("durations") or {}).get("backup"),
                  "BackingUp phase: CREATE DATABASE ... TEMPLATE (FILE_COPY from shared_buffers/64 MiB up)"))
    rclone = result.get("restore_clone") or {}
    lines.append(("Clone restore, operator", rclone.get("rollback_to_restored"),
                  "RollingBack -> restored: two renames, whatever the size (no throughput)"))
    print(f"\n   backup and restore ({rows:,} rows, database {_mb(size)}; MB/s of the database's size):")
    for label, seconds, note in lines:
        speed = (f"{size / 1e6 / seconds:8.1f} MB/s {rows / seconds:>10,.0f} rows/s"
                 if seconds and not label.startswith("Clone restore") else
                 f"{'-':>13} {'-':>17}")
        print(f"     {label:<27} {_s(seconds)} {speed}   {note}")
    for strategy, seconds in sorted(result["copies"].items()):
        if seconds:
            median = statistics.median(seconds)
            print(f"     CREATE DATABASE TEMPLATE, STRATEGY {strategy.upper():<9} median {median:.2f} s"
                  f" over {len(seconds)} cop{'y' if len(seconds) == 1 else 'ies'} "
                  f"({size / 1e6 / statistics.median(seconds):,.0f} MB/s)")
    for key, title in (("restore_dump", "Dump"), ("restore_clone", "Clone")):
        run = result.get(key)
        if run:
            print(f"     a run rolled back after its migration ({title}): {run.get('phase')}, downtime "
                  f"{_s(run.get('downtime')).strip()}")
    print_unchanged(result.get("unchanged"))


def print_unchanged(run: dict[str, Any] | None) -> None:
    """The failed transactional migration: no restore when the database is provably unchanged, and the goal that
    the rollback adds at most a second to the window's other steps."""
    if not run:
        return
    parts = run.get("durations") or {}
    steps = ("drain", "backup", "migrate", "rollback (app down)", "scale-up")
    restored = "a restore Job ran" if "restore" in (run.get("jobs") or {}) else "no restore Job"
    print(f"\n   a migration that fails inside its transaction (Flyway rolls it back): {run.get('phase')}, "
          f"databaseUnchanged {run.get('database_unchanged')}, {restored}; downtime {_s(run.get('downtime')).strip()}")
    print("     " + ", ".join(f"{step} {_s(parts.get(step)).strip()}" for step in steps))
    rollback = parts.get("rollback (app down)")
    if rollback is not None:
        print(f"     what the rollback adds before the scale-up: {rollback:.2f} s (goal: <= 1 s over drain + backup + "
              "migrate + scale-up)")


def size_runs(size: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of one size, the script's included."""
    runs = [pair[who] for pair in size["rounds"] for who in ("operator", "operator_plain", "script") if pair.get(who)]
    return runs + [size[key] for key in ("clone", "restore_dump", "restore_clone", "unchanged") if size.get(key)]


def all_operator_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for size in results.get("sizes", []):
        for pair in size["rounds"]:
            runs += [pair[who] for who in ("operator", "operator_plain") if pair.get(who)]
        runs += [size[key] for key in ("clone", "restore_dump", "restore_clone", "unchanged") if size.get(key)]
    runs += results.get("reaction_runs", [])
    return runs


def latencies(results: dict[str, Any]) -> dict[str, Any]:
    runs = all_operator_runs(results)
    created = [r["created_to_first_job"] for r in runs if r.get("created_to_first_job") is not None]
    by_step: dict[str, list[float]] = {}
    from_status: list[float] = []
    for run in runs:
        for step, job in (run.get("jobs") or {}).items():
            if job.get("reaction_from_pod") is None and job.get("pod_done") and job.get("finished") \
                    and job.get("reaction") is not None:  # results written before reaction_from_pod existed
                job["reaction_from_pod"] = job["finished"] + job["reaction"] - job["pod_done"]
            if job.get("reaction_from_pod") is not None:
                by_step.setdefault(step, []).append(job["reaction_from_pod"])
            if job.get("reaction") is not None:
                from_status.append(job["reaction"])
    every = [v for values in by_step.values() for v in values]

    def summary(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"n": 0}
        return {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
                "max": max(values), "samples": values}

    return {"created_to_first_job": summary(created), "pod_to_next_step": summary(every),
            "job_status_to_next_step": summary(from_status),
            "by_step": {step: summary(values) for step, values in sorted(by_step.items())}}


def print_latencies(figures: dict[str, Any], runs: int) -> None:
    def line(label: str, s: dict[str, Any]) -> str:
        if not s.get("n"):
            return f"   {label:<44} no sample"
        return (f"   {label:<44} p50 {s['p50'] * 1000:6.0f} ms   p95 {s['p95'] * 1000:6.0f} ms   "
                f"max {s['max'] * 1000:6.0f} ms   (n={s['n']})")

    print(f"\noperator reaction latencies over {runs} runs (seen by watches; goals: <= 200 ms and <= 500 ms p50):")
    print(line("DatabaseMigration created -> first Job", figures["created_to_first_job"]))
    print(line("a Job's container ended (API) -> next phase", figures["pod_to_next_step"]))
    for step, s in figures["by_step"].items():
        print(line(f"  after the {step} Job's pod", s))
    print(line("the Job's status finished -> that step", figures.get("job_status_to_next_step") or {}))
    print("     (the Job controller reports a finished pod in batches of up to 1 s; negative: the run moved on first)")


def reaction_runs(api: Any) -> list[dict[str, Any]]:
    count = _env_int("BENCH_REACTION_RUNS", 5)
    if count <= 0:
        return []
    print(f"\n-- {count} small runs for the reaction latencies (parking example V5 -> V6, Dump, no maintenance)")
    good = {p.name: p.read_text() for p in sorted((bench_runs.MIGRATIONS.parent / "migrations-next" / "good")
                                                     .glob("V*.sql"))}
    runs = []
    with bench_runs.place(api, None, gateway=False, pvc=True, migrations=bench_runs.migration_files(good)) as here:
        for index in range(count):
            with postgres.cloned_database("bench") as db:
                conditions = _conditions()
                started = time.monotonic()
                run = bench_runs.run_operator(here, f"react-{index}", here.spec(db, maintenance=False),
                                              f"small run {index + 1}", 300)
                figures = bench_runs.operator_figures(run)
                figures["conditions"] = conditions
                _say(figures, time.monotonic() - started)
                runs.append(figures)
    return runs


def foreign_migrations(api: Any) -> list[str]:
    """DatabaseMigrations outside the benchmark's RSS namespaces: an operator watching every namespace would act on
    them too."""
    items = client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    return [f"{m['metadata']['namespace']}/{m['metadata']['name']}" for m in items
            if not m["metadata"]["namespace"].startswith(bench_runs.RSS_PREFIX)]


def bench_rss(api: Any, log_dir: Path) -> dict[str, Any] | None:
    """The population twice: an operator watching `bench-rss-*` (one watch per resource and namespace, like
    `watchNamespaces`), then one watching every namespace (the chart's default: one watch per resource)."""
    if os.environ.get("BENCH_RSS", "1") == "0":
        return None
    results: dict[str, Any] = {}
    for scope, pattern in (("namespaces", f"{bench_runs.RSS_PREFIX}-*"), ("cluster-wide", "*")):
        title = "its own operator, bench-rss-*" if pattern != "*" else "its own operator, --all-namespaces"
        print(f"\n-- operator memory with 100 DatabaseMigrations in 20 namespaces ({title})", flush=True)
        if pattern == "*" and (foreign := foreign_migrations(api)):
            print(f"   skipped: DatabaseMigrations outside bench-rss-* exist ({', '.join(foreign[:3])}), which an "
                  "operator watching every namespace would act on")
            continue
        process = OperatorProcess(pattern, log_dir / f"rss-operator-{scope}")
        process.start()
        try:
            assert process.process is not None
            time.sleep(2)
            figures = bench_runs.rss_population(api, process.process.pid)
        finally:
            process.stop()
        state = "" if figures["reached"] else " (not all reached their phase in time)"
        print(f"   operator RSS: idle {figures['idle_kib'] / 1024:.1f} MiB; with {figures['migrations']} "
              f"DatabaseMigrations in {figures['namespaces']} namespaces ({figures['finished']} finished, "
              f"{figures['running']} migrating): {figures['max_kib'] / 1024:.1f} MiB max, "
              f"{figures['last_kib'] / 1024:.1f} MiB last (10 samples over 5 s){state}; goal <= 120 MiB")
        results[scope] = figures
    # the namespaced figures stay at the top level: earlier results files compare with them
    return (results.get("namespaces") or {}) | {"cluster_wide": results.get("cluster-wide")}


def bench_cluster(results: dict[str, Any]) -> None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if os.environ.get("BENCH_CLUSTER") == "0" or not kubeconfig or not Path(kubeconfig).exists():
        print("\n(downtime, throughput, latencies, RSS with 100 runs: skipped, no KUBECONFIG or BENCH_CLUSTER=0)")
        return
    stamp = results["stamp"]
    out = REPO / "bench-results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    api = load_config()
    bench_runs.ensure_crd(api)
    print("\n== downtime: the operator vs the minimal script (hack/bench-script.sh), the same migration on identical "
          "copies")
    print(f"   migration: {bench_seed.MIGRATION_SQL.strip().replace(chr(10), ' ')}")
    print(f"   app: the parking gateway, {bench_runs.REPLICAS} replicas; downtime = fewer than all available -> "
          "all available again (watch of the Deployment)")
    others = other_sessions()
    results["others_at_start"] = others
    print(f"   also running on this machine: {', '.join(others) if others else 'nothing else'}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    operator = OperatorProcess(f"{bench_runs.RUN_PREFIX}-*", out / "operator")
    operator.start()
    timings: dict[str, float] = {}
    try:
        for rows in _sizes():
            started = time.monotonic()
            results["sizes"].append(size_suite(api, rows, out))
            timings[f"{rows} rows"] = time.monotonic() - started
            waited = sum((run.get("conditions") or {}).get("waited_for_quiet", 0)
                         for run in size_runs(results["sizes"][-1]))
            if waited >= 1:
                timings[f"{rows} rows: waiting for quiet"] = waited
        started = time.monotonic()
        results["reaction_runs"] = reaction_runs(api)
        timings["reaction runs"] = time.monotonic() - started
        assert operator.process is not None
        results["operator_rss_after_runs_mib"] = bench_runs.rss_kib(operator.process.pid) / 1024
    finally:
        operator.stop()
    results["latencies"] = latencies(results)
    print_latencies(results["latencies"], len(all_operator_runs(results)))
    print(f"   (the benchmark's operator, after all its runs: {results['operator_rss_after_runs_mib']:.1f} MiB RSS)")
    started = time.monotonic()
    results["rss"] = bench_rss(api, out)
    timings["rss"] = time.monotonic() - started
    results["others_at_end"] = other_sessions()
    results["timings"] = timings
    print("\n   benchmark parts took: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    shared = set(results["others_at_start"]) | set(results["others_at_end"])
    for run in [r for size in results["sizes"] for r in size_runs(size)] + results.get("reaction_runs", []):
        shared |= set((run.get("conditions") or {}).get("others") or [])
    if shared:
        print(f"   (other sessions' tests shared the {os.cpu_count()} cores during this run: "
              f"{', '.join(sorted(shared))}; each run's line above says what ran as it started)")
    if os.environ.get("BENCH_DROP_SEEDS") == "1":
        bench_seed.drop_seeds()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def pin_operator() -> None:
    """BENCH_OPERATOR_REV: run the whole benchmark again with that commit's operator package first on PYTHONPATH
    (ahead of the editable install of the working tree), in this process and in every operator it starts."""
    rev = os.environ.get("BENCH_OPERATOR_REV")
    if not rev or os.environ.get("BENCH_OPERATOR_SRC"):
        return
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    source = REPO / "bench-results" / f"operator-{sha[:12]}"
    if not (source / "operator" / "migration_operator").is_dir():
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "operator"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    path = str(source / "operator")
    env = os.environ | {"BENCH_OPERATOR_SRC": sha,
                        "PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)}
    os.execve(sys.executable, [sys.executable, "-m", "tests.bench"], env)


def operator_source() -> dict[str, Any]:
    import migration_operator

    where = str(Path(migration_operator.__file__).resolve().parent)
    pinned = os.environ.get("BENCH_OPERATOR_SRC")
    if pinned:
        return {"commit": pinned, "path": where}
    return {"working_tree": where, "uncommitted_changes": git_state()["operator_changes"]}


def main() -> int:
    pin_operator()
    # the operator's checksum key (digests.py): one for the benchmark, so no process warns about a key of its own
    os.environ.setdefault("DBOPS_CHECKSUM_KEY", "bench-checksum-key")
    # The benchmark's operator runs on the host (so its RSS and pid are at hand), where the cluster's DNS names do
    # not resolve: its runs name the database by the Service's ClusterIP, which the host (kube-proxy) and the pods
    # reach alike.
    if "MO_E2E_DB_HOST" not in os.environ and postgres.in_cluster():
        os.environ["MO_E2E_DB_HOST"] = postgres.test_endpoint().host
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    source = operator_source()
    results: dict[str, Any] = {"stamp": stamp, "git": git_state(), "operator_source": source, "sizes": [],
                               "cpus": os.cpu_count(),
                               "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")}}
    print("== migration-operator benchmarks")
    if "commit" in source:
        print(f"   operator under test: commit {source['commit'][:12]} (BENCH_OPERATOR_REV), from {source['path']}")
    else:
        changed = len(source["uncommitted_changes"])
        print(f"   operator under test: the working tree at {results['git']['commit'][:12]}"
              + (f" with {changed} uncommitted file(s) under operator/" if changed else ""))
    results["decide"] = bench_decide()
    results["snapshot"] = bench_snapshot()
    results["operator_idle_rss_mib"] = bench_operator_memory()
    bench_cluster(results)
    results["seconds"] = time.monotonic() - started
    path = REPO / "bench-results" / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=1, default=str))
    print(f"\nresults: {path.relative_to(REPO)} (the whole benchmark took {results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
