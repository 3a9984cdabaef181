"""Issue 11 on a live cluster with the chart installed: what the operator's ServiceAccount may do is bounded by the
admission policy (on by default), not only by RBAC, and the chart's allow-lists reach the operator.

The requests are made as the operator's ServiceAccount (impersonation, server-side dry run): a Job the operator would
create is admitted; the same Job without its owner, with a ServiceAccount token, a hostPath, another image, is
refused. A Deployment that did not opt in cannot be scaled by it, and no Deployment's pod template can be changed by
it. Runs after test_install.py (which uninstalls the release at its end): installs the release again, with
`policy.*` values, and uninstalls it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from migration_operator import machine, models
from tests.install.test_install import (
    APP_NS,
    DATABASE,
    OPERATOR_NS,
    RELEASE,
    REPO,
    SERVICE_ACCOUNT,
    delete_app_namespace,
    helm_binary,
    run,
)
from tests.support.kube import kubectl_binary, load_config
from tests.support.operator import image_pin
from tests.support.wait import wait_for

ALLOWED_IMAGES = "policy.allowedImages={docker.io/library/postgres:*,docker.io/flyway/flyway:*,ghcr.io/dbops/*}"


@pytest.fixture(scope="module")
def api() -> client.ApiClient:
    return load_config()


@pytest.fixture(scope="module")
def release(api: client.ApiClient) -> Iterator[None]:
    kubectl = kubectl_binary()
    delete_app_namespace(kubectl)
    run(kubectl, "apply", "-f", str(REPO / "manifests/examples/parking/namespace.yaml"))
    run(helm_binary(), "upgrade", "--install", RELEASE, str(REPO / "charts/migration-operator"), "--namespace",
        OPERATOR_NS, "--create-namespace", "--set", f"watchNamespaces={{{APP_NS}}}", "--set", ALLOWED_IMAGES,
        "--set", f"policy.allowedHosts={{{DATABASE.host}}}", *image_pin(), "--wait", "--timeout", "3m")
    yield
    delete_app_namespace(kubectl)
    run(helm_binary(), "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", check=False)


def as_operator(*args: str, stdin: str | None = None) -> tuple[bool, str]:
    """kubectl as the operator's ServiceAccount, server-side dry run: (admitted, what the API server said)."""
    result = run(kubectl_binary(), f"--as={SERVICE_ACCOUNT}", "--as-group=system:serviceaccounts",
                 f"--as-group=system:serviceaccounts:{OPERATOR_NS}", *args, "--dry-run=server", stdin=stdin,
                 check=False)
    return result.returncode == 0, result.stdout + result.stderr


def operator_job() -> dict[str, Any]:
    spec = models.parse_spec({
        "database": {"host": DATABASE.host, "port": DATABASE.port, "name": "parking_db",
                     "credentialsSecret": {"name": "parking-db-admin"}},
        "migrations": {"configMap": {"name": "migrations"}},
        "backup": {"method": "Dump", "volume": {"claimName": "db-backups"}},
    })
    body = {"metadata": {"name": "vap", "namespace": APP_NS, "uid": "00000000-0000-0000-0000-0000000000aa"}}
    return machine.build_job(body, spec, "migrate")


def create_job(job: dict[str, Any]) -> tuple[bool, str]:
    return as_operator("-n", APP_NS, "create", "-f", "-", stdin=json.dumps(job))


