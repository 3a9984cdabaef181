"""End-to-end fixtures: a live cluster (KUBECONFIG), real PostgreSQL, real Flyway, the real operator.

Each test gets its own namespace (PodSecurity `restricted` enforced, so the admission plugin checks every Job
the operator creates), its own copy of the parking database at V5, the gateway Deployment at 3 replicas and the
migrations ConfigMap. The operator runs apart from the tests (the chart's pod, or a host process) watching the
`<prefix>-*` namespaces, so a test can SIGKILL it and see it start again; with MO_E2E_OPERATOR=external an operator
already running in the cluster is used (e.g. the Helm chart's on kind).

`pytest -n 2` (pytest-xdist, what `make test-e2e` runs) gives each worker its own prefix (`e2e0`, `e2e1`), hence its
own operator release, namespaces and checksum key; the databases are per test already. What the workers share: the
CRD (installed by both, a lost race retried), the cluster's PostgreSQL and the registry (per-test names, and
content-addressed pushes), and the machine's cores (test_conflicts spins every core for one run of its own).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import postgres, registry
from tests.support.kube import load_config, temporary_namespace, wait_crd_established
from tests.support.operator import REPO, Operator, OperatorPod, OperatorProcess, mode
from tests.support.wait import WaitAborted, wait_for

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "dbops.io", "v1alpha1", "databasemigrations"
CRD_PATH = REPO / "crds" / "dbops.io_databasemigrations.yaml"
MIGRATIONS = REPO / "examples" / "parking" / "migrations"
MIGRATIONS_NEXT = REPO / "examples" / "parking" / "migrations-next"
# on the local cluster, pinned to the digest just built (tests/support/registry.py: the node may hold an older build)
GATEWAY_IMAGE = os.environ.get("MO_E2E_GATEWAY_IMAGE") or registry.pinned("ghcr.io/dbops/parking-gateway:0.1.0")
TERMINAL = {"Succeeded", "RolledBack", "Failed"}


def session_prefix(base: str, worker: str | None) -> str:
    """The namespaces of this session: its operator watches `<prefix>-*`. Two sessions on one cluster (two developers,
    helpers working in parallel, or pytest-xdist's workers) need prefixes whose patterns do not overlap, or each
    one's operator also runs the other's migrations. A worker `gw<n>` of `pytest -n` gets `<base><n>` (its own
    operator release and namespaces): `e2e0-*` and `e2e1-*` are disjoint, and neither matches the `e2e-*` of a
    serial session, nor `e2e1-*` a namespace `e2e10-...`."""
    if not worker:
        return base
    return base + worker.removeprefix("gw")


PREFIX = session_prefix(os.environ.get("MO_E2E_PREFIX", "e2e"), os.environ.get("PYTEST_XDIST_WORKER"))
# What the tests' database speaks, said in every spec rather than left to the operator's default (require): the local
# cluster's PostgreSQL has TLS (hack/postgres.sh); a database without it (kind's) runs the suite with `disable`.
DB_SSL_MODE = os.environ.get("MO_E2E_DB_SSLMODE", "require")


@pytest.fixture(scope="session")
def api() -> client.ApiClient:
    return load_config()


@pytest.fixture(scope="session")
def crd(api: client.ApiClient) -> None:
    """Installs (or updates) the committed CRD and waits until it is Established."""
    body = yaml.safe_load(CRD_PATH.read_text())
    name = body["metadata"]["name"]
    # Several sessions install it at once (xdist's workers, other suites on the cluster): a create or replace that
    # lost the race (409) is retried against what the winner wrote.
    wait_for(lambda: _install_crd(api, body), timeout=60, what=f"CRD {name} installed", interval=0.5)
    wait_crd_established(api, name)


def _install_crd(api: client.ApiClient, body: dict[str, Any]) -> bool:
    """One attempt: create, else replace (the API server writes nothing when the spec is unchanged). False when
    another session's write came in between (409)."""
    ext = client.ApiextensionsV1Api(api)
    name = body["metadata"]["name"]
    try:
        try:
            current = ext.read_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
            ext.create_custom_resource_definition(body)
            return True
        replacement = {**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}}
        ext.replace_custom_resource_definition(name, replacement)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


