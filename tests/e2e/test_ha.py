"""High availability (issue 14): the chart's two replicas elect a leader through a Lease; when the leader's pod dies for
good in the middle of a run, the standby takes the run over and finishes it, with exactly one Job per step. The
takeover time is measured and printed (not asserted: it depends on the machine's load), as is the SIGTERM handover of
a rolling update, which releases the Lease instead of letting it expire."""

from __future__ import annotations

import threading
import time

import pytest

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.operator import Operator, OperatorPod, parse_metric
from tests.support.sampler import Sampler
from tests.support.wait import wait_for


def ha_operator(operator: Operator | None) -> OperatorPod:
    if not isinstance(operator, OperatorPod):
        pytest.skip("needs the operator as the chart's pods (MO_E2E_OPERATOR=pod)")
    if operator.expected_replicas < 2:
        pytest.skip("needs two operator replicas (MO_E2E_OPERATOR_REPLICAS=1 runs one)")
    return operator


def picked_up_by(status: dict[str, object], pod: str) -> str | None:
    """The phase in which `pod` noted, in the run's own log, that it picked the run up in flight."""
    log = status.get("log") or []
    assert isinstance(log, list)
    note = f"operator {pod} picked this run up in "
    return next((str(e.get("phase")) for e in log if note in str(e.get("message", ""))), None)


def assert_finished_once(parking: ParkingApp, name: str, sampler: Sampler, status: dict[str, object]) -> None:
    assert status["phase"] == "Succeeded", parking.describe(name)
    maintenance = status["maintenance"]
    assert isinstance(maintenance, dict) and maintenance["originalReplicas"] == 3
    parking.wait_gateway_available(3)
    assert postgres.history(parking.database)[-1][0] == "6"
    uids = sampler.job_uids()  # every Job the run ever had, by name, seen by a poller every 0.1 s
    assert uids and all(len(u) == 1 for u in uids.values()), uids
    steps = [j.metadata.labels["dbops.io/step"] for j in parking.jobs(name)]
    assert len(steps) == len(set(steps)), steps


def follow_log(ha: OperatorPod, pod: str, lines: list[str]) -> threading.Thread:
    """Appends the pod's log lines to `lines` until its container ends."""
    stream = ha.core.read_namespaced_pod_log(pod, ha.namespace, container=ha.CONTAINER, follow=True,
                                             _preload_content=False)

    def read() -> None:
        for raw in stream.stream():
            lines.extend(raw.decode(errors="replace").splitlines(keepends=True))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_standby_takes_over_a_run_when_the_leaders_pod_dies(parking: ParkingApp, operator: Operator | None) -> None:
    ha = ha_operator(operator)
    first = ha.wait_leader()
    standbys = [p.metadata.name for p in ha._pods() if p.metadata.name != first]
    assert standbys, ha._describe()
    # who leads is visible: the Lease names the pod, the metric is 1 there and 0 on the standby
    assert ha.holder() == first
    assert parse_metric(ha.metrics(), "dbmig_operator_leader") == 1.0
    standby_metrics = ha.pod_metrics(standbys[0])
    assert standby_metrics is not None and parse_metric(standby_metrics, "dbmig_operator_leader") == 0.0

    parking.set_migrations("good")
    name = "ha-takeover"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        parking.create_migration(name, parking.spec())
        parking.wait_phase(name, "BackingUp", timeout=240)
        dead = ha.kill_for_good()
        died = time.monotonic()
        successor = ha.wait_leader(timeout=180, other_than=dead)
        leads = time.monotonic()
        resumed = wait_for(lambda: picked_up_by(parking.status(name), successor), timeout=120,
                           what=f"{successor} resuming {name}", describe=lambda: parking.describe(name))
        progressed = time.monotonic()
        status = parking.wait_done(name)
    assert successor in standbys, (successor, standbys)  # the standby, not the dead pod's replacement
    assert resumed in ("BackingUp", "Migrating", "Verifying", "ExitingMaintenance"), status.get("log")
    assert_finished_once(parking, name, sampler, status)
    assert dead not in [p.metadata.name for p in ha._pods()]
    print(f"\nHA takeover ({dead} SIGKILLed for good in BackingUp): {successor} led after {leads - died:.1f} s "
          f"(lease + retry + kopf's start), resumed the run in {resumed} after {progressed - died:.1f} s; "
          f"the run ended {status['phase']}")
    # the Deployment replaced the dead pod: two replicas again, the new one a standby
    ha.start()
    assert ha.holder() == successor


def test_graceful_stop_hands_over_without_waiting_for_the_lease(parking: ParkingApp,
                                                                operator: Operator | None) -> None:
    """SIGTERM (a rolling update, a drain): the leader stops kopf, then releases the Lease; the standby takes over on
    its next look, well before the lease would have expired, and finishes the run."""
    ha = ha_operator(operator)
    first = ha.wait_leader()
    parking.set_migrations("good")
    name = "ha-handover"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        parking.create_migration(name, parking.spec())
        parking.wait_phase(name, "BackingUp", timeout=240)
        lines: list[str] = []
        follower = follow_log(ha, first, lines)  # the pod's log goes with the pod: read it as it is written
        stopping = time.monotonic()
        ha.core.delete_namespaced_pod(first, ha.namespace)  # the pod's grace period: SIGTERM first
        successor = ha.wait_leader(timeout=120, other_than=first)
        leads = time.monotonic()
        status = parking.wait_done(name)
        follower.join(timeout=60)
        ha.archive.append("".join(lines))  # the stopped leader's log, for log_text() and the secret scan
    assert_finished_once(parking, name, sampler, status)
    assert picked_up_by(status, successor), status.get("log")
    # it released the Lease after kopf stopped, rather than letting it expire
    assert any(f"{first} released Lease" in line for line in lines), "".join(lines[-20:])
    print(f"\nHA handover (SIGTERM of {first} in BackingUp): {successor} led after {leads - stopping:.1f} s")
    ha.start()