def test_the_operator_may_create_the_jobs_it_creates(release: None) -> None:
    admitted, said = create_job(operator_job())
    assert admitted, said


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda j: j["metadata"].pop("ownerReferences"), "owned by a DatabaseMigration"),
        (lambda j: j["metadata"]["labels"].pop("app.kubernetes.io/managed-by"), "managed-by"),
        (lambda j: j["spec"]["template"]["spec"].update(automountServiceAccountToken=True), "ServiceAccount token"),
        (lambda j: j["spec"]["template"]["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
         "volumes only"),
        (lambda j: j["spec"]["template"]["spec"]["containers"][0].update(image="evil.example/miner:1"),
         "allowed images"),
        (lambda j: j["spec"]["template"]["spec"].update(hostNetwork=True), "host namespace"),
    ],
    ids=["no-owner", "not-labelled", "token", "host-path", "image", "host-network"],
)
def test_the_operator_may_create_no_other_job(release: None, change: Any, refusal: str) -> None:
    """`create jobs` in a namespace is all or nothing for RBAC: the admission policy makes it "only ours"."""
    job = copy.deepcopy(operator_job())
    change(job)
    admitted, said = create_job(job)
    assert not admitted, said
    assert refusal in said, said


def _deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "app", "image": "ghcr.io/dbops/parking-gateway:0.1.0"}]}}}}


def test_the_operator_scales_only_deployments_that_opted_in_and_changes_nothing_else(
    api: client.ApiClient, release: None
) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(APP_NS, _deployment("someone-elses", {"app": "someone-elses"}))
    apps.create_namespaced_deployment(APP_NS, _deployment("opted-in", {"app": "opted-in",
                                                                       "dbops.io/maintenance": "allowed"}))
    scale = json.dumps({"spec": {"replicas": 0}, "metadata": {"annotations": {"dbops.io/original-replicas": "1"}}})
    admitted, said = as_operator("-n", APP_NS, "patch", "deployment", "someone-elses", "--type=merge", "-p", scale)
    assert not admitted and "dbops.io/maintenance" in said, said
    admitted, said = as_operator("-n", APP_NS, "patch", "deployment", "opted-in", "--type=merge", "-p", scale)
    assert admitted, said
    image = json.dumps({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil.example/x"}]}}}})
    admitted, said = as_operator("-n", APP_NS, "patch", "deployment", "opted-in", "--type=merge", "-p", image)
    assert not admitted and "never what it runs" in said, said
    foreign = json.dumps({"metadata": {"annotations": {"other.io/x": "y"}}})
    admitted, said = as_operator("-n", APP_NS, "patch", "deployment", "opted-in", "--type=merge", "-p", foreign)
    assert not admitted and "dbops.io/ annotations" in said, said


def test_the_charts_allow_lists_reach_the_operator(api: client.ApiClient, release: None) -> None:
    """policy.allowedImages / allowedHosts of the release: a run with another image or host fails in preflight."""
    custom = client.CustomObjectsApi(api)
    base = {"database": {"host": DATABASE.host, "port": DATABASE.port, "name": "parking_db",
                         "credentialsSecret": {"name": "missing"}},
            "migrations": {"configMap": {"name": "missing"}}, "backup": {"enabled": False},
            "rollback": {"strategy": "None"}}
    runs = {
        "other-image": {**base, "jobTemplate": {"flywayImage": "evil.example/flyway:12"}},
        "other-host": {**base, "database": {**base["database"], "host": "db.evil.example"}},
    }
    for name, spec in runs.items():
        custom.create_namespaced_custom_object("dbops.io", "v1alpha1", APP_NS, "databasemigrations", {
            "apiVersion": "dbops.io/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name}, "spec": spec})

    def stalled(name: str) -> str | None:
        status = custom.get_namespaced_custom_object("dbops.io", "v1alpha1", APP_NS, "databasemigrations",
                                                     name).get("status") or {}
        found = [c for c in status.get("conditions") or [] if c["type"] == "Stalled" and c["status"] == "True"]
        return found[0]["reason"] if found else None

    assert wait_for(lambda: stalled("other-image"), timeout=120, what="other-image refused") == "ImageNotAllowed"
    assert wait_for(lambda: stalled("other-host"), timeout=120, what="other-host refused") == "HostNotAllowed"
    # refused before anything ran: no Job, no credential sent (the Secret does not even exist)
    assert not run(kubectl_binary(), "-n", APP_NS, "get", "jobs", "-o", "name").stdout.strip()
