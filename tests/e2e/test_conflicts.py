"""A client hammering the object (Argo CD adding annotations, a human labelling it) never leaves the run stuck in a
phase, even on a busy machine: status is the operator's alone and is written without a resourceVersion
precondition, so no write of labels or annotations can make its status writes conflict (with one, every pass slower
than the writer was refused with 409 and the run stayed in Preflight: a livelock)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.e2e.conftest import ParkingApp


def _logged_conflicts(parking: ParkingApp) -> int:
    if parking.operator is None:
        return 0
    return parking.operator.log_text().count("status write conflicted (409)")


@contextmanager
def busy_cpu() -> Iterator[None]:
    """Every core kept busy by a spinning process, for the duration."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_concurrent_writers_never_leave_the_run_stuck(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    conflicts_before = _logged_conflicts(parking)
    parking.create_migration("contended", parking.spec())
    stop = threading.Event()
    writes = 0

    def hammer() -> None:
        nonlocal writes
        while not stop.is_set():
            try:
                # full replace with a possibly stale resourceVersion, like a client doing read-modify-write
                obj = parking.get("contended")
                obj["metadata"].setdefault("labels", {})["touched"] = str(writes)
                parking.custom.replace_namespaced_custom_object(
                    "dbops.io", "v1alpha1", parking.namespace, "databasemigrations", "contended", obj)
                writes += 1
            except Exception:
                pass
            stop.wait(0.05)

    thread = threading.Thread(target=hammer, daemon=True)
    with busy_cpu():
        thread.start()
        try:
            status = parking.wait_done("contended")
        finally:
            stop.set()
            thread.join(timeout=10)
    assert writes > 20, "the hammer did not actually contend"
    assert status["phase"] == "Succeeded", parking.describe("contended")
    parking.wait_gateway_available(3)
    if parking.operator is not None:
        # the writer never made a status write conflict
        assert _logged_conflicts(parking) == conflicts_before
