"""The DatabaseMigration API (dbops.io/v1alpha1) as pydantic v2 models.

The CRD's OpenAPI schema is generated from these classes (`python -m migration_operator.crd`), so field
descriptions here are what `kubectl explain dbmig.spec...` prints. Defaults declared here end up as
`default:` in the schema: the API server applies them, the operator never writes `spec`.

CEL rules (`x-kubernetes-validations`) live next to the fields they guard, in `json_schema_extra`.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from . import constants

NAME_MAX = 253
SQL_MAX = 262144


def _cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"rule": rule, "message": message, **extra}


def immutable(field: str) -> dict[str, Any]:
    """A transition rule that rejects any change of `field` once the object exists."""
    return {
        "x-kubernetes-validations": [
            _cel("self == oldSelf", f"{field} is immutable: create a new DatabaseMigration for a new run")
        ]
    }


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=True,
    )


Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
# A Kubernetes object name (RFC 1123 subdomain: Secrets, ConfigMaps, Deployments, PVCs, ServiceAccounts).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN)]
# A key of a Secret or ConfigMap.
DataKey = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=r"^[-._a-zA-Z0-9]+$")]
# A PostgreSQL identifier (database, schema, table): at most 63 bytes (NAMEDATALEN - 1: PostgreSQL would silently cut
# a longer one, and a different object would be meant), no NUL or other control character.
PG_NAME_BYTES = 63
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"


def _pg_name_bytes(value: str) -> str:
    if len(value.encode()) > PG_NAME_BYTES:
        raise ValueError(f"a PostgreSQL name is at most {PG_NAME_BYTES} bytes (UTF-8)")
    return value


PgName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=PG_NAME_BYTES,
        pattern=NO_CONTROL,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"size(bytes(self)) <= {PG_NAME_BYTES}", f"at most {PG_NAME_BYTES} bytes (UTF-8)")
            ]
        },
    ),
    AfterValidator(_pg_name_bytes),
]
# A database host: an RFC 1123 DNS name (a trailing dot allowed) or an IP address; never a list, a URL, a port or a
# query string (libpq takes "a,b" as two hosts; the JDBC URL is built from it). IPv6 is checked loosely by the
# pattern and exactly by `_host` (the operator refuses what the API server let through: InvalidSpec).
HOST_PATTERN = (
    r"^(([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*\.?"
    r"|[0-9a-fA-F]{0,4}:[0-9a-fA-F:.]*)$"
)


def _host(value: str) -> str:
    if ":" in value:
        ipaddress.IPv6Address(value)  # ValueError: not an IPv6 address
    return value


Host = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=HOST_PATTERN), AfterValidator(_host)]
# Container images: a reference, nothing a shell or a YAML reader could take for something else.
Image = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$")]


# ---------------------------------------------------------------------------------------------------- spec
_AUTH_METHOD = "(password|md5|gss|sspi|scram-sha-256|none)"
REQUIRE_AUTH_PATTERN = rf"^(any|{_AUTH_METHOD}(,{_AUTH_METHOD})*|!{_AUTH_METHOD}(,!{_AUTH_METHOD})*)$"
REQUIRE_AUTH_ANY = "any"
DEFAULT_REQUIRE_AUTH = "scram-sha-256"


class SslMode(StrEnum):
    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class CredentialsSecret(ApiModel):
    """A Secret in the migration's namespace holding the database login. Never copied anywhere: Jobs get
    it through secretKeyRef, the operator reads it only to connect. Usable only when the Secret opts in: label
    dbops.io/credentials=true, or annotation dbops.io/allowed-migrations (names or globs of the DatabaseMigrations it
    serves); annotation dbops.io/allowed-hosts narrows the database hosts it may be sent to."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.usernameKey != self.passwordKey", "usernameKey and passwordKey must be different keys"),
            ]
        }
    )

    name: ObjectName = Field(description="Name of the Secret.")
    username_key: DataKey = Field("username", description="Key of the user name in the Secret.")
    password_key: DataKey = Field("password", description="Key of the password in the Secret.")


