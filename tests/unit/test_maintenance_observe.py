"""maintenance.py with the Kubernetes client faked: which pods the drain waits for, who last set spec.replicas
(managedFields, as the API server writes them: the entries below are shaped like those read from the local
cluster after `kubectl create`, `kubectl scale`, a merge patch and a server-side apply), and how the operator scales.
The objects are the API's JSON."""

from __future__ import annotations

from typing import Any

import pytest

from migration_operator import kube, maintenance

CREATE = {
    "manager": "kubectl-create",
    "operation": "Update",
    "apiVersion": "apps/v1",
    "time": "2026-12-01T10:00:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:selector": {}, "f:template": {}}},
}
CONTROLLER = {
    "manager": "kube-controller-manager",
    "operation": "Update",
    "apiVersion": "apps/v1",
    "time": "2026-12-01T10:30:00Z",
    "subresource": "status",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:status": {"f:replicas": {}, "f:availableReplicas": {}, "f:observedGeneration": {}}},
}
OPERATOR_ANNOTATIONS = {
    "manager": "migration-operator",
    "operation": "Update",
    "apiVersion": "apps/v1",
    "time": "2026-12-01T10:05:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:metadata": {"f:annotations": {"f:dbops.io/original-replicas": {}}}},
}


def owner_of_replicas(manager: str, *, time: str | None, operation: str = "Update",
                      subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}}},
    }
    if time:
        entry["time"] = time
    if subresource:
        entry["subresource"] = subresource
    return entry


def deployment(managed_fields: list[dict[str, Any]], replicas: int = 0) -> dict[str, Any]:
    return (
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "api-gateway",
                "namespace": "shop",
                "generation": 4,
                "annotations": {"dbops.io/original-replicas": "3", "dbops.io/maintenance-by": "v6"},
                "managedFields": managed_fields,
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "api-gateway"}},
                "template": {"metadata": {"labels": {"app": "api-gateway"}}, "spec": {"containers": []}},
            },
            "status": {"observedGeneration": 4, "replicas": 0},
        }
    )


def pod(name: str, phase: str, *, reason: str | None = None, terminating: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"app": "api-gateway"}}
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T10:06:00Z"
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    return {"metadata": metadata, "status": status}


class Apps:
    def __init__(self) -> None:
        self.deployment = deployment([CREATE, CONTROLLER])
        self.patches: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        self.scale_patches: list[dict[str, Any]] = []

    def read_namespaced_deployment(self, name: str, namespace: str) -> dict[str, Any]:
        return self.deployment

    def patch_namespaced_deployment(self, name: str, namespace: str, body: dict[str, Any], **kwargs: Any) -> None:
        self.patches.append((name, namespace, body, kwargs))


class Core:
    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> dict[str, Any]:
        self.selectors.append(label_selector)
        return {"items": self.pods}


class Clients:
    """Stands in for `kube.request`: the Deployment read and patched, its pods listed (a patch of the `scale`
    subresource is recorded apart)."""

    def __init__(self) -> None:
        self.apps = Apps()
        self.core = Core()

    async def request(
        self, method: str, resource: str, namespace: str, name: str | None = None, *, subresource: str | None = None,
        params: dict[str, str] | None = None, body: Any = None, content_type: str = kube.JSON, **_: Any
    ) -> dict[str, Any]:
        if resource == "pods" and method == "GET":
            return self.core.list_namespaced_pod(namespace, (params or {}).get("labelSelector", ""))
        assert resource == "deployments" and name is not None, (method, resource)
        if method == "GET":
            return self.apps.read_namespaced_deployment(name, namespace)
        assert method == "PATCH", method
        if subresource == "scale":
            self.apps.scale_patches.append(body)
        else:
            self.apps.patch_namespaced_deployment(name, namespace, body, content_type=content_type, **(params or {}))
        return {}


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Clients:
    fake = Clients()
    monkeypatch.setattr(kube, "request", fake.request)
    return fake


