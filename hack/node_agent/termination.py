"""Termination messages, as the kubelet reads them when a container exits."""

from __future__ import annotations

from pathlib import Path

# Kubelet limits: the message file is read up to 4096 bytes; the log fallback takes the last
# 80 lines, at most 2048 bytes.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048


def _read_tail(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes * 4))
            return f.read()
    except OSError:
        return b""


def log_tail(log: Path, lines: int = FALLBACK_LINES, max_bytes: int = FALLBACK_BYTES) -> str:
    """The last ``lines`` lines of ``log``, cut to its last ``max_bytes`` bytes."""
    data = _read_tail(log, max_bytes)
    parts = data.splitlines(keepends=True)[-lines:]
    tail = b"".join(parts)[-max_bytes:]
    return tail.decode("utf-8", errors="replace")


def termination_message(message_file: Path, log: Path, policy: str | None, exit_code: int) -> str:
    """``terminationMessagePath`` content; with ``FallbackToLogsOnError`` the log tail when that file
    is empty and the container failed."""
    try:
        with message_file.open("rb") as f:
            message = f.read(MAX_MESSAGE_BYTES).decode("utf-8", errors="replace")
    except OSError:
        message = ""
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        return log_tail(log)
    return message
