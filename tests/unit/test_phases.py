"""One test per transition of the phase machine (migration_operator.machine.decide)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import specs

from migration_operator import machine, maintenance, reasons
from migration_operator.machine import core
from migration_operator.machine.core import (
    CloneDatabase,
    CreateJob,
    Decision,
    ReleaseLock,
    ScaleDeployment,
    SwapCloneBack,
)
from migration_operator.models import (
    AppliedMigration,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    MaintenanceStatus,
    PendingMigration,
    Phase,
    Snapshot,
    parse_spec,
    status_patch_document,
)
from migration_operator.observations import (
    CloneObservation,
    ConditionChange,
    DatabaseCheck,
    DeploymentObservation,
    JobObservation,
    LockObservation,
    Observations,
    Session,
    Verification,
)

FLYWAY = Path(__file__).parent / "data" / "flyway"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NAME, UID = "parking-db-v6", "0f1e2d3c-aaaa-bbbb-cccc-000000000000"


def make_spec(**overrides: Any) -> DatabaseMigrationSpec:
    # the phases without pre-started Jobs (maintenance.prestartMigration, on when unset): test_prestart.py has them
    spec: dict[str, Any] = specs.parking(
        maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": False},
        verify={"requiredTables": ["clients", "parking_zones"]},
    )
    for key, value in overrides.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return parse_spec(spec)


def make_status(phase: Phase | None, started_seconds_ago: float = 1, **fields: Any) -> DatabaseMigrationStatus:
    data: dict[str, Any] = {"phaseStartedAt": core.iso(NOW - timedelta(seconds=started_seconds_ago))}
    if phase is not None:
        data["phase"] = phase.value
    data.update(fields)
    return DatabaseMigrationStatus.model_validate(data)


def observe(**fields: Any) -> Observations:
    return Observations(now=NOW, **fields)


def run(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations) -> Decision:
    return machine.decide(spec, status, obs, NAME, UID)


def written(decision: Decision) -> dict[str, Any]:
    """The status fields the decision writes, in their API form."""
    return status_patch_document(decision.status)


def condition(decision: Decision, kind: str) -> ConditionChange:
    matches = [c for c in decision.conditions if c.type == kind]
    assert matches, f"no {kind} condition in {decision.conditions}"
    return matches[-1]


def flyway_section(name: str, *files: str) -> str:
    return "".join(f"==> {name if i == 0 else 'info'} <==\n{(FLYWAY / f).read_text()}\n" for i, f in enumerate(files))


LOCKED = LockObservation(acquired=True)
HEALTHY_DB = DatabaseCheck(
    reachable=True,
    history_table_exists=True,
    history=(
        AppliedMigration(version="1", script="V1__init.sql", checksum=1),
        AppliedMigration(version="5", script="V5__x.sql", checksum=5),
    ),
)
BEFORE = Snapshot(
    version="5", tables=12, foreignKeys=9, indexes=20, rows={"public.clients": 3}, tableNames=["public.clients"]
)
PENDING6 = [PendingMigration(version="6", description="add parking zones", script="V6__add_parking_zones.sql")]
DEPLOYMENT_UP = DeploymentObservation(exists=True, replicas=3, available_replicas=3, updated_replicas=3, pods=3)
DEPLOYMENT_DOWN = DeploymentObservation(
    exists=True, replicas=0, pods=0, original_replicas_annotation=3, annotation_owner=NAME
)
MAINTENANCE = {"deployment": "api-gateway", "originalReplicas": 3, "scaledDownAt": "2026-01-02T03:00:00Z"}


# ----------------------------------------------------------------------------------------------- Pending
def test_new_run_with_free_lock_goes_to_preflight() -> None:
    decision = run(make_spec(), make_status(None), observe(lock=LOCKED))
    assert decision.phase == Phase.PREFLIGHT
    assert written(decision)["startedAt"] == core.iso(NOW)
    assert condition(decision, reasons.READY).status == "False"
    assert condition(decision, reasons.RECONCILING).status == "True"


def test_new_run_needing_approval_waits_in_awaiting_approval() -> None:
    spec = make_spec(approval={"required": True})
    decision = run(spec, make_status(None), observe(lock=LOCKED))
    assert decision.phase == Phase.AWAITING_APPROVAL
    assert "dbops.io/approved=true" in decision.message
    assert condition(decision, reasons.RECONCILING).reason == reasons.AWAITING_APPROVAL
    assert not decision.actions


def test_second_migration_of_same_database_waits_for_lock_naming_holder() -> None:
    lock = LockObservation(acquired=False, holder="parking/parking-db-v5")
    decision = run(make_spec(), make_status(Phase.PENDING), observe(lock=lock))
    assert decision.phase == Phase.PENDING
    reconciling = condition(decision, reasons.RECONCILING)
    assert reconciling.reason == reasons.WAITING_FOR_LOCK
    assert "parking/parking-db-v5" in reconciling.message
    assert decision.requeue_after


# -------------------------------------------------------------------------------------- AwaitingApproval
def test_unapproved_run_keeps_waiting() -> None:
    spec = make_spec(approval={"required": True})
    decision = run(spec, make_status(Phase.AWAITING_APPROVAL), observe(lock=LOCKED))
    assert decision.phase == Phase.AWAITING_APPROVAL and not decision.actions


def test_approved_run_proceeds_to_preflight() -> None:
    spec = make_spec(approval={"required": True})
    decision = run(spec, make_status(Phase.AWAITING_APPROVAL), observe(lock=LOCKED, approved=True))
    assert decision.phase == Phase.PREFLIGHT
    assert decision.log and decision.log.startswith("approved")


def test_approved_run_with_busy_database_waits_in_pending() -> None:
    spec = make_spec(approval={"required": True})
    busy = LockObservation(acquired=False, holder="other/run")
    decision = run(spec, make_status(Phase.AWAITING_APPROVAL), observe(lock=busy, approved=True))
    assert decision.phase == Phase.PENDING
    assert condition(decision, reasons.RECONCILING).reason == reasons.WAITING_FOR_LOCK


# --------------------------------------------------------------------------------------------- Preflight
def _assert_untouched_failure(decision: Decision, reason: str) -> None:
    assert decision.phase == Phase.FAILED
    assert condition(decision, reasons.STALLED).status == "True"
    assert condition(decision, reasons.STALLED).reason == reason
    assert condition(decision, reasons.READY).reason == reason
    assert not any(isinstance(a, ScaleDeployment | CreateJob) for a in decision.actions)
    assert ReleaseLock() in decision.actions
    assert "not touched" in decision.message


def test_missing_configmap_fails_preflight_without_touching_the_app() -> None:
    obs = observe(
        lock=LOCKED, missing=((reasons.MIGRATIONS_CONFIGMAP_NOT_FOUND, "ConfigMap api-gateway-migrations not found"),)
    )
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), obs)
    _assert_untouched_failure(decision, reasons.MIGRATIONS_CONFIGMAP_NOT_FOUND)
    assert "api-gateway-migrations" in decision.message


def test_wrong_password_fails_preflight_with_bad_credentials() -> None:
    database = DatabaseCheck(
        reachable=False, reason=reasons.BAD_CREDENTIALS, message='password authentication failed for user "parking"'
    )
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=database))
    _assert_untouched_failure(decision, reasons.BAD_CREDENTIALS)
    assert "password authentication failed" in condition(decision, reasons.STALLED).message


def test_unreachable_database_is_retried_in_preflight_then_fails() -> None:
    """A restart or failover of the database rides through preflight (said at once in status, logged once); one
    that stays unreachable past timeouts.transientErrorSeconds fails it, the app untouched."""
    database = DatabaseCheck(reachable=False, reason=reasons.DATABASE_UNREACHABLE, message="connection refused")
    spec = make_spec(timeouts={"transientErrorSeconds": 30})
    decision = run(spec, make_status(Phase.PREFLIGHT, started_seconds_ago=10), observe(lock=LOCKED, database=database))
    assert decision.phase == Phase.PREFLIGHT
    assert "unreachable, retrying for up to 30s: connection refused" in decision.message
    assert decision.log == decision.message and decision.warning
    assert not any(isinstance(a, CreateJob) for a in decision.actions)
    again = run(spec, make_status(Phase.PREFLIGHT, started_seconds_ago=12, message=decision.message),
                observe(lock=LOCKED, database=database))
    assert again.phase == Phase.PREFLIGHT and again.log is None
    late = run(spec, make_status(Phase.PREFLIGHT, started_seconds_ago=31), observe(lock=LOCKED, database=database))
    _assert_untouched_failure(late, reasons.DATABASE_UNREACHABLE)
    assert "(unreachable for 31s)" in late.message


def test_a_host_name_dns_does_not_know_fails_preflight_at_once() -> None:
    database = DatabaseCheck(reachable=False, reason=reasons.DATABASE_UNREACHABLE,
                             message='cannot connect: could not translate host name "postgress" to address')
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=database))
    _assert_untouched_failure(decision, reasons.DATABASE_UNREACHABLE)


def test_failed_row_in_history_fails_preflight() -> None:
    database = DatabaseCheck(
        reachable=True,
        history_table_exists=True,
        history=(
            AppliedMigration(version="5", script="V5__x.sql"),
            AppliedMigration(version="6", script="V6__idx.sql", success=False),
        ),
    )
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=database))
    _assert_untouched_failure(decision, reasons.FAILED_MIGRATION_IN_HISTORY)
    assert "V6__idx.sql" in decision.message


def test_preflight_creates_the_validate_job_once_checks_pass() -> None:
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=HEALTHY_DB))
    assert decision.phase == Phase.PREFLIGHT
    assert decision.actions == [CreateJob("validate")]


def test_preflight_waits_for_a_running_validate_job() -> None:
    obs = observe(lock=LOCKED, database=HEALTHY_DB, jobs={"validate": JobObservation("Running")})
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), obs)
    assert decision.phase == Phase.PREFLIGHT and decision.actions == []


def test_modified_applied_migration_fails_preflight_with_checksum_mismatch() -> None:
    output = flyway_section("validate", "validate-checksum.json")
    obs = observe(lock=LOCKED, database=HEALTHY_DB, jobs={"validate": JobObservation("Failed", output=output)})
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), obs)
    _assert_untouched_failure(decision, reasons.CHECKSUM_MISMATCH)
    assert "checksum mismatch for migration version 1" in decision.message


def test_validate_job_without_output_fails_with_job_reason() -> None:
    obs = observe(
        lock=LOCKED, database=HEALTHY_DB, jobs={"validate": JobObservation("Failed", failure="DeadlineExceeded")}
    )
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), obs)
    assert decision.phase == Phase.FAILED
    assert condition(decision, reasons.STALLED).reason == reasons.VALIDATION_FAILED


def _validated(**extra: Any) -> Observations:
    output = flyway_section("validate", "validate-ok.json", "info-pending.json")
    return observe(
        lock=LOCKED,
        database=HEALTHY_DB,
        snapshot=BEFORE,
        jobs={"validate": JobObservation("Succeeded", output=output)},
        **extra,
    )


def test_validated_run_enters_maintenance_first_and_records_before_and_pending() -> None:
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), _validated())
    assert decision.phase == Phase.ENTERING_MAINTENANCE
    assert written(decision)["before"]["version"] == "5"
    assert [p["version"] for p in written(decision)["pending"]] == ["3"]  # from flyway info (the fixture)
    assert written(decision)["pending"][0]["script"] == "V3__zones.sql"


def test_backup_before_maintenance_timing_backs_up_first() -> None:
    spec = make_spec(backup={"volume": {"claimName": "db-backups"}, "timing": "BeforeMaintenance"})
    decision = run(spec, make_status(Phase.PREFLIGHT), _validated())
    assert decision.phase == Phase.BACKING_UP


def test_dry_run_succeeds_after_preflight_listing_pending() -> None:
    spec = make_spec(dryRun=True)
    decision = run(spec, make_status(Phase.PREFLIGHT), _validated())
    assert decision.phase == Phase.SUCCEEDED
    assert condition(decision, reasons.READY).reason == reasons.DRY_RUN_COMPLETE
    assert "3 zones" in decision.message
    assert ReleaseLock() in decision.actions
    assert not any(isinstance(a, CreateJob | ScaleDeployment) for a in decision.actions)


def test_nothing_pending_succeeds_without_touching_anything() -> None:
    output = flyway_section("validate", "validate-ok.json")
    local = (PendingMigration(version="1", script="V1__init.sql"), PendingMigration(version="5", script="V5__x.sql"))
    obs = observe(
        lock=LOCKED,
        database=HEALTHY_DB,
        local_migrations=local,
        jobs={"validate": JobObservation("Succeeded", output=output)},
    )
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), obs)
    assert decision.phase == Phase.SUCCEEDED
    assert condition(decision, reasons.READY).reason == reasons.NOTHING_TO_MIGRATE


def test_pending_falls_back_to_configmap_files_without_flyway_info() -> None:
    output = flyway_section("validate", "validate-ok.json")
    local = (
        PendingMigration(version="5", script="V5__x.sql"),
        *PENDING6,
        PendingMigration(version="7", script="V7__later.sql"),
    )
    spec = make_spec(migrations={"configMap": {"name": "m"}, "targetVersion": "6"})
    obs = observe(
        lock=LOCKED,
        database=HEALTHY_DB,
        local_migrations=local,
        jobs={"validate": JobObservation("Succeeded", output=output)},
    )
    decision = run(spec, make_status(Phase.PREFLIGHT), obs)
    assert [p["version"] for p in written(decision)["pending"]] == ["6"]


def test_disabled_backup_warns_and_skips_backing_up() -> None:
    spec = make_spec(backup={"enabled": False}, rollback={"strategy": "Repair"}, maintenance=None)
    decision = run(spec, make_status(Phase.PREFLIGHT), _validated())
    assert decision.phase == Phase.MIGRATING
    assert decision.warning
    assert condition(decision, reasons.BACKUP_COMPLETE).reason == reasons.BACKUP_DISABLED


def test_preflight_timeout_fails() -> None:
    obs = observe(lock=LOCKED, database=HEALTHY_DB, jobs={"validate": JobObservation("Running")})
    decision = run(make_spec(), make_status(Phase.PREFLIGHT, started_seconds_ago=5000), obs)
    assert decision.phase == Phase.FAILED
    assert condition(decision, reasons.STALLED).reason == reasons.TIMEOUT


# ----------------------------------------------------------------------------------- EnteringMaintenance
def test_entering_maintenance_records_original_replicas_and_scales_to_zero() -> None:
    decision = run(make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert decision.actions == [ScaleDeployment(0, record_original=3)]
    assert written(decision)["maintenance"]["originalReplicas"] == 3
    assert condition(decision, reasons.MAINTENANCE_MODE).status == "True"


def test_restart_after_scale_down_rereads_original_replicas_from_annotation() -> None:
    decision = run(make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_DOWN))
    assert written(decision)["maintenance"]["originalReplicas"] == 3
    assert decision.phase == Phase.BACKING_UP


def test_stale_annotation_of_another_run_is_ignored_when_app_is_up() -> None:
    deployment = DeploymentObservation(
        exists=True,
        replicas=2,
        available_replicas=2,
        pods=2,
        original_replicas_annotation=5,
        annotation_owner="old-run",
    )
    decision = run(make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=deployment))
    assert decision.actions == [ScaleDeployment(0, record_original=2)]


def test_drain_waits_for_remaining_pods() -> None:
    deployment = DeploymentObservation(exists=True, replicas=0, pods=2)
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(deployment=deployment))
    assert decision.phase == Phase.ENTERING_MAINTENANCE
    assert "2 pod(s)" in decision.message
    assert condition(decision, reasons.RECONCILING).reason == reasons.DRAINING


def test_drain_waits_for_app_sessions_and_names_them() -> None:
    session = Session(pid=4242, usename="gateway", application_name="PostgreSQL JDBC Driver", state="idle")
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(deployment=DEPLOYMENT_DOWN, app_sessions=(session,)))
    assert decision.phase == Phase.ENTERING_MAINTENANCE
    assert "pid 4242" in decision.message


def test_drained_app_moves_on_to_backup() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(deployment=DEPLOYMENT_DOWN))
    assert decision.phase == Phase.BACKING_UP
    assert condition(decision, reasons.MAINTENANCE_MODE).reason == reasons.DRAINED


def test_drain_timeout_rolls_back_with_database_untouched() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=1000, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(deployment=DeploymentObservation(exists=True, pods=1)))
    assert decision.phase == Phase.ROLLING_BACK
    assert written(decision)["rollback"]["reason"] == reasons.DRAIN_TIMEOUT
    assert written(decision)["rollback"]["databaseChanged"] is False


def test_missing_deployment_fails_before_touching_anything() -> None:
    decision = run(
        make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DeploymentObservation(exists=False))
    )
    assert decision.phase == Phase.FAILED
    assert condition(decision, reasons.STALLED).reason == reasons.DEPLOYMENT_NOT_FOUND


# ---------------------------------------------------------------------------------------------- BackingUp
def test_backing_up_creates_the_dump_job() -> None:
    decision = run(make_spec(), make_status(Phase.BACKING_UP, maintenance=MAINTENANCE), observe())
    assert decision.actions == [CreateJob("backup", (("DUMP_SCHEMAS", "public"),))]
    assert written(decision)["backup"]["pvc"] == "db-backups"
    assert written(decision)["backup"]["path"].startswith(NAME)


def test_backing_up_waits_for_running_dump() -> None:
    decision = run(make_spec(), make_status(Phase.BACKING_UP), observe(jobs={"backup": JobObservation("Running")}))
    assert decision.phase == Phase.BACKING_UP and not decision.actions


def test_the_before_snapshot_is_taken_beside_the_dump_once_the_app_is_drained() -> None:
    """Maintenance first, then the dump: the "before" is recorded while pg_dump runs, and Migrating does not take it
    again; with the backup before maintenance (the app still writes) or without maintenance, Migrating takes it."""
    from migration_operator.machine import backup

    drained = BEFORE.model_copy(update={"drained": True})
    running = observe(jobs={"backup": JobObservation("Running")}, snapshot=drained)
    decision = run(make_spec(), make_status(Phase.BACKING_UP), running)
    assert written(decision)["before"]["drained"] is True and not decision.actions
    assert backup.snapshot_beside_the_dump(make_spec(), make_status(Phase.BACKING_UP))
    assert not backup.snapshot_beside_the_dump(make_spec(), make_status(Phase.BACKING_UP, before={"drained": True}))
    assert not backup.snapshot_beside_the_dump(make_spec(maintenance=None), make_status(Phase.BACKING_UP))
    early = make_spec(backup={"volume": {"claimName": "b"}, "timing": "BeforeMaintenance"})
    assert not backup.snapshot_beside_the_dump(early, make_status(Phase.BACKING_UP))


def test_verified_dump_completes_backup_and_starts_migrating() -> None:
    output = "verified=true\nsizeBytes=4096\ntocEntries=37\npath=x.dump\n"
    status = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(jobs={"backup": JobObservation("Succeeded", output=output)}))
    assert decision.phase == Phase.MIGRATING
    assert written(decision)["backup"]["sizeBytes"] == 4096 and written(decision)["backup"]["verified"] is True
    assert condition(decision, reasons.BACKUP_COMPLETE).status == "True"
    assert decision.message.endswith("read back whole with pg_restore")
    streamed = observe(jobs={"backup": JobObservation("Succeeded", output=output + "readBack=streamed\n")})
    assert run(make_spec(), status, streamed).message.endswith("read back whole with pg_restore as pg_dump wrote it")


def test_failed_dump_before_maintenance_fails_with_app_untouched() -> None:
    spec = make_spec(backup={"volume": {"claimName": "db-backups"}, "timing": "BeforeMaintenance"})
    output = "verified=false\nerror=pg_dump failed: permission denied for table secrets\n"
    decision = run(spec, make_status(Phase.BACKING_UP), observe(jobs={"backup": JobObservation("Failed", output)}))
    assert decision.phase == Phase.FAILED
    assert condition(decision, reasons.BACKUP_COMPLETE).reason == reasons.BACKUP_FAILED
    assert "permission denied" in decision.message


def test_failed_dump_after_drain_rolls_back_to_restore_the_app() -> None:
    status = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE)
    decision = run(make_spec(), status, observe(jobs={"backup": JobObservation("Failed", failure="DeadlineExceeded")}))
    assert decision.phase == Phase.ROLLING_BACK
    assert written(decision)["rollback"]["databaseChanged"] is False


def test_clone_backup_creates_then_detects_the_clone() -> None:
    spec = make_spec(backup={"method": "Clone"})
    status = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE)
    first = run(spec, status, observe(clone=CloneObservation(source_exists=True, clone_exists=False)))
    clone_name, _ = core.clone_names(spec, UID)
    assert first.actions == [CloneDatabase(clone_name)]
    done = run(spec, status, observe(clone=CloneObservation(source_exists=True, clone_exists=True, size_bytes=9)))
    assert done.phase == Phase.MIGRATING
    assert written(done)["backup"]["cloneDatabase"] == clone_name


# ---------------------------------------------------------------------------------------------- Migrating
def _migrating_status(**fields: Any) -> DatabaseMigrationStatus:
    base: dict[str, Any] = {
        "maintenance": MAINTENANCE,
        "before": BEFORE.model_dump(by_alias=True),
        "pending": [p.model_dump(by_alias=True) for p in PENDING6],
    }
    base.update(fields)
    return make_status(Phase.MIGRATING, **base)


def test_migrating_creates_the_flyway_job_and_refreshes_before() -> None:
    fresh = BEFORE.model_copy(update={"rows": {"public.clients": 4}})
    decision = run(make_spec(), _migrating_status(), observe(snapshot=fresh))
    assert decision.actions == [CreateJob("migrate")]
    assert written(decision)["before"]["rows"] == {"public.clients": 4}
    assert condition(decision, reasons.MIGRATED).status == "False"


def test_a_deleted_migrate_job_is_created_again_and_before_is_kept() -> None:
    fresh = BEFORE.model_copy(update={"rows": {"public.clients": 4}})
    decision = run(make_spec(), _migrating_status(jobs={"migrate": "x"}), observe(snapshot=fresh))
    assert decision.phase == Phase.MIGRATING
    assert decision.actions == [CreateJob("migrate")]
    assert "before" not in written(decision)
    assert decision.warning and "disappeared" in (decision.log or "")


def test_running_migration_reports_blocked_locks() -> None:
    obs = observe(
        jobs={"migrate": JobObservation("Running")},
        blocked_locks=("pid 77 waits for AccessExclusiveLock on clients held by pid 12",),
    )
    decision = run(make_spec(), _migrating_status(jobs={"migrate": "x"}), obs)
    assert decision.phase == Phase.MIGRATING and "blocked lock" in decision.message


def test_successful_migration_moves_to_verifying() -> None:
    output = flyway_section("migrate", "migrate-ok.json")
    decision = run(
        make_spec(),
        _migrating_status(jobs={"migrate": "x"}),
        observe(jobs={"migrate": JobObservation("Succeeded", output=output)}),
    )
    assert decision.phase == Phase.VERIFYING
    assert condition(decision, reasons.MIGRATED).status == "True"
    assert written(decision)["flyway"]["migrationsExecuted"] == 1


def test_failed_migration_rolls_back_with_flyway_error_text() -> None:
    output = flyway_section("migrate", "migrate-failed.json")[:4096]
    decision = run(
        make_spec(),
        _migrating_status(jobs={"migrate": "x"}),
        observe(jobs={"migrate": JobObservation("Failed", output=output)}),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert 'relation "nope" does not exist' in written(decision)["rollback"]["error"]
    assert written(decision)["rollback"]["databaseChanged"] is True
    assert 'relation "nope" does not exist' in condition(decision, reasons.MIGRATED).message
    assert condition(decision, reasons.MIGRATED).reason == reasons.MIGRATION_FAILED


def test_migration_reported_failed_in_json_with_exit_zero_is_still_a_failure() -> None:
    output = flyway_section("migrate", "migrate-failed.json")
    decision = run(
        make_spec(),
        _migrating_status(jobs={"migrate": "x"}),
        observe(jobs={"migrate": JobObservation("Succeeded", output=output)}),
    )
    assert decision.phase == Phase.ROLLING_BACK


# ---------------------------------------------------------------------------------------------- Verifying
def _after(**changes: Any) -> Snapshot:
    values: dict[str, Any] = {
        "version": "6",
        "tables": 13,
        "foreign_keys": 10,
        "indexes": 21,
        "table_names": ["public.clients", "public.parking_zones"],
    }
    values.update(changes)
    return Snapshot(**values)


def _verifying_status() -> DatabaseMigrationStatus:
    return make_status(
        Phase.VERIFYING,
        maintenance=MAINTENANCE,
        before=BEFORE.model_dump(by_alias=True),
        pending=[p.model_dump(by_alias=True) for p in PENDING6],
        jobs={"migrate": "x"},
    )


def test_verified_migration_records_after_and_exits_maintenance() -> None:
    applied = (AppliedMigration(version="6", script="V6__add_parking_zones.sql", checksum=12, execution_time_ms=84),)
    verification = Verification(snapshot=_after(), applied=applied)
    decision = run(make_spec(), _verifying_status(), observe(verification=verification))
    assert decision.phase == Phase.EXITING_MAINTENANCE
    assert written(decision)["after"]["version"] == "6"
    assert written(decision)["applied"][0]["executionTimeMs"] == 84
    assert condition(decision, reasons.VERIFIED).status == "True"


@pytest.mark.parametrize(
    ("snapshot", "checks", "expected"),
    [
        (_after(version="5"), {}, "expected 6"),
        (_after(table_names=["public.clients"]), {}, "required table parking_zones missing"),
        (_after(foreign_keys=3), {}, "foreign keys dropped"),
        (_after(), {"no-orphans": False}, "check no-orphans returned false"),
        (_after(), {"no-orphans": "ERROR: syntax error"}, "check no-orphans failed: ERROR: syntax error"),
    ],
)
def test_failed_verification_rolls_back_naming_the_problem(
    snapshot: Snapshot, checks: dict[str, Any], expected: str
) -> None:
    spec = make_spec(
        verify={
            "requiredTables": ["clients", "parking_zones"],
            "checks": [{"name": "no-orphans", "sql": "select true"}],
        }
    )
    checks = checks or {"no-orphans": True}
    decision = run(spec, _verifying_status(), observe(verification=Verification(snapshot, check_results=checks)))
    assert decision.phase == Phase.ROLLING_BACK
    assert expected in written(decision)["rollback"]["error"]
    assert condition(decision, reasons.VERIFIED).reason == reasons.VERIFICATION_FAILED


def test_failed_history_row_after_migration_fails_verification() -> None:
    verification = Verification(_after(), failed_rows=(AppliedMigration(version="7", script="V7.sql", success=False),))
    decision = run(make_spec(), _verifying_status(), observe(verification=verification))
    assert decision.phase == Phase.ROLLING_BACK and "failed row" in decision.message


def test_dropped_indexes_are_accepted_when_allowed() -> None:
    spec = make_spec(verify={"allowDroppedObjects": True})
    verification = Verification(snapshot=_after(indexes=1))
    decision = run(spec, _verifying_status(), observe(verification=verification))
    assert decision.phase == Phase.EXITING_MAINTENANCE


def test_unreachable_database_during_verification_retries() -> None:
    decision = run(
        make_spec(), _verifying_status(), observe(verification=Verification(Snapshot(), error="connection refused"))
    )
    assert decision.phase == Phase.VERIFYING and decision.requeue_after


# ------------------------------------------------------------------------------------- ExitingMaintenance
def _exiting_status() -> DatabaseMigrationStatus:
    return make_status(
        Phase.EXITING_MAINTENANCE,
        maintenance=MAINTENANCE,
        before=BEFORE.model_dump(by_alias=True),
        after=_after().model_dump(by_alias=True),
        jobs={"migrate": "x"},
        applied=[{"version": "6", "script": "V6__add_parking_zones.sql"}],
    )


def test_exiting_maintenance_scales_back_to_original_replicas() -> None:
    decision = run(make_spec(), _exiting_status(), observe(deployment=DEPLOYMENT_DOWN))
    assert decision.actions == [ScaleDeployment(3)]
    assert decision.phase == Phase.EXITING_MAINTENANCE


def test_a_scale_up_by_someone_else_after_the_last_hold_is_said_and_scaled_back() -> None:
    # landed after the hold guard's last look in Verifying: found by ExitingMaintenance's first step
    scaled = DeploymentObservation(exists=True, replicas=5, pods=2, replicas_manager="argocd-controller")
    decision = run(make_spec(), _exiting_status(), observe(deployment=scaled))
    assert decision.phase == Phase.EXITING_MAINTENANCE
    assert decision.actions == [ScaleDeployment(3)]
    assert decision.warning and decision.log is not None
    assert "scaled to 5 by argocd-controller" in decision.log and "back to 3" in decision.log
    assert written(decision)["maintenance"]["scaledUpAt"]


def test_a_scale_by_someone_else_to_the_recorded_count_is_said_and_kept() -> None:
    scaled = DeploymentObservation(exists=True, replicas=3, pods=3, replicas_manager="kubectl")
    decision = run(make_spec(), _exiting_status(), observe(deployment=scaled))
    assert decision.actions == [] and decision.warning
    assert "scaled to 3 by kubectl" in (decision.log or "") and "keeping it" in (decision.log or "")
    # said once: the next pass (scaledUpAt recorded) waits on availability like any other
    after = _exiting_status().model_copy(update={"maintenance": MaintenanceStatus.model_validate(
        {**MAINTENANCE, "scaledUpAt": core.iso(NOW)})})
    again = run(make_spec(), after, observe(deployment=scaled))
    assert not again.warning and again.log is None


def test_the_operators_own_scale_up_before_a_restart_is_not_someone_elses() -> None:
    # scaled back to 3 by the operator, killed before its status said so: the field manager is its own
    ours = DeploymentObservation(
        exists=True, replicas=3, available_replicas=3, updated_replicas=3, pods=3,
        replicas_manager=maintenance.FIELD_MANAGER,
    )
    decision = run(make_spec(), _exiting_status(), observe(deployment=ours))
    assert decision.phase == Phase.SUCCEEDED and not decision.warning


def test_exiting_maintenance_waits_for_available_app() -> None:
    deployment = DeploymentObservation(exists=True, replicas=3, available_replicas=1, updated_replicas=3, pods=3)
    decision = run(make_spec(), _exiting_status(), observe(deployment=deployment))
    assert decision.phase == Phase.EXITING_MAINTENANCE and "1/3" in decision.message


def test_available_app_completes_the_run_ready() -> None:
    decision = run(make_spec(), _exiting_status(), observe(deployment=DEPLOYMENT_UP))
    assert decision.phase == Phase.SUCCEEDED
    assert condition(decision, reasons.READY).status == "True"
    assert condition(decision, reasons.STALLED).status == "False"
    assert condition(decision, reasons.MAINTENANCE_MODE).status == "False"
    assert core.ClearMaintenanceRecord() in decision.actions and ReleaseLock() in decision.actions
    assert "from version 5 to 6" in decision.message
    assert written(decision)["completedAt"]


def test_app_not_available_in_time_rolls_back() -> None:
    deployment = DeploymentObservation(exists=True, replicas=3, available_replicas=0, updated_replicas=3, pods=3)
    status = _exiting_status().model_copy(update={"phase_started_at": core.iso(NOW - timedelta(hours=1))})
    decision = run(make_spec(), status, observe(deployment=deployment))
    assert decision.phase == Phase.ROLLING_BACK
    assert written(decision)["rollback"]["reason"] == reasons.APP_NOT_AVAILABLE


# -------------------------------------------------------------------------------------------- RollingBack
def _rolling_status(strategy: str = "Restore", changed: bool = True, **rollback: Any) -> DatabaseMigrationStatus:
    data = {
        "strategy": strategy,
        "reason": reasons.MIGRATION_FAILED,
        "error": 'ERROR: relation "nope" does not exist',
        "databaseChanged": changed,
        "sessionsEnded": True,  # step 0 done: tests/unit/test_guards.py covers it
        **rollback,
    }
    return make_status(Phase.ROLLING_BACK, maintenance=MAINTENANCE, rollback=data, jobs={"migrate": "x"})


def test_restore_rollback_creates_the_restore_job() -> None:
    decision = run(make_spec(), _rolling_status(), observe(deployment=DEPLOYMENT_DOWN))
    assert decision.actions == [CreateJob("restore", (("DUMP_SCHEMAS", "public"), ("DROP_SCHEMAS", "")))]


def test_rollback_stops_a_running_app_before_restoring() -> None:
    decision = run(make_spec(), _rolling_status(), observe(deployment=DEPLOYMENT_UP))
    assert decision.actions == [ScaleDeployment(0)]


def test_a_scale_up_by_someone_else_during_the_restore_is_said_and_stopped() -> None:
    scaled = DeploymentObservation(exists=True, replicas=5, pods=2, replicas_manager="argocd-controller")
    decision = run(make_spec(), _rolling_status(), observe(deployment=scaled))
    assert decision.phase == Phase.ROLLING_BACK and decision.actions == [ScaleDeployment(0)]
    assert decision.warning and decision.log is not None
    assert "api-gateway was scaled to 5 by argocd-controller while the database was being put back" in decision.log
    assert "stopping api-gateway before restoring the database" in decision.log


def test_the_operators_own_scale_up_stopped_for_a_restore_is_not_someone_elses() -> None:
    # the app came back on the migrated database and failed there: the operator scaled it up itself
    ours = DeploymentObservation(exists=True, replicas=3, pods=3, replicas_manager=maintenance.FIELD_MANAGER)
    decision = run(make_spec(), _rolling_status(), observe(deployment=ours))
    assert decision.actions == [ScaleDeployment(0)] and not decision.warning and decision.log is None
    # its last pods going: nothing to scale, only to wait for
    going = DeploymentObservation(exists=True, replicas=0, pods=1, replicas_manager=maintenance.FIELD_MANAGER)
    wait = run(make_spec(), _rolling_status(), observe(deployment=going))
    assert wait.phase == Phase.ROLLING_BACK and wait.actions == [] and not wait.warning


def test_finished_restore_marks_database_restored() -> None:
    decision = run(
        make_spec(),
        _rolling_status(),
        observe(deployment=DEPLOYMENT_DOWN, jobs={"restore": JobObservation("Succeeded", "restored=true")}),
    )
    assert written(decision)["rollback"]["databaseRestored"] is True
    assert decision.phase == Phase.ROLLING_BACK


def test_restored_database_brings_the_app_back() -> None:
    decision = run(make_spec(), _rolling_status(databaseRestored=True), observe(deployment=DEPLOYMENT_DOWN))
    assert decision.actions == [ScaleDeployment(3)]


def test_rollback_completes_rolled_back_with_the_original_error() -> None:
    decision = run(make_spec(), _rolling_status(databaseRestored=True), observe(deployment=DEPLOYMENT_UP))
    assert decision.phase == Phase.ROLLED_BACK
    rolled_back = condition(decision, reasons.ROLLED_BACK)
    assert rolled_back.status == "True" and rolled_back.reason == "RestoreSucceeded"
    assert 'relation "nope" does not exist' in rolled_back.message
    assert condition(decision, reasons.READY).status == "False"
    assert ReleaseLock() in decision.actions


def test_failed_restore_with_bring_app_back_restores_the_app_then_fails() -> None:
    spec = make_spec(rollback={"strategy": "Restore", "onFailure": "BringAppBack"})
    failed = run(
        spec,
        _rolling_status(),
        observe(deployment=DEPLOYMENT_DOWN, jobs={"restore": JobObservation("Failed", "restore failed: disk full")}),
    )
    assert written(failed)["rollback"]["failed"] is True
    status = _rolling_status(failed=True, failure="pg_restore of the backup failed: disk full")
    scale = run(spec, status, observe(deployment=DEPLOYMENT_DOWN))
    assert scale.actions == [ScaleDeployment(3)]
    final = run(spec, status, observe(deployment=DEPLOYMENT_UP))
    assert final.phase == Phase.FAILED
    assert condition(final, reasons.STALLED).reason == reasons.ROLLBACK_FAILED
    assert "disk full" in final.message


def test_failed_restore_keeps_the_app_down_by_default_and_says_so() -> None:
    status = _rolling_status(failed=True, failure="pg_restore of the backup failed: disk full")
    final = run(make_spec(), status, observe(deployment=DEPLOYMENT_DOWN))
    assert final.phase == Phase.FAILED
    assert not any(isinstance(a, ScaleDeployment) for a in final.actions)
    assert phases_clear_record(final) is False  # the annotation with the original replicas stays for the human
    assert written(final)["maintenance"]["heldDown"] is True
    stalled = condition(final, reasons.STALLED)
    assert stalled.reason == reasons.ROLLBACK_FAILED
    assert "kept at 0 replicas" in stalled.message and "original 3" in stalled.message
    assert "disk full" in stalled.message


def test_failed_restore_scales_an_app_that_is_up_back_down_when_keeping_it_down() -> None:
    status = _rolling_status(failed=True, failure="rollback took longer than 3600s")
    decision = run(make_spec(), status, observe(deployment=DEPLOYMENT_UP))
    assert decision.phase == Phase.ROLLING_BACK
    assert decision.actions == [ScaleDeployment(0)]


def test_a_scale_up_by_someone_else_after_a_failed_restore_is_said_and_held_at_0() -> None:
    status = _rolling_status(failed=True, failure="pg_restore of the backup failed: disk full")
    scaled = DeploymentObservation(exists=True, replicas=2, pods=2, replicas_manager="kubectl")
    decision = run(make_spec(), status, observe(deployment=scaled))
    assert decision.phase == Phase.ROLLING_BACK and decision.actions == [ScaleDeployment(0)]
    assert decision.warning and "rollback failed: api-gateway was scaled to 2 by kubectl" in (decision.log or "")
    assert "keeping api-gateway at 0" in (decision.log or "")


def phases_clear_record(decision: Decision) -> bool:
    return core.ClearMaintenanceRecord() in decision.actions


def test_strategy_none_stops_and_leaves_the_app_down() -> None:
    spec = make_spec(rollback={"strategy": "None"})
    decision = run(spec, _rolling_status("None"), observe(deployment=DEPLOYMENT_DOWN))
    assert decision.phase == Phase.FAILED
    assert not any(isinstance(a, ScaleDeployment) for a in decision.actions)
    stalled = condition(decision, reasons.STALLED)
    assert stalled.reason == reasons.ROLLBACK_DISABLED
    assert "left at 0 replicas" in stalled.message and "original 3" in stalled.message


@pytest.mark.parametrize(("strategy", "step"), [("Repair", "repair"), ("Compensate", "compensate")])
def test_repair_and_compensate_run_their_job(strategy: str, step: str) -> None:
    rollback: dict[str, Any] = {"strategy": strategy}
    if strategy == "Compensate":
        rollback["compensate"] = {"sql": "drop table parking_zones;"}
    decision = run(make_spec(rollback=rollback), _rolling_status(strategy), observe(deployment=DEPLOYMENT_DOWN))
    assert decision.actions == [CreateJob(step)]


def test_clone_rollback_swaps_databases_then_marks_restored() -> None:
    spec = make_spec(backup={"method": "Clone"})
    clone_name, failed_name = core.clone_names(spec, UID)
    first = run(
        spec,
        _rolling_status(),
        observe(deployment=DEPLOYMENT_DOWN, clone=CloneObservation(source_exists=True, clone_exists=True)),
    )
    assert first.actions == [SwapCloneBack(clone_name, failed_name)]
    done = run(
        spec,
        _rolling_status(),
        observe(
            deployment=DEPLOYMENT_DOWN,
            clone=CloneObservation(source_exists=True, clone_exists=False, failed_copy_exists=True),
        ),
    )
    assert written(done)["rollback"]["databaseRestored"] is True


def test_rollback_with_untouched_database_only_restores_the_app() -> None:
    status = _rolling_status(changed=False).model_copy(update={"jobs": {}})
    scale = run(make_spec(), status, observe(deployment=DEPLOYMENT_DOWN))
    assert scale.actions == [ScaleDeployment(3)]
    final = run(make_spec(), status, observe(deployment=DEPLOYMENT_UP))
    assert final.phase == Phase.ROLLED_BACK
    assert condition(final, reasons.ROLLED_BACK).reason == reasons.NOTHING_TO_ROLL_BACK


# ---------------------------------------------------------------------------------------------- terminal
@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED])
def test_terminal_phases_only_release_the_lock(phase: Phase) -> None:
    decision = run(make_spec(), make_status(phase, message="done"), observe())
    assert decision.phase == phase and decision.actions == [ReleaseLock()] and not decision.conditions


# ------------------------------------------------------------------------------------------------ helpers
def test_work_phases_follow_backup_timing_and_maintenance() -> None:
    assert core.work_phases(make_spec())[:3] == [Phase.ENTERING_MAINTENANCE, Phase.BACKING_UP, Phase.MIGRATING]
    early = make_spec(backup={"volume": {"claimName": "b"}, "timing": "BeforeMaintenance"})
    assert core.work_phases(early)[:2] == [Phase.BACKING_UP, Phase.ENTERING_MAINTENANCE]
    bare = make_spec(maintenance=None, backup={"enabled": False}, rollback={"strategy": "Repair"})
    assert core.work_phases(bare) == [Phase.MIGRATING, Phase.VERIFYING, Phase.SUCCEEDED]


def test_clone_names_fit_postgres_identifiers() -> None:
    spec = make_spec(database={"host": "h", "name": "x" * 63, "credentialsSecret": {"name": "s"}})
    pre, failed = core.clone_names(spec, UID)
    assert len(pre) <= 63 and len(failed) <= 63 and pre.endswith("_pre_0f1e2d3c")


def test_version_ordering_is_numeric() -> None:
    assert core.version_key("10") > core.version_key("9")
    assert core.version_key("2.1") > core.version_key("2")
    assert core.version_key("1_5") == core.version_key("1.5")


def test_preflight_log_says_the_validate_job_binds_the_backup_claim() -> None:
    decision = run(make_spec(), make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=HEALTHY_DB))
    assert decision.actions == [CreateJob("validate")]
    assert decision.log is not None and "backup claim db-backups" in decision.log
    clone = make_spec(backup={"method": "Clone"})
    decision = run(clone, make_status(Phase.PREFLIGHT), observe(lock=LOCKED, database=HEALTHY_DB))
    assert decision.log == "created the flyway validate Job"


@pytest.mark.parametrize(
    ("phase", "waited", "expected"),
    [
        ("Bound", 3600.0, None),
        ("Pending", 5.0, None),
        ("Pending", 59.0, None),
        ("Pending", 61.0, "still Pending 61s"),
        (None, 61.0, "still Pending 61s"),
        ("Lost", 0.0, "is Lost"),
    ],
)
def test_backup_claim_unbound_too_long_is_a_preflight_problem(
    phase: str | None, waited: float, expected: str | None
) -> None:
    from migration_operator.machine import preflight

    problem = preflight.claim_problem("db-backups", phase, "local", "local-node", waited)
    if expected is None:
        assert problem is None
        return
    assert problem is not None
    reason, message = problem
    assert reason == reasons.BACKUP_VOLUME_NOT_FOUND
    assert expected in message and "PersistentVolumeClaim db-backups (spec.backup.volume)" in message
    if phase != "Lost":
        assert "StorageClass local, node local-node selected" in message and "kubectl describe pvc" in message


def test_backup_claim_problem_fails_preflight_without_touching_the_app() -> None:
    from migration_operator.machine import preflight

    problem = preflight.claim_problem("db-backups", "Pending", "slow", None, 75.0)
    assert problem is not None
    obs = observe(lock=LOCKED, missing=(problem,), jobs={"validate": JobObservation("Running")})
    decision = run(make_spec(), make_status(Phase.PREFLIGHT, started_seconds_ago=75), obs)
    _assert_untouched_failure(decision, reasons.BACKUP_VOLUME_NOT_FOUND)
    assert "db-backups" in condition(decision, reasons.STALLED).message


async def test_a_backup_claim_waits_from_the_validate_job_that_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WaitForFirstConsumer claim binds only once the validate Job mounts it, and that Job is created only once the
    database answers: before it exists (a database nobody listens on), the claim's wait does not run, so the run
    fails as DatabaseUnreachable, not BackupVolumeNotFound, however long preflight has waited."""
    import logging

    from migration_operator import jobs, kube
    from migration_operator.machine import preflight
    from migration_operator.machine.context import Context

    created: dict[str, dict[str, Any]] = {}

    async def request(method: str, resource: str, namespace: str, name: str, **_: Any) -> dict[str, Any]:
        assert (method, resource, namespace) == ("GET", "jobs", "ns")
        if name not in created:
            raise kube.ApiError(404, "Not Found")
        return created[name]

    monkeypatch.setattr(kube, "request", request)
    ctx = Context(body={"metadata": {"name": "run", "namespace": "ns", "uid": "u"}}, spec=make_spec(),
                  status=make_status(Phase.PREFLIGHT, started_seconds_ago=600), logger=logging.getLogger("test"))
    assert await preflight._claim_asked_for(ctx, "Pending") == 0.0
    asked = datetime.now(UTC) - timedelta(seconds=75)
    stamp = asked.strftime("%Y-%m-%dT%H:%M:%SZ")
    created[jobs.job_name("run", "validate")] = {"metadata": {"creationTimestamp": stamp}}
    waited = await preflight._claim_asked_for(ctx, "Pending")
    assert 75 <= waited < 90
    assert preflight.claim_problem("db-backups", "Pending", "local", None, waited) is not None
    assert await preflight._claim_asked_for(ctx, "Bound") == 0.0
