"""The fault suite's world: the e2e fixtures (the session's operator as the chart's pod, one namespace per trial with
its own copy of the parking database, the gateway at 3 replicas, the migrations ConfigMap), pointed at a PostgreSQL
of the suite's own.

Why its own PostgreSQL: one fault kills the database pod, and the cluster's shared one (databases/postgres) serves
every other suite (and, while developing, other people's runs at the same time). The suite makes a copy of that
StatefulSet (same image, arguments, TLS Secret, probes) in namespace `mo-faults-db`, its data on an emptyDir (the
kill is a container SIGKILL: the pod and its data stay, crash recovery runs), seeds it the way the cluster seeds its
own (hack/postgres.sh seed), and points the tests and the pods at it (MO_E2E_PG_HOST, MO_E2E_DB_HOST). All the
faults run against it, so a trial never disturbs another suite's database. It is deleted at the end of the session
(FAULT_KEEP_POSTGRES=1 keeps it, and a later session reuses it).

Trials, the matrix and the results file: tests/faults/matrix.py.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import api, crd, operator, parking  # noqa: F401  (fixtures the fault trials reuse)
from tests.faults import matrix
from tests.support import postgres
from tests.support.operator import REPO
from tests.support.wait import WaitTimeout, wait_for

pytestmark = pytest.mark.faults

DB_NAMESPACE = "mo-faults-db"
DB_NAME = "postgres"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault-injection suite (make test-faults)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [matrix.header()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "trial" in metafunc.fixturenames:
        trials = [] if matrix.smoke() else matrix.plan()  # the smoke slice is test_smoke_slice
        metafunc.parametrize("trial", trials, ids=[t.id for t in trials])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A trial past FAULT_BUDGET_MINUTES is skipped before its fixtures: each trial's namespace and app cost seconds,
    and the hundreds of trials a sitting leaves took an hour to skip when the test body checked it."""
    if "trial" not in getattr(item, "fixturenames", ()):
        return
    if not matrix.budget_left():
        pytest.skip("FAULT_BUDGET_MINUTES spent: not started")
    _the_suites_database_answers()


def _the_suites_database_answers() -> None:
    """Before a trial (from the second on: the session's database is up by then), the suite's own PostgreSQL must
    accept a connection within matrix.DATABASE_GRACE_SECONDS; if it does not, the sitting stops with the reason (and
    its matrix) instead of erroring through every trial left - a machine broken by a fault is the news, not 400
    errors."""
    if not os.environ.get("MO_E2E_PG_HOST"):
        return
    try:
        postgres.wait_answering(matrix.DATABASE_GRACE_SECONDS, what="the suite's own PostgreSQL answering")
    except WaitTimeout as error:
        pytest.exit(f"stopping the sitting: {str(error)[:800]}", returncode=1)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not matrix.RESULTS:
        return
    text = matrix.render()
    path = matrix.write_json(REPO / "fault-results")
    terminalreporter.write_sep("=", "fault matrix")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"results: {path}")


# ---------------------------------------------------------------------------------------------- its own PostgreSQL
def _model(kube_api: client.ApiClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster's PostgreSQL StatefulSet and Service (hack/addons/postgres.yaml), as the API serves them."""
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    sts = kube_api.sanitize_for_serialization(apps.read_namespaced_stateful_set(postgres.SERVICE_NAME,
                                                                                postgres.SERVICE_NAMESPACE))
    svc = kube_api.sanitize_for_serialization(core.read_namespaced_service(postgres.SERVICE_NAME,
                                                                      postgres.SERVICE_NAMESPACE))
    return sts, svc


def _copy(kube_api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    sts, svc = _model(kube_api)
    wait_for(lambda: not _terminating(core), timeout=180, what=f"namespace {DB_NAMESPACE} of a former session gone")
    with contextlib.suppress(ApiException):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=DB_NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted",
                                       "migration-operator-test": "true"})))
    tls = core.read_namespaced_secret("postgres-tls", postgres.SERVICE_NAMESPACE)
    with contextlib.suppress(ApiException):
        core.create_namespaced_secret(DB_NAMESPACE, client.V1Secret(
            metadata=client.V1ObjectMeta(name="postgres-tls"), type=tls.type, data=tls.data))
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": DB_NAME},
               "spec": {"selector": svc["spec"]["selector"], "ports": svc["spec"]["ports"]}}
    with contextlib.suppress(ApiException):
        core.create_namespaced_service(DB_NAMESPACE, service)
    spec = copy.deepcopy(sts["spec"])
    spec.pop("volumeClaimTemplates", None)
    spec["template"]["spec"]["volumes"].append({"name": "data", "emptyDir": {}})
    spec.pop("persistentVolumeClaimRetentionPolicy", None)
    for container in spec["template"]["spec"]["containers"]:
        container["args"] = durable(container.get("args") or [])
    body = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": DB_NAME}, "spec": spec}
    try:
        apps.create_namespaced_stateful_set(DB_NAMESPACE, body)
    except ApiException as error:
        if error.status != 409:
            raise
        # kept from a former session (FAULT_KEEP_POSTGRES=1): reused only when it commits durably too
        kept = apps.read_namespaced_stateful_set(DB_NAME, DB_NAMESPACE).spec.template.spec.containers
        if any(c.args != durable(c.args or []) for c in kept):
            raise RuntimeError(f"the PostgreSQL kept in {DB_NAMESPACE} by a former session runs with synchronous_commit"
                               f"=off: kubectl delete namespace {DB_NAMESPACE}, then run again") from None


