"""What only a real node passes (issue 12): memory limits enforced by the kernel and OOM kills reported, Service
DNS through CoreDNS and ClusterIP routing through kube-proxy to the database with TLS verified, `kubectl exec` and
`kubectl logs -f` through the kubelet's server, readOnlyRootFilesystem and runAsNonRoot enforced by the runtime.

Needs KUBECONFIG (hack/cluster.sh up); talks to the cluster only through the API server and kubectl, so it runs
on any cluster with the in-cluster PostgreSQL of hack/addons/postgres.yaml.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time

import pytest
from kubernetes import client

from tests.cluster.conftest import ClusterDatabase
from tests.cluster.helpers import (
    BUSYBOX,
    POSTGRES,
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
from tests.support.kube import apply_yaml, kubectl_binary
from tests.support.pods import pod
from tests.support.postgres import APP_PASSWORD, APP_ROLE
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

NAMESPACE_PREFIX = "realnode"


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl_binary(), *args], capture_output=True, text=True, timeout=timeout)


# -- resources ------------------------------------------------------------------------------------


def test_container_over_its_memory_limit_is_oom_killed(api: client.ApiClient, ns: str) -> None:
    # 256 MiB of distinct bytes against a 32 MiB limit; the line before tells that the program did start.
    program = "print('allocating', flush=True); data = bytes(range(256)) * (1 << 20); print('survived', len(data))"
    hog = container("hog", PYTHON, ["python3", "-c", program],
                    resources={"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}})
    apply_yaml(api, ns, [pod("hog", [hog])])
    p = finished_pod(api, ns, "hog")
    assert p.status.phase == "Failed", describe_pod(api, ns, "hog")
    term = termination(p)
    assert (term.reason, term.exit_code) == ("OOMKilled", 137), term
    log = log_of(api, ns, "hog")
    assert "allocating" in log and "survived" not in log, log


# -- networking: DNS, Service routing, TLS ------------------------------------------------------------


def test_pod_reaches_postgres_by_service_name_with_tls(
    api: client.ApiClient, ns: str, cluster_db: ClusterDatabase, database: str
) -> None:
    conninfo = f"dbname={database} user={APP_ROLE} port={cluster_db.port}"
    query = "select ssl, inet_server_addr() from pg_stat_ssl where pid = pg_backend_pid()"
    script = f"""
