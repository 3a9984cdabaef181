"""What the cluster suites share: the images they run (upstream names; the local registry serves them), security
contexts, and waits on pods and Jobs."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.support.kube import job_condition, pod_of_job
from tests.support.pods import pod_state
from tests.support.wait import wait_for

BUSYBOX = "busybox:1.37"
PYTHON = "python:3.11-slim"
DEBIAN = "debian:bookworm-slim"
POSTGRES = "postgres:15"
FLYWAY = "flyway/flyway:12.4"


def restricted(uid: int = 1000, **extra: Any) -> dict[str, Any]:
    """A container securityContext that PodSecurity `restricted` admits, running as `uid`."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        **extra,
    }


def container(name: str, image: str, command: list[str], *, uid: int = 1000, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": command, "securityContext": restricted(uid), **extra}


def pvc(name: str, size: str = "100Mi") -> dict[str, Any]:
    # No storageClassName: the default StorageClass applies.
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def describe_pod(api: client.ApiClient, ns: str, name: str) -> str:
    p = client.CoreV1Api(api).read_namespaced_pod(name, ns)
    return f"{p.status.phase} {p.status.container_statuses} {p.status.conditions}"


def finished_pod(api: client.ApiClient, ns: str, name: str, timeout: float = 90) -> client.V1Pod:
    """Waits until the pod Succeeded or Failed and returns it."""
    core = client.CoreV1Api(api)
    pod: client.V1Pod = wait_for(
        lambda: (p := core.read_namespaced_pod(name, ns)).status.phase in ("Succeeded", "Failed") and p,
        timeout=timeout,
        what=f"pod {name} finished",
        describe=lambda: describe_pod(api, ns, name),
    )
    return pod


def running_pod(api: client.ApiClient, ns: str, name: str, timeout: float = 90) -> client.V1Pod:
    """Waits until every container of the pod runs and the pod is Ready, and returns it."""
    core = client.CoreV1Api(api)

    def ready() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, ns)
        ok = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        return p if ok else None

    pod: client.V1Pod = wait_for(
        ready, timeout=timeout, what=f"pod {name} Ready", describe=lambda: describe_pod(api, ns, name)
    )
    return pod


def log_of(api: client.ApiClient, ns: str, pod: str, container: str | None = None) -> str:
    kwargs = {"container": container} if container else {}
    return str(client.CoreV1Api(api).read_namespaced_pod_log(pod, ns, **kwargs))


def termination(p: client.V1Pod, index: int = 0) -> client.V1ContainerStateTerminated:
    term = p.status.container_statuses[index].state.terminated
    assert term is not None, f"container {index} of {p.metadata.name} has not terminated: {p.status}"
    return term


def run_job(api: client.ApiClient, ns: str, name: str, timeout: float = 120) -> tuple[client.V1Pod, str]:
    """Waits until the Job finished; asserts it completed and returns its pod and the container's log."""
    wait_for(
        lambda: job_condition(api, ns, name, "Complete") or job_condition(api, ns, name, "Failed"),
        timeout=timeout,
        what=f"Job {name} finished",
        describe=lambda: pod_state(api, ns, f"job-name={name}"),
    )
    [p] = pod_of_job(api, ns, name)
    log = log_of(api, ns, p.metadata.name)
    assert job_condition(api, ns, name, "Complete"), f"Job {name} failed: {p.status.container_statuses}\n{log}"
    return p, log


def waiting_reason(api: client.ApiClient, ns: str, name: str) -> str | None:
    statuses = client.CoreV1Api(api).read_namespaced_pod(name, ns).status.container_statuses or []
    return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None