# ------------------------------------------------------------------------------------------------ drain
async def test_the_drain_counts_only_pods_that_can_still_serve(clients: Clients) -> None:
    clients.core.pods = [
        pod("running-1", "Running"),
        pod("running-2", "Running"),
        pod("starting", "Pending"),
        pod("terminating", "Running", terminating=True),  # may still hold connections
        pod("finished", "Succeeded"),
        pod("crashed", "Failed"),
        pod("evicted", "Failed", reason="Evicted"),
        pod("evicted-then-deleted", "Failed", reason="Evicted", terminating=True),
    ]
    observed = await maintenance.observe("shop", "api-gateway")
    assert observed.pods == 4
    assert clients.core.selectors == ["app=api-gateway"]


async def test_only_finished_pods_left_is_a_drained_app(clients: Clients) -> None:
    clients.core.pods = [pod("finished", "Succeeded"), pod("evicted", "Failed", reason="Evicted")]
    assert (await maintenance.observe("shop", "api-gateway")).pods == 0


# ------------------------------------------------------------------------------------ replicas_manager
@pytest.mark.parametrize(
    ("entries", "manager"),
    [
        # created with its replicas, nobody scaled it since
        ([{**CREATE, "fieldsV1": {"f:spec": {"f:replicas": {}, "f:selector": {}}}}, CONTROLLER], "kubectl-create"),
        # `kubectl scale`: an Update through the scale subresource, which the API server records without a time
        ([CREATE, OPERATOR_ANNOTATIONS, owner_of_replicas("kubectl", time=None, subresource="scale"), CONTROLLER],
         "kubectl"),
        # the operator's own scale-down (its patch of the Deployment)
        ([CREATE, owner_of_replicas("migration-operator", time="2026-12-01T10:05:00Z"), CONTROLLER],
         "migration-operator"),
        # two appliers of the same value: the latest one
        ([owner_of_replicas("argocd-controller", time="2026-12-01T10:20:00Z", operation="Apply"),
          owner_of_replicas("helm", time="2026-12-01T10:07:00Z", operation="Apply"), CONTROLLER],
         "argocd-controller"),
        # an applier sharing the field with an earlier `kubectl scale` (an Update takes it from everyone): it came after
        ([owner_of_replicas("kubectl", time=None, subresource="scale"),
          owner_of_replicas("argocd-controller", time="2026-12-01T10:20:00Z", operation="Apply")],
         "argocd-controller"),
        # status.replicas (the controller's) is not spec.replicas; nobody owns spec.replicas here
        ([CREATE, CONTROLLER], None),
        ([], None),
    ],
)
async def test_replicas_manager_names_who_last_set_spec_replicas(
    clients: Clients, entries: list[dict[str, Any]], manager: str | None
) -> None:
    clients.apps.deployment = deployment(entries)
    assert (await maintenance.observe("shop", "api-gateway")).replicas_manager == manager


async def test_the_rest_of_the_observation_is_unchanged(clients: Clients) -> None:
    clients.apps.deployment = deployment([owner_of_replicas("kubectl", time=None, subresource="scale")], replicas=2)
    observed = await maintenance.observe("shop", "api-gateway")
    assert (observed.exists, observed.replicas, observed.original_replicas_annotation, observed.annotation_owner) == (
        True, 2, 3, "v6"
    )


# ------------------------------------------------------------------------------------------------ scale
async def test_the_operator_scales_with_its_own_field_manager_on_the_deployment(clients: Clients) -> None:
    """Not through the scale subresource: a Scale to 0 carries no spec.replicas (omitempty) and leaves the field
    owned by nobody, after which a `kubectl scale` is recorded under no manager either (see the e2e test)."""
    await maintenance.scale("shop", "api-gateway", 0, record_original=3, owner="v6")
    assert clients.apps.scale_patches == []
    annotations, replicas = clients.apps.patches
    assert annotations[2] == {"metadata": {"annotations": {"dbops.io/original-replicas": "3",
                                                           "dbops.io/maintenance-by": "v6"}}}
    assert replicas[2] == {"spec": {"replicas": 0}}
    assert all(
        call[3] == {"fieldManager": "migration-operator", "content_type": kube.STRATEGIC_MERGE_PATCH}
        for call in clients.apps.patches
    )
