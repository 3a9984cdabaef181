"""`tail`: a step's end seen in its log (the BEGIN/END marks every step's script prints), before the kubelet says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from migration_operator import jobs, tail


async def chunks(text: str | bytes, size: int = 7) -> AsyncIterator[bytes]:
    data = text.encode() if isinstance(text, str) else text
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_the_end_line_with_the_scripts_mark_ends_the_log() -> None:
    log = "DBOPS-BEGIN m-1\n==> migrate <==\n{}\nDBOPS-END m-1 0\n"
    assert await tail.scan(chunks(log), 1024) == (0, tail.kube.PodLog("==> migrate <==\n{}\n", truncated=False))


async def test_an_end_line_with_another_mark_is_output() -> None:
    """A tool that prints an END line (a copy of another run's log, a migration's RAISE NOTICE) does not end it."""
    log = "DBOPS-BEGIN m-1\nDBOPS-END other 0\nDBOPS-END m-1 x\nstill running\n"
    assert await tail.scan(chunks(log), 1024) is None
    ended = await tail.scan(chunks(log + "DBOPS-END m-1 3\n"), 1024)
    assert ended == (3, tail.kube.PodLog("DBOPS-END other 0\nDBOPS-END m-1 x\nstill running\n", truncated=False))


async def test_no_begin_line_no_end() -> None:
    """A Job of an operator without the marks: the stream's end is not the container's, the kubelet decides."""
    assert await tail.scan(chunks("==> migrate <==\nDBOPS-END m-1 0\n"), 1024) is None


async def test_a_long_output_is_kept_up_to_the_bound() -> None:
    log = "DBOPS-BEGIN m\n" + "".join(f"line {i}\n" for i in range(100)) + "DBOPS-END m 0\n"
    code, kept = await tail.scan(chunks(log, 13), 40) or (None, None)
    assert code == 0 and kept is not None and kept.truncated
    assert kept.text == "line 0\nline 1\nline 2\nline 3\nline 4\n" and len(kept.text) <= 40


def test_the_marks_are_not_output() -> None:
    assert tail.without_marks("DBOPS-BEGIN a\nx\nDBOPS-END a 0\n") == "x\n"
    assert tail.without_marks("x\n") == "x\n" and tail.without_marks(None) is None


async def test_every_steps_script_prints_the_marks_around_its_output(tmp_path: Path) -> None:
    """The script's first line is BEGIN, its last END with the step's exit code, after all of its output."""
    termination = tmp_path / "termination-log"
    termination.write_text("")
    script = jobs.scrubbed("echo one\necho two 1>&2\nexit 4").replace("/dev/termination-log", str(termination))
    result = subprocess.run(["sh", "-c", script], env=os.environ | {jobs.SCRUB_VARS: ""}, capture_output=True)
    assert result.returncode == 4
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("DBOPS-BEGIN ") and lines[1:3] == ["one", "two"]
    mark = lines[0].split()[1]
    assert lines[3:] == [f"DBOPS-END {mark} 4"] and len(mark) >= 16
    ended = await tail.scan(chunks(result.stdout, len(result.stdout)), 1024)
    assert ended == (4, tail.kube.PodLog("one\ntwo\n", truncated=False))


class FakeLogStream:
    """Stands in for `kube.stream`: the log in small chunks, and whether the follower closed it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.closed = data, False
        self.calls: list[dict[str, Any]] = []

    async def stream(self, resource: str, namespace: str, name: str, **kwargs: Any) -> AsyncIterator[bytes]:
        self.calls.append({"resource": resource, "pod": name, "namespace": namespace, **kwargs})
        try:
            async for chunk in chunks(self.data, 5):
                yield chunk
            await asyncio.sleep(3600)  # a followed log stays open until the container ends
        finally:
            self.closed = True


async def test_a_follower_records_the_end_wakes_the_run_and_closes_its_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeLogStream(b"DBOPS-BEGIN k\nout\nDBOPS-END k 0\n")
    monkeypatch.setattr(tail.kube, "stream", api.stream)
    woken: list[tuple[str, str]] = []
    monkeypatch.setattr(tail, "_waker", lambda namespace, label: woken.append((namespace, label)))
    monkeypatch.setattr(tail, "_ended", {})
    tail._following.add("uid-1")
    await tail._follow("ns", "run-migrate-x", "uid-1", "migrate", "run", 1024)
    assert woken == [("ns", "run")] and api.closed and tail.following() == 0
    ended = tail.ended("uid-1")
    assert ended is not None and (ended.exit_code, ended.log.text) == (0, "out\n")
    call = api.calls[0]
    assert (call["resource"], call["subresource"], call["params"]) == (
        "pods", "log", {"container": "migrate", "follow": "true"}
    )
    # an ended pod is not followed again
    assert tail.follow("ns", "run-migrate-x", "uid-1", "migrate", "run", 1024) is False


def test_followers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail, "_following", {f"uid-{i}" for i in range(tail.MAX_FOLLOWERS)})
    assert tail.follow("ns", "pod", "one-more", "c", "run", 1024) is False
    assert tail.follow("ns", "pod", "uid-0", "c", "run", 1024) is True  # followed already
