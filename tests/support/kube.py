"""Thin helpers over the official kubernetes client for tests: namespaces, objects, pods, Jobs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from kubernetes import client, config, utils

from tests.support.wait import wait_for


def load_config() -> client.ApiClient:
    config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@contextmanager
def temporary_namespace(api: client.ApiClient, prefix: str, *, restricted: bool = True) -> Iterator[str]:
    """A fresh namespace per test, PodSecurity `restricted` enforced by default, deleted even on failure."""
    core = client.CoreV1Api(api)
    name = unique_name(prefix)
    labels = {"migration-operator-test": "true"}
    if restricted:
        labels |= {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    wait_for(
        lambda: _has_default_sa(core, name), timeout=60, what=f"default ServiceAccount in namespace {name}"
    )
    try:
        yield name
    finally:
        if os.environ.get("MO_KEEP_NAMESPACES") != "1":
            core.delete_namespace(name, propagation_policy="Background")


def _has_default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items)


def apply_yaml(api: client.ApiClient, namespace: str, documents: str | list[dict[str, Any]]) -> None:
    objs = list(yaml.safe_load_all(documents)) if isinstance(documents, str) else documents
    for obj in objs:
        if obj:
            utils.create_from_dict(api, obj, namespace=namespace)


def pod_of_job(api: client.ApiClient, namespace: str, job: str) -> list[client.V1Pod]:
    core = client.CoreV1Api(api)
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def job_condition(api: client.ApiClient, namespace: str, job: str, condition: str) -> bool:
    status = client.BatchV1Api(api).read_namespaced_job_status(job, namespace).status
    return any(c.type == condition and c.status == "True" for c in (status.conditions or []))


def kubectl_binary() -> str:
    """kubectl from $KUBECTL, else the local cluster's build, else PATH."""
    import shutil
    import subprocess

    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        bin_dir = subprocess.run(
            ["bash", "-c", f"source {repo}/hack/versions.sh && echo $BIN_DIR"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if os.path.exists(os.path.join(bin_dir, "kubectl")):
            return os.path.join(bin_dir, "kubectl")
    except (OSError, subprocess.CalledProcessError):
        pass
    return shutil.which("kubectl") or "kubectl"


def wait_crd_established(api: client.ApiClient, name: str, timeout: float = 60) -> None:
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        status = ext.read_custom_resource_definition(name).status
        return any(c.type == "Established" and c.status == "True" for c in (status.conditions or []))

    wait_for(established, timeout=timeout, what=f"CRD {name} Established")

