"""The local cluster of hack/cluster.sh as seen by tests: is it the one, its node agent, pod processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
MO_CACHE = Path(
    os.environ.get("MO_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migration-operator"
)
STATE = MO_CACHE / "cluster"
AGENT_PID_FILE = STATE / "pids" / "node-agent"
NODE_NAME = "local-node"
# What the node agent sets on its Node (hack/node_agent/agent.py), so kind's nodes never qualify.
INSTANCE_TYPE = "node-agent"
RUNTIME_PREFIX = "process://node-agent"


def not_local_reason(api: client.ApiClient) -> str | None:
    """None on the local cluster (the node agent's Node exists), else why the cluster is another one."""
    try:
        node = client.CoreV1Api(api).read_node(NODE_NAME)
    except ApiException as e:
        if e.status == 404:
            return f"no Node {NODE_NAME}: not the local cluster of hack/cluster.sh"
        raise
    labels = node.metadata.labels or {}
    runtime = node.status.node_info.container_runtime_version if node.status.node_info else ""
    if labels.get("node.kubernetes.io/instance-type") != INSTANCE_TYPE or not runtime.startswith(RUNTIME_PREFIX):
        return f"Node {NODE_NAME} is not run by hack/node_agent (runtime {runtime!r}, labels {labels})"
    return None


def agent_pid() -> int | None:
    try:
        pid = int(AGENT_PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_exists(pid) else None


def restart_node_agent() -> None:
    """Start the node agent exactly as the cluster does: `hack/cluster.sh up` is idempotent and only starts
    what is not running, then waits until the Node is Ready."""
    res = subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "up"], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"hack/cluster.sh up failed ({res.returncode}):\n{res.stderr[-3000:]}")


def pid_of(container_id: str | None) -> int:
    """The host pid of a container: the node agent reports containerID process://<pid>."""
    assert container_id and container_id.startswith("process://"), container_id
    return int(container_id.removeprefix("process://"))


def process_exists(pid: int) -> bool:
    """Whether /proc/<pid> is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_gone(pid: int) -> bool:
    """Whether /proc/<pid> has disappeared (exited and reaped)."""
    return not Path(f"/proc/{pid}").exists()
