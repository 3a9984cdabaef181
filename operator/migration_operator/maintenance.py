"""Maintenance mode: the app's Deployment scaled to 0 and back.

The original replica count is written to the Deployment (annotation `dbops.io/original-replicas`, plus
`dbops.io/maintenance-by` naming the run) *before* scaling, and to status: a restart at any moment finds it.

The operator sets `spec.replicas` with a patch of the Deployment under its own field manager (`migration-operator`),
not through the `scale` subresource: a Scale of 0 replicas carries no `spec.replicas` (omitempty), so scaling to 0
through it leaves nobody owning the field, and a later `kubectl scale` is then recorded under no manager at all
(measured on Kubernetes 1.35). Owned by us, the field changes hands to whoever scales the app next, which is how
`observe` names them (`replicas_manager`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import constants, kube
from .observations import DeploymentObservation

FIELD_MANAGER = constants.APPLICATION_NAME
# Pods that can no longer serve: their containers have stopped for good.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
_NO_TIME = datetime.min.replace(tzinfo=UTC)


def can_serve(pod: dict[str, Any]) -> bool:
    """Whether a pod may still serve (or hold database connections): anything but a finished or evicted pod.
    A terminating pod (deletionTimestamp set) still counts: its containers run until they exit."""
    status = pod.get("status")
    if not status:
        return True
    return status.get("phase") not in FINISHED_PHASES and status.get("reason") != "Evicted"


def replicas_manager(managed_fields: list[dict[str, Any]] | None) -> str | None:
    """The field manager that last set `spec.replicas`: among the managedFields entries (Update or Apply) owning
    `f:spec` -> `f:replicas`, the one with the latest `time`. An Update takes the field from every other manager,
    so several owners only happen when appliers set the same value after it; the API server records an update
    through the `scale` subresource (`kubectl scale`, an HPA) without a time, so such an entry ranks below them."""
    latest: tuple[datetime, int, str] | None = None
    for index, entry in enumerate(managed_fields or []):
        fields = entry.get("fieldsV1") if isinstance(entry.get("fieldsV1"), dict) else {}
        spec = fields.get("f:spec") if fields else None
        if entry.get("operation") not in ("Update", "Apply") or not isinstance(spec, dict) or "f:replicas" not in spec:
            continue
        when = kube.parse_time(entry.get("time")) or _NO_TIME
        candidate = (when if when.tzinfo else when.replace(tzinfo=UTC), index, entry.get("manager") or "")
        if latest is None or candidate > latest:
            latest = candidate
    if latest is None:
        return None
    return latest[2] or None


async def observe(namespace: str, name: str) -> DeploymentObservation:
    deployment = await kube.get_or_none("deployments", namespace, name)
    if deployment is None:
        return DeploymentObservation(exists=False)
    metadata, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    original = annotations.get(constants.ORIGINAL_REPLICAS_ANNOTATION)
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    pods = 0
    if selector:
        listing = await kube.list_items("pods", namespace, ",".join(f"{k}={v}" for k, v in sorted(selector.items())))
        pods = sum(1 for pod in listing if can_serve(pod))
    status = deployment.get("status") or {}
    return DeploymentObservation(
        exists=True,
        replicas=spec["replicas"] if spec.get("replicas") is not None else 1,
        available_replicas=status.get("availableReplicas") or 0,
        updated_replicas=status.get("updatedReplicas") or 0,
        pods=pods,
        up_to_date=bool(status and (status.get("observedGeneration") or 0) >= (metadata.get("generation") or 0)),
        original_replicas_annotation=int(original) if original and original.isdigit() else None,
        annotation_owner=annotations.get(constants.MAINTENANCE_OWNER_ANNOTATION),
        replicas_manager=replicas_manager(metadata.get("managedFields")),
    )


async def _patch(namespace: str, name: str, body: dict[str, Any]) -> None:
    # a strategic merge patch, as the official client sent for a dict body (annotations set to None are removed)
    await kube.patch(
        "deployments", namespace, name, body, content_type=kube.STRATEGIC_MERGE_PATCH, field_manager=FIELD_MANAGER
    )


async def scale(
    namespace: str, name: str, replicas: int, *, record_original: int | None = None, owner: str | None = None
) -> None:
    if record_original is not None:
        annotations = {constants.ORIGINAL_REPLICAS_ANNOTATION: str(record_original)}
        if owner:
            annotations[constants.MAINTENANCE_OWNER_ANNOTATION] = owner
        await _patch(namespace, name, {"metadata": {"annotations": annotations}})
    await _patch(namespace, name, {"spec": {"replicas": replicas}})


async def clear_record(namespace: str, name: str, owner: str) -> None:
    """Drop our annotations once the app is back (only if they are ours)."""
    deployment = await kube.get_or_none("deployments", namespace, name)
    if deployment is None:
        return
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    if annotations.get(constants.MAINTENANCE_OWNER_ANNOTATION) not in (None, owner):
        return
    if not ({constants.ORIGINAL_REPLICAS_ANNOTATION, constants.MAINTENANCE_OWNER_ANNOTATION} & set(annotations)):
        return
    patch = {
        "metadata": {
            "annotations": {constants.ORIGINAL_REPLICAS_ANNOTATION: None, constants.MAINTENANCE_OWNER_ANNOTATION: None}
        }
    }
    await _patch(namespace, name, patch)
