"""The pre-started backup and migrate Jobs (spec.maintenance.prestartMigration): created when the app starts draining,
adopted as their step when their phase starts, given their go only on the pass after the adoption is recorded, and
replaced by ordinary Jobs when they ended before their go."""

from __future__ import annotations

import shlex
from datetime import timedelta
from typing import Any

import pytest
from test_phases import (
    BEFORE,
    DEPLOYMENT_DOWN,
    DEPLOYMENT_UP,
    MAINTENANCE,
    NAME,
    NOW,
    UID,
    _migrating_status,
    condition,
    make_spec,
    make_status,
    observe,
    run,
    written,
)

from migration_operator import gosignal, machine, reasons, reconcile, stopping
from migration_operator.machine import core, guards
from migration_operator.machine.core import (
    AdoptJob,
    CreateJob,
    GiveGo,
    ReleaseLock,
    ScaleDeployment,
    StopJob,
    TerminateSessions,
)
from migration_operator.models import LastError, Phase
from migration_operator.observations import JobObservation
from migration_operator.reasons import Step

ARMED_NAME = f"{NAME}-armed-migrate"
ARMED_BACKUP_NAME = f"{NAME}-armed-backup"
BOTH = [CreateJob(Step.ARMED_BACKUP, (("DUMP_SCHEMAS", "public"),)), CreateJob(Step.ARMED_MIGRATE)]


def prestart_spec(**overrides: Any) -> Any:
    return make_spec(maintenance={"deployment": {"name": "api-gateway"}, "prestartMigration": True}, **overrides)


def armed_status(**fields: Any) -> Any:
    jobs = {"validate": f"{NAME}-validate", "backup": ARMED_BACKUP_NAME, "armed-backup": ARMED_BACKUP_NAME,
            "armed-migrate": ARMED_NAME}
    return _migrating_status(jobs={**jobs, **fields.pop("jobs", {})}, **fields)


def test_the_armed_jobs_start_before_the_scale_down_the_app_still_serving() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, before=BEFORE.model_dump(by_alias=True))
    decision = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP))
    assert decision.phase == Phase.ENTERING_MAINTENANCE and decision.actions == BOTH
    assert decision.requeue_after is not None and decision.requeue_after < 1
    assert condition(decision, reasons.READY).reason == reasons.PRESTARTING_JOBS
    assert "the app keeps serving" in decision.message
    assert "pre-started pg_dump and flyway migrate Job(s)" in (decision.log or "")
    assert "maintenance" not in written(decision)  # nothing recorded as scaled down: the app was not touched


def test_the_app_is_scaled_down_once_both_armed_jobs_wait_for_their_go() -> None:
    jobs = {"armed-migrate": ARMED_NAME, "armed-backup": ARMED_BACKUP_NAME}
    status = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=3, jobs=jobs)
    one = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, armed_waiting=("migrate",)))
    assert one.actions == [] and "pg_dump Job(s)" in one.message and "flyway" not in one.message
    both = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, armed_waiting=("backup", "migrate")))
    assert both.actions == [ScaleDeployment(0, record_original=3)]


def test_the_head_start_is_bounded_then_the_app_is_scaled_down_anyway() -> None:
    jobs = {"armed-migrate": ARMED_NAME, "armed-backup": ARMED_BACKUP_NAME}
    late = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=31, jobs=jobs)
    decision = run(prestart_spec(), late, observe(deployment=DEPLOYMENT_UP, armed_waiting=()))
    assert decision.actions == [ScaleDeployment(0, record_original=3)]


def test_a_run_that_fails_before_touching_the_app_stops_its_armed_jobs() -> None:
    jobs = {"armed-migrate": ARMED_NAME, "armed-backup": ARMED_BACKUP_NAME}
    status = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=3, jobs=jobs)
    decision = run(prestart_spec(), status, observe())  # the Deployment is gone
    assert decision.phase == Phase.FAILED
    assert decision.actions == [StopJob(Step.ARMED_BACKUP), StopJob(Step.ARMED_MIGRATE), ReleaseLock()]


def test_the_armed_jobs_are_created_only_once() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE,
                         jobs={"armed-migrate": ARMED_NAME, "armed-backup": ARMED_BACKUP_NAME})
    again = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_DOWN, app_sessions=()))
    assert not any(isinstance(a, CreateJob) for a in again.actions)


def test_a_pass_whose_creation_failed_creates_the_armed_jobs_while_draining() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, maintenance=MAINTENANCE, before=BEFORE.model_dump(by_alias=True))
    decision = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_DOWN, app_sessions=()))
    assert decision.phase == Phase.BACKING_UP
    assert decision.actions == BOTH


