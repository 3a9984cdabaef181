"""maintenance.prestartMigration on the parking example: the backup and migrate Jobs are created when the gateway
starts draining, wait for the operator's go (an advisory lock) without touching the database, and run once the app
is drained (the dump) and the backup verified (the migration); pre-started pods killed before their go are replaced by
ordinary Jobs, and the run still ends Succeeded with one Job per name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from kubernetes.client import V1DeleteOptions

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.operator import Operator
from tests.support.sampler import Sampler
from tests.support.wait import wait_for

ARMED_APP = "migration-operator-armed-migrate"
ARMED_BACKUP_APP = "migration-operator-armed-backup"


def prestart_spec(parking: ParkingApp) -> dict[str, Any]:
    return parking.spec(maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": True})


def waiting_sessions(database: str, app: str = ARMED_APP) -> int:
    """The pre-started Jobs' sessions waiting for their go (Flyway's initSql, the backup's psql)."""
    with postgres.connect(database) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database() and application_name = %s "
            "and query like %s",
            [app, "%DO $dbops$%"],
        ).fetchone()
    return int(row[0]) if row else 0


def both_waiting(database: str) -> bool | None:
    return (waiting_sessions(database) == 1 and waiting_sessions(database, ARMED_BACKUP_APP) == 1) or None


def armed_sessions(database: str) -> int:
    with postgres.connect(database) as conn:
        # this test's database only: every run pre-starts its Jobs by default, the other tests' runs too
        row = conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                           "and application_name = any(%s)", [[ARMED_APP, ARMED_BACKUP_APP]]).fetchone()
    return int(row[0]) if row else 0


def create_until_armed(parking: ParkingApp, name: str) -> None:
    """Create the run and wait until both pre-started Jobs wait for their go (the caller holds the drain)."""
    parking.create_migration(name, prestart_spec(parking))
    wait_for(lambda: both_waiting(parking.database), timeout=180,
             what="the pre-started pg_dump and Flyway waiting for their go", describe=lambda: parking.describe(name))


def log_time(status: dict[str, Any], text: str) -> datetime:
    entry = next(e for e in status["log"] if text in e["message"])
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