@pytest.fixture(scope="session")
def operator(
    api: client.ApiClient, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator | None]:
    if mode() == "external":
        yield None
        return
    log_dir = tmp_path_factory.mktemp("operator")
    process: Operator = (
        OperatorPod(f"{PREFIX}-*", log_dir, api) if mode() == "pod" else OperatorProcess(f"{PREFIX}-*", log_dir)
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _migration_files(*variants: str) -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(MIGRATIONS.glob("V*.sql"))}
    for variant in variants:
        for p in sorted((MIGRATIONS_NEXT / variant).iterdir()):
            if p.name.startswith("V"):
                files[p.name] = p.read_text()
    return files


@dataclass
class ParkingApp:
    """One test's world: namespace, database, gateway, migrations ConfigMap."""

    api: client.ApiClient
    namespace: str
    database: str
    operator: Operator | None
    replicas: int = 3
    created: list[str] = field(default_factory=list)

    # ---- Kubernetes objects ------------------------------------------------------------------------------
    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def set_migrations(self, *variants: str, name: str = "api-gateway-migrations") -> str:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data=_migration_files(*variants)
        )
        try:
            self.core.replace_namespaced_config_map(name, self.namespace, body)
        except ApiException as error:
            if error.status != 404:
                raise
            self.core.create_namespaced_config_map(self.namespace, body)
        return name

    def spec(self, **overrides: Any) -> dict[str, Any]:
        endpoint = postgres.cluster_endpoint()
        spec: dict[str, Any] = {
            "database": {
                "host": endpoint.host,
                "port": endpoint.port,
                "name": self.database,
                "credentialsSecret": {"name": "parking-db-admin"},
                "sslMode": DB_SSL_MODE,
            },
            "migrations": {"configMap": {"name": "api-gateway-migrations"}},
            "backup": {"method": "Dump", "volume": {"claimName": "db-backups"}},
            "maintenance": {"deployment": {"name": "api-gateway"}},
            "verify": {"requiredTables": ["clients", "parking_spots", "tickets"]},
            "rollback": {"strategy": "Restore"},
        }
        for key, value in overrides.items():
            spec[key] = value
        return spec

    def create_migration(self, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DatabaseMigration",
            "metadata": {"name": name, **metadata},
            "spec": spec,
        }
        self.created.append(name)
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body))

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c.get("type") == type_:
                return dict(c)
        return None

    def describe(self, name: str) -> str:
        try:
            status = self.status(name)
        except ApiException as error:
            return f"(cannot read {name}: {error.status})"
        brief = {k: status.get(k) for k in ("phase", "message", "conditions", "log", "jobs")}
        text = yaml.safe_dump(brief, sort_keys=False, width=160)
        if self.operator is not None:
            text += "\n--- operator log tail ---\n" + self.operator.tail(40)
        return text

    def wait_phase(self, name: str, phases: set[str] | str, timeout: float = 300) -> dict[str, Any]:
        wanted = {phases} if isinstance(phases, str) else phases

        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            phase = status.get("phase")
            if phase in TERMINAL and phase not in wanted:  # it will never get there: say so now
                raise WaitAborted(f"{name} ended {phase} instead of reaching {sorted(wanted)}:\n"
                                     f"{self.describe(name)}")
            return status if phase in wanted else None

        return wait_for(reached, timeout=timeout, what=f"{name} in phase {sorted(wanted)}",
                        interval=0.2, describe=lambda: self.describe(name))

    def wait_done(self, name: str, timeout: float = 420) -> dict[str, Any]:
        return self.wait_phase(name, TERMINAL, timeout)

    def deployment(self) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment("api-gateway", self.namespace)

    def gateway_pods(self) -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector="app=api-gateway").items)

    def wait_gateway_available(self, replicas: int | None = None, timeout: float = 180) -> None:
        want = self.replicas if replicas is None else replicas

        def available() -> bool:
            d = self.deployment()
            return (d.spec.replicas == want and (d.status.available_replicas or 0) == want
                    and (d.status.updated_replicas or 0) == want and len(self.gateway_pods()) == want)

        wait_for(available, timeout=timeout, what=f"api-gateway available at {want} replicas",
                 describe=lambda: str(self.deployment().status))

    def jobs(self, name: str) -> list[client.V1Job]:
        return list(self.batch.list_namespaced_job(self.namespace, label_selector=f"dbops.io/migration={name}").items)

    def events(self, name: str) -> list[client.CoreV1Event]:
        return list(self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items)

    def wait_events(self, name: str, until: Callable[[list[client.CoreV1Event]], bool], what: str,
                    timeout: float = 30) -> list[client.CoreV1Event]:
        """The run's events once `until` holds: kopf posts events from a queue of its own, after the status patch
        that a test waits on, so an event is waited for, never read once."""
        def probe() -> list[client.CoreV1Event] | None:
            found = self.events(name)
            return found if until(found) else None

        return wait_for(probe, timeout=timeout, what=what, describe=lambda: self.describe(name))


