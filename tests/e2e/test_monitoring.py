"""What an SRE sees while a migration is blocked, and what deleting a run, or its migrate Job, in flight does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes.client.rest import ApiException

from tests.e2e.conftest import GROUP, PLURAL, VERSION, ParkingApp
from tests.support import postgres
from tests.support.wait import wait_for


@contextmanager
def analytics_session_holding_a_lock(database: str) -> Iterator[Any]:
    """A reporting tool's session (not the app: appSessionFilter names the app) inside a transaction that holds
    ACCESS SHARE on parking_spots: pg_dump can share it, V6's ALTER TABLE cannot."""
    with postgres.connect(database, autocommit=False, application_name="analytics") as conn:
        conn.execute("lock table parking_spots in access share mode")
        yield conn
        conn.rollback()


def _spec(parking: ParkingApp) -> dict[str, Any]:
    return parking.spec(maintenance={"deployment": {"name": "api-gateway"},
                                     "appSessionFilter": {"applicationNames": ["api-gateway"]}})


def test_blocked_migration_reports_the_lock_and_its_holder_then_finishes(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    with analytics_session_holding_a_lock(parking.database) as holder:
        holder_pid = holder.info.backend_pid
        parking.create_migration("blocked", _spec(parking))

        def reported() -> str | None:
            message = str(parking.status("blocked").get("message") or "")
            return message if "blocked lock" in message and "parking_spots" in message else None

        message = wait_for(reported, timeout=120, what="the blocked lock in status.message",
                           describe=lambda: parking.describe("blocked"))
        assert str(holder_pid) in message, message
        assert parking.status("blocked")["phase"] == "Migrating"
    # the holder is gone: Flyway gets its lock and the run completes
    status = parking.wait_done("blocked")
    assert status["phase"] == "Succeeded", parking.describe("blocked")
    parking.wait_gateway_available(3)


def test_deleting_a_run_in_flight_brings_the_app_back_and_frees_the_database(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    with analytics_session_holding_a_lock(parking.database):
        parking.create_migration("abandoned", _spec(parking))
        parking.wait_phase("abandoned", "Migrating", timeout=180)
        assert parking.deployment().spec.replicas == 0
        parking.custom.delete_namespaced_custom_object(GROUP, VERSION, parking.namespace, PLURAL, "abandoned")

        def gone() -> bool:
            try:
                parking.get("abandoned")
            except ApiException as error:
                return error.status == 404
            return False

        wait_for(gone, timeout=120, what="the deleted migration to go (its finalizer ran)",
                 describe=lambda: parking.describe("abandoned"))
        parking.wait_gateway_available(3)
        # the migration's Job went with it (owner reference), pods included: nothing half-done keeps running
        # to commit once the lock is released
        wait_for(lambda: not parking.jobs("abandoned") and not parking.core.list_namespaced_pod(
            parking.namespace, label_selector="dbops.io/migration=abandoned").items,
            timeout=120, what="the abandoned run's Jobs and pods deleted")
    # V6 never committed (its transaction died with the Job), and the database is free for the next run
    assert [row[0] for row in postgres.history(parking.database) if row[4]][-1] == "5"
    parking.create_migration("next", parking.spec())
    assert parking.wait_done("next")["phase"] == "Succeeded", parking.describe("next")


def test_a_migrate_job_deleted_in_flight_is_created_again_and_the_run_finishes(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    with analytics_session_holding_a_lock(parking.database):
        parking.create_migration("job-deleted", _spec(parking))
        wait_for(lambda: "blocked lock" in str(parking.status("job-deleted").get("message")), timeout=120,
                 what="flyway migrate running, blocked", describe=lambda: parking.describe("job-deleted"))

        def migrate_uids() -> set[str]:  # the migrate step's Jobs: its own, or the pre-started one it adopted
            return {j.metadata.uid for j in parking.jobs("job-deleted")
                    if j.metadata.labels["dbops.io/step"] in ("migrate", "armed-migrate")}

        first = migrate_uids()
        running = parking.status("job-deleted")["jobs"]["migrate"]
        parking.batch.delete_namespaced_job(running, parking.namespace, propagation_policy="Background")

        def recreated() -> bool:
            uids = migrate_uids()
            return bool(uids) and not uids & first

        wait_for(recreated, timeout=60, what="a new migrate Job", describe=lambda: parking.describe("job-deleted"))
    status = parking.wait_done("job-deleted")
    assert status["phase"] == "Succeeded", parking.describe("job-deleted")
    assert status["before"]["version"] == "5"  # the first "before", not one taken mid-run
    assert any("disappeared" in entry["message"] for entry in status["log"]), status["log"]
    assert status["jobs"]["migrate"] == "job-deleted-migrate", status["jobs"]  # a new name: none is used twice
    assert [(row[0], row[4]) for row in postgres.history(parking.database) if row[0] == "6"] == [("6", True)]
    parking.wait_gateway_available(3)
