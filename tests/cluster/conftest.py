"""Fixtures of the cluster suites: the admin API client, a fresh namespace per test, the local node's rig-only
helpers (skipped elsewhere, with the reason), and the in-cluster PostgreSQL.

Needs KUBECONFIG pointing at a cluster with a Ready node (hack/cluster.sh up). Tests that reach below the API
server (crictl, the kubelet's process, pod IPs from the host) ask for `local_node` and are skipped on another
cluster; the database tests need the Service databases/postgres (hack/addons/postgres.yaml) and, for the tests'
own admin connection, MO_E2E_PG_HOST or the local cluster (whose ClusterIPs kube-proxy routes on this host).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kube import load_config, temporary_namespace
from tests.support.local_cluster import LocalNode, find_local_node
from tests.support.postgres import cloned_database

DB_NAMESPACE = "databases"
DB_SERVICE = "postgres"
DB_TLS_SECRET = "postgres-tls"


@pytest.fixture(scope="session")
def api() -> client.ApiClient:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set (start the local cluster: hack/cluster.sh up)")
    api = load_config()
    nodes = client.CoreV1Api(api).list_node().items
    if not any(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or []) for n in nodes):
        pytest.skip("no Ready node (is the kubelet running?)")
    return api


@pytest.fixture(scope="session")
def local_node_or_reason(api: client.ApiClient) -> LocalNode | str:
    return find_local_node(api)


@pytest.fixture
def local_node(local_node_or_reason: LocalNode | str) -> LocalNode:
    """The local cluster's node (runtime socket, crictl, kubelet pid file); skips the test on another cluster."""
    if isinstance(local_node_or_reason, str):
        pytest.skip(f"needs the local cluster's node: {local_node_or_reason}")
    return local_node_or_reason


@pytest.fixture
def ns(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (PodSecurity `restricted` enforced), deleted even when the test fails."""
    prefix = getattr(request.module, "NAMESPACE_PREFIX", "node")
    with temporary_namespace(api, prefix) as name:
        yield name


@dataclass(frozen=True)
class ClusterDatabase:
    host: str  # the Service's DNS name, as pods use it
    port: int
    cluster_ip: str
    ca_crt: str  # the CA that signed the server's certificate (Secret databases/postgres-tls, ca.crt)


@pytest.fixture(scope="session")
def cluster_db(api: client.ApiClient, local_node_or_reason: LocalNode | str) -> Iterator[ClusterDatabase]:
    """The in-cluster PostgreSQL; the tests' own admin connection (tests.support.postgres) goes to its ClusterIP
    unless MO_E2E_PG_HOST says otherwise."""
    core = client.CoreV1Api(api)
    try:
        svc = core.read_namespaced_service(DB_SERVICE, DB_NAMESPACE)
        tls = core.read_namespaced_secret(DB_TLS_SECRET, DB_NAMESPACE)
    except ApiException as e:
        if e.status == 404:
            pytest.skip(f"no Service/Secret {DB_NAMESPACE}/{DB_SERVICE} (hack/addons/postgres.yaml)")
        raise
    port = int(svc.spec.ports[0].port)
    db = ClusterDatabase(
        host=f"{DB_SERVICE}.{DB_NAMESPACE}.svc.cluster.local",
        port=port,
        cluster_ip=svc.spec.cluster_ip,
        ca_crt=base64.b64decode(tls.data["ca.crt"]).decode(),
    )
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("MO_E2E_PG_HOST"):
            if isinstance(local_node_or_reason, str):
                pytest.skip(f"set MO_E2E_PG_HOST: the Service's ClusterIP routes only on the local cluster's host "
                            f"({local_node_or_reason})")
            mp.setenv("MO_E2E_PG_HOST", db.cluster_ip)
            mp.setenv("MO_E2E_PG_PORT", str(port))
        yield db


@pytest.fixture
def database(cluster_db: ClusterDatabase) -> Iterator[str]:
    """A copy of the seeded parking_template (V5), dropped afterwards: `make demo` migrating parking_db, or a pg_dump
    holding a session on the template while another suite clones it, changes nothing here."""
    with cloned_database("cluster") as name:
        yield name
