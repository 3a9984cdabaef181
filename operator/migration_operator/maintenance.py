"""Maintenance mode: the app's Deployment scaled to 0 and back.

The original replica count is written to the Deployment (annotation `dbops.io/original-replicas`, plus
`dbops.io/maintenance-by` naming the run) *before* scaling, and to status: a restart at any moment finds it.
"""

from __future__ import annotations

from typing import Any

from . import constants, kube
from .observations import DeploymentObservation


async def observe(namespace: str, name: str) -> DeploymentObservation:
    clients = kube.load()
    deployment = await kube.get_or_none(clients.apps.read_namespaced_deployment, name, namespace)
    if deployment is None:
        return DeploymentObservation(exists=False)
    annotations = deployment.metadata.annotations or {}
    original = annotations.get(constants.ORIGINAL_REPLICAS_ANNOTATION)
    selector = (deployment.spec.selector.match_labels or {}) if deployment.spec.selector else {}
    pods = 0
    if selector:
        listing = await kube.call(
            clients.core.list_namespaced_pod,
            namespace,
            label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        )
        pods = len(listing.items)
    status = deployment.status
    return DeploymentObservation(
        exists=True,
        replicas=deployment.spec.replicas if deployment.spec.replicas is not None else 1,
        available_replicas=(status.available_replicas or 0) if status else 0,
        updated_replicas=(status.updated_replicas or 0) if status else 0,
        pods=pods,
        up_to_date=bool(status and (status.observed_generation or 0) >= (deployment.metadata.generation or 0)),
        original_replicas_annotation=int(original) if original and original.isdigit() else None,
        annotation_owner=annotations.get(constants.MAINTENANCE_OWNER_ANNOTATION),
    )


async def scale(
    namespace: str, name: str, replicas: int, *, record_original: int | None = None, owner: str | None = None
) -> None:
    clients = kube.load()
    if record_original is not None:
        annotations = {constants.ORIGINAL_REPLICAS_ANNOTATION: str(record_original)}
        if owner:
            annotations[constants.MAINTENANCE_OWNER_ANNOTATION] = owner
        await kube.call(
            clients.apps.patch_namespaced_deployment, name, namespace, {"metadata": {"annotations": annotations}}
        )
    body: dict[str, Any] = {"spec": {"replicas": replicas}}
    await kube.call(clients.apps.patch_namespaced_deployment_scale, name, namespace, body)


async def clear_record(namespace: str, name: str, owner: str) -> None:
    """Drop our annotations once the app is back (only if they are ours)."""
    clients = kube.load()
    deployment = await kube.get_or_none(clients.apps.read_namespaced_deployment, name, namespace)
    if deployment is None:
        return
    annotations = deployment.metadata.annotations or {}
    if annotations.get(constants.MAINTENANCE_OWNER_ANNOTATION) not in (None, owner):
        return
    if not ({constants.ORIGINAL_REPLICAS_ANNOTATION, constants.MAINTENANCE_OWNER_ANNOTATION} & set(annotations)):
        return
    patch = {
        "metadata": {
            "annotations": {constants.ORIGINAL_REPLICAS_ANNOTATION: None, constants.MAINTENANCE_OWNER_ANNOTATION: None}
        }
    }
    await kube.call(clients.apps.patch_namespaced_deployment, name, namespace, patch)
