"""Migrating: `flyway migrate` by the `migrate` Job, with the runbook's safety flags (`flyway.command_line`).

Observes: the `migrate` Job; before creating it, the "before" snapshot (the app is drained now: the most
faithful one, taken once), unless it was taken beside the pg_dump Job already (`backup.snapshot_beside_the_dump`);
while it runs, blocked locks and other sessions (monitoring only).
Actions: create the `migrate` Job (again when someone deleted it mid-run: Flyway resumes from its history); or,
with maintenance.prestartMigration, adopt the `armed-migrate` Job created when the app started draining
(machine/prestart.py) and give it the go (gosignal.py) on every pass while it runs; replace it by an ordinary
`migrate` Job when it ended before its go.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .. import database, flyway, jobs, reasons
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase
from ..observations import ConditionChange, Observations
from ..reasons import Step
from . import context
from .context import Context
from .core import (
    POLL_JOB,
    AdoptJob,
    CreateJob,
    Decision,
    GiveGo,
    Run,
    TerminateSessions,
    adoptable,
    adopted,
    before_drained,
    database_changed,
    enter,
    expected_version,
    fail,
    first_line,
    lost_before_go,
    next_phase,
    stay,
    timed_out,
)

PHASE = Phase.MIGRATING


def pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    return jobs.flyway_pod(spec, Step.MIGRATE, spec.timeouts.migrate_seconds)


async def observe(ctx: Context) -> dict[str, Any]:
    fields: dict[str, Any] = {"jobs": await context.job_or_armed(ctx, Step.MIGRATE)}
    state = fields["jobs"][Step.MIGRATE].state
    login = await context.credentials(ctx)
    if state == "Absent" and not database_changed(ctx.status) and not before_drained(ctx.status):
        # not when a deleted Job is re-created: its Flyway may still hold or wait for locks, and count(*) would
        # queue behind them; not when it was taken beside the dump (backup.snapshot_beside_the_dump)
        fields["snapshot"] = await database.take_snapshot(ctx.spec, login, ctx.uid)
    elif state == "Running":
        try:
            fields["blocked_locks"] = tuple(await database.blocked_locks(ctx.spec, login))
            fields["app_sessions"] = tuple(await database.sessions(ctx.spec, login))
        except psycopg.Error as error:  # monitoring only: never fail the run for it
            ctx.logger.warning("lock monitoring failed: %s", error)
    return fields


def migration_failed(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, error: str) -> Decision:
    condition = ConditionChange(reasons.MIGRATED, "False", reasons.MIGRATION_FAILED, first_line(error, 1000))
    return fail(spec, status, PHASE, reasons.MIGRATION_FAILED, error, [condition])


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    target = expected_version(spec, status) or "latest"
    job = obs.job(Step.MIGRATE)
    if job.state == "Absent":
        message = f"migrating: flyway migrate to version {target}"
        again = database_changed(status)  # created before: someone deleted the Job mid-run
        if not again and adoptable(Step.MIGRATE, status, obs):
            log = "the pre-started flyway migrate Job is the migrate step: giving it the go"
            decision = stay(PHASE, message, reasons.MIGRATING, 0.0, log=log)
            decision.actions.append(AdoptJob(Step.MIGRATE, Step.ARMED_MIGRATE))
            decision.conditions.append(ConditionChange(reasons.MIGRATED, "False", reasons.MIGRATING, message))
            if obs.snapshot is not None:
                decision.record(before=obs.snapshot)
            return decision
        log = (
            "the flyway migrate Job disappeared (deleted?): created it again; Flyway resumes from its history"
            if again
            else "created the flyway migrate Job"
        )
        lost = None if again else lost_before_go(Step.MIGRATE, status, obs)
        if lost:
            log = f"the pre-started flyway migrate Job ended before its go ({lost}): {log}"
        decision = stay(PHASE, message, reasons.MIGRATING, log=log)
        decision.warning = again
        if lost:
            # a killed pod's waiting statement outlives it (PostgreSQL notices a vanished client only when it writes
            # to it): its open snapshot would hold back a CREATE INDEX CONCURRENTLY of the migration
            decision.actions.append(TerminateSessions(Step.ARMED_MIGRATE))
        decision.actions.append(CreateJob(Step.MIGRATE))
        decision.conditions.append(ConditionChange(reasons.MIGRATED, "False", reasons.MIGRATING, message))
        if obs.snapshot is not None and not again:
            decision.record(before=obs.snapshot)
        return decision
    if job.state == "Running":
        message = f"migrating: flyway migrate to version {target} running"
        if obs.blocked_locks:
            message += f"; {len(obs.blocked_locks)} blocked lock(s): " + "; ".join(obs.blocked_locks[:3])
        if obs.app_sessions:
            message += f"; {len(obs.app_sessions)} other session(s)"
        if timed_out(status, obs, spec.timeouts.migrate_seconds):
            return migration_failed(spec, status, f"flyway migrate exceeded {spec.timeouts.migrate_seconds}s")
        decision = stay(PHASE, message, reasons.MIGRATING, POLL_JOB)
        if adopted(status, Step.MIGRATE):
            decision.actions.append(GiveGo(Step.MIGRATE))
        return decision
    result = flyway.parse_migrate_output(job.output)
    if job.state == "Failed" or not result.success:
        return migration_failed(spec, status, result.error or job.failure or "flyway migrate failed without output")
    message = (
        f"migrated: {result.migrations_executed} migration(s) applied, "
        f"now at version {result.target_schema_version or target}"
    )
    decision = enter(next_phase(PHASE, spec), message, flyway=result.summary())
    decision.conditions.append(ConditionChange(reasons.MIGRATED, "True", reasons.MIGRATION_SUCCEEDED, message))
    return decision
