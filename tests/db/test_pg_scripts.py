"""The backup and restore Jobs' scripts (migration_operator.pg_scripts), run for real against PostgreSQL 15.

For every generated database shape (tests/support/shapes.py) and both scopes (the whole database, or
DUMP_SCHEMAS): back up, run a failed migration (new schema, new table with a foreign key onto an old table, new
columns, rows inserted/updated/deleted, a table dropped, sequences moved on, the shape's own changes), restore,
and compare fingerprint_full() of every schema before and after; restore the same dump again; then a second run
(backup of the restored database, failed migration, restore). Shapes the role cannot restore must be refused
before anything changes, and the preflight query must have said so.

Measured here (PostgreSQL 15.18 on 127.0.0.1 with fsync off, 2 vCPUs shared with a running cluster, so +-30%;
one table of `MO_DB_LARGE_ROWS` rows with a generated column and an index, plus the plain app's tables;
test_large_table_costs prints these on every run, `-s` to see them):
  rows        dump      pg_dump      verify --list   verify full read   backup script   restore in place   new database
  300 000     8.6 MB    0.66-0.76 s  0.03 s          0.11 s             0.80-0.84 s     0.62-0.69 s        0.42-0.43 s
  3 000 000   86.5 MB   5.6-9.1 s    0.02-0.08 s     0.84-1.00 s        6.4-8.0 s       3.8-10 s           3.8-4.9 s
"verify full read" is `pg_restore --file=/dev/null` (every data block decompressed, no server work): about 15% of
pg_dump's own time, and it is what catches a dump cut short or damaged on the volume, which `pg_restore --list`
accepts (test_truncated_dump_fails_the_backup). "restore in place" is the whole RESTORE_SCRIPT (checks, drops,
replay, one transaction); "new database" is design (a)'s core for comparison: `pg_restore --single-transaction`
of the same dump into a fresh database as the superuser, without owners or ACLs, and without the CREATE DATABASE
and the renames it would also need. The two are within noise of each other: speed does not choose the design.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from migration_operator import pg_scripts
from tests.db.conftest import Database, scratch_database, shape_database
from tests.support import postgres, shapes
from tests.support.shapes import NEW_SCHEMA, Shape


def _assert_same(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    diff = postgres.fingerprint_diff(before, after)
    assert not diff, f"{what}:\n" + "\n".join(diff[:40])


def _migrate(db: Database, shape: Shape) -> None:
    db.run("app", shape.failed_migration(db.roles))


def _backup_ok(db: Database, shape: Shape) -> dict[str, Any]:
    result = db.backup(shape.dump_schemas())
    assert result.returncode == 0, result.stdout + result.stderr
    summary = pg_scripts.parse_backup_output(result.termination)
    assert summary is not None and summary["verified"] is True, result.termination
    assert summary["path"] == db.backup_file and summary["sizeBytes"] == db.dump.stat().st_size
    assert not Path(f"{db.dump}.partial").exists()
    return summary


@pytest.mark.parametrize("shape", shapes.shapes(), ids=lambda s: s.name)
def test_restore_puts_the_database_back_exactly(shape: Shape, work: Path) -> None:
    with shape_database(shape, work) as db:
        untouched = shape.untouched_schemas()
        problems = db.preflight(shape.dump_schemas())
        before = postgres.fingerprint_full(db.name)
        oids = postgres.object_oids(db.name, untouched)
        extensions = postgres.extension_oids(db.name)

        if shape.outcome() == "backup_refused":
            result = db.backup(shape.dump_schemas())
            summary = pg_scripts.parse_backup_output(result.termination)
            assert result.returncode != 0 and summary is not None and summary["verified"] is False
            assert shape.message() in summary["error"]
            assert not list(db.backup_dir.iterdir()), "a refused backup leaves nothing on the volume"
            assert any("pg_dump would fail" in p for p in problems), problems
            return

        summary = _backup_ok(db, shape)
        if shape.scope == "scoped":
            assert summary["schemas"] == shape.app_schemas() and summary["absentSchemas"] == []
        _migrate(db, shape)
        migrated = postgres.fingerprint_full(db.name)
        assert migrated != before, "the failed migration must change something"

        if shape.outcome() == "restore_refused":
            assert any(shape.message() in p for p in problems), problems
            result = db.restore(shape.dump_schemas(), NEW_SCHEMA)
            assert result.returncode != 0
            assert result.stdout.startswith("restore refused, nothing was changed"), result.stdout
            assert shape.message() in result.stdout
            _assert_same(migrated, postgres.fingerprint_full(db.name), "a refused restore changed the database")
            return

        assert problems == [], problems
        for attempt in ("first restore", "the same dump restored again"):
            result = db.restore(shape.dump_schemas(), NEW_SCHEMA)
            assert result.returncode == 0, f"{attempt}: {result.stdout}{result.stderr}"
            assert result.values["restored"] == "true"
            _assert_same(before, postgres.fingerprint_full(db.name), f"{shape.name}: after the {attempt}")
            assert postgres.object_oids(db.name, untouched) == oids, "an untouched schema was dropped and recreated"
            assert postgres.extension_oids(db.name) == extensions, "an extension was dropped and recreated"

        # the next run on the restored database: its backup, its failed migration, its restore
        _backup_ok(db, shape)
        _migrate(db, shape)
        result = db.restore(shape.dump_schemas(), NEW_SCHEMA)
        assert result.returncode == 0, result.stdout + result.stderr
        _assert_same(before, postgres.fingerprint_full(db.name), f"{shape.name}: after the second run's restore")
        assert db.preflight(shape.dump_schemas()) == []


def test_restore_problems_are_the_rows_messages_once_each() -> None:
    view = "view reports.v depends on table public.t: the restore would drop it too"
    rows = [
        ("dependent", "reports", "reports.v", view),
        ("dependent", "reports", "reports.v", view),
        ("owner", "public", "public.a", "table public.a is owned by x: app cannot drop and recreate it"),
    ]
    assert pg_scripts.restore_problems(rows) == [rows[0][3], rows[2][3]]
    assert pg_scripts.restore_problems([]) == []


def test_empty_database_backs_up_and_restores_to_empty(work: Path) -> None:
    with scratch_database(work) as db:
        before = postgres.fingerprint_full(db.name)
        result = db.backup()
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode == 0 and summary is not None, result.stdout
        assert summary["verified"] is True and summary["tocEntries"] == 0 and summary["sizeBytes"] > 0
        db.run("app", ["CREATE TABLE public.first (id int PRIMARY KEY)", "INSERT INTO public.first VALUES (1)"])
        result = db.restore()
        assert result.returncode == 0, result.stdout
        _assert_same(before, postgres.fingerprint_full(db.name), "the empty database after its restore")


def test_restore_drops_only_the_schemas_it_is_told_to(work: Path) -> None:
    """A schema the dump does not hold, in the restore's scope: refused unless listed in DROP_SCHEMAS."""
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t (id int); INSERT INTO public.t VALUES (1)")
        before = postgres.fingerprint_full(db.name)
        backup = db.backup()
        assert backup.returncode == 0, backup.stdout
        db.run("app", ["CREATE SCHEMA brand_new", "CREATE TABLE brand_new.x (id int)", "DROP TABLE public.t"])
        migrated = postgres.fingerprint_full(db.name)
        refused = db.restore()
        assert refused.returncode != 0
        assert "schema brand_new exists but the backup does not hold it" in refused.stdout, refused.stdout
        _assert_same(migrated, postgres.fingerprint_full(db.name), "a refused restore changed the database")
        result = db.restore(None, "brand_new")
        assert result.returncode == 0, result.stdout
        assert result.values["droppedSchemas"] == "brand_new" and result.values["schemas"] == "public"
        _assert_same(before, postgres.fingerprint_full(db.name), "after the restore")


