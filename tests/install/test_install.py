"""Issue 6's proofs on a live cluster: the Helm chart installs the operator as a pod under its own
ServiceAccount with least-privilege RBAC, the kustomize example migrates with `kubectl apply -k` + `kubectl
wait`, and every Job the operator generates passes PodSecurity `restricted` admission."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from psycopg import sql

from migration_operator import machine, models
from tests.support import postgres
from tests.support.kube import kubectl_binary, load_config, temporary_namespace
from tests.support.operator import helm_binary, image_pin
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
RELEASE, OPERATOR_NS, APP_NS = "migration-operator", "migration-operator-system", "parking"
SCRATCH_NS = "parking-scratch"  # a second watched namespace, deleted by a test with runs still in it
WATCHED = f"watchNamespaces={{{APP_NS},{SCRATCH_NS}}}"
CRD = "databasemigrations.dbops.io"
SERVICE_ACCOUNT = f"system:serviceaccount:{OPERATOR_NS}:migration-operator"
DATABASE = postgres.cluster_endpoint()  # where the operator and the pods reach PostgreSQL




def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def delete_app_namespace(kubectl: str) -> None:
    """Migrations first, so a run left in flight by a failed test hands the app back before it goes. Deleting
    the namespace directly works too: see the test of a watched namespace deleted with runs in it."""
    run(kubectl, "-n", APP_NS, "delete", "databasemigrations", "--all", "--wait=true", "--timeout=120s", check=False)
    run(kubectl, "delete", "namespace", APP_NS, "--ignore-not-found", "--wait=true", "--timeout=180s")


def reset_parking_db() -> None:
    with postgres.connect() as conn:
        postgres.terminate_sessions(conn, "parking_db")
        conn.execute("drop database if exists parking_db with (force)")
        conn.execute(sql.SQL("create database parking_db template {} owner {}").format(
            sql.Identifier(postgres.TEMPLATE_DATABASE), sql.Identifier(postgres.APP_ROLE)))


@pytest.fixture(scope="module")
def api() -> client.ApiClient:
    return load_config()


@pytest.fixture(scope="module")
def chart(api: client.ApiClient) -> Iterator[None]:
    """The chart installed like a user would (release migration-operator, watching namespace parking), on a
    fresh parking namespace and a parking_db back at V5."""
    kubectl = kubectl_binary()
    delete_app_namespace(kubectl)
    # a run left by an earlier failed session, with nobody to remove its finalizer: released by hand
    for name in run(kubectl, "-n", SCRATCH_NS, "get", "dbmig", "-o", "name", check=False).stdout.split():
        run(kubectl, "-n", SCRATCH_NS, "patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
            check=False)
    run(kubectl, "delete", "namespace", SCRATCH_NS, "--ignore-not-found", "--wait=true", "--timeout=180s")
    reset_parking_db()
    run(kubectl, "apply", "-f", str(REPO / "manifests/examples/parking/namespace.yaml"))
    run(kubectl, "create", "namespace", SCRATCH_NS)
    # a CRD installed earlier by other means (the e2e suite applies the committed file) is adopted by the release
    for command in (
        ("annotate", "--overwrite", f"meta.helm.sh/release-name={RELEASE}",
         f"meta.helm.sh/release-namespace={OPERATOR_NS}"),
        ("label", "--overwrite", "app.kubernetes.io/managed-by=Helm"),
    ):
        run(kubectl, command[0], "crd", CRD, *command[1:], check=False)
    run(helm_binary(), "upgrade", "--install", RELEASE, str(REPO / "charts/migration-operator"),
        "--namespace", OPERATOR_NS, "--create-namespace", "--set", WATCHED, *image_pin(),
        "--wait", "--timeout", "3m")
    yield
    run(helm_binary(), "upgrade", "--install", RELEASE, str(REPO / "charts/migration-operator"),
        "--namespace", OPERATOR_NS, "--set", f"watchNamespaces={{{APP_NS}}}", *image_pin(), "--wait", "--timeout", "3m",
        check=False)
    delete_app_namespace(kubectl)
    run(kubectl, "delete", "namespace", SCRATCH_NS, "--ignore-not-found", "--wait=true", "--timeout=180s", check=False)
    run(helm_binary(), "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", check=False)


LEADER_LEASE = f"{RELEASE}-leader"  # the chart's default: <fullname>-leader


def _operator_pods(api: client.ApiClient) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        OPERATOR_NS, label_selector="app.kubernetes.io/name=migration-operator").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def _leader_name(api: client.ApiClient) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEADER_LEASE, OPERATOR_NS)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity or None


def _operator_pod(api: client.ApiClient) -> client.V1Pod:
    """The acting replica: the pod the leader Lease names (the chart runs two, one standing by)."""
    live = _operator_pods(api)
    assert len(live) == 2, [p.metadata.name for p in live]
    leader = _leader_name(api)
    found = [p for p in live if p.metadata.name == leader]
    assert found, f"the leader Lease names {leader}, not one of {[p.metadata.name for p in live]}"
    return found[0]


def test_operator_runs_as_a_pod_under_the_charts_service_account(api: client.ApiClient, chart: None) -> None:
    pod = wait_for(lambda: _operator_pod(api), timeout=60, what="a leader among the operator's pods")
    assert pod.status.phase == "Running"
    assert pod.spec.service_account_name == "migration-operator"
    assert all(c.ready for c in pod.status.container_statuses)


def test_two_replicas_one_leader_and_a_ready_standby(api: client.ApiClient, chart: None) -> None:
    """The chart's default: two replicas, both Ready (the standby answers the probes itself, so rolling updates and
    `helm --wait` progress), exactly one acting: the Lease's holder, whose log says it leads, while the other's says
    it stands by."""
    kubectl = kubectl_binary()
    leader = wait_for(lambda: _operator_pod(api), timeout=60, what="a leader among the operator's pods")
    pods = _operator_pods(api)
    assert all(c.ready for p in pods for c in p.status.container_statuses), [p.status for p in pods]
    standby = next(p for p in pods if p.metadata.name != leader.metadata.name)
    assert "stands by" in run(kubectl, "-n", OPERATOR_NS, "logs", standby.metadata.name).stdout
    leading = run(kubectl, "-n", OPERATOR_NS, "logs", leader.metadata.name).stdout
    assert f"{leader.metadata.name} now leads" in leading
    budget = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(RELEASE, OPERATOR_NS)
    assert budget.spec.min_available == 1


def test_kustomize_example_migrates_with_the_in_cluster_operator(api: client.ApiClient, chart: None) -> None:
    kubectl = kubectl_binary()
    run(kubectl, "apply", "-k", str(REPO / "manifests/examples/parking"))
    wait = run(kubectl, "-n", APP_NS, "wait", "--for=condition=Ready", "dbmig/parking-db-v6", "--timeout=400s",
               check=False)
    status = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "dbops.io", "v1alpha1", APP_NS, "databasemigrations", "parking-db-v6").get("status", {})
    assert wait.returncode == 0, yaml.safe_dump(status) + wait.stderr
    assert status["phase"] == "Succeeded"
    assert [row[0] for row in postgres.history("parking_db")][-1] == "6"
    # the namespace enforces PodSecurity restricted: the admission plugin accepted every Job's pods
    labels = client.CoreV1Api(api).read_namespace(APP_NS).metadata.labels
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    steps = {j.metadata.labels["dbops.io/step"] for j in client.BatchV1Api(api).list_namespaced_job(
        APP_NS, label_selector="dbops.io/migration=parking-db-v6").items}
    # the backup and migrate steps ran in their pre-started Jobs (maintenance.prestartMigration, on by default)
    assert {"validate", "backup", "migrate"} <= set(status["jobs"]), status["jobs"]
    assert {"validate", "armed-backup", "armed-migrate"} <= steps, steps
    wait_for(lambda: (client.AppsV1Api(api).read_namespaced_deployment("api-gateway", APP_NS)
                      .status.available_replicas or 0) == 3, timeout=120, what="gateway back at 3")


def _allowed(api: client.ApiClient, verb: str, resource: str, namespace: str | None, group: str = "",
             subresource: str | None = None) -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=SERVICE_ACCOUNT, groups=["system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NS}"],
        resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, namespace=namespace,
                                                        group=group, subresource=subresource)))
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


def test_rbac_is_sufficient_in_watched_namespaces_and_nothing_more(api: client.ApiClient, chart: None) -> None:
    assert _allowed(api, "get", "secrets", APP_NS)
    assert _allowed(api, "create", "jobs", APP_NS, "batch")
    assert _allowed(api, "patch", "deployments", APP_NS, "apps")
    assert _allowed(api, "create", "leases", OPERATOR_NS, "coordination.k8s.io")
    # a Job's output is read whole from its pod's log (the termination message holds 4 KiB)
    assert _allowed(api, "get", "pods", APP_NS, subresource="log")
    # not excessive: nothing outside the watched namespace, no cluster-wide secrets, never write secrets
    assert not _allowed(api, "get", "secrets", "default")
    assert not _allowed(api, "list", "secrets", None)
    assert not _allowed(api, "create", "secrets", APP_NS)
    assert not _allowed(api, "get", "pods", "default", subresource="log")
    assert not _allowed(api, "create", "jobs", "default", "batch")
    assert not _allowed(api, "patch", "deployments", "kube-system", "apps")
    assert not _allowed(api, "create", "leases", APP_NS, "coordination.k8s.io")
    assert not _allowed(api, "delete", "databasemigrations", APP_NS, "dbops.io")
    # its own resource is the exception, everywhere: it must remove its finalizer from runs in a namespace being
    # deleted, whose Role is deleted at the same moment
    assert _allowed(api, "patch", "databasemigrations", "default", "dbops.io")
    assert not _allowed(api, "delete", "databasemigrations", "default", "dbops.io")


def _scratch_run(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "dbops.io/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name},
            "spec": {"database": {"host": DATABASE.host, "port": DATABASE.port, "name": "scratch_db",
                                  "credentialsSecret": {"name": "missing"}},
                     "migrations": {"configMap": {"name": "missing"}},
                     "backup": {"method": "Dump", "volume": {"claimName": "missing"}}, **spec}}


def test_deleting_a_watched_namespace_with_runs_neither_sticks_nor_stops_the_operator(
    api: client.ApiClient, chart: None
) -> None:
    """With per-namespace Roles, deleting a watched namespace deletes the operator's Role in it together with the
    runs, whose finalizer the operator must still remove. The Role is deleted first here and the operator
    restarted, so it surely meets the 403s: kopf would stop on the first refused watch without our patch."""
    kubectl, custom, core = kubectl_binary(), client.CustomObjectsApi(api), client.CoreV1Api(api)
    custom.create_namespaced_custom_object("dbops.io", "v1alpha1", SCRATCH_NS, "databasemigrations",
                                           _scratch_run("held", approval={"required": True}))
    custom.create_namespaced_custom_object("dbops.io", "v1alpha1", SCRATCH_NS, "databasemigrations",
                                           _scratch_run("stalled"))

    def phase(namespace: str, name: str) -> str | None:
        found = custom.get_namespaced_custom_object("dbops.io", "v1alpha1", namespace, "databasemigrations", name)
        return (found.get("status") or {}).get("phase")

    wait_for(lambda: phase(SCRATCH_NS, "held") == "AwaitingApproval", timeout=120, what="held waiting for approval")
    wait_for(lambda: phase(SCRATCH_NS, "stalled") in ("Failed", "Stalled"), timeout=120, what="stalled run ended")
    run(kubectl, "-n", SCRATCH_NS, "delete", "rolebinding", RELEASE)
    old = _operator_pod(api)
    core.delete_namespaced_pod(old.metadata.name, OPERATOR_NS)  # the standby takes over; a new standby comes
    wait_for(lambda: len(_operator_pods(api)) == 2 and (p := _operator_pod(api)).metadata.name != old.metadata.name
             and p.status.container_statuses and all(c.ready for c in p.status.container_statuses),
             timeout=180, what="a new operator leader ready")
    pod = _operator_pod(api)
    wait_for(lambda: f"in namespace {SCRATCH_NS} is forbidden" in run(
        kubectl, "-n", OPERATOR_NS, "logs", pod.metadata.name).stdout, timeout=60,
        what="the operator meeting the refused watch in the scratch namespace")
    deleted = run(kubectl, "delete", "namespace", SCRATCH_NS, "--wait=true", "--timeout=120s", check=False)
    assert deleted.returncode == 0, deleted.stderr + run(kubectl, "get", "namespace", SCRATCH_NS, "-o", "yaml",
                                                         check=False).stdout
    after = _operator_pod(api)
    assert after.metadata.name == pod.metadata.name
    assert all(c.restart_count == 0 and c.ready for c in after.status.container_statuses), after.status
    # and it still serves the other namespace
    custom.create_namespaced_custom_object("dbops.io", "v1alpha1", APP_NS, "databasemigrations",
                                           _scratch_run("still-served", approval={"required": True}))
    try:
        wait_for(lambda: phase(APP_NS, "still-served") == "AwaitingApproval", timeout=120,
                 what="a run in the other namespace served")
    finally:
        run(kubectl, "-n", APP_NS, "delete", "dbmig", "still-served", "--wait=true", "--timeout=120s")


def test_helm_upgrade_and_uninstall_never_delete_the_crd(api: client.ApiClient, chart: None) -> None:
    # the scratch namespace was deleted by an earlier test: the release stops listing it, as a user would do
    run(helm_binary(), "upgrade", RELEASE, str(REPO / "charts/migration-operator"), "--namespace", OPERATOR_NS,
        "--reuse-values", "--set", f"watchNamespaces={{{APP_NS}}}", "--wait", "--timeout", "3m")
    ext = client.ApiextensionsV1Api(api)
    crd = ext.read_custom_resource_definition(CRD)
    assert crd.metadata.annotations.get("helm.sh/resource-policy") == "keep"
    run(helm_binary(), "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait")
    assert ext.read_custom_resource_definition(CRD).metadata.uid == crd.metadata.uid
    # the migrations outlive the operator's release
    client.CustomObjectsApi(api).get_namespaced_custom_object(
        "dbops.io", "v1alpha1", APP_NS, "databasemigrations", "parking-db-v6")


def _generated_jobs(namespace: str) -> list[dict[str, Any]]:
    spec = models.parse_spec({
        "database": {"host": "db", "name": "app", "credentialsSecret": {"name": "login"}},
        "migrations": {"configMap": {"name": "migrations"}},
        "backup": {"method": "Dump", "volume": {"claimName": "backups"}},
        "maintenance": {"deployment": {"name": "app"}},
        "rollback": {"strategy": "Compensate", "compensate": {"sql": "select 1"}},
    })
    body = {"apiVersion": "dbops.io/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": "psa", "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"},
            "spec": models.dump(spec)}
    steps = ["validate", "backup", "migrate", "armed-backup", "armed-migrate", "restore", "repair", "compensate"]
    manifests = [machine.build_job(body, spec, step) for step in steps]
    for manifest in manifests:
        manifest["metadata"].pop("ownerReferences", None)  # the owner does not exist in a dry run
    return manifests


def test_every_generated_job_passes_restricted_and_a_privileged_one_is_rejected(api: client.ApiClient) -> None:
    batch = client.BatchV1Api(api)
    with temporary_namespace(api, "psa") as namespace:
        for manifest in _generated_jobs(namespace):
            # a Job's pods are checked when the Job controller creates them; the Job itself is checked too and
            # gets a warning, so dry-run the pod template as a Pod to get the enforcing answer
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": manifest["metadata"]["name"]},
                   "spec": manifest["spec"]["template"]["spec"]}
            client.CoreV1Api(api).create_namespaced_pod(namespace, pod, dry_run="All")
            batch.create_namespaced_job(namespace, manifest, dry_run="All")
        bad = _generated_jobs(namespace)[2]
        container = bad["spec"]["template"]["spec"]["containers"][0]
        container["securityContext"] = {"privileged": True}
        with pytest.raises(ApiException) as rejected:
            client.CoreV1Api(api).create_namespaced_pod(
                namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
                            "spec": bad["spec"]["template"]["spec"]}, dry_run="All")
        assert rejected.value.status == 403
        assert "violates PodSecurity" in json.loads(rejected.value.body)["message"]
