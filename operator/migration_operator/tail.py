"""Following a running step's log, to see its container end as soon as it does.

The kubelet reports a container's end at its next relist of the runtime (once a second) and the API shows it ~1 s
after the process exited (measured on the local node: 0.9-1.7 s); two steps run inside the maintenance window, so
their ends were ~2 s of every window. Every step's script (`jobs.scrubbed`) prints `DBOPS-BEGIN <mark>` first and
`DBOPS-END <mark> <exit code>` as its very last line, once all its output is written, just before it exits with that
code. While a step's container runs, a task of the event loop follows its log; the END line with the mark of the same
run of the script is the container's end, its exit code and its whole output: `jobs.observe` uses it exactly as it
would use the kubelet's report (the same guards: a pod the Job can do nothing else with, `jobs.ended_pod_state`).

The mark is a random value drawn by the script when it starts: a line a tool prints by chance is not an end. Nothing
is lost when a follower fails or is not started (too many, the API unreachable, the operator restarted): the kubelet's
report comes a second later and decides as before. Followers live in the operator's memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

from . import kube

BEGIN = "DBOPS-BEGIN"
END = "DBOPS-END"
# Followers at once (each holds one HTTP stream, a connection of the API client's pool); beyond, the kubelet's report
# decides.
MAX_FOLLOWERS = 8
# A follower gives up after this long without a byte (a connection that died silently); the next pass of its run
# starts another one if the container still runs.
READ_TIMEOUT_SECONDS = 300
# An end nobody asked for again is forgotten after this long.
KEEP_SECONDS = 600

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ended:
    exit_code: int
    log: kube.PodLog
    at: float


_following: set[str] = set()
_ended: dict[str, Ended] = {}
_tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to its tasks
_waker: Callable[[str, str], object] | None = None


def set_waker(waker: Callable[[str, str], object] | None) -> None:
    """`waker(namespace, label)` is called when a followed container ends: it wakes the run whose pods carry that
    migration label."""
    global _waker
    _waker = waker


def ended(pod_uid: str) -> Ended | None:
    return _ended.get(pod_uid)


def forget(pod_uid: str) -> None:
    _ended.pop(pod_uid, None)


def following() -> int:
    return len(_following)


def without_marks(text: str | None) -> str | None:
    """`text` without the BEGIN and END lines (the parsers see the step's own output only)."""
    if not text or BEGIN not in text:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith((BEGIN + " ", END + " ")))


def follow(namespace: str, pod: str, pod_uid: str, container: str, label: str, limit_bytes: int) -> bool:
    """Start following `container` of `pod` unless it is followed already, has ended, or too many are; True when a
    follower runs for it after this call."""
    now = time.monotonic()
    for uid in [uid for uid, end in _ended.items() if now - end.at > KEEP_SECONDS]:
        del _ended[uid]
    if pod_uid in _following:
        return True
    if pod_uid in _ended or len(_following) >= MAX_FOLLOWERS:
        return False
    _following.add(pod_uid)
    task = asyncio.get_running_loop().create_task(
        _follow(namespace, pod, pod_uid, container, label, limit_bytes), name=f"tail-{pod}"
    )
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return True


async def scan(chunks: AsyncIterable[bytes], limit_bytes: int) -> tuple[int, kube.PodLog] | None:
    """(exit code, output) from a followed log's byte chunks once its END line with the BEGIN line's mark arrives;
    None when the stream ends first. The output keeps at most `limit_bytes` bytes (then `truncated`)."""
    mark: str | None = None
    kept = bytearray()
    truncated = False
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if mark is None and line.startswith(BEGIN + " "):
                mark = line[len(BEGIN) + 1 :].strip()
                continue
            if mark is not None and line.startswith(f"{END} {mark} "):
                code = line[len(END) + len(mark) + 2 :].strip()
                if code.isdigit():
                    text = bytes(kept).decode("utf-8", errors="replace")
                    return int(code), kube.PodLog(text, truncated=truncated)
            if len(kept) + len(raw) + 1 <= limit_bytes:
                kept += raw + b"\n"
            else:
                truncated = True
    return None


async def _follow(namespace: str, pod: str, pod_uid: str, container: str, label: str, limit_bytes: int) -> None:
    try:
        params = {"container": container, "follow": "true"}
        chunks = kube.stream(
            "pods", namespace, pod, subresource="log", params=params, read_timeout=READ_TIMEOUT_SECONDS
        )
        async with contextlib.aclosing(chunks):  # a stream left before its end is closed, not left to the collector
            result = await scan(chunks, limit_bytes)
        if result is None:
            return
        _ended[pod_uid] = Ended(result[0], result[1], time.monotonic())
        logger.debug("the log of %s/%s ended with exit code %s", namespace, pod, result[0])
        if _waker is not None:
            _waker(namespace, label)
    except Exception as error:  # the kubelet's report decides instead
        logger.debug("following the log of %s/%s stopped: %s", namespace, pod, type(error).__name__)
    finally:
        _following.discard(pod_uid)
