"""leader.py: who may take the leader Lease and when the leader must stop, on a fake clock. The decisions are pure
functions; the elector's read-decide-write pass runs against an in-memory coordination API with the API server's
semantics that matter (404 on a missing Lease, 409 on a create of an existing one or a write with a stale
resourceVersion), the Leases being the API's JSON documents."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

from migration_operator import kube, leader
from migration_operator.leader import LeaseRecord, Observed, Timing
from tests.unit import fake_leases

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)


def record(holder: str = "pod-a", version: str = "1", duration: int = 15, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration_seconds=duration, transitions=transitions,
                       acquire_time="2026-12-02T00:00:00.000000Z", resource_version=version)


# ---- decisions ---------------------------------------------------------------------------------------------------
def test_no_lease_may_be_taken() -> None:
    assert leader.may_acquire("pod-b", None, now=0.0)


def test_a_released_lease_may_be_taken_at_once() -> None:
    seen = Observed(record(holder=""), at=100.0)
    assert leader.may_acquire("pod-b", seen, now=100.0)


def test_our_own_pod_takes_its_lease_back_at_once() -> None:
    """A container the kubelet restarted in the same pod has the same identity: no wait for the lease to expire."""
    seen = Observed(record(holder="pod-a"), at=100.0)
    assert leader.may_acquire("pod-a", seen, now=100.0)


def test_a_fresh_lease_of_another_pod_is_not_taken() -> None:
    seen = Observed(record(holder="pod-a", duration=15), at=100.0)
    assert not leader.may_acquire("pod-b", seen, now=114.9)


def test_a_lease_unchanged_for_its_duration_is_taken() -> None:
    seen = Observed(record(holder="pod-a", duration=15), at=100.0)
    assert leader.may_acquire("pod-b", seen, now=115.0)


def test_the_holders_duration_counts_not_ours() -> None:
    """The record's leaseDurationSeconds is the holder's promise: a standby with another setting still waits for it."""
    seen = Observed(record(holder="pod-a", duration=40), at=100.0)
    assert not leader.may_acquire("pod-b", seen, now=130.0)
    assert leader.may_acquire("pod-b", seen, now=140.0)


def test_expiry_is_measured_from_our_first_sighting_of_a_record() -> None:
    """The same resourceVersion keeps its first sighting (its age grows); a renewal (a new version) restarts it.
    The holder's renewTime is never compared with our clock."""
    first = leader.observe(None, record(version="7"), now=100.0)
    again = leader.observe(first, record(version="7"), now=110.0)
    assert again == first and again is not None and again.at == 100.0
    renewed = leader.observe(again, record(version="8"), now=112.0)
    assert renewed is not None and renewed.at == 112.0
    assert not leader.may_acquire("pod-b", renewed, now=126.0)
    assert leader.may_acquire("pod-b", renewed, now=127.0)
    assert leader.observe(renewed, None, now=130.0) is None


def test_the_leader_steps_down_at_its_renew_deadline() -> None:
    assert not leader.must_step_down(last_renewed=100.0, now=109.9, timing=TIMING)
    assert leader.must_step_down(last_renewed=100.0, now=110.0, timing=TIMING)
    assert leader.must_step_down(last_renewed=None, now=0.0, timing=TIMING)


def test_the_leader_stops_before_a_standby_may_take_over() -> None:
    """Renewal sent at t=100 and seen by the standby at t>=100: the leader stops at 110, the standby may take at 115."""
    seen = Observed(record(holder="pod-a", duration=int(TIMING.lease_duration)), at=100.0)
    for now in (100.0, 105.0, 109.99):
        assert not leader.may_acquire("pod-b", seen, now)
    assert leader.must_step_down(last_renewed=100.0, now=110.0, timing=TIMING)
    assert not leader.may_acquire("pod-b", seen, now=110.0)


