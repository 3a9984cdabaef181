"""The operator under test (MO_E2E_OPERATOR):
- `pod`: the chart's Deployment, from the operator image, in a namespace of its own; a test SIGKILLs its container
  through the node's runtime and the kubelet restarts it (OperatorPod);
- `process` (the default, for development): `python -m migration_operator` from this checkout on the host, which a
  test SIGKILLs and starts again (OperatorProcess);
- `external`: an operator already running in the cluster (e.g. the chart on kind); the tests that kill it skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Protocol

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.support import registry
from tests.support.kube import kubectl_binary
from tests.support.runtime import LocalRuntime
from tests.support.wait import WaitAborted, wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MODES = ("pod", "process", "external")
DEFAULT_MODE = "pod"


def mode() -> str:
    """MO_E2E_OPERATOR, else the default."""
    chosen = os.environ.get("MO_E2E_OPERATOR") or DEFAULT_MODE
    if chosen not in MODES:
        raise ValueError(f"MO_E2E_OPERATOR={chosen!r}: one of {', '.join(MODES)}")
    return chosen


class Operator(Protocol):
    """What the suites do with the operator under test, whichever way it runs."""

    namespace_pattern: str

    def start(self) -> None: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def metrics(self) -> str: ...
    def metric(self, sample: str, **labels: str) -> float: ...
    def tail(self, lines: int = 60) -> str: ...
    def log_text(self) -> str: ...


def namespace_key(process: Operator) -> str:
    """A per-session key part: the operator watches `<prefix>-*`."""
    return process.namespace_pattern.rstrip("-*")


def checksum_key(process: Operator) -> str:
    """The operator's checksum key (digests.py), the same across the restarts a test makes."""
    return os.environ.get("DBOPS_CHECKSUM_KEY", "e2e-checksum-key-" + namespace_key(process))


def parse_metric(text: str, sample: str, **labels: str) -> float:
    """One sample of a /metrics text (e.g. dbmig_migrations_total{result="Succeeded"}); 0 when absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


class OperatorProcess:
    def __init__(self, namespace_pattern: str, log_dir: Path) -> None:
        """`namespace_pattern` "*": every namespace (--all-namespaces)."""
        self.namespace_pattern = namespace_pattern
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.health_port = free_port()
        self.metrics_port = free_port()

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "operator already running"
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {
            "METRICS_PORT": str(self.metrics_port),
            "METRICS_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": "json",
            "DBOPS_CHECKSUM_KEY": checksum_key(self),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "migration_operator",
                *(["--all-namespaces"] if self.namespace_pattern == "*" else ["--namespace", self.namespace_pattern]),
                "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            ],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._healthy, timeout=60, what="operator liveness endpoint", describe=self.tail)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final status write - what a node crash or an OOM kill looks like."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, sample: str, **labels: str) -> float:
        """One sample of the operator's /metrics (e.g. dbmig_migrations_total{result="Succeeded"}); 0 when absent."""
        return parse_metric(self.metrics(), sample, **labels)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"

    def log_text(self) -> str:
        """Everything every run of the process logged, in order."""
        paths = sorted(self.log_dir.glob("operator-*.log"), key=lambda p: int(p.stem.removeprefix("operator-")))
        return "".join(p.read_text(errors="replace") for p in paths)


