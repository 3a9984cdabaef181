"""Names shared by the API, the manifests and the handlers. Others (chart, Argo CD, tests) rely on them."""

from __future__ import annotations

from typing import Final

GROUP: Final = "dbops.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "DatabaseMigration"
PLURAL: Final = "databasemigrations"
SINGULAR: Final = "databasemigration"
SHORT_NAMES: Final = ("dbmig", "dbm")
CATEGORIES: Final = ("dbops",)

# Annotations and labels.
APPROVED_ANNOTATION: Final = "dbops.io/approved"
ORIGINAL_REPLICAS_ANNOTATION: Final = "dbops.io/original-replicas"
# Who scaled the Deployment down: "<namespace>/<name>" of the DatabaseMigration. Lets a later run tell its
# own record from a stale one.
MAINTENANCE_OWNER_ANNOTATION: Final = "dbops.io/maintenance-by"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "migration-operator"
MIGRATION_LABEL: Final = "dbops.io/migration"
STEP_LABEL: Final = "dbops.io/step"

FINALIZER: Final = "dbops.io/finalizer"
STORAGE_PREFIX: Final = "dbops.io"

# application_name of every connection the operator and its Jobs open: never counted as an app session.
APPLICATION_NAME: Final = "migration-operator"

# Defaults (the CRD schema carries the same values as `default:`).
DEFAULT_POSTGRES_IMAGE: Final = "postgres:15"
DEFAULT_FLYWAY_IMAGE: Final = "flyway/flyway:12.4"
DEFAULT_RUN_AS: Final = 65532
LOG_LIMIT: Final = 50
TERMINATION_MESSAGE_LIMIT: Final = 4096
MIGRATIONS_MOUNT: Final = "/migrations"
BACKUP_MOUNT: Final = "/backup"
