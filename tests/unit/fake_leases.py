"""The coordination API faked in memory, with the API server's semantics that matter to lock.py and leader.py: 404 on
a missing Lease, 409 on a create of an existing one or a write (or a delete precondition) with a stale
resourceVersion, a new resourceVersion on every write; the Leases are the client's own V1Lease objects.
`fail = True` makes reads answer 503 (an API server that is down)."""

from __future__ import annotations

import itertools
from typing import Any

from kubernetes.client import V1Lease
from kubernetes.client.exceptions import ApiException


class Coordination:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.fail = False

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> V1Lease:
        if self.fail:
            raise ApiException(status=503, reason="Service Unavailable")
        if (namespace, name) not in self.leases:
            raise ApiException(status=404)
        return V1Lease.from_dict(self.leases[(namespace, name)])

    def _store(self, namespace: str, body: dict[str, Any]) -> V1Lease:
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(next(self.versions))}}
        self.leases[(namespace, body["metadata"]["name"])] = stored
        return V1Lease.from_dict(stored)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> V1Lease:
        if (namespace, body["metadata"]["name"]) in self.leases:
            raise ApiException(status=409)
        return self._store(namespace, body)

    def _check_version(self, namespace: str, name: str, version: str | None) -> None:
        """404 when the Lease does not exist, 409 when `version` is not its resourceVersion (the API's answers)."""
        current = self.leases.get((namespace, name))
        if current is None:
            raise ApiException(status=404)
        if version != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> V1Lease:
        self._check_version(namespace, name, body["metadata"].get("resourceVersion"))
        return self._store(namespace, body)

    def delete_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self._check_version(namespace, name, body["preconditions"]["resourceVersion"])
        del self.leases[(namespace, name)]
