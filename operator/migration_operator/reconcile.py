"""One reconcile pass: read the object, observe what its phase needs, `machine.decide`, act, write status.

Called by the per-object daemon in handlers.py, again and again until the run is terminal. Every pass is
safe to repeat: Jobs are found by their deterministic names (creation tolerates 409 AlreadyExists), scaling
is absolute, the Lease is keyed by the run's uid. Status belongs to the operator alone (one daemon per run, its
passes in sequence), so it is written without a resourceVersion precondition: a busy writer of labels or
annotations cannot make every pass conflict. The status is built as a typed model (`DatabaseMigrationStatus`, only
the fields this pass sets) and serialised once, at the write. Any error met while observing or acting is an
observation too (`errors.py`, `machine/guards.py`): it reaches the status in the same pass.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pydantic

from . import (
    conditions,
    constants,
    database,
    errors,
    gosignal,
    jobs,
    kube,
    leader,
    lock,
    machine,
    maintenance,
    metrics,
    reasons,
    stopping,
)
from .machine import context, guards
from .machine.context import Context, Logger
from .machine.core import (
    Action,
    AdoptJob,
    ClearMaintenanceRecord,
    CloneDatabase,
    CreateJob,
    Decision,
    GiveGo,
    ReleaseLock,
    ScaleDeployment,
    StopJob,
    SwapCloneBack,
    TerminateSessions,
    elapsed,
    iso,
    maintenance_touched,
    original_replicas,
    parse_time,
)
from .models import (
    TERMINAL_PHASES,
    Condition,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    LastError,
    LogEntry,
    Phase,
    parse_spec,
    parse_status,
    status_patch_document,
)
from .observations import ConditionChange, Observations
from .reasons import ARMED


# ---------------------------------------------------------------------------------------------- acting
def _action_name(action: Action) -> str:
    if isinstance(action, CreateJob) and action.step in ARMED.values():
        return reasons.ACTION_CREATE_ARMED_JOB
    return {
        CreateJob: reasons.ACTION_CREATE_JOB,
        AdoptJob: reasons.ACTION_ADOPT_JOB,
        GiveGo: reasons.ACTION_GIVE_GO,
        ScaleDeployment: reasons.ACTION_SCALE,
        ClearMaintenanceRecord: reasons.ACTION_CLEAR_RECORD,
        CloneDatabase: reasons.ACTION_CLONE,
        SwapCloneBack: reasons.ACTION_SWAP_BACK,
        ReleaseLock: reasons.ACTION_RELEASE_LOCK,
        StopJob: reasons.ACTION_STOP_JOB,
        TerminateSessions: reasons.ACTION_END_SESSIONS,
    }[type(action)]


async def _act(ctx: Context, action: Action, created: dict[str, str]) -> None:
    if isinstance(action, CreateJob):
        manifest = machine.build_job(ctx.body, ctx.spec, action.step, action.env)
        try:
            await kube.create("jobs", ctx.namespace, manifest)
            ctx.logger.info("created Job %s", manifest["metadata"]["name"])
        except kube.ApiError as failure:
            if failure.status != 409:  # 409: created by an earlier pass (the name is deterministic)
                raise
        created[action.step] = manifest["metadata"]["name"]
    elif isinstance(action, AdoptJob):
        created[action.step] = context.job_name(ctx, action.job)
    elif isinstance(action, GiveGo):
        if await gosignal.give(ctx.spec, await context.credentials(ctx), ctx.uid, action.step):
            ctx.logger.info("gave the go to the pre-started %s Job %s", action.step, context.job_name(ctx, action.step))
    elif isinstance(action, ScaleDeployment):
        assert ctx.spec.maintenance is not None
        await maintenance.scale(
            ctx.namespace,
            ctx.spec.maintenance.deployment.name,
            action.replicas,
            record_original=action.record_original,
            owner=ctx.name,
        )
        ctx.logger.info("scaled Deployment %s to %d", ctx.spec.maintenance.deployment.name, action.replicas)
    elif isinstance(action, ClearMaintenanceRecord):
        if ctx.spec.maintenance:
            await maintenance.clear_record(ctx.namespace, ctx.spec.maintenance.deployment.name, ctx.name)
    elif isinstance(action, CloneDatabase | SwapCloneBack):
        login = await context.credentials(ctx)
        if isinstance(action, CloneDatabase):
            strategy = await database.create_clone(ctx.spec, login, action.clone_name)
            if strategy:
                ctx.logger.info("cloned %s to %s (strategy %s)", ctx.spec.database.name, action.clone_name, strategy)
        else:
            await database.swap_clone_back(ctx.spec, login, action.clone_name, action.failed_name)
    elif isinstance(action, ReleaseLock):
        await lock.release(ctx.body, ctx.spec)
    elif isinstance(action, StopJob):
        await stopping.stop_job(ctx.namespace, context.job_name(ctx, action.step))
        try:
            ended = await stopping.terminate_sessions(ctx.spec, await context.credentials(ctx), action.step)
        except Exception as failure:
            if action.step not in ARMED.values():
                raise
            # a pre-started Job never given its go has not touched the database: its waiting session (if any) can
            # do nothing without the go, withdrawn on this pass, and ends at its own budget. Bringing the app back
            # must not wait on the database (the credentials Secret deleted, the server down).
            ctx.logger.warning("stopping the %s Job: its waiting session is left to its budget: %s", action.step,
                               errors.scrub(str(failure)))
            return
        ctx.logger.info("stopping the %s Job (%d database session(s) terminated)", action.step, ended)
    elif isinstance(action, TerminateSessions):
        ended = await stopping.terminate_sessions(ctx.spec, await context.credentials(ctx), action.step)
        if ended:
            ctx.logger.info("terminated %d database session(s) of the %s step", ended, action.step)


async def execute(ctx: Context, decision: Decision, now: str) -> tuple[dict[str, str], LastError | None]:
    """Run the decision's actions in order; the first that fails stops the rest (they may depend on it). Returns the
    Jobs created or found ({step: job name}) and the error, for status.lastError: the next pass decides on it."""
    created: dict[str, str] = {}
    for action in decision.actions:
        try:
            await _act(ctx, action, created)
        except Exception as failure:  # every error reaches the status; CancelledError (shutdown) is not an Exception
            error = errors.describe(failure, _action_name(action), now, ctx.status.last_error)
            ctx.logger.warning("%s failed: %s", error.action, error.message)
            return created, error
    return created, None


async def observe(ctx: Context, now: str) -> Observations:
    """What the phase needs to see; when that fails, an observation of the failure (`observed=False`)."""
    try:
        return await machine.observe(ctx, generation=ctx.generation, last_error=ctx.status.last_error)
    except Exception as failure:  # every error reaches the status; CancelledError (shutdown) is not an Exception
        error = errors.describe(failure, reasons.ACTION_OBSERVE, now, ctx.status.last_error)
        ctx.logger.warning("observing %s failed: %s", ctx.phase.value, error.message)
        return Observations(generation=ctx.generation, last_error=error, observed=False)


def now_iso() -> str:
    return iso(datetime.now(UTC))


def resume_note(phase: Phase) -> str | None:
    """The log line of the first pass of a process over a run that another process left in flight (an operator
    restart, a crash, a leader change): a fault the user should see in the run's own history, not only in our logs."""
    if phase in TERMINAL_PHASES or phase == Phase.PENDING:
        return None
    return (
        f"operator {leader.identity()} picked this run up in {phase.value} (the operator before it stopped, "
        "crashed or lost its leadership): resuming from the status and the run's Jobs"
    )