getent hosts {cluster_db.host}
psql -XAt -F' ' -c "{query}" "host={cluster_db.host} {conninfo} sslmode=require"
psql -XAt -F' ' -c "{query}" "host={cluster_db.host} {conninfo} sslmode=verify-full sslrootcert=/tls/ca.crt"
# the certificate names the Service, not its ClusterIP: verify-full must refuse the address
psql -XAt -c "select 1" "host={cluster_db.cluster_ip} {conninfo} sslmode=verify-full sslrootcert=/tls/ca.crt" 2>&1
echo "by-ip exit $?"
"""
    client_pod = container(
        "psql",
        POSTGRES,
        ["sh", "-c", script],
        uid=65532,
        env=[{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        volumeMounts=[{"name": "tls", "mountPath": "/tls", "readOnly": True}],
    )
    apply_yaml(
        api,
        ns,
        [
            secret("db", {"password": APP_PASSWORD}),
            # the database's CA, copied from Secret databases/postgres-tls (a Secret mounts in its own namespace)
            secret("postgres-ca", {"ca.crt": cluster_db.ca_crt}),
            pod("psql", [client_pod], volumes=[{"name": "tls", "secret": {"secretName": "postgres-ca"}}]),
        ],
    )
    p = finished_pod(api, ns, "psql")
    log = log_of(api, ns, "psql")
    assert p.status.phase == "Succeeded", log
    lines = log.splitlines()
    # CoreDNS answers with the Service's ClusterIP ...
    assert lines[0].split() == [cluster_db.cluster_ip, cluster_db.host], log
    # ... kube-proxy sends the connection to the database pod, over TLS, with and without verifying the server
    db_pods = client.CoreV1Api(api).list_namespaced_pod("databases", label_selector="app=postgres").items
    db_ips = {dp.status.pod_ip for dp in db_pods}
    for line in lines[1:3]:
        ssl, server_addr = line.split()
        assert ssl == "t", log
        assert server_addr in db_ips, (log, db_ips)
    assert re.search(r'server certificate for "[^"]+" (\(and \d+ other names?\) )?does not match host name '
                     rf'"{re.escape(cluster_db.cluster_ip)}"', log), log
    assert lines[-1] == "by-ip exit 2", log


# -- the kubelet's server: exec and logs -f -------------------------------------------------------------


def test_kubectl_exec_returns_output_and_exit_code(api: client.ApiClient, ns: str) -> None:
    apply_yaml(api, ns, [pod("shell", [container("main", BUSYBOX, ["sleep", "3600"])],
                             terminationGracePeriodSeconds=0)])
    running_pod(api, ns, "shell")
    command = 'echo "uid $(id -u) in $HOSTNAME"; echo oops >&2; exit 7'
    res = kubectl("exec", "-n", ns, "shell", "--", "sh", "-c", command)
    assert res.returncode == 7, res
    assert res.stdout == "uid 1000 in shell\n"
    # the container's stderr, then kubectl's account of the remote exit status
    assert res.stderr.splitlines() == ["oops", "command terminated with exit code 7"], res
    # stdin reaches the process, and a clean exit is 0
    res = subprocess.run([kubectl_binary(), "exec", "-i", "-n", ns, "shell", "--", "wc", "-l"],
                         input="a\nb\nc\n", capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "3"), res


def test_kubectl_logs_follow_streams_lines_written_after_it_started(api: client.ApiClient, ns: str) -> None:
    # The container writes "tick N" lines only once /tmp/go exists, which this test creates after the follow began.
    script = (
        "echo waiting; until [ -e /tmp/go ]; do sleep 0.1; done;"
        " i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
    )
    apply_yaml(api, ns, [pod("ticker", [container("main", BUSYBOX, ["sh", "-c", script])],
                             terminationGracePeriodSeconds=0)])
    running_pod(api, ns, "ticker")
    follow = subprocess.Popen([kubectl_binary(), "logs", "-f", "-n", ns, "ticker"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in follow.stdout or []:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def next_line(deadline: float) -> str:
        try:
            return lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            follow.kill()
            raise AssertionError(f"kubectl logs -f printed nothing more before the deadline: {follow.stderr}") from None

    try:
        deadline = time.monotonic() + 30
        assert next_line(deadline) == "waiting\n"  # the follow is connected
        res = kubectl("exec", "-n", ns, "ticker", "--", "touch", "/tmp/go")
        assert res.returncode == 0, res
        seen = [next_line(deadline) for _ in range(3)]
        assert seen == ["tick 1\n", "tick 2\n", "tick 3\n"]
        assert follow.poll() is None  # still following a running container
    finally:
        follow.kill()
        follow.wait(timeout=10)


# -- security contexts enforced by the runtime ----------------------------------------------------------


def test_read_only_root_filesystem_is_enforced(api: client.ApiClient, ns: str) -> None:
    script = "touch /written 2>&1; echo root exit $?; touch /scratch/written && echo scratch ok"
    ro = container("main", BUSYBOX, ["sh", "-c", script], volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
    ro["securityContext"]["readOnlyRootFilesystem"] = True
    apply_yaml(api, ns, [pod("ro", [ro], volumes=[{"name": "scratch", "emptyDir": {}}])])
    p = finished_pod(api, ns, "ro")
    log = log_of(api, ns, "ro")
    assert p.status.phase == "Succeeded", log
    assert log.splitlines() == ["touch: /written: Read-only file system", "root exit 1", "scratch ok"]


def test_run_as_non_root_refuses_a_root_image_without_run_as_user(api: client.ApiClient, ns: str) -> None:
    # busybox's image user is root; runAsNonRoot without runAsUser leaves the kubelet the image's user to check.
    rooted = container("main", BUSYBOX, ["true"])
    del rooted["securityContext"]["runAsUser"]
    apply_yaml(api, ns, [pod("rooted", [rooted])])
    wait_for(
        lambda: waiting_reason(api, ns, "rooted") == "CreateContainerConfigError",
        timeout=60,
        what="CreateContainerConfigError",
        describe=lambda: describe_pod(api, ns, "rooted"),
    )
    p = client.CoreV1Api(api).read_namespaced_pod("rooted", ns)
    assert p.status.phase == "Pending"
    assert "runAsNonRoot and image will run as root" in p.status.container_statuses[0].state.waiting.message
