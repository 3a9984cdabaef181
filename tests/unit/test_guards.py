"""The guards every pass checks before (and after) the phase decides: the maintenance window, errors met while
observing or acting, holding the app at 0, the phase's hard deadline. And the error descriptions they decide on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
import pytest
import specs

from migration_operator import errors, kube, machine, reasons
from migration_operator.machine import core
from migration_operator.machine.core import ScaleDeployment
from migration_operator.models import DatabaseMigrationStatus, LastError, Phase, parse_spec, status_patch_document
from migration_operator.observations import DeploymentObservation, JobObservation, Observations
from migration_operator.reasons import Step

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SPEC = parse_spec(specs.parking(maintenance={"deployment": {"name": "api-gateway"}}))
DOWN = {"deployment": "api-gateway", "originalReplicas": 3, "scaledDownAt": core.iso(NOW - timedelta(seconds=60))}


def status(phase: Phase, seconds_in_phase: float = 5, **fields: Any) -> DatabaseMigrationStatus:
    data = {"phase": phase.value, "phaseStartedAt": core.iso(NOW - timedelta(seconds=seconds_in_phase)), **fields}
    return DatabaseMigrationStatus.model_validate(data)


def error(action: str = reasons.ACTION_OBSERVE, age: float = 1, retryable: bool = True, count: int = 1) -> LastError:
    return LastError(
        action=action,
        message="OperationalError: connection refused",
        at=core.iso(NOW),
        since=core.iso(NOW - timedelta(seconds=age)),
        count=count,
        retryable=retryable,
    )


def test_a_fresh_error_while_observing_is_retried_and_shown() -> None:
    decision = machine.decide(
        SPEC, status(Phase.MIGRATING), Observations(now=NOW, last_error=error(), observed=False)
    )
    assert decision.phase == Phase.MIGRATING
    assert "connection refused" in decision.message and decision.requeue_after
    assert decision.log and decision.warning  # the first occurrence is logged and becomes a Warning event


def test_a_transient_error_older_than_its_grace_fails_the_phase_and_rolls_back_once_the_app_was_touched() -> None:
    decision = machine.decide(
        SPEC,
        status(Phase.MIGRATING, maintenance=DOWN, jobs={"migrate": "m"}),
        Observations(now=NOW, last_error=error(age=61, count=9), observed=False),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert status_patch_document(decision.status)["rollback"]["reason"] == reasons.OBSERVE_FAILED


def test_an_error_that_cannot_go_away_fails_at_once_with_the_app_untouched_in_preflight() -> None:
    decision = machine.decide(
        SPEC, status(Phase.PREFLIGHT), Observations(now=NOW, last_error=error(retryable=False), observed=False)
    )
    assert decision.phase == Phase.FAILED
    assert "not touched" in decision.message


def test_a_refused_job_fails_the_phase_with_its_own_reason() -> None:
    decision = machine.decide(
        SPEC,
        status(Phase.BACKING_UP, maintenance=DOWN),
        Observations(now=NOW, last_error=error(reasons.ACTION_CREATE_JOB, retryable=False),
                     deployment=DeploymentObservation(exists=True, replicas=0)),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert status_patch_document(decision.status)["rollback"]["reason"] == reasons.JOB_REFUSED


def test_an_error_of_an_earlier_phase_is_not_held_against_this_one() -> None:
    old = error(retryable=False).model_copy(update={"at": core.iso(NOW - timedelta(seconds=30))})
    decision = machine.decide(
        SPEC, status(Phase.PREFLIGHT, seconds_in_phase=5), Observations(now=NOW, last_error=old)
    )
    assert decision.phase == Phase.PREFLIGHT


def test_an_app_scaled_up_by_someone_else_while_migrating_is_scaled_back_naming_who() -> None:
    scaled = DeploymentObservation(exists=True, replicas=3, pods=1, replicas_manager="argocd-controller")
    decision = machine.decide(
        SPEC,
        status(Phase.MIGRATING, maintenance=DOWN, jobs={"migrate": "m"}),
        Observations(now=NOW, deployment=scaled, jobs={"migrate": JobObservation("Running")}),
    )
    assert decision.phase == Phase.MIGRATING
    assert decision.actions == [ScaleDeployment(0)]
    assert decision.warning and "argocd-controller" in (decision.log or "")


def test_a_pod_that_ran_nothing_and_was_replaced_is_said_once() -> None:
    down = DeploymentObservation(exists=True, replicas=0, pods=0)
    retried = JobObservation("Running", replaced=1, replaced_why="StartError: failed to start containerd task")
    observed = Observations(now=NOW, deployment=down, jobs={"migrate": retried})
    first = machine.decide(SPEC, status(Phase.MIGRATING, maintenance=DOWN, jobs={"migrate": "m"}), observed)
    assert first.phase == Phase.MIGRATING and first.warning
    assert first.log == (
        "the migrate Job's pod ran nothing (StartError: failed to start containerd task): Kubernetes gives the step "
        "another pod (1 of 2 allowed)"
    )
    logged = [{"time": core.iso(NOW), "phase": "Migrating", "message": first.log}]
    again = machine.decide(SPEC, status(Phase.MIGRATING, maintenance=DOWN, jobs={"migrate": "m"}, log=logged), observed)
    assert again.log is None and not again.warning


def test_staying_past_the_hard_deadline_leaves_the_phase_whatever_decided_to_stay() -> None:
    limit = SPEC.timeouts.verify_seconds + core.DEADLINE_SLACK + core.HARD_MARGIN
    decision = machine.decide(
        SPEC,
        status(Phase.VERIFYING, seconds_in_phase=limit + 1, maintenance=DOWN, jobs={"migrate": "m"}),
        Observations(now=NOW, last_error=error(), observed=False),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert "deadline" in decision.message


def test_past_the_maintenance_window_the_run_goes_to_bring_the_app_back() -> None:
    late = {**DOWN, "backBy": core.iso(NOW - timedelta(seconds=1))}
    decision = machine.decide(
        SPEC,
        status(Phase.MIGRATING, maintenance=late, jobs={"migrate": "m"}),
        Observations(now=NOW, jobs={"migrate": JobObservation("Running")}),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert status_patch_document(decision.status)["rollback"]["reason"] == reasons.MAINTENANCE_WINDOW_EXCEEDED


def test_a_rollback_that_cannot_observe_gives_up_the_database_then_ends_saying_where_the_app_is() -> None:
    rolling = {"strategy": "Restore", "reason": "MigrationFailed", "databaseChanged": True}
    persistent = Observations(now=NOW, last_error=error(age=61), observed=False)
    spec = parse_spec(specs.parking(maintenance={"deployment": {"name": "api-gateway"}},
                                    rollback={"strategy": "Restore", "onFailure": "BringAppBack"}))
    first = machine.decide(spec, status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=rolling), persistent)
    assert first.phase == Phase.ROLLING_BACK
    given_up = status_patch_document(first.status)["rollback"]
    assert given_up["failed"] is True
    second = machine.decide(spec, status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=given_up), persistent)
    assert second.phase == Phase.FAILED
    assert "may still be at 0 replicas" in second.message and "original 3" in second.message


@pytest.mark.parametrize("prestart", [None, False])
def test_scaling_down_records_when_the_app_must_be_back(prestart: bool | None) -> None:
    spec = parse_spec(specs.parking(maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": prestart}))
    armed = {"armed-backup": "m-armed-backup", "armed-migrate": "m-armed-migrate"} if prestart is None else {}
    decision = machine.decide(
        spec,
        status(Phase.ENTERING_MAINTENANCE, jobs=armed),
        Observations(
            now=NOW,
            deployment=DeploymentObservation(exists=True, replicas=3, pods=3),
            armed_waiting=("backup", "migrate"),  # with pre-started Jobs, the scale-down waits for them
        ),
    )
    assert decision.actions[-1] == ScaleDeployment(0, record_original=3)
    back_by = status_patch_document(decision.status)["maintenance"]["backBy"]
    t = SPEC.timeouts
    window = t.drain_seconds + t.backup_seconds + t.migrate_seconds + t.verify_seconds + 2 * t.ready_seconds
    assert core.parse_time(back_by) > NOW + timedelta(seconds=window + t.rollback_seconds)


@pytest.mark.parametrize(
    ("failure", "retryable"),
    [
        (psycopg.errors.InsufficientPrivilege("permission denied for table t"), False),
        (psycopg.OperationalError("connection refused"), True),
        (kube.ApiError(403, "Forbidden"), False),
        (kube.ApiError(422, "Unprocessable Entity"), False),
        (kube.ApiError(409, "Conflict"), True),
        (kube.ApiError(503, "Unavailable"), True),
        (aiohttp.ClientConnectionError("Cannot connect to host"), True),
        (TimeoutError(), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (KeyError("x"), True),
    ],
)
def test_errors_are_classified_by_whether_retrying_can_help(failure: BaseException, retryable: bool) -> None:
    assert errors.retryable(failure) is retryable


def test_an_error_text_loses_the_login_and_counts_its_repeats() -> None:
    failure = psycopg.OperationalError('FATAL: password authentication failed for user "payments_token_xyz" s3cr3t')
    first = errors.describe(failure, reasons.ACTION_OBSERVE, "2026-01-01T00:00:00Z", secrets=["s3cr3t"])
    assert "s3cr3t" not in first.message and "payments_token_xyz" not in first.message
    again = errors.describe(failure, reasons.ACTION_OBSERVE, "2026-01-01T00:00:09Z", first)
    assert (again.count, again.since) == (2, "2026-01-01T00:00:00Z")
    other = errors.describe(failure, reasons.ACTION_SCALE, "2026-01-01T00:00:10Z", again)
    assert (other.count, other.since) == (1, "2026-01-01T00:00:10Z")


ROLLING = {"strategy": "Restore", "reason": "MigrationFailed", "databaseChanged": True}


def test_a_rollback_first_stops_the_migrate_job_still_running_after_its_timeout() -> None:
    decision = machine.decide(
        SPEC,
        status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=ROLLING, jobs={"validate": "v", "migrate": "m"}),
        Observations(
            now=NOW,
            deployment=DeploymentObservation(exists=True, replicas=0),
            jobs={"validate": JobObservation("Succeeded"), "migrate": JobObservation("Running")},
        ),
    )
    assert decision.phase == Phase.ROLLING_BACK
    assert decision.actions == [core.StopJob(Step.MIGRATE)]


def test_then_it_ends_the_sessions_of_the_earlier_steps_once_before_restoring() -> None:
    jobs = {"validate": "v", "backup": "b", "migrate": "m"}
    decision = machine.decide(
        SPEC,
        status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=ROLLING, jobs=jobs),
        Observations(now=NOW, deployment=DeploymentObservation(exists=True, replicas=0),
                     jobs={step: JobObservation("Failed") for step in jobs}),
    )
    assert decision.actions == [core.TerminateSessions(s) for s in (Step.BACKUP, Step.MIGRATE, Step.VALIDATE)]
    assert status_patch_document(decision.status)["rollback"]["sessionsEnded"] is True


def test_a_given_up_rollback_stops_its_own_restore_job_before_the_app_comes_back() -> None:
    given_up = {**ROLLING, "failed": True, "failure": "rollback took longer than 3600s", "sessionsEnded": True}
    decision = machine.decide(
        SPEC,
        status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=given_up, jobs={"migrate": "m", "restore": "r"}),
        Observations(now=NOW, deployment=DeploymentObservation(exists=True, replicas=0),
                     jobs={"migrate": JobObservation("Failed"), "restore": JobObservation("Running")}),
    )
    assert decision.actions == [core.StopJob(Step.RESTORE)]


def test_a_job_whose_image_cannot_be_pulled_fails_the_phase_after_a_minute_not_its_timeout() -> None:
    pulling = JobObservation(
        "Running",
        waiting_reason="ImagePullBackOff",
        waiting_message='Back-off pulling image "postgres:51"',
        waiting_container="backup",
        waiting_since=NOW - timedelta(seconds=61),
    )
    at = status(Phase.BACKING_UP, maintenance=DOWN, jobs={"backup": "b"})
    down = DeploymentObservation(exists=True, replicas=0)
    decision = machine.decide(SPEC, at, Observations(now=NOW, jobs={"backup": pulling}, deployment=down))
    assert decision.phase == Phase.ROLLING_BACK
    assert "postgres:51" in status_patch_document(decision.status)["rollback"]["error"]
    young = pulling.__class__(**{**pulling.__dict__, "waiting_since": NOW - timedelta(seconds=5)})
    assert machine.decide(SPEC, at, Observations(now=NOW, jobs={"backup": young}, deployment=down)).phase == (
        Phase.BACKING_UP
    )


def test_without_a_pending_list_the_expected_version_is_where_flyway_went() -> None:
    after = status(Phase.VERIFYING, before={"version": "1.14"}, flyway={"targetSchemaVersion": "1.27"})
    assert core.expected_version(SPEC, after) == "1.27"


BEFORE = {"version": "5", "lastInstalledRank": 5, "schemaHash": "abc", "rows": {"public.clients": 4},
          "checksums": {"public.clients": "x"}}


def _rolled_back_by_flyway(after: dict[str, Any]) -> Any:
    from migration_operator.models import Snapshot

    rolling = {**ROLLING, "sessionsEnded": True}
    return machine.decide(
        SPEC,
        status(Phase.ROLLING_BACK, maintenance=DOWN, rollback=rolling, before=BEFORE, jobs={"migrate": "m"}),
        Observations(now=NOW, deployment=DeploymentObservation(exists=True, replicas=0),
                     jobs={"migrate": JobObservation("Failed")}, snapshot=Snapshot.model_validate(after)),
    )


def test_a_database_flyway_already_rolled_back_is_not_restored() -> None:
    decision = _rolled_back_by_flyway(BEFORE)
    assert not decision.actions
    assert status_patch_document(decision.status)["rollback"]["databaseUnchanged"] is True
    assert "nothing to restore" in decision.message


@pytest.mark.parametrize(
    "change",
    [{"lastInstalledRank": 6}, {"schemaHash": "def"}, {"rows": {"public.clients": 5}},
     {"checksums": {"public.clients": "y"}}],
)
def test_any_difference_from_before_means_the_database_is_put_back(change: dict[str, Any]) -> None:
    decision = _rolled_back_by_flyway({**BEFORE, **change})
    assert status_patch_document(decision.status)["rollback"]["databaseUnchanged"] is False


def test_preflight_fails_with_the_app_untouched_when_a_restore_could_not_work() -> None:
    from migration_operator.observations import DatabaseCheck

    problem = "table public.audit is owned by auditor: parking_admin cannot drop and recreate it"
    decision = machine.decide(
        SPEC,
        status(Phase.PREFLIGHT),
        Observations(now=NOW, database=DatabaseCheck(reachable=True), restore_problems=(problem,)),
    )
    assert decision.phase == Phase.FAILED
    assert "public.audit" in decision.message and "not touched" in decision.message
    stalled = next(c for c in decision.conditions if c.type == reasons.STALLED)
    assert stalled.reason == reasons.RESTORE_NOT_POSSIBLE


def test_the_restore_scope_is_flyways_schemas_else_the_roles_default_schema() -> None:
    from migration_operator.models import Snapshot

    assert core.restore_scope(SPEC, Snapshot(default_schema="app")) == ["app"]
    assert core.restore_scope(SPEC, None) == ["public"]
    scoped = parse_spec(specs.parking(migrations={"configMap": {"name": "m"}, "schemas": ["billing", "Audit"]}))
    assert core.restore_scope(scoped, Snapshot(default_schema="app")) == ["billing", "Audit"]