class OperatorPod:
    """The operator as the chart installs it: release `migration-operator-<key>` in namespace
    `migration-operator-<key>` (PodSecurity restricted enforced; it does not match the watched pattern), the image
    of the chart's default (on the local cluster, from its registry), watching `namespace_pattern` with the chart's
    cluster-wide RBAC (watchNamespacePatterns). The CRD is not the release's (the suite installs the committed one).

    The chart's replicas (2 by default: what users get; MO_E2E_OPERATOR_REPLICAS or `replicas` to change it) elect a
    leader through the Lease `<release>-leader`: "the operator pod" is the leader's (`pod_name`), read from the
    Lease's holder. `kill()` SIGKILLs the leader's container through the node's runtime and the kubelet restarts it in
    the same pod (it takes its Lease back at once: same pod name); on a cluster whose node is not this machine, the
    pod is deleted with grace 0 and the Deployment makes a new one. `kill_for_good()` makes the leader's pod die and
    never come back (frozen, deleted with grace 0, SIGKILLed): the standby takes over. `start()` installs the
    release, or after a kill waits for every replica to run again and for a leader whose kopf answers on its
    liveness endpoint. /metrics and /healthz are read through the API server's pod proxy: only $KUBECONFIG is
    needed. `log_text()` has every pod's log (each container instance's), `tail()` the leader's.
    """

    CONTAINER = "operator"
    METRICS_PORT = 8080
    HEALTH_PORT = 8081
    INSTALL_TIMEOUT = 300  # an image pull included
    # a standby answers the liveness path itself, with this in its body (migration_operator.__main__.StandbyProbe)
    STANDBY_MARK = '"leader": false'

    def __init__(self, namespace_pattern: str, log_dir: Path, api: client.ApiClient,
                 replicas: int | None = None) -> None:
        self.namespace_pattern = namespace_pattern
        self.log_dir = log_dir
        self.api = api
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        key = namespace_key(self)
        self.release = f"migration-operator-{key}"
        self.namespace = f"migration-operator-{key}"
        self.lease = f"{self.release}-leader"  # the chart's default: <fullname>-leader (fullname = the release here)
        env_replicas = os.environ.get("MO_E2E_OPERATOR_REPLICAS")
        self.replicas = replicas if replicas is not None else (int(env_replicas) if env_replicas else None)
        self.runtime = LocalRuntime.find()
        self.installed = False
        self.pod_uid: str | None = None
        self.pod_name: str | None = None  # the leader's pod
        self.restarts = 0  # the leader container's restartCount when it was last seen healthy
        self.killed: tuple[str, str, int] | None = None  # (uid, name, restartCount) of the pod whose leader was killed
        self.gone: str | None = None  # the uid of a pod killed for good
        self.archive: list[str] = []  # logs of container instances (and pods) that ended

    @property
    def expected_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        values = yaml.safe_load((REPO / "charts" / "migration-operator" / "values.yaml").read_text())
        return int(values["replicaCount"])

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.installed:
            self._install()
        elif self.killed is not None:
            self._wait_restarted()
        self._wait_healthy()

    def _install(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self._namespace_exists():
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=self.namespace,
                labels={"pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest"})))
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name="e2e-checksum-key"),
            data={"key": base64.b64encode(checksum_key(self).encode()).decode()})
        try:
            self.core.create_namespaced_secret(self.namespace, secret)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.replace_namespaced_secret("e2e-checksum-key", self.namespace, secret)
        pattern = self.namespace_pattern.replace(",", "\\,")
        replicas = ["--set", f"replicaCount={self.replicas}"] if self.replicas is not None else []
        _run(helm_binary(), "upgrade", "--install", self.release, str(REPO / "charts" / "migration-operator"),
             "--namespace", self.namespace,
             "--set-string", f"watchNamespacePatterns[0]={pattern}",
             "--set", "crds.install=false", "--set", "logFormat=json",
             "--set", "checksumKey.existingSecret=e2e-checksum-key",
             *replicas, *image_pin())
        self.installed = True
        wait_for(self._started, timeout=self.INSTALL_TIMEOUT,
                 what=f"{self.expected_replicas} operator pod(s) in {self.namespace} running", describe=self._describe)

    def _started(self) -> list[client.V1Pod] | None:
        """Every replica's container running; a container that cannot start or crashed ends the wait."""
        pods = self._pods()
        for pod in pods:
            status = self._container(pod)
            waiting = status.state.waiting if status is not None and status.state is not None else None
            if status is not None and (status.restart_count > 0 or (waiting and waiting.reason in (
                    "CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"))):
                log = ""
                with contextlib.suppress(ApiException):
                    log = self._log(pod.metadata.name, previous=status.restart_count > 0)
                raise WaitAborted(f"the operator pod does not start: {self._describe()}\n{log[-3000:]}")
        return pods if len(pods) == self.expected_replicas and all(self._running(p) for p in pods) else None

    def _namespace_exists(self) -> bool:
        try:
            self.core.read_namespace(self.namespace)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def _pods(self) -> list[client.V1Pod]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={self.release}").items
        return sorted((p for p in pods if not p.metadata.deletion_timestamp), key=lambda p: p.metadata.name)

    def _container(self, pod: client.V1Pod) -> client.V1ContainerStatus | None:
        return next((c for c in pod.status.container_statuses or [] if c.name == self.CONTAINER), None)

    def _running(self, pod: client.V1Pod) -> bool:
        status = self._container(pod)
        return bool(status is not None and status.state is not None and status.state.running)

    def holder(self) -> str | None:
        """The leader Lease's holder (a pod name), None when nobody holds it (or there is no Lease)."""
        try:
            lease = self.coordination.read_namespaced_lease(self.lease, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return lease.spec.holder_identity or None

    def leader(self) -> client.V1Pod | None:
        """The pod named by the Lease, when its container runs."""
        holder = self.holder()
        pod = next((p for p in self._pods() if p.metadata.name == holder), None)
        return pod if pod is not None and self._running(pod) else None

    def _remember(self, pod: client.V1Pod) -> None:
        self.pod_uid, self.pod_name = pod.metadata.uid, pod.metadata.name
        status = self._container(pod)
        self.restarts = status.restart_count if status else 0

    def _refresh(self) -> None:
        """Follow the leadership: `pod_name` is the current leader's, when one runs."""
        with contextlib.suppress(ApiException):
            pod = self.leader()
            if pod is not None and pod.metadata.name != self.pod_name:
                self._remember(pod)

    def kill(self) -> None:
        """SIGKILL of the leader's container: no cleanup, no final status write, no Lease released - what a crash or
        an OOM kill looks like. The kubelet restarts it in the same pod."""
        self._refresh()
        assert self.pod_uid is not None and self.pod_name is not None, "operator not started"
        container = self.runtime.running(self.pod_uid, self.CONTAINER) if self.runtime else None
        self.killed = (self.pod_uid, self.pod_name, self.restarts)
        if self.runtime is not None and container is not None:
            self.runtime.sigkill(container)
        else:  # not our node: the closest the API offers
            self.archive.append(self._log(self.pod_name))
            self.core.delete_namespaced_pod(self.pod_name, self.namespace, grace_period_seconds=0)
            self.gone = self.pod_uid

    def kill_for_good(self) -> str:
        """The leader's pod dies and never comes back, as with a node lost: its process is frozen (SIGSTOP: it can
        neither renew nor release its Lease), the pod is deleted with grace 0 (the kubelet never restarts a container
        of a deleted pod; the Deployment makes another pod, a standby), then the frozen process is SIGKILLed. The
        surviving replica must take over once the Lease expires. Returns the dead pod's name."""
        self._refresh()
        assert self.pod_uid is not None and self.pod_name is not None, "operator not started"
        name, uid = self.pod_name, self.pod_uid
        with contextlib.suppress(ApiException):
            self.archive.append(self._log(name))
        container = self.runtime.running(uid, self.CONTAINER) if self.runtime else None
        pid = self._pid(container) if container else 0
        if pid > 0:
            os.kill(pid, signal.SIGSTOP)
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.killed = (uid, name, self.restarts)
        self.gone = uid
        self.pod_uid = self.pod_name = None
        return name

    def _pid(self, container: str) -> int:
        """The container's main process on the host (crictl inspect), 0 when not reported."""
        assert self.runtime is not None
        result = subprocess.run([self.runtime.crictl, "--runtime-endpoint", self.runtime.endpoint, "inspect", "-o",
                                 "json", container], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return 0
        return int((json.loads(result.stdout).get("info") or {}).get("pid") or 0)

    def _wait_restarted(self) -> None:
        """After kill(): the killed container restarted by the kubelet in the same pod (restartCount went up), or,
        after a deletion, a replacement pod; and every replica running."""
        assert self.killed is not None
        uid, _name, restarts = self.killed

        def restarted() -> list[client.V1Pod] | None:
            pods = self._pods()
            if len(pods) != self.expected_replicas or not all(self._running(p) for p in pods):
                return None
            same = next((p for p in pods if p.metadata.uid == uid), None)
            if self.gone == uid:
                return pods if same is None else None
            status = self._container(same) if same is not None else None
            if same is not None and (status is None or status.restart_count <= restarts):
                return None
            return pods

        # the kubelet's restart back-off doubles with each restart (10 s, 20 s, 40 s ... 5 min; 2 s at most here)
        pods = wait_for(restarted, timeout=360, what=f"the operator container restarted in {self.namespace}",
                        describe=self._describe)
        same = next((p for p in pods if p.metadata.uid == uid), None)
        if same is not None:
            with contextlib.suppress(ApiException):  # the killed instance's whole log
                self.archive.append(self._log(same.metadata.name, previous=True))
        self.killed = None
        self.gone = None

    def wait_leader(self, timeout: float = 120, other_than: str | None = None) -> str:
        """Waits for a leader whose kopf answers (not a standby's probe), other than `other_than` if given; it becomes
        "the operator pod". Returns its name."""
        def led() -> client.V1Pod | None:
            pod = self.leader()
            if pod is None or pod.metadata.name == other_than:
                return None
            body = self._proxy_to(pod.metadata.name, self.HEALTH_PORT, "healthz", timeout=3)
            return pod if body is not None and self.STANDBY_MARK not in body else None

        pod = wait_for(led, timeout=timeout, what=f"a leader of {self.namespace} with kopf running",
                       describe=self._describe)
        self._remember(pod)
        return str(pod.metadata.name)

    def _wait_healthy(self) -> None:
        self.wait_leader(timeout=120)

    def stop(self) -> None:
        """Uninstalls the release (its pods get SIGTERM) and deletes its namespace; the logs are kept."""
        if not self.installed:
            return
        with contextlib.suppress(ApiException):
            for pod in self._pods():
                with contextlib.suppress(ApiException):
                    self.archive.append(self._log(pod.metadata.name))
        self.pod_name = self.pod_uid = None
        (self.log_dir / "operator-pod.log").write_text("".join(self.archive))
        _run(helm_binary(), "uninstall", self.release, "--namespace", self.namespace, "--wait", check=False)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(self.namespace)
        self.installed = False

    def restart(self) -> None:
        """A graceful restart of the leader: its pod deleted (SIGTERM: kopf stops, the Lease is released), a standby
        takes over, the Deployment's next pod runs."""
        self._refresh()
        assert self.pod_name is not None, "operator not started"
        with contextlib.suppress(ApiException):
            self.archive.append(self._log(self.pod_name))
        old = self.pod_name
        self.core.delete_namespaced_pod(old, self.namespace)

        def replaced() -> list[client.V1Pod] | None:
            pods = self._pods()
            ok = len(pods) == self.expected_replicas and all(
                self._running(p) and p.metadata.name != old for p in pods)
            return pods if ok else None

        wait_for(replaced, timeout=180, what="the operator's replicas running again", describe=self._describe)
        self.wait_leader(timeout=120)

    # ---- observation ---------------------------------------------------------------------------------------
    def _proxy_to(self, pod: str, port: int, path: str, timeout: float = 10) -> str | None:
        """GET http://<pod>:<port>/<path> through the API server; None unless it answered 200."""
        try:
            raw = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}", self.namespace, path, _preload_content=False, _request_timeout=timeout)
        except (ApiException, OSError):
            return None
        return str(raw.data.decode()) if raw.status == 200 else None

    def _proxy(self, port: int, path: str, timeout: float = 10) -> str | None:
        """The same, from the leader's pod."""
        self._refresh()
        assert self.pod_name is not None
        return self._proxy_to(self.pod_name, port, path, timeout)

    def metrics(self) -> str:
        """The leader's /metrics."""
        text = self._proxy(self.METRICS_PORT, "metrics")
        if text is None:
            raise AssertionError(f"no /metrics from {self.namespace}/{self.pod_name}")
        return text

    def pod_metrics(self, pod: str) -> str | None:
        """One replica's /metrics (a standby's says dbmig_operator_leader 0)."""
        return self._proxy_to(pod, self.METRICS_PORT, "metrics")

    def metric(self, sample: str, **labels: str) -> float:
        """One sample of the operator's /metrics (e.g. dbmig_migrations_total{result="Succeeded"}); 0 when absent."""
        return parse_metric(self.metrics(), sample, **labels)

    def _log(self, pod: str, previous: bool = False) -> str:
        return str(self.core.read_namespaced_pod_log(pod, self.namespace, container=self.CONTAINER,
                                                     previous=previous, _preload_content=False).data.decode(
                                                         errors="replace"))

    def log_text(self) -> str:
        """The logs of every instance of the operator's container, in every replica: the ended ones, then each running
        pod's."""
        current = []
        with contextlib.suppress(ApiException):
            for pod in self._pods():
                with contextlib.suppress(ApiException):
                    current.append(self._log(pod.metadata.name))
        return "".join(self.archive) + "".join(current)

    def tail(self, lines: int = 60) -> str:
        """The end of the leader's log (else of everything logged)."""
        try:
            self._refresh()
            text = self._log(self.pod_name) if self.pod_name else self.log_text()
            return "\n".join(text.splitlines()[-lines:]) or "(no operator log)"
        except ApiException as error:
            return f"(no operator log: {error.status})"

    def _describe(self) -> str:
        try:
            pods = self.core.list_namespaced_pod(self.namespace).items
            holder = self.holder()
        except ApiException as error:
            return f"(cannot list pods of {self.namespace}: {error.status})"
        return f"leader Lease held by {holder}; " + "; ".join(
            f"{p.metadata.name} {p.status.phase} "
            f"{json.dumps(self.api.sanitize_for_serialization(p.status.container_statuses))}"
            for p in pods) or "(no pod)"


def chart_image() -> str:
    """The chart's default operator image: image.repository at the chart's appVersion."""
    chart = REPO / "charts" / "migration-operator"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values['image']['repository']}:{values['image']['tag'] or app_version}"


def image_pin() -> list[str]:
    """helm flags pinning the chart's image to the local registry's current build (a node may hold an older one
    under the same tag); none elsewhere."""
    digest = registry.pinned_tag(chart_image()).partition("@")[2]
    return ["--set-string", f"image.digest={digest}"] if digest else []


def helm_binary() -> str:
    """helm beside the local cluster's kubectl, else PATH's."""
    local = Path(kubectl_binary()).parent / "helm"
    return str(local) if local.exists() else "helm"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}) after {time.monotonic() - started:.0f}s:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result
