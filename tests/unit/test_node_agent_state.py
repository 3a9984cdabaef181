"""The node agent's on-disk state: pod records, pod IPs, process identity, volumes, the shim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from node_agent.state import (
    ContainerRecord,
    PodRecord,
    StateDir,
    Termination,
    proc_start_time,
    process_alive,
)
from node_agent.volumes import VolumeError, container_mounts, write_atomic_dir

HACK = Path(__file__).resolve().parents[2] / "hack"


def test_pod_record_round_trips(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    rec = PodRecord(uid="u1", namespace="ns", name="p", ip="127.0.1.3", start_time="2026-01-01T00:00:00Z")
    rec.init["init"] = ContainerRecord(name="init", done=True, last=Termination(0, "Completed", "", "a", "b"))
    rec.containers["c"] = ContainerRecord(
        name="c", restart_count=2, run=2, pid=123, pid_start=456, mntns="mnt:[1]"
    )
    state.save(rec)
    assert (tmp_path / "pods" / "ns_p_u1" / "state.json").exists()
    [loaded] = state.load_all()
    assert loaded == rec


def test_broken_records_are_skipped(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (tmp_path / "pods" / "x").mkdir()
    (tmp_path / "pods" / "x" / "state.json").write_text("{not json")
    assert state.load_all() == []


def test_pod_ips_are_allocated_persisted_and_freed(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    a, b = state.allocate_ip("a"), state.allocate_ip("b")
    assert (a, b) == ("127.0.1.1", "127.0.1.2")
    assert state.allocate_ip("a") == a  # stable for the same pod
    # A restarted agent (new StateDir) sees the same allocations.
    again = StateDir(tmp_path)
    assert again.allocated_ips() == {"a": a, "b": b}
    again.release_ip("a")
    assert again.allocate_ip("c") == "127.0.1.1"
    assert again.allocate_ip("d") == "127.0.1.3"


def test_process_identity_guards_pid_reuse() -> None:
    me = os.getpid()
    start = proc_start_time(me)
    assert start is not None
    assert process_alive(me, start)
    assert not process_alive(me, start + 1)  # same pid, another process
    assert not process_alive(None, None)
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert proc_start_time(proc.pid) is None or not process_alive(proc.pid, -1)


def test_atomic_dir_updates_in_place(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert write_atomic_dir(target, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})
    assert (target / "a").read_text() == "1"
    assert (target / "sub" / "b").read_text() == "2"
    assert ((target / "sub" / "b").stat().st_mode & 0o777) == 0o600
    assert not write_atomic_dir(target, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})  # unchanged
    assert write_atomic_dir(target, {"a": (b"new", 0o644)})
    assert (target / "a").read_text() == "new"
    assert not (target / "sub").exists()
    assert (
        len([p for p in target.iterdir() if p.name.startswith("..") and p.is_dir() and not p.is_symlink()])
        == 1
    )


def test_container_mounts_with_subpath_and_read_only(tmp_path: Path) -> None:
    cfg, data = tmp_path / "cfg", tmp_path / "data"
    write_atomic_dir(cfg, {"app.conf": (b"x", 0o644)})
    data.mkdir()
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
            {"name": "data", "mountPath": "/data", "readOnly": True},
            {"name": "data", "mountPath": "/per-pod", "subPathExpr": "$(POD)"},
        ],
        "terminationMessagePath": "/tmp/msg",
    }
    volumes = {"cfg": (cfg, True), "data": (data, False)}
    mounts = container_mounts(container, volumes, {"POD": "p1"}, tmp_path / "term")
    assert mounts == [
        {"src": str((cfg / "app.conf").resolve()), "dst": "/etc/app/app.conf", "readOnly": True},
        {"src": str(data), "dst": "/data", "readOnly": True},
        {"src": str(data / "p1"), "dst": "/per-pod", "readOnly": False},
        {"src": str(tmp_path / "term"), "dst": "/tmp/msg", "readOnly": False},
    ]
    assert (data / "p1").is_dir()
    with pytest.raises(VolumeError):
        container_mounts(
            {"volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../up"}]},
            volumes,
            {},
            tmp_path / "term",
        )


def test_container_mounts_private_tmp(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    plain = container_mounts({"name": "c"}, {}, {}, tmp_path / "term", tmp)
    assert plain[0] == {"src": str(tmp), "dst": "/tmp", "readOnly": False}
    # /tmp is mounted before a termination-log path under it (the shim mounts parents first).
    assert plain[1]["dst"] == "/dev/termination-log"
    # A volume mounted at /tmp wins over the private directory.
    data = tmp_path / "data"
    data.mkdir()
    container = {"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/tmp/"}]}
    mounts = container_mounts(container, {"data": (data, False)}, {}, tmp_path / "term", tmp)
    assert [m["src"] for m in mounts if m["dst"] in ("/tmp", "/tmp/")] == [str(data)]
    assert str(tmp) not in [m["src"] for m in mounts]


def run_shim(tmp_path: Path, argv: list[str]) -> dict[str, object]:
    spec = {
        "argv": argv,
        "env": {"PATH": "/usr/bin:/bin", "V": "1"},
        "cwd": str(tmp_path / "wd"),
        "exit_file": str(tmp_path / "0.exit"),
        "mounts": [],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {"PYTHONPATH": str(HACK), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run(
        [sys.executable, "-m", "node_agent.shim", str(tmp_path / "spec.json")], env=env, timeout=30
    )
    result: dict[str, object] = json.loads((tmp_path / "0.exit").read_text())
    return result


def test_shim_records_exit_codes(tmp_path: Path) -> None:
    assert (
        run_shim(
            tmp_path,
            ["/bin/sh", "-c", 'test "$V" = 1 && test "$PWD" = "$0" || exit 9; exit 3', str(tmp_path / "wd")],
        )["exitCode"]
        == 3
    )
    assert run_shim(tmp_path, ["/bin/sh", "-c", "kill -9 $$"])["exitCode"] == 137


def test_shim_reports_unstartable_programs(tmp_path: Path) -> None:
    result = run_shim(tmp_path, ["/no/such/program"])
    assert result["exitCode"] == 128
    assert result["reason"] == "StartError"


def test_image_files_are_mounted_read_only_before_volumes() -> None:
    from pathlib import Path

    from node_agent.volumes import container_mounts

    container = {"volumeMounts": [{"name": "data", "mountPath": "/flyway/sql/extra"}]}
    mounts = container_mounts(container, {"data": (Path("/vol"), False)}, {}, Path("/term"), None,
                              {"/flyway/sql/release-5": "/host/r5"})
    assert mounts[0] == {"src": "/host/r5", "dst": "/flyway/sql/release-5", "readOnly": True}
    assert mounts[1]["dst"] == "/flyway/sql/extra"
