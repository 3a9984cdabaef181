"""The operator SIGKILLed in the middle of a phase and started again: the run reaches the right end state, with
exactly one Job per step and the original replica count intact."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.operator import Operator
from tests.support.sampler import Sampler
from tests.support.wait import wait_for


def resumed_in(status: dict[str, object], phase: str) -> bool:
    """The run's own log says an operator picked it up in flight in `phase` (the fault is visible to the user)."""
    log = status.get("log") or []
    assert isinstance(log, list)
    return any(e.get("phase") == phase and "picked this run up" in e.get("message", "") for e in log)


def test_operator_killed_with_the_app_at_zero_remembers_its_replicas(
    parking: ParkingApp, operator: Operator | None
) -> None:
    """The most dangerous moment: the app is scaled to 0 and the drain waits on a session that will not leave. The
    operator is killed there; the new one must know the app ran 3 replicas and finish the run."""
    if operator is None:
        pytest.skip("the operator runs outside this test's control (MO_E2E_OPERATOR=external)")
    parking.set_migrations("good")
    with Sampler(parking.api, parking.namespace, "killed-draining") as sampler:
        with postgres.connect(parking.database, application_name="nightly-report"):
            parking.create_migration("killed-draining", parking.spec())
            parking.wait_phase("killed-draining", "EnteringMaintenance", timeout=240)
            wait_for(lambda: parking.deployment().spec.replicas == 0, timeout=60, what="api-gateway scaled to 0")
            operator.kill()
            operator.start()
            # still draining after the restart, the blocking session named; only the new operator can finish the
            # run once the session leaves
            wait_for(lambda: "nightly-report" in str(parking.status("killed-draining").get("message")),
                     timeout=60, what="the drain reported as waiting on the session",
                     describe=lambda: parking.describe("killed-draining"))
            assert parking.status("killed-draining")["phase"] == "EnteringMaintenance"
            assert parking.deployment().spec.replicas == 0
        status = parking.wait_done("killed-draining")
    assert status["phase"] == "Succeeded", parking.describe("killed-draining")
    assert status["maintenance"]["originalReplicas"] == 3
    assert resumed_in(status, "EnteringMaintenance"), status.get("log")
    parking.wait_gateway_available(3)
    assert postgres.history(parking.database)[-1][0] == "6"
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids


@pytest.mark.parametrize("phase", ["BackingUp", "Migrating", "ExitingMaintenance"])
def test_operator_killed_during_a_phase_resumes_to_success(
    parking: ParkingApp, operator: Operator | None, phase: str
) -> None:
    if operator is None:
        pytest.skip("the operator runs outside this test's control (MO_E2E_OPERATOR=external)")
    parking.set_migrations("good")
    name = f"killed-{phase.lower()}"
    with Sampler(parking.api, parking.namespace, name) as sampler:
        parking.create_migration(name, parking.spec())
        parking.wait_phase(name, phase, timeout=240)
        operator.kill()
        operator.start()
        status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    assert status["maintenance"]["originalReplicas"] == 3
    # the kill may land just as the phase ends: the new operator then finds the run one phase later
    later = ("Migrating", "Verifying", "ExitingMaintenance")
    assert any(resumed_in(status, p) for p in (phase, *later)), status.get("log")
    parking.wait_gateway_available(3)
    assert postgres.history(parking.database)[-1][0] == "6"
    # one Job per step, never deleted and recreated across the restart
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids
    steps = [j.metadata.labels["dbops.io/step"] for j in parking.jobs(name)]
    assert len(steps) == len(set(steps)), steps
    for job in parking.jobs(name):
        pods = parking.core.list_namespaced_pod(parking.namespace, label_selector=f"job-name={job.metadata.name}")
        assert len(pods.items) == 1, f"{job.metadata.name} ran {len(pods.items)} pods"


def test_operator_killed_while_rolling_back_still_restores_once(
    parking: ParkingApp, operator: Operator | None
) -> None:
    if operator is None:
        pytest.skip("the operator runs outside this test's control (MO_E2E_OPERATOR=external)")
    parking.set_migrations("good", "fail-in-tx")
    before = postgres.fingerprint(parking.database)
    with Sampler(parking.api, parking.namespace, "killed-rollback") as sampler:
        parking.create_migration("killed-rollback", parking.spec(rollback={"strategy": "Restore"}))
        parking.wait_phase("killed-rollback", "RollingBack", timeout=240)
        operator.kill()
        operator.start()
        status = parking.wait_done("killed-rollback")
    assert status["phase"] == "RolledBack", parking.describe("killed-rollback")
    assert resumed_in(status, "RollingBack"), status.get("log")
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids
    restore = [j for j in parking.jobs("killed-rollback") if j.metadata.labels["dbops.io/step"] == "restore"]
    assert len(restore) == 1
