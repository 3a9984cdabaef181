"""The per-container supervisor: ``unshare -m --propagation private -- python -m node_agent.shim SPEC``.

It runs inside the container's fresh private mount namespace, so the bind mounts it makes are seen by
the container only and vanish with it (no unmount bookkeeping on the host). It then starts the
container's process, waits for it and writes the exit code to ``exit_file``: the agent is not
necessarily this process's parent (it may have been restarted), so the file is how the exit code
survives. The shim leads its own session/process group (the agent starts it with setsid), which is
how the agent signals the whole container; it ignores SIGTERM itself so that it outlives the
container's graceful shutdown and can still record the exit code.

SPEC is a JSON file: ``{"argv": [...], "env": {...}, "cwd": "/", "exit_file": "...",
"mounts": [{"src": "...", "dst": "...", "readOnly": false}]}``.
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


def do_mounts(mounts: list[dict[str, Any]]) -> None:
    # Parents before children, so a volume mounted inside another one is not hidden by it.
    for m in sorted(mounts, key=lambda m: Path(m["dst"]).parts):
        src, dst = Path(m["src"]), Path(m["dst"])
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.touch()
        _mount(["--bind", str(src), str(dst)])
        if m.get("readOnly"):
            _mount(["-o", "remount,bind,ro", str(dst)])


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
        do_mounts(spec.get("mounts") or [])
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
