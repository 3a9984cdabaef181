"""Status writes that hit conflicts are retried: a client hammering the object (Argo CD adding annotations, a
human labelling it) never leaves the run stuck in a phase."""

from __future__ import annotations

import threading

from tests.e2e.conftest import ParkingApp


def _logged_conflicts(parking: ParkingApp) -> int:
    if parking.operator is None or not parking.operator.log_path.exists():
        return 0
    return parking.operator.log_path.read_text().count("status write conflicted (409)")


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
        # the contention really reached the operator's status writes, and they were retried, not lost
        assert _logged_conflicts(parking) > conflicts_before
