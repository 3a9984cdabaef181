"""One reconcile pass: read the object, observe, `phases.decide`, act, write status.

Called by the per-object daemon in handlers.py, again and again until the run is terminal. Every pass is
safe to repeat: Jobs are found by their deterministic names (creation tolerates 409 AlreadyExists), scaling
is absolute, the Lease is keyed by the run's uid, and the status write carries the resourceVersion it was
computed from, so a conflicting writer (409) makes us re-read and recompute instead of overwriting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import psycopg
import pydantic
from kubernetes.client.exceptions import ApiException

from . import conditions, constants, database, flyway, jobs, kube, lock, maintenance, metrics, phases, reasons
from .database import Credentials
from .models import (
    TERMINAL_PHASES,
    BackupMethod,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    PendingMigration,
    Phase,
    RollbackStrategy,
    parse_spec,
    parse_status,
)
from .phases import Decision, JobObservation, Observations

Logger = logging.Logger | logging.LoggerAdapter[Any]

# Last error of a Clone/Swap action per run uid: the next observation carries it (retries show why).
_database_action_errors: dict[str, str] = {}


@dataclass
class Context:
    body: dict[str, Any]
    spec: DatabaseMigrationSpec
    status: DatabaseMigrationStatus
    logger: Logger

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid", ""))

    @property
    def generation(self) -> int | None:
        value = self.body["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def phase(self) -> Phase:
        return Phase(self.status.phase) if self.status.phase else Phase.PENDING


# ---------------------------------------------------------------------------------------------- observing
async def observe_job(namespace: str, name: str) -> JobObservation:
    clients = kube.load()
    job = await kube.get_or_none(clients.batch.read_namespaced_job, name, namespace)
    if job is None:
        return phases.ABSENT
    status = job.status
    failed_condition = (
        next((c for c in (status.conditions or []) if c.type == "Failed" and c.status == "True"), None)
        if status
        else None
    )
    if status and (status.succeeded or 0) >= 1:
        state: phases.JobState = "Succeeded"
    elif failed_condition is not None:
        state = "Failed"
    else:
        return JobObservation("Running")
    output, exit_code, pod_reason = None, None, None
    uid = job.metadata.uid
    for label in ("batch.kubernetes.io/controller-uid", "controller-uid"):
        pods = await kube.call(clients.core.list_namespaced_pod, namespace, label_selector=f"{label}={uid}")
        if pods.items:
            break
    for pod in sorted(pods.items, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)):
        for container in (pod.status.container_statuses or []) if pod.status else []:
            terminated = container.state.terminated if container.state else None
            if terminated is not None:
                output, exit_code, pod_reason = terminated.message, terminated.exit_code, terminated.reason
    failure = None
    if state == "Failed":
        parts = [
            failed_condition.reason if failed_condition else None,
            failed_condition.message if failed_condition else None,
            f"exit code {exit_code}" if exit_code is not None else None,
            pod_reason if pod_reason not in (None, "Error", "Completed") else None,
        ]
        failure = ": ".join(p for p in parts if p) or "the Job failed"
    return JobObservation(state, output=output, failure=failure, exit_code=exit_code)


async def _secret_values(ctx: Context) -> dict[str, str] | None:
    secret = ctx.spec.database.credentials_secret
    return await kube.read_secret_values(ctx.namespace, secret.name, [secret.username_key, secret.password_key])


def _login(ctx: Context, values: dict[str, str] | None) -> Credentials | None:
    secret = ctx.spec.database.credentials_secret
    if not values or secret.username_key not in values or secret.password_key not in values:
        return None
    return Credentials(values[secret.username_key], values[secret.password_key])


async def credentials(ctx: Context) -> Credentials | None:
    return _login(ctx, await _secret_values(ctx))


async def _preflight_missing(ctx: Context) -> tuple[list[tuple[str, str]], Credentials | None]:
    """What preflight cannot find, and the login (read once: the Secret is one of the things it looks for)."""
    clients = kube.load()
    spec, namespace = ctx.spec, ctx.namespace
    missing: list[tuple[str, str]] = []
    secret = spec.database.credentials_secret
    values = await _secret_values(ctx)
    if values is None:
        missing.append((reasons.CREDENTIALS_SECRET_NOT_FOUND, f"Secret {secret.name} not found in {namespace}"))
    elif secret.username_key not in values or secret.password_key not in values:
        missing.append(
            (
                reasons.CREDENTIALS_SECRET_NOT_FOUND,
                f"Secret {secret.name} lacks key {secret.username_key} or {secret.password_key}",
            )
        )
    # (reader, kind, name, reason, the field naming it) for each object the run needs, when it needs it
    needed: list[tuple[Any, str, str, str, str]] = []
    if spec.migrations.config_map:
        needed.append((clients.core.read_namespaced_config_map, "ConfigMap", spec.migrations.config_map.name,
                       reasons.MIGRATIONS_CONFIGMAP_NOT_FOUND, "spec.migrations.configMap"))
    if spec.maintenance:
        needed.append((clients.apps.read_namespaced_deployment, "Deployment", spec.maintenance.deployment.name,
                       reasons.DEPLOYMENT_NOT_FOUND, "spec.maintenance"))
    if spec.backup.enabled and spec.backup.method == BackupMethod.DUMP and spec.backup.volume:
        needed.append((clients.core.read_namespaced_persistent_volume_claim, "PersistentVolumeClaim",
                       spec.backup.volume.claim_name, reasons.BACKUP_VOLUME_NOT_FOUND, "spec.backup.volume"))
    for reader, kind, name, reason, field in needed:
        if await kube.get_or_none(reader, name, namespace) is None:
            missing.append((reason, f"{kind} {name} ({field}) not found"))
    compensate = spec.rollback.compensate
    if spec.rollback.strategy == RollbackStrategy.COMPENSATE and compensate and compensate.config_map_key_ref:
        ref = compensate.config_map_key_ref
        config_map = await kube.get_or_none(clients.core.read_namespaced_config_map, ref.name, namespace)
        if config_map is None or ref.key not in (config_map.data or {}):
            missing.append(
                (
                    reasons.COMPENSATE_CONFIGMAP_NOT_FOUND,
                    f"ConfigMap {ref.name} with key {ref.key} (rollback.compensate) not found",
                )
            )
    return missing, _login(ctx, values)


async def _local_migrations(ctx: Context) -> tuple[PendingMigration, ...] | None:
    if not ctx.spec.migrations.config_map:
        return None
    config_map = await kube.get_or_none(
        kube.load().core.read_namespaced_config_map, ctx.spec.migrations.config_map.name, ctx.namespace
    )
    if config_map is None:
        return None
    found = [flyway.migration_file(key) for key in (config_map.data or {})]
    return tuple(m for m in found if m is not None)


def _rollback_step(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus) -> str | None:
    strategy = RollbackStrategy((status.rollback.strategy if status.rollback else None) or spec.rollback.strategy)
    if strategy == RollbackStrategy.RESTORE and spec.backup.method == BackupMethod.CLONE:
        return None
    return phases.ROLLBACK_STEPS.get(strategy)


async def observe(ctx: Context) -> Observations:
    spec, status, phase = ctx.spec, ctx.status, ctx.phase
    annotations = ctx.body["metadata"].get("annotations") or {}
    approved = annotations.get(constants.APPROVED_ANNOTATION) == "true"
    fields: dict[str, Any] = {"generation": ctx.generation, "approved": approved}
    step_jobs: dict[str, JobObservation] = {}

    async def job(step: str) -> None:
        step_jobs[step] = await observe_job(ctx.namespace, jobs.job_name(ctx.name, step))

    async def creds() -> Credentials:
        found = await credentials(ctx)
        if found is None:
            raise kopf.TemporaryError(
                f"credentials Secret {spec.database.credentials_secret.name} unreadable", delay=15
            )
        return found

    clone_name, failed_name = phases.clone_names(spec, ctx.uid)
    if phase in (Phase.PENDING, Phase.AWAITING_APPROVAL) and (approved or not spec.approval.required):
        fields["lock"] = await lock.acquire(ctx.body, spec)
    elif phase == Phase.PREFLIGHT:
        missing, login = await _preflight_missing(ctx)
        fields["missing"] = tuple(missing)
        if not missing and login is not None:
            check = await database.check(spec, login)
            fields["database"] = check
            if check.reachable:
                fields["snapshot"] = await database.take_snapshot(spec, login)
                fields["local_migrations"] = await _local_migrations(ctx)
                await job(phases.STEP_VALIDATE)
    elif phase == Phase.BACKING_UP:
        if spec.backup.method == BackupMethod.CLONE:
            fields["clone"] = await database.clone_state(
                spec, await creds(), clone_name, failed_name, _database_action_errors.get(ctx.uid)
            )
        else:
            await job(phases.STEP_BACKUP)
    elif phase == Phase.ENTERING_MAINTENANCE and spec.maintenance:
        deployment = await maintenance.observe(ctx.namespace, spec.maintenance.deployment.name)
        fields["deployment"] = deployment
        if deployment.exists and deployment.replicas == 0:
            fields["app_sessions"] = tuple(await database.sessions(spec, await creds()))
    elif phase == Phase.MIGRATING:
        await job(phases.STEP_MIGRATE)
        login = await creds()
        if step_jobs[phases.STEP_MIGRATE].state == "Absent" and not phases.database_changed(ctx.status):
            # the "before" snapshot, taken once: not when a deleted Job is re-created (its Flyway may still hold or
            # wait for locks, and count(*) would queue behind them)
            fields["snapshot"] = await database.take_snapshot(spec, login)
        elif step_jobs[phases.STEP_MIGRATE].state == "Running":
            try:
                fields["blocked_locks"] = tuple(await database.blocked_locks(spec, login))
                fields["app_sessions"] = tuple(await database.sessions(spec, login))
            except psycopg.Error as error:  # monitoring only: never fail the run for it
                ctx.logger.warning("lock monitoring failed: %s", error)
    elif phase == Phase.VERIFYING:
        last_rank = status.before.last_installed_rank if status.before else None
        fields["verification"] = await database.verify(spec, await creds(), last_rank)
    elif phase == Phase.EXITING_MAINTENANCE and spec.maintenance:
        fields["deployment"] = await maintenance.observe(ctx.namespace, spec.maintenance.deployment.name)
    elif phase == Phase.ROLLING_BACK:
        if spec.maintenance:
            fields["deployment"] = await maintenance.observe(ctx.namespace, spec.maintenance.deployment.name)
        step = _rollback_step(spec, status)
        if step:
            await job(step)
        elif spec.backup.method == BackupMethod.CLONE:
            fields["clone"] = await database.clone_state(
                spec, await creds(), clone_name, failed_name, _database_action_errors.get(ctx.uid)
            )
    return Observations(jobs=step_jobs, **fields)


# ---------------------------------------------------------------------------------------------- acting
async def execute(ctx: Context, decision: Decision) -> dict[str, str]:
    """Run the decision's actions in order; returns the Jobs created or found ({step: job name})."""
    created: dict[str, str] = {}
    clients = kube.load()
    for action in decision.actions:
        if isinstance(action, phases.CreateJob):
            manifest = jobs.build_job(ctx.body, ctx.spec, action.step)
            try:
                await kube.call(clients.batch.create_namespaced_job, ctx.namespace, manifest)
                ctx.logger.info("created Job %s", manifest["metadata"]["name"])
            except ApiException as error:
                if error.status != 409:
                    raise
            created[action.step] = manifest["metadata"]["name"]
        elif isinstance(action, phases.ScaleDeployment):
            assert ctx.spec.maintenance is not None
            await maintenance.scale(
                ctx.namespace,
                ctx.spec.maintenance.deployment.name,
                action.replicas,
                record_original=action.record_original,
                owner=ctx.name,
            )
            ctx.logger.info("scaled Deployment %s to %d", ctx.spec.maintenance.deployment.name, action.replicas)
        elif isinstance(action, phases.ClearMaintenanceRecord):
            if ctx.spec.maintenance:
                await maintenance.clear_record(ctx.namespace, ctx.spec.maintenance.deployment.name, ctx.name)
        elif isinstance(action, phases.CloneDatabase | phases.SwapCloneBack):
            login = await credentials(ctx)
            if login is None:
                raise kopf.TemporaryError("credentials Secret unreadable", delay=15)
            try:
                if isinstance(action, phases.CloneDatabase):
                    await database.create_clone(ctx.spec, login, action.clone_name)
                else:
                    await database.swap_clone_back(ctx.spec, login, action.clone_name, action.failed_name)
                _database_action_errors.pop(ctx.uid, None)
            except psycopg.Error as error:
                _database_action_errors[ctx.uid] = " ".join(str(error).split())
                ctx.logger.warning("%s failed: %s", type(action).__name__, error)
        elif isinstance(action, phases.ReleaseLock):
            await lock.release(ctx.body, ctx.spec)
    return created


