"""The operator under test, as a separate process (so a test can SIGKILL it and start it again), or an operator
already running in the cluster (MO_E2E_OPERATOR=external, e.g. the chart on kind)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def namespace_key(process: OperatorProcess) -> str:
    """A per-session key part: the operator watches `<prefix>-*`."""
    return process.namespace_pattern.rstrip("-*")


class OperatorProcess:
    def __init__(self, namespace_pattern: str, log_dir: Path) -> None:
        self.namespace_pattern = namespace_pattern
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.health_port = free_port()
        self.metrics_port = free_port()

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "operator already running"
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {
            "METRICS_PORT": str(self.metrics_port),
            "METRICS_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": "json",
            # the operator's checksum key (digests.py), the same across the restarts a test makes
            "DBOPS_CHECKSUM_KEY": os.environ.get("DBOPS_CHECKSUM_KEY", "e2e-checksum-key-" + namespace_key(self)),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "migration_operator",
                "--namespace", self.namespace_pattern,
                "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            ],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._healthy, timeout=60, what="operator liveness endpoint", describe=self.tail)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final status write - what a node crash or an OOM kill looks like."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, sample: str, **labels: str) -> float:
        """One sample of the operator's /metrics (e.g. dbmig_migrations_total{result="Succeeded"}); 0 when absent."""
        for family in text_string_to_metric_families(self.metrics()):
            for found in family.samples:
                if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                    return float(found.value)
        return 0.0

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"
