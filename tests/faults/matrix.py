"""What the fault suite runs and what it reports.

A cell is (fault, phase, strategy); a trial is one run of a cell. The plan:
- `make test-faults`: every cell, FAULT_TRIALS times each (default 1), in rounds: every cell once, then every cell
  again, so a session stopped half-way leaves every cell with the same number of trials, give or take one, and
  FAULT_BUDGET_MINUTES stops starting trials once the session is that old (the matrix is still printed and written);
  FAULT_KINDS / FAULT_PHASES (comma lists) narrow it; FAULT_TOP_UP=1 runs only what the sittings already in
  FAULT_RESULTS_DIR lack to FAULT_TRIALS per cell, the least-tried cells first; every trial's run pre-starts its
  backup and migrate Jobs (maintenance.prestartMigration, the operator's default; its cells say "+prestart"),
  FAULT_PRESTART=0 none does;
- the smoke slice (FAULT_SMOKE=1, in `make test`): one trial per fault kind, in a cell drawn at random.
FAULT_SEED fixes the draws (which cell the smoke slice takes, the delay inside the phase); unset, one is drawn and
printed in the header and in the results, so a failing session can be replayed.

The matrix printed at the end (and written as JSON under fault-results/, each trial with the commit it ran from,
so `python -m tests.faults.matrix` can add up several sessions of one operator): per cell, trials, passed, the worst
time to recover (from the moment the machine was whole again to the run's terminal phase), the phases the faults really
landed in (a short phase on the sample database is often over before the fault lands: the trial then says so instead
of pretending), and how many trials' deployment logs named the fault.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FAULTS = ("operator-kill", "apiserver-restart", "postgres-kill", "kubelet-restart", "backup-volume-full",
          "database-unreachable", "app-scaled-up")

# The run's phases in the order a run with maintenance and a Dump backup (timing AfterDrain, the default) takes them.
GOOD_PHASES = ("Preflight", "EnteringMaintenance", "BackingUp", "Migrating", "Verifying", "ExitingMaintenance")
ORDER = ("Pending", "AwaitingApproval", *GOOD_PHASES, "RollingBack", "Succeeded", "RolledBack", "Failed")
TERMINAL = frozenset({"Succeeded", "RolledBack", "Failed"})
# How long the suite's own PostgreSQL may not answer (between two trials, or in a trial's reads after its run) before
# the sitting stops or the trial breaks: an API server restart can take its Service's endpoint away for a minute
# after the run (README "Fault injection").
DATABASE_GRACE_SECONDS = 180.0
# faults the smoke slice runs alone, after the others (test_smoke_slice says why)
RUN_ALONE = frozenset({"apiserver-restart", "postgres-kill", "database-unreachable"})
# where a Job's pod runs (the kubelet fault needs one): validate, backup, migrate, restore/repair/compensate
JOB_PHASES = frozenset({"Preflight", "BackingUp", "Migrating", "RollingBack"})


@dataclass(frozen=True)
class Scenario:
    """A migration and the rollback strategy it runs under; `strategy` names the matrix's RollingBack rows."""

    name: str
    variants: tuple[str, ...]
    rollback: dict[str, Any]
    ends: str  # the terminal phase without a fault
    phases: tuple[str, ...]


COMPENSATE_SQL = """
    alter table parking_spots drop column zone_id;
    drop table parking_zones;
    delete from flyway_schema_history where version = '6';
"""

SCENARIOS = {
    "good": Scenario("good", ("good",), {"strategy": "Restore"}, "Succeeded", GOOD_PHASES),
    "Restore": Scenario("Restore", ("good", "fail-in-tx"), {"strategy": "Restore"}, "RolledBack", ("RollingBack",)),
    "Repair": Scenario("Repair", ("good", "fail-no-tx"), {"strategy": "Repair"}, "RolledBack", ("RollingBack",)),
    "Compensate": Scenario("Compensate", ("good", "fail-in-tx"),
                           {"strategy": "Compensate", "compensate": {"sql": COMPENSATE_SQL}}, "RolledBack",
                           ("RollingBack",)),
}


def applies(fault: str, phase: str) -> bool:
    if fault == "postgres-kill":
        return phase in ("BackingUp", "Migrating", "RollingBack")
    if fault == "kubelet-restart":
        return phase in JOB_PHASES
    if fault == "backup-volume-full":
        return phase == "BackingUp"
    return True


@dataclass(frozen=True)
class Cell:
    fault: str
    phase: str
    scenario: str
    # the run pre-starts its backup and migrate Jobs (maintenance.prestartMigration; FAULT_PRESTART=0: it does not)
    prestart: bool = False

    @property
    def key(self) -> str:
        where = self.phase if self.scenario == "good" else f"{self.phase}[{self.scenario}]"
        return f"{where}{'+prestart' if self.prestart else ''} x {self.fault}"


