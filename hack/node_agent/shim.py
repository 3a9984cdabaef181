"""The per-container supervisor: ``unshare -m --propagation private -- python -m node_agent.shim SPEC``.

It runs inside the container's fresh private mount namespace, so the bind mounts it makes are seen by
the container only and vanish with it (no unmount bookkeeping on the host). It then starts the
container's process, waits for it and writes the exit code to ``exit_file``: the agent is not
necessarily this process's parent (it may have been restarted), so the file is how the exit code
survives. The shim leads its own session/process group (the agent starts it with setsid), which is
how the agent signals the whole container; it ignores SIGTERM itself so that it outlives the
container's graceful shutdown and can still record the exit code.

SPEC is a JSON file: ``{"argv": [...], "env": {...}, "cwd": "/", "exit_file": "...",
"mounts": [{"src": "...", "dst": "...", "readOnly": false}], "keep": ["/host/path", ...]}``.

``keep`` lists host paths the container needs as they are on the host (the checkout, the cache with the
Flyway install and the virtualenv, the agent's state dir with ``exit_file``): when one of them lies under a
mount destination (a checkout in /tmp under the container's private /tmp, say), it is bound back on top.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

START_ERROR_EXIT = 128  # what containerd reports when the process cannot be started


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_exit(exit_file: str, code: int, reason: str | None = None, message: str | None = None) -> None:
    data: dict[str, Any] = {"exitCode": code, "finishedAt": now()}
    if reason:
        data["reason"] = reason
    if message:
        data["message"] = message
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, exit_file)


def _mount(args: list[str]) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {res.stderr.strip() or res.returncode}")


KEEP_STAGING = Path("/run/node-agent/keep")


def _under(path: Path, mount_point: Path) -> bool:
    return path == mount_point or mount_point in path.parents


def do_mounts(mounts: list[dict[str, Any]], keep: list[str] | None = None) -> None:
    # Host paths a mount would hide: first give each a second entrance outside every mount destination
    # (a bind in this namespace only; on the host the staging dirs stay empty, and their fixed names are
    # shared by every container, each seeing only its own binds).
    hidden = [
        Path(k) for k in keep or [] if Path(k).exists() and any(_under(Path(k), Path(m["dst"])) for m in mounts)
    ]
    staged: list[tuple[Path, Path]] = []
    for i, path in enumerate(hidden):
        staging = KEEP_STAGING / str(i)
        staging.mkdir(parents=True, exist_ok=True)
        _mount(["--bind", str(path), str(staging)])
        staged.append((path, staging))
    def host_view(src: Path) -> Path:
        # A source inside a kept path is reached through its staging entrance: a mount made earlier in the
        # loop (the private /tmp) may already hide it at its own name.
        for path, staging in sorted(staged, key=lambda p: len(p[0].parts), reverse=True):
            if _under(src, path):
                return staging / src.relative_to(path)
        return src

    # Parents before children, so a volume mounted inside another one is not hidden by it.
    for m in sorted(mounts, key=lambda m: Path(m["dst"]).parts):
        src, dst = host_view(Path(m["src"])), Path(m["dst"])
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.touch()
        _mount(["--bind", str(src), str(dst)])
        if m.get("readOnly"):
            _mount(["-o", "remount,bind,ro", str(dst)])
    for path, staging in staged:
        path.mkdir(parents=True, exist_ok=True)
        _mount(["--bind", str(staging), str(path)])
        subprocess.run(["umount", str(staging)], capture_output=True)  # only a stepping stone


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGTERM reaches the whole process group; the container handles it, the shim just waits."""


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    exit_file: str = spec["exit_file"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # A Python-level handler (not SIG_IGN) on purpose: handlers reset to default at exec, so
        # the container still dies of SIGTERM by default, while SIG_IGN would be inherited.
        signal.signal(sig, _ignore)
    try:
        do_mounts(spec.get("mounts") or [], spec.get("keep"))
        cwd = spec.get("cwd") or "/"
        # runc creates a missing workingDir too.
        os.makedirs(cwd, exist_ok=True)
        proc = subprocess.Popen(
            spec["argv"], env=spec["env"], cwd=cwd, stdin=subprocess.DEVNULL, close_fds=True
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        message = f"failed to start container: {e}"
        print(f"node-agent shim: {message}", file=sys.stderr, flush=True)
        write_exit(exit_file, START_ERROR_EXIT, "StartError", message)
        return START_ERROR_EXIT
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, belt and braces
            continue
    # A death by signal N is reported as 128+N, like every container runtime does.
    exit_code = 128 - code if code < 0 else code
    write_exit(exit_file, exit_code)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
