"""A run found in flight by a process's first pass (operator restart, crash, leader change) gets a line in its own
deployment log, under the phase it was found in; a fresh run, a later pass or a finished run gets none."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from migration_operator import errors, handlers, reconcile
from migration_operator.machine.context import Context
from migration_operator.machine.core import Decision
from migration_operator.models import Phase, parse_spec, parse_status
from migration_operator.observations import Observations
from tests.unit import specs


def _ctx(status: dict[str, Any]) -> Context:
    body = {"metadata": {"name": "m", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": specs.parking(), "status": status}
    return Context(body=body, spec=parse_spec(body["spec"]), status=parse_status(status),
                   logger=logging.getLogger("test"))


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED])
def test_no_note_for_a_run_nobody_was_working_on(phase: Phase) -> None:
    assert reconcile.resume_note(phase) is None


def test_the_note_names_this_operator_and_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "migration-operator-7c9-abcde")
    note = reconcile.resume_note(Phase.MIGRATING)
    assert note is not None
    assert "migration-operator-7c9-abcde" in note and "Migrating" in note


def test_the_first_pass_logs_the_resume_before_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "op-2")
    ctx = _ctx({"phase": "BackingUp", "log": [{"time": "t0", "phase": "BackingUp", "message": "backup: started"}]})
    decision = Decision(phase=Phase.MIGRATING, message="migrating", log="backup verified")
    note = reconcile.resume_note(ctx.phase)
    assert note is not None
    status = reconcile.new_status(ctx, decision, {}, Observations(), "t1", notes=(note,))
    log = status["log"]
    assert [entry["message"] for entry in log[:1]] == ["backup: started"]
    assert log[1]["phase"] == "BackingUp" and "op-2 picked this run up in BackingUp" in log[1]["message"]
    assert log[2] == {"time": "t1", "phase": "Migrating", "message": "backup verified"}


def test_a_later_pass_logs_only_its_decision() -> None:
    ctx = _ctx({"phase": "Migrating"})
    status = reconcile.new_status(ctx, Decision(phase=Phase.MIGRATING, message="still migrating"), {},
                                  Observations(), "t1")
    assert "log" not in status


def test_an_outage_the_passes_got_through_is_logged_with_its_length_and_cause() -> None:
    error = ConnectionRefusedError(111, "Connection refused")
    note = reconcile.outage_note(12.7, 4, handlers.first_error_line(error))
    assert note.startswith("the operator's passes failed for 12s (4 in a row, first: ConnectionRefusedError:")
    ctx = _ctx({"phase": "Migrating"})
    status = reconcile.new_status(ctx, Decision(phase=Phase.MIGRATING, message="m"), {}, Observations(), "t2",
                                  notes=(note,))
    assert status["log"] == [{"time": "t2", "phase": "Migrating", "message": note}]


def test_the_outage_cause_is_scrubbed_of_the_runs_secrets() -> None:
    errors.remember(["s3cret-Passw0rd"])  # what reconcile_once remembers for the daemon's task
    line = handlers.first_error_line(RuntimeError("connect failed for s3cret-Passw0rd\nsecond line"))
    assert "s3cret" not in line and line.startswith("RuntimeError: connect failed") and "second" not in line