def test_dump_schemas_that_do_not_exist_yet(work: Path) -> None:
    """A new app's first run: its schema does not exist yet. The backup is a valid archive that says so, and the
    restore drops the schema the failed migration created only when told to (DROP_SCHEMAS)."""
    with scratch_database(work) as db:
        db.run("admin", "CREATE SCHEMA other_app; CREATE TABLE other_app.keep AS SELECT 1 AS id")
        before = postgres.fingerprint_full(db.name)
        result = db.backup("app_schema")
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode == 0 and summary is not None, result.stdout
        assert summary["verified"] is True and summary["schemas"] == [] and summary["absentSchemas"] == ["app_schema"]
        db.run("app", ["CREATE SCHEMA app_schema", "CREATE TABLE app_schema.t (id int)"])
        migrated = postgres.fingerprint_full(db.name)

        refused = db.restore("app_schema")
        assert refused.returncode != 0 and "list it in DROP_SCHEMAS to drop it" in refused.stdout, refused.stdout
        _assert_same(migrated, postgres.fingerprint_full(db.name), "a refused restore changed the database")

        result = db.restore("app_schema", "app_schema")
        assert result.returncode == 0, result.stdout
        assert result.values["droppedSchemas"] == "app_schema"
        _assert_same(before, postgres.fingerprint_full(db.name), "after the restore")


