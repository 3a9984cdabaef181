"""What the local cluster must show to count as a cluster: Deployments that scale with real processes,
Secrets/ConfigMaps/PVCs inside containers, RBAC and PodSecurity admission really on, the database tools run as
Jobs, and a node agent that can restart without losing its pods.

Runs only against the local cluster of hack/cluster.sh (the Node `local-node` run by hack/node_agent); the
module is skipped elsewhere (e.g. on kind). Needs KUBECONFIG and the seeded PostgreSQL (hack/cluster.sh up).
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kube import apply_yaml, job_condition, pod_of_job, unique_name
from tests.support.local_cluster import (
    REPO,
    agent_pid,
    not_local_reason,
    pid_of,
    process_exists,
    process_gone,
    restart_node_agent,
)
from tests.support.pods import (
    SECURITY,
    container,
    deployment,
    finished,
    http_server,
    is_ready,
    job,
    pod,
    pod_state,
)
from tests.support.postgres import APP_PASSWORD, APP_ROLE, cluster_endpoint
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

NAMESPACE_PREFIX = "contract"
DATABASE = "parking_db"  # the issue's target; the checks below run on a fresh copy of it at V5


@pytest.fixture
def database() -> Iterator[str]:
    """A copy of parking_db as seeded (V5), so `make demo` having migrated parking_db changes nothing here."""
    from tests.support.postgres import cloned_database

    with cloned_database("parking_db_copy") as name:
        yield name
MIGRATIONS = REPO / "examples" / "parking" / "migrations"


@pytest.fixture(scope="module", autouse=True)
def local_cluster(api: client.ApiClient) -> None:
    reason = not_local_reason(api)
    if reason:
        pytest.skip(f"cluster contract checks run only on the local cluster: {reason}")


# -- helpers --------------------------------------------------------------------------------------


def app_pods(api: client.ApiClient, ns: str, app: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}").items)


def ready_pods(api: client.ApiClient, ns: str, app: str, count: int) -> list[client.V1Pod] | None:
    pods = [p for p in app_pods(api, ns, app) if not p.metadata.deletion_timestamp]
    return pods if len(pods) == count and all(is_ready(p) for p in pods) else None


def container_pids(pods: list[client.V1Pod]) -> dict[str, int]:
    return {p.metadata.name: pid_of(p.status.container_statuses[0].container_id) for p in pods}


def http_get(ip: str, port: int = 8080, path: str = "/") -> int:
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=5) as r:
        return int(r.status)


def scale(api: client.ApiClient, ns: str, name: str, replicas: int) -> None:
    client.AppsV1Api(api).patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": replicas}})


def wait_pods_deleted_and_gone(api: client.ApiClient, ns: str, app: str, pids: dict[str, int]) -> None:
    wait_for(
        lambda: not app_pods(api, ns, app),
        timeout=60,
        what=f"{app} pods deleted",
        describe=lambda: pod_state(api, ns, f"app={app}"),
    )
    wait_for(
        lambda: all(process_gone(pid) for pid in pids.values()),
        timeout=30,
        what=f"processes of {app} gone from /proc",
        describe=lambda: str({n: pid for n, pid in pids.items() if not process_gone(pid)}),
    )


def run_to_end(api: client.ApiClient, ns: str, name: str, timeout: float = 90) -> client.V1Pod:
    pod_now: client.V1Pod = wait_for(
        lambda: finished(api, ns, name),
        timeout=timeout,
        what=f"pod {name} finished",
        describe=lambda: str(client.CoreV1Api(api).read_namespaced_pod(name, ns).status),
    )
    return pod_now


def termination_message(p: client.V1Pod) -> str:
    term = p.status.container_statuses[0].state.terminated
    return str(term.message or "")


def run_job(api: client.ApiClient, ns: str, name: str, timeout: float = 120) -> tuple[client.V1Pod, str]:
    """Wait for the Job to finish; returns its pod and the container's log (via the agent's kubelet API)."""
    wait_for(
        lambda: job_condition(api, ns, name, "Complete") or job_condition(api, ns, name, "Failed"),
        timeout=timeout,
        what=f"Job {name} finished",
        describe=lambda: pod_state(api, ns, f"job-name={name}"),
    )
    [p] = pod_of_job(api, ns, name)
    log = client.CoreV1Api(api).read_namespaced_pod_log(p.metadata.name, ns)
    assert job_condition(api, ns, name, "Complete"), f"Job {name} failed: {termination_message(p)}\n{log}"
    return p, log


def pvc(name: str, size: str = "100Mi") -> dict[str, Any]:
    # No storageClassName: the default StorageClass applies.
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def db_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "stringData": {"password": APP_PASSWORD},
    }


def secret_env(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}


# -- Deployments ----------------------------------------------------------------------------------


def test_deployment_scales_up_and_down_with_real_processes(api: client.ApiClient, ns: str) -> None:
    apply_yaml(api, ns, [deployment("web", 0, [http_server()])])
    assert not app_pods(api, ns, "web")
    scale(api, ns, "web", 3)
    pods = wait_for(
        lambda: ready_pods(api, ns, "web", 3),
        timeout=120,
        what="3 Ready web pods",
        describe=lambda: pod_state(api, ns, "app=web"),
    )
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 3, f"every pod has its own IP: {ips}"
    for ip in ips:
        assert http_get(ip) == 200  # the readiness probe's own GET, from outside the pod
    pids = container_pids(pods)
    assert len(set(pids.values())) == 3
    assert all(process_exists(pid) for pid in pids.values()), pids

    scale(api, ns, "web", 0)
    wait_pods_deleted_and_gone(api, ns, "web", pids)
    for ip in ips:
        with pytest.raises(OSError):
            http_get(ip)


# -- configuration and storage --------------------------------------------------------------------


def test_secret_env_and_configmap_files_are_visible(api: client.ApiClient, ns: str) -> None:
    token = unique_name("s3cret")
    script = (
        'echo "env=$SECRET_TOKEN" > /dev/termination-log; '
        'for f in greeting nested.conf; do echo "$f=$(cat /etc/config/$f)" >> /dev/termination-log; done'
    )
    reader = container(
        "main",
        "busybox",
        ["sh", "-c", script],
        env=[{"name": "SECRET_TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token"}}}],
        volumeMounts=[{"name": "config", "mountPath": "/etc/config", "readOnly": True}],
    )
    apply_yaml(
        api,
        ns,
        [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secret"}, "stringData": {"token": token}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app-config"},
                "data": {"greeting": "hello", "nested.conf": "a=1"},
            },
            pod("reader", [reader], volumes=[{"name": "config", "configMap": {"name": "app-config"}}]),
        ],
    )
    p = run_to_end(api, ns, "reader")
    assert p.status.phase == "Succeeded", termination_message(p)
    assert termination_message(p).splitlines() == [f"env={token}", "greeting=hello", "nested.conf=a=1"]


def test_pvc_data_outlives_the_pod(api: client.ApiClient, ns: str) -> None:
    token = unique_name("data")
    mounts = [{"name": "data", "mountPath": "/data"}]
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    writer = container("main", "busybox", ["sh", "-c", f"echo {token} > /data/file"], volumeMounts=mounts)
    apply_yaml(api, ns, [pvc("data"), pod("writer", [writer], volumes=volumes)])
    core = client.CoreV1Api(api)
    claim = wait_for(
        lambda: (c := core.read_namespaced_persistent_volume_claim("data", ns)).status.phase == "Bound" and c,
        timeout=60,
        what="PVC data Bound by the PV controller",
    )
    default_classes = [
        sc.metadata.name
        for sc in client.StorageV1Api(api).list_storage_class().items
        if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert claim.spec.storage_class_name in default_classes
    assert run_to_end(api, ns, "writer").status.phase == "Succeeded"

    reader = container("main", "busybox", ["sh", "-c", "cat /data/file > /dev/termination-log"], volumeMounts=mounts)
    apply_yaml(api, ns, [pod("reader", [reader], volumes=volumes)])
    p = run_to_end(api, ns, "reader")
    assert p.status.phase == "Succeeded", termination_message(p)
    assert termination_message(p) == f"{token}\n"


# -- RBAC and admission ---------------------------------------------------------------------------


def test_rbac_is_enforced_for_in_cluster_service_accounts(api: client.ApiClient, ns: str) -> None:
    program = (
        "import json\n"
        "from kubernetes import client, config\n"
        "from kubernetes.client.rest import ApiException\n"
        "config.load_incluster_config()\n"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n"
        "v1 = client.CoreV1Api()\n"
        "out = {'configmaps': sorted(c.metadata.name for c in v1.list_namespaced_config_map(ns).items)}\n"
        "try:\n"
        "    v1.list_namespaced_secret(ns)\n"
        "    out['secrets'] = 'allowed'\n"
        "except ApiException as e:\n"
        "    out['secrets'] = e.status\n"
        "open('/dev/termination-log', 'w').write(json.dumps(out))\n"
    )
    apply_yaml(
        api,
        ns,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible"}, "data": {"k": "v"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hidden"}, "stringData": {"k": "v"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "configmap-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "lister-reads-configmaps"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": ns}],
            },
        ],
    )
    user = f"system:serviceaccount:{ns}:lister"

    def allowed(resource: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(namespace=ns, verb="list", resource=resource),
            )
        )
        return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)

    # The authorizer's RBAC cache catches up with the new binding; only then start the pod.
    wait_for(lambda: allowed("configmaps"), timeout=30, what=f"{user} may list configmaps")
    assert not allowed("secrets")

    lister = container("main", "python:3.11", ["python3", "-c", program])
    apply_yaml(api, ns, [pod("lister", [lister], serviceAccountName="lister")])
    p = run_to_end(api, ns, "lister")
    log = client.CoreV1Api(api).read_namespaced_pod_log("lister", ns)
    assert p.status.phase == "Succeeded", log
    seen = json.loads(termination_message(p))
    assert "visible" in seen["configmaps"]
    assert seen["secrets"] == 403


def test_restricted_namespace_rejects_privileged_pods(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    labels = core.read_namespace(ns).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    privileged = pod(
        "privileged",
        [{"name": "main", "image": "busybox", "command": ["true"], "securityContext": {"privileged": True}}],
    )
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(ns, privileged)
    assert rejected.value.status == 403
    assert "violates PodSecurity" in str(rejected.value.body)
    # The same pod made compliant is admitted: the rejection is PodSecurity's, not a blanket one.
    compliant = pod("compliant", [container("main", "busybox", ["true"])])
    core.create_namespaced_pod(ns, compliant, dry_run="All")


# -- the database tools as Jobs ---------------------------------------------------------------------


def test_pg_dump_job_backs_up_the_database_to_a_pvc(api: client.ApiClient, ns: str, database: str) -> None:
    db = cluster_endpoint()
    script = (
        f"pg_dump -h {db.host} -p {db.port} -U {APP_ROLE} -d {database} -Fc -f /backup/x.dump"
        " && pg_restore --list /backup/x.dump"
        " && echo dumped $(wc -c < /backup/x.dump) bytes > /dev/termination-log"
    )
    dump = container(
        "pg-dump",
        "postgres:15",
        ["sh", "-c", script],
        env=[secret_env("PGPASSWORD")],
        volumeMounts=[{"name": "backup", "mountPath": "/backup"}],
    )
    volumes = [{"name": "backup", "persistentVolumeClaim": {"claimName": "backup"}}]
    apply_yaml(api, ns, [db_secret(), pvc("backup"), job("pg-dump", [dump], volumes=volumes)])
    p, log = run_job(api, ns, "pg-dump")
    assert termination_message(p).startswith("dumped ")
    assert int(termination_message(p).split()[1]) > 0
    # pg_restore --list: the archive's table of contents, one "<id>; <oid> <oid> TYPE schema name owner" a line.
    for table in ("clients", "parking_spots", "tickets", "flyway_schema_history"):
        assert re.search(rf"^\d+; \d+ \d+ TABLE public {table} {APP_ROLE}$", log, re.M), log
        assert re.search(rf"^\d+; \d+ \d+ TABLE DATA public {table} {APP_ROLE}$", log, re.M), log


def test_flyway_info_job_reports_schema_version_5(api: client.ApiClient, ns: str, database: str) -> None:
    db = cluster_endpoint()
    migrations = {f.name: f.read_text() for f in sorted(MIGRATIONS.glob("*.sql"))}
    assert len(migrations) == 5
    flyway = {
        "name": "flyway",
        "image": "flyway/flyway:11",
        "args": [
            "info",
            f"-url=jdbc:postgresql://{db.host}:{db.port}/{database}",
            f"-user={APP_ROLE}",
            "-locations=filesystem:/migrations",
            "-outputType=json",
        ],
        "env": [secret_env("FLYWAY_PASSWORD")],
        "volumeMounts": [{"name": "migrations", "mountPath": "/migrations", "readOnly": True}],
        "securityContext": SECURITY,
    }
    volumes = [{"name": "migrations", "configMap": {"name": "migrations"}}]
    apply_yaml(
        api,
        ns,
        [
            db_secret(),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "migrations"}, "data": migrations},
            job("flyway-info", [flyway], volumes=volumes),
        ],
    )
    _, log = run_job(api, ns, "flyway-info")
    info = json.loads(log[log.index("{") : log.rindex("}") + 1])
    assert info["schemaVersion"] == "5", info
    states = {m["version"]: m["state"] for m in info["migrations"]}
    assert states == {str(v): "Success" for v in range(1, 6)}, states


# -- the node agent restarts -----------------------------------------------------------------------


@pytest.fixture
def agent_restored() -> Iterator[None]:
    """Whatever happens in the test, the node agent runs again afterwards."""
    try:
        yield
    finally:
        if agent_pid() is None:
            restart_node_agent()


def test_node_agent_restart_keeps_pods(api: client.ApiClient, ns: str, agent_restored: None) -> None:
    apply_yaml(api, ns, [deployment("keep", 2, [http_server()])])
    before = wait_for(
        lambda: ready_pods(api, ns, "keep", 2),
        timeout=90,
        what="2 Ready keep pods",
        describe=lambda: pod_state(api, ns, "app=keep"),
    )
    pids = container_pids(before)
    ips = {p.status.pod_ip for p in before}

    old_agent = agent_pid()
    assert old_agent, "the node agent is not running"
    try:
        os.kill(old_agent, signal.SIGTERM)
        wait_for(lambda: process_gone(old_agent), timeout=30, what=f"node agent (pid {old_agent}) exited")
        # A kubelet restart leaves the containers alone.
        assert all(process_exists(pid) for pid in pids.values()), pids
        for ip in ips:
            assert http_get(ip) == 200
    finally:
        restart_node_agent()
    new_agent = agent_pid()
    assert new_agent and new_agent != old_agent

    # The new agent adopts the same processes: same pods, still Ready, same containerIDs.
    after = wait_for(
        lambda: ready_pods(api, ns, "keep", 2),
        timeout=30,
        what="the keep pods still Ready after the agent restart",
        describe=lambda: pod_state(api, ns, "app=keep"),
    )
    assert container_pids(after) == pids
    assert all(process_exists(pid) for pid in pids.values()), pids

    # ... and still owns them: deleting the Deployment stops exactly those processes.
    client.AppsV1Api(api).delete_namespaced_deployment("keep", ns, propagation_policy="Foreground")
    wait_pods_deleted_and_gone(api, ns, "keep", pids)