@dataclass(frozen=True)
class Trial:
    cell: Cell
    number: int
    seed: int

    @property
    def id(self) -> str:
        scenario = "" if self.cell.scenario == "good" else f"-{self.cell.scenario}"
        prestarted = "-prestart" if self.cell.prestart else ""
        return f"{self.cell.fault}-{self.cell.phase}{scenario}{prestarted}-{self.number}"

    def rng(self) -> random.Random:
        return random.Random(f"{self.seed}/{self.id}")


def prestart() -> bool:
    """FAULT_PRESTART: 1 (the default, like the operator's) every trial's run pre-starts its backup and migrate Jobs
    (maintenance.prestartMigration); 0: none does."""
    return os.environ.get("FAULT_PRESTART", "1") != "0"


def cells() -> list[Cell]:
    found = []
    for fault in FAULTS:
        for scenario in SCENARIOS.values():
            for phase in scenario.phases:
                if applies(fault, phase):
                    found.append(Cell(fault, phase, scenario.name, prestart()))
    return found


def seed() -> int:
    if "FAULT_SEED" not in os.environ:
        os.environ["FAULT_SEED"] = str(random.SystemRandom().randrange(1, 1_000_000))
    return int(os.environ["FAULT_SEED"])


def smoke() -> bool:
    return os.environ.get("FAULT_SMOKE") == "1"


_STARTED = time.monotonic()


def budget_left() -> bool:
    """FAULT_BUDGET_MINUTES: a trial starts only while the session is younger than that; unset, no limit. A
    FAULT_TRIALS=20 matrix is hours on one machine: several sittings of a budget each, added up by `__main__`."""
    text = os.environ.get("FAULT_BUDGET_MINUTES", "").strip()
    return not text or time.monotonic() - _STARTED < float(text) * 60


def trials_per_cell() -> int:
    return max(1, int(os.environ.get("FAULT_TRIALS", "1")))


def plan() -> list[Trial]:
    chosen = seed()
    every = cells()
    if smoke():
        rng = random.Random(chosen)
        picked = []
        for fault in FAULTS:  # a phase drawn first, then a strategy: RollingBack is one phase, not three
            candidates = [c for c in every if c.fault == fault]
            phase = rng.choice(sorted({c.phase for c in candidates}))
            picked.append(rng.choice([c for c in candidates if c.phase == phase]))
        return [Trial(cell, 1, chosen) for cell in picked]
    only = {f.strip() for f in os.environ.get("FAULT_KINDS", "").split(",") if f.strip()}
    phases = {p.strip() for p in os.environ.get("FAULT_PHASES", "").split(",") if p.strip()}
    chosen_cells = [cell for cell in every if (not only or cell.fault in only) and (not phases or cell.phase in phases)]
    if not top_up():
        return [Trial(cell, n, chosen) for n in range(1, trials_per_cell() + 1) for cell in chosen_cells]
    # FAULT_TOP_UP=1: only the trials FAULT_RESULTS_DIR's sittings lack, in levels (the cells with the fewest trials
    # first, then every cell one up), so a sitting stopped half-way leaves the matrix as even as it can be
    done = already_run()
    wanted = [(done.get(cell.key, 0) + n, i, Trial(cell, done.get(cell.key, 0) + n, chosen))
              for i, cell in enumerate(chosen_cells) for n in range(1, trials_per_cell() - done.get(cell.key, 0) + 1)]
    return [trial for _, _, trial in sorted(wanted, key=lambda w: (w[0], w[1]))]


def top_up() -> bool:
    return os.environ.get("FAULT_TOP_UP") == "1"


def already_run() -> dict[str, int]:
    """Trials per cell in FAULT_RESULTS_DIR's sittings (trials-*.jsonl), this session's own file left out."""
    mine = f"trials-{_SESSION}-"
    files = [path for path in sorted(RESULTS_DIR.glob("trials-*.jsonl")) if not path.name.startswith(mine)]
    done: dict[str, int] = {}
    for result in load(files):
        done[result.cell] = done.get(result.cell, 0) + 1
    return done


def header() -> str:
    kind = "smoke slice (one trial per fault kind)" if smoke() else f"{trials_per_cell()} trial(s) per cell"
    prestarted = "; runs pre-start their backup and migrate Jobs (FAULT_PRESTART=0: not)" if prestart() else ""
    return f"fault suite: FAULT_SEED={seed()} - {kind}{prestarted}"


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Database:
    """The suite's own PostgreSQL (tests/faults/conftest.py)."""

    namespace: str
    statefulset: str
    host: str
    port: int

    @property
    def pod(self) -> str:
        return f"{self.statefulset}-0"


@dataclass
class Result:
    trial: str
    cell: str
    fault: str
    intended_phase: str
    scenario: str
    landed_phase: str | None = None
    terminal_phase: str | None = None
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    fault_named: bool | None = None  # None: the fault landed where the operator could not see it
    recover_seconds: float | None = None
    run_seconds: float | None = None
    fault_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    status_log: list[str] = field(default_factory=list)
    revision: str | None = None  # the checkout's commit ("-dirty": with uncommitted changes); None in older files