def now_iso() -> str:
    return phases.iso(datetime.now(UTC))


def new_status(
    ctx: Context, decision: Decision, created_jobs: dict[str, str], observed: Observations, now: str
) -> dict[str, Any]:
    """The status to write (whole values for every key we own)."""
    old: dict[str, Any] = dict(ctx.body.get("status") or {})
    generation = ctx.generation
    current = old.get("conditions") or conditions.initial(now, generation)
    result: dict[str, Any] = dict(decision.status)
    result["phase"] = decision.phase.value
    result["message"] = decision.message[:2000]
    result["observedGeneration"] = generation
    result["conditions"] = conditions.apply(current, decision.conditions, now, generation)
    if old.get("phase") != decision.phase.value or not old.get("phaseStartedAt"):
        result["phaseStartedAt"] = now
    if not old.get("startedAt"):
        result["startedAt"] = now
    known_jobs = dict(old.get("jobs") or {})
    for step, observation in observed.jobs.items():
        if observation.state != "Absent":
            known_jobs[step] = jobs.job_name(ctx.name, step)
    known_jobs.update(created_jobs)
    if known_jobs != (old.get("jobs") or {}):
        result["jobs"] = known_jobs
    if decision.log:
        log = list(old.get("log") or [])
        log.append({"time": now, "phase": decision.phase.value, "message": decision.log[:1000]})
        result["log"] = log[-constants.LOG_LIMIT :]
    if decision.terminal and not old.get("completedAt"):
        result["completedAt"] = now
    if observed.lock is not None and observed.lock.acquired:
        result["lock"] = f"{lock.lease_namespace(ctx.namespace)}/{lock.lease_name(ctx.spec)}"
    return result


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


