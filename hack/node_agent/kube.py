"""A thin JSON client for the few API calls the agent makes.

The agent works on plain dicts (the API's own camelCase JSON) rather than the generated models of
the ``kubernetes`` package: status patches, merges and comparisons stay simple and exact. The
``kubernetes`` package is still used to read the kubeconfig (certificates, tokens, exec plugins).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import requests
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

Obj = dict[str, Any]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            message = str(json.loads(body).get("message", body))
        except ValueError:
            self.reason = ""
            message = body
        super().__init__(f"{what}: {status} {message[:300]}")


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.base = cfg.host.rstrip("/")
        parsed = urlparse(self.base)
        self.api_host = parsed.hostname or "127.0.0.1"
        self.api_port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._verify: str | bool = (cfg.ssl_ca_cert or True) if cfg.verify_ssl else False
        self._cert: tuple[str, str] | None = (
            (cfg.cert_file, cfg.key_file or cfg.cert_file) if cfg.cert_file else None
        )
        token = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        if token and not token.lower().startswith("bearer "):
            token = f"Bearer {token}"
        self._headers = {"Authorization": token} if token else {}
        self._local = threading.local()

    def _session(self) -> requests.Session:
        # One session per thread: requests.Session is not documented as thread-safe.
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            # Not the environment: REQUESTS_CA_BUNDLE would silently replace the kubeconfig's CA
            # (a known requests quirk), and no proxy stands between us and the apiserver.
            s.trust_env = False
            s.verify = self._verify
            if self._cert:
                s.cert = self._cert
            s.headers.update(self._headers)
            s.headers["User-Agent"] = "node-agent/0.1 (local-node)"
            self._local.session = s
        return s

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        r = self._session().request(
            method, self.base + path, params=params, data=data, headers=headers, timeout=(5, timeout)
        )
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.text, f"{method} {path}")
        if not r.content:
            return {}
        result: Obj = r.json()
        return result

    def get(self, path: str, params: dict[str, Any] | None = None) -> Obj | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return self.request("GET", path, params=params)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any, content_type: str = STRATEGIC) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def put(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body=body)

    def delete(self, path: str, body: Obj | None = None) -> Obj | None:
        try:
            return self.request("DELETE", path, body=body)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def watch(self, path: str, params: dict[str, Any], timeout_seconds: int = 300) -> Iterator[Obj]:
        """Events of a watch; ends when the server closes it (callers re-list/re-watch)."""
        p = dict(params, watch="true", timeoutSeconds=timeout_seconds, allowWatchBookmarks="true")
        with self._session().get(
            self.base + path, params=p, stream=True, timeout=(5, timeout_seconds + 30)
        ) as r:
            if r.status_code >= 400:
                raise ApiError(r.status_code, r.text, f"WATCH {path}")
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)
