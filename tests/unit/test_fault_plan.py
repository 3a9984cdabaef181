"""The fault suite's plan and its matrix over several sessions (tests/faults/matrix.py): pure logic, no cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from tests.faults import matrix
from tests.support import postgres
from tests.support.wait import WaitTimeout


@pytest.fixture(autouse=True)
def _plan_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAULT_SMOKE", "FAULT_KINDS", "FAULT_PHASES", "FAULT_TRIALS", "FAULT_TOP_UP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAULT_SEED", "4242")
    monkeypatch.setattr(matrix, "RESULTS", [])


def test_trials_run_in_rounds_so_a_stopped_session_leaves_the_cells_even(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULT_TRIALS", "3")
    plan = matrix.plan()
    cells = matrix.cells()
    assert len(plan) == 3 * len(cells)
    for stop in range(len(plan) + 1):  # wherever the session is stopped, the cells differ by at most one trial
        done: dict[str, int] = {}
        for trial in plan[:stop]:
            done[trial.cell.key] = done.get(trial.cell.key, 0) + 1
        counts = [done.get(cell.key, 0) for cell in cells]
        assert max(counts) - min(counts) <= 1, stop
    assert len({t.id for t in plan}) == len(plan)  # every trial its own pytest id and its own draws


def test_a_top_up_runs_only_what_the_sittings_lack_the_least_tried_cells_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULT_TRIALS", "3")
    monkeypatch.setenv("FAULT_TOP_UP", "1")
    monkeypatch.setattr(matrix, "RESULTS_DIR", tmp_path)
    cells = matrix.cells()
    full, one, none = cells[0], cells[1], cells[2]

    def row(cell: matrix.Cell, n: int) -> str:
        return json.dumps({"trial": f"{cell.fault}-{n}", "cell": cell.key, "fault": cell.fault,
                           "intended_phase": cell.phase, "scenario": cell.scenario, "passed": True})

    (tmp_path / "trials-old-seed1.jsonl").write_text("\n".join([row(full, n) for n in (1, 2, 3)] + [row(one, 1)]))
    (tmp_path / f"trials-{matrix._SESSION}-seed9.jsonl").write_text(row(none, 1))  # this session's own: not counted
    (tmp_path / "faults-old.json").write_text("not read")  # a session's summary repeats its .jsonl: not counted
    plan = matrix.plan()
    keys = [t.cell.key for t in plan]
    assert full.key not in keys
    assert keys.count(one.key) == 2 and keys.count(none.key) == 3
    assert len(plan) == 3 * len(cells) - 4
    assert [t.number for t in plan if t.cell == one] == [2, 3]  # numbered on from the sittings' trials
    first_round = plan[:len(cells) - 2]  # every cell without a trial gets its first before `one` gets its second
    assert one.key not in {t.cell.key for t in first_round} and len({t.cell.key for t in first_round}) == len(cells) - 2
    assert len({t.id for t in plan}) == len(plan)


def test_kinds_and_phases_narrow_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULT_KINDS", "postgres-kill")
    monkeypatch.setenv("FAULT_PHASES", "RollingBack")
    plan = matrix.plan()
    assert {t.cell.scenario for t in plan} == {"Restore", "Repair", "Compensate"}
    assert {(t.cell.fault, t.cell.phase) for t in plan} == {("postgres-kill", "RollingBack")}


def test_the_smoke_slice_takes_one_cell_per_fault_kind_and_the_seed_replays_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULT_SMOKE", "1")
    first = [t.id for t in matrix.plan()]
    assert [t.split("-", 2)[0] for t in first] == [f.split("-")[0] for f in matrix.FAULTS]
    assert [t.id for t in matrix.plan()] == first


def test_a_matrix_over_sessions_counts_each_cell_and_names_the_commits(tmp_path: Path) -> None:
    old = {"trial": "operator-kill-Migrating-1", "cell": "Migrating x operator-kill", "fault": "operator-kill",
           "intended_phase": "Migrating", "scenario": "good", "passed": True, "recover_seconds": 4.0,
           "landed_phase": "Migrating"}  # a file written before trials carried their commit
    new = dict(old, trial="operator-kill-Migrating-2", recover_seconds=9.5, revision="abc1234")
    failed = dict(old, trial="operator-kill-Migrating-3", passed=False, failures=["the app stayed at 0"],
                  revision="abc1234")
    (tmp_path / "a.jsonl").write_text(json.dumps(old) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(new) + "\n" + json.dumps(failed) + "\n")
    matrix.RESULTS.extend(matrix.load([tmp_path / "a.jsonl", tmp_path / "b.jsonl"]))
    text = matrix.render("over sessions")
    row = next(line for line in text.splitlines() if line.startswith("Migrating x operator-kill"))
    assert row.split()[3:6] == ["3", "2", "9.5"]
    assert "from not recorded (1 trials), abc1234 (2 trials)" in text
    assert "FAILED operator-kill-Migrating-3" in text and "the app stayed at 0" in text


def test_a_recorded_trial_carries_the_commit_it_ran_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(matrix, "revision", lambda: "feedbee")
    matrix.record(matrix.Result(trial="t-1", cell="c", fault="operator-kill", intended_phase="Migrating",
                                scenario="good"))
    (written,) = tmp_path.glob("trials-*.jsonl")
    assert json.loads(written.read_text())["revision"] == "feedbee"


def test_no_trial_starts_once_the_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAULT_BUDGET_MINUTES", raising=False)
    monkeypatch.setattr(matrix, "_STARTED", time.monotonic() - 3600)
    assert matrix.budget_left()  # no budget: no limit
    monkeypatch.setenv("FAULT_BUDGET_MINUTES", "90")
    assert matrix.budget_left()
    monkeypatch.setenv("FAULT_BUDGET_MINUTES", "59.5")
    assert not matrix.budget_left()


def test_the_matrix_over_sittings_says_how_many_trials_are_still_to_run() -> None:
    cells = matrix.cells()
    first, second = cells[0], cells[1]

    def trial(cell: matrix.Cell, n: int) -> matrix.Result:
        return matrix.Result(trial=f"{cell.key}-{n}", cell=cell.key, fault=cell.fault, intended_phase=cell.phase,
                             scenario=cell.scenario, passed=True, run_seconds=36.0)

    results = [trial(first, n) for n in range(3)] + [trial(second, 0)]
    line = matrix.to_go(results, 3)
    to_run = 3 * len(cells) - 4
    assert f"{to_run} trials in {len(cells) - 1} of {len(cells)} cells" in line, line
    assert f"{to_run * 36 / 3600:.1f} h" in line, line
    everything = [trial(cell, n) for cell in cells for n in range(2)]
    assert matrix.to_go(everything, 2) == f"every one of the {len(cells)} cells has 2 trials or more"


# ---------------------------------------------------------------------------------------------- reads after a run
class _Reads:
    """A read that fails with `errors` first, then returns "rows"; a server that answers or not; a wait that
    records its grace."""

    def __init__(self, errors: list[Exception], answering: bool, wait_error: Exception | None = None) -> None:
        self.errors, self.answering, self.wait_error = errors, answering, wait_error
        self.reads, self.waits = 0, list[float]()

    def read(self) -> str:
        self.reads += 1
        if self.errors:
            raise self.errors.pop(0)
        return "rows"

    def answers(self) -> bool:
        return self.answering

    def wait(self, grace: float) -> float:
        self.waits.append(grace)
        if self.wait_error:
            raise self.wait_error
        return 41.6


REFUSED = psycopg.OperationalError('connection failed: connection to server at "10.96.0.9", port 5432 failed: '
                                   "Connection refused\n\tIs the server running on that host?")


def test_a_read_that_works_does_not_wait() -> None:
    reads = _Reads([], answering=True)
    assert postgres.read_through_outage(reads.read, 180, reads.answers, reads.wait) == ("rows", None)
    assert reads.waits == []


def test_a_refusal_while_the_server_is_down_is_waited_out_and_said() -> None:
    reads = _Reads([REFUSED], answering=False)
    value, said = postgres.read_through_outage(reads.read, 180, reads.answers, reads.wait)
    assert value == "rows" and reads.reads == 2 and reads.waits == [180]
    assert said is not None and "Connection refused" in said and "waited 42 s" in said and "\n" not in said


def test_the_reads_own_error_is_raised_when_the_server_answers() -> None:
    missing = psycopg.OperationalError('database "flt_gone" does not exist')
    reads = _Reads([missing], answering=True)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        postgres.read_through_outage(reads.read, 180, reads.answers, reads.wait)
    assert reads.waits == [] and reads.reads == 1


def test_an_outage_longer_than_the_grace_is_raised() -> None:
    reads = _Reads([REFUSED], answering=False, wait_error=WaitTimeout("timed out after 180s waiting for it"))
    with pytest.raises(WaitTimeout):
        postgres.read_through_outage(reads.read, 180, reads.answers, reads.wait)
    assert reads.reads == 1


def test_other_errors_are_not_taken_for_an_outage() -> None:
    reads = _Reads([psycopg.errors.UndefinedTable("relation tickets does not exist")], answering=False)
    with pytest.raises(psycopg.errors.UndefinedTable):
        postgres.read_through_outage(reads.read, 180, reads.answers, reads.wait)
    assert reads.waits == []
