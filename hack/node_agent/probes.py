"""Readiness, liveness and startup probes (httpGet, tcpSocket, exec), one thread per probe."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def resolve_port(port: Any, container: Obj) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    s = str(port)
    if s.isdigit():
        return int(s)
    for p in container.get("ports") or []:
        if p.get("name") == s:
            return int(p["containerPort"])
    raise ValueError(f"port {s!r} is not a named port of container {container.get('name')}")


def run_probe(
    probe: Obj, container: Obj, pod_ip: str, env: Mapping[str, str], pid: int | None
) -> tuple[bool, str]:
    """One probe attempt: (success, detail for the event/log)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            host = h.get("host") or pod_ip
            port = resolve_port(h.get("port"), container)
            conn: http.client.HTTPConnection
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                # The kubelet does not verify probe certificates either.
                ctx = ssl._create_unverified_context()
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {"User-Agent": "kube-probe/node-agent", "Accept": "*/*"}
                headers.update({x["name"]: x.get("value", "") for x in h.get("httpHeaders") or []})
                conn.request("GET", h.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            # Like the kubelet: 2xx and 3xx are success.
            return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            host = t.get("host") or pod_ip
            port = resolve_port(t.get("port"), container)
            with socket.create_connection((host, port), timeout=timeout):
                return True, ""
        if "exec" in probe:
            cmd = [str(a) for a in (probe["exec"].get("command") or [])]
            # Run in the container's mount namespace so it sees the container's volumes.
            argv = ["nsenter", "-t", str(pid), "-m", "--", *cmd] if pid else cmd
            res = subprocess.run(
                argv, env=dict(env), cwd="/", capture_output=True, timeout=timeout, start_new_session=True
            )
            out = (res.stdout + res.stderr).decode("utf-8", errors="replace").strip()[-512:]
            return res.returncode == 0, f"exec probe failed (exit {res.returncode}): {out}"
        if "grpc" in probe:
            log.warning(
                "container %s: gRPC probes are not implemented; reported as passing", container.get("name")
            )
            return True, ""
        return True, ""
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as e:
        return False, f"probe error: {e}"


class Prober:
    """Runs one probe of one container run until stopped; ``result`` follows the thresholds.

    ``result`` starts False for readiness/startup and True for liveness (a liveness probe only kills
    after ``failureThreshold`` consecutive failures). Liveness and readiness wait for ``gate`` (the
    startup probe's success), like the kubelet.
    """

    def __init__(
        self,
        kind: str,
        probe: Obj,
        container: Obj,
        pod_ip: str,
        env: Mapping[str, str],
        pid: int | None,
        started_at: float,
        on_change: Callable[[Prober], None],
        gate: Callable[[], bool] = lambda: True,
    ) -> None:
        self.kind = kind
        self.probe = probe
        self.container = container
        self.pod_ip = pod_ip
        self.env = env
        self.pid = pid
        self.started_at = started_at
        self.on_change = on_change
        self.gate = gate
        self.result = kind == "liveness"
        self.failed = False  # failureThreshold reached: liveness/startup kill the container
        self.last_detail = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"probe-{kind}-{container.get('name')}", daemon=True
        )

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        period = max(1.0, float(self.probe.get("periodSeconds") or 10))
        success_threshold = int(self.probe.get("successThreshold") or 1)
        failure_threshold = int(self.probe.get("failureThreshold") or 3)
        delay = float(self.probe.get("initialDelaySeconds") or 0)
        wait = max(0.0, self.started_at + delay - time.time())
        if self._stop.wait(wait):
            return
        successes = failures = 0
        while not self._stop.is_set():
            if not self.gate():
                if self._stop.wait(0.5):
                    return
                continue
            try:
                ok, detail = run_probe(self.probe, self.container, self.pod_ip, self.env, self.pid)
            except Exception as e:  # a probe bug must never take the agent down
                ok, detail = False, f"probe crashed: {e}"
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                self.last_detail = detail
            new = self.result
            if ok and successes >= success_threshold:
                new = True
            elif not ok and failures >= failure_threshold:
                new = False
            if not ok and failures >= failure_threshold:
                self.failed = True
            if new != self.result or (not ok and failures == failure_threshold):
                self.result = new
                try:
                    self.on_change(self)
                except Exception:
                    log.exception("probe callback failed")
            if not ok:
                log.info(
                    "%s probe of %s failed (%d/%d): %s",
                    self.kind,
                    self.container.get("name"),
                    failures,
                    failure_threshold,
                    detail,
                )
            if self.kind == "startup" and self.result:
                return  # the startup probe stops once it succeeded
            if self.kind in ("liveness", "startup") and self.failed:
                return  # the container is about to be killed; a new run gets a new prober
            if self._stop.wait(period):
                return