class CaSecret(ApiModel):
    """A Secret (or its key) holding the PEM certificate(s) of the CA that signed the server's certificate."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: DataKey = Field("ca.crt", description="Key of the PEM CA certificate in the Secret.")


class DatabaseSpec(ApiModel):
    """The PostgreSQL database to migrate."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.caSecret) || !has(self.sslMode) || self.sslMode in ['verify-ca', 'verify-full']",
                    "database.caSecret is for sslMode verify-ca or verify-full (the default with a caSecret)",
                ),
            ]
        }
    )

    host: Host = Field(description="DNS name or IP address of the PostgreSQL server (no port, list or URL).")
    port: int = Field(5432, ge=1, le=65535, description="TCP port of the PostgreSQL server.")
    name: PgName = Field(description="Database name.")
    credentials_secret: CredentialsSecret = Field(
        description="Secret with the login of a role that owns the schema (it runs the migrations)."
    )
    ssl_mode: SslMode | None = Field(
        None,
        description="libpq sslmode for every connection (the operator's and its Jobs'). Default: verify-full when "
        "caSecret is set, else require. disable, allow and prefer send the login over an unencrypted connection "
        "to whatever answers at host: only for a database that cannot do TLS, on a network you trust.",
    )
    ca_secret: CaSecret | None = Field(
        None, description="CA certificate to verify the server with (sslMode verify-full by default then)."
    )
    require_auth: Annotated[str, Field(max_length=128, pattern=REQUIRE_AUTH_PATTERN)] = Field(
        DEFAULT_REQUIRE_AUTH,
        description="libpq require_auth: the authentication methods the client accepts, so a server (or whatever "
        "answers at host) that asks for the password in cleartext or md5 gets nothing. Default scram-sha-256; a "
        "comma-separated list of password, md5, gss, sspi, scram-sha-256, none (or all negated with !); any: no "
        "requirement (the opt-out, for servers without SCRAM). Enforced by the operator's own connections (it "
        "connects first, in preflight) and by the Jobs' libpq from version 16 (PGREQUIREAUTH); Flyway's JDBC driver "
        "has no such setting.",
    )
    maintenance_database: PgName = Field(
        "postgres",
        description="Database the operator connects to for CREATE/ALTER DATABASE "
        "(backup.method Clone and its rollback).",
    )

    @property
    def effective_ssl_mode(self) -> str:
        """sslMode as given, else verify-full with a CA, else require."""
        if self.ssl_mode:
            return str(self.ssl_mode)
        return str(SslMode.VERIFY_FULL if self.ca_secret else SslMode.REQUIRE)

    @property
    def require_auth_setting(self) -> str | None:
        """The libpq require_auth value, None for `any` (no requirement)."""
        return None if self.require_auth == REQUIRE_AUTH_ANY else self.require_auth


class ConfigMapSource(ApiModel):
    name: ObjectName = Field(description="ConfigMap whose keys are Flyway migration files (V1__init.sql ...).")


class ImageSource(ApiModel):
    image: Image = Field(
        description="Image that contains the migration files. The Flyway Job copies them from `path` with "
        "an init container running this image (it needs `cp` and `sh`)."
    )
    path: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^/[^\x00-\x1f\x7f]*$")] = Field(
        "/flyway/sql",
        description="Absolute directory of the migration files inside the image (given to `cp` as one argument).",
    )


