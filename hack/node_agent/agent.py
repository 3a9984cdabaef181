"""The agent: Node registration and heartbeats, the pod watch, PV recycling and events."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import runtime
from .images import ImageTable, default_variables
from .kube import MERGE, ApiError, Kube
from .state import StateDir
from .worker import PodWorker, now_iso

log = logging.getLogger(__name__)
Obj = dict[str, Any]

AGENT_VERSION = "0.1.0"
HEARTBEAT_SECONDS = 10
LEASE_SECONDS = 40
RELIST_SECONDS = 300
PV_LABEL = "node-agent.migration-operator.local/managed"
STORAGE_CLASS = "local"
# Taints the node lifecycle controller (or a registration race) may leave; gone once we are Ready.
STALE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def k8s_version() -> str:
    """The Kubernetes version the cluster is built from (hack/versions.sh), for nodeInfo."""
    v = os.environ.get("K8S_VERSION")
    if not v:
        m = re.search(r"K8S_VERSION:-(v[0-9.]+)", _read(str(Path(runtime.HACK_DIR) / "versions.sh")))
        v = m.group(1) if m else "v0.0.0"
    return v


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


class Agent:
    def __init__(
        self,
        kube: Kube,
        state_dir: str,
        node_name: str,
        images_path: str,
        host_ip: str = "127.0.0.1",
        kubelet_port: int = 10250,
        backoff_base: float = 10,
        backoff_max: float = 300,
    ) -> None:
        self.kube = kube
        self.state = StateDir(state_dir)
        self.node_name = node_name
        self.host_ip = host_ip
        self.kubelet_port = kubelet_port
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.images_path = Path(images_path)
        self._images: ImageTable = ImageTable.load(self.images_path)
        self._images_mtime = self.images_path.stat().st_mtime
        self._images_lock = threading.Lock()
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stop = threading.Event()
        self._events_sent: dict[tuple[str, str, str, str], float] = {}
        self._events_lock = threading.Lock()
        self._transition: dict[str, str] = {}
        self._taints_forbidden = False

    # -- images ------------------------------------------------------------------------------------

    def keep_paths(self) -> list[str]:
        """Host paths every container must see as on the host, whatever it mounts over them: the checkout
        and the cache the image table points into, and the state dir where the shim writes exit codes."""
        variables = default_variables(self.images_path)
        return [variables["REPO"], variables["MO_CACHE"], str(self.state.root.resolve())]

    def images(self) -> ImageTable:
        """The image table, re-read when the file changes (edit it without restarting the agent)."""
        with self._images_lock:
            try:
                mtime = self.images_path.stat().st_mtime
                if mtime != self._images_mtime:
                    self._images = ImageTable.load(self.images_path)
                    self._images_mtime = mtime
                    log.info("reloaded %s", self.images_path)
            except (OSError, ValueError) as e:
                log.warning("keeping the previous image table: %s", e)
            return self._images

    # -- events ------------------------------------------------------------------------------------

    def event(self, pod: Obj, type_: str, reason: str, message: str, container: str | None = None) -> None:
        """Record a core/v1 Event on the pod, at most once a minute per (pod, container, reason, message)."""
        meta = pod["metadata"]
        key = (meta["uid"], container or "", reason, message)
        with self._events_lock:
            if time.time() - self._events_sent.get(key, 0) < 60:
                return
            self._events_sent[key] = time.time()
            if len(self._events_sent) > 5000:
                self._events_sent.clear()
        ts = now_iso()
        digest = hashlib.sha1(f"{key}{time.time()}".encode()).hexdigest()[:10]
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "fieldPath": f"spec.containers{{{container}}}" if container else None,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except Exception as e:  # events are best effort
            log.debug("event not recorded: %s", e)

    # -- node ----------------------------------------------------------------------------------------

    def _conditions(self) -> list[Obj]:
        hb = now_iso()
        spec = [
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "node-agent has sufficient memory available",
            ),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "node-agent has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "node-agent has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "node-agent is posting ready status"),
        ]
        out = []
        for type_, status, reason, message in spec:
            since = self._transition.setdefault(type_, hb)
            out.append(
                {
                    "type": type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": hb,
                    "lastTransitionTime": since,
                }
            )
        return out

    def _node_status(self) -> Obj:
        resources = {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        machine_id = _read("/etc/machine-id", "unknown")
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": self._conditions(),
            "addresses": [{"type": "InternalIP", "address": self.host_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": _read("/sys/class/dmi/id/product_uuid", machine_id),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": os_image(),
                "containerRuntimeVersion": f"process://node-agent-{AGENT_VERSION}",
                # Semver build metadata: parses as the cluster's version, yet says who is talking.
                "kubeletVersion": f"{k8s_version()}+node-agent",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
        }

    def register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch(),
            "node.kubernetes.io/instance-type": "node-agent",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "status": self._node_status(),
        }
        try:
            self.kube.create("/api/v1/nodes", body)
            log.info("registered node %s", self.node_name)
        except ApiError as e:
            if e.status != 409:
                raise
            self.kube.patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": labels}})
            log.info("node %s already registered", self.node_name)
        self.heartbeat()

    def heartbeat(self) -> None:
        node = self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        taints = (node.get("spec") or {}).get("taints") or []
        keep = [t for t in taints if t.get("key") not in STALE_TAINTS]
        if len(keep) != len(taints) and not self._taints_forbidden:
            try:
                self.kube.patch(f"/api/v1/nodes/{self.node_name}", {"spec": {"taints": keep or None}}, MERGE)
                log.info("removed stale taints %s", [t["key"] for t in taints if t not in keep])
            except ApiError as e:
                # NodeRestriction forbids a node to touch its own taints; the node lifecycle
                # controller then removes them itself once it sees Ready.
                self._taints_forbidden = True
                log.info("cannot remove stale taints myself (%s); the node lifecycle controller will", e)
        self.renew_lease(node["metadata"]["uid"])

    def renew_lease(self, node_uid: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        lease = self.kube.get(path)
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(),
        }
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node_uid}
                    ],
                },
                "spec": spec,
            }
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)
        else:
            lease["spec"] = {**(lease.get("spec") or {}), **spec}
            self.kube.put(path, lease)

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as e:
                log.warning("node heartbeat failed: %s", e)

    # -- PV recycler ------------------------------------------------------------------------------

    def recycle_pvs(self) -> None:
        """Our PVs are Retain (no deleter exists for no-provisioner); a Released one is wiped and made
        Available again, so tests that create and delete PVCs never run out."""
        pvs = self.kube.request("GET", "/api/v1/persistentvolumes", params={"labelSelector": PV_LABEL})
        for pv in pvs.get("items") or []:
            if (pv.get("status") or {}).get("phase") != "Released":
                continue
            spec = pv.get("spec") or {}
            path = (spec.get("local") or {}).get("path") or (spec.get("hostPath") or {}).get("path")
            name = pv["metadata"]["name"]
            if path and Path(path).is_dir() and path != "/":
                for entry in Path(path).iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            self.kube.patch(f"/api/v1/persistentvolumes/{name}", {"spec": {"claimRef": None}}, MERGE)
            log.info("recycled released persistentvolume %s (%s wiped)", name, path)

    def _pv_loop(self) -> None:
        while not self.stop.wait(10):
            try:
                self.recycle_pvs()
            except Exception as e:
                log.warning("PV recycling failed: %s", e)

    # -- pods ------------------------------------------------------------------------------------------

    def _upsert(self, pod: Obj, records: dict[str, Any] | None = None) -> None:
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            w = self.workers.get(uid)
            if w is not None:
                w.update(pod)
                return
            record = (records or {}).get(uid)
            if record is None:
                record = next((r for r in self.state.load_all() if r.uid == uid), None)
            w = PodWorker(self, pod, record)
            self.workers[uid] = w
        w.start()

    def _gone(self, uid: str) -> None:
        with self.workers_lock:
            w = self.workers.pop(uid, None)
        if w is not None:
            w.mark_gone()

    def _relist(self) -> str:
        lst = self.kube.request(
            "GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.node_name}"}
        )
        records = {r.uid: r for r in self.state.load_all()}
        seen = set()
        for pod in lst.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._upsert(pod, records)
        with self.workers_lock:
            stale = [uid for uid in self.workers if uid not in seen]
        for uid in stale:
            self._gone(uid)
        # Records of pods that no longer exist and have no worker (deleted while the agent was down).
        for uid, rec in records.items():
            if uid not in seen:
                log.info("pod %s/%s no longer exists: stopping its processes", rec.namespace, rec.name)
                w = PodWorker(
                    self, {"metadata": {"uid": uid, "namespace": rec.namespace, "name": rec.name}}, rec
                )
                w.mark_gone()
                w.start()
        return str(lst["metadata"]["resourceVersion"])

    def _pod_loop(self) -> None:
        while not self.stop.is_set():
            try:
                rv = self._relist()
                listed = time.time()
                while not self.stop.is_set() and time.time() - listed < RELIST_SECONDS:
                    params = {"fieldSelector": f"spec.nodeName={self.node_name}", "resourceVersion": rv}
                    expired = False
                    for ev in self.kube.watch("/api/v1/pods", params, timeout_seconds=60):
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            expired = obj.get("code") == 410
                            log.info("pod watch error: %s", obj.get("message"))
                            break
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._upsert(obj)
                        elif ev["type"] == "DELETED":
                            self._gone(obj["metadata"]["uid"])
                    if expired:
                        break
            except Exception as e:
                log.warning("pod watch failed (retrying): %s", e)
                self.stop.wait(2)

    # -- run -------------------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.register_node()
                break
            except Exception as e:
                log.warning("cannot register node %s yet: %s", self.node_name, e)
                self.stop.wait(3)
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._pv_loop, "pv-recycler")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self._pod_loop()
