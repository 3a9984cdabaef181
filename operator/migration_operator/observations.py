"""What one reconcile pass saw, and the condition changes a decision makes: the types shared by the I/O modules
(`database`, `lock`, `maintenance`, `jobs`) and the phase machine (`machine`).

This module sits below both, so an I/O module returns these types without importing the machine, and the
machine judges them without knowing where they came from. Plain frozen dataclasses: no I/O, no behaviour beyond
small derived properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from .models import AppliedMigration, LastError, PendingMigration, Snapshot

JobState = Literal["Absent", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobObservation:
    state: JobState = "Absent"
    # What the step's container printed (Flyway's sections, the key=value summary), whole, once the Job ended:
    # its log read through the API, or its termination message when the log cannot be had (`output_source`).
    output: str | None = None
    # Why the Job failed when not from the output (DeadlineExceeded, BackoffLimitExceeded, pod reason).
    failure: str | None = None
    exit_code: int | None = None
    # Where `output` comes from: "log" (the container's log, complete unless `output_truncated`) or
    # "terminationMessage" (the fallback: at most 4096 bytes); None without output.
    output_source: Literal["log", "terminationMessage"] | None = None
    # True when `output` may be only the head of what the container printed: the log was longer than
    # jobs.LOG_LIMIT_BYTES, or the termination message fills its 4096 bytes. Parse it leniently, trust no count.
    output_truncated: bool = False
    # While the Job is Running and its pod cannot start a container: the container's `state.waiting` reason and
    # message (ErrImagePull, ImagePullBackOff, InvalidImageName, CreateContainerConfigError, CrashLoopBackOff...),
    # the first such container, init containers first; or "Unschedulable" with the PodScheduled condition's message
    # while no node accepts the pod. The normal ContainerCreating and PodInitializing are not reported (None).
    waiting_reason: str | None = None
    waiting_message: str | None = None
    waiting_container: str | None = None  # that container's name (None for Unschedulable)
    # Since when that container (or the unscheduled pod) has been waiting, at the latest: the end of the init
    # container before it, or the pod's start on its node, or the PodScheduled condition's change. UTC-aware.
    waiting_since: datetime | None = None
    # While the Job is Running: every pod it has is being deleted (its pod was deleted or evicted; the Job controller
    # has not counted it failed yet).
    terminating: bool = False
    # While the Job is Running: how many of its pods failed having run nothing (a container the runtime could not
    # start, a pod the kubelet refused), each replaced by the Job controller (jobs.POD_FAILURE_POLICY), and why the
    # last one did ("StartError: failed to start containerd task ...").
    replaced: int = 0
    replaced_why: str | None = None


ABSENT = JobObservation()


@dataclass(frozen=True)
class LockObservation:
    acquired: bool
    holder: str | None = None  # "<namespace>/<name>" of the migration holding the database


@dataclass(frozen=True)
class DatabaseCheck:
    """The operator's own connection test and history read (preflight)."""

    reachable: bool
    reason: str | None = None  # BadCredentials, DatabaseUnreachable, DatabaseNotFound ...
    message: str = ""
    history: tuple[AppliedMigration, ...] = ()  # every row, in installed_rank order
    history_table_exists: bool = False

    @property
    def failed_rows(self) -> list[AppliedMigration]:
        return [row for row in self.history if not row.success]

    @property
    def applied_versions(self) -> set[str]:
        return {row.version for row in self.history if row.success and row.version is not None}


@dataclass(frozen=True)
class DeploymentObservation:
    exists: bool
    replicas: int = 0  # spec.replicas
    available_replicas: int = 0
    updated_replicas: int = 0
    pods: int = 0  # pods matching the selector, terminating ones included
    up_to_date: bool = True  # status.observedGeneration >= metadata.generation
    original_replicas_annotation: int | None = None
    annotation_owner: str | None = None
    # Who last set spec.replicas (the field manager of managedFields), to name whoever scales the app mid-run.
    replicas_manager: str | None = None

    def scaled_by(self) -> str:
        """How a scale by someone else is said (the hold guard, the exit, RollingBack): "scaled to 5 by
        argocd-controller"."""
        return f"scaled to {self.replicas} by {self.replicas_manager or 'someone'}"


@dataclass(frozen=True)
class Session:
    pid: int
    usename: str | None
    application_name: str | None
    state: str | None
    client: str | None = None

    def describe(self) -> str:
        who = self.application_name or "-"
        return f"pid {self.pid} ({self.usename or '?'}, {who}, {self.state or '?'})"


@dataclass(frozen=True)
class CloneObservation:
    source_exists: bool
    clone_exists: bool
    failed_copy_exists: bool = False
    size_bytes: int | None = None


@dataclass(frozen=True)
class Verification:
    """Raw facts after the migration; the machine judges them."""

    snapshot: Snapshot
    failed_rows: tuple[AppliedMigration, ...] = ()
    applied: tuple[AppliedMigration, ...] = ()  # rows installed by this run
    check_results: dict[str, bool | str] = field(default_factory=dict)  # name -> passed, or the error text
    error: str | None = None  # the database could not be queried


@dataclass(frozen=True)
class Observations:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    generation: int | None = None
    approved: bool = False
    lock: LockObservation | None = None
    # Preflight failures found by the handlers (missing ConfigMap, Secret, PVC ...): (reason, message).
    missing: tuple[tuple[str, str], ...] = ()
    database: DatabaseCheck | None = None
    # Migrations found in the ConfigMap (None when the source is an image).
    local_migrations: tuple[PendingMigration, ...] | None = None
    snapshot: Snapshot | None = None
    # Why the run's Restore could not work for the migration role (preflight; empty: it can).
    restore_problems: tuple[str, ...] = ()
    deployment: DeploymentObservation | None = None
    app_sessions: tuple[Session, ...] = ()
    # The pre-started Jobs (by step: backup, migrate) whose session waits for its go (gosignal.wait_sql running);
    # None when not looked at.
    armed_waiting: tuple[str, ...] | None = None
    blocked_locks: tuple[str, ...] = ()
    jobs: dict[str, JobObservation] = field(default_factory=dict)
    clone: CloneObservation | None = None
    verification: Verification | None = None
    # The error met while observing in this pass, or the one of the last pass's actions (status.lastError).
    last_error: LastError | None = None
    # False when observing raised (`last_error` says what): nothing above reflects the world.
    observed: bool = True

    def job(self, step: str) -> JobObservation:
        return self.jobs.get(step, ABSENT)


@dataclass(frozen=True)
class ConditionChange:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
