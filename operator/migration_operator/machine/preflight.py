"""Preflight: everything that can be checked before the app or the database is touched. A failure here ends the
run `Failed` with the app untouched.

Observes: the objects the run needs (credentials Secret, migrations ConfigMap, Deployment, backup PVC and whether it
got bound, compensate ConfigMap), the database (login, failed history rows), the `validate` Job (flyway info +
validate), the migrations of the ConfigMap and, once the validate Job exists, a "before" snapshot and the Restore
check.
Actions: create the `validate` Job. With a Dump backup it also mounts the backup claim (read-only): a claim of a
`WaitForFirstConsumer` StorageClass (local-path, most cloud disks) is provisioned and bound for its first pod, and that
pod is then this Job's, before the app is touched, not the backup Job's inside the maintenance window. Its pod starts
only once the claim is bound; a claim still unbound after CLAIM_BIND_GRACE seconds fails preflight.
Outcomes: the pending list; nothing pending -> Succeeded (NothingToMigrate); dry run -> Succeeded (DryRunComplete);
else the first work phase.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from .. import database, flyway, jobs, kube, policy, reasons
from ..models import (
    BackupMethod,
    CredentialsSecret,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    PendingMigration,
    Phase,
    RollbackStrategy,
    psql_meta_command,
)
from ..observations import ConditionChange, Observations
from ..reasons import Step
from . import context
from .context import Context
from .core import (
    POLL_JOB,
    POLL_RETRY,
    CreateJob,
    Decision,
    Run,
    describe_pending,
    elapsed,
    enter,
    fail,
    first_line,
    next_phase,
    progress,
    restore_scope,
    stay,
    timed_out,
    version_key,
)

PHASE = Phase.PREFLIGHT
# How long the backup claim may stay unbound once the validate Job asks for it, as long as a pod that cannot start
# may wait (guards.POD_START_GRACE): a provisioner that is missing or failing, or no volume that fits, ends
# preflight with a message naming the claim, instead of a validate pod left Pending until preflight's timeout.
CLAIM_BIND_GRACE = 60


def pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    parts = jobs.flyway_pod(spec, Step.VALIDATE, spec.timeouts.preflight_seconds)
    claim = jobs.backup_claim_binding(spec)
    return dataclasses.replace(
        parts, volumes=[*parts.volumes, *claim["volumes"]], mounts=[*parts.mounts, *claim["mounts"]]
    )


def _name_unresolvable(message: str) -> bool:
    """A host name DNS does not know (a typo, a Service that does not exist): retrying will not help."""
    return "could not translate host name" in message or "Name or service not known" in message


def claim_problem(
    claim: str, phase: str | None, storage_class: str | None, selected_node: str | None, waited_seconds: float
) -> tuple[str, str] | None:
    """Why the backup claim cannot serve the run, judged from its status `waited_seconds` into preflight; None while
    it is Bound or may still become so."""
    if phase == "Bound":
        return None
    field = "spec.backup.volume"
    if phase == "Lost":
        return (
            reasons.BACKUP_VOLUME_NOT_FOUND,
            f"PersistentVolumeClaim {claim} ({field}) is Lost: the volume it was bound to is gone",
        )
    if waited_seconds < CLAIM_BIND_GRACE:
        return None
    where = f"StorageClass {storage_class}" if storage_class else "no StorageClass"
    if selected_node:
        where += f", node {selected_node} selected"
    return (
        reasons.BACKUP_VOLUME_NOT_FOUND,
        f"PersistentVolumeClaim {claim} ({field}) is still {phase or 'Pending'} {int(waited_seconds)}s after "
        f"preflight's validate Job asked for it ({where}): no volume was provisioned or bound for it, and the "
        f"backup could not be written. See `kubectl describe pvc {claim}` (its provisioner's events)",
    )


def _login_problems(
    ctx: Context, field: str, ref: CredentialsSecret, secret: kube.SecretRead | None
) -> list[tuple[str, str]]:
    """A login Secret that is missing, lacks a key, or has not opted in to serve this run (policy.py)."""
    if secret is None:
        return [(reasons.CREDENTIALS_SECRET_NOT_FOUND, f"Secret {ref.name} ({field}) not found in {ctx.namespace}")]
    refusal = policy.secret_problem(
        field, ref.name, secret.labels, secret.annotations, ctx.name, ctx.spec.database.host, ctx.namespace
    )
    if refusal is not None:
        return [refusal]
    if ref.username_key not in secret.values or ref.password_key not in secret.values:
        return [
            (
                reasons.CREDENTIALS_SECRET_NOT_FOUND,
                f"Secret {ref.name} ({field}) lacks key {ref.username_key} or {ref.password_key}",
            )
        ]
    return []


async def _claim_asked_for(ctx: Context, phase: str | None) -> float:
    """How long the backup claim has been asked for: since the validate Job that mounts it was created (a claim of a
    WaitForFirstConsumer class binds only then). 0 while there is no such Job (a database preflight cannot reach yet
    creates none): the claim is not to blame for that wait."""
    if phase in ("Bound", "Lost"):
        return 0.0
    validate = await kube.get_or_none("jobs", ctx.namespace, jobs.job_name(ctx.name, Step.VALIDATE))
    created = kube.parse_time(validate["metadata"].get("creationTimestamp")) if validate is not None else None
    return max(0.0, (datetime.now(UTC) - created).total_seconds()) if created is not None else 0.0


async def _missing(ctx: Context) -> list[tuple[str, str]]:
    """What preflight cannot find or may not use: (reason, message) each. Nothing here sends a credential anywhere."""
    spec, namespace = ctx.spec, ctx.namespace
    missing = policy.operator_problems(spec, policy.OperatorPolicy.from_environment(), namespace)
    field = "spec.database.credentialsSecret"
    missing += _login_problems(ctx, field, spec.database.credentials_secret, await context.credentials_secret(ctx))
    if spec.verify.credentials_secret is not None:
        field = "spec.verify.credentialsSecret"
        missing += _login_problems(ctx, field, spec.verify.credentials_secret, await context.check_secret(ctx))
    if spec.database.ca_secret is not None and await context.ca_certificate(ctx) is None:
        ca = spec.database.ca_secret
        missing.append(
            (reasons.CA_SECRET_NOT_FOUND, f"Secret {ca.name} with key {ca.key} (database.caSecret) not found")
        )
    if spec.maintenance:
        app = spec.maintenance.deployment.name
        deployment = await kube.get_or_none("deployments", namespace, app)
        if deployment is None:
            missing.append((reasons.DEPLOYMENT_NOT_FOUND, f"Deployment {app} (spec.maintenance) not found"))
        else:
            refusal = policy.deployment_problem(app, deployment["metadata"].get("labels"))
            missing += [refusal] if refusal else []
    # (the object or None, kind, name, reason, the field naming it) for each object the run needs, when it needs it
    needed: list[tuple[dict[str, Any] | None, str, str, str, str]] = []
    if spec.migrations.config_map:
        name = spec.migrations.config_map.name
        needed.append(
            (
                await kube.get_or_none("configmaps", namespace, name),
                "ConfigMap",
                name,
                reasons.MIGRATIONS_CONFIGMAP_NOT_FOUND,
                "spec.migrations.configMap",
            )
        )
    claim = jobs.dump_claim(spec)
    if claim is not None:
        needed.append(
            (
                await kube.get_or_none("persistentvolumeclaims", namespace, claim),
                "PersistentVolumeClaim",
                claim,
                reasons.BACKUP_VOLUME_NOT_FOUND,
                "spec.backup.volume",
            )
        )
    for found, kind, name, reason, field in needed:
        if found is None:
            missing.append((reason, f"{kind} {name} ({field}) not found"))
        elif name == claim and kind == "PersistentVolumeClaim":
            annotations = found["metadata"].get("annotations") or {}
            claim_phase = (found.get("status") or {}).get("phase")
            problem = claim_problem(
                name,
                claim_phase,
                (found.get("spec") or {}).get("storageClassName"),
                annotations.get("volume.kubernetes.io/selected-node"),
                await _claim_asked_for(ctx, claim_phase),
            )
            missing += [problem] if problem else []
    compensate = spec.rollback.compensate
    if spec.rollback.strategy == RollbackStrategy.COMPENSATE and compensate and compensate.config_map_key_ref:
        ref = compensate.config_map_key_ref
        config_map = await kube.get_or_none("configmaps", namespace, ref.name)
        if config_map is None or ref.key not in (config_map.get("data") or {}):
            missing.append(
                (
                    reasons.COMPENSATE_CONFIGMAP_NOT_FOUND,
                    f"ConfigMap {ref.name} with key {ref.key} (rollback.compensate) not found",
                )
            )
        elif meta := psql_meta_command(config_map["data"][ref.key]):
            missing.append(
                (
                    reasons.COMPENSATE_NOT_PLAIN_SQL,
                    f"ConfigMap {ref.name} key {ref.key} (rollback.compensate) holds a psql meta-command ({meta}): "
                    "the compensating SQL must be plain SQL",
                )
            )
    return missing


async def _local_migrations(ctx: Context) -> tuple[PendingMigration, ...] | None:
    if not ctx.spec.migrations.config_map:
        return None
    config_map = await kube.get_or_none("configmaps", ctx.namespace, ctx.spec.migrations.config_map.name)
    if config_map is None:
        return None
    found = [flyway.migration_file(key) for key in (config_map.get("data") or {})]
    return tuple(m for m in found if m is not None)


async def observe(ctx: Context) -> dict[str, Any]:
    missing = await _missing(ctx)
    fields: dict[str, Any] = {"missing": tuple(missing)}
    if missing:
        return fields  # no credential leaves the operator for a run that may not use it
    login = context.login(ctx, await context.secret_values(ctx), await context.ca_certificate(ctx))
    if login is None:
        return fields
    check = await database.check(ctx.spec, login)
    fields["database"] = check
    if check.reachable:
        fields["jobs"] = validate = await context.job(ctx, Step.VALIDATE)
        # The snapshot and the Restore check take the most time of a pass and decide nothing before flyway validate
        # has run (its JVM takes seconds to start): the first pass creates the validate Job without them, the
        # passes while it runs and the one that sees it end take them (the "before" snapshot is that last one's).
        if validate[Step.VALIDATE].state != "Absent":
            fields["snapshot"] = snapshot = await database.take_snapshot(ctx.spec, login, ctx.uid)
            if restores_a_dump(ctx.spec):
                scope = restore_scope(ctx.spec, snapshot)
                fields["restore_problems"] = tuple(await database.restore_problems(ctx.spec, login, scope))
        fields["local_migrations"] = await _local_migrations(ctx)
    return fields


def restores_a_dump(spec: DatabaseMigrationSpec) -> bool:
    return (
        spec.backup.enabled
        and spec.backup.method == BackupMethod.DUMP
        and spec.rollback.strategy == RollbackStrategy.RESTORE
    )


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


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    if obs.missing:
        reason, _ = obs.missing[0]
        return fail(spec, status, PHASE, reason, "; ".join(m for _, m in obs.missing))
    database_check = obs.database
    if database_check is None:
        return stay(PHASE, "preflight: connecting to the database", reasons.PREFLIGHT, POLL_RETRY)
    if not database_check.reachable:
        reason = database_check.reason or reasons.DATABASE_UNREACHABLE
        waited, patience = elapsed(status, obs.now), spec.timeouts.transient_error_seconds
        if reason == reasons.DATABASE_UNREACHABLE and not _name_unresolvable(database_check.message):
            if waited < patience:
                # a restart, a failover or a network blip: ride it out (the status says so at once), as the other
                # phases do with errors that may go away; a port nobody listens on fails after the same wait
                message = f"preflight: the database is unreachable, retrying for up to {patience}s: "
                decision = stay(PHASE, message + first_line(database_check.message), reasons.RETRYING, POLL_RETRY)
                if not (status.message or "").startswith(message):
                    decision.log, decision.warning = decision.message, True
                return decision
            return fail(spec, status, PHASE, reason, f"{database_check.message} (unreachable for {int(waited)}s)")
        return fail(spec, status, PHASE, reason, database_check.message)
    if database_check.failed_rows:
        rows = ", ".join(f"version {r.version} ({r.script})" for r in database_check.failed_rows)
        return fail(
            spec,
            status,
            PHASE,
            reasons.FAILED_MIGRATION_IN_HISTORY,
            f"{spec.migrations.table} has failed migration rows: {rows}. Fix the database and remove "
            "the rows (flyway repair) before migrating",
        )
    if obs.restore_problems:
        shown = "; ".join(obs.restore_problems[:5])
        more = f" (and {len(obs.restore_problems) - 5} more)" if len(obs.restore_problems) > 5 else ""
        return fail(
            spec,
            status,
            PHASE,
            reasons.RESTORE_NOT_POSSIBLE,
            f"rollback.strategy Restore could not put the database back as this role: {shown}{more}. Give the "
            "objects to the migration role (or a role it is a member of), or choose another rollback strategy",
        )
    if timed_out(status, obs, spec.timeouts.preflight_seconds):
        return fail(
            spec, status, PHASE, reasons.TIMEOUT, f"preflight took longer than {spec.timeouts.preflight_seconds}s"
        )

    job = obs.job(Step.VALIDATE)
    if job.state == "Absent":
        claim = jobs.dump_claim(spec)
        return Decision(
            phase=PHASE,
            message="preflight: running flyway info and validate",
            actions=[CreateJob(Step.VALIDATE)],
            conditions=progress(reasons.VALIDATING, "running flyway validate"),
            requeue_after=POLL_JOB,
            log="created the flyway validate Job"
            + (f" (it mounts the backup claim {claim} read-only: bound before the app is touched)" if claim else ""),
        )
    if job.state == "Running":
        return stay(PHASE, "preflight: flyway validate running", reasons.VALIDATING)
    result = flyway.parse_validate_output(job.output)
    if job.state == "Failed" or not result.successful:
        reason, message = flyway.classify_validate_failure(result, job.failure)
        return fail(spec, status, PHASE, reason, message)

    if result.pending is not None:
        pending: list[PendingMigration] | None = result.pending
    elif obs.local_migrations is not None:
        pending = compute_pending(obs.local_migrations, database_check.applied_versions, spec.migrations.target_version)
    else:
        pending = None
    current = result.schema_version or (obs.snapshot.version if obs.snapshot else None)
    fields: dict[str, Any] = {"pending": list(pending or [])}
    if obs.snapshot is not None:
        fields["before"] = obs.snapshot
    if pending == []:
        message = f"nothing to migrate: {spec.database.name} is at version {current or 'none'}"
        return enter(Phase.SUCCEEDED, message, reason=reasons.NOTHING_TO_MIGRATE, **fields)
    listing = describe_pending(pending) if pending else "unknown (image source without flyway info)"
    if spec.dry_run:
        message = (
            f"dry run complete: {len(pending or [])} pending migration(s) on "
            f"{spec.database.name} at version {current or 'none'}: {listing}"
        )
        return enter(Phase.SUCCEEDED, message, reason=reasons.DRY_RUN_COMPLETE, **fields)
    message = f"preflight passed: at version {current or 'none'}, pending: {listing}"
    decision = enter(next_phase(PHASE, spec), message, **fields)
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
