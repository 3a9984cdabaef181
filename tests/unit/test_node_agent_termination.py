"""Termination messages of the node agent: the message file, and the log fallback on error."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from node_agent.termination import log_tail, termination_message


def files(tmp_path: Path, message: str, log: str) -> tuple[Path, Path]:
    m, lg = tmp_path / "termination-log", tmp_path / "0.log"
    m.write_text(message)
    lg.write_text(log)
    return m, lg


def test_message_file_wins(tmp_path: Path) -> None:
    m, lg = files(tmp_path, "migration V3 failed", "lots of log\n")
    assert termination_message(m, lg, "FallbackToLogsOnError", 1) == "migration V3 failed"
    assert termination_message(m, lg, "File", 0) == "migration V3 failed"


def test_fallback_only_on_error_with_the_policy(tmp_path: Path) -> None:
    m, lg = files(tmp_path, "", "line 1\nboom\n")
    assert termination_message(m, lg, "FallbackToLogsOnError", 2) == "line 1\nboom\n"
    assert termination_message(m, lg, "FallbackToLogsOnError", 0) == ""
    assert termination_message(m, lg, "File", 2) == ""
    assert termination_message(m, lg, None, 2) == ""


def test_missing_files_give_empty_message(tmp_path: Path) -> None:
    assert termination_message(tmp_path / "nope", tmp_path / "nolog", "FallbackToLogsOnError", 1) == ""


def test_fallback_is_last_80_lines_and_2048_bytes(tmp_path: Path) -> None:
    lg = tmp_path / "0.log"
    lg.write_text("".join(f"{i}\n" for i in range(200)))
    tail = log_tail(lg)
    assert tail.splitlines() == [str(i) for i in range(120, 200)]
    lg.write_text("x" * 5000 + "\nend\n")
    tail = log_tail(lg)
    assert len(tail.encode()) == 2048
    assert tail.endswith("x\nend\n")


def test_message_file_is_capped_at_4096_bytes(tmp_path: Path) -> None:
    m, lg = files(tmp_path, "y" * 10000, "")
    assert len(termination_message(m, lg, "File", 1)) == 4096
