"""The pre-started migrate Job (spec.maintenance.prestartMigration): created when the app starts draining, adopted as
the migrate step when Migrating starts, given its go only on the pass after its adoption is recorded, and replaced by
an ordinary migrate Job when it ended before its go."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from test_phases import (
    BEFORE,
    DEPLOYMENT_DOWN,
    DEPLOYMENT_UP,
    MAINTENANCE,
    NAME,
    UID,
    _migrating_status,
    make_spec,
    make_status,
    observe,
    run,
    written,
)

from migration_operator import gosignal, machine, stopping
from migration_operator.machine import core
from migration_operator.machine.core import (
    AdoptJob,
    CreateJob,
    GiveGo,
    ScaleDeployment,
    StopJob,
    TerminateSessions,
)
from migration_operator.models import Phase, parse_spec
from migration_operator.observations import JobObservation
from migration_operator.reasons import Step

ARMED_NAME = f"{NAME}-armed-migrate"


def prestart_spec(**overrides: Any) -> Any:
    return make_spec(maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": True}, **overrides)


def armed_status(**fields: Any) -> Any:
    jobs = {"validate": f"{NAME}-validate", "backup": f"{NAME}-backup", "armed-migrate": ARMED_NAME}
    return _migrating_status(jobs={**jobs, **fields.pop("jobs", {})}, **fields)


def test_the_armed_job_is_created_with_the_scale_down_and_only_once() -> None:
    decision = run(prestart_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert decision.actions == [ScaleDeployment(0, record_original=3), CreateJob(Step.ARMED_MIGRATE)]
    assert "pre-started flyway migrate Job" in (decision.log or "")
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE, jobs={"armed-migrate": ARMED_NAME})
    again = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_DOWN, app_sessions=()))
    assert not any(isinstance(a, CreateJob) for a in again.actions)


def test_a_pass_whose_creation_failed_creates_the_armed_job_while_draining() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE)
    decision = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_DOWN, app_sessions=()))
    assert decision.phase == Phase.BACKING_UP
    assert decision.actions == [CreateJob(Step.ARMED_MIGRATE)]


def test_no_armed_job_without_the_opt_in_nor_with_a_failing_drain() -> None:
    plain = run(make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert CreateJob(Step.ARMED_MIGRATE) not in plain.actions
    missing = run(prestart_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe())
    assert missing.phase == Phase.FAILED and not missing.actions[:-1]


def test_clone_backups_never_arm_and_the_crd_refuses_the_pair() -> None:
    spec = prestart_spec(backup={"method": "Clone"})
    assert not core.prestarts_migration(spec)
    decision = run(spec, make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert CreateJob(Step.ARMED_MIGRATE) not in decision.actions
    from migration_operator import crd

    rules = [r["rule"] for r in crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"
    ]]
    assert any("prestartMigration" in rule and "Clone" in rule for rule in rules)


def test_migrating_adopts_a_running_armed_job_and_gives_no_go_in_that_pass() -> None:
    obs = observe(jobs={"migrate": JobObservation("Absent"), "armed-migrate": JobObservation("Running")})
    decision = run(prestart_spec(), armed_status(), obs)
    assert decision.phase == Phase.MIGRATING
    assert decision.actions == [AdoptJob(Step.MIGRATE, Step.ARMED_MIGRATE)]
    assert decision.requeue_after == 0.0
    assert "giving it the go" in (decision.log or "")


def test_the_adopted_job_gets_the_go_on_every_pass_while_it_runs() -> None:
    status = armed_status(jobs={"migrate": ARMED_NAME})
    assert core.migrate_adopted(status) and core.database_changed(status)
    decision = run(prestart_spec(), status, observe(jobs={"migrate": JobObservation("Running")}))
    assert decision.actions == [GiveGo()]


def test_an_ordinary_migrate_job_never_gets_a_go() -> None:
    status = _migrating_status(jobs={"migrate": f"{NAME}-migrate"})
    decision = run(prestart_spec(), status, observe(jobs={"migrate": JobObservation("Running")}))
    assert decision.actions == []


@pytest.mark.parametrize(
    "armed",
    [
        JobObservation("Failed", failure="Error"),
        JobObservation("Running", exit_code=1),  # the container ended, the Job not marked yet
        JobObservation("Absent"),  # deleted
    ],
)
def test_an_armed_job_that_ended_before_its_go_is_replaced_by_an_ordinary_one(armed: JobObservation) -> None:
    obs = observe(jobs={"migrate": JobObservation("Absent"), "armed-migrate": armed})
    decision = run(prestart_spec(), armed_status(), obs)
    assert decision.actions == [TerminateSessions(Step.ARMED_MIGRATE), CreateJob(Step.MIGRATE)]
    assert "ended before its go" in (decision.log or "")
    assert not decision.warning


def test_a_failure_after_adoption_rolls_back_as_a_changed_database() -> None:
    status = armed_status(jobs={"migrate": ARMED_NAME})
    decision = run(prestart_spec(), status, observe(jobs={"migrate": JobObservation("Failed", failure="Error")}))
    assert decision.phase == Phase.ROLLING_BACK
    assert written(decision)["rollback"]["databaseChanged"] is True


def test_a_rollback_before_migrating_stops_the_waiting_armed_job() -> None:
    status = make_status(
        Phase.ROLLING_BACK,
        maintenance=MAINTENANCE,
        before=BEFORE.model_dump(by_alias=True),
        jobs={"armed-migrate": ARMED_NAME},
        rollback={"strategy": "Restore", "reason": "BackupFailed", "databaseChanged": False},
    )
    obs = observe(jobs={"armed-migrate": JobObservation("Running")}, deployment=DEPLOYMENT_DOWN)
    decision = run(prestart_spec(), status, obs)
    assert StopJob(Step.ARMED_MIGRATE) in decision.actions


def test_the_armed_pod_runs_flyway_migrate_waiting_for_the_go_within_its_deadline() -> None:
    spec = prestart_spec()
    body = {"metadata": {"name": NAME, "namespace": "apps", "uid": UID}}
    job = machine.build_job(body, spec, Step.ARMED_MIGRATE)
    assert job["metadata"]["name"] == ARMED_NAME
    wait = core.armed_wait_seconds(spec)
    assert job["spec"]["activeDeadlineSeconds"] == wait + spec.timeouts.migrate_seconds
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][2]
    migrate_line = next(line for line in script.splitlines() if line.startswith("run migrate "))
    args = shlex.split(migrate_line)
    assert args[-1] == "migrate"
    assert f"-initSql={gosignal.wait_sql(UID, wait)}" in args
    plain = machine.build_job(body, spec, Step.MIGRATE)["spec"]["template"]["spec"]["containers"][0]["command"][2]
    plain_args = shlex.split(next(line for line in plain.splitlines() if line.startswith("run migrate ")))
    assert [a for a in args if not a.startswith("-initSql=")] == plain_args  # the same safety flags
    url = next(e["value"] for e in container["env"] if e["name"] == "FLYWAY_URL")
    assert "ApplicationName=migration-operator-armed-migrate" in url


def test_the_wait_sql_names_the_runs_key_and_its_budget() -> None:
    first, second = gosignal.key(UID)
    assert 0 <= first < 2**31 and 0 <= second < 2**31
    assert gosignal.key("another-uid") != (first, second)
    text = gosignal.wait_sql(UID, 321)
    assert f"classid = {first} AND objid = {second} AND objsubid = 2" in text
    assert "interval '321 seconds'" in text
    assert text.startswith("SET statement_timeout = 0;") and text.endswith("RESET statement_timeout")


def test_stopping_the_migrate_step_ends_the_armed_sessions_too() -> None:
    assert stopping.application_names(Step.MIGRATE) == [
        "migration-operator-migrate",
        "migration-operator-armed-migrate",
    ]
    assert stopping.application_names(Step.BACKUP) == ["migration-operator-backup"]


def test_the_opt_in_defaults_off() -> None:
    assert parse_spec(make_spec().model_dump(by_alias=True)).maintenance.prestart_migration is False  # type: ignore[union-attr]