class MigrationsSpec(ApiModel):
    """Where the Flyway migrations come from and how far to go. Exactly one source."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.configMap) != has(self.image)",
                    "exactly one of migrations.configMap or migrations.image must be set",
                ),
            ]
        }
    )

    config_map: ConfigMapSource | None = Field(None, description="Migrations from a ConfigMap (max 1 MiB).")
    image: ImageSource | None = Field(None, description="Migrations from a directory of an image.")
    target_version: Annotated[str, Field(max_length=64, pattern=r"^(latest|[0-9]+([._][0-9]+)*)$")] | None = (
        Field(None, description='Flyway target version (e.g. "6" or "2.1"); default: the latest.')
    )
    table: PgName = Field("flyway_schema_history", description="Flyway schema history table.")
    schemas: list[PgName] = Field(
        default_factory=list,
        max_length=32,
        description="Schemas Flyway manages (default: the role's default schema, usually public).",
    )


class BackupMethod(StrEnum):
    DUMP = "Dump"
    CLONE = "Clone"


class BackupTiming(StrEnum):
    AFTER_DRAIN = "AfterDrain"
    BEFORE_MAINTENANCE = "BeforeMaintenance"


class VolumeSource(ApiModel):
    claim_name: ObjectName = Field(description="PersistentVolumeClaim the dump is written to and restored from.")


class BackupSpec(ApiModel):
    """The backup taken before anything changes the database."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!self.enabled || self.method != 'Dump' || has(self.volume)",
                    "backup.method Dump needs backup.volume.claimName",
                ),
                _cel(
                    "self.method != 'Clone' || self.timing == 'AfterDrain'",
                    "backup.method Clone copies the drained database: timing must be AfterDrain",
                ),
            ]
        }
    )

    enabled: bool = Field(
        True,
        description="Take a backup. Disabling it emits a warning event and rules "
        "out rollback.strategy Restore.",
    )
    method: BackupMethod = Field(
        BackupMethod.DUMP,
        description="Dump: pg_dump -Fc to a PVC, verified with "
        "pg_restore --list. Clone: CREATE DATABASE <db>_pre_<id> TEMPLATE <db>.",
    )
    timing: BackupTiming = Field(
        BackupTiming.AFTER_DRAIN,
        description="AfterDrain (default): the backup is taken once the app is "
        "stopped, so a restore loses no write. BeforeMaintenance: the runbook's order (backup while the "
        "app still runs, shorter downtime; writes between backup and drain are lost on Restore).",
    )
    volume: VolumeSource | None = Field(None, description="Where Dump writes (required for Dump).")
    compression: int = Field(
        1,
        ge=0,
        le=9,
        description="Dump: pg_dump's gzip level (--compress), 0 (none) to 9. The default 1 dumps about twice as "
        "fast as pg_dump's own default (6) for a file ~11% bigger; 0 is faster still where the volume is large "
        "and fast (the file is ~3x the size of level 1's). Every level is read back whole before the migration.",
    )


class DeploymentRef(ApiModel):
    name: ObjectName = Field(description="Deployment in the migration's namespace.")


class AppSessionFilter(ApiModel):
    """Which pg_stat_activity sessions count as the app's.

    Empty: every session on the database that is not the operator's or its Jobs'."""

    usernames: list[Name] = Field(
        default_factory=list, max_length=64, description="Only sessions of these roles count."
    )
    application_names: list[Name] = Field(
        default_factory=list, max_length=64, description="Only sessions with these application_name values."
    )


class MaintenanceSpec(ApiModel):
    """The app stopped during the migration: scaled to 0, then back to its recorded replica count."""

    deployment: DeploymentRef
    app_session_filter: AppSessionFilter = Field(default_factory=AppSessionFilter)
    prestart_migration: bool | None = Field(
        None,
        description="Unset (the default): on, except with backup.method Clone; false: off. "
        "Create the backup (Dump after the drain) and flyway migrate Jobs when the app starts draining, so "
        "that their pods and Flyway's JVM start while the app drains: about 1-3 s less downtime. Each connects and "
        "waits (one database session, application_name migration-operator-armed-backup / -armed-migrate) until the "
        "operator gives it the go: the backup's once the app is drained, the migration's once the backup is "
        "verified. A pre-started Job that ends before its go is replaced by an ordinary one. Not with backup.method "
        "Clone (a clone needs the database free of sessions).",
    )


class VerifyCheck(ApiModel):
    name: Annotated[str, Field(min_length=1, max_length=63)] = Field(description="Name shown in status.")
    sql: Annotated[str, Field(min_length=1, max_length=65536)] = Field(
        description="One read-only query (one statement: sent with the extended protocol) returning one row of one "
        "boolean; the check passes when it is true. It runs in a READ ONLY transaction that is always rolled back, "
        "with verify.checkTimeoutSeconds as its statement timeout."
    )


