"""Kubernetes API access for the operator: a small native-async client on aiohttp (kopf's own HTTP library) that
returns the API's JSON as plain dicts. Not the official client: importing it costs ~19 MiB of RSS, and kopf imports it
whenever it is installed (the package's `__init__` hides it while kopf loads; `handlers.login` logs kopf in
without it). One place for the login, the per-request timeout, the 401 re-login and the 404/409 idioms.

Every operation goes through `request` (JSON) or `read_bytes`/`stream` (pod logs): the unit tests fake those."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from . import constants, errors

# A hung API server must not hang a pass: every request gets this long in all, its connection less.
TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
# What the official client sent for a dict body to a built-in kind (its default for PATCH): kept for Deployments.
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# Errors of the connection rather than of the API: retryable like a 5xx (errors.retryable).
CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)

# The API path of each resource the operator touches.
_PREFIXES = {
    "configmaps": "/api/v1",
    "namespaces": "/api/v1",
    "persistentvolumeclaims": "/api/v1",
    "pods": "/api/v1",
    "secrets": "/api/v1",
    "deployments": "/apis/apps/v1",
    "jobs": "/apis/batch/v1",
    "leases": "/apis/coordination.k8s.io/v1",
    constants.PLURAL: f"/apis/{constants.GROUP}/{constants.VERSION}",
}


class ApiError(Exception):
    """An answer of the API server other than 2xx: `status`, its `reason` phrase and the response `body` (a Status
    document's JSON, usually)."""

    def __init__(self, status: int, reason: str = "", body: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason, self.body = status, reason, body


def path(resource: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    parts = [_PREFIXES[resource]]
    if namespace is not None and resource != "namespaces":
        parts += ["namespaces", namespace]
    parts.append(resource)
    parts += [p for p in (name, subresource) if p]
    return "/".join(parts)


def parse_time(value: str | None) -> datetime | None:
    """An API timestamp (RFC 3339, `Z` or an offset, with or without microseconds) as an aware datetime (UTC when
    it says no zone)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def status_of(error: BaseException) -> int | None:
    return error.status if isinstance(error, ApiError) else None


class _Client:
    """One aiohttp session, made in the running loop on first use and again after a 401 (service-account tokens are
    rotated: the file holds the new one) or in another loop (each unit test runs its own)."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.server = ""
        self.loop: asyncio.AbstractEventLoop | None = None

    async def open(self, relogin: bool = False) -> tuple[aiohttp.ClientSession, str]:
        loop = asyncio.get_running_loop()
        if self.session is None or relogin or self.loop is not loop or self.session.closed:
            if self.session is not None and self.loop is loop:
                await self.session.close()
            info = credentials()
            self.session = aiohttp.ClientSession(
                headers=info.as_http_headers(),
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context() if info.server.startswith("https") else False),
                trust_env=info.trust_env,
            )
            self.server, self.loop = info.server.rstrip("/"), loop
        return self.session, self.server


    async def close(self) -> None:
        if self.session is not None and self.loop is asyncio.get_running_loop():
            await self.session.close()
        self.session = None


_client = _Client()


async def close() -> None:
    """Closes the session (the operator's cleanup; a caller that ends its event loop)."""
    await _client.close()


def credentials() -> kopf.ConnectionInfo:
    """In-cluster (the service account) first, then $KUBECONFIG or ~/.kube/config: kopf's own loaders, which need
    neither the official client nor anything else that is not installed with kopf."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig")
    return info


def _timeout(total: float | None) -> aiohttp.ClientTimeout:
    total = TIMEOUT_SECONDS if total is None else total
    return aiohttp.ClientTimeout(total=total, connect=min(CONNECT_TIMEOUT_SECONDS, total))


@asynccontextmanager
async def _send(
    method: str,
    url: str,
    *,
    params: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = JSON,
    timeout: aiohttp.ClientTimeout,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The response of a 2xx answer (after one re-login on a 401); an ApiError otherwise."""
    data = None if body is None else json.dumps(body)
    headers = {"Accept": JSON} if body is None else {"Accept": JSON, "Content-Type": content_type}
    for relogin in (False, True):
        session, server = await _client.open(relogin)
        async with session.request(
            method, server + url, params=params, data=data, headers=headers, timeout=timeout
        ) as response:
            if response.status == 401 and not relogin:
                continue
            if response.status >= 400:
                raise ApiError(response.status, response.reason or "", await response.text(errors="replace"))
            yield response
            return


async def request(
    method: str,
    resource: str,
    namespace: str | None,
    name: str | None = None,
    *,
    subresource: str | None = None,
    params: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = JSON,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One API call; the answer's JSON document."""
    url = path(resource, namespace, name, subresource)
    async with _send(method, url, params=params, body=body, content_type=content_type, timeout=_timeout(timeout)) as r:
        text = await r.text()
    result: dict[str, Any] = json.loads(text) if text else {}
    return result


async def get(resource: str, namespace: str | None, name: str, *, timeout: float | None = None) -> dict[str, Any]:
    return await request("GET", resource, namespace, name, timeout=timeout)


async def get_or_none(
    resource: str, namespace: str | None, name: str, *, timeout: float | None = None
) -> dict[str, Any] | None:
    try:
        return await get(resource, namespace, name, timeout=timeout)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


async def list_items(resource: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    found = await request("GET", resource, namespace, params={"labelSelector": label_selector})
    items: list[dict[str, Any]] = found.get("items") or []
    return items


async def create(
    resource: str, namespace: str, body: dict[str, Any], *, timeout: float | None = None
) -> dict[str, Any]:
    return await request("POST", resource, namespace, body=body, timeout=timeout)


async def replace(
    resource: str, namespace: str, name: str, body: dict[str, Any], *, timeout: float | None = None
) -> dict[str, Any]:
    """PUT: with `metadata.resourceVersion` in `body`, a 409 when the object changed since it was read."""
    return await request("PUT", resource, namespace, name, body=body, timeout=timeout)


async def patch(
    resource: str,
    namespace: str,
    name: str,
    body: dict[str, Any],
    *,
    content_type: str,
    subresource: str | None = None,
    field_manager: str | None = None,
) -> dict[str, Any]:
    params = {"fieldManager": field_manager} if field_manager else None
    return await request(
        "PATCH", resource, namespace, name, subresource=subresource, params=params, body=body, content_type=content_type
    )


async def delete(resource: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """`body`: a DeleteOptions document (propagation policy, preconditions)."""
    options = {"kind": "DeleteOptions", "apiVersion": "v1", **body}
    return await request("DELETE", resource, namespace, name, body=options)


async def namespace_terminating(namespace: str) -> bool:
    """True while the namespace is being deleted (or already gone): its objects, our Role among them, are going."""
    found = await get_or_none("namespaces", None, namespace)
    return found is None or (found.get("metadata") or {}).get("deletionTimestamp") is not None


async def get_migration(namespace: str, name: str) -> dict[str, Any] | None:
    return await get_or_none(constants.PLURAL, namespace, name)


async def patch_migration_status(namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Every status write goes through the scrubber (`errors.scrub`), whoever built the document."""
    body = errors.scrub_document(body)
    return await patch(constants.PLURAL, namespace, name, body, content_type=MERGE_PATCH, subresource="status")


@dataclass(frozen=True)
class SecretRead:
    """What the operator takes from a Secret: its labels and annotations (the opt-in, `policy.py`) and the values of
    the keys it asked for."""

    labels: dict[str, str]
    annotations: dict[str, str]
    values: dict[str, str]


async def read_secret(namespace: str, name: str, keys: list[str]) -> SecretRead | None:
    secret = await get_or_none("secrets", namespace, name)
    if secret is None:
        return None
    data = secret.get("data") or {}
    metadata = secret.get("metadata") or {}
    return SecretRead(
        labels=dict(metadata.get("labels") or {}),
        annotations=dict(metadata.get("annotations") or {}),
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


async def read_bytes(
    resource: str, namespace: str, name: str, *, subresource: str, params: dict[str, str], limit: int
) -> bytes:
    """At most `limit` bytes of a raw (non-JSON) answer."""
    async with _send("GET", path(resource, namespace, name, subresource), params=params, timeout=_timeout(None)) as r:
        data = bytearray()
        while len(data) < limit:
            chunk = await r.content.read(limit - len(data))
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_pod_log(namespace: str, pod: str, container: str, limit_bytes: int) -> PodLog | None:
    """The head (at most `limit_bytes`) of a container's log, or None when the API says it cannot be had
    (`LOG_UNAVAILABLE`). Other errors (the node's kubelet unreachable, 5xx) are raised: the log may come back."""
    params = {"container": container, "limitBytes": str(limit_bytes + 1)}
    try:
        data = await read_bytes("pods", namespace, pod, subresource="log", params=params, limit=limit_bytes + 1)
    except ApiError as error:
        if error.status in LOG_UNAVAILABLE:
            return None
        raise
    return PodLog(data[:limit_bytes].decode("utf-8", errors="replace"), truncated=len(data) > limit_bytes)


async def stream(
    resource: str,
    namespace: str,
    name: str,
    *,
    subresource: str,
    params: dict[str, str],
    read_timeout: float,
) -> AsyncGenerator[bytes, None]:
    """A long-lived raw answer (a followed log) in chunks as they come; no total timeout, but a read that waits
    longer than `read_timeout` for a byte ends it (a connection that died silently)."""
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_SECONDS, sock_read=read_timeout)
    async with _send("GET", path(resource, namespace, name, subresource), params=params, timeout=timeout) as r:
        async for chunk in r.content.iter_any():
            yield chunk
