"""EnteringMaintenance and ExitingMaintenance: the app Deployment scaled to 0 (its replica count recorded in
status and in an annotation first), drained (no pod, no app session in pg_stat_activity), and later scaled back
to the recorded count and waited on until available (its readiness probe is the app's health check).

Observes: the Deployment; while entering, the app's sessions once it is at 0.
Actions: ScaleDeployment (recording the original count), ClearMaintenanceRecord.
"""

from __future__ import annotations

from typing import Any

from .. import database, maintenance, reasons, stopping
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, MaintenanceStatus, Phase
from ..observations import ConditionChange, DeploymentObservation, Observations
from ..reasons import ARMED, Step
from . import context, prestart
from .context import Context
from .core import (
    IMAGE_OR_CONTAINER_FAILURES,
    POLL_DRAIN,
    ClearMaintenanceRecord,
    Decision,
    Run,
    ScaleDeployment,
    app_available,
    back_by,
    elapsed,
    enter,
    fail,
    iso,
    maintenance_touched,
    next_phase,
    original_replicas,
    prestarted_steps,
    stay,
    timed_out,
)

# How long the app keeps serving while the pre-started Jobs start (then it is scaled down whatever they do), and how
# often that start is looked at meanwhile (their sessions are not Kubernetes events).
PRESTART_HEAD_START = 30.0
HEAD_START_POLL = 0.25
# Why a pre-started pod may not start that the scale-down would not cure (an image that cannot be pulled, a missing
# Secret key): the app keeps serving past the head start while one of them lasts, and the stuck-Job guard fails the
# run at its grace (guards.POD_START_GRACE) with the app never touched. Not "Unschedulable": the app's own pods may be
# what keeps them off the node, and scaling the app down is what lets them on.
HOLDS_THE_SCALE_DOWN = IMAGE_OR_CONTAINER_FAILURES
ARMED_STEP_OF = {armed: step for step, armed in ARMED.items()}


async def observe_deployment(ctx: Context) -> dict[str, Any]:
    if not ctx.spec.maintenance:
        return {}
    return {"deployment": await maintenance.observe(ctx.namespace, ctx.spec.maintenance.deployment.name)}


async def observe_entering(ctx: Context) -> dict[str, Any]:
    fields = await observe_deployment(ctx)
    deployment = fields.get("deployment")
    if deployment is not None and deployment.exists and deployment.replicas == 0:
        fields["app_sessions"] = tuple(await database.sessions(ctx.spec, await context.credentials(ctx)))
    armed = [ARMED[step] for step in prestarted_steps(ctx.spec) if ARMED[step] in ctx.status.jobs]
    if armed and deployment is not None and deployment.exists and not maintenance_touched(ctx.status):
        names = {stopping.application_name(step): step for step in armed}
        found = await database.waiting_for_go(ctx.spec, await context.credentials(ctx), sorted(names))
        fields["armed_waiting"] = tuple(str(ARMED_STEP_OF[names[name]]) for name in found)
        # the pods not connected yet: why (an image that cannot be pulled holds the scale-down, `_head_start`)
        fields["jobs"] = {}
        for name, step in names.items():
            if name not in found:
                fields["jobs"].update(await context.job(ctx, step, read_log=False))
    return fields


def _app(spec: DatabaseMigrationSpec, obs: Observations) -> tuple[str, DeploymentObservation | None]:
    """The maintenance Deployment's name, and what was seen of it (None when it does not exist)."""
    assert spec.maintenance is not None  # these phases are in the run only with spec.maintenance
    found = obs.deployment if obs.deployment is not None and obs.deployment.exists else None
    return spec.maintenance.deployment.name, found


