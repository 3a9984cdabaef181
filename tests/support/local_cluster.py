"""The local cluster of hack/cluster.sh as seen by tests: is it the one, and the rig-only helpers that reach
below the API server (the container runtime through crictl, the kubelet's process).

Nothing here names a state directory: the node says where its runtime is (the kubelet's configz gives
`containerRuntimeEndpoint`, a unix socket under `<state>/node/containerd/`), and the state dir's `pids/` says
which process is the kubelet. A cluster whose node is not ours (kind, a cloud) yields a reason instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
MO_CACHE = Path(
    os.environ.get("MO_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migration-operator"
)
NODE_NAME = "local-node"
RUNTIME_PREFIX = "containerd://"
UNIX_SCHEME = "unix://"


@dataclass(frozen=True)
class LocalNode:
    """The parts of the local node a test may touch directly."""

    state: Path  # the cluster's state dir (kubeconfig, pids/, logs/, node/)
    runtime_endpoint: str  # unix://.../containerd.sock, as the kubelet uses it
    crictl: Path

    @property
    def kubelet_pid_file(self) -> Path:
        return self.state / "pids" / "kubelet"


def _kubelet_config(api: client.ApiClient, node: str) -> dict[str, Any]:
    """The running kubelet's configuration, through the API server's node proxy (GET /configz)."""
    raw = client.CoreV1Api(api).connect_get_node_proxy_with_path(node, "configz", _preload_content=False)
    config: dict[str, Any] = json.loads(raw.data)["kubeletconfig"]
    return config


def bin_dir() -> Path:
    """The built tools' directory (kubectl, crictl, kubelet): what hack/versions.sh says."""
    out = subprocess.run(
        ["bash", "-c", f"source {REPO}/hack/versions.sh && echo $BIN_DIR"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    return Path(out)


def find_local_node(api: client.ApiClient) -> LocalNode | str:
    try:
        node = client.CoreV1Api(api).read_node(NODE_NAME)
    except ApiException as e:
        if e.status == 404:
            return f"no Node {NODE_NAME}: not the local cluster of hack/cluster.sh"
        raise
    runtime = node.status.node_info.container_runtime_version if node.status.node_info else ""
    if not runtime.startswith(RUNTIME_PREFIX):
        return f"Node {NODE_NAME} runs {runtime!r}, not containerd: not the local cluster's real node"
    try:
        endpoint = str(_kubelet_config(api, NODE_NAME).get("containerRuntimeEndpoint", ""))
    except (ApiException, ValueError, KeyError) as e:
        return f"cannot read the kubelet's configz of {NODE_NAME}: {e}"
    socket = Path(endpoint.removeprefix(UNIX_SCHEME))
    if not endpoint.startswith(UNIX_SCHEME) or not socket.is_socket():
        return f"the kubelet's runtime endpoint {endpoint!r} is not a socket on this host"
    # <state>/node/containerd/containerd.sock (hack/node.sh)
    state = socket.parents[2]
    if not state.is_relative_to(MO_CACHE) or not (state / "pids" / "kubelet").is_file():
        return f"the runtime socket {socket} is not under a state dir of hack/cluster.sh in {MO_CACHE}"
    crictl = bin_dir() / "crictl"
    if not crictl.is_file():
        return f"no crictl at {crictl} (hack/build-k8s.sh builds it)"
    return LocalNode(state=state, runtime_endpoint=endpoint, crictl=crictl)


def not_local_reason(api: client.ApiClient) -> str | None:
    """None on the local cluster (Node local-node, run by containerd whose socket is in a state dir of
    hack/cluster.sh on this host), else why the cluster is another one."""
    found = find_local_node(api)
    return found if isinstance(found, str) else None


def local_node(api: client.ApiClient) -> LocalNode:
    found = find_local_node(api)
    if isinstance(found, str):
        raise RuntimeError(found)
    return found


# -- the container runtime ------------------------------------------------------------------------


def crictl(node: LocalNode, *args: str, timeout: float = 60) -> str:
    res = subprocess.run(
        [str(node.crictl), "--runtime-endpoint", node.runtime_endpoint, "--timeout", "30s", *args],
        capture_output=True, text=True, timeout=timeout,
    )
    if res.returncode != 0:
        raise RuntimeError(f"crictl {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def runtime_id(container_id: str | None) -> str:
    """The runtime's id of a container from its status' containerID (containerd://<id>)."""
    assert container_id and container_id.startswith(RUNTIME_PREFIX), container_id
    return container_id.removeprefix(RUNTIME_PREFIX)


def container_host_pid(node: LocalNode, container_id: str | None) -> int:
    """The host pid of a running container's init process (crictl inspect: info.pid)."""
    info = json.loads(crictl(node, "inspect", runtime_id(container_id)))
    pid = int(info["info"]["pid"])
    assert pid > 0, f"container {container_id} has no process: {info['status']['state']}"
    return pid


def kill_container(node: LocalNode, container_id: str | None) -> None:
    """SIGKILL a container through the runtime (CRI StopContainer with no grace period), as a crash would end it:
    the kubelet sees it exit 137 and applies the pod's restartPolicy."""
    crictl(node, "stop", "--timeout", "0", runtime_id(container_id))


# -- the kubelet ------------------------------------------------------------------------------------


def component_pid(node: LocalNode, name: str) -> int | None:
    """The live pid of a host process hack/cluster.sh started (its pid file `<state>/pids/<name>`, checked against the
    process's command line so a recycled pid is not taken for it), or None."""
    try:
        pid = int((node.state / "pids" / name).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if name.encode() in cmdline and process_exists(pid) else None


def kubelet_pid(node: LocalNode) -> int | None:
    return component_pid(node, "kubelet")


def kill_kubelet(node: LocalNode, timeout: float = 30) -> int:
    """SIGKILL the kubelet (its pid file under the state dir); returns the pid once it is gone (every thread of it:
    its sockets and files closed)."""
    pid = kubelet_pid(node)
    if pid is None:
        raise RuntimeError(f"the kubelet is not running ({node.kubelet_pid_file})")
    os.kill(pid, signal.SIGKILL)
    wait_process_gone(pid, timeout)
    return pid


def _cluster_env(node: LocalNode) -> dict[str, str]:
    """The environment under which `hack/cluster.sh` manages this state dir: MO_NODE as set, else the value for
    which `hack/cluster.sh kubeconfig` names this state dir (the default first)."""
    candidates = [os.environ.get("MO_NODE"), None, "real"]
    for mo_node in candidates:
        env = {k: v for k, v in os.environ.items() if k != "MO_NODE"}
        if mo_node:
            env["MO_NODE"] = mo_node
        out = subprocess.run(
            ["bash", str(REPO / "hack" / "cluster.sh"), "kubeconfig"], capture_output=True, text=True, env=env,
            timeout=30,
        ).stdout.strip()
        if out and Path(out).parent == node.state:
            return env
    raise RuntimeError(f"no MO_NODE setting makes hack/cluster.sh manage {node.state}")


def cluster_up(node: LocalNode) -> None:
    """`hack/cluster.sh up` for this node's cluster: idempotent, starts only what is not running (the kubelet after
    kill_kubelet) and waits until the Node is Ready."""
    res = subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "up"], capture_output=True, text=True, timeout=600,
        env=_cluster_env(node),
    )
    if res.returncode != 0:
        raise RuntimeError(f"hack/cluster.sh up failed ({res.returncode}):\n{res.stderr[-3000:]}")


def restart_kubelet(node: LocalNode) -> tuple[int, int]:
    """SIGKILL the kubelet and start it again the way the cluster does; returns (old pid, new pid)."""
    old = kill_kubelet(node)
    cluster_up(node)
    new = kubelet_pid(node)
    if new is None or new == old:
        raise RuntimeError(f"hack/cluster.sh up did not start a new kubelet (old pid {old}, now {new})")
    return old, new


# -- processes --------------------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """Whether every thread of the process has exited. A multi-threaded process whose main thread has exited shows
    as a zombie while its other threads still run (and hold its sockets): process_exists says no already, this waits
    for the last thread (only the zombie leader left in /proc/<pid>/task, or nothing at all)."""
    if not process_exists(pid):
        try:
            return len(os.listdir(f"/proc/{pid}/task")) <= 1
        except OSError:
            return True
    return False


def wait_process_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"process {pid} still has live threads {timeout:.0f}s after SIGKILL")
        time.sleep(0.05)  # polling the kernel's process table, no event to wait on


def process_exists(pid: int) -> bool:
    """Whether /proc/<pid> is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
