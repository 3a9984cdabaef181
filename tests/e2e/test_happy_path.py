"""The runbook end to end on the parking example: V1..V5 applied, gateway at 3 replicas, a DatabaseMigration
bringing V6 (a new table, a data backfill and a foreign key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.kube import kubectl_binary
from tests.support.operator import Operator
from tests.support.sampler import Sampler
from tests.support.wait import wait_for

METRICS = (
    ("dbmig_migrations_total", {"result": "Succeeded"}),
    ("dbmig_app_downtime_seconds_count", {}),
    ("dbmig_app_downtime_seconds_sum", {}),
    ("dbmig_phase_duration_seconds_count", {"phase": "Migrating"}),
    ("dbmig_phase_transitions_total", {"from_phase": "Migrating", "to_phase": "Verifying"}),
)


def read_metrics(operator: Operator | None) -> list[float]:
    return [operator.metric(name, **labels) for name, labels in METRICS] if operator else []


def test_v6_succeeds_with_the_gateway_down_only_while_it_migrates(
    parking: ParkingApp, operator: Operator | None
) -> None:
    parking.set_migrations("good")
    metrics_before = read_metrics(operator)
    in_flight = operator.metric("dbmig_migrations_in_flight") if operator else 0.0
    spec = parking.spec(migrations={"configMap": {"name": "api-gateway-migrations"}, "targetVersion": "6"},
                        verify={"requiredTables": ["clients", "parking_spots", "tickets", "parking_zones"],
                                "checks": [{"name": "every-spot-has-a-zone",
                                            "sql": "select count(*) = 0 from parking_spots where zone_id is null"}]})
    with Sampler(parking.api, parking.namespace, "parking-db-v6") as sampler:
        parking.create_migration("parking-db-v6", spec)
        # what `kubectl wait` users (and Argo CD) rely on
        wait = subprocess.run(
            [kubectl_binary(), "wait", "--for=condition=Ready", "dbmig/parking-db-v6", "-n", parking.namespace,
             "--timeout=400s"], capture_output=True, text=True)
        assert wait.returncode == 0, wait.stderr + parking.describe("parking-db-v6")
        parking.wait_gateway_available(3)

    status = parking.status("parking-db-v6")
    assert status["phase"] == "Succeeded", parking.describe("parking-db-v6")
    assert status["observedGeneration"] == parking.get("parking-db-v6")["metadata"]["generation"]

    # the gateway was stopped for the migration and only then
    migrating = sampler.during("Migrating")
    assert migrating, f"never saw the Migrating phase: {sampler.phases_seen()}"
    assert all(s.replicas == 0 and s.pods == 0 for s in migrating), migrating
    assert all(s.replicas == 3 for s in sampler.during("Preflight")), sampler.during("Preflight")
    # every phase of the runbook, in order, in the deployment log (short phases can fall between two samples)
    logged = [entry["phase"] for entry in status["log"]]
    order = [p for i, p in enumerate(logged) if i == 0 or logged[i - 1] != p]
    runbook = ["Preflight", "EnteringMaintenance", "BackingUp", "Migrating", "Verifying", "ExitingMaintenance",
               "Succeeded"]
    assert [p for p in order if p in runbook] == runbook, order

    # V6 applied, visible in status and in the database
    assert [m["version"] for m in status["pending"]] == ["6"]
    applied = {m["version"]: m for m in status["applied"]}
    assert applied["6"]["script"] == "V6__add_parking_zones.sql"
    assert applied["6"]["checksum"] is not None
    rows = postgres.history(parking.database)
    assert rows[-1][0] == "6" and rows[-1][4] is True
    assert all(row[4] for row in rows)

    before, after = status["before"], status["after"]
    assert before["version"] == "5" and after["version"] == "6"
    assert after["tables"] == before["tables"] + 1
    assert after["foreignKeys"] == before["foreignKeys"] + 1
    assert after["rows"]["public.parking_zones"] > 0
    assert after["rows"]["public.parking_spots"] == before["rows"]["public.parking_spots"]

    # the backup exists and was verified before anything changed
    assert status["backup"]["verified"] is True and status["backup"]["sizeBytes"] > 0
    # read back whole while pg_dump wrote it (the default postgres image's GNU tail follows the file), and counted:
    # what was read is the file on the volume
    backed_up = [entry["message"] for entry in status["log"] if "backup complete" in entry["message"]]
    assert backed_up and backed_up[-1].endswith("read back whole with pg_restore as pg_dump wrote it"), backed_up
    assert status["maintenance"]["originalReplicas"] == 3
    conditions = {c["type"]: c for c in status["conditions"]}
    for type_ in ("Ready", "BackupComplete", "Migrated", "Verified"):
        assert conditions[type_]["status"] == "True", conditions[type_]
    assert conditions["MaintenanceMode"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    assert status["log"] and any("V6" in entry["message"] or "6" in entry["message"] for entry in status["log"])

    # restart safety's other half: one Job per step, never recreated
    for name, uids in sampler.job_uids().items():
        assert len(uids) == 1, f"job {name} was created more than once"
    parking.wait_events("parking-db-v6", lambda events: len({e.reason for e in events}) >= 4,
                        "events for at least four phases")

    # the kubectl plugin, found by kubectl on PATH like any plugin
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    shown = subprocess.run([kubectl_binary(), "dbmig", "status", "parking-db-v6", "-n", parking.namespace],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Phase:      Succeeded" in shown.stdout and "V6__add_parking_zones.sql" in shown.stdout
    logs = subprocess.run([kubectl_binary(), "dbmig", "logs", "parking-db-v6", "-n", parking.namespace,
                           "--step", "migrate"], capture_output=True, text=True, env=env)
    assert logs.returncode == 0, logs.stderr
    # the migrate step's Job: the pre-started one (maintenance.prestartMigration is on by default)
    migrate_job = parking.status("parking-db-v6")["jobs"]["migrate"]
    assert migrate_job == "parking-db-v6-armed-migrate", parking.status("parking-db-v6")["jobs"]
    assert migrate_job in logs.stdout and '"migrationsExecuted"' in logs.stdout, logs.stdout[-2000:]

    # the operator's /metrics counted the run: outcome, downtime (no longer than the whole run), the phases
    if operator is not None:
        succeeded, downtimes, downtime, migrating, transitions = (
            after - before for after, before in zip(read_metrics(operator), metrics_before, strict=True))
        assert (succeeded, downtimes, migrating, transitions) == (1, 1, 1, 1), operator.metrics()
        # status times have a one-second resolution
        assert 0 < downtime <= sampler.duration() + 1, (downtime, sampler.duration())
        wait_for(lambda: operator.metric("dbmig_migrations_in_flight") == in_flight, timeout=30,
                 what="the finished run's daemon to stop (dbmig_migrations_in_flight back)")


def test_migrations_from_an_image_instead_of_a_configmap(parking: ParkingApp) -> None:
    """spec.migrations.image: the files come from an image (no 1 MiB ConfigMap limit), copied by an init
    container of that image into the Flyway Job."""
    spec = parking.spec(migrations={"image": {"image": "ghcr.io/dbops/parking-migrations:6", "path": "/flyway/sql"}})
    parking.create_migration("from-image", spec)
    status = parking.wait_done("from-image")
    assert status["phase"] == "Succeeded", parking.describe("from-image")
    assert [m["version"] for m in status["applied"]] == ["6"]
    assert postgres.history(parking.database)[-1][0] == "6"


def test_target_version_stops_short_of_newer_migrations(parking: ParkingApp) -> None:
    """targetVersion 6 with a V7 already in the source: V6 is applied, V7 stays pending for a later run."""
    parking.set_migrations("good")
    configmap = parking.core.read_namespaced_config_map("api-gateway-migrations", parking.namespace)
    configmap.data["V7__add_zone_notes.sql"] = "alter table parking_zones add column notes text;\n"
    parking.core.replace_namespaced_config_map("api-gateway-migrations", parking.namespace, configmap)
    spec = parking.spec(migrations={"configMap": {"name": "api-gateway-migrations"}, "targetVersion": "6"})
    parking.create_migration("to-six", spec)
    status = parking.wait_done("to-six")
    assert status["phase"] == "Succeeded", parking.describe("to-six")
    assert [row[0] for row in postgres.history(parking.database)][-1] == "6"
    assert status["after"]["version"] == "6"