def test_restore_refuses_to_drop_a_schema_the_role_does_not_own(work: Path) -> None:
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT 1 AS id")
        assert db.backup().returncode == 0
        db.run("admin", f"CREATE SCHEMA not_mine AUTHORIZATION {db.roles.other}")
        db.run("app", "DROP TABLE public.t")
        migrated = postgres.fingerprint_full(db.name)
        problem = f"schema not_mine is owned by {db.roles.other}: {db.roles.app} cannot drop it"
        assert db.preflight(None, "not_mine") == [problem]
        result = db.restore(None, "not_mine")
        assert result.returncode != 0, result.stdout
        head = f"restore refused, nothing was changed: 1 problem(s) for role {db.roles.app}:"
        assert result.stdout == f"{head}\n{problem}\n\n"
        _assert_same(migrated, postgres.fingerprint_full(db.name), "a refused restore changed the database")


def _fake_pg_dump(work: Path, body: str) -> str:
    """A PATH whose pg_dump runs the real one, then `body` (sh) on the file it wrote ($out)."""
    bin_dir = work / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    real = shutil.which("pg_dump")
    assert real is not None
    fake = bin_dir / "pg_dump"
    fake.write_text(
        "#!/bin/sh\nout=''\nfor a in \"$@\"; do case \"$a\" in --file=*) out=${a#--file=} ;; esac; done\n"
        f'"{real}" "$@" || exit $?\n{body}\n'
    )
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def test_truncated_dump_fails_the_backup(work: Path) -> None:
    """A dump cut short on the volume (pg_dump killed, a full or failing disk) keeps a readable table of contents:
    `pg_restore --list` accepts it, the full read does not. Here the file is cut after pg_dump wrote it whole, so the
    read that followed pg_dump saw a complete archive: it must not count for the file that is left (its size
    differs), and the read of the file itself fails the backup."""
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 20000) i")
        keep = work / "truncated.dump"
        path = _fake_pg_dump(work, f'size=$(wc -c <"$out"); head -c $((size * 6 / 10)) "$out" >"{keep}"; '
                             f'cp "{keep}" "$out"')
        result = db.backup(PATH=path)
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode != 0 and summary is not None and summary["verified"] is False
        assert summary["error"].startswith("the dump does not read back whole"), summary
        assert not list(db.backup_dir.iterdir()), "the broken dump must not stay on the volume"
        listed = subprocess.run(["pg_restore", "--list", str(keep)], capture_output=True, check=False)
        assert listed.returncode == 0, "the table of contents alone would have passed this dump"


def test_the_read_back_follows_the_dump_as_it_is_written(work: Path) -> None:
    """With GNU tail the full read-back runs beside pg_dump (streamed), and it counts only because it read exactly
    the file that is on the volume now: the dump restores."""
    if subprocess.run(["tail", "--version"], capture_output=True, text=True, check=False).stdout.find("GNU") < 0:
        pytest.skip("needs GNU tail on the host (the postgres image has it)")
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 200000) i")
        result = db.backup()
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode == 0 and summary is not None and summary["verified"] is True, result.stdout
        assert summary["readBack"] == "streamed", result.stdout
        assert summary["sizeBytes"] == db.dump.stat().st_size
        restored = subprocess.run(["pg_restore", "--file=-", str(db.dump)], capture_output=True, check=False)
        assert restored.returncode == 0 and restored.stdout.count(b"\n") > 200000


