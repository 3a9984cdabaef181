"""kube.py against a real local HTTP server (aiohttp.web on 127.0.0.1): errors as ApiError with the status and the
Status message, one re-login on a 401 (a rotated service-account token), the pod log's head cut at its bound; and
the operator's process never importing the official client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web

from migration_operator import errors, kube

REPO = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self) -> None:
        self.tokens = ["old", "new"]  # what the credentials file holds, one login after the other
        self.seen: list[tuple[str, str, str, dict[str, str]]] = []
        self.log = b""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.seen.append((request.method, request.path, request.headers.get("Authorization", ""), dict(request.query)))
        if request.headers.get("Authorization") != "Bearer new":
            return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        if request.path.endswith("/log"):
            limit = int(request.query["limitBytes"])
            return web.Response(body=self.log[:limit], content_type="text/plain")
        if request.path.endswith("/jobs/missing"):
            return web.json_response({"kind": "Status", "message": 'jobs.batch "missing" not found'}, status=404)
        if request.method == "PUT":
            return web.json_response({"kind": "Status", "message": "the object has been modified"}, status=409)
        return web.json_response({"path": request.path, "body": body, "type": request.content_type})


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    fake = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def credentials() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token=fake.tokens.pop(0))

    monkeypatch.setattr(kube, "credentials", credentials)
    monkeypatch.setattr(kube, "_client", kube._Client())
    yield fake
    if kube._client.session is not None:
        await kube._client.session.close()
    await runner.cleanup()


async def test_a_401_logs_in_again_once_and_retries(server: Server) -> None:
    found = await kube.get("jobs", "ns", "run-validate")
    assert found["path"] == "/apis/batch/v1/namespaces/ns/jobs/run-validate"
    assert [auth for _, _, auth, _ in server.seen] == ["Bearer old", "Bearer new"]
    await kube.get("jobs", "ns", "run-validate")  # the new login is kept
    assert len(server.seen) == 3


async def test_errors_carry_the_status_and_reach_status_as_its_message(server: Server) -> None:
    assert await kube.get_or_none("jobs", "ns", "missing") is None
    with pytest.raises(kube.ApiError) as caught:
        await kube.replace("leases", "ops", "lease", {"metadata": {"resourceVersion": "1"}})
    assert (caught.value.status, caught.value.reason) == (409, "Conflict")
    assert errors.text_of(caught.value) == "HTTP 409: the object has been modified"
    assert errors.retryable(caught.value)


async def test_patches_say_their_content_type_and_field_manager(server: Server) -> None:
    patched = await kube.patch(
        "deployments", "shop", "app", {"spec": {"replicas": 0}}, content_type=kube.STRATEGIC_MERGE_PATCH,
        field_manager="migration-operator",
    )
    assert patched["type"] == kube.STRATEGIC_MERGE_PATCH and patched["body"] == '{"spec": {"replicas": 0}}'
    assert server.seen[-1][3] == {"fieldManager": "migration-operator"}
    status = await kube.patch_migration_status("shop", "v6", {"status": {"phase": "Preflight"}})
    assert status["path"] == "/apis/dbops.io/v1alpha1/namespaces/shop/databasemigrations/v6/status"
    assert status["type"] == kube.MERGE_PATCH


async def test_deletes_send_delete_options(server: Server) -> None:
    deleted: dict[str, Any] = await kube.delete("jobs", "ns", "run-migrate", {"propagationPolicy": "Foreground"})
    assert deleted["body"] == '{"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}'


@pytest.mark.parametrize(("size", "truncated"), [(100, False), (101, True)])
async def test_the_log_is_read_up_to_its_bound(server: Server, size: int, truncated: bool) -> None:
    server.log = b"\xff" + b"x" * (size - 1)  # invalid UTF-8 is replaced, not raised
    log = await kube.read_pod_log("ns", "pod", "main", 100)
    assert log == kube.PodLog("\ufffd" + "x" * 99, truncated=truncated)
    assert server.seen[-1][3] == {"container": "main", "limitBytes": "101"}


def test_the_operator_never_imports_the_official_client() -> None:
    code = (
        "import migration_operator.__main__, migration_operator.handlers, sys; "
        "assert 'kubernetes' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "operator")})
