"""kopf wiring, and nothing else: the only module with @kopf decorators.

- One daemon per DatabaseMigration runs `reconcile.reconcile_once` until the run is terminal. Between passes
  it waits on a per-object trigger with the pass's requeue delay as a fallback timeout.
- Watches on our Jobs (label app.kubernetes.io/managed-by=migration-operator), on their pods (a pod that ended:
  the Job's status says so only up to a second later), on Deployments used for maintenance and on the
  DatabaseMigrations themselves (the approval annotation) fire that trigger, so the run moves as soon as something
  changes instead of on a timer. The Jobs and pods are selected by the API server (`settings.watching.label_selectors`):
  the operator never receives the other pods and Jobs of the watched namespaces.
- Settings in one startup handler: kopf's own progress and diff-base storage under the `dbops.io` prefix in
  annotations (status stays ours alone, and nothing kopf-specific needs to be declared in the CRD schema);
  finalizer `dbops.io/finalizer` (the delete handler must scale the app back if a run is deleted in flight).
- One patch of kopf: a watch refused with 403 in one namespace is retried instead of stopping the operator (see
  `tolerate_forbidden_watches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kopf._cogs.clients import errors as kopf_errors
from kopf._core.reactor import queueing as kopf_queueing

from . import constants, errors, jobs, kube, metrics, reconcile, tail

Logger = logging.Logger | logging.LoggerAdapter[Any]
# The wake-up of each run's daemon: process wiring between kopf's watch handlers and the daemons, not run state
# (that lives in the resource's status).
_triggers: dict[tuple[str, str], asyncio.Event] = {}
ERROR_BACKOFF = (2.0, 5.0, 10.0, 30.0, 60.0)
# Passes that failed for at least this long (an API server restart, the database gone) get a line in the run's log
# once a pass gets through again; a single failed pass that the next one repairs does not.
OUTAGE_NOTE_SECONDS = 5.0


def first_error_line(error: BaseException) -> str:
    """`Type: first line` of an exception, scrubbed, for the run's log."""
    lines = errors.scrub(str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
FORBIDDEN_WATCH_RETRY = 15.0
logger = logging.getLogger(__name__)


def tolerate_forbidden_watches(watcher: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """kopf stops the whole operator when any watch is refused. With per-namespace Roles (scoped install) that
    happens whenever a watched namespace is deleted: its Role goes at once, while kopf keeps watching the namespace
    until it is gone, to serve finalizers. So a namespaced watch refused with 403 is retried every
    FORBIDDEN_WATCH_RETRY seconds, with one warning, until it works again or kopf cancels it (the namespace is
    gone). Cluster-wide watches keep kopf's behaviour."""

    @functools.wraps(watcher)
    async def tolerant(*args: Any, namespace: str | None, **kwargs: Any) -> None:
        warned = False
        while True:
            try:
                return await watcher(*args, namespace=namespace, **kwargs)
            except kopf_errors.APIForbiddenError as error:
                if namespace is None:
                    raise
                if not warned:
                    resource = kwargs.get("resource")
                    logger.warning(
                        "watching %s in namespace %s is forbidden (%s); retrying every %ss until it is allowed again "
                        "or the namespace is gone", resource, namespace, error, FORBIDDEN_WATCH_RETRY,
                    )
                    warned = True
            await asyncio.sleep(FORBIDDEN_WATCH_RETRY)

    tolerant.tolerates_forbidden = True  # type: ignore[attr-defined]
    return tolerant


if not getattr(kopf_queueing.watcher, "tolerates_forbidden", False):
    kopf_queueing.watcher = tolerate_forbidden_watches(kopf_queueing.watcher)  # type: ignore[assignment]


def quiet_handler_success(record: logging.LogRecord) -> bool:
    """Demote kopf's "Handler '...' succeeded." to DEBUG (dropped unless debug logging is on)."""
    if record.levelno == logging.INFO and str(record.msg).startswith("Handler '") and str(record.msg).endswith(
        " succeeded."
    ):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("kopf").isEnabledFor(logging.DEBUG)
    return True


def poke(namespace: str | None, name: str | None) -> None:
    if namespace and name and (namespace, name) in _triggers:
        _triggers[(namespace, name)].set()


def poke_labelled(namespace: str | None, label: str | None) -> None:
    """Wake the run whose pods carry `dbops.io/migration: <label>` (the name, shortened to a label value)."""
    for key, trigger in list(_triggers.items()):
        if key[0] == namespace and jobs.label_value(key[1]) == label:
            trigger.set()


OUR_JOBS = f"{constants.MANAGED_BY_LABEL}={constants.MANAGED_BY_VALUE}"
OUR_PODS = f"{OUR_JOBS},{constants.MIGRATION_LABEL}"
ENDED_POD_PHASES = frozenset({"Succeeded", "Failed"})


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = constants.FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.request_timeout = 60
    settings.batching.error_delays = ERROR_BACKOFF
    # Server-side selection: the handlers below want only our Jobs and their pods, not every pod of the namespaces.
    settings.watching.label_selectors["batch", "v1", "jobs"] = OUR_JOBS
    settings.watching.label_selectors["", "v1", "pods"] = OUR_PODS
    # kopf logs every handler's success at INFO: with watches on Deployments and Jobs that is lines per second while
    # an app scales. Ours log what matters (phase changes, actions, errors); kopf's own lines go to debug.
    logging.getLogger("kopf.objects").addFilter(quiet_handler_success)
    tail.set_waker(poke_labelled)  # a followed step's log that ended (`tail`) wakes its run
    port = int(os.environ.get("METRICS_PORT", "8080"))
    metrics.serve(port)
    logger.info("migration-operator started (metrics on :%s)", port or "disabled")


@kopf.on.cleanup()
async def close_api_session(**_: Any) -> None:
    await kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's login, the same as our client's (`kube.credentials`): in-cluster first, then the kubeconfig. Registered,
    it replaces kopf's default one, which would log in through the official client."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    return info


@kopf.daemon(constants.GROUP, constants.VERSION, constants.PLURAL, cancellation_timeout=5.0)
async def run_migration(
    name: str, namespace: str | None, stopped: kopf.DaemonStopped, logger: Logger, **_: Any
) -> None:
    if namespace is None:
        return
    key = (namespace, name)
    trigger = _triggers.setdefault(key, asyncio.Event())
    failures = 0
    first = True  # this process's first pass over the run: one found in flight is logged as resumed
    metrics.IN_FLIGHT.inc()
    try:
        outage: tuple[float, str] | None = None  # since when passes fail, and the first failure
        while not stopped:
            trigger.clear()
            note = None
            if outage is not None and time.monotonic() - outage[0] >= OUTAGE_NOTE_SECONDS:
                note = reconcile.outage_note(time.monotonic() - outage[0], failures, outage[1])
            try:
                delay = await reconcile.reconcile_once(namespace, name, logger, first=first, note=note)
                failures, first, outage = 0, False, None
            except kopf.TemporaryError as error:
                logger.warning("%s; retrying in %ss", error, error.delay)
                delay = float(error.delay or 10.0)
            except Exception as error:  # keep the run alive: the next pass starts from the API's truth
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                if outage is None:
                    outage = (time.monotonic(), first_error_line(error))
                logger.exception("reconcile failed (%s); retrying in %ss", type(error).__name__, delay)
            if delay is None:
                return
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(trigger.wait(), timeout=delay)
    finally:
        metrics.IN_FLIGHT.dec()
        _triggers.pop(key, None)


@kopf.on.event(constants.GROUP, constants.VERSION, constants.PLURAL)
async def migration_changed(name: str, namespace: str | None, **_: Any) -> None:
    poke(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE})
async def job_changed(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == constants.KIND:
            poke(namespace, owner.get("name"))


@kopf.on.event(
    "",
    "v1",
    "pods",
    labels={constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE, constants.MIGRATION_LABEL: kopf.PRESENT},
)
async def job_pod_changed(namespace: str | None, labels: kopf.Labels, status: kopf.Status, **_: Any) -> None:
    """A Job's pod that ended, or whose container ended (the kubelet reports that ~1 s before the pod's own phase),
    wakes its run at once (`jobs.ended_pod_state` judges it)."""
    containers = status.get("containerStatuses") or []
    if status.get("phase") in ENDED_POD_PHASES or any((c.get("state") or {}).get("terminated") for c in containers):
        poke_labelled(namespace, labels.get(constants.MIGRATION_LABEL))


@kopf.index(constants.GROUP, constants.VERSION, constants.PLURAL)
def maintenance_runs(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, Deployment) -> the runs that use it for maintenance (kopf keeps it in step with the watch)."""
    deployment = ((dict(spec).get("maintenance") or {}).get("deployment") or {}).get("name")
    return {(namespace or "", deployment): name} if deployment else {}


def used_for_maintenance(namespace: str | None, name: str, **kwargs: Any) -> bool:
    return (namespace or "", name) in kwargs["maintenance_runs"]


@kopf.on.event("apps", "v1", "deployments", when=used_for_maintenance)
async def deployment_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
    runs: kopf.Index[tuple[str, str], str] = kwargs["maintenance_runs"]
    for migration in runs.get((namespace or "", name), []):
        poke(namespace, migration)


# retries: the handler waits (TemporaryError every 2 s) for the run's Jobs to stop before scaling the app back
@kopf.on.delete(constants.GROUP, constants.VERSION, constants.PLURAL, retries=120, backoff=5, timeout=300)
async def migration_deleted(body: kopf.Body, logger: Logger, **_: Any) -> None:
    await reconcile.on_delete(dict(body), logger)
