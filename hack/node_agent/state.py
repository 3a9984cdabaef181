"""On-disk state: per-pod records and the pod IP allocator, so an agent restart loses nothing.

Layout under ``--state-dir``::

    ips.json                                   {"<pod uid>": "127.0.1.N", ...}
    pods/<ns>_<pod>_<uid>/state.json           PodRecord
    pods/<ns>_<pod>_<uid>/volumes/<volume>/    materialised ConfigMap/Secret/emptyDir/... volumes
    pods/<ns>_<pod>_<uid>/<container>/N.log    stdout+stderr of run N (current.log -> latest)
    pods/<ns>_<pod>_<uid>/<container>/N.exit   written by the shim when run N ends
    pods/<ns>_<pod>_<uid>/<container>/termination-log

Every write goes to a temporary file and is renamed over the old one, so a crash never leaves a
half-written record.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IP_PREFIX = "127.0.1."
IP_FIRST, IP_LAST = 1, 254


def atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid it names one process
    for good, which guards against pid reuse. ``None`` when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(")") + 2 :].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def process_alive(pid: int | None, start_time: int | None) -> bool:
    if not pid:
        return False
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


@dataclass
class Termination:
    exit_code: int
    reason: str
    message: str
    started_at: str
    finished_at: str
    container_id: str = ""


@dataclass
class ContainerRecord:
    """One container of a pod, across its restarts."""

    name: str
    restart_count: int = 0
    # The current run (None when not running / not started yet).
    run: int | None = None  # the restart count the run was started with (names its log and exit file)
    pid: int | None = None
    pid_start: int | None = None
    mntns: str | None = None  # e.g. "mnt:[4026532281]", to find every process of the container
    started_at: str | None = None
    # The last finished run, and the one before it (lastState once the container is done for good).
    last: Termination | None = None
    prev: Termination | None = None
    # No restart before this unix time (kubelet crash-loop back-off).
    backoff_until: float = 0.0
    backoff_seconds: float = 0.0
    done: bool = False  # terminated for good (restart policy says no more runs)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerRecord:
        last, prev = d.pop("last", None), d.pop("prev", None)
        rec = cls(**d)
        rec.last = Termination(**last) if last else None
        rec.prev = Termination(**prev) if prev else None
        return rec


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    ip: str = ""
    start_time: str | None = None
    init: dict[str, ContainerRecord] = field(default_factory=dict)
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    terminal: bool = False  # phase Succeeded/Failed reported: never run anything again

    @property
    def dirname(self) -> str:
        return f"{self.namespace}_{self.name}_{self.uid}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PodRecord:
        d = json.loads(text)
        init = {k: ContainerRecord.from_json(v) for k, v in (d.pop("init", None) or {}).items()}
        containers = {k: ContainerRecord.from_json(v) for k, v in (d.pop("containers", None) or {}).items()}
        return cls(init=init, containers=containers, **d)

    def all_containers(self) -> list[ContainerRecord]:
        return [*self.init.values(), *self.containers.values()]


class StateDir:
    """The agent's state directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.pods = self.root / "pods"
        self.pods.mkdir(parents=True, exist_ok=True)
        self._ip_lock = threading.Lock()

    def pod_dir(self, rec: PodRecord) -> Path:
        return self.pods / rec.dirname

    def save(self, rec: PodRecord) -> None:
        atomic_write(self.pod_dir(rec) / "state.json", rec.to_json())

    def load_all(self) -> list[PodRecord]:
        records = []
        for f in sorted(self.pods.glob("*/state.json")):
            try:
                records.append(PodRecord.from_json(f.read_text()))
            except (OSError, ValueError, TypeError) as e:
                # A broken record must not stop the agent; the pod is then treated as unknown.
                import logging

                logging.getLogger(__name__).warning("ignoring unreadable %s: %s", f, e)
        return records

    def find_pod_dirs(self, namespace: str, name: str) -> list[Path]:
        return sorted(self.pods.glob(f"{namespace}_{name}_*"), key=lambda p: p.stat().st_mtime)

    # -- pod IPs ---------------------------------------------------------------------------------

    def _ips_file(self) -> Path:
        return self.root / "ips.json"

    def _read_ips(self) -> dict[str, str]:
        try:
            data = json.loads(self._ips_file().read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def allocate_ip(self, uid: str) -> str:
        with self._ip_lock:
            ips = self._read_ips()
            if uid in ips:
                return ips[uid]
            used = set(ips.values())
            for n in range(IP_FIRST, IP_LAST + 1):
                ip = f"{IP_PREFIX}{n}"
                if ip not in used:
                    ips[uid] = ip
                    atomic_write(self._ips_file(), json.dumps(ips, indent=1, sort_keys=True))
                    return ip
            raise RuntimeError("no free pod IP left in 127.0.1.0/24")

    def release_ip(self, uid: str) -> None:
        with self._ip_lock:
            ips = self._read_ips()
            if ips.pop(uid, None) is not None:
                atomic_write(self._ips_file(), json.dumps(ips, indent=1, sort_keys=True))

    def allocated_ips(self) -> dict[str, str]:
        with self._ip_lock:
            return self._read_ips()
