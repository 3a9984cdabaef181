"""Errors are observations: whatever the operator meets while observing or acting reaches the status within seconds,
a persistent error ends the phase, and the app is never left at 0 by it.

Injected for real: a table the migration role cannot read (the snapshot raises), a Job refused by a ResourceQuota
while the app is down, the credentials Secret deleted while the drain waits.
"""

from __future__ import annotations

import time

from kubernetes import client

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.wait import wait_for

FAST = {"transientErrorSeconds": 5}


def _log_text(status: dict[str, object]) -> str:
    return " ".join(str(entry.get("message", "")) for entry in status.get("log") or [])  # type: ignore[union-attr]


def test_a_table_the_role_cannot_read_fails_preflight_at_once_and_frees_the_database(parking: ParkingApp) -> None:
    owner = f"other_owner_{parking.database[-8:]}"
    with postgres.connect(parking.database) as admin:
        admin.execute(f"create role {owner}")
        admin.execute(f"create table private_audit (id int) ; alter table private_audit owner to {owner}")
        admin.execute("revoke all on private_audit from public")
    try:
        parking.set_migrations("good")
        started = time.monotonic()
        parking.create_migration("unreadable", parking.spec())
        status = parking.wait_done("unreadable", timeout=120)
        took = time.monotonic() - started
        assert status["phase"] == "Failed", parking.describe("unreadable")
        stalled = parking.condition("unreadable", "Stalled")
        assert stalled and stalled["status"] == "True" and stalled["reason"] == "ObserveFailed", stalled
        assert "permission denied" in status["message"] and "private_audit" in status["message"], status["message"]
        assert "not touched" in status["message"]
        assert took < 60, f"the error took {took:.0f}s to reach the status"
        parking.wait_events("unreadable", lambda events: any(e.type == "Warning" for e in events),
                            "a Warning event for the failed run")
        # the Lease is free: the next run of the same database gets past Pending
        parking.create_migration("next-one", parking.spec(dryRun=True))
        parking.wait_phase("next-one", {"Preflight", "Succeeded", "Failed"}, timeout=60)
        parking.wait_gateway_available(3)
    finally:
        with postgres.connect(parking.database) as admin:
            admin.execute("drop table if exists private_audit")
            admin.execute(f"drop role if exists {owner}")


def test_a_job_refused_by_a_resource_quota_with_the_app_down_rolls_back_and_brings_the_app_back(
    parking: ParkingApp,
) -> None:
    # one Job is allowed: preflight's validate Job; the backup Job (after the drain) is refused with 403
    parking.core.create_namespaced_resource_quota(
        parking.namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="one-job"),
            spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "1"}),
        ),
    )
    parking.set_migrations("good")
    parking.create_migration("refused", parking.spec())
    status = parking.wait_done("refused", timeout=180)
    assert status["phase"] == "RolledBack", parking.describe("refused")
    assert "exceeded quota" in _log_text(status) + status["message"], parking.describe("refused")
    assert status["rollback"]["reason"] == "JobRefused", status["rollback"]
    # the pre-started Jobs were refused first, while the app still served: said, and not a failure by itself
    assert "exceeded quota" in status["maintenance"]["prestartRefused"], status["maintenance"]
    assert "could not pre-start" in _log_text(status), _log_text(status)
    assert [row[0] for row in postgres.history(parking.database)][-1] == "5"
    parking.wait_gateway_available(3)


def test_the_credentials_secret_deleted_while_draining_fails_the_phase_and_brings_the_app_back(
    parking: ParkingApp,
) -> None:
    parking.set_migrations("good")
    with postgres.connect(parking.database, application_name="slow-report"):
        parking.create_migration("orphaned", parking.spec(timeouts={"drainSeconds": 600, **FAST}))
        wait_for(lambda: "slow-report" in (parking.status("orphaned").get("message") or ""), timeout=90,
                 what="the drain waiting on the session", describe=lambda: parking.describe("orphaned"))
        parking.core.delete_namespaced_secret("parking-db-admin", parking.namespace)
        # within seconds the status says what is wrong, long before the drain's 600 s
        wait_for(lambda: "parking-db-admin" in (parking.status("orphaned").get("message") or ""), timeout=10,
                 what="the unreadable Secret in the status", describe=lambda: parking.describe("orphaned"))
        status = parking.wait_done("orphaned", timeout=120)
    assert status["phase"] == "RolledBack", parking.describe("orphaned")
    assert status["rollback"]["reason"] == "ObserveFailed", status["rollback"]
    assert status.get("lastError") is None or status["lastError"]["action"] == "observing"
    parking.wait_gateway_available(3)