class VerifySpec(ApiModel):
    """Checks after the migration; any failure rolls back."""

    required_tables: list[Name] = Field(
        default_factory=list, max_length=256, description="Tables that must exist (schema.table or table)."
    )
    checks: list[VerifyCheck] = Field(
        default_factory=list,
        max_length=64,
        description="User SQL checks; names are unique (a duplicate would hide a failing check in status).",
        # a map keyed by name: the API server itself refuses two checks with one name
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    allow_dropped_objects: bool = Field(
        False,
        description="Accept fewer foreign keys or indexes than before (the migration drops them on purpose).",
    )
    check_timeout_seconds: int = Field(
        30, ge=1, le=3600, description="Statement and lock timeout of each check (its own, inside its transaction)."
    )
    credentials_secret: CredentialsSecret | None = Field(
        None,
        description="Optional login for the checks (a read-only role is best): they run in a session of their own as "
        "that role. Default: the migration role. The Secret needs the same opt-in as database.credentialsSecret.",
    )


class RollbackStrategy(StrEnum):
    RESTORE = "Restore"
    REPAIR = "Repair"
    COMPENSATE = "Compensate"
    NONE = "None"


class ConfigMapKeyRef(ApiModel):
    name: ObjectName
    key: DataKey


# psql meta-commands (`\! printenv PGPASSWORD`, `\copy ... to program`, `\o |cmd`): a backslash followed by a letter,
# `!` or `?`, anywhere (psql reads them in the middle of a line too). The compensate Job runs psql; a second line of
# defence in front of it, at admission (CEL) and in preflight for a ConfigMap's SQL (`psql_meta_command`).
PSQL_META_COMMAND = r"\\[a-zA-Z!?]"


def psql_meta_command(sql: str) -> str | None:
    """The first psql meta-command in `sql` (None: plain SQL)."""
    found = re.search(PSQL_META_COMMAND, sql)
    return found.group(0) if found else None


def _plain_sql(value: str) -> str:
    if psql_meta_command(value):
        raise ValueError("psql meta-commands (a backslash followed by a letter, ! or ?) are not allowed")
    return value


CompensateSql = Annotated[
    str,
    Field(
        min_length=1,
        max_length=SQL_MAX,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!self.matches('" + PSQL_META_COMMAND.replace("\\", "\\\\") + "')",
                    "rollback.compensate.sql must be plain SQL: psql meta-commands (a backslash followed by a letter, "
                    "! or ?) are refused",
                )
            ]
        },
    ),
    AfterValidator(_plain_sql),
]


class CompensateSpec(ApiModel):
    """SQL that undoes the migration, run in one transaction (psql --single-transaction)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.sql) != has(self.configMapKeyRef)",
                    "rollback.compensate needs exactly one of sql or configMapKeyRef",
                ),
            ]
        }
    )

    sql: CompensateSql | None = Field(
        None,
        description="The compensating SQL (plain SQL: a psql meta-command, a backslash followed by a letter, ! or ?, "
        "is refused; it could run a shell in the Job, next to the password).",
    )
    config_map_key_ref: ConfigMapKeyRef | None = Field(
        None, description="The compensating SQL from a ConfigMap key (checked for meta-commands in preflight)."
    )


class RollbackFailurePolicy(StrEnum):
    KEEP_APP_DOWN = "KeepAppDown"
    BRING_APP_BACK = "BringAppBack"


class RollbackSpec(ApiModel):
    """What to do when the migration or its verification fails."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.strategy != 'Compensate' || has(self.compensate)",
                    "rollback.strategy Compensate requires rollback.compensate (sql or configMapKeyRef)",
                ),
            ]
        }
    )

    strategy: RollbackStrategy = Field(
        RollbackStrategy.RESTORE,
        description="Restore: the backup (pg_restore, or the Clone renamed back). "
        "Repair: flyway repair (removes failed rows, keeps what succeeded). "
        "Compensate: run rollback.compensate. "
        "None: stop; the app stays down and the condition says what to do.",
    )
    compensate: CompensateSpec | None = None
    on_failure: RollbackFailurePolicy = Field(
        RollbackFailurePolicy.KEEP_APP_DOWN,
        description="When the rollback itself fails, the database is in a state nobody checked. KeepAppDown "
        "(default, the runbook's order: restart services only after the restore is verified): the app stays at 0, "
        "the run ends Failed/Stalled saying so, a human decides. BringAppBack: scale the app back anyway "
        "(availability first, the app runs on whatever the database holds).",
    )


