"""The operator's smaller TLS read buffer (`__main__.smaller_tls_read_buffers`): applied, never raised back, and a
reply many times its size read whole through kube.py over real TLS (a local aiohttp server, a self-signed CA)."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from asyncio import sslproto
from collections.abc import AsyncIterator
from pathlib import Path

import kopf
import pytest
from aiohttp import web

from migration_operator import __main__ as entry
from migration_operator import kube


@pytest.fixture
def default_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslproto.SSLProtocol, "max_size", 256 * 1024)  # Python 3.11's, put back after the test


def test_the_read_buffer_shrinks_to_two_tls_records(default_buffer: None) -> None:
    entry.smaller_tls_read_buffers()
    assert sslproto.SSLProtocol.max_size == entry.TLS_READ_BUFFER == 32 * 1024


def test_a_smaller_buffer_is_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sslproto.SSLProtocol, "max_size", 8 * 1024)
    entry.smaller_tls_read_buffers()
    assert sslproto.SSLProtocol.max_size == 8 * 1024


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[bytes, list[int]]]:
    body = os.urandom(3 * 1024 * 1024 + 17)  # ~100 buffers' worth, not a multiple of any of them
    buffers: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    cert, key = self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    original_init = sslproto.SSLProtocol.__init__

    def recording_init(self: sslproto.SSLProtocol, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        if not kwargs.get("server_side"):
            buffers.append(len(self._ssl_buffer))  # type: ignore[attr-defined]

    monkeypatch.setattr(sslproto.SSLProtocol, "__init__", recording_init)
    monkeypatch.setattr(
        kube, "credentials",
        lambda: kopf.ConnectionInfo(server=f"https://127.0.0.1:{port}", token="t", ca_path=str(cert)),
    )
    monkeypatch.setattr(kube, "_client", kube._Client())
    yield body, buffers
    await kube.close()
    await runner.cleanup()


async def test_a_reply_a_hundred_buffers_long_arrives_whole_over_tls(
    default_buffer: None, tls_server: tuple[bytes, list[int]]
) -> None:
    body, buffers = tls_server
    entry.smaller_tls_read_buffers()
    got = await kube.read_bytes("pods", "ns", "p", subresource="log", params={}, limit=len(body) + 1)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    assert buffers and set(buffers) == {32 * 1024}, buffers  # the client's connection read through the small buffer
