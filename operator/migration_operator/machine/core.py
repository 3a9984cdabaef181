"""The shared vocabulary of the phase machine: the run it works for, the `Decision` it returns, the actions a
decision asks for, the builders every phase uses (enter the next phase, stay, fail, stop stalled), and the phase
order. Pure: nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import flyway, reasons
from ..models import (
    BackupMethod,
    BackupTiming,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    PendingMigration,
    Phase,
    RollbackStatus,
    Snapshot,
)
from ..observations import ConditionChange, DeploymentObservation, Observations
from ..reasons import Step

if TYPE_CHECKING:  # jobs.py does I/O (reading Jobs); the machine's pure core needs only its PodParts type
    from ..jobs import PodParts

# Fallback re-check intervals (seconds). Watches on Jobs and the Deployment usually wake us earlier.
POLL_JOB = 10.0
POLL_DRAIN = 3.0
# Why a pod's container cannot be pulled or created (its `state.waiting` reason): the stuck-Job guard's reasons
# (guards.CANNOT_START) but a crash loop and no node, and those that keep the app serving while a pre-started pod
# has one (maintenance.HOLDS_THE_SCALE_DOWN).
IMAGE_OR_CONTAINER_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
POLL_LOCK = 15.0
POLL_RETRY = 10.0
# Jobs have activeDeadlineSeconds; the phase deadline catches everything else (and a lost Job) with this slack.
DEADLINE_SLACK = 30
# Beyond a phase's timeout + slack: the hard deadline that holds whatever happens (machine/guards.py).
HARD_MARGIN = 30


# -------------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Run:
    """Which DatabaseMigration the machine decides for: what names its Jobs, clones and records."""

    name: str = ""
    uid: str = ""


class Situation(NamedTuple):
    """Everything a plan (backup method, rollback strategy) decides from: `spec, status, obs, run = at`."""

    spec: DatabaseMigrationSpec
    status: DatabaseMigrationStatus
    obs: Observations
    run: Run


# What pod a step runs, for a spec and a run.
PodBuilder = Callable[[DatabaseMigrationSpec, Run], "PodParts"]


# -------------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class CreateJob:
    step: Step
    # Extra environment of the step's container, decided from what was observed (e.g. the schemas to restore).
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ScaleDeployment:
    replicas: int
    # Written to the Deployment's annotation before scaling to 0, so a restart never forgets it.
    record_original: int | None = None


@dataclass(frozen=True)
class ClearMaintenanceRecord:
    """Remove the original-replicas annotations once the app is back."""


@dataclass(frozen=True)
class CloneDatabase:
    clone_name: str


@dataclass(frozen=True)
class SwapCloneBack:
    clone_name: str
    failed_name: str


@dataclass(frozen=True)
class ReleaseLock:
    pass


@dataclass(frozen=True)
class StopJob:
    """Delete the step's Job in the foreground and terminate its database sessions (stopping.py)."""

    step: Step


@dataclass(frozen=True)
class TerminateSessions:
    """Terminate the step's database sessions (a statement outlives its killed client in PostgreSQL)."""

    step: Step


@dataclass(frozen=True)
class AdoptJob:
    """Make the Job of `job` the Job of `step` (status.jobs[step] names it): the pre-started migrate Job becomes the
    migrate step. Recorded in one pass, its go given in the next: a restart in between never starts a second migrate
    Job beside one that may be migrating already."""

    step: Step
    job: Step


@dataclass(frozen=True)
class GiveGo:
    """Hold the go of the pre-started Job adopted as `step` (gosignal.give): asked on every pass while it runs; a
    pass that does not ask for it withdraws it."""

    step: Step


Action = (
    CreateJob
    | AdoptJob
    | GiveGo
    | ScaleDeployment
    | ClearMaintenanceRecord
    | CloneDatabase
    | SwapCloneBack
    | ReleaseLock
    | StopJob
    | TerminateSessions
)


@dataclass
class Decision:
    phase: Phase
    message: str
    actions: list[Action] = field(default_factory=list)
    conditions: list[ConditionChange] = field(default_factory=list)
    # The status fields this decision sets (whole values); the writer serialises it once, with the rest.
    status: DatabaseMigrationStatus = field(default_factory=DatabaseMigrationStatus)
    # A line for status.log and the event of this step (None: nothing worth logging).
    log: str | None = None
    warning: bool = False
    requeue_after: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)

    def record(self, **fields: Any) -> Decision:
        """Set status fields (typed values) on this decision."""
        for key, value in fields.items():
            setattr(self.status, key, value)
        return self


