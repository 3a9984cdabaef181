"""Kubernetes API access for the handlers: the official (synchronous) client, always called in a thread so
the kopf event loop never blocks. One place for client setup and the 404/409 idioms."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import constants, errors

T = TypeVar("T")


@dataclass
class Clients:
    api: Any
    core: Any
    apps: Any
    batch: Any
    custom: Any
    coordination: Any


_clients: Clients | None = None


def load() -> Clients:
    global _clients
    if _clients is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
        _clients = Clients(
            api=api,
            core=client.CoreV1Api(api),
            apps=client.AppsV1Api(api),
            batch=client.BatchV1Api(api),
            custom=client.CustomObjectsApi(api),
            coordination=client.CoordinationV1Api(api),
        )
    return _clients


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(partial(function, *args, **kwargs))


def status_of(error: BaseException) -> int | None:
    return error.status if isinstance(error, ApiException) else None


async def get_or_none(function: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    try:
        return await call(function, *args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


async def namespace_terminating(namespace: str) -> bool:
    """True while the namespace is being deleted (or already gone): its objects, our Role among them, are going."""
    found = await get_or_none(load().core.read_namespace, namespace)
    return found is None or found.metadata.deletion_timestamp is not None


def to_dict(obj: Any) -> dict[str, Any]:
    """A typed client object as the API's camelCase dict."""
    result: dict[str, Any] = load().api.sanitize_for_serialization(obj)
    return result


async def get_migration(namespace: str, name: str) -> dict[str, Any] | None:
    clients = load()
    return await get_or_none(
        clients.custom.get_namespaced_custom_object,
        constants.GROUP,
        constants.VERSION,
        namespace,
        constants.PLURAL,
        name,
    )


async def patch_migration_status(namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Every status write goes through the scrubber (`errors.scrub`), whoever built the document."""
    clients = load()
    body = errors.scrub_document(body)
    result: dict[str, Any] = await call(
        clients.custom.patch_namespaced_custom_object_status,
        constants.GROUP,
        constants.VERSION,
        namespace,
        constants.PLURAL,
        name,
        body,
        _content_type="application/merge-patch+json",
    )
    return result


@dataclass(frozen=True)
class SecretRead:
    """What the operator takes from a Secret: its labels and annotations (the opt-in, `policy.py`) and the values of
    the keys it asked for."""

    labels: dict[str, str]
    annotations: dict[str, str]
    values: dict[str, str]


async def read_secret(namespace: str, name: str, keys: list[str]) -> SecretRead | None:
    secret = await get_or_none(load().core.read_namespaced_secret, name, namespace)
    if secret is None:
        return None
    data = secret.data or {}
    return SecretRead(
        labels=dict(secret.metadata.labels or {}),
        annotations=dict(secret.metadata.annotations or {}),
        values={key: base64.b64decode(data[key]).decode(errors="replace") for key in keys if key in data},
    )


async def read_secret_values(namespace: str, name: str, keys: list[str]) -> dict[str, str] | None:
    found = await read_secret(namespace, name, keys)
    return None if found is None else found.values


@dataclass(frozen=True)
class PodLog:
    text: str
    truncated: bool  # the log is longer: `text` is its first `limit_bytes` bytes


# The API's answers that mean the log will not come, whatever the retries: the pod (or its node's copy of the
# log) is gone, the container never started, or the operator may not read logs (RBAC without pods/log).
LOG_UNAVAILABLE = frozenset({400, 403, 404})


def _read_pod_log(namespace: str, pod: str, container: str, limit_bytes: int) -> PodLog:
    # The raw body (_preload_content=False): read up to the bound, decoded here (invalid UTF-8 replaced).
    response = load().core.read_namespaced_pod_log(
        pod, namespace, container=container, limit_bytes=limit_bytes + 1, _preload_content=False
    )
    data = bytearray()
    try:
        while len(data) <= limit_bytes:
            chunk: bytes = response.read(limit_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        response.drain_conn()  # nothing left in practice: the server stops at limitBytes
        response.release_conn()
    return PodLog(bytes(data[:limit_bytes]).decode("utf-8", errors="replace"), truncated=len(data) > limit_bytes)


async def read_pod_log(namespace: str, pod: str, container: str, limit_bytes: int) -> PodLog | None:
    """The head (at most `limit_bytes`) of a container's log, or None when the API says it cannot be had
    (`LOG_UNAVAILABLE`). Other errors (the node's kubelet unreachable, 5xx) are raised: the log may come back."""
    try:
        return await asyncio.to_thread(_read_pod_log, namespace, pod, container, limit_bytes)
    except ApiException as error:
        if error.status in LOG_UNAVAILABLE:
            return None
        raise
