"""Pre-started Jobs (spec.maintenance.prestartMigration): the backup and migrate Jobs are created when the app starts
draining, so that their pods (and Flyway's JVM) start outside the critical path of the maintenance window. Each
waits for the operator's go before it touches the database (gosignal.py: an advisory lock the operator takes and
holds in a session of its own): the pg_dump Job in a `psql` loop that waits out a restarting server, the Flyway Job in
its initSql. The go of the backup is given once the app is drained (BackingUp starts), the migration's once the
backup is verified (Migrating starts).

How a phase uses its pre-started Job (machine/backup.py, machine/migrate.py): it adopts it (`AdoptJob`: status.jobs
names it for the phase's step, recorded one pass before the go, so a restart in between never starts a second Job
beside one that may be running already), gives it the go on every pass while it runs (`GiveGo`; any pass without it
withdraws it), and replaces it by an ordinary Job, having ended its waiting sessions, when it ended before its go.
The pre-started Jobs have names of their own (`<run>-armed-backup`, `<run>-armed-migrate`): no Job name is ever
used twice.
"""

from __future__ import annotations

import dataclasses

from .. import gosignal, jobs, reasons
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus
from ..observations import Observations
from ..reasons import ARMED, Step
from .backup import DumpBackup
from .core import CreateJob, Decision, Run, first_line, go_wait_seconds, prestarted_steps, restore_scope


def armed_migrate_pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    """`flyway migrate` with the migrate Job's flags, Flyway waiting for its go in its initSql. Its deadline covers
    the wait and the migration."""
    wait = go_wait_seconds(spec, Step.MIGRATE)
    return jobs.flyway_pod(
        spec,
        Step.ARMED_MIGRATE,
        wait + spec.timeouts.migrate_seconds,
        command=Step.MIGRATE,
        init_sql=gosignal.wait_sql(run.uid, Step.MIGRATE, wait),
    )


def armed_backup_pod(spec: DatabaseMigrationSpec, run: Run) -> jobs.PodParts:
    """The pg_dump Job's pod, its script waiting for its go first (GO_SQL, GO_WAIT_SECONDS: pg_scripts)."""
    wait = go_wait_seconds(spec, Step.BACKUP)
    parts = DumpBackup.backup_pod(spec, run, step=Step.ARMED_BACKUP)
    go = [
        {"name": "GO_SQL", "value": gosignal.wait_sql(run.uid, Step.BACKUP, wait)},
        {"name": "GO_WAIT_SECONDS", "value": str(wait)},
    ]
    return dataclasses.replace(parts, env=[*parts.env, *go], deadline_seconds=wait + spec.timeouts.backup_seconds)


def refusal(status: DatabaseMigrationStatus, obs: Observations) -> str | None:
    """Why the API refused to create a pre-started Job in this run (recorded in status.maintenance.prestartRefused,
    or the error of the last pass); None when nothing was refused. A refused pre-start is not a failure: the Jobs not
    created start in their phases, like without maintenance.prestartMigration. A retryable error (the API server
    restarting) is not a refusal: the next pass creates the Job again."""
    if status.maintenance and status.maintenance.prestart_refused:
        return status.maintenance.prestart_refused
    last = obs.last_error
    if last is None or last.action != reasons.ACTION_CREATE_ARMED_JOB or last.retryable:
        return None
    if status.phase_started_at and last.at < status.phase_started_at:
        return None
    return first_line(last.message, 500)


def armed_steps(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, refused: str | None) -> list[Step]:
    """The steps whose pre-started Jobs this run has or will have: after a refusal, only those created before it."""
    steps = prestarted_steps(spec)
    return [step for step in steps if ARMED[step] in status.jobs] if refused else steps


def arm(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, decision: Decision) -> Decision:
    """Create the pre-started Jobs along `decision` (EnteringMaintenance's), once per run: status.jobs records them,
    and their names are deterministic (a pass that created one already finds it)."""
    created = []
    for step in prestarted_steps(spec):
        armed = ARMED[step]
        if armed in status.jobs or step in status.jobs:
            continue
        env = (("DUMP_SCHEMAS", " ".join(restore_scope(spec, status.before))),) if step == Step.BACKUP else ()
        decision.actions.append(CreateJob(armed, env))
        created.append("pg_dump" if step == Step.BACKUP else "flyway migrate")
    if created:
        line = f"created the pre-started {' and '.join(created)} Job(s): each waits for its go"
        decision.log = f"{decision.log}; {line}" if decision.log else line
    return decision
