"""The one patch of kopf in handlers.py: a namespaced watch refused with 403 is retried, not fatal."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from kopf._cogs.clients import errors as kopf_errors
from kopf._core.reactor import orchestration, queueing

from migration_operator import handlers


def forbidden() -> kopf_errors.APIForbiddenError:
    return kopf_errors.APIForbiddenError({"message": "jobs.batch is forbidden"}, status=403, headers={})


class FlakyWatcher:
    """Refused `refusals` times, then returns (as kopf's watcher does when cancelled or paused)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.refusals:
            raise forbidden()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "FORBIDDEN_WATCH_RETRY", 0.0)


async def test_a_refused_namespaced_watch_is_retried_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    watcher = FlakyWatcher(refusals=3)
    await handlers.tolerate_forbidden_watches(watcher)(namespace="gone", resource="jobs")
    assert len(watcher.calls) == 4
    assert all(call["namespace"] == "gone" and call["resource"] == "jobs" for call in watcher.calls)
    warnings = [r for r in caplog.records if "forbidden" in r.getMessage()]
    assert len(warnings) == 1 and "namespace gone" in warnings[0].getMessage()


async def test_a_refused_cluster_wide_watch_stays_fatal() -> None:
    watcher = FlakyWatcher(refusals=1)
    with pytest.raises(kopf_errors.APIForbiddenError):
        await handlers.tolerate_forbidden_watches(watcher)(namespace=None, resource="namespaces")
    assert len(watcher.calls) == 1


async def test_other_errors_are_not_swallowed() -> None:
    async def broken(**_: Any) -> None:
        raise kopf_errors.APIServerError({"message": "boom"}, status=500, headers={})

    with pytest.raises(kopf_errors.APIServerError):
        await handlers.tolerate_forbidden_watches(broken)(namespace="ns", resource="jobs")


def test_kopf_uses_the_patched_watcher() -> None:
    """Fails when a kopf upgrade moves the call the patch relies on: the orchestrator starts every resource
    watcher through the module attribute `queueing.watcher`."""
    assert getattr(queueing.watcher, "tolerates_forbidden", False)
    assert "queueing.watcher(" in inspect.getsource(orchestration.spawn_missing_watchers)
