"""Leader election: several replicas of the operator, one acting, through a coordination.k8s.io Lease of our own.

Why not kopf's peering: peering is a pause-by-priority mechanism (an operator pauses while one of higher priority
runs; two of equal priority both freeze), not an election, and it needs CRDs of its own. What we need is client-go's
leaderelection: one holder of a Lease, renewed while it acts, taken over by a standby once it expires.

- The Lease: env DBOPS_LEADER_LEASE (default `migration-operator-leader`) in the operator's namespace
  (POD_NAMESPACE). Its holder identity is the pod's name (POD_NAME): a container the kubelet restarts in the same
  pod finds the Lease under its own name and takes it back at once (the instance that held it is dead), while the
  Lease of a pod that is gone is taken by a standby once it has not been renewed for leaseDurationSeconds.
- Expiry is judged on the standby's own clock, never on the holder's timestamps (clocks of two nodes differ): a
  record (its resourceVersion) seen unchanged for the record's leaseDurationSeconds is expired, as in client-go.
- The leader renews every retry period; a renewal that has not succeeded for `renew_deadline` (shorter than the
  lease) makes it stop acting at once (the process exits, the kubelet restarts it as a standby). The deadline is
  counted from the moment the last successful renewal was *sent*, before the server wrote it, and the standby counts
  from when it *saw* that write, after: so the old leader has stopped before anyone may take over.
- Every write carries the resourceVersion it read (optimistic concurrency): two standbys racing for an expired
  Lease cannot both win; the loser gets 409 and keeps standing by.
- On SIGTERM the leader stops kopf, then releases the Lease (empty holder, 1 s duration) so the standby takes over
  within its retry period instead of a whole lease duration: a rolling update hands over in about a second.

Timing (client-go's defaults, which kube-controller-manager uses): lease 15 s, renew deadline 10 s, retry 2 s. A
SIGKILLed leader's pod is taken over after about leaseDuration + retry period (the standby must see the record
unchanged for the whole lease); the 5 s between renew deadline and lease leave room for the old leader's exit and
for a slow API server. Shorter leases take over faster but make a busy API server (2 cores here) or an API server
restart end leaderships for nothing. DBOPS_LEADER_LEASE_SECONDS, DBOPS_LEADER_RENEW_DEADLINE_SECONDS and
DBOPS_LEADER_RETRY_SECONDS override them (the chart's leaderElection values).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import constants, kube

LEASE_ENV = "DBOPS_LEADER_LEASE"
DEFAULT_LEASE_NAME = "migration-operator-leader"
LEADER_ANNOTATION = "dbops.io/leader-election"

logger = logging.getLogger("migration_operator.leader")


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period} / {self.renew_deadline} / {self.lease_duration}"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Timing:
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            lease_duration=float(env.get("DBOPS_LEADER_LEASE_SECONDS") or default.lease_duration),
            renew_deadline=float(env.get("DBOPS_LEADER_RENEW_DEADLINE_SECONDS") or default.renew_deadline),
            retry_period=float(env.get("DBOPS_LEADER_RETRY_SECONDS") or default.retry_period),
        )


@dataclass(frozen=True)
class LeaseRecord:
    """What the election reads of the Lease."""

    holder: str  # "" when released or never held
    lease_duration_seconds: int
    transitions: int
    acquire_time: str | None
    resource_version: str

    @classmethod
    def from_api(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),  # the API's MicroTime text, written back as it is
            resource_version=str(lease["metadata"]["resourceVersion"]),
        )


@dataclass(frozen=True)
class Observed:
    """A record and when this replica first saw it, on its own monotonic clock."""

    record: LeaseRecord
    at: float


def observe(previous: Observed | None, record: LeaseRecord | None, now: float) -> Observed | None:
    """The record with the time it was first seen: the same record (resourceVersion) keeps its first sighting, so its
    age grows until it changes, whatever the holder's clock says."""
    if record is None:
        return None
    if previous is not None and previous.record.resource_version == record.resource_version:
        return previous
    return Observed(record, now)