def decide_entering(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run
) -> Decision:
    """Scale to 0, wait for the drain; with maintenance.prestartMigration, the backup and migrate Jobs are created
    along the way (`prestart.arm`), so their pods start while the app drains."""
    refused = prestart.refusal(status, obs)
    head_start = _head_start(spec, status, obs, refused)
    if head_start is not None:
        decision = head_start if refused else prestart.arm(spec, status, head_start)
    else:
        decision = _decide_entering(spec, status, obs, run)
        arming = decision.phase in (Phase.ENTERING_MAINTENANCE, next_phase(Phase.ENTERING_MAINTENANCE, spec))
        if arming and not refused:
            decision = prestart.arm(spec, status, decision)
    if refused and not (status.maintenance and status.maintenance.prestart_refused):
        # recorded once, so no later pass asks again; the record of the scale-down keeps it (`_decide_entering`)
        record = decision.status.maintenance or status.maintenance or MaintenanceStatus()
        decision.record(maintenance=record.model_copy(update={"prestart_refused": refused}))
        line = f"could not pre-start the backup and migrate Jobs ({refused}): they start in their phases"
        decision.log = f"{line}; {decision.log}" if decision.log else line
        decision.warning = True
    return decision


def _head_start(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, refused: str | None
) -> Decision | None:
    """Before the app is scaled down, the pre-started Jobs get up to PRESTART_HEAD_START seconds to start their pods
    (and Flyway its JVM) and connect, the app still serving: their start is then outside the window. None when there
    is nothing to wait for (no pre-started Job, all waiting for their go, the app down already, the head start used).
    After a refusal, only the pre-started Jobs created before it are waited for."""
    steps = prestart.armed_steps(spec, status, refused)
    deployment = obs.deployment
    if not steps or deployment is None or not deployment.exists or maintenance_touched(status):
        return None
    if deployment.replicas == 0:
        return None
    waiting = set(obs.armed_waiting or ()) if all(ARMED[step] in status.jobs for step in steps) else set()
    starting = [step for step in steps if str(step) not in waiting]
    if not starting:
        return None
    assert spec.maintenance is not None
    held = [
        f"{ARMED[step]}: {job.waiting_reason}"
        for step in starting
        if (job := obs.jobs.get(ARMED[step])) is not None and job.waiting_reason in HOLDS_THE_SCALE_DOWN
    ]
    if held:
        message = (
            f"maintenance: a pre-started Job's pod cannot start ({'; '.join(held)}): "
            f"{spec.maintenance.deployment.name} keeps serving; the run fails if it has not started within its grace"
        )
        return stay(Phase.ENTERING_MAINTENANCE, message, reasons.PRESTARTING_JOBS, POLL_DRAIN)
    if elapsed(status, obs.now) >= PRESTART_HEAD_START:
        return None
    what = " and ".join("pg_dump" if step == Step.BACKUP else "flyway migrate" for step in starting)
    message = (
        f"maintenance: starting the pre-started {what} Job(s) before scaling {spec.maintenance.deployment.name} "
        "down (the app keeps serving)"
    )
    return stay(Phase.ENTERING_MAINTENANCE, message, reasons.PRESTARTING_JOBS, HEAD_START_POLL)