def durable(args: list[str]) -> list[str]:
    """The cluster's PostgreSQL trades durability for speed (synchronous_commit=off: a commit is acknowledged before
    its WAL is written). Killed, such a server loses the last ~0.6 s of commits, and a trial that killed it right after
    Flyway's commit saw a run verified Succeeded whose migration was then gone: the server's trade, not the operator's
    error. The suite's own copy commits durably (a SIGKILL of the server loses nothing written to the OS; fsync=off
    only matters when the machine itself goes down)."""
    return [("synchronous_commit=on" if arg == "synchronous_commit=off" else arg) for arg in args]


def _terminating(core: client.CoreV1Api) -> bool:
    try:
        return core.read_namespace(DB_NAMESPACE).metadata.deletion_timestamp is not None
    except ApiException as error:
        if error.status == 404:
            return False
        raise


def _seeded(host: str) -> bool:
    with contextlib.suppress(Exception), postgres.connect(host=host, connect_timeout=3) as conn:
        return conn.execute("select 1 from pg_database where datname = %s",
                            (postgres.TEMPLATE_DATABASE,)).fetchone() is not None
    return False


@pytest.fixture(scope="session", autouse=True)
def fault_postgres(api: client.ApiClient) -> Iterator[matrix.Database]:  # noqa: F811
    """The suite's own PostgreSQL, seeded, with the tests and the pods pointed at it for the session."""
    core = client.CoreV1Api(api)
    try:
        core.read_namespaced_service(postgres.SERVICE_NAME, postgres.SERVICE_NAMESPACE)
    except ApiException:
        pytest.skip("no databases/postgres in this cluster to copy: the fault suite runs on the local cluster")
    _copy(api)
    ip = wait_for(lambda: core.read_namespaced_service(DB_NAME, DB_NAMESPACE).spec.cluster_ip, timeout=60,
                  what="the fault suite's PostgreSQL Service")
    if not _seeded(ip):
        postgres.wait_answering(300, what=f"PostgreSQL in {DB_NAMESPACE} ready", host=ip)
        seed = subprocess.run(["bash", str(REPO / "hack" / "postgres.sh"), "seed"], capture_output=True, text=True,
                              env=os.environ | {"MO_PG_HOST": ip}, timeout=600)
        assert seed.returncode == 0, f"seeding {DB_NAMESPACE}/{DB_NAME} failed:\n{seed.stderr[-3000:]}"
    saved = {k: os.environ.get(k) for k in ("MO_E2E_PG_HOST", "MO_E2E_PG_PORT", "MO_E2E_DB_HOST", "MO_E2E_DB_PORT")}
    os.environ.update({"MO_E2E_PG_HOST": ip, "MO_E2E_PG_PORT": "5432",
                       "MO_E2E_DB_HOST": f"{DB_NAME}.{DB_NAMESPACE}.svc.cluster.local", "MO_E2E_DB_PORT": "5432"})
    try:
        yield matrix.Database(namespace=DB_NAMESPACE, statefulset=DB_NAME, host=ip, port=5432)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if os.environ.get("FAULT_KEEP_POSTGRES") != "1":
            with contextlib.suppress(ApiException):
                core.delete_namespace(DB_NAMESPACE)


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)
