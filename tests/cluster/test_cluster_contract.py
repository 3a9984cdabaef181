"""What the cluster must show to count as one: Deployments that scale on readiness, PVCs whose data outlives a pod,
RBAC and PodSecurity admission really on, and the database tools run as Jobs from their real images against the
in-cluster PostgreSQL (by its Service name, TLS): pg_dump to a volume made writable by fsGroup, flyway info.

Needs KUBECONFIG and the seeded PostgreSQL of hack/addons/postgres.yaml (hack/cluster.sh up). The one check that
reaches pods and container processes from the host runs only on the local cluster (skipped elsewhere).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster.conftest import ClusterDatabase
from tests.cluster.helpers import (
    BUSYBOX,
    FLYWAY,
    POSTGRES,
    PYTHON,
    container,
    describe_pod,
    finished_pod,
    log_of,
    pvc,
    restricted,
    run_job,
    secret,
    termination,
)
from tests.support.kube import apply_yaml, temporary_namespace, unique_name
from tests.support.local_cluster import REPO, LocalNode, container_host_pid, process_exists
from tests.support.pods import deployment, is_ready, job, pod, pod_state
from tests.support.postgres import APP_PASSWORD, APP_ROLE
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

NAMESPACE_PREFIX = "contract"
MIGRATIONS = REPO / "examples" / "parking" / "migrations"
BACKUP_UID = 65532  # the operator's Jobs' uid (its image's user)


# -- Deployments ----------------------------------------------------------------------------------


def app_pods(api: client.ApiClient, ns: str, app: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}").items)


def ready_pods(api: client.ApiClient, ns: str, app: str, count: int) -> list[client.V1Pod] | None:
    pods = [p for p in app_pods(api, ns, app) if not p.metadata.deletion_timestamp]
    return pods if len(pods) == count and all(is_ready(p) for p in pods) else None


def http_get(ip: str, port: int = 8080) -> int:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as r:
        return int(r.status)


def test_deployment_becomes_available_through_readiness_and_scales_to_zero(
    api: client.ApiClient, ns: str, local_node: LocalNode
) -> None:
    web = container(
        "web",
        PYTHON,
        ["python3", "-m", "http.server", "8080"],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 5, "initialDelaySeconds": 2},
        ports=[{"name": "http", "containerPort": 8080}],
    )
    spec = deployment("web", 0, [web])
    spec["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    apply_yaml(api, ns, [spec])
    apps = client.AppsV1Api(api)
    assert not app_pods(api, ns, "web")
    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 2}})
    wait_for(
        lambda: (apps.read_namespaced_deployment_status("web", ns).status.available_replicas or 0) == 2,
        timeout=90,
        what="Deployment web with 2 available replicas",
        describe=lambda: pod_state(api, ns, "app=web"),
    )
    pods = ready_pods(api, ns, "web", 2)
    assert pods, pod_state(api, ns, "app=web")
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2, f"every pod has its own IP: {ips}"
    for ip in ips:
        assert http_get(ip) == 200  # the readiness probe's own GET, from the host through the bridge
    pids = {container_host_pid(local_node, p.status.container_statuses[0].container_id) for p in pods}
    assert len(pids) == 2 and all(process_exists(pid) for pid in pids), pids

    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 0}})
    wait_for(lambda: not app_pods(api, ns, "web"), timeout=60, what="web pods deleted",
             describe=lambda: pod_state(api, ns, "app=web"))
    wait_for(lambda: not any(process_exists(pid) for pid in pids), timeout=30, what="web processes gone")
    for ip in ips:
        with pytest.raises(OSError):
            http_get(ip)


# -- storage ----------------------------------------------------------------------------------------


def test_pvc_data_outlives_the_pod(api: client.ApiClient, ns: str) -> None:
    token = unique_name("data")
    mounts = [{"name": "data", "mountPath": "/data"}]
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    writer = container("main", BUSYBOX, ["sh", "-c", f"echo {token} > /data/file"], volumeMounts=mounts)
    # the volume is root-owned 0755 like a fresh disk: the non-root writer needs its fsGroup
    apply_yaml(api, ns, [pvc("data"), pod("writer", [writer], volumes=volumes, securityContext={"fsGroup": 65532})])
    assert finished_pod(api, ns, "writer").status.phase == "Succeeded", describe_pod(api, ns, "writer")
    core = client.CoreV1Api(api)
    claim = core.read_namespaced_persistent_volume_claim("data", ns)
    assert claim.status.phase == "Bound"
    default_classes = [
        sc.metadata.name
        for sc in client.StorageV1Api(api).list_storage_class().items
        if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert claim.spec.storage_class_name in default_classes
    core.delete_namespaced_pod("writer", ns, grace_period_seconds=0)
    wait_for(lambda: not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name == "writer"],
             timeout=60, what="pod writer deleted")

    reader = container("main", BUSYBOX, ["sh", "-c", "cat /data/file > /dev/termination-log"], volumeMounts=mounts)
    apply_yaml(api, ns, [pod("reader", [reader], volumes=volumes)])
    p = finished_pod(api, ns, "reader")
    assert p.status.phase == "Succeeded", describe_pod(api, ns, "reader")
    assert termination(p).message == f"{token}\n"


# -- RBAC and admission ---------------------------------------------------------------------------


def test_rbac_is_enforced_for_in_cluster_service_accounts(api: client.ApiClient, ns: str) -> None:
    # The pod's own token against the API server's Service: configmaps allowed by the Role, secrets forbidden.
    program = (
        "import json, ssl, urllib.error, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=f'{sa}/ca.crt')\n"
        "ns = open(f'{sa}/namespace').read()\n"
        "auth = {'Authorization': 'Bearer ' + open(f'{sa}/token').read()}\n"
        "def get(resource):\n"
        "    url = f'https://kubernetes.default.svc/api/v1/namespaces/{ns}/{resource}'\n"
        "    try:\n"
        "        body = json.load(urllib.request.urlopen(urllib.request.Request(url, headers=auth), context=ctx))\n"
        "        return sorted(i['metadata']['name'] for i in body['items'])\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "out = {'configmaps': get('configmaps'), 'secrets': get('secrets')}\n"
        "open('/dev/termination-log', 'w').write(json.dumps(out))\n"
    )
    apply_yaml(
        api,
        ns,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible"}, "data": {"k": "v"}},
            secret("hidden", {"k": "v"}),
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

    apply_yaml(api, ns, [pod("lister", [container("main", PYTHON, ["python3", "-c", program])],
                             serviceAccountName="lister")])
    p = finished_pod(api, ns, "lister")
    assert p.status.phase == "Succeeded", log_of(api, ns, "lister")
    seen = json.loads(termination(p).message)
    assert "visible" in seen["configmaps"]
    assert seen["secrets"] == 403


def test_restricted_namespace_rejects_privileged_pods(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    labels = core.read_namespace(ns).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    privileged = pod(
        "privileged",
        [{"name": "main", "image": BUSYBOX, "command": ["true"], "securityContext": {"privileged": True}}],
    )
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(ns, privileged)
    assert rejected.value.status == 403
    assert "violates PodSecurity" in str(rejected.value.body)
    # The same pod made compliant is admitted: the rejection is PodSecurity's, not a blanket one.
    core.create_namespaced_pod(ns, pod("compliant", [container("main", BUSYBOX, ["true"])]), dry_run="All")


# -- the database tools as Jobs ---------------------------------------------------------------------


def db_env(db: ClusterDatabase, database: str, password_env: str = "PGPASSWORD") -> list[dict[str, Any]]:
    """libpq's environment for the in-cluster database by its Service name, TLS required."""
    return [
        {"name": "PGHOST", "value": db.host},
        {"name": "PGPORT", "value": str(db.port)},
        {"name": "PGUSER", "value": APP_ROLE},
        {"name": "PGDATABASE", "value": database},
        {"name": "PGSSLMODE", "value": "require"},
        {"name": password_env, "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]


def backup_pod_spec(*, fs_group: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"volumes": [{"name": "backup", "persistentVolumeClaim": {"claimName": "backup"}}]}
    if fs_group is not None:
        spec["securityContext"] = {"fsGroup": fs_group}
    return spec


BACKUP_MOUNT = [{"name": "backup", "mountPath": "/backup"}]


def test_backup_job_runs_as_its_uid_and_writes_pg_dump_through_fsgroup(
    api: client.ApiClient, cluster_db: ClusterDatabase, database: str
) -> None:
    # Not `restricted`: the first pod runs as root, to give the volume the owner and mode of a fresh disk
    # (root:root 0755; the local-path provisioner makes its directories 0777).
    with temporary_namespace(api, "fsgroup", restricted=False) as ns:
        prepare = {
            "name": "prepare",
            "image": BUSYBOX,
            "command": ["sh", "-c", "chown 0:0 /backup && chmod 0755 /backup && stat -c '%u:%g %a' /backup"],
            "securityContext": {"runAsUser": 0},
            "volumeMounts": BACKUP_MOUNT,
        }
        apply_yaml(api, ns, [secret("db", {"password": APP_PASSWORD}), pvc("backup"),
                             pod("prepare", [prepare], **backup_pod_spec(fs_group=None))])
        assert finished_pod(api, ns, "prepare").status.phase == "Succeeded", log_of(api, ns, "prepare")
        assert log_of(api, ns, "prepare") == "0:0 755\n"

        # Without fsGroup the backup uid cannot write there: the control for what follows.
        denied = container("main", BUSYBOX, ["sh", "-c", "id -u; touch /backup/x"], uid=BACKUP_UID,
                           volumeMounts=BACKUP_MOUNT)
        apply_yaml(api, ns, [pod("no-fsgroup", [denied], **backup_pod_spec(fs_group=None))])
        p = finished_pod(api, ns, "no-fsgroup")
        assert p.status.phase == "Failed" and termination(p).exit_code == 1, log_of(api, ns, "no-fsgroup")
        assert "Permission denied" in log_of(api, ns, "no-fsgroup")

        script = (
            "id -u; id -G; stat -c 'root %u:%g %a' /backup"
            " && pg_dump -Fc -f /backup/parking.dump"
            " && stat -c 'dump %u:%g %s' /backup/parking.dump"
        )
        dump = container("pg-dump", POSTGRES, ["sh", "-c", script], uid=BACKUP_UID, env=db_env(cluster_db, database),
                         volumeMounts=BACKUP_MOUNT)
        apply_yaml(api, ns, [job("pg-dump", [dump], **backup_pod_spec(fs_group=BACKUP_UID))])
        _, log = run_job(api, ns, "pg-dump")
        lines = log.splitlines()
        assert lines[0] == str(BACKUP_UID), log  # the uid the manifest asks for, not the image's root
        assert str(BACKUP_UID) in lines[1].split(), log  # fsGroup is a supplementary group
        # the kubelet gave the volume root to the fsGroup (group rwx, setgid) and left its owner root
        assert lines[2] == f"root 0:{BACKUP_UID} 2775", log
        match = re.fullmatch(rf"dump {BACKUP_UID}:(\d+) (\d+)", lines[3])
        assert match, log
        assert int(match[1]) == BACKUP_UID  # the setgid directory's group
        assert int(match[2]) > 0

        # A second Job reads the archive back from the volume.
        restore_list = container("pg-restore", POSTGRES, ["pg_restore", "--list", "/backup/parking.dump"],
                                 uid=BACKUP_UID, volumeMounts=BACKUP_MOUNT)
        apply_yaml(api, ns, [job("pg-restore-list", [restore_list], **backup_pod_spec(fs_group=BACKUP_UID))])
        _, toc = run_job(api, ns, "pg-restore-list")
        # the archive's table of contents, one "<id>; <oid> <oid> TYPE schema name owner" a line
        for table in ("clients", "parking_spots", "tickets", "flyway_schema_history"):
            assert re.search(rf"^\d+; \d+ \d+ TABLE public {table} {APP_ROLE}$", toc, re.M), toc
            assert re.search(rf"^\d+; \d+ \d+ TABLE DATA public {table} {APP_ROLE}$", toc, re.M), toc


def test_flyway_info_job_reports_schema_version_5(
    api: client.ApiClient, ns: str, cluster_db: ClusterDatabase, database: str
) -> None:
    migrations = {f.name: f.read_text() for f in sorted(MIGRATIONS.glob("*.sql"))}
    assert len(migrations) == 5
    flyway = {
        "name": "flyway",
        "image": FLYWAY,
        "args": [
            "info",
            f"-url=jdbc:postgresql://{cluster_db.host}:{cluster_db.port}/{database}?sslmode=require",
            f"-user={APP_ROLE}",
            "-locations=filesystem:/migrations",
            "-outputType=json",
        ],
        "env": [{"name": "FLYWAY_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        "volumeMounts": [{"name": "migrations", "mountPath": "/migrations", "readOnly": True}],
        "securityContext": restricted(BACKUP_UID),
    }
    volumes = [{"name": "migrations", "configMap": {"name": "migrations"}}]
    apply_yaml(
        api,
        ns,
        [
            secret("db", {"password": APP_PASSWORD}),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "migrations"}, "data": migrations},
            job("flyway-info", [flyway], volumes=volumes),
        ],
    )
    _, log = run_job(api, ns, "flyway-info")
    info = json.loads(log[log.index("{") : log.rindex("}") + 1])
    assert info["schemaVersion"] == "5", info
    states = {m["version"]: m["state"] for m in info["migrations"]}
    assert states == {str(v): "Success" for v in range(1, 6)}, states
