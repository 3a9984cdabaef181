"""What `jobs.observe` reports of a Job: its whole output (the pod log, the termination message only as the
fallback) once it ended, and why its pod cannot start while it runs. The objects are built with the official client's
models (tests only) and served as the API's JSON (`to_json`), which is what the operator reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
import specs
import test_flyway
from kubernetes import client

from migration_operator import flyway, jobs, kube, machine, tail
from migration_operator.models import parse_spec
from migration_operator.observations import JobObservation

T0 = datetime(2026, 11, 25, 11, 0, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(T0.timestamp() + seconds, UTC)


def validate_output(total: int = 40, applied: int = 14) -> str:
    """What the validate Job prints (flyway.job_script's `emit validate info`): here about 18 KiB."""
    validate = (test_flyway.DATA / "validate-ok.json").read_text()
    return f"==> validate <==\n{validate}\n==> info <==\n{test_flyway.info_json(total, applied)}\n"


def termination_message(output: str) -> str:
    """What the kubelet keeps of it: the script's `head -c 4096`."""
    return output.encode()[:4096].decode(errors="replace")


# ------------------------------------------------------------------------------------------------ the choice
def test_the_log_is_chosen_whole_over_the_4_kib_termination_message() -> None:
    output = validate_output()
    message = termination_message(output)
    chosen, source, truncated = jobs.choose_output(message, kube.PodLog(output, truncated=False))
    assert (chosen, source, truncated) == (output, "log", False)
    assert len(flyway.parse_validate_output(chosen).pending or []) == 26
    assert flyway.parse_validate_output(message).pending is None  # what the termination message alone gave


@pytest.mark.parametrize(
    "log",
    [
        None,  # unavailable: pod gone, container never started, no RBAC for pods/log
        kube.PodLog("", truncated=False),  # empty
        kube.PodLog("\n", truncated=False),
        kube.PodLog("==> info <==\n{ }\n", truncated=False),  # not this output (rotated, another run)
    ],
)
def test_the_termination_message_is_the_fallback(log: kube.PodLog | None) -> None:
    message = termination_message(validate_output())
    assert jobs.choose_output(message, log) == (message, "terminationMessage", True)
    short = "verified=true\nsizeBytes=10\ntocEntries=3\npath=x.dump\n"
    assert jobs.choose_output(short, log) == (short, "terminationMessage", False)


def test_a_log_without_termination_message_and_a_cut_log_are_taken() -> None:
    assert jobs.choose_output(None, kube.PodLog("restored=true\n", truncated=False)) == (
        "restored=true\n",
        "log",
        False,
    )
    assert jobs.choose_output("", kube.PodLog("x=1\n", truncated=True)) == ("x=1\n", "log", True)
    assert jobs.choose_output(None, None) == (None, None, False)
    assert jobs.choose_output(None, kube.PodLog("", truncated=False)) == (None, None, False)


def test_a_message_taken_from_the_log_tail_by_the_kubelet_is_in_the_log() -> None:
    """FallbackToLogsOnError: the script died before writing its message, the kubelet took the log's tail."""
    log = "".join(f"line {n}\n" for n in range(200)) + "sh: 1: flyway: not found\n"
    tail = log[-2048:]
    assert jobs.choose_output(tail, kube.PodLog(log, truncated=False)) == (log, "log", False)


# ------------------------------------------------------------------------------------------- a fake API server
def to_json(obj: Any) -> Any:
    """A model object as the API's camelCase JSON document."""
    return client.ApiClient().sanitize_for_serialization(obj)


class FakeApi:
    """Stands in for `kube.request` (the Job, its pods) and `kube.read_bytes` (the log, cut at limitBytes as the API
    server does)."""

    def __init__(self, job: client.V1Job | None, pods: list[client.V1Pod], log: bytes | kube.ApiError | None) -> None:
        self.job, self.pods, self.log = job, pods, log
        self.log_calls: list[dict[str, Any]] = []

    async def request(
        self, method: str, resource: str, namespace: str, name: str | None = None, *,
        params: dict[str, str] | None = None, **_: Any
    ) -> dict[str, Any]:
        assert method == "GET" and namespace == "ns", (method, namespace)
        if resource == "jobs":
            if self.job is None:
                raise kube.ApiError(404, "Not Found")
            return dict(to_json(self.job))
        assert resource == "pods" and params is not None, resource
        label_selector = params["labelSelector"]
        assert label_selector.endswith("=uid-1"), label_selector
        return {"items": to_json(self.pods) if label_selector.startswith("batch.") else []}

    async def read_bytes(
        self, resource: str, namespace: str, name: str, *, subresource: str, params: dict[str, str], limit: int
    ) -> bytes:
        assert (resource, subresource) == ("pods", "log")
        self.log_calls.append({"pod": name, **params, "limit": limit})
        if isinstance(self.log, kube.ApiError):
            raise self.log
        assert self.log is not None
        return self.log[: int(params["limitBytes"])][:limit]  # the server stops at limitBytes


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(
        job: client.V1Job | None, pods: list[client.V1Pod], log: bytes | kube.ApiError | None = None
    ) -> FakeApi:
        fake = FakeApi(job, pods, log)
        monkeypatch.setattr(kube, "request", fake.request)
        monkeypatch.setattr(kube, "read_bytes", fake.read_bytes)
        return fake

    return install


def job(succeeded: int = 0, failed: str | None = None, step: str = "validate") -> client.V1Job:
    conditions = [client.V1JobCondition(type="Failed", status="True", reason=failed, message="x")] if failed else []
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=f"run-{step}", namespace="ns", uid="uid-1"),
        spec=client.V1JobSpec(
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    init_containers=[client.V1Container(name="copy-migrations")],
                    containers=[client.V1Container(name=step)],
                )
            )
        ),
        status=client.V1JobStatus(succeeded=succeeded or None, conditions=conditions or None),
    )