def _decide_entering(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run
) -> Decision:
    phase = Phase.ENTERING_MAINTENANCE
    deployment_name, deployment = _app(spec, obs)
    if deployment is None:
        return fail(spec, status, phase, reasons.DEPLOYMENT_NOT_FOUND, f"Deployment {deployment_name} not found")
    original = original_replicas(status, deployment, run.name)
    scaled_down_at = (status.maintenance.scaled_down_at if status.maintenance else None) or iso(obs.now)
    record = MaintenanceStatus(
        deployment=deployment_name,
        original_replicas=original,
        scaled_down_at=scaled_down_at,
        back_by=back_by(spec, scaled_down_at),
        prestart_refused=status.maintenance.prestart_refused if status.maintenance else None,
    )
    if deployment.replicas != 0:
        message = f"maintenance: scaling {deployment_name} from {original} to 0 replicas"
        decision = stay(phase, message, reasons.SCALING_DOWN, POLL_DRAIN, log=message, maintenance=record)
        decision.actions.append(ScaleDeployment(0, record_original=original))
        decision.conditions.append(ConditionChange(reasons.MAINTENANCE_MODE, "True", reasons.SCALING_DOWN, message))
        return decision
    blockers = []
    if deployment.pods:
        blockers.append(f"{deployment.pods} pod(s) of {deployment_name}")
    if obs.app_sessions:
        sessions = ", ".join(s.describe() for s in obs.app_sessions[:5])
        blockers.append(f"{len(obs.app_sessions)} app session(s) in pg_stat_activity: {sessions}")
    if blockers:
        if timed_out(status, obs, spec.timeouts.drain_seconds):
            condition = ConditionChange(reasons.MAINTENANCE_MODE, "False", reasons.DRAIN_TIMEOUT, "drain timed out")
            return fail(
                spec,
                status,
                phase,
                reasons.DRAIN_TIMEOUT,
                f"after {spec.timeouts.drain_seconds}s still waiting for " + " and ".join(blockers),
                [condition],
            )
        message = "maintenance: waiting for " + " and ".join(blockers)
        return stay(phase, message, reasons.DRAINING, POLL_DRAIN, maintenance=record)
    message = f"maintenance: {deployment_name} scaled to 0 (was {original}), no app session left"
    decision = enter(next_phase(phase, spec), message, maintenance=record)
    decision.conditions.append(ConditionChange(reasons.MAINTENANCE_MODE, "True", reasons.DRAINED, message))
    return decision


def scaled_by_someone_else(deployment: DeploymentObservation, original: int) -> bool:
    """Whether the app runs replicas the operator did not give it: above 0 and last scaled by another field manager
    (with no managedFields to tell, a count that is neither 0 nor the recorded one). The operator's own scale-up, done
    before a restart lost its record, is its field manager's and the recorded count: not someone else's."""
    if deployment.replicas == 0:
        return False
    if deployment.replicas_manager is None:
        return deployment.replicas != original
    return deployment.replicas_manager != maintenance.FIELD_MANAGER


def decide_exiting(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run
) -> Decision:
    phase = Phase.EXITING_MAINTENANCE
    deployment_name, deployment = _app(spec, obs)
    if deployment is None:
        return fail(
            spec,
            status,
            phase,
            reasons.DEPLOYMENT_NOT_FOUND,
            f"Deployment {deployment_name} disappeared during the migration",
        )
    original = original_replicas(status, deployment, run.name)
    record = (status.maintenance or MaintenanceStatus()).model_copy(
        update={"deployment": deployment_name, "original_replicas": original}
    )
    foreign = (
        maintenance_touched(status) and record.scaled_up_at is None and scaled_by_someone_else(deployment, original)
    )
    if foreign or deployment.replicas != original:
        back = f"scaling {deployment_name} back to {original} replicas"
        message = f"exiting maintenance: {back}"
        if foreign:
            # The hold guard reverts a scale-up before every step while the app must be down; one that lands after
            # its last look (the end of Verifying) is found here, and is said: the app served during the window's end.
            then = back if deployment.replicas != original else f"{original} is its recorded count: keeping it"
            message = (
                f"exiting maintenance: {deployment_name} was {deployment.scaled_by()} while it had to be down "
                f"(after the last check of the maintenance window); {then}"
            )
        record.scaled_up_at = iso(obs.now)
        decision = stay(phase, message, reasons.SCALING_UP, POLL_DRAIN, log=message, maintenance=record)
        decision.warning = foreign
        if deployment.replicas != original:
            decision.actions.append(ScaleDeployment(original))
        return decision
    if not app_available(deployment, original):
        if timed_out(status, obs, spec.timeouts.ready_seconds):
            return fail(
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
        return stay(phase, message, reasons.SCALING_UP, POLL_DRAIN, maintenance=record)
    before = status.before.version if status.before else None
    after = status.after.version if status.after else None
    message = (
        f"migrated {spec.database.name} from version {before or 'none'} to {after or '?'} "
        f"({len(status.applied)} migration(s)); {deployment_name} back at {original} replicas"
    )
    if record.scaled_up_at is None:
        record.scaled_up_at = iso(obs.now)
    decision = enter(Phase.SUCCEEDED, message, maintenance=record)
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
