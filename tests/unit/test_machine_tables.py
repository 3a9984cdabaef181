"""The machine's tables cover every value of the enums they are keyed by: adding a Phase, a BackupMethod, a
RollbackStrategy or a Step without its entry fails here, not at run time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import specs

from migration_operator import machine, reasons
from migration_operator.machine import backup, core, rollback
from migration_operator.models import (
    BackupMethod,
    DatabaseMigrationStatus,
    Phase,
    RollbackStrategy,
    parse_spec,
    status_patch_document,
)
from migration_operator.observations import LockObservation, Observations
from migration_operator.reasons import Step

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_every_phase_has_an_entry() -> None:
    assert set(machine.PHASES) == set(Phase)


def test_every_backup_method_has_a_plan() -> None:
    assert set(backup.BACKUP_METHODS) == set(BackupMethod)


def test_every_rollback_strategy_has_a_plan_and_its_own_reason() -> None:
    assert set(rollback.ROLLBACK_STRATEGIES) == set(RollbackStrategy)
    succeeded = [plan.succeeded_reason for plan in rollback.ROLLBACK_STRATEGIES.values()]
    assert len(set(succeeded)) == len(succeeded)
    vocabulary = {value for name, value in vars(reasons).items() if name.isupper() and isinstance(value, str)}
    assert set(succeeded) <= vocabulary


def test_every_step_has_exactly_one_pod() -> None:
    assert set(machine.JOB_PODS) == set(Step)
    spec = parse_spec(
        specs.parking(rollback={"strategy": "Compensate", "compensate": {"sql": "select 1"}})
    )
    body = {"metadata": {"name": "v6", "namespace": "ns", "uid": "u-1"}}
    for step in Step:
        job = machine.build_job(body, spec, step)
        assert job["metadata"]["name"] == f"v6-{step}"


@pytest.mark.parametrize(
    ("left", "right"), [("6", "6.0"), ("2.1", "2.1.0"), ("1_5", "1.5"), ("10", "10.0.0")]
)
def test_trailing_zero_versions_are_the_same_version(left: str, right: str) -> None:
    assert core.same_version(left, right)
    assert core.version_key("6.1") > core.version_key("6.0")


def test_timestamps_are_set_once_by_the_machine() -> None:
    spec = parse_spec(specs.parking())
    fresh = DatabaseMigrationStatus()
    waiting = machine.decide(spec, fresh, Observations(now=NOW, lock=LockObservation(acquired=False)))
    assert waiting.status.phase_started_at == core.iso(NOW)
    assert waiting.status.started_at is None  # still waiting for the database's Lease
    started = machine.decide(
        spec,
        DatabaseMigrationStatus(phase=Phase.PENDING, phaseStartedAt=core.iso(NOW - timedelta(seconds=9))),
        Observations(now=NOW, lock=LockObservation(acquired=True)),
    )
    assert started.phase == Phase.PREFLIGHT
    assert started.status.started_at == started.status.phase_started_at == core.iso(NOW)
    again = DatabaseMigrationStatus(phase=Phase.PENDING, phaseStartedAt="2026-01-01T00:00:00Z")
    staying = machine.decide(spec, again, Observations(now=NOW, lock=LockObservation(acquired=False)))
    assert "phaseStartedAt" not in status_patch_document(staying.status)


def test_a_status_patch_writes_only_what_was_set_and_clears_with_none() -> None:
    patch = core.Decision(phase=Phase.PENDING, message="").record(message="m", last_error=None).status
    assert status_patch_document(patch) == {"message": "m", "lastError": None}
