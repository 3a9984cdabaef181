"""What every pass checks before the phase decides, in this order, whatever the phase:

1. The maintenance window: once the app was scaled down, it must be back by `status.maintenance.backBy` (scaled down
   + every timeout the window can contain + a margin). Past it, the run goes straight to bringing the app back.
2. The last error (`status.lastError`, or this pass's failure to observe): retried while it may go away and is
   younger than `timeouts.transientErrorSeconds`, else it fails the phase.
3. A Job whose pod cannot start (image pull, missing Secret key, unschedulable) fails the phase after a minute.
4. Holding the window: while the app must be at 0, a scale-up by anyone else is reverted at once, naming who did it.
5. The phase's hard deadline: its timeout + slack + a margin. Whatever decided to stay in the phase (the phase
   itself, a retry, a hold), past that deadline the run leaves it: the phase's own timeout check, with its precise
   message, fires first; this one holds when observing fails or hangs.

Each of 1-4 returns a Decision, or None to let the phase decide.
"""

from __future__ import annotations

from .. import jobs, reasons
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase, RollbackStatus
from ..observations import Observations
from .core import (
    DEADLINE_SLACK,
    HARD_MARGIN,
    IMAGE_OR_CONTAINER_FAILURES,
    POLL_DRAIN,
    Decision,
    ScaleDeployment,
    elapsed,
    fail,
    first_line,
    maintenance_touched,
    parse_time,
    stay,
)
from .rollback import abandon

# Retry delays after an error, by how many times in a row it happened.
ERROR_BACKOFF = (2.0, 5.0, 10.0, 20.0)
# Why a pod may never start by itself, and how long it may try (an image pull may fail once on a busy registry).
CANNOT_START = IMAGE_OR_CONTAINER_FAILURES | {"CrashLoopBackOff", "Unschedulable"}
CANNOT_START_EVER = frozenset({"InvalidImageName", "ErrImageNeverPull"})
POD_START_GRACE = 60
# The phases the guards watch: every phase of a run in flight.
GUARDED = frozenset(Phase) - {Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED}
# Phases in which the app must stay at 0 once it was scaled down.
HOLD_PHASES = (Phase.BACKING_UP, Phase.MIGRATING, Phase.VERIFYING)


def give_up(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, phase: Phase, reason: str, why: str
) -> Decision:
    """Fail the phase (which rolls back once the app or the database was touched); in RollingBack, give the
    rollback's database part up instead (then the app part, then the end)."""
    if phase == Phase.ROLLING_BACK:
        return abandon(spec, status, why)
    return fail(spec, status, phase, reason, why)


def phase_timeout(spec: DatabaseMigrationSpec, phase: Phase) -> int | None:
    timeouts = spec.timeouts
    return {
        Phase.PREFLIGHT: timeouts.preflight_seconds,
        Phase.BACKING_UP: timeouts.backup_seconds,
        Phase.ENTERING_MAINTENANCE: timeouts.drain_seconds,
        Phase.MIGRATING: timeouts.migrate_seconds,
        Phase.VERIFYING: timeouts.verify_seconds,
        Phase.EXITING_MAINTENANCE: timeouts.ready_seconds,
        Phase.ROLLING_BACK: timeouts.rollback_seconds + timeouts.ready_seconds,
    }.get(phase)


def app_must_be_down(status: DatabaseMigrationStatus, phase: Phase) -> bool:
    return phase in HOLD_PHASES and maintenance_touched(status)