def may_acquire(me: str, observed: Observed | None, now: float) -> bool:
    """May `me` write itself as the holder? When there is no Lease, when nobody holds it (released), when it is
    already ours (our pod's previous container held it), or when it has not changed for its lease duration."""
    if observed is None:
        return True
    holder = observed.record.holder
    if not holder or holder == me:
        return True
    return now - observed.at >= observed.record.lease_duration_seconds


def must_step_down(last_renewed: float | None, now: float, timing: Timing) -> bool:
    """The leader stops acting when its last successful renewal was sent `renew_deadline` ago or more."""
    return last_renewed is None or now - last_renewed >= timing.renew_deadline


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    name: str, me: str, record: LeaseRecord | None, timing: Timing, now: datetime, release: bool = False
) -> dict[str, Any]:
    """The Lease `me` writes: holding it (acquireTime and leaseTransitions change only when the holder changes) or,
    with `release`, giving it up (empty holder, 1 s duration: the standby may take it on its next look)."""
    taking_over = record is None or record.holder != me
    stamp = _micro_time(now)
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE},
        "annotations": {LEADER_ANNOTATION: "migration-operator"},
    }
    if record is not None:
        metadata["resourceVersion"] = record.resource_version
    transitions = 0 if record is None else record.transitions + (1 if taking_over else 0)
    spec: dict[str, Any] = {
        "holderIdentity": None if release else me,
        "leaseDurationSeconds": 1 if release else max(1, round(timing.lease_duration)),
        "acquireTime": stamp if taking_over or record is None else record.acquire_time,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def lease_name() -> str:
    return os.environ.get(LEASE_ENV) or DEFAULT_LEASE_NAME


def lease_namespace() -> str:
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:  # in a pod without the env: the ServiceAccount's namespace
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as file:
            return file.read().strip()
    except OSError:
        return "default"


def identity() -> str:
    """The pod's name: a restarted container of the same pod is the same candidate."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def _taken(previous: str | None, me: str) -> str:
    if previous is None:
        return "created"
    if previous == me:
        return "taken back by the same pod"
    return f"taken over from {previous}" if previous else "released by the previous leader"


def _why(error: BaseException) -> str:
    """A short reason for the log (an HTTP status and reason, or the exception's type): no response bodies."""
    if isinstance(error, kube.ApiError):
        return f"{error.status} {error.reason}"
    return type(error).__name__


RELEASE_ATTEMPTS = 3  # a release that meets a write of our own in flight reads again, at most this many times


class LeadershipLost(Exception):
    """The Lease could not be renewed before the deadline, or another replica holds it now."""


class LeaderElector:
    """One replica's side of the election. `acquire()` stands by until this replica holds the Lease; `hold()` renews
    it and returns (raising LeadershipLost) the moment leadership may no longer be assumed; `release()` gives it up."""

    def __init__(
        self,
        namespace: str,
        name: str,
        me: str,
        timing: Timing,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.namespace, self.name, self.me, self.timing = namespace, name, me, timing
        self.clock = clock
        self.on_change = on_change
        self.observed: Observed | None = None
        self.taken_from: str | None = None  # the holder the last successful write replaced ("" released, None new)
        self.last_renewed: float | None = None
        self.leading = False

    @property
    def holder(self) -> str:
        return self.observed.record.holder if self.observed else ""

    async def _read(self, timeout: float) -> LeaseRecord | None:
        lease = await kube.get_or_none("leases", self.namespace, self.name, timeout=max(1.0, timeout))
        return None if lease is None else LeaseRecord.from_api(lease)

    async def try_acquire_or_renew(self, timeout: float) -> bool:
        """One look at the Lease, and a write of ourselves as its holder when we may. False when another replica
        holds it (or won the race for it)."""
        record = await self._read(timeout)
        self.observed = observe(self.observed, record, self.clock())
        if not may_acquire(self.me, self.observed, self.clock()):
            return False
        body = lease_body(self.name, self.me, record, self.timing, datetime.now(UTC))
        try:
            if record is None:
                written = await kube.create("leases", self.namespace, body, timeout=max(1.0, timeout))
            else:
                written = await kube.replace("leases", self.namespace, self.name, body, timeout=max(1.0, timeout))
        except kube.ApiError as error:
            if error.status in (409, 422):  # another replica wrote it since we read it
                return False
            raise
        self.taken_from = None if record is None else record.holder
        self.observed = Observed(LeaseRecord.from_api(written), self.clock())
        return True

    def _set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if self.on_change is not None:
                self.on_change(leading)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Stand by until this replica holds the Lease (True), or until `stop` is set (False)."""
        waiting_for: str | None = None
        while not stop.is_set():
            started = self.clock()
            try:
                if await self.try_acquire_or_renew(timeout=self.timing.retry_period * 2):
                    self.last_renewed = started
                    logger.info("leader election: %s now leads (Lease %s/%s, %s)", self.me, self.namespace,
                                self.name, _taken(self.taken_from, self.me))
                    self._set_leading(True)
                    return True
                if self.holder != waiting_for:
                    waiting_for = self.holder
                    logger.info("leader election: %s stands by, %s leads (Lease %s/%s)", self.me, waiting_for,
                                self.namespace, self.name)
            except Exception as error:  # an API server away: keep standing by
                logger.warning("leader election: cannot read or write Lease %s/%s: %s", self.namespace, self.name,
                               _why(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.timing.retry_period)
        return False

    async def hold(self) -> None:
        """Renew every retry period until leadership is lost: then raise LeadershipLost at once (the caller must stop
        acting). Never returns otherwise; cancel it to stop renewing."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            started = self.clock()
            remaining = self.timing.renew_deadline - (started - (self.last_renewed or started))
            renewed = False
            try:
                renewed = remaining > 0 and await self.try_acquire_or_renew(timeout=remaining)
            except Exception as error:  # whatever failed, only the deadline decides
                logger.warning("leader election: renewing Lease %s/%s failed: %s", self.namespace, self.name,
                               _why(error))
            if renewed:
                self.last_renewed = started
                continue
            if self.holder and self.holder != self.me:
                self._set_leading(False)
                raise LeadershipLost(f"{self.holder} holds Lease {self.namespace}/{self.name} now")
            if must_step_down(self.last_renewed, self.clock(), self.timing):
                self._set_leading(False)
                raise LeadershipLost(
                    f"Lease {self.namespace}/{self.name} not renewed for {self.timing.renew_deadline:g} s"
                )

    async def release(self) -> None:
        """Give the Lease up if we still hold it, so a standby takes over on its next look."""
        if not self.leading:
            return
        self._set_leading(False)
        timeout = self.timing.retry_period * 2
        try:
            for attempt in range(RELEASE_ATTEMPTS):
                record = await self._read(timeout)
                if record is None or record.holder != self.me:
                    return
                body = lease_body(self.name, self.me, record, self.timing, datetime.now(UTC), release=True)
                try:
                    await kube.replace("leases", self.namespace, self.name, body, timeout=timeout)
                except kube.ApiError as error:
                    # a renewal already on the wire when hold() was cancelled (the server may have taken it before
                    # the cancel reached the client) lands between our read and our write: read again and release
                    if error.status == 409 and attempt + 1 < RELEASE_ATTEMPTS:
                        continue
                    raise
                logger.info("leader election: %s released Lease %s/%s", self.me, self.namespace, self.name)
                return
        except Exception as error:  # exiting anyway
            logger.warning("leader election: releasing Lease %s/%s failed (a standby takes over when it expires): %s",
                           self.namespace, self.name, _why(error))