Decide = Callable[[DatabaseMigrationSpec, DatabaseMigrationStatus, Observations, Run], Decision]


# ----------------------------------------------------------------------------------------------- helpers
def version_key(version: str | None) -> tuple[int, ...]:
    """Flyway's version order: numeric parts compared as numbers, trailing zeros ignored ("6.0" == "6")."""
    if not version:
        return ()
    parts = [int(part) for part in re.split(r"[._]", version) if part.isdigit()]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def same_version(left: str | None, right: str | None) -> bool:
    return version_key(left) == version_key(right)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def elapsed(status: DatabaseMigrationStatus, now: datetime) -> float:
    started = parse_time(status.phase_started_at)
    return (now - started).total_seconds() if started else 0.0


def timed_out(status: DatabaseMigrationStatus, obs: Observations, seconds: int) -> bool:
    return elapsed(status, obs.now) > seconds + DEADLINE_SLACK


def first_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def clone_names(spec: DatabaseMigrationSpec, uid: str) -> tuple[str, str]:
    """(`<db>_pre_<id>`, `<db>_failed_<id>`) within PostgreSQL's 63-byte identifier limit."""
    short_id = re.sub(r"[^a-z0-9]", "", uid.lower())[:8] or "run"
    base = spec.database.name[: 63 - len("_failed_") - len(short_id)]
    return f"{base}_pre_{short_id}", f"{base}_failed_{short_id}"


def restore_scope(spec: DatabaseMigrationSpec, before: Snapshot | None) -> list[str]:
    """The schemas a run may touch, so the ones its backup holds and a Restore puts back: Flyway's `schemas`, else
    the role's default schema (where Flyway works without `schemas`). Other schemas (other apps', extensions')
    are never dumped nor restored."""
    if spec.migrations.schemas:
        return list(spec.migrations.schemas)
    return [before.default_schema if before and before.default_schema else "public"]


def maintenance_touched(status: DatabaseMigrationStatus) -> bool:
    return bool(status.maintenance and status.maintenance.scaled_down_at)


def database_changed(status: DatabaseMigrationStatus) -> bool:
    """The migrate Job was created (so Flyway may have changed the database)."""
    return Step.MIGRATE in status.jobs


def prestarts_migration(spec: DatabaseMigrationSpec) -> bool:
    """maintenance.prestartMigration, where it applies: on unless the resource says false, never with a Clone backup
    (which needs the database free of sessions: the CRD refuses an explicit true with it)."""
    return bool(
        spec.maintenance
        and spec.maintenance.prestart_migration is not False
        and spec.backup.method != BackupMethod.CLONE
    )


def prestarted_steps(spec: DatabaseMigrationSpec) -> list[Step]:
    """The steps whose Jobs EnteringMaintenance creates ahead (their pre-started Jobs): the backup when it runs after
    the drain (a Dump), and the migration."""
    if not prestarts_migration(spec):
        return []
    steps = []
    if spec.backup.enabled and spec.backup.method == BackupMethod.DUMP and Phase.BACKING_UP in after_the_drain(spec):
        steps.append(Step.BACKUP)
    return [*steps, Step.MIGRATE]


def after_the_drain(spec: DatabaseMigrationSpec) -> list[Phase]:
    phases = work_phases(spec)
    return phases[phases.index(Phase.ENTERING_MAINTENANCE) + 1 :] if Phase.ENTERING_MAINTENANCE in phases else []


def adopted(status: DatabaseMigrationStatus, step: Step) -> bool:
    """The step's Job is its pre-started Job (status.jobs names the same Job for both)."""
    armed = status.jobs.get(reasons.ARMED[step]) if step in reasons.ARMED else None
    return armed is not None and status.jobs.get(step) == armed


def adoptable(step: Step, status: DatabaseMigrationStatus, obs: Observations) -> bool:
    """The pre-started Job of `step` exists, was never adopted, and its container still runs (waiting for its go):
    not ended, and its pod not being deleted."""
    armed = reasons.ARMED.get(step)
    job = obs.jobs.get(armed) if armed else None
    return (
        armed in status.jobs
        and step not in status.jobs
        and job is not None
        and job.state == "Running"
        and job.exit_code is None
        and not job.terminating
    )


