"""Records what the world looked like while a migration ran: a background poller of the migration's phase, the
app Deployment and its pods, and the migration's Jobs, so a test can assert on what happened *during* a phase
(the gateway was at 0 replicas while Migrating) instead of only on the end state."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client


@dataclass(frozen=True)
class Sample:
    at: float
    phase: str | None
    replicas: int | None
    pods: int
    jobs: dict[str, str]  # job name -> uid


@dataclass
class Sampler:
    api: client.ApiClient
    namespace: str
    migration: str
    deployment: str = "api-gateway"
    interval: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        apps = client.AppsV1Api(self.api)
        core = client.CoreV1Api(self.api)
        batch = client.BatchV1Api(self.api)
        while not self._stop.is_set():
            try:
                try:
                    obj = custom.get_namespaced_custom_object(
                        "dbops.io", "v1alpha1", self.namespace, "databasemigrations", self.migration)
                    phase = (obj.get("status") or {}).get("phase")
                except client.ApiException:
                    phase = None
                try:
                    replicas = apps.read_namespaced_deployment(self.deployment, self.namespace).spec.replicas
                except client.ApiException:
                    replicas = None
                pods = len(core.list_namespaced_pod(self.namespace, label_selector=f"app={self.deployment}").items)
                jobs = {j.metadata.name: j.metadata.uid for j in batch.list_namespaced_job(
                    self.namespace, label_selector=f"dbops.io/migration={self.migration}").items}
                self.samples.append(Sample(time.monotonic(), phase, replicas, pods, jobs))
            except Exception:  # a transient API error must not end the recording
                pass
            self._stop.wait(self.interval)

    def duration(self) -> float:
        """Seconds between the first and the last sample."""
        return self.samples[-1].at - self.samples[0].at if self.samples else 0.0

    def during(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]

    def phases_seen(self) -> list[str]:
        seen: list[str] = []
        for s in self.samples:
            if s.phase and (not seen or seen[-1] != s.phase):
                seen.append(s.phase)
        return seen

    def job_uids(self) -> dict[str, set[str]]:
        uids: dict[str, set[str]] = {}
        for s in self.samples:
            for name, uid in s.jobs.items():
                uids.setdefault(name, set()).add(uid)
        return uids