# The consent of a Secret to serve as DatabaseMigration credentials, and of a Deployment to be scaled to 0 (policy.py).
CREDENTIALS_OPT_IN = {"dbops.io/credentials": "true"}
MAINTENANCE_OPT_IN = {"dbops.io/maintenance": "allowed"}


def _secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    )


def gateway_deployment(database: str, replicas: int) -> dict[str, Any]:
    endpoint = postgres.cluster_endpoint()
    restricted_container = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }

    def secret_env(env: str, key: str) -> dict[str, Any]:
        return {"name": env, "valueFrom": {"secretKeyRef": {"name": "parking-db-app", "key": key}}}

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api-gateway", "labels": {"app": "api-gateway", **MAINTENANCE_OPT_IN}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "api-gateway"}},
            "template": {
                "metadata": {"labels": {"app": "api-gateway"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "gateway",
                        "image": GATEWAY_IMAGE,
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "DB_HOST", "value": endpoint.host},
                            {"name": "DB_PORT", "value": str(endpoint.port)},
                            {"name": "DB_NAME", "value": database},
                            secret_env("DB_USER", "username"),
                            secret_env("DB_PASSWORD", "password"),
                            {"name": "REQUIRED_SCHEMA_VERSION", "value": "5"},
                        ],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/actuator/health", "port": 8080},
                                           "periodSeconds": 2, "failureThreshold": 2},
                        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 10,
                                          "failureThreshold": 6},
                        "securityContext": restricted_container,
                    }],
                },
            },
        },
    }


@contextlib.contextmanager
def parking_world(api: client.ApiClient, operator: Operator | None) -> Iterator[ParkingApp]:
    """One test's world (the `parking` fixture; the fault suite's concurrent trials build several): a namespace of
    its own, a copy of the parking database, the login Secrets, the backup claim, the migrations ConfigMap and the
    gateway at 3 replicas, all removed on the way out."""
    with postgres.cloned_database() as database, temporary_namespace(api, PREFIX) as namespace:
        app = ParkingApp(api=api, namespace=namespace, database=database, operator=operator)
        core = client.CoreV1Api(api)
        login = {"username": postgres.APP_ROLE, "password": postgres.APP_PASSWORD}
        core.create_namespaced_secret(namespace, _secret("parking-db-admin", login, CREDENTIALS_OPT_IN))
        core.create_namespaced_secret(namespace, _secret("parking-db-app", login))
        core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="db-backups"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ))
        app.set_migrations()
        client.AppsV1Api(api).create_namespaced_deployment(namespace, gateway_deployment(database, app.replicas))
        app.wait_gateway_available()
        try:
            yield app
        finally:
            # never leave a test's migration running into the namespace deletion
            for name in app.created:
                with contextlib.suppress(ApiException):
                    app.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


