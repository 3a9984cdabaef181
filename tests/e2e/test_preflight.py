"""Preflight failures: the app is never scaled, the run ends Failed with Stalled=True and a reason that says
exactly what to fix."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.sampler import Sampler


def _assert_failed_without_touching_the_app(parking: ParkingApp, name: str, reason: str, text: str) -> None:
    generation = parking.deployment().metadata.generation
    with Sampler(parking.api, parking.namespace, name) as sampler:
        status = parking.wait_done(name, timeout=240)
    assert status["phase"] == "Failed", parking.describe(name)
    stalled = parking.condition(name, "Stalled")
    assert stalled and stalled["status"] == "True", parking.describe(name)
    assert stalled["reason"] == reason, stalled
    assert text in stalled["message"], stalled
    assert all(s.replicas in (3, None) for s in sampler.samples), "the app was scaled"
    deployment = parking.deployment()
    assert deployment.metadata.generation == generation
    assert "dbops.io/original-replicas" not in (deployment.metadata.annotations or {})
    assert not any(j.metadata.labels.get("dbops.io/step") in ("backup", "migrate") for j in parking.jobs(name))
    assert [row[0] for row in postgres.history(parking.database) if row[4]][-1] == "5"


def test_wrong_password_fails_preflight(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.core.create_namespaced_secret(parking.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="wrong-login", labels={"dbops.io/credentials": "true"}),
        data={"username": base64.b64encode(b"parking_admin").decode(),
              "password": base64.b64encode(b"not-the-password").decode()}))
    spec = parking.spec()
    spec["database"]["credentialsSecret"] = {"name": "wrong-login"}
    parking.create_migration("bad-password", spec)
    _assert_failed_without_touching_the_app(parking, "bad-password", "BadCredentials", 'for user "***"')
    # the secret never leaks into what users and logs see: not the password, not the user name PostgreSQL echoes
    assert "not-the-password" not in str(parking.get("bad-password"))
    assert "parking_admin" not in str(parking.get("bad-password"))
    if parking.operator is not None:
        assert "not-the-password" not in parking.operator.log_text()


def test_missing_deployment_fails_preflight(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.create_migration("no-app", parking.spec(maintenance={"deployment": {"name": "does-not-exist"}}))
    _assert_failed_without_touching_the_app(parking, "no-app", "DeploymentNotFound", "does-not-exist")


def test_failed_row_in_history_fails_preflight(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    with postgres.connect(parking.database) as conn:
        conn.execute(
            """insert into flyway_schema_history
               (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success)
               values (100, '5.1', 'half done', 'SQL', 'V5_1__half_done.sql', 1, 'parking_admin', 1, false)""")
    parking.create_migration("failed-row", parking.spec())
    _assert_failed_without_touching_the_app(parking, "failed-row", "FailedMigrationInHistory", "5.1")


def test_modified_applied_migration_is_a_checksum_mismatch(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    configmap = parking.core.read_namespaced_config_map("api-gateway-migrations", parking.namespace)
    script = next(k for k in configmap.data if k.startswith("V3__"))
    configmap.data[script] += "\n-- edited after it was applied\nselect 1;\n"
    parking.core.replace_namespaced_config_map("api-gateway-migrations", parking.namespace, configmap)
    parking.create_migration("checksum", parking.spec())
    _assert_failed_without_touching_the_app(parking, "checksum", "ChecksumMismatch", "3")


@pytest.mark.parametrize("missing", ["configmap"])
def test_missing_migrations_configmap_fails_preflight(parking: ParkingApp, missing: str) -> None:
    parking.create_migration("no-cm", parking.spec(migrations={"configMap": {"name": "nope"}}))
    _assert_failed_without_touching_the_app(parking, "no-cm", "MigrationsConfigMapNotFound", "nope")


def test_applied_migration_missing_from_the_source_is_an_error(parking: ParkingApp) -> None:
    """The runbook's ignore-missing-migrations: false: a release that lost an applied script must not run."""
    parking.set_migrations("good")
    configmap = parking.core.read_namespaced_config_map("api-gateway-migrations", parking.namespace)
    del configmap.data[next(k for k in configmap.data if k.startswith("V4__"))]
    parking.core.replace_namespaced_config_map("api-gateway-migrations", parking.namespace, configmap)
    parking.create_migration("missing", parking.spec())
    _assert_failed_without_touching_the_app(parking, "missing", "MissingMigration", "4")