@pytest.mark.parametrize(("lease", "deadline", "retry"), [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)])
def test_timing_must_order_retry_deadline_lease(lease: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timing(lease_duration=lease, renew_deadline=deadline, retry_period=retry)


def test_timing_from_env() -> None:
    env = {"DBOPS_LEADER_LEASE_SECONDS": "30", "DBOPS_LEADER_RENEW_DEADLINE_SECONDS": "20",
           "DBOPS_LEADER_RETRY_SECONDS": "4"}
    assert Timing.from_env(env) == Timing(30, 20, 4)
    assert Timing.from_env({}) == TIMING


def test_lease_body_keeps_acquire_time_on_renewal_and_counts_transitions() -> None:
    now = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    renewal = leader.lease_body("l", "pod-a", record(holder="pod-a", transitions=3), TIMING, now)
    assert renewal["spec"]["acquireTime"] == "2026-12-02T00:00:00.000000Z"
    assert renewal["spec"]["renewTime"] == "2026-12-02T01:02:03.456789Z"
    assert renewal["spec"]["leaseTransitions"] == 3
    assert renewal["metadata"]["resourceVersion"] == "1"  # optimistic concurrency
    takeover = leader.lease_body("l", "pod-b", record(holder="pod-a", transitions=3), TIMING, now)
    assert takeover["spec"]["acquireTime"] == takeover["spec"]["renewTime"]
    assert takeover["spec"]["leaseTransitions"] == 4
    assert takeover["spec"]["holderIdentity"] == "pod-b" and takeover["spec"]["leaseDurationSeconds"] == 15
    first = leader.lease_body("l", "pod-a", None, TIMING, now)
    assert "resourceVersion" not in first["metadata"] and first["spec"]["leaseTransitions"] == 0


def test_release_empties_the_holder() -> None:
    released = leader.lease_body("l", "pod-a", record(holder="pod-a"), TIMING, datetime.now(UTC), release=True)
    assert released["spec"]["holderIdentity"] is None
    assert released["spec"]["leaseDurationSeconds"] == 1


# ---- the elector against an in-memory API --------------------------------------------------------------------------
class Coordination(fake_leases.Coordination):
    def holder(self) -> str | None:
        return next(iter(self.leases.values()))["spec"]["holderIdentity"] if self.leases else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Coordination:
    coordination = Coordination()
    monkeypatch.setattr(kube, "request", coordination.request)
    return coordination


def elector(me: str, clock: Clock, changes: list[bool] | None = None) -> leader.LeaderElector:
    return leader.LeaderElector("ops", "migration-operator-leader", me, TIMING, clock=clock,
                                on_change=None if changes is None else changes.append)


async def test_first_replica_creates_the_lease_the_second_stands_by(api: Coordination) -> None:
    clock = Clock()
    a, b = elector("pod-a", clock), elector("pod-b", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    assert api.holder() == "pod-a" and a.taken_from is None  # created
    assert not await b.try_acquire_or_renew(timeout=5)
    assert b.holder == "pod-a" and api.holder() == "pod-a"


async def test_standby_takes_over_a_lease_left_unrenewed_for_its_duration(api: Coordination) -> None:
    clock = Clock()
    a, b = elector("pod-a", clock), elector("pod-b", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    assert not await b.try_acquire_or_renew(timeout=5)  # first sighting at t=1000
    clock.now += 14
    assert not await b.try_acquire_or_renew(timeout=5)
    clock.now += 1
    assert await b.try_acquire_or_renew(timeout=5)
    assert api.holder() == "pod-b" and b.taken_from == "pod-a"
    lease = next(iter(api.leases.values()))
    assert lease["spec"]["leaseTransitions"] == 1
    # the old leader's next pass sees another holder: it may not renew
    assert not await a.try_acquire_or_renew(timeout=5)
    assert a.holder == "pod-b"


async def test_renewals_keep_the_standby_waiting(api: Coordination) -> None:
    clock = Clock()
    a, b = elector("pod-a", clock), elector("pod-b", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    for _ in range(20):  # 40 s of renewals every 2 s
        assert not await b.try_acquire_or_renew(timeout=5)
        clock.now += 2
        assert await a.try_acquire_or_renew(timeout=5)
    assert api.holder() == "pod-a"


async def test_a_restarted_container_of_the_same_pod_takes_its_lease_back_at_once(api: Coordination) -> None:
    clock = Clock()
    assert await elector("pod-a", clock).try_acquire_or_renew(timeout=5)
    restarted = elector("pod-a", clock)  # a new process, nothing remembered
    assert await restarted.try_acquire_or_renew(timeout=5)
    assert api.holder() == "pod-a" and restarted.taken_from == "pod-a"


async def test_two_standbys_racing_for_an_expired_lease_cannot_both_win(api: Coordination) -> None:
    clock = Clock()
    assert await elector("pod-a", clock).try_acquire_or_renew(timeout=5)
    b, c = elector("pod-b", clock), elector("pod-c", clock)
    assert not await b.try_acquire_or_renew(timeout=5)
    assert not await c.try_acquire_or_renew(timeout=5)
    clock.now += 15
    stale = api.read_namespaced_lease("migration-operator-leader", "ops")
    assert await b.try_acquire_or_renew(timeout=5)
    # c read the same expired record as b before b's write: its write carries the stale resourceVersion
    c.observed = Observed(LeaseRecord.from_api(stale), at=clock.now - 15)
    original = api.read_namespaced_lease
    api.read_namespaced_lease = lambda name, namespace, **_: stale  # type: ignore[method-assign]
    assert not await c.try_acquire_or_renew(timeout=5)
    api.read_namespaced_lease = original  # type: ignore[method-assign]
    assert api.holder() == "pod-b"


async def test_release_lets_the_standby_take_over_at_once(api: Coordination) -> None:
    clock = Clock()
    changes: list[bool] = []
    a, b = elector("pod-a", clock, changes), elector("pod-b", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    a.leading = True
    assert not await b.try_acquire_or_renew(timeout=5)
    await a.release()
    assert api.holder() is None and changes == [False]
    assert await b.try_acquire_or_renew(timeout=5)
    assert api.holder() == "pod-b" and b.taken_from == ""  # released


async def test_release_reads_again_when_a_renewal_in_flight_lands_first(api: Coordination) -> None:
    """hold() cancelled while its renewal's request was on the wire (the server may have taken it): the renewal lands
    between release's read and its write, whose resourceVersion is then stale (409). Release reads again and wins."""
    clock = Clock()
    a, b = elector("pod-a", clock), elector("pod-b", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    a.leading = True
    original = api.replace_namespaced_lease
    landed: list[str] = []

    def renewal_lands_first(name: str, namespace: str, body: dict[str, Any], **kwargs: Any) -> Any:
        if not landed:
            current = api.read_namespaced_lease(name, namespace)
            renewal = leader.lease_body(name, "pod-a", LeaseRecord.from_api(current), TIMING, datetime.now(UTC))
            landed.append(original(name, namespace, renewal)["metadata"]["resourceVersion"])
        return original(name, namespace, body, **kwargs)

    api.replace_namespaced_lease = renewal_lands_first  # type: ignore[method-assign]
    await a.release()
    assert landed and api.holder() is None
    assert await b.try_acquire_or_renew(timeout=5)
    assert b.taken_from == ""


async def test_release_gives_up_after_its_attempts_when_every_write_conflicts(api: Coordination) -> None:
    clock = Clock()
    a = elector("pod-a", clock)
    assert await a.try_acquire_or_renew(timeout=5)
    a.leading = True
    writes: list[int] = []

    def always_stale(*_: Any, **__: Any) -> Any:
        writes.append(1)
        raise kube.ApiError(409, "Conflict")

    api.replace_namespaced_lease = always_stale  # type: ignore[method-assign]
    await a.release()  # logs, never raises: the process is exiting anyway
    assert len(writes) == leader.RELEASE_ATTEMPTS and api.holder() == "pod-a"


async def test_release_leaves_a_lease_someone_else_holds(api: Coordination) -> None:
    clock = Clock()
    a, b = elector("pod-a", clock), elector("pod-b", clock)
    assert await b.try_acquire_or_renew(timeout=5)
    a.leading = True  # it believed it led
    await a.release()
    assert api.holder() == "pod-b"


async def test_hold_raises_when_another_replica_holds_the_lease(api: Coordination, monkeypatch:
                                                                 pytest.MonkeyPatch) -> None:
    clock = Clock()
    changes: list[bool] = []
    a = elector("pod-a", clock, changes)
    stop = leader.asyncio.Event()
    assert await a.acquire(stop)
    assert changes == [True]
    # pod-b wrote itself as holder (a's lease had expired from b's point of view)
    lease = next(iter(api.leases.values()))
    api._store("ops", {**lease, "spec": {**lease["spec"], "holderIdentity": "pod-b"}})
    monkeypatch.setattr(leader.asyncio, "sleep", _no_sleep)
    with pytest.raises(leader.LeadershipLost, match="pod-b holds"):
        await a.hold()
    assert changes == [True, False]


async def test_hold_raises_at_the_renew_deadline_when_the_api_is_away(api: Coordination, monkeypatch:
                                                                       pytest.MonkeyPatch) -> None:
    clock = Clock()
    a = elector("pod-a", clock)
    assert await a.acquire(leader.asyncio.Event())
    api.fail = True
    passes = 0

    async def tick(_: float) -> None:
        nonlocal passes
        passes += 1
        clock.now += TIMING.retry_period

    monkeypatch.setattr(leader.asyncio, "sleep", tick)
    with pytest.raises(leader.LeadershipLost, match="not renewed for 10 s"):
        await a.hold()
    assert passes == 5  # 2, 4, 6, 8 s: still leading; 10 s: the deadline


async def _no_sleep(_: float) -> None:
    return None


# ---- __main__: what the process does with the election ------------------------------------------------------------
async def test_the_leader_runs_kopf_then_releases_the_lease_after_it_stopped(
    api: Coordination, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migration_operator import __main__ as main

    seen: list[str] = []

    async def operator(**kwargs: Any) -> None:  # kopf, stopped by SIGTERM after a while
        seen.append(f"kopf ran while {api.holder()} held the Lease, standalone={kwargs['standalone']}")

    monkeypatch.setattr(main.kopf, "operator", operator)
    monkeypatch.setattr(main.metrics, "serve", lambda *_: None)
    monkeypatch.setenv("POD_NAME", "pod-a")
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    assert await main.run_elected({"clusterwide": True, "namespaces": [], "standalone": True}, None) == 0
    assert seen == ["kopf ran while pod-a held the Lease, standalone=True"]
    assert api.holder() is None  # released once kopf had returned
    assert main.metrics.LEADER._value.get() == 0


def test_a_lost_lease_ends_the_process_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No graceful stop (kopf's lets handlers finish): os._exit(1), and the kubelet restarts the container."""
    from migration_operator import __main__ as main

    exits: list[int] = []
    monkeypatch.setattr(main.os, "_exit", exits.append)

    async def lose() -> None:
        raise leader.LeadershipLost("pod-b holds Lease ops/migration-operator-leader now")

    async def renewal_ends(cancel: bool) -> None:
        task = leader.asyncio.create_task(lose() if not cancel else leader.asyncio.sleep(60))
        if cancel:
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        main._on_renewal_ended(task)

    leader.asyncio.run(renewal_ends(cancel=True))  # kopf stopped first: renewal cancelled, no exit
    assert exits == []
    leader.asyncio.run(renewal_ends(cancel=False))
    assert exits == [1]