def new_status(
    ctx: Context,
    decision: Decision,
    created_jobs: dict[str, str],
    observed: Observations,
    now: str,
    action_error: LastError | None = None,
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The status to write: the decision's typed fields plus the bookkeeping of every pass, serialised once.
    `notes`: what happened between passes (a resume after another process, an outage the passes could not get through),
    logged under the phase the run was found in, before the decision's own line."""
    patch = decision.status.model_copy()
    old = ctx.status
    generation = ctx.generation
    current = [c.model_dump(by_alias=True, exclude_none=True) for c in old.conditions] or conditions.initial(
        now, generation
    )
    patch.phase = decision.phase
    patch.message = decision.message[:2000]
    patch.observed_generation = generation
    patch.conditions = [
        Condition.model_validate(c) for c in conditions.apply(current, decision.conditions, now, generation)
    ]
    known_jobs = dict(old.jobs)
    for step, observation in observed.jobs.items():
        if observation.state != "Absent" and step not in known_jobs:
            known_jobs[step] = jobs.job_name(ctx.name, step)
    known_jobs.update(created_jobs)
    if known_jobs != old.jobs:
        patch.jobs = known_jobs
    entries = [decision.log] if decision.log else []
    if action_error is not None and action_error.count == 1:
        entries.append(f"{action_error.action} failed: {action_error.message}")
    added = [LogEntry(time=now, phase=ctx.phase.value, message=note[:1000]) for note in notes]
    if entries or added:
        added += [LogEntry(time=now, phase=decision.phase.value, message=text[:1000]) for text in entries]
        patch.log = [*old.log, *added][-constants.LOG_LIMIT :]
    if observed.lock is not None and observed.lock.acquired:
        patch.lock = f"{lock.lease_namespace(ctx.namespace)}/{lock.lease_name(ctx.spec, ctx.namespace)}"
    # the error of this pass (observing or acting); a pass without one clears it
    # (an observing error is kept only while the run stays in the phase it happened in)
    kept = observed.last_error if not observed.observed and decision.phase == ctx.phase else None
    last_error = action_error or kept
    if action_error is not None:
        patch.message = f"{decision.message}; {action_error.action} failed: {action_error.message}"[:2000]
    if last_error is not None or old.last_error is not None:
        patch.last_error = last_error
    # scrubbed before it is compared with the stored status, so a scrubbed text does not look like a change
    scrubbed: dict[str, Any] = errors.scrub_document(status_patch_document(patch))
    return scrubbed


def _changed(old: dict[str, Any], update: dict[str, Any]) -> bool:
    volatile = {"lastTransitionTime"}
    for key, value in update.items():
        before = old.get(key)
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k not in volatile} for c in value]
            if strip != [{k: v for k, v in c.items() if k not in volatile} for c in before or []]:
                return True
        elif key != "phaseStartedAt" and before != value:
            return True
    return False