def test_without_gnu_tail_the_whole_file_is_read_back_after_the_dump(work: Path) -> None:
    """An image whose tail cannot follow a writer (busybox): the read-back of the finished file, as before."""
    bin_dir = work / "busybox-bin"
    bin_dir.mkdir()
    real = shutil.which("tail")
    assert real is not None
    fake = bin_dir / "tail"
    fake.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "tail (BusyBox) v1.36"; exit 0; }}\nexec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 20000) i")
        result = db.backup(PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode == 0 and summary is not None and summary["verified"] is True, result.stdout
        assert summary["readBack"] == "file", result.stdout


def test_failed_pg_dump_leaves_no_partial_file(work: Path) -> None:
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t (id int)")
        path = _fake_pg_dump(work, "echo 'pg_dump: error: simulated' >&2; exit 1")
        result = db.backup(PATH=path)
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode != 0 and summary is not None and summary["verified"] is False
        assert summary["error"] == "pg_dump failed: pg_dump: error: simulated"
        assert not list(db.backup_dir.iterdir())


def test_full_backup_volume_is_reported_and_cleaned(work: Path) -> None:
    """The backup volume is a 256 KiB tmpfs (in a private mount namespace): pg_dump fails with ENOSPC."""
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True, check=False
    ).returncode != 0:
        pytest.skip("needs unshare -rm (unprivileged user and mount namespaces)")
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 100000) i")
        env = db.env(PGAPPNAME="migration-operator-test-backup")
        env["SCRIPT"] = pg_scripts.BACKUP_SCRIPT
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c",
             'mount -t tmpfs -o size=256k tmpfs "$BACKUP_DIR" || exit 99; sh -c "$SCRIPT"; '
             'echo "rc=$?"; echo "left=$(ls -A "$BACKUP_DIR")"'],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        summary = pg_scripts.parse_backup_output(done.stdout)
        assert summary is not None and summary["verified"] is False, done.stdout
        assert summary["error"].startswith("the backup volume is full ("), summary["error"]
        assert "KiB free once the partial dump is removed" in summary["error"]
        assert "rc=1\nleft=\n" in done.stdout, "the partial dump must be removed"


