"""Flyway safety flags, Job scripts and output parsing (fixtures are real Flyway 12 outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migration_operator import flyway, reasons
from migration_operator.models import parse_spec

DATA = Path(__file__).parent / "data" / "flyway"
SPEC = parse_spec(
    {
        "database": {"host": "db.example", "name": "parking_db", "credentialsSecret": {"name": "s"}},
        "migrations": {"configMap": {"name": "m"}, "targetVersion": "6"},
        "backup": {"volume": {"claimName": "b"}},
    }
)


def section(name: str, filename: str) -> str:
    return f"==> {name} <==\n{(DATA / filename).read_text()}\n"


def test_every_command_carries_the_runbook_safety_flags() -> None:
    for command in ("info", "validate", "migrate", "repair"):
        args = flyway.command_line(SPEC, command)
        for flag in (
            "-baselineOnMigrate=false",
            "-validateOnMigrate=true",
            "-outOfOrder=false",
            "-cleanDisabled=true",
            "-ignoreMigrationPatterns=",
        ):
            assert flag in args, (command, flag)
        assert args[0] == "flyway" and args[-1] == command
        assert not any("password" in a.lower() or "user=" in a.lower() for a in args)


def test_preflight_validate_ignores_only_pending_and_sets_the_key_once() -> None:
    args = flyway.command_line(SPEC, "validate", preflight=True)
    assert "-ignoreMigrationPatterns=*:pending" in args
    assert sum(a.startswith("-ignoreMigrationPatterns") for a in args) == 1


def test_clean_is_never_run() -> None:
    with pytest.raises(AssertionError):
        flyway.command_line(SPEC, "clean")
    with pytest.raises(ValueError):
        flyway.command_line(SPEC, "baseline")


def test_target_and_jdbc_url() -> None:
    assert "-target=6" in flyway.command_line(SPEC, "migrate")
    assert "-target=6" not in flyway.command_line(SPEC, "repair")
    url = flyway.jdbc_url(SPEC, "migrate")
    assert url == (
        "jdbc:postgresql://db.example:5432/parking_db?sslmode=require&ApplicationName=migration-operator-migrate"
    )


def test_job_script_copies_configmap_files_and_writes_the_termination_log() -> None:
    script = flyway.job_script(SPEC, "migrate")
    assert "cp -L /migrations-src/* /migrations/" in script
    assert "/dev/termination-log" in script and "head -c 4096" in script
    assert "emit migrate" in script and script.rstrip().endswith("exit $rc")
    validate = flyway.job_script(SPEC, "validate")
    assert validate.index("run validate") < validate.index("run info")


def test_successful_validate_with_info_lists_pending() -> None:
    result = flyway.parse_validate_output(
        section("validate", "validate-ok.json") + section("info", "info-pending.json")
    )
    assert result.successful
    assert result.schema_version == "2"
    assert [(p.version, p.description, p.script) for p in result.pending or []] == [("3", "zones", "V3__zones.sql")]


def test_truncated_info_leaves_pending_unknown() -> None:
    output = (section("validate", "validate-ok.json") + section("info", "info-pending.json"))[:700]
    result = flyway.parse_validate_output(output)
    assert result.successful and result.pending is None


def test_checksum_mismatch_is_classified() -> None:
    result = flyway.parse_validate_output(section("validate", "validate-checksum.json"))
    assert not result.successful
    reason, message = flyway.classify_validate_failure(result, None)
    assert reason == reasons.CHECKSUM_MISMATCH
    assert "Migration checksum mismatch for migration version 1" in message


def test_strict_validate_reports_pending_as_validation_error() -> None:
    result = flyway.parse_validate_output(section("validate", "validate-pending-strict.json"))
    assert not result.successful and "not applied" in (result.error or "")


def test_bad_password_is_classified_as_bad_credentials() -> None:
    result = flyway.parse_validate_output(section("validate", "validate-bad-password.json")[:4096])
    reason, message = flyway.classify_validate_failure(result, None)
    assert reason == reasons.BAD_CREDENTIALS
    assert "password authentication failed" in message


def test_successful_migrate_is_parsed() -> None:
    result = flyway.parse_migrate_output(section("migrate", "migrate-ok.json"))
    assert result.success and result.migrations_executed == 1
    assert (result.initial_schema_version, result.target_schema_version) == ("2", "3")


def test_failed_migrate_message_survives_truncation_to_4096_bytes() -> None:
    output = section("migrate", "migrate-failed.json")
    assert len(output) > 4096
    result = flyway.parse_migrate_output(output[:4096])
    assert not result.success
    assert result.error_code == "FAILED_VERSIONED_MIGRATION"
    assert 'ERROR: relation "nope" does not exist' in (result.error or "")
    assert "Run Flyway with -X" not in (result.error or "")


def test_plain_text_output_becomes_the_error() -> None:
    result = flyway.parse_migrate_output("==> migrate <==\nsh: flyway: not found\n")
    assert not result.success and result.error == "sh: flyway: not found"
    assert flyway.error_text("compensating SQL failed (psql exit 3), rolled back: ERROR: boom") is not None


def test_migration_file_names() -> None:
    found = flyway.migration_file("V6__add_parking_zones.sql")
    assert found is not None and (found.version, found.description) == ("6", "add parking zones")
    assert flyway.migration_file("V2_1__x.sql").version == "2.1"  # type: ignore[union-attr]
    assert flyway.migration_file("R__views.sql") is None and flyway.migration_file("README.md") is None


# ---------------------------------------------------------------------------------- outputs longer than 4 KiB
def flyway_json(document: dict[str, object]) -> str:
    """Flyway's pretty JSON style (`"key" : value`, two-space indent, keys sorted as Flyway writes them)."""
    return json.dumps(document, indent=2, separators=(",", " : "), sort_keys=True)


