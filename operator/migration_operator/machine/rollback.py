"""RollingBack, and the rollback strategies (the runbook's options A, B and C, and None).

Order, whatever the strategy: (1) put the database back when the migration may have changed it, with the app
down while that happens; (2) bring the app back to its recorded replicas and wait until it is available; (3) end
`RolledBack` (Stalled: the run did not do what it was created for) or `Failed` when a step of the rollback failed.

    Restore     the backup given back by the run's backup method (backup.py: Dump -> `restore` Job,
                Clone -> rename the clone into place)
    Repair      `flyway repair` by the `repair` Job (failed rows removed; a transactional migration was already
                rolled back by PostgreSQL)
    Compensate  the user's SQL in one transaction by the `compensate` Job
    None        stop: the database as Flyway left it, the app left at 0 for a human

To add a strategy: a `RollbackStrategy` value in models.py, a class here with the `RollbackPlan` members, an entry
in `ROLLBACK_STRATEGIES` (a unit test fails while one is missing), its reason in reasons.py, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .. import database, jobs, pg_scripts, reasons
from ..models import (
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    MaintenanceStatus,
    Phase,
    RollbackFailurePolicy,
    RollbackStatus,
    RollbackStrategy,
    Snapshot,
)
from ..observations import ConditionChange, DeploymentObservation, Observations
from ..reasons import ROLLBACK_STEPS, Step
from . import backup, context
from .context import Context
from .core import (
    POLL_DRAIN,
    Action,
    ClearMaintenanceRecord,
    Decision,
    PodBuilder,
    ReleaseLock,
    Run,
    ScaleDeployment,
    Situation,
    StopJob,
    TerminateSessions,
    app_available,
    first_line,
    iso,
    maintenance_touched,
    original_replicas,
    rollback_job_step,
    stalled_end,
    stay,
    timed_out,
)
from .maintenance import observe_deployment, scaled_by_someone_else

PHASE = Phase.ROLLING_BACK
SNAPSHOT_LOCK_TIMEOUT_MS = 5_000


class RollbackPlan(Protocol):
    """How one strategy puts the database back."""

    # False: the strategy leaves the database as Flyway left it and ends the run at once.
    @property
    def changes_database(self) -> bool: ...

    # What the outcome says the strategy did, and the RolledBack condition's reason.
    @property
    def done(self) -> str: ...

    @property
    def succeeded_reason(self) -> str: ...

    def pods(self) -> dict[Step, PodBuilder]: ...

    async def observe(self, ctx: Context) -> dict[str, Any]: ...

    def decide(self, at: Situation, rollback: RollbackStatus) -> Decision: ...


class RestoreRollback:
    changes_database = True
    done = "database restored from the backup"
    succeeded_reason = reasons.RESTORE_SUCCEEDED

    def pods(self) -> dict[Step, PodBuilder]:
        return {}  # the backup method's (backup.py)

    async def observe(self, ctx: Context) -> dict[str, Any]:
        return await backup.plan(ctx.spec).observe_restore(ctx)

    def decide(self, at: Situation, rollback: RollbackStatus) -> Decision:
        return backup.plan(at.spec).decide_restore(at, rollback)


@dataclass(frozen=True)
class JobRollback:
    """A strategy run by one Job of its own."""

    step: Step
    what: str
    pod: PodBuilder
    done: str
    succeeded_reason: str
    changes_database: bool = True

    def pods(self) -> dict[Step, PodBuilder]:
        return {self.step: self.pod}

    async def observe(self, ctx: Context) -> dict[str, Any]:
        return {"jobs": await context.job(ctx, self.step)}

    def decide(self, at: Situation, rollback: RollbackStatus) -> Decision:
        return rollback_job_step(self.step, self.what, at.obs, rollback)


def repair_pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    return jobs.flyway_pod(spec, Step.REPAIR, spec.timeouts.rollback_seconds)


def compensate_pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    """psql --single-transaction of rollback.compensate (inline SQL in env, or a ConfigMap key as a file)."""
    compensate = spec.rollback.compensate
    if compensate is None:
        raise ValueError("step compensate needs spec.rollback.compensate")
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if compensate.config_map_key_ref:
        ref = compensate.config_map_key_ref
        items = [{"key": ref.key, "path": "compensate.sql"}]
        volumes.append({"name": "compensate", "configMap": {"name": ref.name, "items": items}})
        mounts.append({"name": "compensate", "mountPath": "/compensate", "readOnly": True})
        env.append({"name": "COMPENSATE_FILE", "value": "/compensate/compensate.sql"})
    else:
        env.append({"name": "COMPENSATE_SQL", "value": compensate.sql or ""})
    return jobs.postgres_pod(
        spec,
        Step.COMPENSATE,
        pg_scripts.COMPENSATE_SCRIPT,
        spec.timeouts.rollback_seconds,
        env=env,
        volumes=volumes,
        mounts=mounts,
    )


class NoRollback:
    changes_database = False
    done = "database untouched"
    succeeded_reason = reasons.NOTHING_TO_ROLL_BACK

    def pods(self) -> dict[Step, PodBuilder]:
        return {}

    async def observe(self, ctx: Context) -> dict[str, Any]:
        return {}

    def decide(self, at: Situation, rollback: RollbackStatus) -> Decision:
        spec, status, _, _ = at
        original = status.maintenance.original_replicas if status.maintenance else None
        deployment_name = spec.maintenance.deployment.name if spec.maintenance else None
        app = (
            f"; {deployment_name} left at 0 replicas (original {original} in annotation "
            f"dbops.io/original-replicas): fix the database, then scale it back"
            if maintenance_touched(status)
            else ""
        )
        cause = rollback.error or rollback.reason or "unknown failure"
        text = (
            f"rollback.strategy None: stopped after {rollback.reason}: {first_line(cause, 600)}; "
            f"the database is as Flyway left it{app}"
        )
        return stalled_end(
            Phase.FAILED,
            reasons.ROLLBACK_DISABLED,
            text,
            [ConditionChange(reasons.ROLLED_BACK, "False", reasons.ROLLBACK_DISABLED, text)],
            [ReleaseLock()],
        )


ROLLBACK_STRATEGIES: dict[RollbackStrategy, RollbackPlan] = {
    RollbackStrategy.RESTORE: RestoreRollback(),
    RollbackStrategy.REPAIR: JobRollback(
        Step.REPAIR,
        "flyway repair",
        repair_pod,
        done="failed history rows repaired, database at its last good version",
        succeeded_reason=reasons.REPAIR_SUCCEEDED,
    ),
    RollbackStrategy.COMPENSATE: JobRollback(
        Step.COMPENSATE,
        "the compensating SQL",
        compensate_pod,
        done="compensating SQL applied",
        succeeded_reason=reasons.COMPENSATE_SUCCEEDED,
    ),
    RollbackStrategy.NONE: NoRollback(),
}


def strategy_of(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus) -> RollbackStrategy:
    """The strategy recorded when the rollback started (the spec's otherwise)."""
    return RollbackStrategy((status.rollback.strategy if status.rollback else None) or spec.rollback.strategy)


def _database_pending(rollback: RollbackStatus) -> bool:
    return (
        rollback.database_changed
        and not rollback.database_restored
        and not rollback.failed
        and not rollback.database_unchanged
    )


def _comparable(before: Snapshot | None) -> bool:
    return before is not None and before.schema_hash is not None


def _counted(snapshot: Snapshot) -> dict[str, int]:
    """The row counts that are counts (not the planner's estimates, which ANALYZE moves at will)."""
    estimated = set(snapshot.estimated_rows)
    return {table: n for table, n in snapshot.rows.items() if table not in estimated}


def unchanged(before: Snapshot | None, after: Snapshot) -> bool:
    """The database equals the "before" snapshot: no history row added (not even a failed one), the same catalog
    (definitions, owners, privileges, sequence positions), the same row counts and content checksums."""
    return (
        before is not None
        and _comparable(before)
        and after.last_installed_rank == before.last_installed_rank
        and after.schema_hash == before.schema_hash
        and _counted(after) == _counted(before)
        and after.checksums == before.checksums
    )


async def observe(ctx: Context) -> dict[str, Any]:
    fields = await observe_deployment(ctx)
    # every Job the run created, to stop what still runs before acting
    seen = {}
    for step in ctx.status.jobs:
        seen.update(await context.job(ctx, Step(step), read_log=False))
    rollback = ctx.status.rollback or RollbackStatus()
    stopped = rollback.sessions_ended and not still_running(Observations(jobs=seen), rollback)
    if _database_pending(rollback):
        if stopped and rollback.database_unchanged is None and _comparable(ctx.status.before):
            # did the failed migration change anything at all? (Flyway rolls a failed transactional one back)
            # Only once the run's earlier steps are stopped: a migrate session still holding its locks would make
            # the snapshot's count(*) wait (and its lock_timeout make this pass retry).
            fields["snapshot"] = await database.take_snapshot(
                ctx.spec, await context.credentials(ctx), ctx.uid, lock_timeout_ms=SNAPSHOT_LOCK_TIMEOUT_MS
            )
        fields.update(await ROLLBACK_STRATEGIES[strategy_of(ctx.spec, ctx.status)].observe(ctx))
    fields["jobs"] = {**seen, **fields.get("jobs", {})}
    return fields


def still_running(obs: Observations, rollback: RollbackStatus) -> list[Step]:
    """Jobs to stop before going on: any step still running that is not putting the database back (all of them
    once the rollback was given up)."""
    return [
        Step(step)
        for step, job in sorted(obs.jobs.items())
        if job.state == "Running" and (step not in ROLLBACK_STEPS or rollback.failed)
    ]


def _app_down(
    name: str, doing: str, database: str, status: DatabaseMigrationStatus, deployment: DeploymentObservation, run: Run,
    lead: str = "rollback",
) -> Decision:
    """Scales the app to 0 in RollingBack (or waits for its last pods). A count someone else gave it (Argo CD's
    self-heal, a person) is said in the log, with a Warning naming the field manager: the app may have served on a
    database that was being put back, or that nobody checked (`database` says which)."""
    if scaled_by_someone_else(deployment, original_replicas(status, deployment, run.name)):
        message = f"{lead}: {name} was {deployment.scaled_by()} while the database {database}; {doing}"
        decision = stay(PHASE, message, reasons.SCALING_DOWN, POLL_DRAIN, log=message)
        decision.warning = True
    else:
        decision = stay(PHASE, f"{lead}: {doing}", reasons.SCALING_DOWN, POLL_DRAIN)
    if deployment.replicas != 0:
        decision.actions.append(ScaleDeployment(0))
    return decision


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    rollback = status.rollback or RollbackStatus()
    strategy = strategy_of(spec, status)
    plan = ROLLBACK_STRATEGIES[strategy]
    cause = rollback.error or rollback.reason or "unknown failure"
    deployment = obs.deployment if spec.maintenance else None
    deployment_name = spec.maintenance.deployment.name if spec.maintenance else None
    expired = timed_out(status, obs, spec.timeouts.rollback_seconds)

    # 0. Stop what still runs (the migrate Job after its timeout, a restore Job after the rollback's) before acting.
    running = still_running(obs, rollback)
    if running:
        names = ", ".join(str(step) for step in running)
        decision = stay(PHASE, f"rollback: stopping the {names} Job(s) first", reasons.ROLLING_BACK, POLL_DRAIN)
        if decision.message != status.message:
            decision.log = decision.message
        decision.actions.extend(StopJob(step) for step in running)
        return decision
    if not rollback.sessions_ended:
        earlier = sorted(Step(step) for step in status.jobs if step not in ROLLBACK_STEPS)
        rollback = rollback.model_copy(update={"sessions_ended": True})
        decision = stay(PHASE, "rollback: ending the sessions of the earlier steps", reasons.ROLLING_BACK, 0.0)
        decision.actions.extend(TerminateSessions(step) for step in earlier)
        return decision.record(rollback=rollback)

    # 1. The database, when the migration (may have) changed it: nothing to do when it provably did not.
    if _database_pending(rollback) and obs.snapshot is not None and rollback.database_unchanged is None:
        same = unchanged(status.before, obs.snapshot)
        created = sorted(set(obs.snapshot.schemas) - set(status.before.schemas if status.before else []))
        rollback = rollback.model_copy(update={"database_unchanged": same, "drop_schemas": created})
        text = (
            "rollback: the database equals its state before the run (Flyway rolled the failed migration back): "
            "nothing to restore"
            if same
            else "rollback: the database changed since the run began: putting it back"
        )
        return stay(PHASE, text, reasons.ROLLING_BACK, 0.0, log=text, rollback=rollback)
    if _database_pending(rollback):
        if not plan.changes_database:
            return plan.decide(Situation(spec, status, obs, run), rollback)
        if expired:
            failure = f"rollback took longer than {spec.timeouts.rollback_seconds}s"
            rollback = rollback.model_copy(update={"failed": True, "failure": failure})
            return stay(
                PHASE,
                "rollback timed out; restoring the app",
                reasons.ROLLING_BACK,
                0.0,
                log=failure,
                rollback=rollback,
            )
        # The app must be down while the database is put back (it may have been scaled up already).
        if deployment is not None and deployment.exists and (deployment.replicas != 0 or deployment.pods):
            doing = f"stopping {deployment_name} before restoring the database"
            return _app_down(deployment_name or "", doing, "was being put back", status, deployment, run)
        return plan.decide(Situation(spec, status, obs, run), rollback)

    # 2. The app: back at its recorded replicas, or held at 0 when the database is in a state nobody checked.
    if keeps_app_down(spec, status, rollback):
        if deployment is not None and deployment.exists and deployment.replicas != 0:
            doing = f"keeping {deployment_name} at 0"
            name = deployment_name or ""
            return _app_down(name, doing, "is in a state nobody checked", status, deployment, run, "rollback failed")
    elif deployment is not None and deployment.exists and maintenance_touched(status):
        original = original_replicas(status, deployment, run.name)
        if deployment.replicas != original:
            record = (status.maintenance or MaintenanceStatus()).model_copy(
                update={"original_replicas": original, "scaled_up_at": iso(obs.now)}
            )
            text = f"rollback: scaling {deployment_name} back to {original} replicas"
            decision = stay(PHASE, text, reasons.SCALING_UP, POLL_DRAIN, log=text, maintenance=record)
            decision.actions.append(ScaleDeployment(original))
            return decision
        if not app_available(deployment, original) and not expired:
            return stay(
                PHASE,
                f"rollback: waiting for {deployment_name} to be available ({deployment.available_replicas}/{original})",
                reasons.SCALING_UP,
                POLL_DRAIN,
            )
        if not app_available(deployment, original):
            rollback = rollback.model_copy(
                update={
                    "failed": True,
                    "failure": rollback.failure or f"{deployment_name} not available after the rollback",
                }
            )

    # 3. The outcome.
    if rollback.failed:
        return failed_end(spec, status, rollback)
    actions: list[Action] = (
        [ClearMaintenanceRecord(), ReleaseLock()] if maintenance_touched(status) else [ReleaseLock()]
    )
    changed = rollback.database_changed and not rollback.database_unchanged
    how = plan.done if changed else NoRollback.done
    if rollback.database_unchanged:
        how = "nothing to restore: the database equals its state before the run"
    app = f", {deployment_name} back at its replicas" if maintenance_touched(status) else ""
    text = f"rolled back ({how}{app}) after {rollback.reason}: {first_line(cause, 600)}"
    reason = plan.succeeded_reason if changed else reasons.NOTHING_TO_ROLL_BACK
    return stalled_end(
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
        rollback=rollback,
    )


def keeps_app_down(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, rollback: RollbackStatus) -> bool:
    """The database part of the rollback failed (its state is unknown) and the spec says a human decides."""
    database_unknown = rollback.failed and rollback.database_changed and not rollback.database_restored
    return (
        database_unknown
        and maintenance_touched(status)
        and spec.rollback.on_failure == RollbackFailurePolicy.KEEP_APP_DOWN
    )


def failed_end(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, rollback: RollbackStatus) -> Decision:
    """The rollback failed: Failed and Stalled, saying where the database and the app are."""
    cause = rollback.error or rollback.reason or "unknown failure"
    text = f"rollback failed: {rollback.failure}; the run failed with {rollback.reason}: {first_line(cause, 500)}"
    extra: dict[str, Any] = {}
    if keeps_app_down(spec, status, rollback):
        assert spec.maintenance is not None
        original = status.maintenance.original_replicas if status.maintenance else None
        text += (
            f"; {spec.maintenance.deployment.name} kept at 0 replicas (rollback.onFailure KeepAppDown; original "
            f"{original} in annotation dbops.io/original-replicas): check the database, then scale it back"
        )
        extra["maintenance"] = (status.maintenance or MaintenanceStatus()).model_copy(update={"held_down": True})
        actions: list[Action] = [ReleaseLock()]  # the annotation stays: it is how a human finds the replicas
    else:
        actions = [ClearMaintenanceRecord(), ReleaseLock()] if maintenance_touched(status) else [ReleaseLock()]
    return stalled_end(
        Phase.FAILED,
        reasons.ROLLBACK_FAILED,
        text,
        [ConditionChange(reasons.ROLLED_BACK, "False", reasons.ROLLBACK_FAILED, text)],
        actions,
        rollback=rollback,
        **extra,
    )


def abandon(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, why: str) -> Decision:
    """The rollback cannot go on as planned (its deadline passed, or an error that will not go away): give the
    database part up and go to the app part; when that too cannot finish, end here, saying what is known."""
    rollback = status.rollback or RollbackStatus(strategy=spec.rollback.strategy, reason=reasons.TIMEOUT, error=why)
    if not rollback.failed:
        rollback = rollback.model_copy(update={"failed": True, "failure": why})
        decision = stay(PHASE, f"rollback: giving up the database part: {why}", reasons.ROLLING_BACK, 0.0, log=why)
        decision.warning = True
        return decision.record(rollback=rollback)
    if spec.maintenance and maintenance_touched(status) and not keeps_app_down(spec, status, rollback):
        original = status.maintenance.original_replicas if status.maintenance else None
        rollback = rollback.model_copy(
            update={
                "failure": f"{rollback.failure}; then {why}: {spec.maintenance.deployment.name} may still be at 0 "
                f"replicas (original {original}, annotation dbops.io/original-replicas)"
            }
        )
    return failed_end(spec, status, rollback)
