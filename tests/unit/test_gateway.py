"""The parking api-gateway's health logic (examples/parking/gateway/gateway.py).

Pure logic (version comparison, UP/DOWN documents) always runs. The database part runs against the local
PostgreSQL the tests use (tests/support/postgres.py: the local cluster's, found through $KUBECONFIG) when it answers
(a scratch database per test, dropped afterwards), and is skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import postgres

REPO = Path(__file__).resolve().parents[2]
GATEWAY = REPO / "examples" / "parking" / "gateway" / "gateway.py"


def _load_gateway() -> ModuleType:
    spec = importlib.util.spec_from_file_location("parking_gateway", GATEWAY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gw = _load_gateway()

# ------------------------------------------------------------------------------------------ pure logic


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", (5,)), ("5.1", (5, 1)), ("5_1", (5, 1)), ("5.0", (5,)), ("10", (10,)), (" 7 ", (7,))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert gw.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "v5", "5.", "abc", "5.x"])
def test_parse_version_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        gw.parse_version(text)


def test_max_version_is_numeric_not_text() -> None:
    assert gw.max_version(["1", "2", "9", "10"]) == "10"
    assert gw.max_version(["5", "5.1", "5.0.1"]) == "5.1"
    assert gw.max_version([None, "3"]) == "3"  # repeatable migrations have no version
    assert gw.max_version([]) is None


@pytest.mark.parametrize(
    ("current", "required", "ok"),
    [
        ("5", "5", True),
        ("5.1", "5", True),
        ("5", "5.1", False),
        ("10", "9", True),
        ("4", "5", False),
        ("5.0", "5", True),
        (None, "1", False),
    ],
)
def test_version_satisfies(current: str | None, required: str, ok: bool) -> None:
    assert gw.version_satisfies(current, required) is ok


def test_health_up() -> None:
    state = gw.SchemaState(db_up=True, history_exists=True, successful_versions=["1", "2", "3", "4", "5"])
    status, body = gw.evaluate_health(state, "5")
    assert status == 200
    assert body["status"] == "UP"
    assert body["components"]["schema"]["version"] == "5"
    assert body["components"]["db"]["status"] == "UP"
    assert "reason" not in body


def test_health_down_when_schema_older() -> None:
    state = gw.SchemaState(db_up=True, history_exists=True, successful_versions=["1", "5"])
    status, body = gw.evaluate_health(state, "6")
    assert status == 503
    assert body["status"] == "DOWN"
    assert "older than the required 6" in body["reason"]
    assert body["components"]["db"]["status"] == "UP"


def test_health_down_when_db_unreachable() -> None:
    status, body = gw.evaluate_health(gw.SchemaState(db_up=False, db_error="connection refused"), "5")
    assert status == 503
    assert body["components"]["db"]["status"] == "DOWN"
    assert "connection refused" in body["reason"]


def test_health_down_without_history() -> None:
    status, body = gw.evaluate_health(gw.SchemaState(db_up=True, history_exists=False), "1")
    assert status == 503
    assert "not found" in body["reason"]


def test_health_failed_migration_does_not_count() -> None:
    state = gw.SchemaState(db_up=True, history_exists=True, successful_versions=["5"], failed_versions=["6"])
    status, body = gw.evaluate_health(state, "6")
    assert status == 503
    assert body["components"]["schema"]["failed"] == ["6"]
    assert gw.evaluate_health(state, "5")[0] == 200


def test_health_down_when_a_mapped_column_is_missing() -> None:
    state = gw.SchemaState(db_up=True, history_exists=True, successful_versions=["6"],
                           missing_columns=["clients.email"])
    status, body = gw.evaluate_health(state, "5")
    assert status == 503
    assert body["reason"] == "schema validation failed: missing column(s) clients.email"
    assert body["components"]["schema"]["missingColumns"] == ["clients.email"]


def test_mapped_columns_setting() -> None:
    assert gw.parse_mapped_columns("clients:id, name ;tickets:id") == {"clients": ("id", "name"),
                                                                        "tickets": ("id",)}
    assert gw.parse_mapped_columns("") == {}
    assert gw.Config.from_env({}).mapped_columns == {"clients": ("id", "name", "email")}
    with pytest.raises(ValueError, match="MAPPED_COLUMNS"):
        gw.parse_mapped_columns("clients")


def test_config_defaults_and_pod_ip() -> None:
    cfg = gw.Config.from_env({"POD_IP": "127.0.1.9", "DB_HOST": "db"})
    assert (cfg.listen_host, cfg.port, cfg.db_port, cfg.required_version) == ("127.0.1.9", 8080, 5432, "5")
    assert gw.Config.from_env({"POD_IP": "127.0.1.9", "LISTEN_HOST": "0.0.0.0"}).listen_host == "0.0.0.0"
    assert gw.Config.from_env({}).listen_host == "0.0.0.0"
    with pytest.raises(ValueError):
        gw.Config.from_env({"REQUIRED_SCHEMA_VERSION": "five"})


# ------------------------------------------------------------------------------------------ real database

PG_USER = os.environ.get("MO_E2E_PG_SUPERUSER", "postgres")
PG_PASSWORD = os.environ.get("MO_E2E_PG_PASSWORD", "postgres")

# The table Flyway 12 creates on PostgreSQL.
HISTORY_DDL = """
CREATE TABLE flyway_schema_history (
    installed_rank integer NOT NULL PRIMARY KEY,
    version varchar(50),
    description varchar(200) NOT NULL,
    type varchar(20) NOT NULL,
    script varchar(1000) NOT NULL,
    checksum integer,
    installed_by varchar(100) NOT NULL,
    installed_on timestamp NOT NULL DEFAULT now(),
    execution_time integer NOT NULL,
    success boolean NOT NULL
)
"""


def _postgres_running() -> tuple[bool, str]:
    endpoint = postgres.test_endpoint()
    return postgres.reachable(), f"nothing answers on {endpoint.host}:{endpoint.port}"


def _admin(dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host=postgres.test_endpoint().host,
        port=postgres.test_endpoint().port,
        user=PG_USER,
        password=PG_PASSWORD,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
        application_name="test_gateway",
    )


@pytest.fixture
def scratch_db() -> Iterator[str]:
    running, why = _postgres_running()
    if not running:
        pytest.skip(f"no PostgreSQL for the tests (make cluster): {why}")
    name = f"gw_test_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _config(dbname: str, required: str = "5", port: int = 0, mapped: str = "") -> Any:
    return gw.Config.from_env(
        {
            "MAPPED_COLUMNS": mapped,
            "DB_HOST": postgres.test_endpoint().host,
            "DB_PORT": str(postgres.test_endpoint().port),
            "DB_NAME": dbname,
            "DB_USER": PG_USER,
            "DB_PASSWORD": PG_PASSWORD,
            "REQUIRED_SCHEMA_VERSION": required,
            "LISTEN_HOST": "127.0.0.1",
            "PORT": str(port),
        }
    )


def _history(dbname: str, rows: list[tuple[str | None, bool]]) -> None:
    with _admin(dbname) as conn:
        conn.execute(HISTORY_DDL)
        for rank, (version, success) in enumerate(rows, start=1):
            conn.execute(
                "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, "
                "checksum, installed_by, execution_time, success) VALUES (%s, %s, 'd', 'SQL', %s, 1, 'me', 1, %s)",
                (rank, version, f"V{version}__d.sql", success),
            )


def test_db_without_history_is_down(scratch_db: str) -> None:
    db = gw.Database(_config(scratch_db))
    try:
        status, body = gw.evaluate_health(db.schema_state(), "5")
    finally:
        db.close()
    assert status == 503
    assert body["components"]["db"]["status"] == "UP"
    assert "not found" in body["reason"]


def test_db_versions_numeric_and_failed_rows(scratch_db: str) -> None:
    _history(scratch_db, [("1", True), ("2", True), ("9", True), ("10", True), ("11", False), (None, True)])
    db = gw.Database(_config(scratch_db))
    try:
        state = db.schema_state()
        assert state.db_up and state.history_exists
        assert gw.max_version(state.successful_versions) == "10"
        assert state.failed_versions == ["11"]
        assert gw.evaluate_health(state, "10")[0] == 200
        assert gw.evaluate_health(state, "9.5")[0] == 200
        assert gw.evaluate_health(state, "11")[0] == 503
    finally:
        db.close()


def test_db_missing_mapped_columns(scratch_db: str) -> None:
    _history(scratch_db, [("1", True)])
    with _admin(scratch_db) as conn:
        conn.execute("CREATE TABLE clients (id bigint, name text, contact_email text)")
    db = gw.Database(_config(scratch_db, required="1", mapped="clients:id,name,email;tickets:id"))
    try:
        state = db.schema_state()
    finally:
        db.close()
    assert state.missing_columns == ["clients.email", "tickets.id"]
    assert gw.evaluate_health(state, "1")[0] == 503


def test_db_unreachable_is_down() -> None:
    cfg = gw.Config.from_env(
        {"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_NAME": "x", "DB_USER": "x", "DB_CONNECT_TIMEOUT_S": "2"}
    )
    db = gw.Database(cfg)
    status, body = gw.evaluate_health(db.schema_state(), "5")
    assert status == 503
    assert body["components"]["db"]["status"] == "DOWN"


def test_one_long_lived_connection_and_reconnect(scratch_db: str) -> None:
    _history(scratch_db, [("5", True)])
    db = gw.Database(_config(scratch_db))
    try:
        first = db.schema_state()
        assert first.db_up
        pid = first.details["backendPid"]
        assert db.schema_state().details["backendPid"] == pid  # same session reused
        with _admin() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'api-gateway'",
                (scratch_db,),
            ).fetchall()
            assert [r[0] for r in rows] == [pid]
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        again = db.schema_state()  # lost connection: reconnect once, transparently
        assert again.db_up, again.db_error
        assert again.details["backendPid"] != pid
        assert db.reconnects == 1
    finally:
        db.close()


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_endpoints(scratch_db: str) -> None:
    _history(scratch_db, [("1", True), ("5", True)])
    with _admin(scratch_db) as conn:
        conn.execute("CREATE TABLE clients (id bigint PRIMARY KEY, name text, email text)")
        conn.execute("INSERT INTO clients SELECT i, 'c' || i, 'c' || i || '@x.example' FROM generate_series(1, 20) i")
    cfg = _config(scratch_db)
    server = gw.GatewayServer(cfg, gw.Database(cfg))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = _get(f"{base}/actuator/health")
        assert status == 200, body
        assert body["status"] == "UP" and body["components"]["schema"]["version"] == "5"
        assert _get(f"{base}/actuator/health/liveness") == (200, {"status": "UP"})
        status, info = _get(f"{base}/actuator/info")
        assert status == 200 and info["app"]["name"] == "api-gateway"
        assert "password" not in json.dumps(info).lower()
        status, clients = _get(f"{base}/api/clients?limit=3")
        assert status == 200 and clients["count"] == 3 and clients["clients"][0]["id"] == 1
        assert _get(f"{base}/nope")[0] == 404
        with _admin(scratch_db) as conn:  # a failed V6 keeps the app at 5 ...
            conn.execute("INSERT INTO flyway_schema_history VALUES (3, '6', 'd', 'SQL', 's', 1, 'me', now(), 1, false)")
        server.cfg = _config(scratch_db, required="6")  # ... which a release needing 6 refuses
        status, body = _get(f"{base}/actuator/health")
        assert status == 503 and body["status"] == "DOWN"
        assert body["components"]["schema"]["failed"] == ["6"]
    finally:
        server.shutdown()
        server.server_close()
        server.db.close()
        thread.join(timeout=5)


def test_clone_of_parking_template_is_healthy() -> None:
    running, why = _postgres_running()
    if not running:
        pytest.skip(f"local PostgreSQL not running: {why}")
    with _admin() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'parking_template'").fetchone() is None:
            pytest.skip("parking_template missing (hack/postgres.sh seed)")
        name = f"gw_test_{uuid.uuid4().hex[:10]}"
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE parking_template").format(sql.Identifier(name)))
    db = gw.Database(_config(name))
    try:
        status, body = gw.evaluate_health(db.schema_state(), "5")
        assert status == 200, body
        assert len(db.clients(100)) == 25
    finally:
        db.close()
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