def _record_metrics(ctx: Context, decision: Decision) -> None:
    previous = ctx.phase
    if decision.phase == previous:
        return
    metrics.TRANSITIONS.labels(previous.value, decision.phase.value).inc()
    metrics.PHASE_DURATION.labels(previous.value).observe(max(elapsed(ctx.status, datetime.now(UTC)), 0))
    if decision.terminal:
        metrics.OUTCOMES.labels(decision.phase.value).inc()
        record = decision.status.maintenance or ctx.status.maintenance
        down = parse_time(record.scaled_down_at) if record else None
        up = parse_time(record.scaled_up_at) if record else None
        if down and up:
            metrics.APP_DOWNTIME.observe(max((up - down).total_seconds(), 0))


def _window_metrics(ctx: Context, decision: Decision) -> None:
    """The app-down gauges of this run, from the record the pass just wrote (or the one it read)."""
    record = decision.status.maintenance or ctx.status.maintenance
    labels = (ctx.namespace, ctx.name)
    down = parse_time(record.scaled_down_at) if record else None
    if record is None or down is None or record.scaled_up_at or (decision.terminal and not record.held_down):
        for gauge in (metrics.APP_DOWN, metrics.WINDOW_REMAINING):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        return
    now = datetime.now(UTC)
    metrics.APP_DOWN.labels(*labels).set(max((now - down).total_seconds(), 0))
    back_by = parse_time(record.back_by)
    if back_by is not None:
        metrics.WINDOW_REMAINING.labels(*labels).set((back_by - now).total_seconds())
    if record.held_down:
        metrics.HELD_DOWN.labels(*labels).set(1)