@pytest.fixture
def parking(api: client.ApiClient, operator: Operator | None, crd: None) -> Iterator[ParkingApp]:
    with parking_world(api, operator) as app:
        yield app


# ---------------------------------------------------------------------------------------------- secret scan
SCAN_MIN_LENGTH = 4


def secret_values(app: ParkingApp) -> set[str]:
    """What must never be seen: the test's login, and every value of every Secret a test put in the namespace."""
    values = {postgres.APP_ROLE, postgres.APP_PASSWORD}
    for secret in app.core.list_namespaced_secret(app.namespace).items:
        if secret.type not in (None, "Opaque", "kubernetes.io/basic-auth"):
            continue
        for encoded in (secret.data or {}).values():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                values.add(base64.b64decode(encoded).decode())
    return {v for v in values if len(v) >= SCAN_MIN_LENGTH}


def _texts_to_scan(app: ParkingApp, operator_log: str) -> Iterator[tuple[str, str]]:
    """(where, text) of everything a user of the namespace (or of the operator's logs) can read."""
    for item in app.custom.list_namespaced_custom_object(GROUP, VERSION, app.namespace, PLURAL)["items"]:
        yield f"DatabaseMigration {item['metadata']['name']} status", json.dumps(item.get("status") or {})
    for event in app.core.list_namespaced_event(app.namespace).items:
        yield f"event {event.metadata.name} ({event.reason})", f"{event.reason} {event.message}"
    for job in app.batch.list_namespaced_job(app.namespace).items:
        yield f"Job {job.metadata.name}", json.dumps(app.api.sanitize_for_serialization(job))
    for pod in app.core.list_namespaced_pod(app.namespace).items:
        statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
        for container in statuses:
            terminated = container.state.terminated if container.state else None
            if terminated is not None and terminated.message:
                yield f"pod {pod.metadata.name}/{container.name} termination message", terminated.message
            with contextlib.suppress(ApiException):
                log = app.core.read_namespaced_pod_log(pod.metadata.name, app.namespace, container=container.name)
                yield f"pod {pod.metadata.name}/{container.name} log", str(log)
    if operator_log:
        yield "operator log", operator_log


def secret_hits(app: ParkingApp, operator_log: str = "") -> list[str]:
    """Where a secret value was seen, with a little context around it (the value itself masked)."""
    hits = []
    values = secret_values(app)
    for where, text in _texts_to_scan(app, operator_log):
        for value in values:
            at = text.find(value)
            if at >= 0:
                context = text[max(at - 60, 0) : at] + "<SECRET>" + text[at + len(value) : at + len(value) + 60]
                hits.append(f"{where}: ...{context}...")
    return hits


@pytest.fixture(autouse=True)
def secret_scan(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test with a namespace of its own (the parking world, or a bare `namespace`): no secret value in the
    namespace's DatabaseMigration statuses, events, Job specs, pod logs and termination messages, nor in what the
    operator logged during the test. Any hit fails it. The namespace is set up inside this fixture, so it is torn
    down after the scan."""
    if "parking" in request.fixturenames:
        app: ParkingApp = request.getfixturevalue("parking")
    elif "namespace" in request.fixturenames and isinstance(namespace := request.getfixturevalue("namespace"), str):
        operator = request.getfixturevalue("operator") if "operator" in request.fixturenames else None
        app = ParkingApp(api=request.getfixturevalue("api"), namespace=namespace, database="", operator=operator)
    else:
        yield
        return
    process = app.operator
    before = process.log_text() if process else ""
    yield
    operator_log = ""
    if process is not None:
        after = process.log_text()
        # what it logged during the test; all of it when the log no longer starts the same (the kubelet rotated it)
        operator_log = after[len(before):] if after.startswith(before) else after
    hits = secret_hits(app, operator_log)
    assert not hits, "secret values seen after the test:\n" + "\n".join(hits[:20])


def read_sql(variant: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((MIGRATIONS_NEXT / variant).glob("*.sql"))}


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)
