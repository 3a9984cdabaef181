#!/usr/bin/env python3
"""api-gateway: a small stand-in for the parking application (a Spring service in real life).

It keeps ONE long-lived connection to PostgreSQL (application_name "api-gateway", autocommit, so it never
sits "idle in transaction" and blocks DDL or CREATE INDEX CONCURRENTLY) and reconnects when the connection is
lost (e.g. terminated by a migration runbook). Endpoints:

  GET /actuator/health            200 UP when the database answers, the highest *successful* version in
                                  flyway_schema_history >= REQUIRED_SCHEMA_VERSION and every column the app
                                  maps exists (like Hibernate's ddl-auto=validate), else 503 DOWN + reason
  GET /actuator/health/readiness  same as /actuator/health
  GET /actuator/health/liveness   200 while the process serves HTTP (no database check)
  GET /actuator/info              static facts about this instance
  GET /api/clients[?limit=N]      a few rows of the clients table

Environment: DB_HOST, DB_PORT (5432), DB_NAME, DB_USER, DB_PASSWORD, REQUIRED_SCHEMA_VERSION ("5"),
LISTEN_HOST ($POD_IP or 0.0.0.0), PORT (8080), SCHEMA_HISTORY_TABLE (flyway_schema_history),
DB_STATEMENT_TIMEOUT_MS (5000), DB_CONNECT_TIMEOUT_S (3), MAPPED_COLUMNS ("clients:id,name,email": the columns
the app reads, "table:col,col;table:col"; empty: no check).
Stdlib + psycopg only. One log line per request on stdout. SIGTERM/SIGINT: stop serving, close the connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql

APP_NAME = "api-gateway"
APP_VERSION = "0.1.0"
_VERSION_RE = re.compile(r"^\d+([._]\d+)*$")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- versions


def parse_version(text: str) -> tuple[int, ...]:
    """Flyway version "5", "5.1", "5_1", "2024.01.02" -> comparable tuple; 5 == 5.0."""
    value = text.strip()
    if not _VERSION_RE.match(value):
        raise ValueError(f"not a Flyway version: {text!r}")
    parts = [int(p) for p in re.split(r"[._]", value)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def max_version(versions: Iterable[str | None]) -> str | None:
    """Highest version by numeric comparison (text order would put "10" before "9"); None when empty."""
    best: tuple[tuple[int, ...], str] | None = None
    for v in versions:
        if v is None or not _VERSION_RE.match(v.strip()):
            continue
        key = parse_version(v)
        if best is None or key > best[0]:
            best = (key, v.strip())
    return None if best is None else best[1]


def version_satisfies(current: str | None, required: str) -> bool:
    return current is not None and parse_version(current) >= parse_version(required)


def parse_mapped_columns(text: str) -> dict[str, tuple[str, ...]]:
    """ "clients:id,name,email;tickets:id" -> {"clients": ("id", "name", "email"), "tickets": ("id",)}."""
    mapped: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        table, sep, columns = part.partition(":")
        names = tuple(c.strip() for c in columns.split(",") if c.strip())
        if not sep or not table.strip() or not names:
            raise ValueError(f"MAPPED_COLUMNS: expected table:col,col, got {part!r}")
        mapped[table.strip()] = names
    return mapped


# --------------------------------------------------------------------------------------------- health


@dataclass
class SchemaState:
    """What the database told us: reachable or not, and the successful versions in the history table."""

    db_up: bool
    db_error: str | None = None
    history_exists: bool = False
    successful_versions: list[str] = field(default_factory=list)
    failed_versions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    missing_columns: list[str] = field(default_factory=list)  # "table.column" the app maps but cannot find


def evaluate_health(state: SchemaState, required: str) -> tuple[int, dict[str, Any]]:
    """Spring-Boot-actuator-like health document and its HTTP status."""
    db_component: dict[str, Any] = {"status": "UP" if state.db_up else "DOWN"}
    if state.details:
        db_component["details"] = state.details
    if not state.db_up:
        db_component["error"] = state.db_error or "database unreachable"
        down = {
            "status": "DOWN",
            "reason": f"database unreachable: {db_component['error']}",
            "components": {"db": db_component, "schema": {"status": "UNKNOWN", "required": required}},
        }
        return 503, down
    current = max_version(state.successful_versions)
    schema: dict[str, Any] = {"version": current, "required": required}
    if state.failed_versions:
        schema["failed"] = sorted(state.failed_versions, key=parse_version)
    if not state.history_exists:
        reason = "schema history table not found (database not migrated)"
    elif current is None:
        reason = "no successful migration in the schema history"
    elif not version_satisfies(current, required):
        reason = f"schema version {current} is older than the required {required}"
    elif state.missing_columns:
        schema["missingColumns"] = state.missing_columns
        reason = f"schema validation failed: missing column(s) {', '.join(state.missing_columns)}"
    else:
        reason = ""
    schema["status"] = "DOWN" if reason else "UP"
    body: dict[str, Any] = {"status": schema["status"], "components": {"db": db_component, "schema": schema}}
    if reason:
        body["reason"] = reason
        return 503, body
    return 200, body


# --------------------------------------------------------------------------------------------- database


@dataclass(frozen=True)
class Config:
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_password: str
    required_version: str
    listen_host: str
    port: int
    history_table: str = "flyway_schema_history"
    statement_timeout_ms: int = 5000
    connect_timeout_s: int = 3
    mapped_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        e = dict(os.environ if env is None else env)
        required = e.get("REQUIRED_SCHEMA_VERSION", "5").strip() or "5"
        parse_version(required)  # fail fast on a bad value
        return cls(
            db_host=e.get("DB_HOST", "127.0.0.1"),
            db_port=int(e.get("DB_PORT", "5432")),
            db_name=e.get("DB_NAME", "parking_db"),
            db_user=e.get("DB_USER", "parking_admin"),
            db_password=e.get("DB_PASSWORD", ""),
            required_version=required,
            listen_host=e.get("LISTEN_HOST") or e.get("POD_IP") or "0.0.0.0",
            port=int(e.get("PORT", "8080")),
            history_table=e.get("SCHEMA_HISTORY_TABLE", "flyway_schema_history"),
            statement_timeout_ms=int(e.get("DB_STATEMENT_TIMEOUT_MS", "5000")),
            connect_timeout_s=int(e.get("DB_CONNECT_TIMEOUT_S", "3")),
            mapped_columns=parse_mapped_columns(e.get("MAPPED_COLUMNS", "clients:id,name,email")),
        )


class Database:
    """One long-lived autocommit connection, shared by the request threads under a lock; reconnects."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.connected_since: float | None = None
        self.reconnects = 0

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(
            host=self.cfg.db_host,
            port=self.cfg.db_port,
            dbname=self.cfg.db_name,
            user=self.cfg.db_user,
            password=self.cfg.db_password,
            application_name=APP_NAME,
            connect_timeout=self.cfg.connect_timeout_s,
            autocommit=True,
            options=f"-c statement_timeout={self.cfg.statement_timeout_ms}",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        if self.connected_since is not None:
            self.reconnects += 1
        self.connected_since = time.time()
        where = f"{self.cfg.db_host}:{self.cfg.db_port}/{self.cfg.db_name}"
        log(f"connected to {where} pid={conn.info.backend_pid}")
        return conn

    def run(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run fn on the connection; on a lost connection reconnect once and retry."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    return fn(self._conn)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    broken = self._conn.broken or self._conn.closed
                    self._close_locked()
                    if attempt == 2 or not broken:
                        raise
                    log("database connection lost, reconnecting")
            raise AssertionError("unreachable")

    def _close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def schema_state(self) -> SchemaState:
        table = self.cfg.history_table

        def query(conn: psycopg.Connection[tuple[Any, ...]]) -> SchemaState:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL, pg_backend_pid()", (table,)).fetchone()
            assert row is not None
            exists, pid = bool(row[0]), int(row[1])
            details = {"database": "PostgreSQL", "name": self.cfg.db_name, "backendPid": pid}
            if not exists:
                return SchemaState(db_up=True, history_exists=False, details=details)
            rows = conn.execute(
                sql.SQL("SELECT version, success FROM {} WHERE version IS NOT NULL").format(
                    sql.Identifier(*table.split("."))
                )
            ).fetchall()
            ok = [str(v) for v, s in rows if s]
            bad = [str(v) for v, s in rows if not s]
            return SchemaState(True, None, True, ok, bad, details, self._missing_columns(conn))

        try:
            return self.run(query)
        except psycopg.Error as exc:
            return SchemaState(db_up=False, db_error=_one_line(exc))

    def _missing_columns(self, conn: psycopg.Connection[tuple[Any, ...]]) -> list[str]:
        mapped = self.cfg.mapped_columns
        if not mapped:
            return []
        found = set(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
            (list(mapped),),
        ).fetchall())
        return [f"{t}.{c}" for t, columns in mapped.items() for c in columns if (t, c) not in found]

    def clients(self, limit: int) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection[tuple[Any, ...]]) -> list[dict[str, Any]]:
            cur = conn.execute("SELECT id, name, email FROM clients ORDER BY id LIMIT %s", (limit,))
            return [{"id": i, "name": n, "email": e} for i, n, e in cur.fetchall()]

        return self.run(query)