def status(name: str, **state: Any) -> client.V1ContainerStatus:
    return client.V1ContainerStatus(
        name=name, image="img", image_id="", ready=False, restart_count=0, state=client.V1ContainerState(**state)
    )


def terminated(exit_code: int = 0, message: str | None = None, finished: int = 60) -> dict[str, Any]:
    return {
        "terminated": client.V1ContainerStateTerminated(
            exit_code=exit_code,
            message=message,
            reason="Completed" if exit_code == 0 else "Error",
            finished_at=at(finished),
        )
    }


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    return {"waiting": client.V1ContainerStateWaiting(reason=reason, message=message)}


def pod(
    phase: str,
    inits: list[client.V1ContainerStatus],
    containers: list[client.V1ContainerStatus],
    conditions: list[client.V1PodCondition] | None = None,
    name: str = "run-validate-abcde",
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, namespace="ns", creation_timestamp=T0),
        status=client.V1PodStatus(
            phase=phase,
            start_time=at(2),
            init_container_statuses=inits,
            container_statuses=containers,
            conditions=conditions,
        ),
    )


def ended_pod(message: str | None, exit_code: int = 0) -> client.V1Pod:
    return pod(
        "Succeeded" if exit_code == 0 else "Failed",
        [status("copy-migrations", **terminated(finished=5))],
        [status("validate", **terminated(exit_code, message))],
    )


