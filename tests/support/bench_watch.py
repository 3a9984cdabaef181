"""What `make bench` sees of one run, to the millisecond: watches (one thread each) on the app Deployment, its pods,
the run's Jobs and the DatabaseMigrations of one namespace, every event stamped with the wall clock when it
arrived. The API's own timestamps (status.log, completionTime) have a one-second resolution: too coarse for
reaction latencies of a few hundred milliseconds, so the figures come from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "dbops.io", "v1alpha1", "databasemigrations"


@dataclass(frozen=True)
class DeploymentState:
    at: float
    replicas: int
    available: int
    updated: int
    up_to_date: bool


@dataclass(frozen=True)
class PodEvent:
    at: float
    kind: str  # ADDED | MODIFIED | DELETED
    name: str


@dataclass(frozen=True)
class JobEvent:
    at: float
    kind: str
    name: str
    step: str | None
    migration: str | None
    state: str  # Running | Succeeded | Failed


@dataclass(frozen=True)
class JobPodEvent:
    at: float
    kind: str
    name: str
    job: str | None
    phase: str | None  # Pending | Running | Succeeded | Failed
    # its (main) container reported terminated: the kubelet says so ~1 s before the pod's phase
    container_ended: bool = False


@dataclass(frozen=True)
class MigrationEvent:
    at: float
    name: str
    phase: str | None
    log_length: int
    status: dict[str, Any]


@dataclass
class Recording:
    """Events of one namespace, in arrival order per kind."""

    deployment: list[DeploymentState] = field(default_factory=list)
    pods: list[PodEvent] = field(default_factory=list)
    jobs: list[JobEvent] = field(default_factory=list)
    job_pods: list[JobPodEvent] = field(default_factory=list)
    migrations: list[MigrationEvent] = field(default_factory=list)

    # ---- the app -----------------------------------------------------------------------------------------
    def downtime(self, replicas: int, after: float = 0.0) -> tuple[float, float] | None:
        """(start, end) of the maintenance window: the stretch of fewer than `replicas` available that holds the
        scale to 0, to the first moment all were available again (spec, updated and available at `replicas`). A dip
        before it that ended (a readiness probe failing on a loaded machine while preflight runs) is not the
        window: on the real node under other sessions' load such a dip made the window "close" before the scale to
        0 (a 2.9 s downtime with a negative scale-up). None when the app never went down."""
        states = [state for state in self.deployment if state.at >= after]
        scaled = next((i for i, state in enumerate(states) if state.replicas == 0), None)
        if scaled is None:  # never scaled to 0: the first dip, as before
            begin = next((i for i, state in enumerate(states) if state.available < replicas), None)
        elif states[scaled].available >= replicas:
            begin = next((i for i in range(scaled, len(states)) if states[i].available < replicas), None)
        else:
            begin = scaled
            while begin > 0 and states[begin - 1].available < replicas:
                begin -= 1  # already below all available when the scale came: the window opened then
        if begin is None:
            return None
        for state in states[begin + 1:]:
            if (state.replicas == replicas and state.available >= replicas and state.updated >= replicas
                    and state.up_to_date):
                return states[begin].at, state.at
        return None

    def first_deployment(self, predicate: Callable[[DeploymentState], bool], after: float) -> float | None:
        return next((s.at for s in self.deployment if s.at >= after and predicate(s)), None)

    def pods_gone(self, after: float) -> float | None:
        """The first moment after `after` when no pod was left (the deletion of the last one); None if never."""
        alive: set[str] = set()
        for event in self.pods:
            if event.kind == "DELETED":
                alive.discard(event.name)
                if event.at >= after and not alive:
                    return event.at
            else:
                alive.add(event.name)
        return None

    # ---- the operator's run ----------------------------------------------------------------------------------
    def phases(self, name: str) -> list[tuple[str, float]]:
        """(phase, when it was first seen) in order, for DatabaseMigration `name`."""
        seen: list[tuple[str, float]] = []
        for event in self.migrations:
            if event.name == name and event.phase and (not seen or seen[-1][0] != event.phase):
                seen.append((event.phase, event.at))
        return seen

    def job_created(self, job: str) -> float | None:
        return next((e.at for e in self.jobs if e.name == job), None)

    def job_finished(self, job: str) -> tuple[float, str] | None:
        return next(((e.at, e.state) for e in self.jobs if e.name == job and e.state != "Running"), None)

    def first_job(self, migration: str, after: float = 0.0) -> JobEvent | None:
        return next((e for e in self.jobs if e.migration == migration and e.at >= after), None)

    def job_pod(self, job: str) -> dict[str, float | None]:
        """When the Job's (first) pod was created, first seen Running, its container first seen terminated ("done":
        the earliest the API tells the step's end) and the pod first seen Succeeded or Failed."""
        events = [e for e in self.job_pods if e.job == job]
        first = events[0].name if events else None
        mine = [e for e in events if e.name == first]
        return {
            "created": mine[0].at if mine else None,
            "running": next((e.at for e in mine if e.phase in ("Running", "Succeeded", "Failed")), None),
            "done": next((e.at for e in mine if e.container_ended or e.phase in ("Succeeded", "Failed")), None),
            "phase done": next((e.at for e in mine if e.phase in ("Succeeded", "Failed")), None),
        }

    def job_names(self, migration: str) -> list[str]:
        names: list[str] = []
        for event in self.jobs:
            if event.migration == migration and event.name not in names:
                names.append(event.name)
        return names

    def next_status_step(self, name: str, after: float) -> MigrationEvent | None:
        """The first status write after `after` that moved the run on: a new phase or a new status.log entry."""
        before = None
        for event in self.migrations:
            if event.name != name:
                continue
            if event.at <= after:
                before = event
                continue
            if before is None or event.phase != before.phase or event.log_length > before.log_length:
                return event
        return None

    def next_phase_change(self, name: str, after: float) -> MigrationEvent | None:
        """The first status write after `after` whose phase differs from the phase at `after`."""
        current = None
        for event in self.migrations:
            if event.name != name:
                continue
            if event.at <= after or current is None:
                current = event.phase
            elif event.phase != current:
                return event
        return None

    def first_status(self, name: str, predicate: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((e.at for e in self.migrations if e.name == name and predicate(e.status)), None)

    def final_status(self, name: str) -> dict[str, Any]:
        found = [e.status for e in self.migrations if e.name == name]
        return found[-1] if found else {}


def _job_state(job: Any) -> str:
    status = job.status
    if status is not None and (status.succeeded or 0) >= 1:
        return "Succeeded"
    if status is not None and any(c.type == "Failed" and c.status == "True" for c in status.conditions or []):
        return "Failed"
    return "Running"


class _Watcher:
    """One resource kind in one namespace: list, then watch from that resourceVersion, until stopped."""

    def __init__(self, lister: Callable[..., Any], namespace: str, on_event: Callable[[str, Any, float], None],
                 stop: threading.Event, **kwargs: Any) -> None:
        self.lister, self.namespace, self.on_event, self.stop, self.kwargs = lister, namespace, on_event, stop, kwargs
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _items(self, listing: Any) -> tuple[list[Any], str]:
        if isinstance(listing, dict):  # custom objects
            return list(listing.get("items") or []), str(listing["metadata"]["resourceVersion"])
        return list(listing.items), str(listing.metadata.resource_version)

    def _run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    items, version = self._items(self.lister(self.namespace, **self.kwargs))
                    now = time.time()
                    for item in items:
                        self.on_event("ADDED", item, now)
                    self.ready.set()
                stream = watch.Watch().stream(self.lister, self.namespace, resource_version=version,
                                              timeout_seconds=2, allow_watch_bookmarks=True, **self.kwargs)
                for event in stream:
                    now = time.time()
                    obj = event["object"]
                    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
                    version = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_event(event["type"], obj, now)
                    if self.stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:  # too old: list again
                    version = None
                else:
                    time.sleep(0.2)
            except Exception:  # a dropped connection must not end the recording
                time.sleep(0.2)


@contextmanager
def record(api: client.ApiClient, namespace: str, deployment: str | None = "api-gateway",
           pod_selector: str = "app=api-gateway") -> Iterator[Recording]:
    """Records the namespace while the block runs (the watches are listening when the block starts)."""
    rec = Recording()
    stop = threading.Event()
    apps, core, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    custom = client.CustomObjectsApi(api)

    def on_deployment(kind: str, d: Any, at: float) -> None:
        if kind == "DELETED":
            return
        status = d.status
        rec.deployment.append(DeploymentState(
            at=at,
            replicas=d.spec.replicas if d.spec.replicas is not None else 1,
            available=(status.available_replicas or 0) if status else 0,
            updated=(status.updated_replicas or 0) if status else 0,
            up_to_date=bool(status and (status.observed_generation or 0) >= (d.metadata.generation or 0)),
        ))

    def on_pod(kind: str, pod: Any, at: float) -> None:
        rec.pods.append(PodEvent(at, kind, pod.metadata.name))

    def on_job(kind: str, job: Any, at: float) -> None:
        labels = job.metadata.labels or {}
        rec.jobs.append(JobEvent(at, kind, job.metadata.name, labels.get("dbops.io/step"),
                                 labels.get("dbops.io/migration"), _job_state(job)))

    def on_job_pod(kind: str, pod: Any, at: float) -> None:
        labels = pod.metadata.labels or {}
        ended = any(c.state is not None and c.state.terminated is not None
                    for c in (pod.status.container_statuses if pod.status else None) or [])
        rec.job_pods.append(JobPodEvent(at, kind, pod.metadata.name, labels.get("job-name"),
                                        pod.status.phase if pod.status else None, ended))

    def on_migration(kind: str, obj: Any, at: float) -> None:
        status = dict(obj.get("status") or {})
        rec.migrations.append(MigrationEvent(at, obj["metadata"]["name"], status.get("phase"),
                                             len(status.get("log") or []), status))

    watchers = [
        _Watcher(batch.list_namespaced_job, namespace, on_job, stop,
                 label_selector="app.kubernetes.io/managed-by=migration-operator"),
        _Watcher(core.list_namespaced_pod, namespace, on_job_pod, stop,
                 label_selector="app.kubernetes.io/managed-by=migration-operator"),
        _Watcher(lambda ns, **kw: custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw),
                 namespace, on_migration, stop),
    ]
    if deployment:
        watchers += [
            _Watcher(apps.list_namespaced_deployment, namespace, on_deployment, stop,
                     field_selector=f"metadata.name={deployment}"),
            _Watcher(core.list_namespaced_pod, namespace, on_pod, stop, label_selector=pod_selector),
        ]
    for watcher in watchers:
        watcher.thread.start()
    for watcher in watchers:
        watcher.ready.wait(timeout=30)
    try:
        yield rec
    finally:
        stop.set()
        for watcher in watchers:
            watcher.thread.join(timeout=5)
