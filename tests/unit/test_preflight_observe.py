"""What preflight observes in each pass (the only I/O of the phase), with the I/O faked: the first pass creates the
validate Job before the expensive reads (the "before" snapshot, the Restore check), which decide nothing until
flyway validate has run; every later pass takes them, so the run's "before" snapshot is the last one's."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import specs

from migration_operator.database import Credentials
from migration_operator.machine import context, preflight
from migration_operator.machine.context import Context
from migration_operator.models import DatabaseMigrationStatus, Phase, Snapshot, parse_spec
from migration_operator.observations import ABSENT, DatabaseCheck, JobObservation, Observations
from migration_operator.reasons import Step

SPEC = parse_spec(specs.parking())  # Dump + Restore: the Restore check applies
BODY = {"metadata": {"name": "run", "namespace": "ns", "uid": "uid-1"}}


class FakeIO:
    def __init__(self, validate: JobObservation) -> None:
        self.validate = validate
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def missing(ctx: Context) -> list[tuple[str, str]]:
            return []

        async def secret_values(ctx: Context) -> dict[str, str]:
            return {"username": "u", "password": "p"}

        async def ca_certificate(ctx: Context) -> None:
            return None

        async def check(spec: Any, login: Credentials) -> DatabaseCheck:
            self.calls.append("check")
            return DatabaseCheck(reachable=True)

        async def take_snapshot(spec: Any, login: Credentials, uid: str) -> Snapshot:
            self.calls.append("snapshot")
            return Snapshot(version="5", tables=4)

        async def restore_problems(spec: Any, login: Credentials, scope: list[str]) -> list[str]:
            self.calls.append("restore check")
            return []

        async def job(ctx: Context, step: Step, **_: Any) -> dict[str, JobObservation]:
            self.calls.append(f"job {step}")
            return {step: self.validate}

        async def local_migrations(ctx: Context) -> tuple[()]:
            return ()

        monkeypatch.setattr(preflight, "_missing", missing)
        monkeypatch.setattr(preflight, "_local_migrations", local_migrations)
        monkeypatch.setattr(context, "secret_values", secret_values)
        monkeypatch.setattr(context, "ca_certificate", ca_certificate)
        monkeypatch.setattr(context, "job", job)
        monkeypatch.setattr(preflight.database, "check", check)
        monkeypatch.setattr(preflight.database, "take_snapshot", take_snapshot)
        monkeypatch.setattr(preflight.database, "restore_problems", restore_problems)


def ctx() -> Context:
    status = DatabaseMigrationStatus(phase=Phase.PREFLIGHT.value)
    return Context(body=BODY, spec=SPEC, status=status, logger=logging.getLogger("test"))


async def test_the_first_pass_creates_the_validate_job_before_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    io = FakeIO(ABSENT)
    io.install(monkeypatch)
    fields = await preflight.observe(ctx())
    assert io.calls == ["check", "job validate"]
    decision = preflight.decide(SPEC, ctx().status, Observations(**fields), ctx().run)
    assert [type(a).__name__ for a in decision.actions] == ["CreateJob"]


@pytest.mark.parametrize("validate", [JobObservation("Running"), JobObservation("Succeeded", output="")])
async def test_later_passes_take_the_snapshot_and_the_restore_check(
    monkeypatch: pytest.MonkeyPatch, validate: JobObservation
) -> None:
    io = FakeIO(validate)
    io.install(monkeypatch)
    fields = await preflight.observe(ctx())
    assert io.calls == ["check", "job validate", "snapshot", "restore check"]
    assert fields["snapshot"] == Snapshot(version="5", tables=4) and fields["restore_problems"] == ()
