"""The container runtime of the local node, for what the API cannot do: SIGKILL one container of a pod (what an OOM
kill or a crash looks like) and let the kubelet restart it.

Only on the local cluster of hack/cluster.sh with a real node: its kubelet's configuration sits beside the kubeconfig
(`<state>/node/kubelet.yaml`, whose containerRuntimeEndpoint is containerd's socket) and crictl beside kubectl.
Elsewhere (kind, a remote cluster) `LocalRuntime.find()` returns None and callers fall back to the API.
MO_CRI_ENDPOINT and MO_CRICTL override both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.kube import kubectl_binary
from tests.support.wait import wait_for


def _runtime_endpoint() -> str | None:
    if os.environ.get("MO_CRI_ENDPOINT"):
        return os.environ["MO_CRI_ENDPOINT"]
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return None
    kubelet_config = Path(kubeconfig).parent / "node" / "kubelet.yaml"
    try:
        endpoint = yaml.safe_load(kubelet_config.read_text()).get("containerRuntimeEndpoint")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(endpoint, str) or not endpoint.startswith("unix://"):
        return None
    return endpoint if Path(endpoint.removeprefix("unix://")).is_socket() else None


def _crictl() -> str | None:
    if os.environ.get("MO_CRICTL"):
        return os.environ["MO_CRICTL"]
    beside = Path(kubectl_binary()).parent / "crictl"
    return str(beside) if beside.exists() else shutil.which("crictl")


@dataclass(frozen=True)
class LocalRuntime:
    crictl: str
    endpoint: str

    @classmethod
    def find(cls) -> LocalRuntime | None:
        """The local node's runtime, when this machine runs the node of $KUBECONFIG's cluster; else None."""
        endpoint, crictl = _runtime_endpoint(), _crictl()
        if endpoint is None or crictl is None:
            return None
        return cls(crictl, endpoint)

    def _run(self, *args: str) -> str:
        result = subprocess.run([self.crictl, "--runtime-endpoint", self.endpoint, *args],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def containers(self, pod_uid: str, name: str) -> list[dict[str, Any]]:
        """Every instance of container `name` of the pod with this UID, running or exited, newest first."""
        found = json.loads(self._run("ps", "-a", "-o", "json", "--label", f"io.kubernetes.pod.uid={pod_uid}",
                                     "--name", f"^{name}$"))
        containers = [c for c in found.get("containers") or [] if c["metadata"]["name"] == name]
        return sorted(containers, key=lambda c: int(c.get("createdAt") or 0), reverse=True)

    def running(self, pod_uid: str, name: str) -> str | None:
        """The id of the running instance of container `name` of the pod, if one runs."""
        return next((c["id"] for c in self.containers(pod_uid, name) if c["state"] == "CONTAINER_RUNNING"), None)

    def state(self, container_id: str) -> str:
        return str(json.loads(self._run("inspect", "-o", "json", container_id))["status"]["state"])

    def sigkill(self, container_id: str) -> None:
        """SIGKILL of the container's main process on the host (its pid from the runtime); `crictl stop --timeout 0`
        (also a SIGKILL, sent by the runtime) when the pid is not reported. Returns once the runtime saw it exit."""
        info = json.loads(self._run("inspect", "-o", "json", container_id))
        pid = int((info.get("info") or {}).get("pid") or 0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        else:
            self._run("stop", "--timeout", "0", container_id)
        wait_for(lambda: self.state(container_id) == "CONTAINER_EXITED", timeout=30,
                 what=f"container {container_id[:13]} exited after SIGKILL")
