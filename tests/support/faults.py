"""Fault injectors for the fault suite (tests/faults/): each one breaks one moving part of the local cluster the way it
breaks in production, and puts the machine back even when the test around it fails (firewall rules removed, mounts
unmounted, processes started again).

- `kill_operator`: SIGKILL of the operator's container (OperatorPod.kill: with several replicas, the leader's), the
  kubelet restarts it;
- `restart_apiserver`: SIGKILL of the kube-apiserver host process, started again with its own command line, /readyz
  waited on (hack/cluster.sh up if that fails);
- `kill_postgres`: SIGKILL of a PostgreSQL pod's container (the kubelet restarts it, crash recovery runs), waited
  on until it accepts connections again;
- `restart_kubelet`: SIGKILL of the kubelet, started again with its own command line, the Node's next Ready
  heartbeat waited on (hack/cluster.sh up if that fails);
- `small_backup_volume`: a static `local` PersistentVolume on a tiny tmpfs and a claim bound to it, for a backup
  that cannot fit;
- `database_unreachable`: an iptables chain of its own (MO-FAULT, jumped from FORWARD: pod-to-pod traffic crosses the
  bridge, and Service traffic is DNATed to the pod's address before FORWARD) dropping the given pods' packets to the
  database pod;
- `scale_app`: someone else (another field manager) scales the app Deployment.

The host-level ones need the local cluster of hack/cluster.sh on this machine, as root: `host_fault_reason` says
why not otherwise (the suite skips with it).

`JobWatch` records every Job UID seen in a namespace (a watch, relisted after each interruption such as an API
server restart), so "exactly one Job per step name ever existed" is checked against what really happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.support import local_cluster, postgres
from tests.support.local_cluster import LocalNode
from tests.support.operator import Operator
from tests.support.runtime import LocalRuntime
from tests.support.wait import WaitAborted, wait_for

CHAIN = "MO-FAULT"
FAULT_MANAGER = "fault-suite-someone-else"


def host_fault_reason(api: client.ApiClient) -> str | None:
    """None when this machine runs the cluster's node and may change it (root), else why the host-level injectors
    (API server, kubelet, firewall, mounts) cannot run here."""
    reason = local_cluster.not_local_reason(api)
    if reason is not None:
        return reason
    if os.geteuid() != 0:
        return "the host-level faults (iptables, mounts, control-plane processes) need root"
    return None


# ---------------------------------------------------------------------------------------------- Job UIDs
@dataclass
class JobWatch:
    """Every Job UID seen in a namespace while it runs: a watch, relisted whenever the watch ends or fails (an API
    server restart ends it), so a Job deleted and created again under the same name shows two UIDs."""

    api: client.ApiClient
    namespace: str
    uids: dict[str, set[str]] = field(default_factory=dict)
    interruptions: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> JobWatch:
        self._relist()  # what exists before the run, synchronously
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"jobwatch-{self.namespace}")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            self._relist()

    def _add(self, job: client.V1Job) -> None:
        with self._lock:
            self.uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)

    def _relist(self) -> str:
        jobs = client.BatchV1Api(self.api).list_namespaced_job(self.namespace, _request_timeout=10)
        for job in jobs.items:
            self._add(job)
        return str(jobs.metadata.resource_version)

    def _run(self) -> None:
        batch = client.BatchV1Api(self.api)
        while not self._stop.is_set():
            try:
                version = self._relist()
                stream = watch.Watch()
                for event in stream.stream(batch.list_namespaced_job, self.namespace, resource_version=version,
                                           timeout_seconds=5, _request_timeout=15):
                    self._add(event["object"])
                    if self._stop.is_set():
                        stream.stop()
            except Exception:  # the API server went away (the fault itself) or a 410: relist and watch again
                self.interruptions += 1
                self._stop.wait(0.5)  # retry pacing while the API server is down, not synchronisation

    def snapshot(self) -> dict[str, set[str]]:
        with self._lock:
            return {name: set(uids) for name, uids in self.uids.items()}

    def duplicates(self) -> dict[str, set[str]]:
        """Job names seen with more than one UID."""
        return {name: uids for name, uids in self.snapshot().items() if len(uids) > 1}


# ---------------------------------------------------------------------------------------------- 1. the operator
def kill_operator(operator: Operator) -> None:
    """SIGKILL of the operator's container (the leader's, when it runs several replicas) and wait until an operator
    answers again (the kubelet restarted the container, or a standby took over)."""
    operator.kill()
    operator.start()


# ---------------------------------------------------------------------------------------------- 2. the API server
APISERVER = "kube-apiserver"
KUBELET = "kubelet"


def _pid(node: LocalNode, name: str) -> int | None:
    return local_cluster.component_pid(node, name)


def _readyz(api: client.ApiClient) -> bool:
    """Whether the API server answers /readyz with 200 (any error while it is down counts as no)."""
    try:
        response = api.call_api("GET", f"{api.configuration.host}/readyz", _request_timeout=3)
    except Exception:  # connection refused, reset, TLS errors, 500 while it starts: not ready
        return False
    return int(getattr(response, "status", 0)) == 200


def _listen_address(argv: list[str]) -> tuple[str, int]:
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    return flags.get("bind-address", "127.0.0.1"), int(flags.get("secure-port", "6443"))


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) != 0


def _relaunch(node: LocalNode, name: str, ready: Callable[[], bool], what: str) -> float:
    """SIGKILL the cluster's host process `name` (pid file under the state dir) and start it again with the same
    command line, the way hack/cluster.sh starts it (own session, log and pid file under the state dir), once every
    thread of the old one is gone; returns the seconds until `ready()`. If that fails, `hack/cluster.sh up` brings
    it back before this raises."""
    pid = _pid(node, name)
    if pid is None:
        raise RuntimeError(f"{name} is not running (pid file under {node.state / 'pids'})")
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)
        local_cluster.wait_process_gone(pid)
        if name == APISERVER:
            host, port = _listen_address(argv)
            wait_for(lambda: _port_free(host, port), timeout=30, what=f"{host}:{port} free after the kill")
        with (node.state / "logs" / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        _STARTED.append(process)  # reaped when it ends (a zombie otherwise looks alive to `kill -0`)
        (node.state / "pids" / name).write_text(f"{process.pid}\n")

        def up() -> bool:
            if process.poll() is not None:
                raise WaitAborted(f"{name} exited ({process.returncode}) after the restart: see its log")
            return ready()

        wait_for(up, timeout=120, what=what, interval=0.2)
    finally:
        if _pid(node, name) is None or not ready():
            local_cluster.cluster_up(node)
    return time.monotonic() - started


def restart_apiserver(api: client.ApiClient, node: LocalNode) -> float:
    """SIGKILL the API server (a crash: no graceful shutdown of the watches) and start it again (its port free
    first); returns the seconds it was not ready."""
    return _relaunch(node, APISERVER, lambda: _readyz(api), f"{APISERVER} /readyz after the restart")


# processes this module started (the API server after a restart): polled so that none stays a zombie
_STARTED: list[subprocess.Popen[bytes]] = []


# ---------------------------------------------------------------------------------------------- 3. PostgreSQL
def kill_postgres(api: client.ApiClient, namespace: str, pod: str, probe: dict[str, Any]) -> None:
    """SIGKILL of the PostgreSQL container of `pod` (postmaster and every backend die with it), then wait until it
    runs again and accepts a connection made with `probe` (postgres.connect keyword arguments). Elsewhere than on
    the local node: the pod deleted with no grace (its StatefulSet makes it again)."""
    core = client.CoreV1Api(api)
    before = core.read_namespaced_pod(pod, namespace)
    runtime = LocalRuntime.find()
    container = runtime.running(before.metadata.uid, "postgres") if runtime else None
    if runtime is not None and container is not None:
        runtime.sigkill(container)
    else:
        core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)

    postgres.wait_answering(180, what=f"PostgreSQL {namespace}/{pod} accepting connections after the kill",
                            interval=0.5, **probe)


# ---------------------------------------------------------------------------------------------- 4. the kubelet
def _node_heartbeat(api: client.ApiClient, node: str) -> tuple[bool, Any]:
    conditions = client.CoreV1Api(api).read_node(node, _request_timeout=5).status.conditions or []
    ready = next((c for c in conditions if c.type == "Ready"), None)
    return (ready is not None and ready.status == "True"), (ready.last_heartbeat_time if ready else None)


def restart_kubelet(api: client.ApiClient, node: LocalNode) -> float:
    """SIGKILL the kubelet (the running pods' containers live on: containerd keeps them) and start it again with
    its command line; returns the seconds until the Node is Ready with a heartbeat newer than the kill."""
    _, before = _node_heartbeat(api, local_cluster.NODE_NAME)

    def ready() -> bool:
        ok, beat = _node_heartbeat(api, local_cluster.NODE_NAME)
        return ok and beat is not None and (before is None or beat > before)

    return _relaunch(node, KUBELET, ready, "the Node Ready again after the kubelet restart")


# ---------------------------------------------------------------------------------------------- 5. a full volume
def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


@contextlib.contextmanager
def small_backup_volume(api: client.ApiClient, namespace: str, claim: str, *, size: str = "16k",
                        node: str = local_cluster.NODE_NAME) -> Iterator[str]:
    """A claim `claim` in `namespace` bound to a static `local` PersistentVolume on a tmpfs of `size` mounted for it
    (the local-path provisioner does not enforce sizes; a tmpfs does: ENOSPC). Yields the PV's name. Afterwards the
    claim and the PV are deleted (once no pod uses them) and the tmpfs is unmounted and removed."""
    core = client.CoreV1Api(api)
    name = f"mo-fault-small-{namespace}"[:63]
    path = Path(local_cluster.MO_CACHE) / "faults" / name
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", f"mo-fault-{namespace}", str(path))
    try:
        core.create_persistent_volume(client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name, labels={"dbops.io/fault": "small-volume"}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Mi"}, access_modes=["ReadWriteOnce"],
                persistent_volume_reclaim_policy="Retain", storage_class_name="",
                local=client.V1LocalVolumeSource(path=str(path)),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=claim),
                node_affinity=client.V1VolumeNodeAffinity(required=client.V1NodeSelector(node_selector_terms=[
                    client.V1NodeSelectorTerm(match_expressions=[client.V1NodeSelectorRequirement(
                        key="kubernetes.io/hostname", operator="In", values=[node])])])),
            )))
        core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=claim),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"], storage_class_name="", volume_name=name,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}))))
        yield name
    finally:
        _release_small_volume(core, namespace, claim, name, path)


def _release_small_volume(core: client.CoreV1Api, namespace: str, claim: str, pv: str, path: Path) -> None:
    with contextlib.suppress(ApiException):
        # the pods that mounted it (the backup Job's) are gone or finished before the claim goes
        for pod in core.list_namespaced_pod(namespace).items:
            volumes = pod.spec.volumes or []
            if any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == claim for v in volumes):
                core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        core.delete_namespaced_persistent_volume_claim(claim, namespace)

    def claim_gone() -> bool:
        try:
            core.read_namespaced_persistent_volume_claim(claim, namespace)
            return False
        except ApiException as error:
            return bool(error.status == 404)

    with contextlib.suppress(AssertionError):
        wait_for(claim_gone, timeout=90, what=f"claim {namespace}/{claim} deleted")
    with contextlib.suppress(ApiException):
        core.delete_persistent_volume(pv)
    # the kubelet unmounts the pod's bind mount when the pod goes; if one is left, detach lazily
    if _mounted(path) and _run("umount", str(path), check=False).returncode != 0:
        _run("umount", "-l", str(path))
    with contextlib.suppress(OSError):
        path.rmdir()


# ---------------------------------------------------------------------------------------------- 6. the firewall
def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("iptables", "-w", "5", *args, check=check)


def _remove_chain() -> None:
    while _iptables("-D", "FORWARD", "-j", CHAIN, check=False).returncode == 0:
        pass
    _iptables("-F", CHAIN, check=False)
    _iptables("-X", CHAIN, check=False)


def firewall_clean() -> bool:
    """Whether no rule of this module is left (neither the chain nor a jump to it)."""
    no_chain = _iptables("-S", CHAIN, check=False).returncode != 0
    return no_chain and f"-j {CHAIN}" not in _iptables("-S", "FORWARD").stdout


@contextlib.contextmanager
def database_unreachable(sources: list[str], database_ip: str, port: int) -> Iterator[None]:
    """While inside: every packet from the pods at `sources` to the database pod at `database_ip:port` dropped (the
    Service's ClusterIP is DNATed to that address before FORWARD; the bridge's traffic goes through iptables,
    bridge-nf-call-iptables=1), in both directions, so established connections hang as on a cut cable. The chain
    and its jump are removed on the way out, whatever happened."""
    if not sources:
        raise ValueError("no source address to cut off")
    _remove_chain()  # a chain left by a killed run of the suite
    try:
        _iptables("-N", CHAIN)
        for source in sources:
            _iptables("-A", CHAIN, "-s", source, "-d", database_ip, "-p", "tcp", "--dport", str(port), "-j", "DROP")
            _iptables("-A", CHAIN, "-s", database_ip, "-d", source, "-p", "tcp", "--sport", str(port), "-j", "DROP")
        _iptables("-I", "FORWARD", "1", "-j", CHAIN)
        yield
    finally:
        _remove_chain()


# ---------------------------------------------------------------------------------------------- 7. someone else
def scale_app(api: client.ApiClient, namespace: str, deployment: str, replicas: int) -> None:
    """`kubectl scale` by someone else: the scale subresource, under a field manager that is not the operator's."""
    client.AppsV1Api(api).patch_namespaced_deployment_scale(
        deployment, namespace, {"spec": {"replicas": replicas}}, field_manager=FAULT_MANAGER)