def lost_before_go(step: Step, status: DatabaseMigrationStatus, obs: Observations) -> str | None:
    """Why the pre-started Job of `step` ended before its go; None when there is none to replace."""
    armed = reasons.ARMED.get(step)
    job = obs.jobs.get(armed) if armed else None
    if armed not in status.jobs or step in status.jobs or job is None or adoptable(step, status, obs):
        return None
    why = job.failure or (f"exit code {job.exit_code}" if job.exit_code is not None else None)
    why = why or ("its pod is being deleted" if job.terminating else job.state)
    return first_line(why, 200)


def go_wait_seconds(spec: DatabaseMigrationSpec, step: Step) -> int:
    """How long a pre-started Job of `step` waits for its go at most: what comes before its phase in the window
    (the drain, and the backup before the migration), with their slack."""
    t = spec.timeouts
    before = t.drain_seconds
    if step == Step.MIGRATE and spec.backup.enabled:
        before += t.backup_seconds
    return before + 2 * (DEADLINE_SLACK + HARD_MARGIN)


def before_drained(status: DatabaseMigrationStatus) -> bool:
    """The migration's "before" snapshot was taken beside the pg_dump Job, the app drained (`Snapshot.drained`)."""
    return status.before is not None and status.before.drained


def expected_version(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus) -> str | None:
    target = spec.migrations.target_version
    if target and target != "latest":
        return target
    versions = [m.version for m in status.pending if m.version]
    if versions:
        return max(versions, key=version_key)
    # the pending list is unknown (an image source without flyway info): where Flyway says it went, having applied
    # everything it found (migrate runs with pending migrations as errors)
    reached = (status.flyway or {}).get("targetSchemaVersion")
    if reached:
        return str(reached)
    return status.before.version if status.before else None


def describe_pending(pending: list[PendingMigration]) -> str:
    return ", ".join(f"{m.version} {m.description}".strip() for m in pending)


def original_replicas(status: DatabaseMigrationStatus, deployment: DeploymentObservation, owner: str) -> int:
    """Status first (this run's record), then our own annotation, then a stale annotation on a Deployment
    that is still at 0 (a previous run left it down), then the current replica count."""
    if status.maintenance and status.maintenance.original_replicas is not None:
        return status.maintenance.original_replicas
    annotation = deployment.original_replicas_annotation
    if annotation is not None and (deployment.annotation_owner == owner or deployment.replicas == 0):
        return annotation
    return deployment.replicas


def app_available(deployment: DeploymentObservation, replicas: int) -> bool:
    return (
        deployment.replicas == replicas
        and deployment.up_to_date
        and deployment.available_replicas >= replicas
        and deployment.updated_replicas >= replicas
    )


# ------------------------------------------------------------------------------------------- phase order
def work_phases(spec: DatabaseMigrationSpec) -> list[Phase]:
    """The phases after Preflight, in the order this spec runs them."""
    backup = [Phase.BACKING_UP] if spec.backup.enabled else []
    enter = [Phase.ENTERING_MAINTENANCE] if spec.maintenance else []
    exit_ = [Phase.EXITING_MAINTENANCE] if spec.maintenance else []
    if spec.backup.timing == BackupTiming.BEFORE_MAINTENANCE and spec.backup.method == BackupMethod.DUMP:
        ordered = backup + enter
    else:
        ordered = enter + backup
    return [*ordered, Phase.MIGRATING, Phase.VERIFYING, *exit_, Phase.SUCCEEDED]


def next_phase(current: Phase, spec: DatabaseMigrationSpec) -> Phase:
    sequence = [Phase.PREFLIGHT, *work_phases(spec)]
    return sequence[sequence.index(current) + 1]


# ------------------------------------------------------------------------------------------------ builders
def progress(reason: str, message: str) -> list[ConditionChange]:
    return [
        ConditionChange(reasons.READY, "False", reason, message),
        ConditionChange(reasons.RECONCILING, "True", reason, message),
        ConditionChange(reasons.STALLED, "False", reason, ""),
    ]


def succeeded(reason: str, message: str) -> list[ConditionChange]:
    return [
        ConditionChange(reasons.READY, "True", reason, message),
        ConditionChange(reasons.RECONCILING, "False", reason, ""),
        ConditionChange(reasons.STALLED, "False", reason, ""),
    ]


def enter(phase: Phase, message: str, *, reason: str | None = None, **status_fields: Any) -> Decision:
    """Move to `phase` (a work phase or Succeeded); the next phase's first step runs on the next pass at once."""
    decision = Decision(phase=phase, message=message, log=message).record(**status_fields)
    if phase == Phase.SUCCEEDED:
        decision.conditions = succeeded(reason or reasons.SUCCEEDED, message)
        decision.actions.append(ReleaseLock())
        return decision
    decision.conditions = progress(reason or phase.value, message)
    decision.requeue_after = 0.0
    return decision


