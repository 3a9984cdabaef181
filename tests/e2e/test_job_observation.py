"""`jobs.observe` against the live API (issue 10, point 4 and the waiting reasons of point 8): what the operator
reads of a Job is what the cluster reports, not what a unit test's fake says.

The Jobs are the operator's own manifests (`machine.build_job`, without the owner reference: no DatabaseMigration
owns them here) or minimal ones; the test process calls `jobs.observe` as a phase's `observe` would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from migration_operator import jobs, machine
from migration_operator.models import parse_spec
from migration_operator.observations import JobObservation
from migration_operator.reasons import Step
from tests.e2e.conftest import PREFIX
from tests.support import postgres
from tests.support.kube import temporary_namespace
from tests.support.wait import wait_for

BUSYBOX = "busybox:1.37"
DATABASE = postgres.cluster_endpoint()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    with temporary_namespace(api, f"{PREFIX}-jobobs") as name:
        yield name


def spec(**migrations: Any) -> Any:
    return parse_spec(
        {
            "database": {"host": DATABASE.host, "port": DATABASE.port, "name": "nowhere",
                         "credentialsSecret": {"name": "db-login"}},
            "migrations": migrations,
            "backup": {"enabled": False},
            "rollback": {"strategy": "None"},
        }
    )


def operator_job(namespace: str, name: str, migration_spec: Any, step: Step) -> dict[str, Any]:
    body = {"metadata": {"name": name, "namespace": namespace, "uid": "00000000-e2e"}}
    manifest = machine.build_job(body, migration_spec, step)
    del manifest["metadata"]["ownerReferences"]  # an owner that does not exist would have the Job collected
    return manifest


def create(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> str:
    client.BatchV1Api(api).create_namespaced_job(namespace, manifest)
    return str(manifest["metadata"]["name"])


def observe_until(namespace: str, job: str, done: Any, what: str) -> JobObservation:
    seen: list[JobObservation] = []

    def probe() -> JobObservation | None:
        seen.append(asyncio.run(jobs.observe(namespace, job)))
        return seen[-1] if done(seen[-1]) else None

    return wait_for(probe, timeout=90, what=what, interval=0.5, describe=lambda: repr(seen[-1:]))


def recent(when: datetime | None) -> bool:
    now = datetime.now(UTC)
    return when is not None and now - timedelta(minutes=2) <= when <= now + timedelta(seconds=5)


def test_an_image_that_cannot_be_pulled_is_reported_while_the_job_runs(api: client.ApiClient, namespace: str) -> None:
    """A typo in spec.migrations.image: the init container cannot start; the Job stays active (Running)."""
    image_spec = spec(image={"image": "ghcr.io/dbops/no-such-migrations:7", "path": "/flyway/sql"})
    job = create(api, namespace, operator_job(namespace, "typo", image_spec, Step.VALIDATE))
    observed = observe_until(
        namespace, job, lambda o: o.waiting_reason in ("ErrImagePull", "ImagePullBackOff"), "ErrImagePull reported"
    )
    assert observed.state == "Running" and observed.waiting_container == "copy-migrations"
    assert "no-such-migrations" in (observed.waiting_message or ""), observed
    assert recent(observed.waiting_since), observed


def test_a_missing_secret_key_is_reported_while_the_job_runs(api: client.ApiClient, namespace: str) -> None:
    """The credentials Secret without its password key: the Flyway container cannot be created."""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="db-login"), string_data={"username": "u"})
    )
    config_spec = spec(configMap={"name": "migrations"})
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="migrations"), data={"V1__a.sql": "select 1;"})
    )
    job = create(api, namespace, operator_job(namespace, "nokey", config_spec, Step.MIGRATE))
    observed = observe_until(
        namespace, job, lambda o: o.waiting_reason == "CreateContainerConfigError", "CreateContainerConfigError"
    )
    assert observed.state == "Running" and observed.waiting_container == "migrate", observed
    assert "password" in (observed.waiting_message or ""), observed
    assert recent(observed.waiting_since), observed


def test_a_long_output_is_read_whole_from_the_log(api: client.ApiClient, namespace: str) -> None:
    """A step printing 40 KiB, its head in the termination message (as every step script does)."""
    script = (
        "i=0; while [ $i -lt 800 ]; do printf 'line %04d %s\\n' $i 0123456789012345678901234567890123456789; "
        "i=$((i+1)); done >/tmp/message; cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log"
    )
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "long"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "migrate",
                            "image": BUSYBOX,
                            "command": ["sh", "-c", script],
                            "securityContext": restricted,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                }
            },
        },
    }
    job = create(api, namespace, manifest)
    observed = observe_until(namespace, job, lambda o: o.state != "Running", "the Job ended")
    expected = "".join(f"line {i:04d} 0123456789012345678901234567890123456789\n" for i in range(800))
    assert observed.state == "Succeeded" and observed.exit_code == 0, observed.failure
    assert (observed.output_source, observed.output_truncated) == ("log", False)
    assert observed.output == expected
