"""The node: the kubelet runs pods from real images through containerd, reports their status so the Job
controller works, restarts containers per restartPolicy, and survives its own restart without touching them.

Needs KUBECONFIG pointing at a cluster with a Ready node (hack/cluster.sh up). The tests that kill a container
through the runtime or the kubelet itself run only on the local cluster (skipped elsewhere, with the reason).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from migration_operator import jobs
from tests.cluster.helpers import (
    BUSYBOX,
    DEBIAN,
    PYTHON,
    container,
    describe_pod,
    finished_pod,
    log_of,
    running_pod,
    secret,
    termination,
    waiting_reason,
)
from tests.support.kube import apply_yaml, job_condition, pod_of_job
from tests.support.local_cluster import (
    NODE_NAME,
    LocalNode,
    cluster_up,
    container_host_pid,
    kill_container,
    kill_kubelet,
    kubelet_pid,
    process_exists,
)
from tests.support.pods import job, pod, pod_state
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster


def test_job_runs_to_completion(api: client.ApiClient, ns: str) -> None:
    script = 'echo "hello from $HOSTNAME at $POD_IP"; echo all good > /dev/termination-log'
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    apply_yaml(api, ns, [job("ok", [container("main", BUSYBOX, ["sh", "-c", script], env=env)])])
    wait_for(
        lambda: job_condition(api, ns, "ok", "Complete"),
        timeout=90,
        what="Job ok Complete",
        describe=lambda: pod_state(api, ns, "job-name=ok"),
    )
    [p] = pod_of_job(api, ns, "ok")
    assert p.status.phase == "Succeeded"
    node = client.CoreV1Api(api).read_node(p.spec.node_name)
    internal_ips = {a.address for a in node.status.addresses if a.type == "InternalIP"}
    assert p.status.host_ip in internal_ips
    # its own network namespace: an address of the pod network, not the node's
    pod_ip = ipaddress.ip_address(p.status.pod_ip)
    assert p.status.pod_ip not in internal_ips and not pod_ip.is_loopback
    assert log_of(api, ns, p.metadata.name) == f"hello from {p.metadata.name} at {p.status.pod_ip}\n"
    [cs] = p.status.container_statuses
    term = cs.state.terminated
    assert (term.exit_code, term.reason, term.message) == (0, "Completed", "all good\n")
    runtime = node.status.node_info.container_runtime_version.split("://")[0]
    assert cs.container_id.startswith(f"{runtime}://"), (cs.container_id, runtime)
    conditions = {c.type: c.status for c in p.status.conditions}
    assert conditions["Initialized"] == "True"
    assert conditions["Ready"] == "False"  # completed pods are not ready


def test_failing_job_honours_backoff_limit(api: client.ApiClient, ns: str) -> None:
    failing = container("main", DEBIAN, ["bash", "-c", "echo going down; exit 3"])
    failing["terminationMessagePolicy"] = "FallbackToLogsOnError"
    apply_yaml(api, ns, [job("fail", [failing], backoff_limit=1)])
    wait_for(
        lambda: job_condition(api, ns, "fail", "Failed"),
        timeout=120,  # the Job controller's own back-off before the retry: 10s
        what="Job fail Failed",
        describe=lambda: pod_state(api, ns, "job-name=fail"),
    )
    status = client.BatchV1Api(api).read_namespaced_job_status("fail", ns).status
    assert any(c.type == "Failed" and c.reason == "BackoffLimitExceeded" for c in status.conditions)
    pods = pod_of_job(api, ns, "fail")
    assert len(pods) == 2  # the first try and one retry
    for failed in pods:
        assert failed.status.phase == "Failed"
        term = termination(failed)
        assert (term.exit_code, term.reason) == (3, "Error")
        assert term.message == "going down\n"


def test_the_operators_jobs_retry_only_a_container_that_never_started(api: client.ApiClient, ns: str) -> None:
    """The operator's Job policy (`migration_operator.jobs.POD_FAILURE_POLICY`) on this runtime: a container it
    cannot start (StartError, exit code 128: nothing ran) gets another pod, up to START_RETRIES; one that ran and
    failed fails the Job at once, with no retry."""
    def policed(name: str, main: dict[str, Any]) -> dict[str, Any]:
        manifest = job(name, [main], backoff_limit=jobs.START_RETRIES)
        manifest["spec"]["podFailurePolicy"] = jobs.POD_FAILURE_POLICY
        return manifest

    apply_yaml(api, ns, [policed("nostart", container("main", DEBIAN, ["/no/such/binary"])),
                         policed("ran", container("main", DEBIAN, ["bash", "-c", "exit 3"]))])
    for name, reason in (("ran", "PodFailurePolicy"), ("nostart", "BackoffLimitExceeded")):
        wait_for(
            lambda name=name: job_condition(api, ns, name, "Failed"),  # type: ignore[misc]
            timeout=180,  # the Job controller's back-off before each new pod: 10 s, then 20 s
            what=f"Job {name} Failed", describe=lambda name=name: pod_state(api, ns, f"job-name={name}"),  # type: ignore[misc]
        )
        status = client.BatchV1Api(api).read_namespaced_job_status(name, ns).status
        assert any(c.type == "Failed" and c.reason == reason for c in status.conditions), status.conditions
    ran = pod_of_job(api, ns, "ran")
    assert len(ran) == 1 and termination(ran[0]).exit_code == 3
    tries = pod_of_job(api, ns, "nostart")
    assert len(tries) == jobs.START_RETRIES + 1
    for tried in tries:
        term = termination(tried)
        assert (term.exit_code, term.reason) == (jobs.START_ERROR_EXIT, "StartError"), term


def test_on_failure_restarts_the_container(api: client.ApiClient, ns: str) -> None:
    # Fails on the first run, succeeds on the second (the emptyDir survives container restarts).
    script = "if [ -e /state/ran ]; then echo second; exit 0; fi; touch /state/ran; echo first; exit 1"
    flaky = container("main", BUSYBOX, ["sh", "-c", script], volumeMounts=[{"name": "s", "mountPath": "/state"}])
    apply_yaml(api, ns, [pod("flaky", [flaky], restart_policy="OnFailure", volumes=[{"name": "s", "emptyDir": {}}])])
    p = finished_pod(api, ns, "flaky")
    assert p.status.phase == "Succeeded", describe_pod(api, ns, "flaky")
    cs = p.status.container_statuses[0]
    # OnFailure restarts only a failed container; the kubelet removes the dead first one once the pod is done,
    # so its lastState is empty here, and the log is the second run's.
    assert cs.restart_count == 1
    assert cs.state.terminated.exit_code == 0
    assert log_of(api, ns, "flaky") == "second\n"


def test_unknown_image_is_an_image_pull_error(api: client.ApiClient, ns: str) -> None:
    apply_yaml(api, ns, [pod("noimage", [container("c", "registry.invalid/nothing/here:1", ["x"])])])
    wait_for(
        lambda: waiting_reason(api, ns, "noimage") in ("ErrImagePull", "ImagePullBackOff"),
        timeout=60,
        what="ErrImagePull or ImagePullBackOff",
        describe=lambda: describe_pod(api, ns, "noimage"),
    )
    p = client.CoreV1Api(api).read_namespaced_pod("noimage", ns)
    assert p.status.phase == "Pending"
    assert "registry.invalid/nothing/here:1" in p.status.container_statuses[0].state.waiting.message


def test_in_cluster_api_secret_env_and_configmap_files(api: client.ApiClient, ns: str) -> None:
    # The API server through the `kubernetes` Service by its DNS name, with the mounted token and CA; Secret and
    # ConfigMap as env, envFrom, a volume and a subPath; $(VAR) expansion; an init container's emptyDir.
    program = (
        "import json, os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=f'{sa}/ca.crt')\n"
        "req = urllib.request.Request('https://kubernetes.default.svc/version',\n"
        "                             headers={'Authorization': 'Bearer ' + open(f'{sa}/token').read()})\n"
        "print('apiserver', json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n"
        "print('secret', open('/etc/secret/password').read())\n"
        "print('config', open('/etc/app/app.conf').read())\n"
        "print('files', sorted(f for f in os.listdir('/etc/config') if not f.startswith('..')))\n"
        "print('env', os.environ['PASSWORD'], os.environ['MODE'], os.environ['APP_color'])\n"
        "print('init', open('/work/init.txt').read().strip())\n"
    )
    init = container(
        "init", BUSYBOX, ["sh", "-c", "echo init ran > /work/init.txt"],
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
    )
    main = container(
        "main",
        PYTHON,
        ["python3", "-c", program],
        env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MODE", "value": "mode-$(PASSWORD)"},
        ],
        envFrom=[{"configMapRef": {"name": "app"}, "prefix": "APP_"}],
        volumeMounts=[
            {"name": "work", "mountPath": "/work"},
            {"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
            {"name": "config", "mountPath": "/etc/config", "readOnly": True},
            {"name": "config", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
        ],
    )
    volumes = [
        {"name": "work", "emptyDir": {}},
        {"name": "secret", "secret": {"secretName": "creds"}},
        {"name": "config", "configMap": {"name": "app"}},
    ]
    apply_yaml(
        api,
        ns,
        [
            secret("creds", {"password": "pw1"}),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
             "data": {"color": "blue", "app.conf": "port=1"}},
            pod("incluster", [main], initContainers=[init], volumes=volumes),
        ],
    )
    p = finished_pod(api, ns, "incluster")
    log = log_of(api, ns, "incluster", "main")
    assert p.status.phase == "Succeeded", log
    assert log.splitlines() == [
        f"apiserver {client.VersionApi(api).get_code().git_version}",
        "secret pw1",
        "config port=1",
        "files ['app.conf', 'color']",
        "env pw1 mode-pw1 blue",
        "init init ran",
    ]


# -- below the API server: the runtime and the kubelet (local cluster only) ---------------------------------


def sleeper(name: str) -> dict[str, object]:
    """A pod whose container only waits, ended at once on deletion."""
    return pod(name, [container("main", BUSYBOX, ["sleep", "3600"])], restart_policy="Always",
               terminationGracePeriodSeconds=0)


def test_container_killed_through_the_runtime_is_restarted_by_the_kubelet(
    api: client.ApiClient, ns: str, local_node: LocalNode
) -> None:
    apply_yaml(api, ns, [sleeper("victim")])
    before = running_pod(api, ns, "victim").status.container_statuses[0]
    pid = container_host_pid(local_node, before.container_id)
    assert process_exists(pid)

    kill_container(local_node, before.container_id)
    core = client.CoreV1Api(api)

    def restarted() -> client.V1ContainerStatus | None:
        cs = core.read_namespaced_pod("victim", ns).status.container_statuses[0]
        return cs if cs.restart_count == 1 and cs.ready else None

    after = wait_for(restarted, timeout=60, what="victim restarted once by the kubelet",
                     describe=lambda: describe_pod(api, ns, "victim"))
    assert not process_exists(pid)
    assert after.container_id != before.container_id
    assert (after.last_state.terminated.exit_code, after.last_state.terminated.container_id) == (
        137, before.container_id
    )
    assert process_exists(container_host_pid(local_node, after.container_id))


@pytest.fixture
def kubelet_restored(local_node: LocalNode) -> Iterator[None]:
    """Whatever happens in the test, the kubelet runs again afterwards."""
    try:
        yield
    finally:
        if kubelet_pid(local_node) is None:
            cluster_up(local_node)


def test_kubelet_restart_keeps_running_pods(
    api: client.ApiClient, ns: str, local_node: LocalNode, kubelet_restored: None
) -> None:
    apply_yaml(api, ns, [sleeper("keep-a"), sleeper("keep-b")])
    before = {name: running_pod(api, ns, name).status.container_statuses[0] for name in ("keep-a", "keep-b")}
    ids = {name: cs.container_id for name, cs in before.items()}
    pids = {name: container_host_pid(local_node, cs.container_id) for name, cs in before.items()}

    killed_at = time.time()
    old = kill_kubelet(local_node)
    wait_for(lambda: not process_exists(old), timeout=30, what=f"kubelet (pid {old}) gone")
    # The containers do not depend on the kubelet's process.
    assert all(process_exists(pid) for pid in pids.values()), pids

    cluster_up(local_node)
    new = kubelet_pid(local_node)
    assert new and new != old

    # The new kubelet heartbeats (its Lease renewed after the kill) and the node is Ready.
    coord = client.CoordinationV1Api(api)
    wait_for(
        lambda: coord.read_namespaced_lease(NODE_NAME, "kube-node-lease").spec.renew_time.timestamp() > killed_at,
        timeout=60,
        what=f"Lease of {NODE_NAME} renewed by the new kubelet",
    )
    node = client.CoreV1Api(api).read_node(NODE_NAME)
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    # A pod created now runs: the new kubelet has been through its first sync of every pod, the old ones too.
    apply_yaml(api, ns, [sleeper("after")])
    running_pod(api, ns, "after")

    # It adopts the running containers: same ids, same processes, no restarts, still Ready.
    for name in ("keep-a", "keep-b"):
        cs = running_pod(api, ns, name, timeout=30).status.container_statuses[0]
        assert (cs.container_id, cs.restart_count) == (ids[name], 0), cs
        assert container_host_pid(local_node, cs.container_id) == pids[name]
    assert all(process_exists(pid) for pid in pids.values()), pids
