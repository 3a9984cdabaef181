"""V6 + V7 where V7 fails mid-way, under each rollback strategy. Every path but None ends with the gateway back
at 3 replicas on a consistent database."""

from __future__ import annotations

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.sampler import Sampler

V7_ERROR = "parking_spots_rate_ck"  # the CHECK constraint V7 violates (fail-in-tx variant)


def test_failed_v7_restores_the_pre_run_database(parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-in-tx")
    before = postgres.fingerprint(parking.database)
    with Sampler(parking.api, parking.namespace, "restore") as sampler:
        parking.create_migration("restore", parking.spec(rollback={"strategy": "Restore"}))
        status = parking.wait_done("restore")
    assert status["phase"] == "RolledBack", parking.describe("restore")
    rolled_back = parking.condition("restore", "RolledBack")
    assert rolled_back and rolled_back["status"] == "True"
    assert V7_ERROR in rolled_back["message"], rolled_back
    assert V7_ERROR in status["message"] or V7_ERROR in (status.get("rollback") or {}).get("error", "")
    # V6 had been committed before V7 failed: only the restore can take the database back to V5
    assert "RollingBack" in sampler.phases_seen()
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)
    ready = parking.condition("restore", "Ready")
    assert ready and ready["status"] == "False"


def test_failed_v7_with_repair_keeps_v6_and_removes_the_failed_row(parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-no-tx")
    parking.create_migration("repair", parking.spec(rollback={"strategy": "Repair"}))
    status = parking.wait_done("repair")
    assert status["phase"] == "RolledBack", parking.describe("repair")
    rolled_back = parking.condition("repair", "RolledBack")
    assert rolled_back and rolled_back["status"] == "True"
    assert "exit_time" in rolled_back["message"], rolled_back  # Flyway's error text reached the condition
    rows = postgres.history(parking.database)
    assert all(row[4] for row in rows), rows  # flyway repair removed the success = false row
    assert [row[0] for row in rows][-1] == "6"  # the last good version stays
    parking.wait_gateway_available(3)


def test_failed_v7_with_compensate_runs_the_undo_sql_in_one_transaction(parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-in-tx")
    before = postgres.fingerprint(parking.database)
    undo = """
        alter table parking_spots drop column zone_id;
        drop table parking_zones;
        delete from flyway_schema_history where version = '6';
    """
    spec = parking.spec(rollback={"strategy": "Compensate", "compensate": {"sql": undo}})
    parking.create_migration("compensate", spec)
    status = parking.wait_done("compensate")
    assert status["phase"] == "RolledBack", parking.describe("compensate")
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)


def test_failed_v7_with_rollback_none_leaves_the_app_down_and_says_why(parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-in-tx")
    parking.create_migration("none", parking.spec(rollback={"strategy": "None"}, backup={"enabled": False}))
    status = parking.wait_done("none")
    assert status["phase"] == "Failed", parking.describe("none")
    stalled = parking.condition("none", "Stalled")
    assert stalled and stalled["status"] == "True"
    assert V7_ERROR in stalled["message"] or V7_ERROR in status["message"], stalled
    assert parking.deployment().spec.replicas == 0
    maintenance = parking.condition("none", "MaintenanceMode")
    assert maintenance and maintenance["status"] == "True"
    # the record of what to scale back to survives for the human who takes over
    assert status["maintenance"]["originalReplicas"] == 3


def test_failed_v7_with_a_clone_backup_swaps_the_copy_back(parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-in-tx")
    before = postgres.fingerprint(parking.database)
    spec = parking.spec(backup={"method": "Clone"}, rollback={"strategy": "Restore"})
    parking.create_migration("clone", spec)
    status = parking.wait_done("clone")
    assert status["phase"] == "RolledBack", parking.describe("clone")
    assert status["backup"]["method"] == "Clone" and status["backup"]["cloneDatabase"]
    # the database under the original name is the pre-run copy again; the failed one is kept aside
    assert postgres.fingerprint(parking.database) == before
    with postgres.connect() as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                            (f"{parking.database}%",)).fetchall()}
    assert parking.database in names and len(names) >= 2, names
    parking.wait_gateway_available(3)


def test_a_failed_migration_flyway_rolled_back_is_not_restored_and_the_app_comes_back_at_once(
    parking: ParkingApp,
) -> None:
    # V7 alone: it fails inside its transaction, so Flyway rolls it back and writes no history row
    parking.set_migrations("fail-in-tx")
    before = postgres.fingerprint(parking.database)
    parking.create_migration("unchanged", parking.spec(rollback={"strategy": "Restore"}))
    status = parking.wait_done("unchanged")
    assert status["phase"] == "RolledBack", parking.describe("unchanged")
    assert status["rollback"]["databaseUnchanged"] is True, status["rollback"]
    rolled_back = parking.condition("unchanged", "RolledBack")
    assert rolled_back and rolled_back["reason"] == "NothingToRollBack", rolled_back
    assert not [job for job in parking.jobs("unchanged") if job.metadata.name.endswith("-restore")]
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)
