"""BackingUp, and the backup methods: each method says how it takes the backup and how it gives it back (the
`Restore` rollback strategy asks the run's method).

    Dump   pg_dump -Fc (gzip level backup.compression, 1 by default) by the `backup` Job onto the backup volume,
           verified before anything changes;
           given back by the `restore` Job.
    Clone  CREATE DATABASE <db>_pre_<id> TEMPLATE <db> by the operator (the app drained);
           given back by renaming the migrated database aside and the clone into its place.

To add a method: a `BackupMethod` value in models.py, a class here with the `BackupPlan` members, an entry in
`BACKUP_METHODS` (a unit test fails while one is missing), and its tests.
"""

from __future__ import annotations

from typing import Any, Protocol

from .. import database, gosignal, jobs, pg_scripts, reasons
from ..models import (
    BackupMethod,
    BackupStatus,
    DatabaseMigrationSpec,
    DatabaseMigrationStatus,
    Phase,
    RollbackStatus,
)
from ..observations import ConditionChange, Observations
from ..reasons import Step
from . import context
from .context import Context
from .core import (
    POLL_RETRY,
    AdoptJob,
    CloneDatabase,
    CreateJob,
    Decision,
    GiveGo,
    PodBuilder,
    Run,
    Situation,
    SwapCloneBack,
    TerminateSessions,
    adoptable,
    adopted,
    before_drained,
    clone_names,
    enter,
    fail,
    first_line,
    iso,
    lost_before_go,
    next_phase,
    restore_scope,
    rollback_job_step,
    stay,
    timed_out,
    work_phases,
)

PHASE = Phase.BACKING_UP
# After giving a pre-started pg_dump Job its go: the next pass (the snapshot beside the dump) comes this soon.
SNAPSHOT_SOON = 0.2


class BackupPlan(Protocol):
    """How one backup method takes the backup (BackingUp) and gives it back (rollback strategy Restore)."""

    def pods(self) -> dict[Step, PodBuilder]: ...

    async def observe(self, ctx: Context) -> dict[str, Any]: ...

    def decide(self, at: Situation) -> Decision: ...

    async def observe_restore(self, ctx: Context) -> dict[str, Any]: ...

    def decide_restore(self, at: Situation, rollback: RollbackStatus) -> Decision: ...


def backup_failed(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, error: str) -> Decision:
    condition = ConditionChange(reasons.BACKUP_COMPLETE, "False", reasons.BACKUP_FAILED, first_line(error))
    return fail(spec, status, PHASE, reasons.BACKUP_FAILED, error, [condition])


def backup_complete(spec: DatabaseMigrationSpec, message: str, backup: BackupStatus) -> Decision:
    decision = enter(next_phase(PHASE, spec), message, backup=backup)
    decision.conditions.append(ConditionChange(reasons.BACKUP_COMPLETE, "True", reasons.BACKUP_SUCCEEDED, message))
    return decision


# ---------------------------------------------------------------------------------------------------- Dump
def snapshot_beside_the_dump(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus) -> bool:
    """Take the migration's "before" snapshot while the pg_dump Job runs, not when Migrating starts: the app is
    drained already (maintenance comes before the backup) and nothing but the read-only dump touches the database
    until the migrate Job, so it is the same "before", and its count(*) of big tables leaves the window's critical
    path. Once per run (`Snapshot.drained`). Not without maintenance (the app still writes: the latest moment is the
    most faithful) nor with the backup before maintenance."""
    phases = work_phases(spec)
    drained_first = (
        Phase.ENTERING_MAINTENANCE in phases
        and phases.index(Phase.ENTERING_MAINTENANCE) < phases.index(Phase.BACKING_UP)
    )
    return drained_first and not before_drained(status)


