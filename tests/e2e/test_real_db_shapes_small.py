"""Small items of issue 10 point 8 on the live cluster: SQL callbacks among the migrations (preflight and dry runs run
none of them, migrate runs them), who scaled the app (managedFields as the API server writes them), and two runs of
one app against two databases (the maintenance Deployment's Lease)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from migration_operator import maintenance
from tests.e2e.conftest import PREFIX, ParkingApp
from tests.support import postgres
from tests.support.kube import kubectl_binary, temporary_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

# Every callback event the migrate and preflight commands can fire, each logging itself.
CALLBACKS = ("beforeValidate", "afterValidate", "beforeInfo", "afterInfo",
             "beforeMigrate", "beforeEachMigrate", "afterMigrate")


def with_callbacks(parking: ParkingApp) -> None:
    """The `good` migrations (V6 pending) plus one SQL callback per event, each inserting a row into callback_log."""
    parking.set_migrations("good")
    with postgres.connect(parking.database, user=postgres.APP_ROLE, password=postgres.APP_PASSWORD) as conn:
        conn.execute("create table public.callback_log (id serial primary key, event text not null)")
    name = "api-gateway-migrations"
    config_map = parking.core.read_namespaced_config_map(name, parking.namespace)
    data = dict(config_map.data)
    for event in CALLBACKS:
        data[f"{event}.sql"] = f"insert into public.callback_log (event) values ('{event}');\n"
    config_map.data = data
    parking.core.replace_namespaced_config_map(name, parking.namespace, config_map)


def callback_log(database: str) -> list[str]:
    with postgres.connect(database) as conn:
        return [row[0] for row in conn.execute("select event from public.callback_log order by id").fetchall()]


def test_dry_run_runs_no_sql_callback(parking: ParkingApp) -> None:
    """beforeValidate.sql, beforeInfo.sql ... would write before any backup exists: the preflight's validate and
    info skip them, so a dry run writes nothing."""
    with_callbacks(parking)
    counters = postgres.write_counters(parking.database)
    parking.create_migration("dry", parking.spec(dryRun=True))
    status = parking.wait_done("dry")
    assert status["phase"] == "Succeeded", parking.describe("dry")
    assert [m["version"] for m in status["pending"]] == ["6"]
    assert callback_log(parking.database) == []
    assert postgres.write_counters(parking.database) == counters


def test_migrate_runs_the_sql_callbacks_and_preflight_none(parking: ParkingApp) -> None:
    """A real run: the callbacks fire once, from `flyway migrate` (whose built-in validation fires the validate
    pair), after the backup; none from the preflight (no info callbacks at all, one validate pair)."""
    with_callbacks(parking)
    parking.create_migration("with-callbacks", parking.spec())
    status = parking.wait_done("with-callbacks")
    assert status["phase"] == "Succeeded", parking.describe("with-callbacks")
    assert callback_log(parking.database) == [
        "beforeValidate", "afterValidate", "beforeMigrate", "beforeEachMigrate", "afterMigrate"
    ]
    parking.wait_gateway_available(3)


# ------------------------------------------------------------------------------ who scaled the app
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def idle_deployment(replicas: int) -> dict[str, Any]:
    """A Deployment whose pods never start (its image exists nowhere: they wait in ErrImagePull/ImagePullBackOff):
    cheap pods that still count for the drain."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "labels": {"app": "idle"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "idle"}},
            "template": {
                "metadata": {"labels": {"app": "idle"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": "example.invalid/never-pulled:1",
                                    "securityContext": RESTRICTED_CONTAINER}],
                },
            },
        },
    }


@pytest.fixture
def idle_app(api: client.ApiClient) -> Iterator[str]:
    with temporary_namespace(api, f"{PREFIX}-scale") as namespace:
        client.AppsV1Api(api).create_namespaced_deployment(
            namespace, idle_deployment(2), field_manager="e2e-release-tool"
        )
        yield namespace


def kubectl(*args: str) -> None:
    subprocess.run([kubectl_binary(), *args], check=True, capture_output=True, text=True, timeout=60)


def test_the_deployment_observation_names_who_scaled_it(idle_app: str) -> None:
    """The operator scales under its own field manager, so whoever scales the app next takes spec.replicas over and
    is named. (Had it scaled to 0 through the scale subresource, nobody would own the field afterwards, and a
    `kubectl scale` would then be recorded under no manager at all.)"""
    namespace = idle_app

    def observe() -> Any:
        return asyncio.run(maintenance.observe(namespace, "app"))

    assert observe().replicas_manager == "e2e-release-tool"
    wait_for(lambda: observe().pods == 2, timeout=60, what="2 pending pods counted by the drain")
    asyncio.run(maintenance.scale(namespace, "app", 0, record_original=2, owner="e2e"))
    assert observe().replicas_manager == "migration-operator"
    wait_for(lambda: observe().pods == 0, timeout=60, what="the drain to count no pod")
    kubectl("-n", namespace, "scale", "deployment/app", "--replicas=1")
    scaled = observe()
    assert (scaled.replicas, scaled.replicas_manager) == (1, "kubectl")
    asyncio.run(maintenance.scale(namespace, "app", 0))
    assert observe().replicas_manager == "migration-operator"


# ------------------------------------------------------------------- one app, two databases
def test_a_second_database_of_the_same_app_waits_for_the_first_run(parking: ParkingApp) -> None:
    """Two runs scaling one Deployment would scale it over each other: the second (another database, same app)
    waits in Pending, naming the first and the Deployment, until the first is done."""
    parking.set_migrations("good")
    with postgres.cloned_database("e2e_other") as other, postgres.connect(
        parking.database, application_name="nightly-report"
    ):
        # the first run holds both Leases while its drain waits on the report's session
        parking.create_migration("first", parking.spec())
        wait_for(lambda: "nightly-report" in str(parking.status("first").get("message")), timeout=240,
                 what="the first run draining, held by the session", describe=lambda: parking.describe("first"))
        database = {**parking.spec()["database"], "name": other}
        parking.create_migration("second", parking.spec(database=database))
        expected = f"waiting for {parking.namespace}/first (holding Deployment {parking.namespace}/api-gateway)"
        wait_for(lambda: expected in str(parking.status("second").get("message")), timeout=60,
                 what="the second run waiting for the first", describe=lambda: parking.describe("second"))
        assert parking.status("second")["phase"] == "Pending"
        assert postgres.history(other)[-1][0] == "5"
        parking.custom.delete_namespaced_custom_object(
            "dbops.io", "v1alpha1", parking.namespace, "databasemigrations", "second")
    assert parking.wait_done("first")["phase"] == "Succeeded", parking.describe("first")
    parking.wait_gateway_available(3)
