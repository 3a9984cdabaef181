"""Stop before you act: a migration that runs past its timeout is stopped (its Job and its database session) before
the restore runs, so the restore never races a Flyway still holding locks, and the database comes back exactly."""

from __future__ import annotations

from kubernetes import client

from tests.e2e.conftest import ParkingApp, _migration_files
from tests.support import postgres
from tests.support.wait import wait_for


def _migrate_sessions(database: str) -> int:
    with postgres.connect() as admin:
        row = admin.execute(
            # the migrate step's session: its own Job's, or the pre-started Job's it adopted
            "select count(*) from pg_stat_activity where datname = %s and application_name = any(%s)",
            (database, ["migration-operator-migrate", "migration-operator-armed-migrate"]),
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_migration_past_its_timeout_is_stopped_then_restored(parking: ParkingApp) -> None:
    files = _migration_files()
    # takes a lock on a table the restore drops, then sleeps far beyond the migrate timeout
    files["V6__slow.sql"] = "alter table clients add column slow_marker int;\nselect pg_sleep(900);\n"
    parking.core.replace_namespaced_config_map(
        "api-gateway-migrations", parking.namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="api-gateway-migrations"), data=files),
    )
    before = postgres.fingerprint(parking.database)
    parking.create_migration("slow", parking.spec(timeouts={"migrateSeconds": 20}))
    # preflight, drain and backup first (minutes on a loaded machine), then the migrate Job's session in its 20 s
    parking.wait_phase("slow", "Migrating", timeout=300)
    wait_for(lambda: _migrate_sessions(parking.database) > 0, timeout=120, what="flyway migrate running",
             describe=lambda: parking.describe("slow"))
    status = parking.wait_done("slow", timeout=300)
    assert status["phase"] == "RolledBack", parking.describe("slow")
    assert status["rollback"]["sessionsEnded"] is True
    # the sleeping statement was ended before the restore, which then put the database back exactly
    assert _migrate_sessions(parking.database) == 0
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)
