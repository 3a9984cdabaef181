"""Pod, Job and Deployment manifests for the cluster suites (PodSecurity `restricted` compliant)."""

from __future__ import annotations

from typing import Any

from kubernetes import client

# PodSecurity "restricted" is enforced in the test namespaces (and a real node runs the containers as these users).
SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": command, "securityContext": SECURITY, **extra}


def job(name: str, containers: list[dict[str, Any]], backoff_limit: int = 0, **pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"spec": {"restartPolicy": "Never", "containers": containers, **pod_spec}},
        },
    }


def pod(name: str, containers: list[dict[str, Any]], restart_policy: str = "Never", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart_policy, "containers": containers, **spec},
    }


def deployment(name: str, replicas: int, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
    }


def http_server(name: str = "web", port: int = 8080) -> dict[str, Any]:
    """python3 -m http.server on the pod's own IP, with an HTTP readiness probe."""
    return container(
        name,
        "python:3.11",
        ["python3", "-m", "http.server", str(port), "--bind", "$(POD_IP)"],
        env=[POD_IP_ENV],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        ports=[{"name": "http", "containerPort": port}],
    )


def pod_state(api: client.ApiClient, ns: str, selector: str) -> str:
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector).items
    return "; ".join(f"{p.metadata.name} {p.status.phase} {p.status.container_statuses}" for p in pods)


def is_ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def finished(api: client.ApiClient, ns: str, name: str) -> client.V1Pod | None:
    """The pod once it Succeeded or Failed (for wait_for), else None."""
    p = client.CoreV1Api(api).read_namespaced_pod(name, ns)
    return p if p.status.phase in ("Succeeded", "Failed") else None
