"""Container logs: the files, the `logs` command and the kubelet's /containerLogs HTTPS endpoint."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .state import StateDir

log = logging.getLogger(__name__)


class LogNotFound(Exception):
    pass


def container_dir(state: StateDir, namespace: str, pod: str, container: str | None) -> Path:
    dirs = state.find_pod_dirs(namespace, pod)
    if not dirs:
        raise LogNotFound(f'pod "{pod}" in namespace "{namespace}" has no logs on this node')
    pod_dir = dirs[-1]  # the newest pod of that name
    containers = sorted(p.name for p in pod_dir.iterdir() if p.is_dir() and p.name != "volumes")
    if container is None:
        if len(containers) != 1:
            raise LogNotFound(
                f"a container name must be specified for pod {pod}, choose one of: {containers}"
            )
        container = containers[0]
    if container not in containers:
        raise LogNotFound(f"container {container} is not valid for pod {pod} (known: {containers})")
    return pod_dir / container


def _runs(cdir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in cdir.glob("*.log") if (m := re.fullmatch(r"(\d+)\.log", p.name)))


def log_file(cdir: Path, previous: bool = False) -> tuple[Path, int]:
    runs = _runs(cdir)
    if not runs:
        raise LogNotFound(f"no logs yet for container {cdir.name}")
    if previous:
        if len(runs) < 2:
            raise LogNotFound(f"previous terminated container {cdir.name} not found")
        return cdir / f"{runs[-2]}.log", runs[-2]
    return cdir / f"{runs[-1]}.log", runs[-1]


def read_log(path: Path, tail_lines: int | None = None, limit_bytes: int | None = None) -> bytes:
    data = path.read_bytes()
    if tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
    if limit_bytes is not None:
        data = data[:limit_bytes]
    return data


def follow(path: Path, run: int, start: int, stop: threading.Event | None = None) -> Iterator[bytes]:
    """Yield what is appended to ``path`` from offset ``start`` until the run's exit file appears."""
    exit_file = path.with_name(f"{run}.exit")
    with path.open("rb") as f:
        f.seek(start)
        while stop is None or not stop.is_set():
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if exit_file.exists() or not path.parent.parent.joinpath("state.json").exists():
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# The kubelet endpoint, so that `kubectl logs` works through the apiserver.


def ensure_cert(state: StateDir) -> tuple[Path, Path]:
    crt, key = state.root / "kubelet.crt", state.root / "kubelet.key"
    if not (crt.exists() and key.exists()):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(crt),
                "-days",
                "3650",
                "-subj",
                "/CN=local-node",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:local-node",
            ],
            check=True,
            capture_output=True,
        )
        key.chmod(0o600)
    return crt, key


def serve(state: StateDir, host: str, port: int) -> ThreadingHTTPServer:
    """Serve /containerLogs/{ns}/{pod}/{container} (follow, tailLines, limitBytes, previous) over HTTPS.
    Authentication: none, but only loopback clients are answered (the apiserver is local)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("kubelet api: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not ipaddress.ip_address(self.client_address[0]).is_loopback:
                self._send(403, b"forbidden: only loopback clients are served\n")
                return
            url = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if url.path in ("/healthz", "/readyz", "/livez"):
                self._send(200, b"ok")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._send(
                    404, f"{url.path} is not served by the node agent (only /containerLogs)\n".encode()
                )
                return
            _, ns, pod, container = parts
            try:
                cdir = container_dir(state, ns, pod, container)
                path, run = log_file(cdir, q.get("previous") == "true")
            except LogNotFound as e:
                self._send(404, f"{e}\n".encode())
                return
            tail = int(q["tailLines"]) if q.get("tailLines", "").lstrip("-").isdigit() else None
            limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None
            data = read_log(path, tail, None)
            if q.get("follow") != "true":
                self._send(200, data[:limit] if limit is not None else data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            try:
                for chunk in itertools.chain([data], follow(path, run, path.stat().st_size)):
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    if chunk:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                        sent += len(chunk)
                    if limit is not None and sent >= limit:
                        break
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    crt, key = ensure_cert(state)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="kubelet-api", daemon=True).start()
    return server