def test_a_backup_before_the_drain_is_not_pre_started_the_migration_is() -> None:
    spec = prestart_spec(backup={"volume": {"claimName": "db-backups"}, "timing": "BeforeMaintenance"})
    assert core.prestarted_steps(spec) == [Step.MIGRATE]
    assert core.prestarted_steps(prestart_spec(backup={"enabled": False})) == [Step.MIGRATE]
    assert core.prestarted_steps(prestart_spec()) == [Step.BACKUP, Step.MIGRATE]
    assert core.prestarted_steps(make_spec()) == []


def test_no_armed_job_without_the_opt_in_nor_with_a_failing_drain() -> None:
    plain = run(make_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert CreateJob(Step.ARMED_MIGRATE) not in plain.actions
    missing = run(prestart_spec(), make_status(Phase.ENTERING_MAINTENANCE), observe())
    assert missing.phase == Phase.FAILED and not missing.actions[:-1]


def test_clone_backups_never_arm_and_the_crd_refuses_the_pair() -> None:
    spec = prestart_spec(backup={"method": "Clone"})
    assert not core.prestarts_migration(spec) and core.prestarted_steps(spec) == []
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
    assert core.adopted(status, Step.MIGRATE) and core.database_changed(status)
    decision = run(prestart_spec(), status, observe(jobs={"migrate": JobObservation("Running")}))
    assert decision.actions == [GiveGo(Step.MIGRATE)]


def test_an_ordinary_migrate_job_never_gets_a_go() -> None:
    status = _migrating_status(jobs={"migrate": f"{NAME}-migrate"})
    decision = run(prestart_spec(), status, observe(jobs={"migrate": JobObservation("Running")}))
    assert decision.actions == []
    backing_up = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE, jobs={"backup": f"{NAME}-backup"})
    decision = run(prestart_spec(), backing_up, observe(jobs={"backup": JobObservation("Running")}))
    assert decision.actions == []


@pytest.mark.parametrize(
    "armed",
    [
        JobObservation("Failed", failure="Error"),
        JobObservation("Running", exit_code=1),  # the container ended, the Job not marked yet
        JobObservation("Running", terminating=True),  # its pod deleted, not yet counted failed
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
    wait = core.go_wait_seconds(spec, Step.MIGRATE)
    assert job["spec"]["activeDeadlineSeconds"] == wait + spec.timeouts.migrate_seconds
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][2]
    migrate_line = next(line for line in script.splitlines() if line.startswith("run migrate "))
    args = shlex.split(migrate_line)
    assert args[-1] == "migrate"
    assert f"-initSql={gosignal.wait_sql(UID, Step.MIGRATE, wait)}" in args
    plain = machine.build_job(body, spec, Step.MIGRATE)["spec"]["template"]["spec"]["containers"][0]["command"][2]
    plain_args = shlex.split(next(line for line in plain.splitlines() if line.startswith("run migrate ")))
    assert [a for a in args if not a.startswith("-initSql=")] == plain_args  # the same safety flags
    url = next(e["value"] for e in container["env"] if e["name"] == "FLYWAY_URL")
    assert "ApplicationName=migration-operator-armed-migrate" in url


def test_the_armed_backup_pod_is_the_backup_pod_waiting_for_its_go() -> None:
    spec = prestart_spec()
    body = {"metadata": {"name": NAME, "namespace": "apps", "uid": UID}}
    armed = machine.build_job(body, spec, Step.ARMED_BACKUP, (("DUMP_SCHEMAS", "public"),))
    plain = machine.build_job(body, spec, Step.BACKUP, (("DUMP_SCHEMAS", "public"),))
    assert armed["metadata"]["name"] == ARMED_BACKUP_NAME
    wait = core.go_wait_seconds(spec, Step.BACKUP)
    assert wait < core.go_wait_seconds(spec, Step.MIGRATE)  # the migration also waits for the backup
    assert armed["spec"]["activeDeadlineSeconds"] == wait + spec.timeouts.backup_seconds
    container, ordinary = (j["spec"]["template"]["spec"]["containers"][0] for j in (armed, plain))
    assert container["command"] == ordinary["command"]  # the same script, the same dump file
    env = {e["name"]: e.get("value") for e in container["env"]}
    plain_env = {e["name"]: e.get("value") for e in ordinary["env"]}
    assert env["GO_SQL"] == gosignal.wait_sql(UID, Step.BACKUP, wait) and env["GO_WAIT_SECONDS"] == str(wait)
    assert env["PGAPPNAME"] == "migration-operator-armed-backup"
    assert {k: v for k, v in env.items() if k not in ("GO_SQL", "GO_WAIT_SECONDS", "PGAPPNAME")} == {
        k: v for k, v in plain_env.items() if k != "PGAPPNAME"
    }


def test_backing_up_adopts_the_armed_backup_then_gives_its_go_and_takes_the_snapshot_next() -> None:
    spec = prestart_spec()
    jobs = {"armed-backup": ARMED_BACKUP_NAME, "armed-migrate": ARMED_NAME}
    status = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE, before=BEFORE.model_dump(by_alias=True), jobs=jobs)
    obs = observe(jobs={"backup": JobObservation("Absent"), "armed-backup": JobObservation("Running")})
    decision = run(spec, status, obs)
    assert decision.actions == [AdoptJob(Step.BACKUP, Step.ARMED_BACKUP)] and decision.requeue_after == 0.0
    assert written(decision)["backup"]["path"].endswith(".dump")
    adopted = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE, before=BEFORE.model_dump(by_alias=True),
                          jobs={**jobs, "backup": ARMED_BACKUP_NAME})
    decision = run(spec, adopted, observe(jobs={"backup": JobObservation("Running")}))
    assert decision.actions == [GiveGo(Step.BACKUP)]
    assert decision.requeue_after is not None and 0 < decision.requeue_after < 1  # the snapshot comes next pass


