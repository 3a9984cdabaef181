"""The runbook as a pure phase machine.

`decide(spec, status, observations)` looks at what the handlers observed (Jobs, the Deployment, the
database) and returns a `Decision`: the next phase, the actions to take (create a Job, scale, clone ...),
the condition changes, the status fields to record and when to look again. No I/O happens here; the
handlers (`handlers.py`) gather observations, execute actions and write status. Every transition has a
unit test in tests/unit/test_phases.py.

    Pending -> (AwaitingApproval) -> Preflight -> [BackingUp, EnteringMaintenance in the order of
    backup.timing] -> Migrating -> Verifying -> ExitingMaintenance -> Succeeded
    any failure once the app or the database was touched -> RollingBack -> RolledBack | Failed
    a failure before that (preflight) -> Failed, app untouched

Restart safety comes from the inputs: a Job is identified by its deterministic name, so re-entering a phase
finds the existing Job ("Running"/"Succeeded") instead of creating a second; the original replica count is
in status and in an annotation on the Deployment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import reasons
from .models import (
    AppliedMigration,
    BackupMethod,
    BackupTiming,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    PendingMigration,
    Phase,
    RollbackStrategy,
    Snapshot,
)

# Job steps (the suffix of the deterministic Job name).
STEP_VALIDATE = "validate"
STEP_BACKUP = "backup"
STEP_MIGRATE = "migrate"
STEP_RESTORE = "restore"
STEP_REPAIR = "repair"
STEP_COMPENSATE = "compensate"

ROLLBACK_STEPS = {
    RollbackStrategy.RESTORE: STEP_RESTORE,
    RollbackStrategy.REPAIR: STEP_REPAIR,
    RollbackStrategy.COMPENSATE: STEP_COMPENSATE,
}

# Fallback re-check intervals (seconds). Watches on Jobs and the Deployment usually wake us earlier.
POLL_JOB = 10.0
POLL_DRAIN = 3.0
POLL_LOCK = 15.0
POLL_RETRY = 10.0


# ------------------------------------------------------------------------------------------- observations
JobState = Literal["Absent", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobObservation:
    state: JobState = "Absent"
    # The container's termination message (Flyway JSON, backup summary) when the pod has ended.
    output: str | None = None
    # Why the Job failed when not from the output (DeadlineExceeded, BackoffLimitExceeded, pod reason).
    failure: str | None = None
    exit_code: int | None = None


ABSENT = JobObservation()


@dataclass(frozen=True)
class LockObservation:
    acquired: bool
    holder: str | None = None  # "<namespace>/<name>" of the migration holding the database


@dataclass(frozen=True)
class DatabaseCheck:
    """The operator's own connection test and history read (preflight)."""

    reachable: bool
    reason: str | None = None  # BadCredentials, DatabaseUnreachable, DatabaseNotFound ...
    message: str = ""
    history: tuple[AppliedMigration, ...] = ()  # every row, in installed_rank order
    history_table_exists: bool = False

    @property
    def failed_rows(self) -> list[AppliedMigration]:
        return [row for row in self.history if not row.success]

    @property
    def applied_versions(self) -> set[str]:
        return {row.version for row in self.history if row.success and row.version is not None}


@dataclass(frozen=True)
class DeploymentObservation:
    exists: bool
    replicas: int = 0  # spec.replicas
    available_replicas: int = 0
    updated_replicas: int = 0
    pods: int = 0  # pods matching the selector, terminating ones included
    up_to_date: bool = True  # status.observedGeneration >= metadata.generation
    original_replicas_annotation: int | None = None
    annotation_owner: str | None = None


@dataclass(frozen=True)
class Session:
    pid: int
    usename: str | None
    application_name: str | None
    state: str | None
    client: str | None = None

    def describe(self) -> str:
        who = self.application_name or "-"
        return f"pid {self.pid} ({self.usename or '?'}, {who}, {self.state or '?'})"


@dataclass(frozen=True)
class CloneObservation:
    source_exists: bool
    clone_exists: bool
    failed_copy_exists: bool = False
    size_bytes: int | None = None
    error: str | None = None  # the last CREATE/ALTER DATABASE error


@dataclass(frozen=True)
class Verification:
    """Raw facts after the migration; `decide` judges them."""

    snapshot: Snapshot
    failed_rows: tuple[AppliedMigration, ...] = ()
    applied: tuple[AppliedMigration, ...] = ()  # rows installed by this run
    check_results: dict[str, bool | str] = field(default_factory=dict)  # name -> passed, or the error text
    error: str | None = None  # the database could not be queried


@dataclass(frozen=True)
class Observations:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    generation: int | None = None
    approved: bool = False
    lock: LockObservation | None = None
    # Preflight failures found by the handlers (missing ConfigMap, Secret, PVC ...): (reason, message).
    missing: tuple[tuple[str, str], ...] = ()
    database: DatabaseCheck | None = None
    # Migrations found in the ConfigMap (None when the source is an image).
    local_migrations: tuple[PendingMigration, ...] | None = None
    snapshot: Snapshot | None = None
    deployment: DeploymentObservation | None = None
    app_sessions: tuple[Session, ...] = ()
    blocked_locks: tuple[str, ...] = ()
    jobs: dict[str, JobObservation] = field(default_factory=dict)
    clone: CloneObservation | None = None
    verification: Verification | None = None

    def job(self, step: str) -> JobObservation:
        return self.jobs.get(step, ABSENT)