def _record_metrics(ctx: Context, decision: Decision, now: str) -> None:
    previous = ctx.phase
    if decision.phase == previous:
        return
    metrics.TRANSITIONS.labels(previous.value, decision.phase.value).inc()
    metrics.PHASE_DURATION.labels(previous.value).observe(max(phases.elapsed(ctx.status, datetime.now(UTC)), 0))
    if decision.terminal:
        metrics.OUTCOMES.labels(decision.phase.value).inc()
        maintenance_status = decision.status.get("maintenance") or (
            ctx.status.maintenance.model_dump(by_alias=True, exclude_none=True) if ctx.status.maintenance else {}
        )
        down = phases.parse_time(maintenance_status.get("scaledDownAt"))
        up = phases.parse_time(maintenance_status.get("scaledUpAt"))
        if down and up:
            metrics.APP_DOWNTIME.observe(max((up - down).total_seconds(), 0))


def _event(ctx: Context, decision: Decision) -> None:
    if not decision.log:
        return
    kopf.event(
        cast(Any, ctx.body),
        type="Warning" if decision.warning else "Normal",
        reason=decision.phase.value,
        message=decision.log[:1000],
    )


async def _invalid_spec(
    body: dict[str, Any],
    error: pydantic.ValidationError,
    logger: Logger,
) -> None:
    message = f"invalid spec: {error.errors()[0].get('loc')}: {error.errors()[0].get('msg')}"
    logger.error(message)
    now = now_iso()
    status = {
        "phase": Phase.FAILED.value,
        "message": message,
        "observedGeneration": body["metadata"].get("generation"),
        "conditions": conditions.apply(
            [],
            [
                phases.ConditionChange(reasons.READY, "False", reasons.INVALID_SPEC, message),
                phases.ConditionChange(reasons.RECONCILING, "False", reasons.INVALID_SPEC, ""),
                phases.ConditionChange(reasons.STALLED, "True", reasons.INVALID_SPEC, message),
            ],
            now,
            body["metadata"].get("generation"),
        ),
    }
    await kube.patch_migration_status(body["metadata"]["namespace"], body["metadata"]["name"], {"status": status})