def window(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    record = status.maintenance
    back_by = parse_time(record.back_by) if record else None
    if back_by is None or record is None or record.scaled_up_at or obs.now <= back_by:
        return None
    why = f"the app was due back by {record.back_by} (scaled down at {record.scaled_down_at})"
    return give_up(spec, status, phase, reasons.MAINTENANCE_WINDOW_EXCEEDED, why)


def deadline(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    timeout = phase_timeout(spec, phase)
    if timeout is None:
        return None
    limit = timeout + DEADLINE_SLACK + HARD_MARGIN
    rollback = status.rollback or RollbackStatus()
    if phase == Phase.ROLLING_BACK and rollback.failed:
        limit += spec.timeouts.ready_seconds  # the app part, after the database part was given up
    if elapsed(status, obs.now) <= limit:
        return None
    why = f"{phase.value} exceeded its deadline ({limit}s)"
    if obs.last_error is not None:
        why += f"; last error: {first_line(obs.last_error.message)}"
    return give_up(spec, status, phase, reasons.TIMEOUT, why)


def error(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    last = obs.last_error
    if last is None or (status.phase_started_at and last.at < status.phase_started_at):
        return None  # none, or one of an earlier phase
    if last.action == reasons.ACTION_CREATE_ARMED_JOB:
        return None  # the run goes on without that pre-started Job (prestart.refusal): never a failure
    since = parse_time(last.since or last.at)
    age = (obs.now - since).total_seconds() if since else 0.0
    persistent = not last.retryable or age > spec.timeouts.transient_error_seconds
    if persistent:
        why = f"{last.action} failed: {last.message}"
        if last.retryable:
            why += f" (for {int(age)}s, {last.count} attempts)"
        return give_up(spec, status, phase, reasons.ERROR_REASONS.get(last.action, reasons.OPERATION_FAILED), why)
    if obs.observed:
        return None  # the phase decides again; the action that failed is retried (the message says so)
    message = f"{phase.value}: {last.action} failed, retrying ({last.count}x): {first_line(last.message)}"
    decision = stay(phase, message, reasons.RETRYING, ERROR_BACKOFF[min(last.count, len(ERROR_BACKOFF)) - 1])
    if last.count == 1:
        decision.log = message
        decision.warning = True
    return decision


def stuck_job(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    """A Job whose pod cannot start (an image that cannot be pulled, a Secret key that is missing, no node that
    takes it) fails the phase once it has waited POD_START_GRACE seconds, instead of the phase's whole timeout."""
    for step, job in sorted(obs.jobs.items()):
        if job.state != "Running" or job.waiting_reason not in CANNOT_START:
            continue
        waited = (obs.now - job.waiting_since).total_seconds() if job.waiting_since else 0.0
        if waited < POD_START_GRACE and job.waiting_reason not in CANNOT_START_EVER:
            continue
        where = f" (container {job.waiting_container})" if job.waiting_container else ""
        why = f"the {step} Job's pod cannot start{where}: {job.waiting_reason}: {first_line(job.waiting_message or '')}"
        return give_up(spec, status, phase, reasons.JOB_CANNOT_START, why)
    return None


def hold(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    deployment = obs.deployment
    if not app_must_be_down(status, phase) or deployment is None or not deployment.exists or deployment.replicas == 0:
        return None
    assert spec.maintenance is not None
    message = (
        f"{spec.maintenance.deployment.name} was {deployment.scaled_by()} during {phase.value}: "
        "scaling it back to 0 (the migration needs it down; with Argo CD, ignore spec.replicas of this Deployment)"
    )
    decision = stay(phase, message, reasons.MAINTENANCE_HELD, POLL_DRAIN, log=message)
    decision.warning = True
    decision.actions.append(ScaleDeployment(0))
    return decision


BEFORE_THE_PHASE = (window, error, stuck_job, hold)


def before(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase
) -> Decision | None:
    for guard in BEFORE_THE_PHASE:
        decision = guard(spec, status, obs, phase)
        if decision is not None:
            return decision
    return None


def after(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, phase: Phase, decision: Decision
) -> Decision:
    """A decision to stay in the phase past its hard deadline is replaced by the deadline's failure. (Checked after
    the phase, so the phase's own timeout, with its precise message, wins when it fires first.)"""
    replaced(status, obs, decision)
    if decision.phase != phase:
        return decision
    return deadline(spec, status, obs, phase) or decision


def replaced(status: DatabaseMigrationStatus, obs: Observations, decision: Decision) -> None:
    """Says, once in the run's log with a Warning, that a step's pod ran nothing and the Job got another (a kubelet
    restarted while the runtime started its container): the step's retry is not silent. A pass that logs something
    else already leaves it to the next."""
    if decision.log is not None:
        return
    for step, job in sorted(obs.jobs.items()):
        if job.state != "Running" or not job.replaced_why:
            continue
        text = (
            f"the {step} Job's pod ran nothing ({job.replaced_why}): Kubernetes gives the step another pod "
            f"({job.replaced} of {jobs.START_RETRIES} allowed)"
        )
        if not any(entry.message == text for entry in status.log):
            decision.log = text
            decision.warning = True
            return
