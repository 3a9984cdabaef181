"""The coordination API faked in memory, with the API server's semantics that matter to lock.py and leader.py: 404 on
a missing Lease, 409 on a create of an existing one or a write (or a delete precondition) with a stale
resourceVersion, a new resourceVersion on every write; the Leases are the API's JSON documents. `request` stands in
for `kube.request`. `fail = True` makes reads answer 503 (an API server that is down)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from migration_operator.kube import ApiError


class Coordination:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.fail = False

    async def request(
        self, method: str, resource: str, namespace: str | None, name: str | None = None, *, body: Any = None,
        **_: Any,
    ) -> dict[str, Any]:
        assert resource == "leases" and namespace is not None, (resource, namespace)
        if method == "GET":
            assert name is not None
            return self.read_namespaced_lease(name, namespace)
        if method == "POST":
            return self.create_namespaced_lease(namespace, body)
        if method == "PUT":
            assert name is not None
            return self.replace_namespaced_lease(name, namespace, body)
        assert method == "DELETE" and name is not None and body["kind"] == "DeleteOptions", (method, body)
        self.delete_namespaced_lease(name, namespace, body)
        return {}

    def read_namespaced_lease(self, name: str, namespace: str) -> dict[str, Any]:
        if self.fail:
            raise ApiError(503, "Service Unavailable")
        if (namespace, name) not in self.leases:
            raise ApiError(404, "Not Found")
        return copy.deepcopy(self.leases[(namespace, name)])

    def _store(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(next(self.versions))}}
        self.leases[(namespace, body["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if (namespace, body["metadata"]["name"]) in self.leases:
            raise ApiError(409, "Conflict")
        return self._store(namespace, body)

    def _check_version(self, namespace: str, name: str, version: str | None) -> None:
        """404 when the Lease does not exist, 409 when `version` is not its resourceVersion (the API's answers)."""
        current = self.leases.get((namespace, name))
        if current is None:
            raise ApiError(404, "Not Found")
        if version != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_version(namespace, name, body["metadata"].get("resourceVersion"))
        return self._store(namespace, body)

    def delete_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self._check_version(namespace, name, body["preconditions"]["resourceVersion"])
        del self.leases[(namespace, name)]
