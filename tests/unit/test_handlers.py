"""handlers.py: the one patch of kopf (a namespaced watch refused with 403 is retried, not fatal), and the watch of the
Jobs' pods that wakes a run when its pod ended."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import specs
from kopf._cogs.clients import errors as kopf_errors
from kopf._core.reactor import orchestration, queueing

from migration_operator import handlers, machine
from migration_operator.models import parse_spec
from migration_operator.reasons import Step

# every step builds a Job with a Compensate rollback
SPEC = parse_spec(specs.parking(rollback={"strategy": "Compensate", "compensate": {"sql": "drop table zones;"}}))


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


# ------------------------------------------------------------------------------ a Job's pod ended: the run wakes
LONG_NAME = "a-very-long-database-migration-name-for-the-parking-database-release-2026-and-more"


@pytest.fixture
def triggers(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], asyncio.Event]:
    found = {("ns", LONG_NAME): asyncio.Event(), ("ns", "other"): asyncio.Event(), ("ns2", LONG_NAME): asyncio.Event()}
    monkeypatch.setattr(handlers, "_triggers", found)
    return found


def pod_labels(name: str) -> dict[str, str]:
    """The labels `build_job` puts on a step's pod template (the name shortened to a label value)."""
    manifest = machine.build_job({"metadata": {"name": name, "namespace": "ns", "uid": "u"}}, SPEC, Step.MIGRATE)
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
async def test_a_jobs_pod_that_ended_wakes_its_run_only(
    triggers: dict[tuple[str, str], asyncio.Event], phase: str
) -> None:
    labels = pod_labels(LONG_NAME)
    await handlers.job_pod_changed(namespace="ns", labels=labels, status={"phase": phase})
    assert [key for key, trigger in triggers.items() if trigger.is_set()] == [("ns", LONG_NAME)]


async def test_a_jobs_pod_whose_container_ended_wakes_its_run_before_the_pods_phase_says_so(
    triggers: dict[tuple[str, str], asyncio.Event],
) -> None:
    ended = {"phase": "Running", "containerStatuses": [{"name": "migrate", "state": {"terminated": {"exitCode": 0}}}]}
    await handlers.job_pod_changed(namespace="ns", labels=pod_labels(LONG_NAME), status=ended)
    assert [key for key, trigger in triggers.items() if trigger.is_set()] == [("ns", LONG_NAME)]


@pytest.mark.parametrize("phase", [None, "Pending", "Running"])
async def test_a_jobs_pod_that_runs_wakes_nobody(triggers: dict[tuple[str, str], asyncio.Event], phase: str) -> None:
    await handlers.job_pod_changed(namespace="ns", labels=pod_labels(LONG_NAME), status={"phase": phase})
    assert not any(trigger.is_set() for trigger in triggers.values())


def test_the_watches_select_our_jobs_and_pods_on_the_server() -> None:
    """The label selectors given to kopf match what `build_job` labels: every step's Job and pod, nothing else."""
    def matches(selector: str, labels: dict[str, str]) -> bool:
        for term in selector.split(","):
            key, _, value = term.partition("=")
            if key not in labels or (value and labels[key] != value):
                return False
        return True

    for step in Step:
        manifest = machine.build_job({"metadata": {"name": LONG_NAME, "namespace": "ns", "uid": "u"}}, SPEC, step)
        assert matches(handlers.OUR_JOBS, manifest["metadata"]["labels"])
        assert matches(handlers.OUR_PODS, manifest["spec"]["template"]["metadata"]["labels"])
    assert not matches(handlers.OUR_PODS, {"app": "api-gateway"})
