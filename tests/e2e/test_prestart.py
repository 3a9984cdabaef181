"""maintenance.prestartMigration on the parking example: the migrate Job is created when the gateway starts draining,
its Flyway waits for the operator's go (an advisory lock) without touching the database, and migrates once the backup
is verified; a pre-started pod killed before its go is replaced by an ordinary migrate Job, and the run still ends
Succeeded with one Job per name."""

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


def prestart_spec(parking: ParkingApp) -> dict[str, Any]:
    return parking.spec(maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": True})


def waiting_sessions(database: str) -> int:
    """The pre-started Flyway's sessions waiting for their go in their initSql."""
    with postgres.connect(database) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s and query like %s",
            [ARMED_APP, "DO $dbops$%"],
        ).fetchone()
    return int(row[0]) if row else 0


def armed_sessions(database: str) -> int:
    with postgres.connect(database) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where application_name = %s", [ARMED_APP]).fetchone()
    return int(row[0]) if row else 0


def log_time(status: dict[str, Any], text: str) -> datetime:
    entry = next(e for e in status["log"] if text in e["message"])
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))


def test_a_prestarted_migrate_job_waits_through_the_backup_and_migrates_on_its_go(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    name = "prestarted"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        # the drain waits on a report's session: the pre-started pod is up and waiting meanwhile
        with postgres.connect(parking.database, application_name="nightly-report"):
            parking.create_migration(name, prestart_spec(parking))
            parking.wait_phase(name, "EnteringMaintenance", timeout=240)
            wait_for(lambda: waiting_sessions(parking.database) == 1 or None, timeout=120,
                     what="the pre-started Flyway waiting for its go", describe=lambda: parking.describe(name))
            assert parking.status(name)["phase"] == "EnteringMaintenance"
            # nothing happened to the database before the go
            assert postgres.history(parking.database)[-1][0] == "5"
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    # the migrate step was the pre-started Job, and no other migrate Job was created
    assert status["jobs"]["migrate"] == f"{name}-armed-migrate" == status["jobs"]["armed-migrate"], status["jobs"]
    jobs = {j.metadata.name for j in parking.batch.list_namespaced_job(parking.namespace).items}
    assert f"{name}-migrate" not in jobs and f"{name}-armed-migrate" in jobs, jobs
    # the go came after the backup was verified
    assert log_time(status, "giving it the go") >= log_time(status, "backup complete")
    assert any("created the pre-started flyway migrate Job" in e["message"] for e in status["log"]), status["log"]
    rows = postgres.history(parking.database)
    assert rows[-1][0] == "6" and all(row[4] for row in rows)
    assert status["flyway"]["migrationsExecuted"] == 1
    assert armed_sessions(parking.database) == 0
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids


def test_a_prestarted_pod_killed_before_its_go_is_replaced_and_the_run_succeeds(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    name = "prestart-lost"
    armed_job = f"{name}-armed-migrate"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        with postgres.connect(parking.database, application_name="nightly-report"):
            parking.create_migration(name, prestart_spec(parking))
            wait_for(lambda: waiting_sessions(parking.database) == 1 or None, timeout=180,
                     what="the pre-started Flyway waiting for its go", describe=lambda: parking.describe(name))
            pods = parking.core.list_namespaced_pod(parking.namespace, label_selector=f"job-name={armed_job}").items
            assert len(pods) == 1
            parking.core.delete_namespaced_pod(pods[0].metadata.name, parking.namespace,
                                               body=V1DeleteOptions(grace_period_seconds=0))

            def armed_failed() -> bool | None:
                job = parking.batch.read_namespaced_job(armed_job, parking.namespace)
                return bool(job.status and job.status.failed) or None

            wait_for(armed_failed, timeout=120, what="the killed pre-started Job marked Failed")
            assert parking.status(name)["phase"] == "EnteringMaintenance"
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    assert status["jobs"]["migrate"] == f"{name}-migrate", status["jobs"]
    assert any("ended before its go" in e["message"] for e in status["log"]), status["log"]
    rows = postgres.history(parking.database)
    assert rows[-1][0] == "6" and all(row[4] for row in rows)
    assert [r[0] for r in rows].count("6") == 1
    # the killed pod's waiting statement did not outlive the fallback
    assert armed_sessions(parking.database) == 0
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids
    assert {f"{name}-migrate", armed_job} <= set(uids), uids


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
            parking.create_migration(name, prestart_spec(parking))
            wait_for(lambda: waiting_sessions(parking.database) == 1 or None, timeout=180,
                     what="the pre-started Flyway waiting for its go", describe=lambda: parking.describe(name))
            operator.kill()
            operator.start()
            wait_for(lambda: "nightly-report" in str(parking.status(name).get("message")) or None, timeout=60,
                     what="the new operator draining", describe=lambda: parking.describe(name))
            assert waiting_sessions(parking.database) == 1  # the pod kept waiting through the restart
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    parking.wait_gateway_available(3)
    assert status["jobs"]["migrate"] == f"{name}-armed-migrate", status["jobs"]
    assert postgres.history(parking.database)[-1][0] == "6"
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()) and f"{name}-migrate" not in uids, uids