def test_an_armed_backup_lost_before_its_go_is_replaced() -> None:
    jobs = {"armed-backup": ARMED_BACKUP_NAME, "armed-migrate": ARMED_NAME}
    status = make_status(Phase.BACKING_UP, maintenance=MAINTENANCE, before=BEFORE.model_dump(by_alias=True), jobs=jobs)
    obs = observe(jobs={"backup": JobObservation("Absent"), "armed-backup": JobObservation("Failed", failure="Error")})
    decision = run(prestart_spec(), status, obs)
    assert decision.actions == [TerminateSessions(Step.ARMED_BACKUP),
                                CreateJob(Step.BACKUP, (("DUMP_SCHEMAS", "public"),))]
    assert "pre-started pg_dump Job ended before its go (Error)" in (decision.log or "")


def test_the_wait_sql_names_the_runs_key_and_its_budget() -> None:
    first, second = gosignal.key(UID, Step.MIGRATE)
    assert 0 <= first < 2**31 and 0 <= second < 2**31
    assert gosignal.key("another-uid", Step.MIGRATE) != (first, second)
    assert gosignal.key(UID, Step.BACKUP) != (first, second)
    text = gosignal.wait_sql(UID, Step.MIGRATE, 321)
    assert f"classid = {first} AND objid = {second} AND objsubid = 2" in text
    assert "interval '321 seconds'" in text and "pre-started migrate Job" in text
    assert text.startswith("SET statement_timeout = 0;") and text.endswith("RESET statement_timeout")


def test_stopping_a_step_ends_its_armed_sessions_too() -> None:
    assert stopping.application_names(Step.MIGRATE) == [
        "migration-operator-migrate",
        "migration-operator-armed-migrate",
    ]
    assert stopping.application_names(Step.BACKUP) == ["migration-operator-backup", "migration-operator-armed-backup"]
    assert stopping.application_names(Step.RESTORE) == ["migration-operator-restore"]


def test_unset_means_on_except_with_a_clone() -> None:
    unset = make_spec(maintenance={"deployment": {"name": "api-gateway"}})
    assert unset.maintenance is not None and unset.maintenance.prestart_migration is None
    assert core.prestarts_migration(unset) and core.prestarted_steps(unset) == [Step.BACKUP, Step.MIGRATE]
    decision = run(unset, make_status(Phase.ENTERING_MAINTENANCE), observe(deployment=DEPLOYMENT_UP))
    assert CreateJob(Step.ARMED_MIGRATE) in decision.actions
    clone = make_spec(maintenance={"deployment": {"name": "api-gateway"}}, backup={"method": "Clone"})
    assert not core.prestarts_migration(clone) and core.prestarted_steps(clone) == []
    assert not core.prestarts_migration(make_spec())  # prestartMigration: false
    assert not core.prestarts_migration(make_spec(maintenance=None))  # no app to stop: nothing to start ahead of it


def _refused(retryable: bool = False) -> Any:
    return LastError(
        action=reasons.ACTION_CREATE_ARMED_JOB,
        message='HTTP 403: jobs.batch "parking-db-v6-armed-backup" is forbidden: exceeded quota: one-job',
        at=core.iso(NOW),
        retryable=retryable,
    )