def stay(
    phase: Phase,
    message: str,
    reason: str,
    poll: float | None = POLL_JOB,
    log: str | None = None,
    **status_fields: Any,
) -> Decision:
    return Decision(
        phase=phase,
        message=message,
        conditions=progress(reason, message),
        requeue_after=poll,
        log=log,
    ).record(**status_fields)


def stalled_end(
    phase: Phase,
    reason: str,
    text: str,
    extra: list[ConditionChange],
    actions: list[Action],
    **status_fields: Any,
) -> Decision:
    """A run that ended without doing what it was created for: a human has to look. Ready=False,
    Reconciling=False and Stalled=True carry the same reason and text (kstatus, `kubectl wait`, Argo CD)."""
    return Decision(
        phase=phase,
        message=text,
        log=text,
        warning=True,
        actions=actions,
        conditions=[
            *extra,
            ConditionChange(reasons.READY, "False", reason, text),
            ConditionChange(reasons.RECONCILING, "False", reason, ""),
            ConditionChange(reasons.STALLED, "True", reason, text),
        ],
    ).record(**status_fields)


def fail(
    spec: DatabaseMigrationSpec,
    status: DatabaseMigrationStatus,
    phase: Phase,
    reason: str,
    message: str,
    extra: list[ConditionChange] | None = None,
) -> Decision:
    """A failure: roll back once the app or the database was touched, else stop with the app untouched."""
    extra = extra or []
    if maintenance_touched(status) or database_changed(status):
        rollback = RollbackStatus(
            strategy=spec.rollback.strategy,
            reason=reason,
            error=first_line(message, 1000),
            from_phase=phase.value,
            database_changed=database_changed(status),
            database_restored=False,
            failed=False,
        )
        text = f"{phase.value} failed ({reason}): {first_line(message)}; rolling back"
        return Decision(
            phase=Phase.ROLLING_BACK,
            message=text,
            log=text,
            warning=True,
            conditions=[*extra, *progress(reasons.ROLLING_BACK, text)],
            requeue_after=0.0,
        ).record(rollback=rollback)
    text = f"{phase.value} failed ({reason}): {first_line(message, 600)}"
    if phase in (Phase.PENDING, Phase.PREFLIGHT):
        text += "; the app and the database were not touched"
    # pre-started Jobs created before the app was touched (their head start) never get a go: stopped now
    stops: list[Action] = [StopJob(armed) for armed in sorted(reasons.ARMED.values()) if armed in status.jobs]
    return stalled_end(Phase.FAILED, reason, text, extra, [*stops, ReleaseLock()])


def rollback_job_step(
    step: Step, what: str, obs: Observations, rollback: RollbackStatus, env: tuple[tuple[str, str], ...] = ()
) -> Decision:
    """A rollback step run by a Job: create it, wait for it, record whether it put the database back."""
    job = obs.job(step)
    if job.state == "Absent":
        decision = stay(
            Phase.ROLLING_BACK, f"rollback: running {what}", reasons.ROLLING_BACK, log=f"created the {step} Job"
        )
        decision.actions.append(CreateJob(step, env))
        return decision
    if job.state == "Running":
        return stay(Phase.ROLLING_BACK, f"rollback: {what} running", reasons.ROLLING_BACK)
    if job.state == "Succeeded":
        rollback = rollback.model_copy(update={"database_restored": True})
        text = f"rollback: {what} succeeded"
    else:
        detail = flyway.error_text(job.output) or job.failure or "no output"
        rollback = rollback.model_copy(update={"failed": True, "failure": f"{what} failed: {first_line(detail, 600)}"})
        text = rollback.failure or ""
    return stay(Phase.ROLLING_BACK, text, reasons.ROLLING_BACK, 0.0, log=text, rollback=rollback)


def back_by(spec: DatabaseMigrationSpec, scaled_down_at: str) -> str | None:
    """Scaled down + every timeout the window may contain + a margin."""
    down = parse_time(scaled_down_at)
    if down is None:
        return None
    t = spec.timeouts
    seconds = (
        t.drain_seconds
        + (t.backup_seconds if spec.backup.enabled else 0)
        + t.migrate_seconds
        + t.verify_seconds
        + t.ready_seconds
        + t.rollback_seconds
        + t.ready_seconds
        + 4 * (DEADLINE_SLACK + HARD_MARGIN)
    )
    return iso(down + timedelta(seconds=seconds))