class ApprovalSpec(ApiModel):
    required: bool = Field(
        False,
        description="Wait in AwaitingApproval until the annotation "
        f'{constants.APPROVED_ANNOTATION}: "true" is set.',
    )


class TimeoutsSpec(ApiModel):
    """Seconds each step may take; a timeout fails the run (and rolls back once the app was touched)."""

    preflight_seconds: int = Field(600, ge=10, le=86400)
    backup_seconds: int = Field(3600, ge=10, le=604800)
    drain_seconds: int = Field(300, ge=5, le=86400)
    migrate_seconds: int = Field(3600, ge=10, le=604800)
    verify_seconds: int = Field(600, ge=5, le=86400)
    ready_seconds: int = Field(600, ge=5, le=86400)
    rollback_seconds: int = Field(3600, ge=10, le=604800)
    transient_error_seconds: int = Field(
        60,
        ge=5,
        le=3600,
        description="How long an error that may go away (database unreachable, API server busy, Secret unreadable) "
        "is retried before it fails the phase. Errors that cannot go away by themselves fail it at once.",
    )


Short = Annotated[str, Field(max_length=NAME_MAX)]
# A resource quantity ("500m", "1Gi" or 2): int-or-string in the schema, like core/v1.
Quantity = Annotated[
    str | int,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


class Toleration(ApiModel):
    key: Short | None = None
    operator: Annotated[str, Field(pattern=r"^(Exists|Equal)$")] | None = None
    value: Short | None = None
    effect: Annotated[str, Field(pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")] | None = None
    toleration_seconds: int | None = None


class ResourceRequirements(ApiModel):
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16)
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=16)


class LocalObjectReference(ApiModel):
    name: ObjectName


class JobTemplateSpec(ApiModel):
    """Control over the pods the operator spawns (pg_dump, Flyway, psql)."""

    postgres_image: Image = Field(
        constants.DEFAULT_POSTGRES_IMAGE, description="Image with pg_dump, pg_restore and psql."
    )
    flyway_image: Image = Field(constants.DEFAULT_FLYWAY_IMAGE, description="Image with the `flyway` command.")
    image_pull_policy: str | None = Field(None, pattern=r"^(Always|IfNotPresent|Never)$")
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    service_account_name: ObjectName | None = Field(
        None,
        description="ServiceAccount of the pods (their token is never mounted). The operator may restrict the "
        "choice (its allowed ServiceAccounts).",
    )
    node_selector: dict[str, Short] = Field(default_factory=dict, max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Container resources (requests/limits) for every spawned container.",
    )
    run_as_user: int = Field(constants.DEFAULT_RUN_AS, ge=1)
    run_as_group: int = Field(constants.DEFAULT_RUN_AS, ge=1)
    fs_group: int = Field(constants.DEFAULT_RUN_AS, ge=1)
    labels: dict[str, Short] = Field(default_factory=dict, max_length=64, description="Extra pod labels.")
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64, description="Extra pod annotations."
    )


