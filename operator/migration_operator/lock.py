"""One migration at a time per database: a coordination.k8s.io Lease named after host:port/database.

Why a Lease and not a PostgreSQL advisory lock: an advisory lock lives in a session, which the operator
would have to keep open for the whole run (and across restarts it vanishes), and a Clone rollback must
terminate every session on the database, ours included. The Lease is visible (`kubectl get lease`), survives
operator restarts and needs no renewal: the holder is "<namespace>/<name>/<uid>" of a DatabaseMigration, and a
Lease whose holder is gone or finished is taken over. Writes use resourceVersion, so two runs racing for a
free database cannot both win.

The Lease lives in the operator's namespace (env POD_NAMESPACE / DBOPS_LOCK_NAMESPACE) so that runs in
different namespaces against the same database still exclude each other; without it, in the run's own.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import constants, kube
from .models import TERMINAL_PHASES, DatabaseMigrationSpec, Phase
from .observations import LockObservation


def lease_name(spec: DatabaseMigrationSpec) -> str:
    key = f"{spec.database.host}:{spec.database.port}/{spec.database.name}"
    return "dbmig-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def lease_namespace(own_namespace: str) -> str:
    return os.environ.get("DBOPS_LOCK_NAMESPACE") or os.environ.get("POD_NAMESPACE") or own_namespace


def holder_id(body: dict[str, Any]) -> str:
    metadata = body["metadata"]
    return f"{metadata['namespace']}/{metadata['name']}/{metadata['uid']}"


def _describe(holder: str) -> str:
    return "/".join(holder.split("/")[:2])


async def _holder_active(holder: str) -> bool:
    parts = holder.split("/")
    if len(parts) != 3:
        return False
    namespace, name, uid = parts
    other = await kube.get_migration(namespace, name)
    if other is None or other["metadata"].get("uid") != uid:
        return False
    phase = (other.get("status") or {}).get("phase")
    return not (phase and Phase(phase) in TERMINAL_PHASES)


def _lease_body(
    name: str, holder: str, spec: DatabaseMigrationSpec, resource_version: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE},
        "annotations": {"dbops.io/database": f"{spec.database.host}:{spec.database.port}/{spec.database.name}"},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": holder, "acquireTime": now, "renewTime": now},
    }


async def acquire(body: dict[str, Any], spec: DatabaseMigrationSpec) -> LockObservation:
    clients = kube.load()
    namespace = lease_namespace(body["metadata"]["namespace"])
    name = lease_name(spec)
    me = holder_id(body)
    try:
        lease = await kube.get_or_none(clients.coordination.read_namespaced_lease, name, namespace)
        if lease is None:
            await kube.call(clients.coordination.create_namespaced_lease, namespace, _lease_body(name, me, spec))
            return LockObservation(acquired=True, holder=_describe(me))
        holder = lease.spec.holder_identity or ""
        if holder == me:
            return LockObservation(acquired=True, holder=_describe(me))
        if holder and await _holder_active(holder):
            return LockObservation(acquired=False, holder=_describe(holder))
        await kube.call(
            clients.coordination.replace_namespaced_lease,
            name,
            namespace,
            _lease_body(name, me, spec, lease.metadata.resource_version),
        )
        return LockObservation(acquired=True, holder=_describe(me))
    except ApiException as error:
        if error.status in (409, 422):  # someone else won the race: look again later
            return LockObservation(acquired=False, holder="another migration (lease just taken)")
        raise


async def release(body: dict[str, Any], spec: DatabaseMigrationSpec) -> None:
    clients = kube.load()
    namespace = lease_namespace(body["metadata"]["namespace"])
    name = lease_name(spec)
    lease = await kube.get_or_none(clients.coordination.read_namespaced_lease, name, namespace)
    if lease is None or lease.spec.holder_identity != holder_id(body):
        return
    try:
        await kube.call(
            clients.coordination.delete_namespaced_lease,
            name,
            namespace,
            body={"preconditions": {"resourceVersion": lease.metadata.resource_version}},
        )
    except ApiException as error:
        if error.status not in (404, 409):
            raise
