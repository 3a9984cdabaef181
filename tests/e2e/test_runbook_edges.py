"""The runbook's other branches: the runbook's own backup order, a verification that fails, an app session that
never leaves, a migration that Flyway and the checks accept but the app does not survive."""

from __future__ import annotations

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.sampler import Sampler


def test_backup_before_maintenance_keeps_the_app_up_while_dumping(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    spec = parking.spec(backup={"method": "Dump", "volume": {"claimName": "db-backups"},
                                "timing": "BeforeMaintenance"})
    with Sampler(parking.api, parking.namespace, "runbook-order") as sampler:
        parking.create_migration("runbook-order", spec)
        status = parking.wait_done("runbook-order")
    assert status["phase"] == "Succeeded", parking.describe("runbook-order")
    logged = [entry["phase"] for entry in status["log"]]
    assert logged.index("BackingUp") < logged.index("EnteringMaintenance"), logged
    assert all(s.replicas == 3 for s in sampler.during("BackingUp")), sampler.during("BackingUp")
    assert status["backup"]["verified"] is True


def test_failing_user_check_rolls_the_migration_back(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    before = postgres.fingerprint(parking.database)
    spec = parking.spec(verify={"requiredTables": ["parking_zones"],
                                "checks": [{"name": "zones-have-names",
                                            "sql": "select count(*) = 0 from parking_zones"}]})
    parking.create_migration("unverified", spec)
    status = parking.wait_done("unverified")
    assert status["phase"] == "RolledBack", parking.describe("unverified")
    verified = parking.condition("unverified", "Verified")
    assert verified and verified["status"] == "False" and "zones-have-names" in verified["message"], verified
    assert postgres.fingerprint(parking.database) == before  # V6 was applied, then restored away
    parking.wait_gateway_available(3)


def test_an_app_session_that_never_leaves_times_out_the_drain_and_brings_the_app_back(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    with postgres.connect(parking.database, application_name="forgotten-cron") as session:
        pid = session.info.backend_pid
        spec = parking.spec(timeouts={"drainSeconds": 5})
        parking.create_migration("undrained", spec)
        status = parking.wait_done("undrained")
    assert status["phase"] in ("RolledBack", "Failed"), parking.describe("undrained")
    assert "DrainTimeout" in str(status["conditions"]) or "drain" in status["message"].lower(), status["message"]
    assert str(pid) in status["message"] or str(pid) in str(status.get("log")), status["message"]
    # nothing was migrated and the app is back
    assert [row[0] for row in postgres.history(parking.database)][-1] == "5"
    parking.wait_gateway_available(3)


def test_a_migration_the_app_does_not_survive_is_restored_and_the_app_comes_back(parking: ParkingApp) -> None:
    """Runbook step 12: V7 renames a column the gateway reads. Flyway and the verification are happy; the gateway's
    health check (schema validation) is not, so the Deployment never becomes available on the migrated database."""
    parking.set_migrations("good", "breaks-app")
    before = postgres.fingerprint(parking.database)
    with Sampler(parking.api, parking.namespace, "breaks-app") as sampler:
        parking.create_migration("breaks-app", parking.spec(timeouts={"readySeconds": 20}))
        status = parking.wait_done("breaks-app")
    assert status["phase"] == "RolledBack", parking.describe("breaks-app")
    migrated, rolled = parking.condition("breaks-app", "Migrated"), parking.condition("breaks-app", "RolledBack")
    assert migrated and migrated["status"] == "True", migrated  # Flyway applied V6 and V7
    assert rolled and rolled["status"] == "True" and "not available" in rolled["message"], rolled
    assert "AppNotAvailable" in str(status["log"]) or "not available" in str(status["log"]), status["log"]
    # the gateway was up on the migrated database, unready, then stopped again for the restore
    phases = sampler.phases_seen()
    assert phases.index("ExitingMaintenance") < phases.index("RollingBack"), phases
    assert any(s.replicas == 3 for s in sampler.during("ExitingMaintenance"))
    assert postgres.fingerprint(parking.database) == before  # V6 and V7 restored away, email is back
    parking.wait_gateway_available(3)