def test_a_refused_pre_start_is_recorded_and_the_run_goes_on_without_it() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, before=BEFORE.model_dump(by_alias=True))
    decision = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, last_error=_refused()))
    assert decision.phase == Phase.ENTERING_MAINTENANCE  # not Failed: an optimisation was refused, not the run
    assert decision.actions == [ScaleDeployment(0, record_original=3)]  # no head start: nothing to wait for
    assert "exceeded quota" in written(decision)["maintenance"]["prestartRefused"]
    assert decision.warning and "could not pre-start" in (decision.log or "")
    # the next pass (its error cleared by the scale-down's success) finds the record and creates no pre-started Job
    after = make_status(Phase.ENTERING_MAINTENANCE, maintenance={**MAINTENANCE, "prestartRefused": "quota"})
    again = run(prestart_spec(), after, observe(deployment=DEPLOYMENT_DOWN, app_sessions=()))
    assert again.phase == Phase.BACKING_UP and not any(isinstance(a, CreateJob) for a in again.actions)
    assert written(again)["maintenance"]["prestartRefused"] == "quota"  # the drained record keeps it


def test_after_a_refusal_the_head_start_waits_only_for_the_pre_started_job_created_before_it() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE, jobs={"armed-backup": ARMED_BACKUP_NAME})
    waiting = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, last_error=_refused()))
    assert waiting.actions == [] and condition(waiting, reasons.RECONCILING).reason == reasons.PRESTARTING_JOBS
    ready = observe(deployment=DEPLOYMENT_UP, last_error=_refused(), armed_waiting=("backup",))
    assert run(prestart_spec(), status, ready).actions == [ScaleDeployment(0, record_original=3)]


def test_a_retryable_error_creating_a_pre_started_job_is_retried_not_a_refusal() -> None:
    status = make_status(Phase.ENTERING_MAINTENANCE)
    decision = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, last_error=_refused(retryable=True)))
    assert decision.actions == BOTH and decision.phase == Phase.ENTERING_MAINTENANCE
    assert "maintenance" not in written(decision)


def test_creating_a_pre_started_job_has_an_action_name_of_its_own() -> None:
    assert reconcile._action_name(CreateJob(Step.ARMED_BACKUP)) == reasons.ACTION_CREATE_ARMED_JOB
    assert reconcile._action_name(CreateJob(Step.BACKUP)) == reasons.ACTION_CREATE_JOB


def _pulling(seconds: float, reason: str = "ImagePullBackOff") -> JobObservation:
    return JobObservation("Running", waiting_reason=reason, waiting_message="back-off pulling image",
                          waiting_container="backup", waiting_since=NOW - timedelta(seconds=seconds))


def test_an_image_that_cannot_be_pulled_holds_the_scale_down_then_fails_the_run_with_the_app_never_touched() -> None:
    armed = {"armed-backup": ARMED_BACKUP_NAME, "armed-migrate": ARMED_NAME}
    status = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=45, jobs=armed)
    # past the 30 s head start, the backup's pod still cannot pull its image: the app keeps serving
    held = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, armed_waiting=("migrate",),
                                                jobs={"armed-backup": _pulling(40)}))
    assert held.phase == Phase.ENTERING_MAINTENANCE and held.actions == []
    assert "armed-backup: ImagePullBackOff" in held.message
    # at the stuck-Job grace the run fails, before any scale-down: the pre-started Jobs are stopped
    stuck = run(prestart_spec(), status, observe(deployment=DEPLOYMENT_UP, armed_waiting=("migrate",),
                                                 jobs={"armed-backup": _pulling(guards.POD_START_GRACE + 1)}))
    assert stuck.phase == Phase.FAILED and condition(stuck, reasons.READY).reason == reasons.JOB_CANNOT_START
    assert not any(isinstance(action, ScaleDeployment) for action in stuck.actions)
    assert StopJob(Step.ARMED_BACKUP) in stuck.actions and StopJob(Step.ARMED_MIGRATE) in stuck.actions


def test_an_unschedulable_pre_started_pod_does_not_hold_the_scale_down() -> None:
    # the app's pods may be what keeps it off the node: past the head start the app is scaled down as usual
    armed = {"armed-backup": ARMED_BACKUP_NAME, "armed-migrate": ARMED_NAME}
    status = make_status(Phase.ENTERING_MAINTENANCE, started_seconds_ago=45, jobs=armed)
    obs = observe(deployment=DEPLOYMENT_UP, armed_waiting=("migrate",),
                  jobs={"armed-backup": _pulling(40, "Unschedulable")})
    assert run(prestart_spec(), status, obs).actions == [ScaleDeployment(0, record_original=3)]