def info_json(total: int, applied: int, prefix: str = "1.") -> str:
    """`flyway info` of `total` migrations V<prefix>1..V<prefix>total, the first `applied` of them applied, built
    from the real Flyway 12 entry of the fixture."""
    template = json.loads((DATA / "info-pending.json").read_text())
    entry = template["migrations"][0]
    migrations = []
    for n in range(1, total + 1):
        version = f"{prefix}{n}"
        done = n <= applied
        migrations.append(
            {
                **entry,
                "description": f"step {n}",
                "filepath": f"/migrations/release/V{version.replace('.', '_')}__step_{n}.sql",
                "rawVersion": version,
                "version": version,
                "state": "Success" if done else "Pending",
                "installedBy": "parking_admin" if done else "",
                "installedOnUTC": "2026-11-25T11:35:56.349968Z" if done else "",
                "executionTime": 7 if done else 0,
            }
        )
    return flyway_json({**template, "migrations": migrations, "schemaVersion": f"{prefix}{applied}"})


def migrate_json(first: int, last: int, initial: str, prefix: str = "1.") -> str:
    template = json.loads((DATA / "migrate-ok.json").read_text())
    entry = template["migrations"][0]
    migrations = [
        {
            **entry,
            "description": f"step {n}",
            "filepath": f"/migrations/release/V{prefix.replace('.', '_')}{n}__step_{n}.sql",
            "version": f"{prefix}{n}",
        }
        for n in range(first, last + 1)
    ]
    return flyway_json(
        {
            **template,
            "initialSchemaVersion": initial,
            "migrations": migrations,
            "migrationsExecuted": len(migrations),
            "targetSchemaVersion": f"{prefix}{last}",
        }
    )


def test_validate_output_of_40_migrations_lists_every_pending_one() -> None:
    """The preflight output of an image with 40 migrations, the database at 1.14: far beyond the 4 KiB of a
    termination message. Whole (the pod log), every pending migration is listed; cut at 4 KiB (what the
    termination message holds), the pending list is unknown - which made the expected version fall back to
    1.14 and a good run be rolled back."""
    output = f"==> validate <==\n{(DATA / 'validate-ok.json').read_text()}\n==> info <==\n{info_json(40, 14)}\n"
    assert len(output.encode()) > 4 * 4096
    result = flyway.parse_validate_output(output)
    assert result.successful and result.schema_version == "1.14"
    assert [p.version for p in result.pending or []] == [f"1.{n}" for n in range(15, 41)]
    assert (result.pending or [])[0].script == "V1_15__step_15.sql"
    cut = flyway.parse_validate_output(output.encode()[:4096].decode(errors="ignore"))
    assert cut.successful and cut.pending is None


def test_migrate_output_of_26_migrations_counts_every_one() -> None:
    output = f"==> migrate <==\n{migrate_json(15, 40, '1.14')}\n"
    assert len(output.encode()) > 4096
    result = flyway.parse_migrate_output(output)
    assert result.success and result.migrations_executed == 26
    assert (result.initial_schema_version, result.target_schema_version) == ("1.14", "1.40")
    assert [m["version"] for m in result.migrations] == [f"1.{n}" for n in range(15, 41)]
    # cut at 4 KiB, the count and the target are lost: the run said "0 migration(s) applied"
    cut = flyway.parse_migrate_output(output.encode()[:4096].decode(errors="ignore"))
    assert cut.migrations_executed == 0 and cut.target_schema_version is None


def test_shell_noise_before_the_sections_is_ignored() -> None:
    """The log also carries the container's stderr (e.g. a shell warning before the script's output)."""
    output = "sh: warning: setlocale: LC_ALL: cannot change locale\n" + (
        f"==> migrate <==\n{migrate_json(15, 17, '1.14')}\n"
    )
    result = flyway.parse_migrate_output(output)
    assert result.success and result.migrations_executed == 3
    assert flyway.error_text(output) is None


# ------------------------------------------------------------------------------------ SQL callbacks
def _run_args(script: str, name: str) -> list[str]:
    """The command line of `run <name> ...` in a Job script, as the shell splits it."""
    import shlex

    line = next(line for line in script.splitlines() if line.startswith(f"run {name} "))
    return shlex.split(line)[2:]


def test_preflight_runs_no_sql_callbacks() -> None:
    """beforeValidate.sql, beforeInfo.sql ... among the migrations must not run in preflight or a dry run: nothing
    is backed up yet. Both commands of the validate Job skip them."""
    assert "-skipDefaultCallbacks=true" in flyway.command_line(SPEC, "validate", preflight=True)
    assert "-skipDefaultCallbacks=true" in flyway.command_line(SPEC, "info", callbacks=False)
    script = flyway.job_script(SPEC, "validate")
    assert "-skipDefaultCallbacks=true" in _run_args(script, "validate")
    info = _run_args(script, "info")
    assert info[0] == "flyway" and info[-1] == "info"
    assert "-skipDefaultCallbacks=true" in info


def test_migrate_and_repair_still_run_the_callbacks() -> None:
    for command in ("migrate", "repair"):
        assert not any("skipDefaultCallbacks" in a for a in flyway.command_line(SPEC, command))
        assert "skipDefaultCallbacks" not in flyway.job_script(SPEC, command)
