"""The operator SIGKILLed in the middle of a phase and started again: the run reaches the right end state, with
exactly one Job per step and the original replica count intact."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ParkingApp
from tests.support import postgres
from tests.support.operator import OperatorProcess
from tests.support.sampler import Sampler


@pytest.mark.parametrize("phase", ["BackingUp", "Migrating", "ExitingMaintenance"])
def test_operator_killed_during_a_phase_resumes_to_success(
    parking: ParkingApp, operator: OperatorProcess | None, phase: str
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
    parking: ParkingApp, operator: OperatorProcess | None
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
    assert postgres.fingerprint(parking.database) == before
    parking.wait_gateway_available(3)
    uids = sampler.job_uids()
    assert all(len(u) == 1 for u in uids.values()), uids
    restore = [j for j in parking.jobs("killed-rollback") if j.metadata.labels["dbops.io/step"] == "restore"]
    assert len(restore) == 1