def test_restore_of_a_truncated_dump_changes_nothing(work: Path) -> None:
    """pg_restore fails in the middle of the table data, after the drops ran: the transaction is never committed."""
    shape = Shape("plain", (shapes.FEATURES["rich_types"],), "whole")
    with shape_database(shape, work) as db:
        db.run("app", "CREATE TABLE public.bulk AS SELECT i, md5(i::text) AS h FROM generate_series(1, 50000) i")
        _backup_ok(db, shape)
        _migrate(db, shape)
        migrated = postgres.fingerprint_full(db.name)
        data = db.dump.read_bytes()
        db.dump.write_bytes(data[: len(data) * 7 // 10])
        assert subprocess.run(["pg_restore", "--list", str(db.dump)], capture_output=True).returncode == 0
        result = db.restore(None, NEW_SCHEMA)
        assert result.returncode != 0
        assert result.stdout.startswith("restore failed, nothing was changed"), result.stdout
        _assert_same(migrated, postgres.fingerprint_full(db.name), "a failed restore changed the database")


def test_restore_failing_after_its_first_drops_changes_nothing(work: Path) -> None:
    """DROP_SCHEMAS is dropped first; then a DROP of an old table waits on a lock a session holds and hits
    lock_timeout. The schema dropped first is back: nothing was changed."""
    shape = Shape("plain", (), "whole")
    with shape_database(shape, work) as db:
        _backup_ok(db, shape)
        _migrate(db, shape)
        migrated = postgres.fingerprint_full(db.name)
        with db.connect_admin() as holder:
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE public.accounts IN ACCESS SHARE MODE")
            result = db.restore(None, NEW_SCHEMA, PGOPTIONS="-c lock_timeout=300")
            holder.execute("ROLLBACK")
        assert result.returncode != 0
        assert result.stdout.startswith("restore failed, nothing was changed"), result.stdout
        assert "lock timeout" in result.stdout
        _assert_same(migrated, postgres.fingerprint_full(db.name), "a failed restore changed the database")


def _restore_into_a_new_database(dump: Path) -> float:
    """Design (a), for comparison: pg_restore of the same dump into a new database, in one transaction, as the
    superuser (the only role sure to be allowed to); seconds."""
    name = f"mo_compare_{os.getpid()}"
    endpoint = postgres.test_endpoint()
    env = {
        **os.environ,
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGUSER": os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
        "PGPASSWORD": os.environ.get("MO_E2E_PG_PASSWORD", "postgres"),
    }
    with postgres.connect() as conn:
        conn.execute(f'create database "{name}" template template0')
    try:
        started = time.monotonic()
        subprocess.run(
            ["pg_restore", "--single-transaction", "--exit-on-error", "--no-owner", "--no-acl", f"--dbname={name}",
             str(dump)],
            env=env, check=True, capture_output=True,
        )
        return time.monotonic() - started
    finally:
        with postgres.connect() as conn:
            conn.execute(f'drop database if exists "{name}"')


def test_large_table_costs(work: Path) -> None:
    """The figures of this module's docstring: backup with the full read vs the table of contents only, restore in
    place vs into a new database."""
    shape = Shape("plain", (shapes.FEATURES["large_table"],), "whole")
    with shape_database(shape, work) as db:
        dump_only = work / "dump-only.dump"
        started = time.monotonic()
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={dump_only}"], env=db.env(), check=True, capture_output=True
        )
        dump_seconds = time.monotonic() - started
        started = time.monotonic()
        subprocess.run(["pg_restore", "--list", str(dump_only)], check=True, capture_output=True)
        list_seconds = time.monotonic() - started
        started = time.monotonic()
        subprocess.run(["pg_restore", "--file=/dev/null", str(dump_only)], check=True, capture_output=True)
        read_seconds = time.monotonic() - started
        started = time.monotonic()
        summary = _backup_ok(db, shape)
        backup_seconds = time.monotonic() - started
        before = postgres.fingerprint_full(db.name)
        _migrate(db, shape)
        started = time.monotonic()
        result = db.restore(None, NEW_SCHEMA)
        restore_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stdout
        _assert_same(before, postgres.fingerprint_full(db.name), "after the restore")
        new_database_seconds = _restore_into_a_new_database(db.dump)
        print(
            f"\n{shapes.LARGE_ROWS} rows, dump {summary['sizeBytes'] / 1e6:.1f} MB: pg_dump {dump_seconds:.2f} s, "
            f"verify --list {list_seconds:.2f} s, verify full read {read_seconds:.2f} s, backup script "
            f"{backup_seconds:.2f} s, restore in place {restore_seconds:.2f} s, pg_restore into a new database "
            f"{new_database_seconds:.2f} s"
        )
        # the full read decompresses what pg_dump compressed, with no server work: cheaper than the dump itself
        assert read_seconds < dump_seconds + 0.5, (read_seconds, dump_seconds)
        assert backup_seconds < 2 * dump_seconds + read_seconds + 2


@pytest.mark.parametrize("level", ["0", "1", "9", None])
def test_every_compression_level_backs_up_and_restores_exactly(level: str | None, work: Path) -> None:
    """backup.compression reaches pg_dump (the archive's header says the level; without the variable, 1), and a dump
    of any level passes the full read-back and restores the database exactly."""
    with scratch_database(work) as db:
        db.run("app", "CREATE TABLE public.t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 20000) i")
        before = postgres.fingerprint_full(db.name)
        result = db.backup(BACKUP_COMPRESSION=level)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = pg_scripts.parse_backup_output(result.termination)
        assert summary is not None and summary["verified"] is True, result.termination
        header = subprocess.run(["pg_restore", "--list", str(db.dump)], capture_output=True, text=True, check=True)
        assert f";     Compression: {level or '1'}\n" in header.stdout, header.stdout[:600]
        db.run("app", "DELETE FROM public.t WHERE i % 3 = 0; ALTER TABLE public.t ADD COLUMN c int")
        restored = db.restore()
        assert restored.returncode == 0, restored.stdout + restored.stderr
        _assert_same(before, postgres.fingerprint_full(db.name), f"after restoring a level {level} dump")


def test_compression_level_that_is_not_a_digit_fails_before_pg_dump(work: Path) -> None:
    with scratch_database(work) as db:
        result = db.backup(BACKUP_COMPRESSION="1 --file=/tmp/elsewhere")
        summary = pg_scripts.parse_backup_output(result.termination)
        assert result.returncode != 0 and summary is not None and summary["verified"] is False
        assert summary["error"] == "BACKUP_COMPRESSION must be a digit 0-9", summary
        assert not list(db.backup_dir.iterdir())
