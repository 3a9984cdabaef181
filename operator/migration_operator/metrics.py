"""Prometheus metrics (default port 8080, `--metrics-port` / env METRICS_PORT; 0 disables)."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PHASE_DURATION = Histogram(
    "dbmig_phase_duration_seconds",
    "Time spent in each phase of a DatabaseMigration",
    ["phase"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
APP_DOWNTIME = Histogram(
    "dbmig_app_downtime_seconds",
    "Seconds the maintenance Deployment spent scaled to 0",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
OUTCOMES = Counter("dbmig_migrations_total", "Finished DatabaseMigrations by outcome", ["result"])
IN_FLIGHT = Gauge("dbmig_migrations_in_flight", "DatabaseMigrations currently running")
TRANSITIONS = Counter("dbmig_phase_transitions_total", "Phase transitions", ["from_phase", "to_phase"])
# Per run while its app is down (and kept while a finished run holds it down on purpose): alert on
# `dbmig_app_down_seconds > 0 and dbmig_maintenance_window_remaining_seconds < 0`, or on held_down == 1.
APP_DOWN = Gauge("dbmig_app_down_seconds", "Seconds the run's app has been at 0 replicas", ["namespace", "name"])
WINDOW_REMAINING = Gauge(
    "dbmig_maintenance_window_remaining_seconds",
    "Seconds until status.maintenance.backBy (negative: overdue)",
    ["namespace", "name"],
)
HELD_DOWN = Gauge(
    "dbmig_app_held_down",
    "1 when a finished run left its app at 0 on purpose (a failed rollback)",
    ["namespace", "name"],
)
# Leader election (leader.py): 1 on the replica that acts, 0 on a standby. `sum(dbmig_operator_leader)` is 1 in a
# healthy install; `kubectl get lease migration-operator-leader` names the pod.
LEADER = Gauge("dbmig_operator_leader", "1 when this operator replica holds the leader Lease and acts, else 0")

_started = False


def serve(port: int, host: str | None = None) -> None:
    """Serve /metrics on host:port. The host defaults to METRICS_HOST, else every address; the chart binds the
    pod's IP, which matters where pods share a network namespace (the local cluster: every pod is on the host)."""
    global _started
    if port and not _started:
        start_http_server(port, addr=host or os.environ.get("METRICS_HOST", "0.0.0.0"))
        _started = True
