"""Fixtures of the cluster suites: the admin API client and a fresh namespace per test.

Needs KUBECONFIG pointing at a cluster with a Ready node (hack/cluster.sh up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.support.kube import load_config, temporary_namespace


@pytest.fixture(scope="session")
def api() -> client.ApiClient:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set (start the local cluster: hack/cluster.sh up)")
    api = load_config()
    node = client.CoreV1Api(api).read_node("local-node")
    if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
        pytest.skip("node local-node is not Ready (is the node agent running?)")
    return api


@pytest.fixture
def ns(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (PodSecurity `restricted` enforced), deleted even when the test fails."""
    prefix = getattr(request.module, "NAMESPACE_PREFIX", "node")
    with temporary_namespace(api, prefix) as name:
        yield name