def _event(ctx: Context, decision: Decision, action_error: LastError | None) -> None:
    if decision.log:
        kopf.event(
            cast(Any, ctx.body),
            type="Warning" if decision.warning else "Normal",
            reason=decision.phase.value,
            message=errors.scrub(decision.log)[:1000],
        )
    if action_error is not None and action_error.count == 1:
        kopf.event(
            cast(Any, ctx.body),
            type="Warning",
            reason=reasons.ERROR_REASONS.get(action_error.action, reasons.OPERATION_FAILED),
            message=errors.scrub(f"{action_error.action} failed: {action_error.message}")[:1000],
        )


async def _invalid_spec(body: dict[str, Any], error: pydantic.ValidationError, logger: Logger) -> None:
    message = f"invalid spec: {error.errors()[0].get('loc')}: {error.errors()[0].get('msg')}"
    logger.error(message)
    now = now_iso()
    generation = body["metadata"].get("generation")
    changes = [
        ConditionChange(reasons.READY, "False", reasons.INVALID_SPEC, message),
        ConditionChange(reasons.RECONCILING, "False", reasons.INVALID_SPEC, ""),
        ConditionChange(reasons.STALLED, "True", reasons.INVALID_SPEC, message),
    ]
    patch = DatabaseMigrationStatus()
    patch.phase = Phase.FAILED
    patch.message = message
    patch.observed_generation = generation
    patch.conditions = [Condition.model_validate(c) for c in conditions.apply([], changes, now, generation)]
    patch.completed_at = now
    await kube.patch_migration_status(
        body["metadata"]["namespace"], body["metadata"]["name"], {"status": status_patch_document(patch)}
    )


def outage_note(seconds: float, failures: int, error: str) -> str:
    """The log line of the first pass that got through after passes that failed (the API server or the database gone
    for a while): the run's history shows the gap and its cause, not only the operator's log."""
    return (
        f"the operator's passes failed for {int(seconds)}s ({failures} in a row, first: {error}); got through again, "
        "resuming from the status"
    )