# --------------------------------------------------------------------------------------------- http


def log(message: str) -> None:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stdout.write(f"{ts}Z {APP_NAME} {message}\n")
    sys.stdout.flush()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Handler(BaseHTTPRequestHandler):
    server_version = f"{APP_NAME}/{APP_VERSION}"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> GatewayServer:
        assert isinstance(self.server, GatewayServer)
        return self.server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _send

    def _send(self, status: int, body: Any, started: float) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        ms = (time.monotonic() - started) * 1000
        log(f'{self.client_address[0]} "{self.command} {self.path}" {status} {len(data)}B {ms:.1f}ms')

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        app = self.app
        try:
            if path in ("/actuator/health", "/actuator/health/readiness"):
                status, body = evaluate_health(app.db.schema_state(), app.cfg.required_version)
                self._send(status, body, started)
            elif path == "/actuator/health/liveness":
                self._send(200, {"status": "UP"}, started)
            elif path == "/actuator/info":
                self._send(200, app.info(), started)
            elif path == "/api/clients":
                limit = int(parse_qs(url.query).get("limit", ["10"])[0])
                rows = app.db.clients(max(1, min(limit, 100)))
                self._send(200, {"clients": rows, "count": len(rows)}, started)
            else:
                self._send(404, {"status": 404, "error": "Not Found", "path": path}, started)
        except ValueError as exc:
            self._send(400, {"status": 400, "error": _one_line(exc)}, started)
        except psycopg.Error as exc:
            self._send(503, {"status": 503, "error": _one_line(exc)}, started)


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg = cfg
        self.db = db
        self.started_at = time.time()
        super().__init__((cfg.listen_host, cfg.port), Handler)

    def info(self) -> dict[str, Any]:
        return {
            "app": {"name": APP_NAME, "version": APP_VERSION},
            "schema": {"required": self.cfg.required_version, "historyTable": self.cfg.history_table},
            "db": {"host": self.cfg.db_host, "port": self.cfg.db_port, "name": self.cfg.db_name},
            "listen": f"{self.cfg.listen_host}:{self.cfg.port}",
            "pid": os.getpid(),
            "uptimeSeconds": round(time.time() - self.started_at, 1),
            "dbReconnects": self.db.reconnects,
        }


def main() -> int:
    cfg = Config.from_env()
    db = Database(cfg)
    server = GatewayServer(cfg, db)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            log(f"received {signal.Signals(signum).name}, shutting down")
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        db.schema_state()  # open the long-lived connection now (health stays DOWN until it works)
    except Exception as exc:  # pragma: no cover - reported, retried on the next request
        log(f"initial connection failed: {_one_line(exc)}")
    log(
        f"listening on {cfg.listen_host}:{cfg.port}, db {cfg.db_host}:{cfg.db_port}/{cfg.db_name}, "
        f"required schema version {cfg.required_version}"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        db.close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
