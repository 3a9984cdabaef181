"""The operator's own API client (`migration_operator.kube`) against the real API server: every kind of call the
operator makes, with the answers it relies on (404 -> None, 409 on a stale resourceVersion, a status merge-patch, a
Deployment's scale by strategic merge, a Job's foreground delete, a bounded pod log). The unit tests check the
client against a local HTTP server; this checks that the paths, content types and bodies are the ones Kubernetes
itself accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from kubernetes import client

from migration_operator import constants, kube
from tests.cluster.helpers import BUSYBOX, container, restricted
from tests.support.bench_runs import ensure_crd
from tests.support.kube import wait_crd_established
from tests.support.wait import wait_for
from tests.unit.specs import parking

NAMESPACE_PREFIX = "kubeclient"
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def closing() -> T:
        try:
            return await coroutine
        finally:
            await kube.close()

    return asyncio.run(closing())


def test_reads_answer_none_for_what_does_not_exist(api: client.ApiClient, ns: str) -> None:
    for resource in ("secrets", "configmaps", "persistentvolumeclaims", "deployments", "jobs", "leases"):
        assert run(kube.get_or_none(resource, ns, "no-such-object")) is None, resource
    assert run(kube.get_migration(ns, "no-such-run")) is None
    assert run(kube.read_secret(ns, "no-such-secret", ["password"])) is None
    assert run(kube.namespace_terminating(ns)) is False
    assert run(kube.namespace_terminating("no-such-namespace-kc")) is True


def test_a_secret_and_a_config_map_read_as_the_api_holds_them(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "login", "labels": {"dbops.io/credentials": "true"}},
                                       "stringData": {"username": "app", "password": "s3cr\u00e9t"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "files"}, "data": {"V1__a.sql": "select 1;"}})
    found = run(kube.read_secret(ns, "login", ["password", "absent"]))
    assert found is not None
    assert found.values == {"password": "s3cr\u00e9t"}
    assert found.labels == {"dbops.io/credentials": "true"}
    assert run(kube.get("configmaps", ns, "files"))["data"] == {"V1__a.sql": "select 1;"}


def test_a_job_is_created_listed_logged_and_deleted(api: client.ApiClient, ns: str) -> None:
    labels = {constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE, "kc": "yes"}
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "talk", "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container("main", BUSYBOX, ["sh", "-c", "printf 'line-%s\\n' 1 2 3 4 5 6 7 8 9"])],
        }}},
    }
    made = run(kube.create("jobs", ns, job))
    assert made["metadata"]["name"] == "talk" and made["metadata"]["uid"]
    jobs = run(kube.list_items("jobs", ns, "kc=yes"))
    assert [j["metadata"]["name"] for j in jobs] == ["talk"]

    def finished_pod() -> dict[str, Any] | None:
        pods = run(kube.list_items("pods", ns, "job-name=talk"))
        return pods[0] if pods and pods[0]["status"].get("phase") == "Succeeded" else None

    pod = wait_for(finished_pod, timeout=120, what="the Job's pod Succeeded")
    whole = run(kube.read_pod_log(ns, pod["metadata"]["name"], "main", 1000))
    assert whole is not None and not whole.truncated and whole.text.count("line-") == 9
    head = run(kube.read_pod_log(ns, pod["metadata"]["name"], "main", 14))
    assert head is not None and head.truncated and head.text == "line-1\nline-2\n"
    assert run(kube.read_pod_log(ns, "no-such-pod", "main", 100)) is None  # 404: the log will not come
    run(kube.delete("jobs", ns, "talk", {"propagationPolicy": "Foreground"}))
    wait_for(lambda: run(kube.get_or_none("jobs", ns, "talk")) is None, timeout=60, what="the Job gone")


def test_a_deployment_is_scaled_by_strategic_merge_patch(api: client.ApiClient, ns: str) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(ns, {
        "metadata": {"name": "app"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "kc"}}, "template": {
            "metadata": {"labels": {"app": "kc"}},
            "spec": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
                                     "securityContext": restricted()}]}}},
    })
    patched = run(kube.patch("deployments", ns, "app", {"spec": {"replicas": 2}},
                             content_type=kube.STRATEGIC_MERGE_PATCH, field_manager="migration-operator"))
    assert patched["spec"]["replicas"] == 2
    assert run(kube.get("deployments", ns, "app"))["spec"]["replicas"] == 2
    managers = {m["manager"] for m in run(kube.get("deployments", ns, "app"))["metadata"]["managedFields"]}
    assert "migration-operator" in managers


def test_a_lease_replace_with_a_stale_version_is_a_409(api: client.ApiClient, ns: str) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "db"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                      "renewTime": "2026-12-02T17:10:16.123456Z"}}
    made = run(kube.create("leases", ns, lease))
    assert kube.parse_time(made["spec"]["renewTime"]) is not None
    taken = made | {"spec": made["spec"] | {"holderIdentity": "b"}}
    replaced = run(kube.replace("leases", ns, "db", taken))
    assert replaced["spec"]["holderIdentity"] == "b"
    stale = made | {"spec": made["spec"] | {"holderIdentity": "c"}}  # the first read's resourceVersion
    try:
        run(kube.replace("leases", ns, "db", stale))
    except kube.ApiError as error:
        assert error.status == 409, error
    else:
        raise AssertionError("a replace with a stale resourceVersion was accepted")
    try:
        run(kube.create("leases", ns, lease))
    except kube.ApiError as error:
        assert error.status == 409, error  # AlreadyExists
    else:
        raise AssertionError("a second Lease of the same name was created")
    run(kube.delete("leases", ns, "db", {}))
    assert run(kube.get_or_none("leases", ns, "db")) is None


def test_a_migration_status_is_merge_patched(api: client.ApiClient, ns: str) -> None:
    """(No operator watches this suite's namespaces: the status is only what this test writes.)"""
    ensure_crd(api)
    wait_crd_established(api, f"{constants.PLURAL}.{constants.GROUP}")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, ns, constants.PLURAL, {
            "apiVersion": f"{constants.GROUP}/{constants.VERSION}", "kind": "DatabaseMigration",
            "metadata": {"name": "run"}, "spec": parking(),
        })
    run(kube.patch_migration_status(ns, "run", {"status": {"phase": "Pending", "message": "one"}}))
    run(kube.patch_migration_status(ns, "run", {"status": {"message": "two"}}))
    found = run(kube.get_migration(ns, "run"))
    assert found is not None
    assert found["status"]["phase"] == "Pending" and found["status"]["message"] == "two"
