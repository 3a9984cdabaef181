"""reconcile.on_delete, the finalizer of a run deleted in flight, with the Kubernetes calls faked: it scales the app
back, except when the whole namespace is going (its Deployment and, with scoped RBAC, our Role go with it)."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from migration_operator import kube, lock, maintenance, reconcile, stopping
from migration_operator.machine import context
from migration_operator.observations import DeploymentObservation
from tests.unit import specs


class Cluster:
    def __init__(self, *, observe_error: int | None = None, terminating: bool = False) -> None:
        self.observe_error = observe_error
        self.terminating = terminating
        self.scaled: list[tuple[str, int]] = []
        self.released = 0
        self.jobs_running = False

    async def observe(self, namespace: str, name: str) -> DeploymentObservation:
        if self.observe_error:
            raise kube.ApiError(self.observe_error, "Forbidden" if self.observe_error == 403 else "")
        return DeploymentObservation(exists=True, replicas=0, original_replicas_annotation=3)

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.scaled.append((name, replicas))

    async def clear_record(self, namespace: str, name: str, owner: str) -> None:
        pass

    async def namespace_terminating(self, namespace: str) -> bool:
        return self.terminating

    async def release(self, body: dict[str, Any], spec: Any) -> None:
        self.released += 1

    async def stop_all(self, namespace: str, run: str) -> list[str]:
        self.jobs_running, remaining = False, ["v6-migrate"] if self.jobs_running else []
        return remaining

    async def secret_values(self, ctx: Any) -> dict[str, str] | None:
        return None


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    fake = Cluster()
    monkeypatch.setattr(maintenance, "observe", fake.observe)
    monkeypatch.setattr(maintenance, "scale", fake.scale)
    monkeypatch.setattr(maintenance, "clear_record", fake.clear_record)
    monkeypatch.setattr(kube, "namespace_terminating", fake.namespace_terminating)
    monkeypatch.setattr(lock, "release", fake.release)
    monkeypatch.setattr(stopping, "stop_all", fake.stop_all)
    monkeypatch.setattr(context, "secret_values", fake.secret_values)
    return fake


def deleted_while_migrating() -> dict[str, Any]:
    return {
        "metadata": {"name": "v6", "namespace": "parking"},
        "spec": specs.parking(maintenance={"deployment": {"name": "api-gateway"}}),
        "status": {"phase": "Migrating",
                   "maintenance": {"originalReplicas": 3, "scaledDownAt": "2026-11-25T10:00:00Z"}},
    }


LOG = logging.getLogger("test")


async def test_the_app_is_scaled_back_and_the_lock_released(cluster: Cluster) -> None:
    await reconcile.on_delete(deleted_while_migrating(), LOG)
    assert cluster.scaled == [("api-gateway", 3)]
    assert cluster.released == 1


@pytest.mark.parametrize("code", [403, 404])
async def test_a_namespace_being_deleted_lets_the_run_go(cluster: Cluster, code: int,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cluster.observe_error, cluster.terminating = code, True
    await reconcile.on_delete(deleted_while_migrating(), LOG)
    assert cluster.scaled == []
    assert cluster.released == 1
    assert "namespace parking is being deleted" in caplog.text


@pytest.mark.parametrize("code", [403, 500])
async def test_otherwise_the_error_is_raised_so_kopf_retries(cluster: Cluster, code: int) -> None:
    cluster.observe_error, cluster.terminating = code, False
    with pytest.raises(kube.ApiError):
        await reconcile.on_delete(deleted_while_migrating(), LOG)
    assert cluster.released == 0


async def test_the_app_comes_back_only_once_the_runs_jobs_are_gone(cluster: Cluster) -> None:
    cluster.jobs_running = True
    with pytest.raises(kopf.TemporaryError, match="v6-migrate"):
        await reconcile.on_delete(deleted_while_migrating(), LOG)
    assert cluster.scaled == []  # not while the migrate Job may still write
    await reconcile.on_delete(deleted_while_migrating(), LOG)
    assert cluster.scaled == [("api-gateway", 3)]