# ------------------------------------------------------------------------------------------ the ended Job
async def test_observe_reads_the_whole_output_from_the_pod_log(api: Any) -> None:
    output = validate_output()
    fake = api(job(succeeded=1), [ended_pod(termination_message(output))], output.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert observed == JobObservation(
        "Succeeded", output=output, exit_code=0, output_source="log", output_truncated=False
    )
    assert fake.log_calls == [
        {
            "pod": "run-validate-abcde",
            "container": "validate",
            "limitBytes": str(jobs.LOG_LIMIT_BYTES + 1),
            "limit": jobs.LOG_LIMIT_BYTES + 1,
        }
    ]
    assert [p.version for p in flyway.parse_validate_output(observed.output).pending or []][-1] == "1.40"


async def test_a_log_longer_than_the_bound_is_cut_and_says_so(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "LOG_LIMIT_BYTES", 10_000)
    output = validate_output()
    api(job(succeeded=1), [ended_pod(termination_message(output))], output.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert observed.output == output[:10_000] and observed.output_truncated and observed.output_source == "log"


@pytest.mark.parametrize("status_code", [400, 403, 404])
async def test_without_a_log_the_termination_message_is_used(api: Any, status_code: int) -> None:
    message = termination_message(validate_output())
    api(job(succeeded=1), [ended_pod(message)], kube.ApiError(status_code, ""))
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.output, observed.output_source, observed.output_truncated) == (
        message,
        "terminationMessage",
        True,
    )


async def test_a_transient_log_error_is_raised_only_when_the_message_is_cut(api: Any) -> None:
    """A 5xx may pass: retrying beats deciding on a cut output. A whole termination message is as good."""
    api(job(succeeded=1), [ended_pod(termination_message(validate_output()))], kube.ApiError(502, ""))
    with pytest.raises(kube.ApiError):
        await jobs.observe("ns", "run-validate")
    short = "==> migrate <==\n" + (test_flyway.DATA / "migrate-ok.json").read_text()
    api(job(succeeded=1, step="validate"), [ended_pod(short)], kube.ApiError(500, ""))
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.output, observed.output_source) == (short, "terminationMessage")


async def test_a_failed_init_container_is_the_failure(api: Any) -> None:
    failed = pod(
        "Failed",
        [status("copy-migrations", **terminated(1, "cp: can't stat '/flyway/sqll/.': No such file or directory\n"))],
        [status("validate", **waiting("PodInitializing"))],
    )
    fake = api(job(failed="BackoffLimitExceeded"), [failed])
    observed = await jobs.observe("ns", "run-validate")
    assert observed.state == "Failed" and observed.output is None and not fake.log_calls
    assert observed.failure == (
        "BackoffLimitExceeded: x: init container copy-migrations: exit code 1: "
        "cp: can't stat '/flyway/sqll/.': No such file or directory"
    )


async def test_absent_job(api: Any) -> None:
    api(None, [])
    assert await jobs.observe("ns", "run-validate") == JobObservation()


# ------------------------------------------------------------------------------------------ waiting reasons
@pytest.mark.parametrize(
    ("inits", "containers", "expected"),
    [
        # the migrations image cannot be pulled: the init container waits
        (
            [status("copy-migrations", **waiting("ErrImagePull", 'image "reg/app-migrations:7" not found'))],
            [status("validate", **waiting("PodInitializing"))],
            ("ErrImagePull", 'image "reg/app-migrations:7" not found', "copy-migrations", at(2)),
        ),
        (
            [status("copy-migrations", **waiting("ImagePullBackOff", "Back-off pulling image"))],
            [status("validate", **waiting("PodInitializing"))],
            ("ImagePullBackOff", "Back-off pulling image", "copy-migrations", at(2)),
        ),
        # a key missing from the credentials Secret, once the init container is done: since it ended
        (
            [status("copy-migrations", **terminated(finished=9))],
            [status("validate", **waiting("CreateContainerConfigError", "couldn't find key pass in Secret ns/db"))],
            ("CreateContainerConfigError", "couldn't find key pass in Secret ns/db", "validate", at(9)),
        ),
        (
            [],
            [status("validate", **waiting("InvalidImageName", 'Failed to apply default image tag "Flyway:x"'))],
            ("InvalidImageName", 'Failed to apply default image tag "Flyway:x"', "validate", at(2)),
        ),
        # on its normal way: nothing to report
        (
            [status("copy-migrations", **waiting("ContainerCreating"))],
            [status("validate", **waiting("PodInitializing"))],
            None,
        ),
        ([], [status("validate", running=client.V1ContainerStateRunning(started_at=at(3)))], None),
        ([], [], None),
    ],
)
async def test_a_running_job_reports_why_its_pod_cannot_start(
    api: Any, inits: list[Any], containers: list[Any], expected: tuple[Any, ...] | None
) -> None:
    api(job(), [pod("Pending", inits, containers)])
    observed = await jobs.observe("ns", "run-validate")
    assert observed.state == "Running" and observed.output is None
    found = (observed.waiting_reason, observed.waiting_message, observed.waiting_container, observed.waiting_since)
    assert found == (expected or (None, None, None, None))