def test_a_prestarted_migrate_job_waits_through_the_backup_and_migrates_on_its_go(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    name = "prestarted"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        # the drain waits on a report's session: the pre-started pod is up and waiting meanwhile
        with postgres.connect(parking.database, application_name="nightly-report"):
            create_until_armed(parking, name)
            assert parking.status(name)["phase"] == "EnteringMaintenance"
            # nothing happened to the database before the go
            assert postgres.history(parking.database)[-1][0] == "5"
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    # the backup and migrate steps were the pre-started Jobs, and no other Job was created for them
    assert status["jobs"]["migrate"] == f"{name}-armed-migrate" == status["jobs"]["armed-migrate"], status["jobs"]
    assert status["jobs"]["backup"] == f"{name}-armed-backup" == status["jobs"]["armed-backup"], status["jobs"]
    jobs = {j.metadata.name for j in parking.batch.list_namespaced_job(parking.namespace).items}
    assert not {f"{name}-migrate", f"{name}-backup"} & jobs, jobs
    # the dump's go came once the app was drained, the migration's once the backup was verified
    assert log_time(status, "backup step: giving it the go") >= log_time(status, "no app session left")
    assert log_time(status, "migrate step: giving it the go") >= log_time(status, "backup complete")
    assert any("created the pre-started pg_dump and flyway migrate Job(s)" in e["message"] for e in status["log"])
    assert status["backup"]["verified"] is True and status["backup"]["sizeBytes"] > 0
    rows = postgres.history(parking.database)
    assert rows[-1][0] == "6" and all(row[4] for row in rows)
    assert status["flyway"]["migrationsExecuted"] == 1
    assert armed_sessions(parking.database) == 0
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids


def test_prestarted_pods_killed_before_their_go_are_replaced_and_the_run_succeeds(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    name = "prestart-lost"
    armed = [f"{name}-armed-backup", f"{name}-armed-migrate"]
    with Sampler(parking.api, parking.namespace, name) as sampler:
        with postgres.connect(parking.database, application_name="nightly-report"):
            create_until_armed(parking, name)
            for job in armed:
                pods = parking.core.list_namespaced_pod(parking.namespace, label_selector=f"job-name={job}").items
                assert len(pods) == 1
                parking.core.delete_namespaced_pod(pods[0].metadata.name, parking.namespace,
                                                   body=V1DeleteOptions(grace_period_seconds=0))

            def armed_failed() -> bool | None:
                found = [parking.batch.read_namespaced_job(job, parking.namespace) for job in armed]
                return all(j.status and j.status.failed for j in found) or None

            wait_for(armed_failed, timeout=120, what="the killed pre-started Jobs marked Failed")
            assert parking.status(name)["phase"] == "EnteringMaintenance"
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    assert status["jobs"]["migrate"] == f"{name}-migrate" and status["jobs"]["backup"] == f"{name}-backup", status
    for what in ("pg_dump", "flyway migrate"):
        assert any(f"pre-started {what} Job ended before its go" in e["message"] for e in status["log"]), status["log"]
    assert status["backup"]["verified"] is True
    rows = postgres.history(parking.database)
    assert rows[-1][0] == "6" and all(row[4] for row in rows)
    assert [r[0] for r in rows].count("6") == 1
    # the killed pods' waiting statements did not outlive the fallback
    assert armed_sessions(parking.database) == 0
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids
    assert {f"{name}-migrate", f"{name}-backup", *armed} <= set(uids), uids


def test_an_operator_killed_while_the_prestarted_pod_waits_gives_the_go_after_its_restart(
    parking: ParkingApp, operator: Operator | None
) -> None:
    """The go lives in the operator's session: a killed operator takes it with it, and the new one, resuming from
    the status, adopts the same waiting Job and gives the go again. One Job per name, no second migrate Job."""
    if operator is None:
        pytest.skip("the operator runs outside this test's control (MO_E2E_OPERATOR=external)")
    parking.set_migrations("good")
    name = "prestart-restart"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        with postgres.connect(parking.database, application_name="nightly-report"):
            create_until_armed(parking, name)
            operator.kill()
            operator.start()
            wait_for(lambda: "nightly-report" in str(parking.status(name).get("message")) or None, timeout=60,
                     what="the new operator draining", describe=lambda: parking.describe(name))
            assert both_waiting(parking.database)  # the pods kept waiting through the restart
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    assert status["jobs"]["migrate"] == f"{name}-armed-migrate", status["jobs"]
    assert status["jobs"]["backup"] == f"{name}-armed-backup", status["jobs"]
    assert postgres.history(parking.database)[-1][0] == "6"
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()) and not {f"{name}-migrate", f"{name}-backup"} & set(uids), uids


def test_a_backup_image_that_cannot_be_pulled_fails_the_run_before_the_app_is_touched(parking: ParkingApp) -> None:
    """The pre-started pg_dump pod cannot pull its image: the app keeps serving past the head start, and the run
    fails at the stuck-Job grace having scaled nothing (without pre-starting, the same typo cost a minute of
    downtime and a rollback)."""
    parking.set_migrations("good")
    name = "no-such-image"
    spec = parking.spec(jobTemplate={"postgresImage": "docker.io/library/postgres:no-such-tag"})
    generation = parking.deployment().metadata.generation
    with Sampler(parking.api, parking.namespace, name) as sampler:
        parking.create_migration(name, spec)
        wait_for(lambda: "armed-backup: " in (parking.status(name).get("message") or "") or None, timeout=180,
                 what="the scale-down held for the pod that cannot pull", describe=lambda: parking.describe(name))
        status = parking.wait_done(name, timeout=240)
    assert status["phase"] == "Failed", parking.describe(name)
    stalled = parking.condition(name, "Stalled")
    assert stalled and stalled["reason"] == "JobCannotStart" and "armed-backup" in stalled["message"], stalled
    assert all(s.replicas in (3, None) for s in sampler.samples), "the app was scaled"
    assert parking.deployment().metadata.generation == generation
    assert "maintenance" not in status or not status["maintenance"].get("scaledDownAt"), status.get("maintenance")
    assert postgres.history(parking.database)[-1][0] == "5"
    # the pre-started Jobs were stopped, and their sessions with them
    wait_for(lambda: not [j for j in parking.jobs(name) if j.metadata.labels["dbops.io/step"].startswith("armed-")]
             or None, timeout=60, what="the pre-started Jobs deleted")
    assert armed_sessions(parking.database) == 0
    parking.wait_gateway_available(3)