async def reconcile_once(namespace: str, name: str, logger: Logger) -> float | None:
    """One pass. Returns seconds until the next pass (0: at once), or None when the run is finished."""
    body = await kube.get_migration(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        spec = parse_spec(body.get("spec") or {})
    except pydantic.ValidationError as error:
        await _invalid_spec(body, error, logger)
        return None
    ctx = Context(body=body, spec=spec, status=parse_status(body.get("status")), logger=logger)
    if ctx.phase in TERMINAL_PHASES:
        await lock.release(body, spec)
        return None
    observed = await observe(ctx)
    decision = phases.decide(spec, ctx.status, observed, ctx.name, ctx.uid)
    created = await execute(ctx, decision)
    now = now_iso()
    update = new_status(ctx, decision, created, observed, now)
    if _changed(ctx.body.get("status") or {}, update):
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": update}
        try:
            await kube.patch_migration_status(namespace, name, patch)
        except ApiException as error:
            if error.status == 409:  # someone wrote in between: re-read and recompute
                logger.info("status write conflicted (409); retrying with a fresh read")
                return 0.0
            raise
        if decision.phase != ctx.phase:
            logger.info("phase %s -> %s: %s", ctx.phase.value, decision.phase.value, decision.message)
        _record_metrics(ctx, decision, now)
        _event(ctx, decision)
    if decision.terminal:
        return None
    return decision.requeue_after if decision.requeue_after is not None else phases.POLL_JOB


async def on_delete(body: dict[str, Any], logger: Logger) -> None:
    """A run deleted in flight: never leave the app at 0 replicas, free the database."""
    try:
        spec = parse_spec(body.get("spec") or {})
    except pydantic.ValidationError:
        return
    status = parse_status(body.get("status"))
    phase = Phase(status.phase) if status.phase else Phase.PENDING
    if phase not in TERMINAL_PHASES and spec.maintenance and phases.maintenance_touched(status):
        namespace = body["metadata"]["namespace"]
        try:
            await _scale_back_on_delete(body, spec, status, phase, logger)
        except ApiException as error:
            # the whole namespace is going: the app goes with it, and with scoped RBAC our Role in it may already
            # be gone (403); insisting would only keep the namespace Terminating
            if error.status not in (403, 404) or not await kube.namespace_terminating(namespace):
                raise
            logger.warning(
                "namespace %s is being deleted: not scaling %s back (%s)",
                namespace, spec.maintenance.deployment.name, error.reason,
            )
    await lock.release(body, spec)


async def _scale_back_on_delete(
    body: dict[str, Any], spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, phase: Phase, logger: Logger
) -> None:
    assert spec.maintenance is not None
    namespace, name = body["metadata"]["namespace"], spec.maintenance.deployment.name
    deployment = await maintenance.observe(namespace, name)
    if deployment.exists:
        original = phases.original_replicas(status, deployment, body["metadata"]["name"])
        if deployment.replicas != original:
            logger.warning("deleted during %s: scaling %s back to %d", phase.value, name, original)
            await maintenance.scale(namespace, name, original)
        await maintenance.clear_record(namespace, name, body["metadata"]["name"])