def test_an_unschedulable_pod_is_reported_from_its_condition() -> None:
    unscheduled = pod(
        "Pending",
        [],
        [],
        conditions=[
            client.V1PodCondition(
                type="PodScheduled",
                status="False",
                reason="Unschedulable",
                message="0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
                last_transition_time=at(1),
            )
        ],
    )
    unscheduled.status.start_time = None
    assert jobs.pod_waiting(to_json(unscheduled)) == jobs.Waiting(
        "Unschedulable", "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.", None, at(1)
    )


def test_finished_and_restarted_pods() -> None:
    """A finished pod says nothing; a pod restarted by the kubelet waits since its last run ended."""
    done = pod("Failed", [], [status("validate", waiting=client.V1ContainerStateWaiting(reason="ErrImagePull"))])
    assert jobs.pod_waiting(to_json(done)) is None
    crashing = status("validate", **waiting("CrashLoopBackOff", "back-off 10s restarting failed container"))
    crashing.last_state = client.V1ContainerState(**terminated(1, finished=30))
    assert jobs.pod_waiting(to_json(pod("Running", [], [crashing]))) == jobs.Waiting(
        "CrashLoopBackOff", "back-off 10s restarting failed container", "validate", at(30)
    )


async def test_no_log_read_when_only_the_state_matters(api: Any) -> None:
    message = termination_message(validate_output())
    fake = api(job(succeeded=1), [ended_pod(message)], validate_output().encode())
    observed = await jobs.observe("ns", "run-validate", read_log=False)
    assert (observed.state, observed.output, observed.output_source) == ("Succeeded", message, "terminationMessage")
    assert not fake.log_calls


# ------------------------------------------------------------------- a pod that ended before the Job's status
# The Job controller reports a finished pod at its next batched sync, up to a second later: the run moves on the
# pod's end when the pod alone decides the outcome, and waits for the Job's status otherwise.
def our_job(
    backoff_limit: int = 0,
    deadline: int = 600,
    started: datetime | Literal["now"] | None = "now",
    deleting: bool = False,
    **status: Any,
) -> client.V1Job:
    """A Job as `jobs.build_job` makes it (one pod, backoffLimit 0, an active deadline), its status not updated yet
    unless `status` says otherwise."""
    found = job(**status)
    found.spec.backoff_limit, found.spec.completions, found.spec.parallelism = backoff_limit, 1, 1
    found.spec.active_deadline_seconds = deadline
    found.status.start_time = datetime.now(UTC) if started == "now" else started
    found.metadata.deletion_timestamp = datetime.now(UTC) if deleting else None
    found.spec.template.spec.restart_policy = "Never"
    return found


def test_the_shortcut_applies_to_the_jobs_the_operator_builds() -> None:
    """`jobs.build_job`'s Job, read back as the API returns it: the pod alone decides its outcome."""
    body = {"metadata": {"name": "run", "namespace": "ns", "uid": "uid-1"}}
    manifest = machine.build_job(body, parse_spec(specs.parking()), "migrate")
    built: client.V1Job = client.ApiClient()._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    built.status = client.V1JobStatus(start_time=datetime.now(UTC))
    done = pod("Succeeded", [], [status("migrate", **terminated(0))])
    assert jobs.ended_pod_state(to_json(built), [to_json(done)], datetime.now(UTC)) == "Succeeded"
    failed = pod("Failed", [], [status("migrate", **terminated(1))])
    assert jobs.ended_pod_state(to_json(built), [to_json(failed)], datetime.now(UTC)) == "Failed"


