from datetime import UTC, datetime

from migration_operator.kubectl_plugin import parser, render_status

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
OBJ = {
    "metadata": {"name": "parking-db-v6", "namespace": "parking"},
    "spec": {"database": {"host": "db", "port": 5432, "name": "parking_db"},
             "migrations": {"targetVersion": "6"}, "rollback": {"strategy": "Restore"}},
    "status": {
        "phase": "Succeeded", "message": "V6 applied",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done",
                        "lastTransitionTime": "2026-11-25T11:58:00Z"}],
        "before": {"version": "5", "tables": 5, "foreignKeys": 4, "indexes": 9, "rows": {"clients": 10}},
        "after": {"version": "6", "tables": 6, "foreignKeys": 5, "indexes": 11,
                  "rows": {"clients": 10, "parking_zones": 6}},
        "applied": [{"version": "6", "script": "V6__add_parking_zones.sql", "checksum": 12,
                     "executionTimeMs": 40}],
        "log": [{"time": "2026-11-25T11:57:00Z", "phase": "Migrating", "message": "flyway migrate started"}],
    },
}


def test_status_shows_phase_conditions_and_the_snapshot_side_by_side() -> None:
    text = render_status(OBJ, now=NOW)
    assert "Phase:      Succeeded" in text
    assert "Ready  True    Succeeded  2m" in text
    snapshot_rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in text.splitlines()
                     if line.startswith("rows ")}
    assert snapshot_rows["rows parking_zones"] == ["6"]  # new table: nothing before, 6 rows after
    assert snapshot_rows["rows clients"] == ["10", "10"]
    assert "V6__add_parking_zones.sql" in text
    assert "flyway migrate started" in text


def test_status_of_a_fresh_object_does_not_fail() -> None:
    text = render_status({"metadata": {"name": "x", "namespace": "y"}, "spec": {}})
    assert "(not started)" in text


def test_approve_parses_force_flag() -> None:
    args = parser().parse_args(["approve", "x", "-n", "ns", "--force"])
    assert args.force and args.namespace == "ns" and args.name == "x"


def test_status_says_when_the_pre_started_jobs_were_refused() -> None:
    refused = {**OBJ, "status": {**OBJ["status"], "maintenance": {  # type: ignore[dict-item]
        "deployment": "api-gateway", "originalReplicas": 3, "prestartRefused": "HTTP 403: exceeded quota: one-job"}}}
    text = render_status(refused, now=NOW)
    assert "Pre-start:  refused (HTTP 403: exceeded quota: one-job)" in text
    assert "Pre-start" not in render_status(OBJ, now=NOW)