# -------------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class CreateJob:
    step: str


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


Action = CreateJob | ScaleDeployment | ClearMaintenanceRecord | CloneDatabase | SwapCloneBack | ReleaseLock


@dataclass(frozen=True)
class ConditionChange:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


@dataclass
class Decision:
    phase: Phase
    message: str
    actions: list[Action] = field(default_factory=list)
    conditions: list[ConditionChange] = field(default_factory=list)
    # camelCase status fields to merge (whole values: backup, maintenance, rollback, before ...).
    status: dict[str, Any] = field(default_factory=dict)
    # A line for status.log and the event of this step (None: nothing worth logging).
    log: str | None = None
    warning: bool = False
    requeue_after: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)


# ----------------------------------------------------------------------------------------------- helpers
def version_key(version: str | None) -> tuple[int, ...]:
    if not version:
        return ()
    return tuple(int(part) for part in re.split(r"[._]", version) if part.isdigit())


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def elapsed(status: DatabaseMigrationStatus, now: datetime) -> float:
    started = parse_time(status.phase_started_at)
    return (now - started).total_seconds() if started else 0.0


def clone_names(spec: DatabaseMigrationSpec, uid: str) -> tuple[str, str]:
    """(`<db>_pre_<id>`, `<db>_failed_<id>`) within PostgreSQL's 63-byte identifier limit."""
    short_id = re.sub(r"[^a-z0-9]", "", uid.lower())[:8] or "run"
    base = spec.database.name[: 63 - len("_failed_") - len(short_id)]
    return f"{base}_pre_{short_id}", f"{base}_failed_{short_id}"


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


def compute_pending(
    local: tuple[PendingMigration, ...], applied_versions: set[str], target: str | None
) -> list[PendingMigration]:
    limit = version_key(target) if target and target != "latest" else None
    pending = [
        m
        for m in local
        if m.version is not None
        and m.version not in applied_versions
        and (limit is None or version_key(m.version) <= limit)
    ]
    return sorted(pending, key=lambda m: version_key(m.version))


def expected_version(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus) -> str | None:
    target = spec.migrations.target_version
    if target and target != "latest":
        return target
    versions = [m.version for m in status.pending if m.version]
    if versions:
        return max(versions, key=version_key)
    return status.before.version if status.before else None


def _same_version(left: str | None, right: str | None) -> bool:
    return version_key(left) == version_key(right)


def _table_present(required: str, names: list[str]) -> bool:
    if "." in required:
        return required in names or (required.startswith("public.") and required[7:] in names)
    return any(name == required or name.endswith("." + required) for name in names)


def _describe_pending(pending: list[PendingMigration]) -> str:
    return ", ".join(f"{m.version} {m.description}".strip() for m in pending)


def _first_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def maintenance_touched(status: DatabaseMigrationStatus) -> bool:
    return bool(status.maintenance and status.maintenance.scaled_down_at)


def database_changed(status: DatabaseMigrationStatus) -> bool:
    """The migrate Job was created (so Flyway may have changed the database), or the clone swapped."""
    return "migrate" in status.jobs


# ------------------------------------------------------------------------------------------- transitions
def _progress(phase: Phase, reason: str, message: str) -> list[ConditionChange]:
    return [
        ConditionChange(reasons.READY, "False", reason, message),
        ConditionChange(reasons.RECONCILING, "True", reason, message),
        ConditionChange(reasons.STALLED, "False", reason, ""),
    ]


def _enter(
    phase: Phase,
    spec: DatabaseMigrationSpec,
    status: DatabaseMigrationStatus,
    obs: Observations,
    message: str,
    **status_fields: Any,
) -> Decision:
    """Move to `phase` (a work phase or Succeeded) and run its first step at once when it has one."""
    decision = Decision(phase=phase, message=message, log=message, status=dict(status_fields))
    if phase == Phase.SUCCEEDED:
        decision.conditions = [
            ConditionChange(reasons.READY, "True", reasons.SUCCEEDED, message),
            ConditionChange(reasons.RECONCILING, "False", reasons.SUCCEEDED, ""),
            ConditionChange(reasons.STALLED, "False", reasons.SUCCEEDED, ""),
        ]
        decision.actions.append(ReleaseLock())
        return decision
    decision.conditions = _progress(phase, phase.value, message)
    decision.requeue_after = 0.0  # the next phase's first step runs on the next pass
    return decision