def test_a_container_that_never_started_is_not_the_steps_failure() -> None:
    """A kubelet restarted while the runtime started the container (StartError, exit code 128): nothing ran, the Job
    controller gives the step another pod (`jobs.POD_FAILURE_POLICY`); any other failure still ends the step at once."""
    body = {"metadata": {"name": "run", "namespace": "ns", "uid": "uid-1"}}
    manifest = machine.build_job(body, parse_spec(specs.parking()), "migrate")
    built: client.V1Job = client.ApiClient()._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    built.status = client.V1JobStatus(start_time=datetime.now(UTC))
    copied = [status("copy-migrations", **terminated(finished=5))]
    start_error = 'failed to start containerd task "526f1d1d": context canceled: unknown'

    def state(the_pod: client.V1Pod) -> str | None:
        return jobs.ended_pod_state(to_json(built), [to_json(the_pod)], datetime.now(UTC))

    assert state(pod("Failed", copied, [status("migrate", **terminated(128, start_error))])) is None
    assert state(pod("Running", copied, [status("migrate", **terminated(128, start_error))])) is None
    # refused by the kubelet before anything ran (no container ended): another pod too
    assert state(pod("Failed", [], [status("migrate", **waiting("ContainerCreating"))])) is None
    # ran and failed, in the main or an init container: the step failed
    assert state(pod("Running", copied, [status("migrate", **terminated(1))])) == "Failed"
    assert state(pod("Failed", [status("copy-migrations", **terminated(2))], [status("migrate", **waiting(
        "PodInitializing"))])) == "Failed"
    # disrupted (evicted, preempted, its node gone): it may have run, whatever its exit code said
    disrupted = client.V1PodCondition(type="DisruptionTarget", status="True")
    assert state(pod("Failed", copied, [status("migrate", **terminated(128))], [disrupted])) == "Failed"
    # a rule naming a container reads that container's exit code only
    only_init = {"backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onExitCodes": {"containerName": "copy-migrations", "operator": "In", "values": [7]}}]}}
    assert jobs.fails_the_job(only_init, [("copy-migrations", 7), ("migrate", 0)], []) is False
    assert jobs.fails_the_job(only_init, [("copy-migrations", 0), ("migrate", 7)], []) is True
    # the Job's status: a failed pod counted against backoffLimit is not yet the Job's failure
    assert jobs.job_state({"spec": manifest["spec"], "status": {"failed": 1}})[0] == "Running"
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    assert jobs.job_state({"spec": manifest["spec"], "status": {"failed": 3, "conditions": [failed]}})[0] == "Failed"


async def test_a_replaced_pod_that_ran_nothing_is_observed_with_why(api: Any) -> None:
    body = {"metadata": {"name": "run", "namespace": "ns", "uid": "uid-1"}}
    manifest = machine.build_job(body, parse_spec(specs.parking()), "validate")
    built: client.V1Job = client.ApiClient()._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    built.status = client.V1JobStatus(start_time=datetime.now(UTC), failed=1)
    built.metadata.uid = "uid-1"
    never = client.V1ContainerStateTerminated(
        exit_code=128, reason="StartError", finished_at=at(4),
        message='failed to start containerd task "526f1d1d": context canceled: unknown',
    )
    first = pod("Failed", [status("copy-migrations", **terminated(finished=2))], [status("validate", terminated=never)])
    second = running_pod()
    second.metadata.name, second.metadata.creation_timestamp = "run-validate-fghij", at(15)
    api(built, [first, second])
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.state, observed.replaced) == ("Running", 1)
    assert observed.replaced_why == 'StartError: failed to start containerd task "526f1d1d": context canceled: unknown'


