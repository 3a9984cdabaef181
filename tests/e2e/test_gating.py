"""Dry run, approval, and one migration at a time per database."""

from __future__ import annotations

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.sampler import Sampler
from tests.support.wait import wait_for

V7_NOTES = "alter table parking_zones add column notes text;\n"


def test_dry_run_lists_pending_and_writes_nothing(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    before = postgres.fingerprint(parking.database)
    history = postgres.history(parking.database)
    counters = postgres.write_counters(parking.database)  # inserted, updated, deleted tuples
    with Sampler(parking.api, parking.namespace, "dry") as sampler:
        parking.create_migration("dry", parking.spec(dryRun=True))
        status = parking.wait_done("dry")
    assert status["phase"] == "Succeeded", parking.describe("dry")
    ready = parking.condition("dry", "Ready")
    assert ready and ready["reason"] == "DryRunComplete"
    assert [m["version"] for m in status["pending"]] == ["6"]
    assert postgres.history(parking.database) == history
    assert postgres.fingerprint(parking.database) == before
    assert postgres.write_counters(parking.database) == counters
    assert all(s.replicas == 3 for s in sampler.samples)
    steps = {j.metadata.labels.get("dbops.io/step") for j in parking.jobs("dry")}
    assert not steps & {"backup", "migrate", "restore", "repair", "compensate"}, steps


def test_approval_holds_the_run_until_the_annotation(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.create_migration("gated", parking.spec(approval={"required": True}))
    status = parking.wait_phase("gated", "AwaitingApproval")
    assert "dbops.io/approved" in status["message"]
    # held: the operator has seen the object (observedGeneration) and did nothing to the app or the database
    assert status.get("observedGeneration") == parking.get("gated")["metadata"]["generation"]
    assert parking.deployment().spec.replicas == 3
    assert not parking.jobs("gated")
    assert postgres.history(parking.database)[-1][0] == "5"
    parking.custom.patch_namespaced_custom_object(
        "dbops.io", "v1alpha1", parking.namespace, "databasemigrations", "gated",
        {"metadata": {"annotations": {"dbops.io/approved": "true"}}})
    status = parking.wait_done("gated")
    assert status["phase"] == "Succeeded", parking.describe("gated")
    assert postgres.history(parking.database)[-1][0] == "6"


def test_second_migration_of_the_same_database_waits_then_runs(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    files = {k: v for k, v in parking.core.read_namespaced_config_map(
        "api-gateway-migrations", parking.namespace).data.items()}
    files["V7__add_zone_notes.sql"] = V7_NOTES
    parking.core.create_namespaced_config_map(parking.namespace, {
        "metadata": {"name": "migrations-v7"}, "data": files})
    parking.create_migration("first", parking.spec())
    parking.wait_phase("first", {"Preflight", "BackingUp", "EnteringMaintenance", "Migrating"})
    parking.create_migration("second", parking.spec(migrations={"configMap": {"name": "migrations-v7"}}))

    def waiting_for_lock() -> bool:
        reconciling = parking.condition("second", "Reconciling")
        return bool(reconciling and reconciling["reason"] == "WaitingForLock" and "first" in reconciling["message"])

    wait_for(waiting_for_lock, timeout=120, what="second migration waiting for the first",
             describe=lambda: parking.describe("second"))
    assert parking.status("first")["phase"] not in ("Succeeded", "RolledBack", "Failed")
    first = parking.wait_done("first")
    second = parking.wait_done("second")
    assert first["phase"] == "Succeeded" and second["phase"] == "Succeeded", parking.describe("second")
    assert [row[0] for row in postgres.history(parking.database)][-2:] == ["6", "7"]
    # the second one's runbook started only once the first one had finished
    second_preflight = min(e["time"] for e in second["log"] if e["phase"] == "Preflight")
    assert second_preflight >= first["completedAt"], (second["log"], first["completedAt"])
    parking.wait_gateway_available(3)