RESULTS: list[Result] = []
RESULTS_DIR = Path(os.environ.get("FAULT_RESULTS_DIR") or Path(__file__).resolve().parents[2] / "fault-results")
_SESSION = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


@functools.cache
def revision() -> str:
    """The commit the session runs from, "-dirty" when the operator's or the tests' files differ from it: the
    operator image is built from the checkout, so this names the operator the trials measured."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "operator", "tests", "charts"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def record(result: Result) -> None:
    """Keeps the trial for the matrix, and appends it to this session's JSON-lines file at once (a session stopped
    half-way still leaves its trials)."""
    if result.revision is None:
        result.revision = revision()
    RESULTS.append(result)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with (RESULTS_DIR / f"trials-{_SESSION}-seed{seed()}.jsonl").open("a") as out:
        out.write(json.dumps(asdict(result)) + "\n")


def _summary() -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in RESULTS:
        row = rows.setdefault(r.cell, {"cell": r.cell, "trials": 0, "passed": 0, "worst_recover_s": None,
                                        "landed": {}, "named": 0, "nameable": 0})
        row["trials"] += 1
        row["passed"] += int(r.passed)
        if r.recover_seconds is not None:
            worst = row["worst_recover_s"]
            row["worst_recover_s"] = round(max(worst or 0.0, r.recover_seconds), 1)
        landed = r.landed_phase or "-"
        row["landed"][landed] = row["landed"].get(landed, 0) + 1
        if r.fault_named is not None:
            row["nameable"] += 1
            row["named"] += int(r.fault_named)
    return list(rows.values())


def render(heading: str | None = None) -> str:
    title = f"{'phase x fault':<46} {'trials':>6} {'passed':>6} {'worst recover':>13}  {'log names it':>12}"
    lines = [heading or f"FAULT_SEED={seed()}", title + "  landed in"]
    for row in _summary():
        worst = "-" if row["worst_recover_s"] is None else f"{row['worst_recover_s']:.1f} s"
        named = f"{row['named']}/{row['nameable']}" if row["nameable"] else "-"
        landed = ", ".join(f"{k} {v}" for k, v in sorted(row["landed"].items()))
        lines.append(f"{row['cell']:<46} {row['trials']:>6} {row['passed']:>6} {worst:>13}  {named:>12}  {landed}")
    revisions: dict[str, int] = {}
    for r in RESULTS:
        revisions[r.revision or "not recorded"] = revisions.get(r.revision or "not recorded", 0) + 1
    lines.append("from " + ", ".join(f"{name} ({count} trials)" for name, count in revisions.items()))
    failed = [r for r in RESULTS if not r.passed]
    for r in failed:
        lines.append(f"FAILED {r.trial} (landed {r.landed_phase}, ended {r.terminal_phase}): " + "; ".join(r.failures))
    return "\n".join(lines)


def load(paths: list[Path]) -> list[Result]:
    """Trials from results files: a session's .json or its .jsonl."""
    found = []
    for path in paths:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())["trials"]
        found += [Result(**row) for row in rows]
    return found


def write_json(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"faults-{stamp}-seed{seed()}.json"
    path.write_text(json.dumps({"seed": seed(), "smoke": smoke(), "trials_per_cell": trials_per_cell(),
                                "matrix": _summary(), "trials": [asdict(r) for r in RESULTS]}, indent=2))
    return path


def to_go(results: list[Result], trials: int) -> str:
    """How far the trials are from `trials` per cell of today's plan (FAULT_PRESTART as set): the cells short of it
    and the trials still to run, with the time they would take at these trials' mean pace (run and set-up)."""
    done: dict[str, int] = {}
    for r in results:
        done[r.cell] = done.get(r.cell, 0) + 1
    short = {cell.key: trials - done.get(cell.key, 0) for cell in cells() if done.get(cell.key, 0) < trials}
    missing = sum(short.values())
    if not missing:
        return f"every one of the {len(cells())} cells has {trials} trials or more"
    line = f"to reach {trials} per cell: {missing} trials in {len(short)} of {len(cells())} cells"
    runs = [r.run_seconds for r in results if r.run_seconds is not None]
    if runs:
        mean = sum(runs) / len(runs)
        line += f" (the runs alone, at these trials' mean {mean:.0f} s: {missing * mean / 3600:.1f} h)"
    return line


if __name__ == "__main__":  # python -m tests.faults.matrix [--trials N] files...: one matrix over sessions
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.faults.matrix")
    parser.add_argument("--trials", type=int, default=20, help="the trials per cell the matrix is heading for")
    parser.add_argument("files", nargs="+", type=Path, help="fault-results/*.json and trials-*.jsonl files")
    args = parser.parse_args()
    RESULTS.extend(load(args.files))
    print(render(f"{len(RESULTS)} trials from {len(args.files)} file(s)"))
    print(to_go(RESULTS, args.trials))