class DumpBackup:
    def pods(self) -> dict[Step, PodBuilder]:
        return {Step.BACKUP: self.backup_pod, Step.RESTORE: self.restore_pod}

    @staticmethod
    def backup_pod(spec: DatabaseMigrationSpec, run: Run, step: Step = Step.BACKUP) -> jobs.PodParts:
        volume = jobs.backup_volume(spec, run.name, run.uid)
        volume["env"] = [*volume["env"], {"name": "BACKUP_COMPRESSION", "value": str(spec.backup.compression)}]
        return jobs.postgres_pod(spec, step, pg_scripts.BACKUP_SCRIPT, spec.timeouts.backup_seconds, **volume)

    @staticmethod
    def restore_pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
        volume = jobs.backup_volume(spec, run.name, run.uid)
        return jobs.postgres_pod(
            spec, Step.RESTORE, pg_scripts.RESTORE_SCRIPT, spec.timeouts.rollback_seconds, **volume
        )

    async def observe(self, ctx: Context) -> dict[str, Any]:
        fields: dict[str, Any] = {"jobs": await context.job_or_armed(ctx, Step.BACKUP)}
        # an adopted pre-started Job dumps only once it has its go (this pass gives it: the snapshot waits a pass)
        dumping = not adopted(ctx.status, Step.BACKUP) or gosignal.given(ctx.uid, Step.BACKUP)
        running = fields["jobs"][Step.BACKUP].state == "Running"
        if running and dumping and snapshot_beside_the_dump(ctx.spec, ctx.status):
            login = await context.credentials(ctx)
            fields["snapshot"] = (await database.take_snapshot(ctx.spec, login, ctx.uid)).model_copy(
                update={"drained": True}
            )
        return fields

    def decide(self, at: Situation) -> Decision:
        spec, status, obs, run = at
        job = obs.job(Step.BACKUP)
        running = f"backup: pg_dump of {spec.database.name} running"
        if job.state == "Absent":
            record = BackupStatus(
                method=BackupMethod.DUMP.value,
                pvc=spec.backup.volume.claim_name if spec.backup.volume else None,
                path=jobs.backup_file(run.name, run.uid),
                verified=False,
            )
            condition = ConditionChange(reasons.BACKUP_COMPLETE, "False", reasons.BACKING_UP, "pg_dump running")
            if adoptable(Step.BACKUP, status, obs):
                log = "the pre-started pg_dump Job is the backup step: giving it the go"
                decision = stay(PHASE, running, reasons.BACKING_UP, 0.0, log=log, backup=record)
                decision.actions.append(AdoptJob(Step.BACKUP, Step.ARMED_BACKUP))
                decision.conditions.append(condition)
                return decision
            log = "created the pg_dump Job"
            lost = lost_before_go(Step.BACKUP, status, obs)
            if lost:
                log = f"the pre-started pg_dump Job ended before its go ({lost}): {log}"
            decision = stay(PHASE, running, reasons.BACKING_UP, log=log, backup=record)
            if lost:
                decision.actions.append(TerminateSessions(Step.ARMED_BACKUP))
            scope = restore_scope(spec, status.before)
            decision.actions.append(CreateJob(Step.BACKUP, (("DUMP_SCHEMAS", " ".join(scope)),)))
            decision.conditions.append(condition)
            return decision
        if job.state == "Running":
            if timed_out(status, obs, spec.timeouts.backup_seconds):
                return backup_failed(spec, status, f"backup took longer than {spec.timeouts.backup_seconds}s")
            decision = stay(PHASE, running, reasons.BACKING_UP)
            if obs.snapshot is not None and obs.snapshot.drained:
                decision.record(before=obs.snapshot)
            if adopted(status, Step.BACKUP):
                decision.actions.append(GiveGo(Step.BACKUP))
                if obs.snapshot is None and snapshot_beside_the_dump(spec, status):
                    # the next pass, the go held, takes the snapshot beside the dump (soon, not at once: while an
                    # earlier leader's session still holds the go, this process cannot take it, and retries)
                    decision.requeue_after = SNAPSHOT_SOON
            return decision
        summary = pg_scripts.parse_backup_output(job.output)
        if job.state == "Failed" or summary is None or not summary.get("verified"):
            error = (summary or {}).get("error") or job.failure or "the backup Job failed without output"
            return backup_failed(spec, status, str(error))
        backup = (status.backup or BackupStatus()).model_copy(
            update={
                "method": BackupMethod.DUMP.value,
                "size_bytes": int(summary.get("sizeBytes", 0)),
                "verified": True,
                "completed_at": iso(obs.now),
                "schemas": list(summary.get("schemas") or restore_scope(spec, status.before)),
            }
        )
        if backup.path is None:
            backup.path = jobs.backup_file(run.name, run.uid)
        if backup.pvc is None and spec.backup.volume:
            backup.pvc = spec.backup.volume.claim_name
        how = " as pg_dump wrote it" if summary.get("readBack") == "streamed" else ""
        message = (
            f"backup complete: {backup.size_bytes} bytes in {backup.pvc}:{backup.path}, "
            f"{summary.get('tocEntries', '?')} entries, read back whole with pg_restore{how}"
        )
        return backup_complete(spec, message, backup)

    async def observe_restore(self, ctx: Context) -> dict[str, Any]:
        return {"jobs": await context.job(ctx, Step.RESTORE)}

    def decide_restore(self, at: Situation, rollback: RollbackStatus) -> Decision:
        spec, status, _, _ = at
        scope = (status.backup.schemas if status.backup else None) or restore_scope(spec, status.before)
        env = (("DUMP_SCHEMAS", " ".join(scope)), ("DROP_SCHEMAS", " ".join(rollback.drop_schemas)))
        return rollback_job_step(Step.RESTORE, "pg_restore of the backup", at.obs, rollback, env)