def _fail(
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
        rollback = {
            "strategy": spec.rollback.strategy,
            "reason": reason,
            "error": _first_line(message, 1000),
            "fromPhase": phase.value,
            "databaseChanged": database_changed(status),
            "databaseRestored": False,
            "failed": False,
        }
        text = f"{phase.value} failed ({reason}): {_first_line(message)}; rolling back"
        return Decision(
            phase=Phase.ROLLING_BACK,
            message=text,
            log=text,
            warning=True,
            status={"rollback": rollback},
            conditions=[*extra, *_progress(Phase.ROLLING_BACK, reasons.ROLLING_BACK, text)],
            requeue_after=0.0,
        )
    text = f"{phase.value} failed ({reason}): {_first_line(message, 600)}"
    if phase in (Phase.PENDING, Phase.PREFLIGHT):
        text += "; the app and the database were not touched"
    return _stalled_end(Phase.FAILED, reason, text, extra, [ReleaseLock()])


def _stalled_end(
    phase: Phase,
    reason: str,
    text: str,
    extra: list[ConditionChange],
    actions: list[Action],
    status: dict[str, Any] | None = None,
) -> Decision:
    """A run that ended without doing what it was created for: a human has to look. Ready=False,
    Reconciling=False and Stalled=True carry the same reason and text (kstatus, `kubectl wait`, Argo CD)."""
    return Decision(
        phase=phase,
        message=text,
        log=text,
        warning=True,
        actions=actions,
        status=status or {},
        conditions=[
            *extra,
            ConditionChange(reasons.READY, "False", reason, text),
            ConditionChange(reasons.RECONCILING, "False", reason, ""),
            ConditionChange(reasons.STALLED, "True", reason, text),
        ],
    )


def _stay(
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
        conditions=_progress(phase, reason, message),
        requeue_after=poll,
        log=log,
        status=dict(status_fields),
    )


def _timed_out(status: DatabaseMigrationStatus, obs: Observations, seconds: int) -> bool:
    # Jobs have activeDeadlineSeconds; this catches everything else (and a lost Job) with some slack.
    return elapsed(status, obs.now) > seconds + 30


# ------------------------------------------------------------------------------------------------ phases
def decide(
    spec: DatabaseMigrationSpec,
    status: DatabaseMigrationStatus,
    obs: Observations,
    name: str = "",
    uid: str = "",
) -> Decision:
    """The next step of the runbook for one DatabaseMigration."""
    phase = Phase(status.phase) if status.phase else Phase.PENDING
    handler = {
        Phase.PENDING: _pending,
        Phase.AWAITING_APPROVAL: _awaiting_approval,
        Phase.PREFLIGHT: _preflight,
        Phase.BACKING_UP: _backing_up,
        Phase.ENTERING_MAINTENANCE: _entering_maintenance,
        Phase.MIGRATING: _migrating,
        Phase.VERIFYING: _verifying,
        Phase.EXITING_MAINTENANCE: _exiting_maintenance,
        Phase.ROLLING_BACK: _rolling_back,
    }.get(phase)
    if handler is None:  # terminal: nothing to do but make sure the lock is gone
        return Decision(phase=phase, message=status.message or phase.value, actions=[ReleaseLock()])
    return handler(spec, status, obs, name, uid)


def _pending(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    if spec.approval.required and not obs.approved:
        message = (
            f"waiting for approval: kubectl annotate dbmig {name} dbops.io/approved=true"
            if name
            else "waiting for approval (annotation dbops.io/approved=true)"
        )
        return Decision(
            phase=Phase.AWAITING_APPROVAL,
            message=message,
            log=message,
            conditions=_progress(Phase.AWAITING_APPROVAL, reasons.AWAITING_APPROVAL, message),
        )
    if obs.lock is None or not obs.lock.acquired:
        holder = obs.lock.holder if obs.lock and obs.lock.holder else "another migration"
        message = (
            f"waiting for {holder} to finish: one migration at a time for "
            f"{spec.database.host}:{spec.database.port}/{spec.database.name}"
        )
        return _stay(
            Phase.PENDING,
            message,
            reasons.WAITING_FOR_LOCK,
            POLL_LOCK,
            log=message if status.message != message else None,
        )
    message = "preflight: checking the database, the history and the migrations"
    return _enter(Phase.PREFLIGHT, spec, status, obs, message, startedAt=status.started_at or iso(obs.now))


def _awaiting_approval(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    if spec.approval.required and not obs.approved:
        return Decision(
            phase=Phase.AWAITING_APPROVAL,
            message=status.message or "waiting for approval",
            conditions=_progress(
                Phase.AWAITING_APPROVAL, reasons.AWAITING_APPROVAL, status.message or "waiting for approval"
            ),
        )
    decision = _pending(spec, status, obs, name, uid)
    decision.log = f"approved; {decision.log or decision.message}"
    return decision


def _preflight(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.PREFLIGHT
    if obs.missing:
        reason, message = obs.missing[0]
        return _fail(spec, status, phase, reason, "; ".join(m for _, m in obs.missing))
    database = obs.database
    if database is None:
        return _stay(phase, "preflight: connecting to the database", reasons.PREFLIGHT, POLL_RETRY)
    if not database.reachable:
        return _fail(spec, status, phase, database.reason or reasons.DATABASE_UNREACHABLE, database.message)
    if database.failed_rows:
        rows = ", ".join(f"version {r.version} ({r.script})" for r in database.failed_rows)
        return _fail(
            spec,
            status,
            phase,
            reasons.FAILED_MIGRATION_IN_HISTORY,
            f"{spec.migrations.table} has failed migration rows: {rows}. Fix the database and remove "
            "the rows (flyway repair) before migrating",
        )
    if _timed_out(status, obs, spec.timeouts.preflight_seconds):
        return _fail(
            spec,
            status,
            phase,
            reasons.TIMEOUT,
            f"preflight took longer than {spec.timeouts.preflight_seconds}s",
        )

    # Imported here to keep phases importable without the Flyway parser's regexes at module import.
    from . import flyway

    job = obs.job(STEP_VALIDATE)
    if job.state == "Absent":
        return Decision(
            phase=phase,
            message="preflight: running flyway info and validate",
            actions=[CreateJob(STEP_VALIDATE)],
            conditions=_progress(phase, reasons.VALIDATING, "running flyway validate"),
            requeue_after=POLL_JOB,
            log="created the flyway validate Job",
        )
    if job.state == "Running":
        return _stay(phase, "preflight: flyway validate running", reasons.VALIDATING)
    result = flyway.parse_validate_output(job.output)
    if job.state == "Failed" or not result.successful:
        reason, message = flyway.classify_validate_failure(result, job.failure)
        return _fail(spec, status, phase, reason, message)

    if result.pending is not None:
        pending = result.pending
    elif obs.local_migrations is not None:
        pending = compute_pending(
            obs.local_migrations, database.applied_versions, spec.migrations.target_version
        )
    else:
        pending = None
    current = result.schema_version or (obs.snapshot.version if obs.snapshot else None)
    fields: dict[str, Any] = {
        "pending": [p.model_dump(by_alias=True, exclude_none=True) for p in pending or []]
    }
    if obs.snapshot is not None:
        fields["before"] = obs.snapshot.model_dump(by_alias=True, exclude_none=True)
    if pending == []:
        message = f"nothing to migrate: {spec.database.name} is at version {current or 'none'}"
        decision = _enter(Phase.SUCCEEDED, spec, status, obs, message, **fields)
        decision.conditions = [
            ConditionChange(
                c.type,
                c.status,
                reasons.NOTHING_TO_MIGRATE if c.type == reasons.READY else c.reason,
                c.message,
            )
            for c in decision.conditions
        ]
        return decision
    listing = _describe_pending(pending) if pending else "unknown (image source without flyway info)"
    if spec.dry_run:
        message = (
            f"dry run complete: {len(pending or [])} pending migration(s) on "
            f"{spec.database.name} at version {current or 'none'}: {listing}"
        )
        decision = _enter(Phase.SUCCEEDED, spec, status, obs, message, **fields)
        decision.conditions = [
            ConditionChange(c.type, c.status, reasons.DRY_RUN_COMPLETE, c.message)
            for c in decision.conditions
        ]
        return decision
    upcoming = next_phase(phase, spec)
    message = f"preflight passed: at version {current or 'none'}, pending: {listing}"
    decision = _enter(upcoming, spec, status, obs, message, **fields)
    if not spec.backup.enabled:
        decision.conditions.append(
            ConditionChange(
                reasons.BACKUP_COMPLETE,
                "False",
                reasons.BACKUP_DISABLED,
                "backup.enabled is false: no backup is taken, a failed migration cannot be restored",
            )
        )
        decision.warning = True
        decision.log = message + "; WARNING: backup disabled"
    return decision


def _backing_up(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.BACKING_UP
    if spec.backup.method == BackupMethod.CLONE:
        clone_name, _ = clone_names(spec, uid)
        clone = obs.clone
        if clone is not None and clone.clone_exists:
            backup = {
                "method": BackupMethod.CLONE.value,
                "cloneDatabase": clone_name,
                "sizeBytes": clone.size_bytes,
                "verified": True,
                "completedAt": iso(obs.now),
            }
            message = f"backup complete: cloned {spec.database.name} to {clone_name}"
            decision = _enter(
                next_phase(phase, spec),
                spec,
                status,
                obs,
                message,
                backup={k: v for k, v in backup.items() if v is not None},
            )
            decision.conditions.append(
                ConditionChange(reasons.BACKUP_COMPLETE, "True", reasons.BACKUP_SUCCEEDED, message)
            )
            return decision
        if _timed_out(status, obs, spec.timeouts.backup_seconds):
            error = clone.error if clone and clone.error else "clone not created in time"
            return _backup_failed(spec, status, error)
        message = f"backup: CREATE DATABASE {clone_name} TEMPLATE {spec.database.name}"
        if clone is not None and clone.error:
            message += f" (retrying: {_first_line(clone.error)})"
        decision = _stay(phase, message, reasons.BACKING_UP, POLL_RETRY)
        decision.actions.append(CloneDatabase(clone_name))
        decision.status["backup"] = {
            "method": BackupMethod.CLONE.value,
            "cloneDatabase": clone_name,
            "verified": False,
        }
        return decision

    from . import jobs as job_manifests
    from . import pg_scripts

    job = obs.job(STEP_BACKUP)
    if job.state == "Absent":
        decision = _stay(
            phase,
            f"backup: pg_dump of {spec.database.name} running",
            reasons.BACKING_UP,
            log="created the pg_dump Job",
        )
        decision.actions.append(CreateJob(STEP_BACKUP))
        decision.conditions.append(
            ConditionChange(reasons.BACKUP_COMPLETE, "False", reasons.BACKING_UP, "pg_dump running")
        )
        decision.status["backup"] = {
            "method": BackupMethod.DUMP.value,
            "pvc": spec.backup.volume.claim_name if spec.backup.volume else None,
            "path": job_manifests.backup_file(name, uid),
            "verified": False,
        }
        return decision
    if job.state == "Running":
        if _timed_out(status, obs, spec.timeouts.backup_seconds):
            return _backup_failed(spec, status, f"backup took longer than {spec.timeouts.backup_seconds}s")
        return _stay(phase, f"backup: pg_dump of {spec.database.name} running", reasons.BACKING_UP)
    summary = pg_scripts.parse_backup_output(job.output)
    if job.state == "Failed" or summary is None or not summary.get("verified"):
        error = (summary or {}).get("error") or job.failure or "the backup Job failed without output"
        return _backup_failed(spec, status, str(error))
    backup = dict(status.backup.model_dump(by_alias=True, exclude_none=True) if status.backup else {})
    backup.update(
        {
            "method": BackupMethod.DUMP.value,
            "sizeBytes": int(summary.get("sizeBytes", 0)),
            "verified": True,
            "completedAt": iso(obs.now),
        }
    )
    backup.setdefault("path", job_manifests.backup_file(name, uid))
    if spec.backup.volume:
        backup.setdefault("pvc", spec.backup.volume.claim_name)
    message = (
        f"backup complete: {backup['sizeBytes']} bytes in {backup.get('pvc')}:{backup['path']}, "
        f"{summary.get('tocEntries', '?')} entries verified with pg_restore --list"
    )
    decision = _enter(next_phase(phase, spec), spec, status, obs, message, backup=backup)
    decision.conditions.append(
        ConditionChange(reasons.BACKUP_COMPLETE, "True", reasons.BACKUP_SUCCEEDED, message)
    )
    return decision


def _backup_failed(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, error: str) -> Decision:
    condition = ConditionChange(reasons.BACKUP_COMPLETE, "False", reasons.BACKUP_FAILED, _first_line(error))
    return _fail(spec, status, Phase.BACKING_UP, reasons.BACKUP_FAILED, error, [condition])


def original_replicas(status: DatabaseMigrationStatus, deployment: DeploymentObservation, owner: str) -> int:
    """Status first (this run's record), then our own annotation, then a stale annotation on a Deployment
    that is still at 0 (a previous run left it down), then the current replica count."""
    if status.maintenance and status.maintenance.original_replicas is not None:
        return status.maintenance.original_replicas
    annotation = deployment.original_replicas_annotation
    if annotation is not None and (deployment.annotation_owner == owner or deployment.replicas == 0):
        return annotation
    return deployment.replicas


def _entering_maintenance(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.ENTERING_MAINTENANCE
    assert spec.maintenance is not None
    deployment_name = spec.maintenance.deployment.name
    deployment = obs.deployment
    if deployment is None or not deployment.exists:
        return _fail(
            spec, status, phase, reasons.DEPLOYMENT_NOT_FOUND, f"Deployment {deployment_name} not found"
        )
    original = original_replicas(status, deployment, name)
    maintenance = {
        "deployment": deployment_name,
        "originalReplicas": original,
        "scaledDownAt": (status.maintenance.scaled_down_at if status.maintenance else None) or iso(obs.now),
    }
    if deployment.replicas != 0:
        message = f"maintenance: scaling {deployment_name} from {original} to 0 replicas"
        decision = _stay(
            phase, message, reasons.SCALING_DOWN, POLL_DRAIN, log=message, maintenance=maintenance
        )
        decision.actions.append(ScaleDeployment(0, record_original=original))
        decision.conditions.append(
            ConditionChange(reasons.MAINTENANCE_MODE, "True", reasons.SCALING_DOWN, message)
        )
        return decision
    blockers = []
    if deployment.pods:
        blockers.append(f"{deployment.pods} pod(s) of {deployment_name}")
    if obs.app_sessions:
        sessions = ", ".join(s.describe() for s in obs.app_sessions[:5])
        blockers.append(f"{len(obs.app_sessions)} app session(s) in pg_stat_activity: {sessions}")
    if blockers:
        if _timed_out(status, obs, spec.timeouts.drain_seconds):
            condition = ConditionChange(
                reasons.MAINTENANCE_MODE, "False", reasons.DRAIN_TIMEOUT, "drain timed out"
            )
            return _fail(
                spec,
                status,
                phase,
                reasons.DRAIN_TIMEOUT,
                f"after {spec.timeouts.drain_seconds}s still waiting for " + " and ".join(blockers),
                [condition],
            )
        message = "maintenance: waiting for " + " and ".join(blockers)
        return _stay(phase, message, reasons.DRAINING, POLL_DRAIN, maintenance=maintenance)
    message = f"maintenance: {deployment_name} scaled to 0 (was {original}), no app session left"
    decision = _enter(next_phase(phase, spec), spec, status, obs, message, maintenance=maintenance)
    decision.conditions.append(ConditionChange(reasons.MAINTENANCE_MODE, "True", reasons.DRAINED, message))
    return decision


def _migrating(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    from . import flyway

    phase = Phase.MIGRATING
    target = expected_version(spec, status) or "latest"
    job = obs.job(STEP_MIGRATE)
    if job.state == "Absent":
        message = f"migrating: flyway migrate to version {target}"
        again = database_changed(status)  # created before: someone deleted the Job mid-run
        log = (
            "the flyway migrate Job disappeared (deleted?): created it again; Flyway resumes from its history"
            if again
            else "created the flyway migrate Job"
        )
        decision = _stay(phase, message, reasons.MIGRATING, log=log)
        decision.warning = again
        decision.actions.append(CreateJob(STEP_MIGRATE))
        decision.conditions.append(ConditionChange(reasons.MIGRATED, "False", reasons.MIGRATING, message))
        # the app is drained now: the most faithful "before", taken once (a re-created Job may find part of the
        # release already applied)
        if obs.snapshot is not None and not again:
            decision.status["before"] = obs.snapshot.model_dump(by_alias=True, exclude_none=True)
        return decision
    if job.state == "Running":
        message = f"migrating: flyway migrate to version {target} running"
        if obs.blocked_locks:
            message += f"; {len(obs.blocked_locks)} blocked lock(s): " + "; ".join(obs.blocked_locks[:3])
        if obs.app_sessions:
            message += f"; {len(obs.app_sessions)} other session(s)"
        if _timed_out(status, obs, spec.timeouts.migrate_seconds):
            return _migration_failed(
                spec, status, f"flyway migrate exceeded {spec.timeouts.migrate_seconds}s"
            )
        return _stay(phase, message, reasons.MIGRATING, POLL_JOB)
    result = flyway.parse_migrate_output(job.output)
    if job.state == "Failed" or not result.success:
        error = result.error or job.failure or "flyway migrate failed without output"
        return _migration_failed(spec, status, error)
    executed = result.migrations_executed
    message = (
        f"migrated: {executed} migration(s) applied, now at version {result.target_schema_version or target}"
    )
    decision = _enter(next_phase(phase, spec), spec, status, obs, message, flyway=result.summary())
    decision.conditions.append(
        ConditionChange(reasons.MIGRATED, "True", reasons.MIGRATION_SUCCEEDED, message)
    )
    return decision


def _migration_failed(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, error: str) -> Decision:
    condition = ConditionChange(reasons.MIGRATED, "False", reasons.MIGRATION_FAILED, _first_line(error, 1000))
    return _fail(spec, status, Phase.MIGRATING, reasons.MIGRATION_FAILED, error, [condition])


def verification_problems(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, verification: Verification
) -> list[str]:
    problems: list[str] = []
    after = verification.snapshot
    for row in verification.failed_rows:
        problems.append(f"failed row in {spec.migrations.table}: version {row.version} ({row.script})")
    expected = expected_version(spec, status)
    if expected and not _same_version(after.version, expected):
        problems.append(f"database at version {after.version or 'none'}, expected {expected}")
    for table in spec.verify.required_tables:
        if not _table_present(table, after.table_names):
            problems.append(f"required table {table} missing")
    before = status.before
    if before and not spec.verify.allow_dropped_objects:
        if after.foreign_keys < before.foreign_keys:
            problems.append(f"foreign keys dropped from {before.foreign_keys} to {after.foreign_keys}")
        if after.indexes < before.indexes:
            problems.append(f"indexes dropped from {before.indexes} to {after.indexes}")
    for check in spec.verify.checks:
        outcome = verification.check_results.get(check.name, "not run")
        if outcome is not True:
            problems.append(
                f"check {check.name} " + ("returned false" if outcome is False else f"failed: {outcome}")
            )
    return problems


def _verifying(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.VERIFYING
    verification = obs.verification
    if verification is None or verification.error:
        if _timed_out(status, obs, spec.timeouts.verify_seconds):
            error = verification.error if verification and verification.error else "no result"
            return _fail(
                spec,
                status,
                phase,
                reasons.VERIFICATION_FAILED,
                f"verification timed out: {error}",
                [ConditionChange(reasons.VERIFIED, "False", reasons.VERIFICATION_FAILED, error)],
            )
        message = "verifying" + (
            f": retrying ({_first_line(verification.error)})" if verification and verification.error else ""
        )
        return _stay(phase, message, reasons.VERIFYING, POLL_RETRY)
    after = verification.snapshot.model_dump(by_alias=True, exclude_none=True)
    applied = [row.model_dump(by_alias=True, exclude_none=True) for row in verification.applied]
    problems = verification_problems(spec, status, verification)
    if problems:
        text = "; ".join(problems)
        decision = _fail(
            spec,
            status,
            phase,
            reasons.VERIFICATION_FAILED,
            text,
            [ConditionChange(reasons.VERIFIED, "False", reasons.VERIFICATION_FAILED, text)],
        )
        decision.status.update(after=after, applied=applied)
        return decision
    before = status.before
    summary = (
        f"tables {before.tables if before else '?'}->{verification.snapshot.tables}, "
        f"foreign keys {before.foreign_keys if before else '?'}->{verification.snapshot.foreign_keys}, "
        f"indexes {before.indexes if before else '?'}->{verification.snapshot.indexes}"
    )
    message = f"verified: version {verification.snapshot.version}, {summary}"
    checks = len(spec.verify.checks)
    if checks:
        message += f", {checks} check(s) true"
    decision = _enter(next_phase(phase, spec), spec, status, obs, message, after=after, applied=applied)
    decision.conditions.append(
        ConditionChange(reasons.VERIFIED, "True", reasons.VERIFICATION_SUCCEEDED, message)
    )
    if decision.phase == Phase.SUCCEEDED:
        decision.status["completedAt"] = iso(obs.now)
    return decision


def _app_available(deployment: DeploymentObservation, replicas: int) -> bool:
    return (
        deployment.replicas == replicas
        and deployment.up_to_date
        and deployment.available_replicas >= replicas
        and deployment.updated_replicas >= replicas
    )


def _exiting_maintenance(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.EXITING_MAINTENANCE
    assert spec.maintenance is not None
    deployment_name = spec.maintenance.deployment.name
    deployment = obs.deployment
    if deployment is None or not deployment.exists:
        return _fail(
            spec,
            status,
            phase,
            reasons.DEPLOYMENT_NOT_FOUND,
            f"Deployment {deployment_name} disappeared during the migration",
        )
    original = original_replicas(status, deployment, name)
    maintenance = dict(
        status.maintenance.model_dump(by_alias=True, exclude_none=True) if status.maintenance else {}
    )
    maintenance.update(deployment=deployment_name, originalReplicas=original)
    if deployment.replicas != original:
        message = f"exiting maintenance: scaling {deployment_name} back to {original} replicas"
        maintenance["scaledUpAt"] = iso(obs.now)
        decision = _stay(phase, message, reasons.SCALING_UP, POLL_DRAIN, log=message, maintenance=maintenance)
        decision.actions.append(ScaleDeployment(original))
        return decision
    if not _app_available(deployment, original):
        if _timed_out(status, obs, spec.timeouts.ready_seconds):
            return _fail(
                spec,
                status,
                phase,
                reasons.APP_NOT_AVAILABLE,
                f"{deployment_name} not available after {spec.timeouts.ready_seconds}s on the migrated "
                f"database ({deployment.available_replicas}/{original} available)",
            )
        message = (
            f"exiting maintenance: waiting for {deployment_name} to be available "
            f"({deployment.available_replicas}/{original})"
        )
        return _stay(phase, message, reasons.SCALING_UP, POLL_DRAIN, maintenance=maintenance)
    before = status.before.version if status.before else None
    after = status.after.version if status.after else None
    count = len(status.applied)
    message = (
        f"migrated {spec.database.name} from version {before or 'none'} to {after or '?'} "
        f"({count} migration(s)); {deployment_name} back at {original} replicas"
    )
    maintenance.setdefault("scaledUpAt", iso(obs.now))
    decision = _enter(
        Phase.SUCCEEDED, spec, status, obs, message, maintenance=maintenance, completedAt=iso(obs.now)
    )
    decision.actions.insert(0, ClearMaintenanceRecord())
    decision.conditions.append(
        ConditionChange(
            reasons.MAINTENANCE_MODE,
            "False",
            reasons.APP_RESTORED,
            f"{deployment_name} available with {original} replicas",
        )
    )
    return decision


def _rolling_back(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str, uid: str
) -> Decision:
    phase = Phase.ROLLING_BACK
    rollback = dict(status.rollback.model_dump(by_alias=True, exclude_none=True) if status.rollback else {})
    strategy = RollbackStrategy(rollback.get("strategy") or spec.rollback.strategy)
    cause = rollback.get("error") or rollback.get("reason") or "unknown failure"
    deployment = obs.deployment if spec.maintenance else None
    deployment_name = spec.maintenance.deployment.name if spec.maintenance else None
    changed = bool(rollback.get("databaseChanged"))
    timed_out = _timed_out(status, obs, spec.timeouts.rollback_seconds)

    # 1. The database, when the migration (may have) changed it.
    if changed and not rollback.get("databaseRestored") and not rollback.get("failed"):
        if strategy == RollbackStrategy.NONE:
            original = status.maintenance.original_replicas if status.maintenance else None
            app = (
                f"; {deployment_name} left at 0 replicas (original {original} in annotation "
                f"dbops.io/original-replicas): fix the database, then scale it back"
                if maintenance_touched(status)
                else ""
            )
            text = (
                f"rollback.strategy None: stopped after {rollback.get('reason')}: {_first_line(cause, 600)}; "
                f"the database is as Flyway left it{app}"
            )
            return _stalled_end(
                Phase.FAILED,
                reasons.ROLLBACK_DISABLED,
                text,
                [ConditionChange(reasons.ROLLED_BACK, "False", reasons.ROLLBACK_DISABLED, text)],
                [ReleaseLock()],
                {"completedAt": iso(obs.now)},
            )
        if timed_out:
            rollback.update(
                failed=True, failure=f"rollback took longer than {spec.timeouts.rollback_seconds}s"
            )
            return _stay(
                phase,
                "rollback timed out; restoring the app",
                reasons.ROLLING_BACK,
                0.0,
                log=rollback["failure"],
                rollback=rollback,
            )
        # The app must be down while the database is put back (it may have been scaled up already).
        if deployment is not None and deployment.exists and (deployment.replicas != 0 or deployment.pods):
            decision = _stay(
                phase,
                f"rollback: stopping {deployment_name} before restoring the database",
                reasons.SCALING_DOWN,
                POLL_DRAIN,
            )
            if deployment.replicas != 0:
                decision.actions.append(ScaleDeployment(0))
            return decision
        if strategy == RollbackStrategy.RESTORE and spec.backup.method == BackupMethod.CLONE:
            clone_name, failed_name = clone_names(spec, uid)
            clone = obs.clone
            if (
                clone is not None
                and clone.source_exists
                and not clone.clone_exists
                and clone.failed_copy_exists
            ):
                rollback["databaseRestored"] = True
                text = f"rollback: {spec.database.name} is the pre-run clone again ({failed_name} kept)"
                return _stay(phase, text, reasons.ROLLING_BACK, 0.0, log=text, rollback=rollback)
            if clone is not None and not clone.clone_exists and not clone.failed_copy_exists:
                rollback.update(failed=True, failure=f"clone {clone_name} is missing: cannot restore")
                return _stay(
                    phase,
                    rollback["failure"],
                    reasons.ROLLING_BACK,
                    0.0,
                    log=rollback["failure"],
                    rollback=rollback,
                )
            message = f"rollback: renaming {clone_name} back to {spec.database.name}"
            if clone is not None and clone.error:
                message += f" (retrying: {_first_line(clone.error)})"
            decision = _stay(phase, message, reasons.ROLLING_BACK, POLL_RETRY)
            decision.actions.append(SwapCloneBack(clone_name, failed_name))
            return decision
        step = ROLLBACK_STEPS[strategy]
        job = obs.job(step)
        what = {
            STEP_RESTORE: "pg_restore of the backup",
            STEP_REPAIR: "flyway repair",
            STEP_COMPENSATE: "the compensating SQL",
        }[step]
        if job.state == "Absent":
            decision = _stay(
                phase, f"rollback: running {what}", reasons.ROLLING_BACK, log=f"created the {step} Job"
            )
            decision.actions.append(CreateJob(step))
            return decision
        if job.state == "Running":
            return _stay(phase, f"rollback: {what} running", reasons.ROLLING_BACK)
        if job.state == "Succeeded":
            rollback["databaseRestored"] = True
            text = f"rollback: {what} succeeded"
        else:
            from . import flyway

            detail = flyway.error_text(job.output) or job.failure or "no output"
            rollback.update(failed=True, failure=f"{what} failed: {_first_line(detail, 600)}")
            text = rollback["failure"]
        return _stay(phase, text, reasons.ROLLING_BACK, 0.0, log=text, rollback=rollback)

    # 2. The app, back at its recorded replicas (always, except strategy None handled above).
    if deployment is not None and deployment.exists and maintenance_touched(status):
        original = original_replicas(status, deployment, name)
        if deployment.replicas != original:
            maintenance = dict(
                status.maintenance.model_dump(by_alias=True, exclude_none=True) if status.maintenance else {}
            )
            maintenance.update(originalReplicas=original, scaledUpAt=iso(obs.now))
            text = f"rollback: scaling {deployment_name} back to {original} replicas"
            decision = _stay(phase, text, reasons.SCALING_UP, POLL_DRAIN, log=text, maintenance=maintenance)
            decision.actions.append(ScaleDeployment(original))
            return decision
        if not _app_available(deployment, original) and not timed_out:
            return _stay(
                phase,
                f"rollback: waiting for {deployment_name} to be available "
                f"({deployment.available_replicas}/{original})",
                reasons.SCALING_UP,
                POLL_DRAIN,
            )
        if not _app_available(deployment, original):
            rollback.update(
                failed=True,
                failure=(rollback.get("failure") or f"{deployment_name} not available after the rollback"),
            )

    # 3. The outcome.
    actions: list[Action] = (
        [ClearMaintenanceRecord(), ReleaseLock()] if maintenance_touched(status) else [ReleaseLock()]
    )
    if rollback.get("failed"):
        text = (
            f"rollback failed: {rollback.get('failure')}; the run failed with {rollback.get('reason')}: "
            f"{_first_line(cause, 500)}"
        )
        return _stalled_end(
            Phase.FAILED,
            reasons.ROLLBACK_FAILED,
            text,
            [ConditionChange(reasons.ROLLED_BACK, "False", reasons.ROLLBACK_FAILED, text)],
            actions,
            {"rollback": rollback, "completedAt": iso(obs.now)},
        )
    how = (
        {
            RollbackStrategy.RESTORE: "database restored from the backup",
            RollbackStrategy.REPAIR: "failed history rows repaired, database at its last good version",
            RollbackStrategy.COMPENSATE: "compensating SQL applied",
            RollbackStrategy.NONE: "database untouched",
        }[strategy]
        if changed
        else "database untouched"
    )
    app = f", {deployment_name} back at its replicas" if maintenance_touched(status) else ""
    text = f"rolled back ({how}{app}) after {rollback.get('reason')}: {_first_line(cause, 600)}"
    reason = f"{strategy.value}Succeeded" if changed else reasons.NOTHING_TO_ROLL_BACK
    return _stalled_end(
        Phase.ROLLED_BACK,
        reasons.ROLLED_BACK,
        text,
        [
            ConditionChange(reasons.ROLLED_BACK, "True", reason, text),
            ConditionChange(reasons.MAINTENANCE_MODE, "False", reasons.APP_RESTORED, app.strip(", "))
            if maintenance_touched(status)
            else ConditionChange(reasons.MAINTENANCE_MODE, "False", reasons.NOT_STARTED, ""),
        ],
        actions,
        {"rollback": rollback, "completedAt": iso(obs.now)},
    )