async def test_a_pod_that_succeeded_ends_the_job_before_its_status_does(api: Any) -> None:
    output = validate_output()
    fake = api(our_job(), [ended_pod(termination_message(output))], output.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert observed == JobObservation(
        "Succeeded", output=output, exit_code=0, output_source="log", output_truncated=False
    )
    assert fake.log_calls and fake.log_calls[0]["pod"] == "run-validate-abcde"


async def test_a_pod_that_failed_fails_the_job_before_its_status_does(api: Any) -> None:
    message = '==> migrate <==\n{"error": {"message": "relation already exists"}}\n'
    api(our_job(), [ended_pod(message, exit_code=1)], message.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.state, observed.exit_code, observed.output) == ("Failed", 1, message)
    assert observed.failure == "pod run-validate-abcde failed: exit code 1"


async def test_a_failed_init_container_fails_the_job_from_its_pod(api: Any) -> None:
    failed = pod(
        "Failed",
        [status("copy-migrations", **terminated(1, "cp: can't stat '/flyway/sqll/.'\n"))],
        [status("validate", **waiting("PodInitializing"))],
    )
    api(our_job(), [failed])
    observed = await jobs.observe("ns", "run-validate")
    assert observed.state == "Failed"
    assert observed.failure == (
        "pod run-validate-abcde failed: init container copy-migrations: exit code 1: cp: can't stat '/flyway/sqll/.'"
    )


@pytest.mark.parametrize(
    ("the_job", "pods"),
    [
        # the Job retries a failed pod (backoffLimit 1): its status decides
        (lambda: our_job(backoff_limit=1), lambda: [ended_pod("boom", exit_code=1)]),
        # past (or near) the Job's active deadline the Job may fail with DeadlineExceeded whatever the pod did
        (lambda: our_job(deadline=60, started=datetime.now(UTC) - timedelta(seconds=58)), lambda: [ended_pod("ok")]),
        (lambda: our_job(deadline=60, started=None), lambda: [ended_pod("ok")]),
        # being deleted (stopped): the Job and its pod go, nothing to conclude
        (lambda: our_job(deleting=True), lambda: [ended_pod("ok")]),
        (lambda: our_job(), lambda: [deleted(ended_pod("ok"))]),
        # not the only pod
        (lambda: our_job(), lambda: [ended_pod("boom", exit_code=1), ended_pod("ok")]),
        # Succeeded without a terminated main container: not a state the kubelet reports, so not trusted
        (lambda: our_job(), lambda: [pod("Succeeded", [], [status("validate", **waiting("ContainerCreating"))])]),
        # still running, or no pod yet
        (lambda: our_job(), lambda: [running_pod()]),
        (lambda: our_job(), lambda: []),
    ],
)
async def test_otherwise_the_jobs_status_decides(api: Any, the_job: Any, pods: Any) -> None:
    api(the_job(), pods(), b"ok\n")
    assert (await jobs.observe("ns", "run-validate")).state == "Running"


def container_ended(exit_code: int, message: str | None = None) -> client.V1Pod:
    """The pod as the API shows it when the kubelet reported its container's end but not yet the pod's phase."""
    return pod(
        "Running",
        [status("copy-migrations", **terminated(finished=5))],
        [status("validate", **terminated(exit_code, message))],
    )


async def test_a_container_that_ended_ends_the_job_before_its_pods_phase_does(api: Any) -> None:
    output = validate_output()
    api(our_job(), [container_ended(0, termination_message(output))], output.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.state, observed.exit_code, observed.output) == ("Succeeded", 0, output)
    message = '==> migrate <==\n{"error": {"message": "relation already exists"}}\n'
    api(our_job(), [container_ended(3, message)], message.encode())
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.state, observed.exit_code) == ("Failed", 3)
    assert observed.failure == "pod run-validate-abcde failed: exit code 3"


