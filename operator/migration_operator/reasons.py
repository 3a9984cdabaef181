"""The vocabulary: condition types, CamelCase reasons and step names, used by status.conditions, events, Job
names and status.jobs.

One module, like atlas-operator's reason.go, so users (and the Argo CD health check) can grep for them. Nothing
here is built from f-strings elsewhere: a reason that is not in this module does not exist.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Step(StrEnum):
    """A step the operator delegates to a pod: the suffix of its Job's deterministic name (`<run>-<step>`) and the
    key of status.jobs."""

    VALIDATE = "validate"
    BACKUP = "backup"
    MIGRATE = "migrate"
    # The backup and migrate Jobs created when the app starts draining (spec.maintenance.prestartMigration): their
    # pods (and Flyway's JVM) start while the app drains; each waits for the operator's go (gosignal.py) and, when its
    # phase starts, becomes that phase's step (status.jobs.backup / status.jobs.migrate name it).
    ARMED_BACKUP = "armed-backup"
    ARMED_MIGRATE = "armed-migrate"
    RESTORE = "restore"
    REPAIR = "repair"
    COMPENSATE = "compensate"


# The steps that put the database back (RollingBack runs them; every other step is stopped before).
ROLLBACK_STEPS: Final = frozenset({Step.RESTORE, Step.REPAIR, Step.COMPENSATE})
# The pre-started Job of a step (maintenance.prestartMigration), by the step it becomes once its phase adopts it.
ARMED: Final = {Step.BACKUP: Step.ARMED_BACKUP, Step.MIGRATE: Step.ARMED_MIGRATE}


# Condition types.
READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"
BACKUP_COMPLETE: Final = "BackupComplete"
MAINTENANCE_MODE: Final = "MaintenanceMode"
MIGRATED: Final = "Migrated"
VERIFIED: Final = "Verified"
ROLLED_BACK: Final = "RolledBack"
CONDITION_TYPES: Final = (
    READY,
    RECONCILING,
    STALLED,
    BACKUP_COMPLETE,
    MAINTENANCE_MODE,
    MIGRATED,
    VERIFIED,
    ROLLED_BACK,
)

# Progress.
PENDING: Final = "Pending"
WAITING_FOR_LOCK: Final = "WaitingForLock"
AWAITING_APPROVAL: Final = "AwaitingApproval"
PREFLIGHT: Final = "Preflight"
VALIDATING: Final = "Validating"
BACKING_UP: Final = "BackingUp"
SCALING_DOWN: Final = "ScalingDown"
PRESTARTING_JOBS: Final = "PrestartingJobs"
DRAINING: Final = "Draining"
DRAINED: Final = "Drained"
MIGRATING: Final = "Migrating"
VERIFYING: Final = "Verifying"
SCALING_UP: Final = "ScalingUp"
ROLLING_BACK: Final = "RollingBack"
NOT_STARTED: Final = "NotStarted"

# Outcomes.
SUCCEEDED: Final = "Succeeded"
DRY_RUN_COMPLETE: Final = "DryRunComplete"
NOTHING_TO_MIGRATE: Final = "NothingToMigrate"
BACKUP_SUCCEEDED: Final = "BackupSucceeded"
BACKUP_DISABLED: Final = "BackupDisabled"
BACKUP_FAILED: Final = "BackupFailed"
MIGRATION_SUCCEEDED: Final = "MigrationSucceeded"
MIGRATION_FAILED: Final = "MigrationFailed"
VERIFICATION_SUCCEEDED: Final = "VerificationSucceeded"
VERIFICATION_FAILED: Final = "VerificationFailed"
APP_RESTORED: Final = "AppRestored"
APP_NOT_AVAILABLE: Final = "AppNotAvailable"
DRAIN_TIMEOUT: Final = "DrainTimeout"
RESTORE_SUCCEEDED: Final = "RestoreSucceeded"
REPAIR_SUCCEEDED: Final = "RepairSucceeded"
COMPENSATE_SUCCEEDED: Final = "CompensateSucceeded"
ROLLBACK_FAILED: Final = "RollbackFailed"
ROLLBACK_DISABLED: Final = "RollbackDisabled"
NOTHING_TO_ROLL_BACK: Final = "NothingToRollBack"
FAILED: Final = "Failed"

# Errors met while observing or acting, by what the operator was doing.
RETRYING: Final = "Retrying"
OPERATION_FAILED: Final = "OperationFailed"
OBSERVE_FAILED: Final = "ObserveFailed"
JOB_REFUSED: Final = "JobRefused"
SCALE_FAILED: Final = "ScaleFailed"
JOB_CANNOT_START: Final = "JobCannotStart"
MAINTENANCE_HELD: Final = "MaintenanceHeld"
MAINTENANCE_WINDOW_EXCEEDED: Final = "MaintenanceWindowExceeded"

# Preflight failures: precise, so a user knows what to fix.
BAD_CREDENTIALS: Final = "BadCredentials"
CREDENTIALS_SECRET_NOT_FOUND: Final = "CredentialsSecretNotFound"
DATABASE_UNREACHABLE: Final = "DatabaseUnreachable"
DATABASE_NOT_FOUND: Final = "DatabaseNotFound"
FAILED_MIGRATION_IN_HISTORY: Final = "FailedMigrationInHistory"
CHECKSUM_MISMATCH: Final = "ChecksumMismatch"
MISSING_MIGRATION: Final = "MissingMigration"
VALIDATION_FAILED: Final = "ValidationFailed"
DEPLOYMENT_NOT_FOUND: Final = "DeploymentNotFound"
MIGRATIONS_CONFIGMAP_NOT_FOUND: Final = "MigrationsConfigMapNotFound"
COMPENSATE_CONFIGMAP_NOT_FOUND: Final = "CompensateConfigMapNotFound"
BACKUP_VOLUME_NOT_FOUND: Final = "BackupVolumeNotFound"
RESTORE_NOT_POSSIBLE: Final = "RestoreNotPossible"
# Multi-tenant safety (policy.py): what a run may reference, and how it may reach the database.
CREDENTIALS_NOT_OPTED_IN: Final = "CredentialsNotOptedIn"
DEPLOYMENT_NOT_OPTED_IN: Final = "DeploymentNotOptedIn"
IMAGE_NOT_ALLOWED: Final = "ImageNotAllowed"
SERVICE_ACCOUNT_NOT_ALLOWED: Final = "ServiceAccountNotAllowed"
HOST_NOT_ALLOWED: Final = "HostNotAllowed"
CA_SECRET_NOT_FOUND: Final = "CaSecretNotFound"
AUTHENTICATION_REFUSED: Final = "AuthenticationRefused"
TLS_FAILED: Final = "TLSFailed"
COMPENSATE_NOT_PLAIN_SQL: Final = "CompensateNotPlainSql"
INVALID_SPEC: Final = "InvalidSpec"
TIMEOUT: Final = "Timeout"

# What the operator was doing when an error happened (status.lastError.action), and the reason it fails a phase with.
ACTION_OBSERVE: Final = "observing"
ACTION_CREATE_JOB: Final = "creating a Job"
ACTION_SCALE: Final = "scaling the app"
ACTION_CLEAR_RECORD: Final = "clearing the maintenance record"
ACTION_CLONE: Final = "cloning the database"
ACTION_SWAP_BACK: Final = "renaming the clone back"
ACTION_RELEASE_LOCK: Final = "releasing the Lease"
ACTION_STOP_JOB: Final = "stopping a Job"
ACTION_END_SESSIONS: Final = "terminating the sessions of a step"
ACTION_ADOPT_JOB: Final = "adopting a pre-started Job"
ACTION_GIVE_GO: Final = "giving the go to a pre-started Job"
# Creating a pre-started Job (maintenance.prestartMigration): an optimisation, so a refusal (a ResourceQuota, an
# admission webhook) never fails the run: EnteringMaintenance goes on without it (machine/prestart.py `refusal`).
ACTION_CREATE_ARMED_JOB: Final = "creating a pre-started Job"
ERROR_REASONS: Final = {
    ACTION_OBSERVE: OBSERVE_FAILED,
    ACTION_CREATE_JOB: JOB_REFUSED,
    ACTION_SCALE: SCALE_FAILED,
}
