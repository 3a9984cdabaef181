"""One migration at a time per database, and per app: coordination.k8s.io Leases.

Two Leases per run, taken together (both or neither, released together):
- the database's, named after its normalised address `host:port/database` (`database_key`): `db`, `db.ns`,
  `db.ns.svc` and `DB.ns.svc.cluster.local.` seen from namespace `ns` are one database, so one Lease. A short
  Service name is expanded with the run's namespace as cluster DNS does (`db.ns` is Service `db` of namespace
  `ns`, `db.ns.svc` gets the cluster domain, env DBOPS_CLUSTER_DOMAIN, default cluster.local); IP addresses stay
  IP addresses (IPv6 compressed); any other name is kept, lower-cased and without its trailing dot;
- the maintenance Deployment's (`<namespace>/<name>`), when the run has one: two runs of one app against two
  databases would otherwise scale the same Deployment down and up over each other.

Why a Lease and not a PostgreSQL advisory lock: an advisory lock lives in a session, which the operator
would have to keep open for the whole run (and across restarts it vanishes), and a Clone rollback must
terminate every session on the database, ours included. The Lease is visible (`kubectl get lease`), survives
operator restarts and needs no renewal: the holder is "<namespace>/<name>/<uid>" of a DatabaseMigration, and a
Lease whose holder is gone or finished is taken over. Writes use resourceVersion, so two runs racing for a
free database cannot both win.

The Leases live in the operator's namespace (env POD_NAMESPACE / DBOPS_LOCK_NAMESPACE) so that runs in
different namespaces against the same database still exclude each other; without it, in the run's own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import constants, kube
from .models import TERMINAL_PHASES, DatabaseMigrationSpec, Phase
from .observations import LockObservation

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DATABASE_ANNOTATION = "dbops.io/database"
DEPLOYMENT_ANNOTATION = "dbops.io/deployment"
NOT_SERVICE_NAMES = frozenset({"localhost"})


def cluster_domain() -> str:
    return (os.environ.get("DBOPS_CLUSTER_DOMAIN") or DEFAULT_CLUSTER_DOMAIN).strip(".").lower()


def canonical_host(host: str, namespace: str | None = None) -> str:
    """The one spelling of a database host: see the module's docstring. Without `namespace`, a bare name (no dot)
    cannot be expanded and is kept as it is."""
    name = host.strip().rstrip(".").lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    domain = cluster_domain()
    labels = name.split(".")
    if name in NOT_SERVICE_NAMES or name.endswith("." + domain):
        return name
    if len(labels) == 1:
        return f"{name}.{namespace}.svc.{domain}" if namespace else name
    if len(labels) == 2:  # <service>.<namespace>
        return f"{name}.svc.{domain}"
    if labels[-1] == "svc":  # <service>.<namespace>.svc, <pod>.<service>.<namespace>.svc
        return f"{name}.{domain}"
    return name


def database_key(spec: DatabaseMigrationSpec, namespace: str | None = None) -> str:
    """`host:port/database` with the host normalised (`canonical_host`); the database name is case-sensitive."""
    database = spec.database
    return f"{canonical_host(database.host, namespace)}:{database.port}/{database.name}"


def deployment_key(namespace: str, deployment: str) -> str:
    return f"{namespace}/{deployment}"


def _hashed(prefix: str, key: str) -> str:
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:20]


def lease_name(spec: DatabaseMigrationSpec, namespace: str | None = None) -> str:
    """The database's Lease. `namespace` is the run's: without it a bare Service name cannot be expanded."""
    return _hashed("dbmig-", database_key(spec, namespace))


def deployment_lease_name(namespace: str, deployment: str) -> str:
    """The maintenance Deployment's Lease."""
    return _hashed("dbmig-app-", deployment_key(namespace, deployment))


@dataclass(frozen=True)
class _Lock:
    name: str  # the Lease's
    annotations: dict[str, str]
    what: str  # what it guards, for the waiting run's message


def _locks(body: dict[str, Any], spec: DatabaseMigrationSpec) -> list[_Lock]:
    """The Leases of a run, the database's first (every run takes them in this order)."""
    namespace = body["metadata"]["namespace"]
    key = database_key(spec, namespace)
    locks = [_Lock(lease_name(spec, namespace), {DATABASE_ANNOTATION: key}, f"database {key}")]
    if spec.maintenance:
        deployment = spec.maintenance.deployment.name
        app = deployment_key(namespace, deployment)
        locks.append(
            _Lock(deployment_lease_name(namespace, deployment), {DEPLOYMENT_ANNOTATION: app}, f"Deployment {app}")
        )
    return locks


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


def _lease_body(lock: _Lock, holder: str, resource_version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": lock.name,
        "labels": {constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE},
        "annotations": dict(lock.annotations),
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


async def _acquire_one(namespace: str, lock: _Lock, me: str) -> str | None:
    """None when `me` holds the Lease now, else a description of who holds it."""
    try:
        lease = await kube.get_or_none("leases", namespace, lock.name)
        if lease is None:
            await kube.create("leases", namespace, _lease_body(lock, me))
            return None
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        if holder == me:
            return None
        if holder and await _holder_active(holder):
            return f"{_describe(holder)} (holding {lock.what})"
        await kube.replace("leases", namespace, lock.name, _lease_body(lock, me, lease["metadata"]["resourceVersion"]))
        return None
    except kube.ApiError as error:
        if error.status in (409, 422):  # someone else won the race: look again later
            return f"another migration (it just took the lease of {lock.what})"
        raise


async def _release_one(namespace: str, name: str, me: str) -> None:
    lease = await kube.get_or_none("leases", namespace, name)
    if lease is None or (lease.get("spec") or {}).get("holderIdentity") != me:
        return
    try:
        await kube.delete(
            "leases", namespace, name, {"preconditions": {"resourceVersion": lease["metadata"]["resourceVersion"]}}
        )
    except kube.ApiError as error:
        if error.status not in (404, 409):
            raise


async def acquire(body: dict[str, Any], spec: DatabaseMigrationSpec) -> LockObservation:
    """Take the run's Leases, all or none: when one is held by another active run, the ones taken are given back
    (no run sits on the database while it waits for the app, or the other way round) and `holder` names the run
    in the way and what it holds."""
    namespace = lease_namespace(body["metadata"]["namespace"])
    me = holder_id(body)
    locks = _locks(body, spec)
    for index, lock in enumerate(locks):
        other = await _acquire_one(namespace, lock, me)
        if other is not None:
            for taken in locks[:index]:
                await _release_one(namespace, taken.name, me)
            return LockObservation(acquired=False, holder=other)
    return LockObservation(acquired=True, holder=_describe(me))


async def release(body: dict[str, Any], spec: DatabaseMigrationSpec) -> None:
    """Give back every Lease of the run that it holds (a Lease another run took over stays theirs)."""
    namespace = lease_namespace(body["metadata"]["namespace"])
    me = holder_id(body)
    for lock in reversed(_locks(body, spec)):
        await _release_one(namespace, lock.name, me)
