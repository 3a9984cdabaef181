"""The local cluster's node (hack/node_agent): real Job/Deployment controllers on pods run as processes.

Needs KUBECONFIG pointing at the local cluster with the node agent running (hack/cluster.sh up).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.kube import apply_yaml, job_condition, pod_of_job, unique_name
from tests.support.pods import container, is_ready, job, pod, pod_state
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster


def test_job_runs_to_completion(api: client.ApiClient, ns: str) -> None:
    script = "echo hello from $HOSTNAME at $POD_IP; echo all good > /dev/termination-log"
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    apply_yaml(api, ns, [job("ok", [container("main", "busybox:1.36", ["sh", "-c", script], env=env)])])
    wait_for(
        lambda: job_condition(api, ns, "ok", "Complete"),
        timeout=90,
        what="Job ok Complete",
        describe=lambda: pod_state(api, ns, "job-name=ok"),
    )
    [pod] = pod_of_job(api, ns, "ok")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == "local-node"
    assert pod.status.pod_ip.startswith("127.0.1.")
    assert pod.status.host_ip == "127.0.0.1"
    assert pod.status.start_time is not None
    [cs] = pod.status.container_statuses
    term = cs.state.terminated
    assert (term.exit_code, term.reason, term.message) == (0, "Completed", "all good\n")
    assert cs.container_id.startswith("process://")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Initialized"] == "True"
    assert conditions["Ready"] == "False"  # completed pods are not ready


def test_failing_job_honours_backoff_limit(api: client.ApiClient, ns: str) -> None:
    failing = container("main", "debian:12", ["bash", "-c", "echo going down; exit 3"])
    failing["terminationMessagePolicy"] = "FallbackToLogsOnError"
    apply_yaml(api, ns, [job("fail", [failing], backoff_limit=2)])
    wait_for(
        lambda: job_condition(api, ns, "fail", "Failed"),
        timeout=180,  # the Job controller's own pod back-off: 10s, 20s
        what="Job fail Failed",
        describe=lambda: pod_state(api, ns, "job-name=fail"),
    )
    status = client.BatchV1Api(api).read_namespaced_job_status("fail", ns).status
    assert any(c.type == "Failed" and c.reason == "BackoffLimitExceeded" for c in status.conditions)
    pods = pod_of_job(api, ns, "fail")
    assert len(pods) == 3
    for failed in pods:
        assert failed.status.phase == "Failed"
        term = failed.status.container_statuses[0].state.terminated
        assert (term.exit_code, term.reason) == (3, "Error")
        assert term.message == "going down\n"


def test_deployment_becomes_available_through_readiness(api: client.ApiClient, ns: str) -> None:
    web = container(
        "web",
        "python:3.11",
        ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
        env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 5, "initialDelaySeconds": 2},
        ports=[{"name": "http", "containerPort": 8080}],
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [web]}},
        },
    }
    apply_yaml(api, ns, [deployment])
    apps = client.AppsV1Api(api)
    wait_for(
        lambda: (apps.read_namespaced_deployment_status("web", ns).status.available_replicas or 0) == 2,
        timeout=90,
        what="Deployment web with 2 available replicas",
        describe=lambda: pod_state(api, ns, "app=web"),
    )
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(ns, label_selector="app=web").items
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2, "every pod has its own loopback address"
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
            assert r.status == 200
    # Scale down: the agent stops the processes (SIGTERM) and only then lets the pod objects go.
    apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 0}})
    wait_for(
        lambda: not core.list_namespaced_pod(ns, label_selector="app=web").items,
        timeout=60,
        what="web pods deleted",
        describe=lambda: pod_state(api, ns, "app=web"),
    )
    for ip in ips:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{ip}:8080/", timeout=2)


def test_in_cluster_config_volumes_and_env(api: client.ApiClient, ns: str) -> None:
    program = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "print('apiserver', client.VersionApi().get_code().git_version)\n"
        "print('secret', open('/etc/secret/password').read())\n"
        "print('config', open('/etc/app/app.conf').read())\n"
        "import os; print('env', os.environ['PASSWORD'], os.environ['MODE'], os.environ['APP_color'])\n"
        "print('init', open('/work/init.txt').read().strip())\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "incluster"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                container(
                    "init",
                    "busybox",
                    ["sh", "-c", "echo init ran > /work/init.txt"],
                    volumeMounts=[{"name": "work", "mountPath": "/work"}],
                ),
            ],
            "containers": [
                container(
                    "main",
                    "python:3.11",
                    ["python3", "-c", program],
                    env=[
                        {
                            "name": "PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                        },
                        {"name": "MODE", "value": "mode-$(PASSWORD)"},
                    ],
                    envFrom=[{"configMapRef": {"name": "app"}, "prefix": "APP_"}],
                    volumeMounts=[
                        {"name": "work", "mountPath": "/work"},
                        {"name": "secret", "mountPath": "/etc/secret", "readOnly": True},
                        {"name": "config", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
                    ],
                )
            ],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "secret", "secret": {"secretName": "creds"}},
                {"name": "config", "configMap": {"name": "app"}},
            ],
        },
    }
    apply_yaml(
        api,
        ns,
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds"},
                "stringData": {"password": "pw1"},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app"},
                "data": {"color": "blue", "app.conf": "port=1"},
            },
            pod,
        ],
    )
    core = client.CoreV1Api(api)
    wait_for(
        lambda: core.read_namespaced_pod("incluster", ns).status.phase in ("Succeeded", "Failed"),
        timeout=90,
        what="pod incluster finished",
    )
    result = core.read_namespaced_pod("incluster", ns)
    log = core.read_namespaced_pod_log("incluster", ns, container="main")  # through the agent's :10250
    assert result.status.phase == "Succeeded", log
    assert "apiserver v1." in log
    assert "secret pw1" in log
    assert "config port=1" in log
    assert "env pw1 mode-pw1 blue" in log
    assert "init init ran" in log


def test_on_failure_restarts_the_container(api: client.ApiClient, ns: str) -> None:
    # Fails on the first run, succeeds on the second (the emptyDir survives container restarts).
    script = "if [ -e /state/ran ]; then echo second; exit 0; fi; touch /state/ran; echo first; exit 1"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flaky"},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                container(
                    "main",
                    "busybox",
                    ["sh", "-c", script],
                    volumeMounts=[{"name": "s", "mountPath": "/state"}],
                )
            ],
            "volumes": [{"name": "s", "emptyDir": {}}],
        },
    }
    apply_yaml(api, ns, [pod])
    core = client.CoreV1Api(api)
    wait_for(
        lambda: core.read_namespaced_pod("flaky", ns).status.phase == "Succeeded",
        timeout=90,
        what="pod flaky Succeeded after one restart",
        describe=lambda: str(core.read_namespaced_pod("flaky", ns).status.container_statuses),
    )
    cs = core.read_namespaced_pod("flaky", ns).status.container_statuses[0]
    assert cs.restart_count == 1
    assert cs.state.terminated.exit_code == 0
    assert cs.last_state.terminated.exit_code == 1


def test_unknown_image_is_an_image_pull_error(api: client.ApiClient, ns: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "noimage"},
        "spec": {"containers": [container("c", "registry.example/nothing/here:1", ["x"])]},
    }
    apply_yaml(api, ns, [pod])
    core = client.CoreV1Api(api)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("noimage", ns).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None

    wait_for(lambda: waiting_reason() == "ImagePullBackOff", timeout=60, what="ImagePullBackOff")
    pod_now = core.read_namespaced_pod("noimage", ns)
    assert pod_now.status.phase == "Pending"
    assert "is not in" in pod_now.status.container_statuses[0].state.waiting.message


def test_containers_have_a_private_tmp(api: client.ApiClient, ns: str) -> None:
    # Two pods write the same /tmp file at the same time: each one keeps reading back its own content
    # (exec readiness probes run in the container's mount namespace), and the host's /tmp is untouched.
    name = unique_name("x")
    pods = [
        pod(
            p,
            [
                container(
                    "main",
                    "busybox",
                    ["sh", "-c", f"echo {p} > /tmp/{name} && exec sleep 600"],
                    readinessProbe={"exec": {"command": ["grep", "-qx", p, f"/tmp/{name}"]}, "periodSeconds": 1},
                )
            ],
            terminationGracePeriodSeconds=1,
        )
        for p in ("a", "b")
    ]
    apply_yaml(api, ns, pods)
    core = client.CoreV1Api(api)
    wait_for(
        lambda: all(is_ready(core.read_namespaced_pod(p, ns)) for p in ("a", "b")),
        timeout=60,
        what="pods a and b Ready, each seeing its own /tmp file",
        describe=lambda: pod_state(api, ns, ""),
    )
    assert not Path("/tmp", name).exists()