def restarted_by_kubelet() -> client.V1Job:
    found = our_job()
    found.spec.template.spec.restart_policy = "OnFailure"
    return found


@pytest.mark.parametrize(
    ("the_job", "the_pod"),
    [
        # the kubelet may start the container again
        (restarted_by_kubelet, lambda: container_ended(1)),
        # the Job may create another pod
        (lambda: our_job(backoff_limit=1), lambda: container_ended(1)),
        # only the init container ended
        (
            our_job,
            lambda: pod(
                "Running",
                [status("copy-migrations", **terminated(finished=5))],
                [status("validate", **waiting("PodInitializing"))],
            ),
        ),
    ],
)
async def test_a_container_that_ended_decides_only_when_nothing_else_can_follow(
    api: Any, the_job: Any, the_pod: Any
) -> None:
    api(the_job(), [the_pod()], b"ok\n")
    assert (await jobs.observe("ns", "run-validate")).state == "Running"


def followed_pod(uid: str) -> client.V1Pod:
    found = running_pod()
    found.metadata.uid, found.metadata.labels = uid, {"dbops.io/migration": "run"}
    return found


async def test_a_running_pods_log_is_followed(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    followed: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tail, "follow", lambda *args: followed.append(args) or True)
    api(our_job(), [followed_pod("pod-1")])
    assert (await jobs.observe("ns", "run-validate")).state == "Running"
    assert followed == [("ns", "run-validate-abcde", "pod-1", "validate", "run", jobs.LOG_LIMIT_BYTES)]


async def test_the_end_line_of_its_log_ends_the_job_before_the_kubelet_says_so(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = validate_output()
    monkeypatch.setitem(tail._ended, "pod-2", tail.Ended(0, kube.PodLog(output, False), 0.0))
    fake = api(our_job(), [followed_pod("pod-2")])
    observed = await jobs.observe("ns", "run-validate")
    assert observed == JobObservation("Succeeded", output=output, exit_code=0, output_source="log")
    assert not fake.log_calls
    monkeypatch.setitem(tail._ended, "pod-3", tail.Ended(1, kube.PodLog("boom\n", False), 0.0))
    api(our_job(), [followed_pod("pod-3")])
    observed = await jobs.observe("ns", "run-validate")
    assert (observed.state, observed.exit_code, observed.failure) == (
        "Failed",
        1,
        "pod run-validate-abcde failed: exit code 1",
    )
    # the same guards as the kubelet's report: a Job that may retry decides itself
    api(our_job(backoff_limit=1), [followed_pod("pod-3")])
    assert (await jobs.observe("ns", "run-validate")).state == "Running"


async def test_the_marks_never_reach_the_parsers(api: Any) -> None:
    output = validate_output()
    api(
        our_job(succeeded=1),
        [ended_pod(termination_message(output))],
        f"DBOPS-BEGIN m\n{output}DBOPS-END m 0\n".encode(),
    )
    assert (await jobs.observe("ns", "run-validate")).output == output


async def test_the_jobs_status_wins_over_its_pod(api: Any) -> None:
    """A pod that succeeded while the Job was failed for its deadline: the Job says Failed, the run says Failed."""
    api(our_job(failed="DeadlineExceeded"), [ended_pod("ok\n")], b"ok\n")
    observed = await jobs.observe("ns", "run-validate")
    assert observed.state == "Failed" and observed.failure is not None
    assert observed.failure.startswith("DeadlineExceeded: x")


def deleted(found: client.V1Pod) -> client.V1Pod:
    found.metadata.deletion_timestamp = datetime.now(UTC)
    return found


def running_pod() -> client.V1Pod:
    return pod("Running", [], [status("validate", running=client.V1ContainerStateRunning(started_at=at(3)))])