# --------------------------------------------------------------------------------------------------- Clone
class CloneBackup:
    def pods(self) -> dict[Step, PodBuilder]:
        return {}

    async def observe(self, ctx: Context) -> dict[str, Any]:
        clone_name, failed_name = clone_names(ctx.spec, ctx.uid)
        login = await context.credentials(ctx)
        return {"clone": await database.clone_state(ctx.spec, login, clone_name, failed_name)}

    def decide(self, at: Situation) -> Decision:
        spec, status, obs, run = at
        clone_name, _ = clone_names(spec, run.uid)
        clone = obs.clone
        if clone is not None and clone.clone_exists:
            backup = BackupStatus(
                method=BackupMethod.CLONE.value,
                clone_database=clone_name,
                size_bytes=clone.size_bytes,
                verified=True,
                completed_at=iso(obs.now),
            )
            return backup_complete(spec, f"backup complete: cloned {spec.database.name} to {clone_name}", backup)
        error = obs.last_error.message if obs.last_error else None
        if timed_out(status, obs, spec.timeouts.backup_seconds):
            return backup_failed(spec, status, error or "clone not created in time")
        message = f"backup: CREATE DATABASE {clone_name} TEMPLATE {spec.database.name}"
        if error:
            message += f" (retrying: {first_line(error)})"
        decision = stay(
            PHASE,
            message,
            reasons.BACKING_UP,
            POLL_RETRY,
            backup=BackupStatus(method=BackupMethod.CLONE.value, clone_database=clone_name, verified=False),
        )
        decision.actions.append(CloneDatabase(clone_name))
        return decision

    async def observe_restore(self, ctx: Context) -> dict[str, Any]:
        return await self.observe(ctx)

    def decide_restore(self, at: Situation, rollback: RollbackStatus) -> Decision:
        spec, _, obs, run = at
        phase = Phase.ROLLING_BACK
        clone_name, failed_name = clone_names(spec, run.uid)
        clone = obs.clone
        if clone is not None and clone.source_exists and not clone.clone_exists and clone.failed_copy_exists:
            rollback = rollback.model_copy(update={"database_restored": True})
            text = f"rollback: {spec.database.name} is the pre-run clone again ({failed_name} kept)"
            return stay(phase, text, reasons.ROLLING_BACK, 0.0, log=text, rollback=rollback)
        if clone is not None and not clone.clone_exists and not clone.failed_copy_exists:
            failure = f"clone {clone_name} is missing: cannot restore"
            rollback = rollback.model_copy(update={"failed": True, "failure": failure})
            return stay(phase, failure, reasons.ROLLING_BACK, 0.0, log=failure, rollback=rollback)
        message = f"rollback: renaming {clone_name} back to {spec.database.name}"
        if obs.last_error:
            message += f" (retrying: {first_line(obs.last_error.message)})"
        decision = stay(phase, message, reasons.ROLLING_BACK, POLL_RETRY)
        decision.actions.append(SwapCloneBack(clone_name, failed_name))
        return decision


BACKUP_METHODS: dict[BackupMethod, BackupPlan] = {
    BackupMethod.DUMP: DumpBackup(),
    BackupMethod.CLONE: CloneBackup(),
}


def plan(spec: DatabaseMigrationSpec) -> BackupPlan:
    return BACKUP_METHODS[BackupMethod(spec.backup.method)]


async def observe(ctx: Context) -> dict[str, Any]:
    return await plan(ctx.spec).observe(ctx)


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    return plan(spec).decide(Situation(spec, status, obs, run))