async def reconcile_once(
    namespace: str, name: str, logger: Logger, first: bool = False, note: str | None = None
) -> float | None:
    """One pass. Returns seconds until the next pass (0: at once), or None when the run is finished. `first`: the
    first pass of this process over the run (a run found in flight then gets a resume note in its log); `note`: a line
    for the run's log about what happened before this pass (handlers.run_migration: an outage)."""
    body = await kube.get_migration(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        if body is not None:
            await gosignal.withdraw(str(body["metadata"].get("uid", "")))
        return None
    try:
        spec = parse_spec(body.get("spec") or {})
    except pydantic.ValidationError as error:
        await _invalid_spec(body, error, logger)
        return None
    ctx = Context(body=body, spec=spec, status=parse_status(body.get("status")), logger=logger)
    errors.remember(await context.values_to_scrub(ctx))  # what every text of this pass is scrubbed of
    if ctx.phase in TERMINAL_PHASES:
        await gosignal.withdraw(ctx.uid)
        await lock.release(body, spec)
        return None
    observed = await observe(ctx, now_iso())
    decision = machine.decide(spec, ctx.status, observed, ctx.name, ctx.uid)
    created, action_error = await execute(ctx, decision, now_iso())
    # a go this pass did not ask for is released: its Job ended, or the run left its phase
    await gosignal.withdraw_except(ctx.uid, {str(a.step) for a in decision.actions if isinstance(a, GiveGo)})
    resumed = resume_note(ctx.phase) if first else None
    if resumed:
        logger.info("%s", resumed)
    notes = tuple(n for n in (resumed, note) if n)
    update = new_status(ctx, decision, created, observed, now_iso(), action_error, notes)
    if _changed(ctx.body.get("status") or {}, update):
        # No resourceVersion precondition: status is the operator's alone (one daemon per run, passes in sequence),
        # so a client writing labels or annotations meanwhile must not make every pass conflict (a livelock).
        patch = {"status": update}
        try:
            await kube.patch_migration_status(namespace, name, patch)
        except kube.ApiError as error:
            if error.status == 409:  # someone wrote in between: re-read and recompute
                logger.info("status write conflicted (409); retrying with a fresh read")
                return 0.0
            raise
        if decision.phase != ctx.phase:
            logger.info("phase %s -> %s: %s", ctx.phase.value, decision.phase.value, decision.message)
        _record_metrics(ctx, decision)
        _event(ctx, decision, action_error)
    _window_metrics(ctx, decision)
    if action_error is not None:
        return guards.ERROR_BACKOFF[min(action_error.count, len(guards.ERROR_BACKOFF)) - 1]
    if decision.terminal:
        return None
    return decision.requeue_after if decision.requeue_after is not None else machine.core.POLL_JOB


async def on_delete(body: dict[str, Any], logger: Logger) -> None:
    """A run deleted in flight: never leave the app at 0 replicas, free the database."""
    try:
        spec = parse_spec(body.get("spec") or {})
    except pydantic.ValidationError:
        return
    status = parse_status(body.get("status"))
    await gosignal.withdraw(str(body["metadata"].get("uid", "")))
    phase = Phase(status.phase) if status.phase else Phase.PENDING
    if phase not in TERMINAL_PHASES and spec.maintenance and maintenance_touched(status):
        namespace = body["metadata"]["namespace"]
        try:
            await _stop_before_scaling_back(body, spec, status, logger)
            await _scale_back_on_delete(body, spec, status, phase, logger)
        except kube.ApiError as error:
            # the whole namespace is going: the app goes with it, and with scoped RBAC our Role in it may already
            # be gone (403); insisting would only keep the namespace Terminating
            if error.status not in (403, 404) or not await kube.namespace_terminating(namespace):
                raise
            logger.warning(
                "namespace %s is being deleted: not scaling %s back (%s)",
                namespace,
                spec.maintenance.deployment.name,
                error.reason,
            )
    await lock.release(body, spec)


async def _stop_before_scaling_back(
    body: dict[str, Any], spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, logger: Logger
) -> None:
    """The app comes back only once nothing of the run still writes: its Jobs gone (foreground deletion), their
    database sessions terminated. Until then kopf calls the handler again."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    remaining = await stopping.stop_all(namespace, name)
    if remaining:
        raise kopf.TemporaryError(f"waiting for Job(s) {', '.join(remaining)} to stop", delay=2)
    ctx = Context(body=body, spec=spec, status=status, logger=logger)
    try:
        login = await context.credentials(ctx)
        for step in status.jobs:
            await stopping.terminate_sessions(spec, login, step)
    except Exception as error:
        logger.warning("could not terminate the run's database sessions: %s", errors.text_of(error))


async def _scale_back_on_delete(
    body: dict[str, Any], spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, phase: Phase, logger: Logger
) -> None:
    assert spec.maintenance is not None
    namespace, name = body["metadata"]["namespace"], spec.maintenance.deployment.name
    deployment = await maintenance.observe(namespace, name)
    if deployment.exists:
        original = original_replicas(status, deployment, body["metadata"]["name"])
        if deployment.replicas != original:
            logger.warning("deleted during %s: scaling %s back to %d", phase.value, name, original)
            await maintenance.scale(namespace, name, original)
        await maintenance.clear_record(namespace, name, body["metadata"]["name"])