class DatabaseMigrationSpec(ApiModel):
    """One run of the migration runbook against one database. Immutable except `approval`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.rollback.strategy != 'Restore' || self.backup.enabled",
                    "rollback.strategy Restore needs backup.enabled",
                ),
                _cel(
                    "has(self.maintenance) == has(oldSelf.maintenance)",
                    "spec.maintenance cannot be added or removed: create a new DatabaseMigration",
                ),
                _cel(
                    "self.backup.method != 'Clone' || has(self.maintenance)",
                    "backup.method Clone needs spec.maintenance (the copy is taken once the app is stopped)",
                ),
                _cel(
                    "!has(self.maintenance) || !has(self.maintenance.prestartMigration) "
                    "|| !self.maintenance.prestartMigration || self.backup.method != 'Clone'",
                    "maintenance.prestartMigration cannot be used with backup.method Clone (its waiting Flyway "
                    "session would keep CREATE DATABASE ... TEMPLATE from copying the database)",
                ),
            ]
        }
    )

    database: DatabaseSpec = Field(json_schema_extra=immutable("spec.database"))
    migrations: MigrationsSpec = Field(json_schema_extra=immutable("spec.migrations"))
    backup: BackupSpec = Field(
        description="Required: say where the backup goes (method Dump + volume, or Clone), or disable it.",
        json_schema_extra=immutable("spec.backup"),
    )
    maintenance: MaintenanceSpec | None = Field(None, json_schema_extra=immutable("spec.maintenance"))
    verify: VerifySpec = Field(default_factory=VerifySpec, json_schema_extra=immutable("spec.verify"))
    rollback: RollbackSpec = Field(default_factory=RollbackSpec, json_schema_extra=immutable("spec.rollback"))
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec, description="The only mutable part of spec.")
    dry_run: bool = Field(
        False,
        description="Preflight only (flyway info + validate, pending list), then "
        "Succeeded; nothing is written.",
        json_schema_extra=immutable("spec.dryRun"),
    )
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec, json_schema_extra=immutable("spec.timeouts"))
    job_template: JobTemplateSpec = Field(
        default_factory=JobTemplateSpec, json_schema_extra=immutable("spec.jobTemplate")
    )


# -------------------------------------------------------------------------------------------------- status
class Phase(StrEnum):
    PENDING = "Pending"
    AWAITING_APPROVAL = "AwaitingApproval"
    PREFLIGHT = "Preflight"
    BACKING_UP = "BackingUp"
    ENTERING_MAINTENANCE = "EnteringMaintenance"
    MIGRATING = "Migrating"
    VERIFYING = "Verifying"
    EXITING_MAINTENANCE = "ExitingMaintenance"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED})


class Condition(ApiModel):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Snapshot(ApiModel):
    version: str | None = None
    tables: int = 0
    foreign_keys: int = 0
    indexes: int = 0
    rows: dict[str, int] = Field(default_factory=dict)
    table_names: list[str] = Field(default_factory=list)
    checksums: dict[str, str] = Field(
        default_factory=dict,
        description="Per table (up to 200,000 rows): an HMAC-SHA256 of its rows under the run's key, never a plain "
        "hash of the contents; comparable only by the operator, within the run.",
    )
    last_installed_rank: int | None = None
    taken_at: str | None = None
    estimated_rows: list[str] = Field(
        default_factory=list, description="Tables whose `rows` is the planner's estimate (very large tables)."
    )
    schemas: list[str] = Field(default_factory=list, description="The user schemas the role sees.")
    default_schema: str | None = Field(None, description="current_schema() of the migration role: Flyway's default.")
    schema_hash: str | None = Field(
        None,
        description="md5 over the catalog of the user schemas (schemas, relations, columns, constraints, indexes, "
        "functions, enums, sequences and their last values, owners, ACLs, default privileges, extensions), keyed like "
        "the checksums (HMAC-SHA256 under the run's key).",
    )
    drained: bool = Field(
        False,
        description="Taken with the app drained, while the pg_dump Job ran: the migration's \"before\", not taken "
        "again when Migrating starts (the count(*) of big tables ran beside the dump instead of inside the window).",
    )


class PendingMigration(ApiModel):
    version: str | None = None
    description: str = ""
    script: str = ""


class AppliedMigration(ApiModel):
    version: str | None = None
    description: str = ""
    script: str = ""
    checksum: int | None = None
    execution_time_ms: int | None = None
    installed_on: str | None = None
    success: bool = True


class BackupStatus(ApiModel):
    method: str | None = None
    pvc: str | None = None
    path: str | None = None
    clone_database: str | None = None
    size_bytes: int | None = None
    verified: bool = False
    completed_at: str | None = None
    schemas: list[str] = Field(
        default_factory=list,
        description="The schemas the dump holds (the run's scope: migrations.schemas, else the role's default schema); "
        "a Restore puts back exactly these.",
    )


class MaintenanceStatus(ApiModel):
    deployment: str | None = None
    original_replicas: int | None = None
    scaled_down_at: str | None = None
    scaled_up_at: str | None = None
    back_by: str | None = Field(
        None,
        description="When the app must be back at the latest: scaled down + every timeout of the window + a margin. "
        "Past it the run brings the app back whatever else happens (unless a failed rollback keeps it down, said "
        "in the conditions). Alert on it.",
    )
    held_down: bool = Field(False, description="The run ended with the app left at 0 on purpose (see the message).")
    prestart_refused: str | None = Field(
        None,
        description="Why the backup and migrate Jobs were not (all) pre-started (maintenance.prestartMigration): the "
        "API refused to create one (a ResourceQuota, an admission webhook). Those not created start in their phases.",
    )


class LogEntry(ApiModel):
    time: str
    phase: str
    message: str


class RollbackStatus(ApiModel):
    strategy: str | None = None
    reason: str | None = None
    error: str | None = None
    from_phase: str | None = None
    database_changed: bool = False
    database_restored: bool = False
    failed: bool = False
    failure: str | None = None
    database_unchanged: bool | None = Field(
        None,
        description="After the failure the database equals the \"before\" snapshot (history, catalog, rows): "
        "nothing to put back.",
    )
    drop_schemas: list[str] = Field(
        default_factory=list, description="Schemas the failed run created: the Restore drops them."
    )
    sessions_ended: bool = Field(
        False, description="The database sessions of the run's earlier steps were terminated before acting."
    )


class LastError(ApiModel):
    """The last error met while acting for this run; cleared by the next success. Kept in status so the next pass
    (in this process or after a restart) sees it, and so does the user."""

    action: str = Field(description="What the operator was doing.")
    message: str = Field(description="The error text.")
    at: str = Field(description="When it happened last.")
    since: str | None = Field(None, description="When it first happened (this run of errors).")
    count: int = Field(1, description="How many times in a row.")
    retryable: bool = Field(True, description="Whether retrying may help (else the phase fails at once).")


class DatabaseMigrationStatus(ApiModel):
    phase: Phase | None = None
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    before: Snapshot | None = None
    after: Snapshot | None = None
    pending: list[PendingMigration] = Field(default_factory=list)
    applied: list[AppliedMigration] = Field(default_factory=list)
    backup: BackupStatus | None = None
    maintenance: MaintenanceStatus | None = None
    jobs: dict[str, str] = Field(default_factory=dict)
    log: list[LogEntry] = Field(default_factory=list)
    started_at: str | None = None
    completed_at: str | None = None
    phase_started_at: str | None = None
    rollback: RollbackStatus | None = None
    lock: str | None = Field(None, description="Lease that serialises migrations of this database.")
    flyway: dict[str, Any] | None = Field(None, description="Summary of the last Flyway output (free-form).")
    last_error: LastError | None = None


class DatabaseMigration(ApiModel):
    """A DatabaseMigration object as read from the API server."""

    api_version: str = constants.API_VERSION
    kind: str = constants.KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DatabaseMigrationSpec
    status: DatabaseMigrationStatus = Field(default_factory=DatabaseMigrationStatus)


def parse_spec(spec: dict[str, Any]) -> DatabaseMigrationSpec:
    return DatabaseMigrationSpec.model_validate(spec)


def parse_status(status: dict[str, Any] | None) -> DatabaseMigrationStatus:
    return DatabaseMigrationStatus.model_validate(status or {})


def dump(model: BaseModel) -> dict[str, Any]:
    """API form of a model: camelCase, no None values."""
    result: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return result


def status_patch_document(patch: DatabaseMigrationStatus) -> dict[str, Any]:
    """API form of the fields set on a status patch (`model_fields_set`): camelCase, each a whole value, and None
    for a field set to None (a JSON merge patch then removes it)."""
    document = patch.model_dump(by_alias=True, exclude_none=True, mode="json")
    result: dict[str, Any] = {}
    for field in patch.model_fields_set:
        alias = DatabaseMigrationStatus.model_fields[field].alias or field
        result[alias] = document.get(alias)
    return result
