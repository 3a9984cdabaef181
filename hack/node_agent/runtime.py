"""Starting, signalling and reaping container processes (each one supervised by node_agent.shim)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .state import proc_start_time

log = logging.getLogger(__name__)

HACK_DIR = str(Path(__file__).resolve().parent.parent)

# Shims this agent process started: they are our children, so they must be wait()ed for or they
# stay zombies (and a zombie looks alive in /proc). Adopted shims (from before an agent restart)
# have been re-parented to init, which reaps them.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def own_mntns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def mntns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def reap() -> None:
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:
                del _children[pid]


def is_alive(pid: int | None, pid_start: int | None) -> bool:
    if not pid:
        return False
    reap()
    now = proc_start_time(pid)
    return now is not None and (pid_start is None or now == pid_start)


def start_shim(
    spec: dict[str, Any], spec_file: Path, log_file: Path, on_exit: Callable[[], None] | None = None
) -> tuple[int, int | None]:
    """Start ``unshare -m --propagation private -- python -m node_agent.shim SPEC`` in a new session,
    stdout+stderr appended to ``log_file``. Returns (pid, /proc start time). ``on_exit`` is called
    (from a helper thread) when the shim ends, so the pod worker notices at once instead of polling."""
    spec_file.write_text(json.dumps(spec))
    spec_file.chmod(0o600)  # it holds the container's env, secrets included
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "node_agent.shim",
                str(spec_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session and process group: the agent's own signals (SIGTERM on restart, ^C) never
            # reach pods, and killpg(pid) reaches the whole container.
            start_new_session=True,
            close_fds=True,
            env={
                "PYTHONPATH": HACK_DIR,
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        )
    with _children_lock:
        _children[proc.pid] = proc
    start = proc_start_time(proc.pid)

    def wait() -> None:
        proc.wait()
        if on_exit is not None:
            on_exit()

    threading.Thread(target=wait, name=f"wait-{proc.pid}", daemon=True).start()
    return proc.pid, start


# Mount namespaces of live containers, held open. A namespace's inode number is what identifies a container's
# processes; once the namespace dies the kernel may give that number to the next container's namespace, and a
# late sweep of the old container would kill the new one (seen: a pg_dump killed 30 ms after it started, by the
# clean-up of a gateway pod that had just exited). Holding a descriptor keeps the namespace, and its number,
# alive until the final sweep is done.
_pinned: dict[str, int] = {}
_pinned_lock = threading.Lock()


def pin_mntns(pid: int, mntns: str) -> None:
    with _pinned_lock:
        if mntns in _pinned:
            return
        try:
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        if f"mnt:[{os.fstat(fd).st_ino}]" != mntns:  # the process died and its pid moved on meanwhile
            os.close(fd)
            return
        _pinned[mntns] = fd


def unpin_mntns(mntns: str | None) -> None:
    with _pinned_lock:
        fd = _pinned.pop(mntns, None) if mntns else None
    if fd is not None:
        os.close(fd)


def members(mntns: str | None) -> list[int]:
    """Every process living in the mount namespace ``mntns`` (the container's, even daemonised ones)."""
    if not mntns or mntns == own_mntns():
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mntns_of(int(entry)) == mntns:
            pids.append(int(entry))
    return pids


def signal_container(pid: int | None, pid_start: int | None, mntns: str | None, sig: int) -> None:
    """Send ``sig`` to the container's process group, and (for SIGKILL) to every process in its
    mount namespace, which also catches processes that left the group."""
    if pid and is_alive(pid, pid_start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    if sig == signal.SIGKILL:
        for p in members(mntns):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)


def container_gone(pid: int | None, pid_start: int | None, mntns: str | None) -> bool:
    return not is_alive(pid, pid_start) and not members(mntns)


def read_exit(exit_file: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(exit_file.read_text())
        return data
    except (OSError, ValueError):
        return None
