"""Holding the maintenance window: Argo CD with selfHeal, an HPA or a person scaling the app up in the middle of a
migration, or while a failed one is being undone, is reverted at once, with a Warning event naming who did it, and the
run still ends as it should."""

from __future__ import annotations

from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ParkingApp, _migration_files
from tests.support import postgres
from tests.support.wait import wait_for

# the advisory lock V6_1 waits for: the test holds it for as long as it needs the run in Migrating
HOLD_KEY = 6001


def test_an_app_scaled_up_by_someone_else_while_migrating_is_scaled_back_at_once(parking: ParkingApp) -> None:
    files = _migration_files("good")
    # V6 of the "good" set, then a statement that waits for a lock the test holds: the run stays in Migrating until
    # the test has scaled the app up and seen it reverted (no fixed pause to outlast, however slow the machine).
    files["V6_1__pause.sql"] = f"select pg_advisory_xact_lock({HOLD_KEY});\n"
    parking.core.replace_namespaced_config_map(
        "api-gateway-migrations", parking.namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="api-gateway-migrations"), data=files),
    )
    # the tests' own session: not the app's for the drain (its application_name is the operator's prefix)
    with postgres.connect(parking.database) as holder:
        holder.execute("select pg_advisory_lock(%s)", (HOLD_KEY,))
        parking.create_migration("held", parking.spec(verify={"requiredTables": ["clients"]}))
        parking.wait_phase("held", "Migrating", timeout=300)
        _scale_up_and_see_it_reverted(parking, "held", 3)
        labels = {"namespace": parking.namespace, "name": "held"}
        if parking.operator is not None:  # the window is on /metrics while the app is down, to alert on
            wait_for(lambda: any(v > 0 for v in _series(parking, "dbmig_app_down_seconds", labels)), timeout=30,
                     what="dbmig_app_down_seconds of the run")
            assert all(v > 0 for v in _series(parking, "dbmig_maintenance_window_remaining_seconds", labels))
        # still migrating, held by the lock: everything above happened inside the window
        assert parking.status("held")["phase"] == "Migrating", parking.describe("held")
    status = parking.wait_done("held", timeout=240)
    assert status["phase"] == "Succeeded", parking.describe("held")
    assert any("someone-in-a-hurry" in entry["message"] for entry in status["log"]), status["log"]
    parking.wait_gateway_available(3)
    if parking.operator is not None:  # the app is back: the run's series are gone
        assert not _series(parking, "dbmig_app_down_seconds", labels), parking.operator.metrics()


def test_an_app_scaled_up_by_someone_else_while_the_database_is_put_back_is_stopped_and_said(
        parking: ParkingApp) -> None:
    parking.set_migrations("good", "fail-in-tx")  # V6 commits, V7 fails: the compensation has something to undo
    before = postgres.fingerprint(parking.database)
    # the compensation first waits for a lock the test holds: the run stays in RollingBack's database part until the
    # test has scaled the app up and seen it stopped
    undo = f"""
        select pg_advisory_xact_lock({HOLD_KEY});
        alter table parking_spots drop column zone_id;
        drop table parking_zones;
        delete from flyway_schema_history where version = '6';
    """
    spec = parking.spec(rollback={"strategy": "Compensate", "compensate": {"sql": undo}})
    with postgres.connect(parking.database) as holder:
        holder.execute("select pg_advisory_lock(%s)", (HOLD_KEY,))
        parking.create_migration("undoing", spec)
        parking.wait_phase("undoing", "RollingBack", timeout=300)
        _scale_up_and_see_it_reverted(parking, "undoing", 2)
        assert parking.status("undoing")["phase"] == "RollingBack", parking.describe("undoing")
    status = parking.wait_done("undoing", timeout=240)
    assert status["phase"] == "RolledBack", parking.describe("undoing")
    said = [entry["message"] for entry in status["log"] if "someone-in-a-hurry" in entry["message"]]
    assert said and "while the database was being put back" in said[0], status["log"]
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)  # the recorded count, not someone else's 2


def _scale_up_and_see_it_reverted(parking: ParkingApp, name: str, replicas: int) -> None:
    """Another field manager scales the app up; the run `name` must say so in a Warning event naming it, and scale the
    app back to 0."""
    parking.apps.patch_namespaced_deployment(
        "api-gateway", parking.namespace, {"spec": {"replicas": replicas}}, field_manager="someone-in-a-hurry"
    )
    wait_for(
        lambda: any("someone-in-a-hurry" in (e.message or "") and e.type == "Warning" for e in parking.events(name)),
        timeout=30, what="a Warning event naming who scaled the app", describe=lambda: parking.describe(name),
    )
    wait_for(lambda: parking.deployment().spec.replicas == 0, timeout=15, what="the app scaled back to 0")


def _series(parking: ParkingApp, name: str, labels: dict[str, str]) -> list[float]:
    assert parking.operator is not None
    return [
        sample.value
        for family in text_string_to_metric_families(parking.operator.metrics())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
