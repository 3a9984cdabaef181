"""Stop before you act: before a rollback touches the database, after a timeout, and when a run is deleted, what the
run still has running is stopped first. Its Jobs are deleted in the foreground (the Job object goes only once its pod
is gone), and the database sessions of their steps are terminated (a statement keeps running in PostgreSQL after its
client died, until it next talks to it).
"""

from __future__ import annotations

from . import constants, database, jobs, kube
from .database import Credentials
from .models import DatabaseMigrationSpec
from .reasons import ARMED, Step


async def stop_job(namespace: str, name: str) -> None:
    """Delete the Job with foreground propagation (idempotent: a Job already gone is fine)."""
    try:
        await kube.delete("jobs", namespace, name, {"propagationPolicy": "Foreground", "gracePeriodSeconds": 5})
    except kube.ApiError as error:
        if error.status != 404:
            raise


async def remaining_jobs(namespace: str, run: str) -> list[str]:
    """Names of the run's Jobs that still exist (a Job being deleted in the foreground included)."""
    found = await kube.list_items("jobs", namespace, f"{constants.MIGRATION_LABEL}={jobs.label_value(run)}")
    return [job["metadata"]["name"] for job in found]


async def stop_all(namespace: str, run: str) -> list[str]:
    """Ask every Job of the run to stop; returns those still there (call again until none is)."""
    names = await remaining_jobs(namespace, run)
    for name in names:
        await stop_job(namespace, name)
    return await remaining_jobs(namespace, run)


def application_name(step: str) -> str:
    """The application_name a step's sessions carry (PGAPPNAME, and Flyway's JDBC ApplicationName)."""
    return f"{constants.APPLICATION_NAME}-{step}"


def application_names(step: str) -> list[str]:
    """The application_names of the sessions of `step`: a backup's or migration's may be its pre-started Job's."""
    names = [application_name(step)]
    if step in ARMED:
        names.append(application_name(ARMED[Step(step)]))
    return names


async def terminate_sessions(spec: DatabaseMigrationSpec, credentials: Credentials, step: str) -> int:
    """Terminate the step's sessions on the run's database; returns how many were asked to end."""
    async with await database.connect(spec, credentials, read_only=False) as conn:
        cursor = await conn.execute(
            "select count(*) filter (where pg_terminate_backend(pid)) as ended from pg_stat_activity "
            "where datname = %s and application_name = any(%s) and pid <> pg_backend_pid()",
            [spec.database.name, application_names(step)],
        )
        row = await cursor.fetchone()
    return int(row["ended"]) if row else 0
