"""The invalid-input corpus (issue 11): hostile or broken DatabaseMigrations, each with the one outcome it must have.

    python -m tests.support.invalid_corpus > tests/e2e/data/invalid-corpus.yaml

Each case is a spec made from a valid base (the e2e parking world) by one change, and either
- `admission: <text>`: the API server refuses it (422) with a message containing <text>; or
- `preflight: <Reason>`: it is admitted and ends `Failed` in preflight with Stalled=True and that reason: no pod ran,
  the app was not touched, no secret value appears anywhere (the e2e secret scan).
Never anything else. `objects` are created in the namespace first (Secrets, ConfigMaps, Deployments of the case).
Placeholders, filled in by the e2e test: "@DB_HOST@", "@DB_PORT@", "@DB_SSL@" (the test database's address and TLS
mode); "@DB@" the test's database (only where a case must reach the real server; elsewhere a name of its own keeps
each case's Lease apart, so they all run at once). tests/unit/test_invalid_corpus.py fails when the committed file is
not this generator's output.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

TOKEN = "ghp_CorpusT0k3nPaymentsApi0123456789abcdefghijklmnopqrstuvwxy"  # 63 bytes
SWAPPED_PASSWORD = "corpus-Sw4pped-Password"
OPT_IN = {"dbops.io/credentials": "true"}
MAINTENANCE = {"dbops.io/maintenance": "allowed"}


def base(index: int) -> dict[str, Any]:
    return {
        "database": {
            "host": "@DB_HOST@",
            "port": "@DB_PORT@",
            "name": f"corpus_{index:02d}",
            "credentialsSecret": {"name": "parking-db-admin"},
            "sslMode": "@DB_SSL@",
        },
        "migrations": {"configMap": {"name": "api-gateway-migrations"}},
        "backup": {"method": "Dump", "volume": {"claimName": "db-backups"}},
        "maintenance": {"deployment": {"name": "api-gateway"}},
        "rollback": {"strategy": "Restore"},
    }


def secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": data}


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "containers": [{"name": "app", "image": "ghcr.io/dbops/parking-gateway:0.1.0",
                                         "securityContext": {"allowPrivilegeEscalation": False,
                                                             "capabilities": {"drop": ["ALL"]}}}]}}}}


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    """spec[a][b][c] = value for path "a.b.c" ("-" deletes the key)."""
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value == "-":
        node.pop(last, None)
    else:
        node[last] = value


# (name, description, changes {path: value}, expectation, objects)
ADMISSION: list[tuple[str, str, dict[str, Any], str]] = [
    ("port-zero", "port below the range", {"database.port": 0}, "spec.database.port"),
    ("port-too-big", "port above the range", {"database.port": 70000}, "spec.database.port"),
    ("port-as-string", "port of the wrong type", {"database.port": "5432"}, "spec.database.port"),
    ("host-jdbc-injection", "the issue's host: Flyway and libpq would aim at different targets",
     {"database.host": "db:5432/other?sslfactory=org.postgresql.ssl.NonValidatingFactory&x="}, "spec.database.host"),
    ("host-list", "libpq takes a comma-separated list as several hosts", {"database.host": "db,evil.example"},
     "spec.database.host"),
    ("host-with-space", "a space in the host", {"database.host": "db example"}, "spec.database.host"),
    ("host-url", "a URL for a host", {"database.host": "postgres://db/x"}, "spec.database.host"),
    ("host-empty", "an empty host", {"database.host": ""}, "spec.database.host"),
    ("host-too-long", "a host over 253 characters", {"database.host": ("a" * 62 + ".") * 4 + "example"},
     "spec.database.host"),
    ("host-label-too-long", "a DNS label over 63 characters", {"database.host": "a" * 64 + ".example"},
     "spec.database.host"),
    ("host-unicode", "an IDN not in punycode", {"database.host": "bücher.example"}, "spec.database.host"),
    ("host-as-number", "host of the wrong type", {"database.host": 12345}, "spec.database.host"),
    ("database-name-64-bytes", "PostgreSQL would cut it to 63 bytes and mean another database",
     {"database.name": "d" * 64}, "spec.database.name"),
    ("database-name-unicode-64-bytes", "32 characters but 64 bytes in UTF-8", {"database.name": "é" * 32},
     "63 bytes"),
    ("database-name-newline", "a control character in a name", {"database.name": "parking\ndb"},
     "spec.database.name"),
    ("database-name-empty", "an empty database name", {"database.name": ""}, "spec.database.name"),
    ("history-table-too-long", "a history table name over 63 characters", {"migrations.table": "t" * 64},
     "spec.migrations.table"),
    ("schema-with-tab", "a control character in a schema", {"migrations.schemas": ["public\tx"]},
     "spec.migrations.schemas"),
    ("secret-name-uppercase", "not a Kubernetes object name", {"database.credentialsSecret.name": "Parking-DB"},
     "spec.database.credentialsSecret.name"),
    ("secret-name-sql", "SQL in a Secret's name", {"database.credentialsSecret.name": "x'; drop table users; --"},
     "spec.database.credentialsSecret.name"),
    ("secret-same-key-twice", "the login's user name and password from one key",
     {"database.credentialsSecret.usernameKey": "token", "database.credentialsSecret.passwordKey": "token"},
     "usernameKey and passwordKey must be different"),
    ("secret-key-path", "a key that is a path", {"database.credentialsSecret.passwordKey": "../token"},
     "spec.database.credentialsSecret.passwordKey"),
    ("ssl-mode-unknown", "an sslMode libpq does not know", {"database.sslMode": "yolo"}, "spec.database.sslMode"),
    ("ca-with-require", "a CA that would not be used", {"database.caSecret": {"name": "db-ca"},
                                                        "database.sslMode": "require"}, "caSecret"),
    ("require-auth-cleartext", "a require_auth method libpq does not know", {"database.requireAuth": "cleartext"},
     "spec.database.requireAuth"),
    ("image-path-relative", "a relative migrations path",
     {"migrations.configMap": "-", "migrations.image": {"image": "ghcr.io/dbops/parking-migrations:6",
                                                        "path": "sql"}}, "spec.migrations.image.path"),
    ("image-path-newline", "a newline in the migrations path",
     {"migrations.configMap": "-", "migrations.image": {"image": "ghcr.io/dbops/parking-migrations:6",
                                                        "path": "/sql\ntouch /tmp/x"}}, "spec.migrations.image.path"),
    ("image-shell", "a shell command for an image",
     {"migrations.configMap": "-", "migrations.image": {"image": "x; rm -rf /"}}, "spec.migrations.image.image"),
    ("postgres-image-substitution", "a command substitution for an image", {"jobTemplate": {"postgresImage": "$(id)"}},
     "spec.jobTemplate.postgresImage"),
    ("two-migration-sources", "a ConfigMap and an image",
     {"migrations.image": {"image": "ghcr.io/dbops/parking-migrations:6"}}, "exactly one of"),
    ("no-migration-source", "neither a ConfigMap nor an image", {"migrations.configMap": "-"}, "exactly one of"),
    ("target-version-words", "a target version Flyway cannot order", {"migrations.targetVersion": "six"},
     "spec.migrations.targetVersion"),
    ("compensate-without-sql", "Compensate with nothing to run", {"rollback": {"strategy": "Compensate"}},
     "requires rollback.compensate"),
    ("compensate-meta-command", "the issue's \\! printenv PGPASSWORD in the compensating SQL",
     {"rollback": {"strategy": "Compensate", "compensate": {"sql": "\\! printenv PGPASSWORD 1>&2\nselect 1;"}}},
     "meta-command"),
    ("compensate-copy-program", "\\copy ... to program in the compensating SQL",
     {"rollback": {"strategy": "Compensate", "compensate": {"sql": "\\copy (select 1) to program 'sh'"}}},
     "meta-command"),
    ("compensate-two-sources", "inline SQL and a ConfigMap",
     {"rollback": {"strategy": "Compensate", "compensate": {"sql": "select 1",
                                                            "configMapKeyRef": {"name": "u", "key": "k"}}}},
     "exactly one of sql or configMapKeyRef"),
    ("dump-without-volume", "a Dump with nowhere to go", {"backup": {"method": "Dump"}}, "claimName"),
    ("restore-without-backup", "Restore with backup disabled", {"backup": {"enabled": False}},
     "Restore needs backup.enabled"),
    ("clone-without-maintenance", "a Clone of a database the app still writes",
     {"backup": {"method": "Clone"}, "maintenance": "-"}, "Clone needs spec.maintenance"),
    ("prestart-with-clone", "a pre-started migrate pod, whose waiting session would keep a Clone from copying",
     {"backup": {"method": "Clone"}, "maintenance": {"deployment": {"name": "api-gateway"}, "prestartMigration": True}},
     "prestartMigration cannot be used with backup.method Clone"),
    ("unknown-strategy", "a rollback strategy that does not exist", {"rollback": {"strategy": "Sometimes"}},
     "Unsupported value"),
    ("negative-timeout", "a negative drain timeout", {"timeouts": {"drainSeconds": -1}}, "drainSeconds"),
    ("timeout-as-string", "a timeout of the wrong type", {"timeouts": {"migrateSeconds": "1h"}}, "migrateSeconds"),
    ("duplicate-check-names", "two checks with one name (one would hide the other)",
     {"verify": {"checks": [{"name": "c", "sql": "select true"}, {"name": "c", "sql": "select false"}]}},
     "Duplicate value"),
    ("empty-check-sql", "a check without SQL", {"verify": {"checks": [{"name": "c", "sql": ""}]}},
     "spec.verify.checks[0].sql"),
    ("check-timeout-zero", "a check without time", {"verify": {"checkTimeoutSeconds": 0}},
     "spec.verify.checkTimeoutSeconds"),
    ("run-as-root", "the Jobs as root", {"jobTemplate": {"runAsUser": 0}}, "spec.jobTemplate.runAsUser"),
    ("service-account-uppercase", "not a ServiceAccount name", {"jobTemplate": {"serviceAccountName": "Admin"}},
     "spec.jobTemplate.serviceAccountName"),
    ("pull-policy-unknown", "an imagePullPolicy that does not exist", {"jobTemplate": {"imagePullPolicy": "Sometimes"}},
     "spec.jobTemplate.imagePullPolicy"),
    ("toleration-operator-unknown", "a toleration operator that does not exist",
     {"jobTemplate": {"tolerations": [{"key": "k", "operator": "Maybe"}]}}, "operator"),
    ("no-database", "the database left out", {"database": "-"}, "spec.database"),
    ("database-as-string", "spec.database of the wrong type", {"database": "postgres://db/x"}, "spec.database"),
    ("no-backup", "the backup left out (say how, or enabled: false)", {"backup": "-"}, "spec.backup"),
    ("deployment-name-unicode", "not a Deployment name", {"maintenance.deployment.name": "ápi-gateway"},
     "spec.maintenance.deployment.name"),
    ("dry-run-as-string", "a boolean of the wrong type", {"dryRun": "yes"}, "spec.dryRun"),
    ("approval-as-string", "a boolean of the wrong type", {"approval": {"required": "true"}}, "spec.approval.required"),
]

PREFLIGHT: list[tuple[str, str, dict[str, Any], str, list[dict[str, Any]]]] = [
    ("token-secret-without-consent", "the issue's payments-api-token, its token as the user name",
     {"database.credentialsSecret": {"name": "payments-api-token", "usernameKey": "token", "passwordKey": "url"}},
     "CredentialsNotOptedIn",
     [secret("payments-api-token", {"token": TOKEN, "url": "https://payments.example/v1"})]),
    ("secret-for-other-runs", "a Secret that serves other DatabaseMigrations only",
     {"database.credentialsSecret": {"name": "billing-login"}}, "CredentialsNotOptedIn",
     [secret("billing-login", {"username": "billing", "password": "corpus-billing-pw"},
             annotations={"dbops.io/allowed-migrations": "billing-*"})]),
    ("secret-for-other-hosts", "a Secret whose login may go to another host only",
     {"database.credentialsSecret": {"name": "pinned-login"}}, "HostNotAllowed",
     [secret("pinned-login", {"username": "pinned", "password": "corpus-pinned-pw"}, OPT_IN,
             {"dbops.io/allowed-hosts": "db.prod.svc.cluster.local"})]),
    ("secret-missing", "a Secret that does not exist", {"database.credentialsSecret": {"name": "no-such-login"}},
     "CredentialsSecretNotFound", []),
    ("secret-key-missing", "an opted-in Secret without the password key",
     {"database.credentialsSecret": {"name": "half-login"}}, "CredentialsSecretNotFound",
     [secret("half-login", {"username": "parking_admin"}, OPT_IN)]),
    ("checks-secret-without-consent", "the checks' login from a Secret that did not opt in",
     {"verify": {"credentialsSecret": {"name": "reader-login"}}}, "CredentialsNotOptedIn",
     [secret("reader-login", {"username": "reader", "password": "corpus-reader-pw"})]),
    ("deployment-without-consent", "an app that did not opt in to maintenance",
     {"maintenance.deployment.name": "someone-elses-app"}, "DeploymentNotOptedIn",
     [deployment("someone-elses-app", {"app": "someone-elses-app"})]),
    ("deployment-missing", "an app that does not exist", {"maintenance.deployment.name": "no-such-app"},
     "DeploymentNotFound", []),
    ("migrations-configmap-missing", "migrations that do not exist",
     {"migrations.configMap.name": "no-such-migrations"}, "MigrationsConfigMapNotFound", []),
    ("backup-volume-missing", "a backup volume that does not exist", {"backup.volume.claimName": "no-such-pvc"},
     "BackupVolumeNotFound", []),
    ("compensate-configmap-meta-command", "\\! printenv PGPASSWORD from a ConfigMap",
     {"rollback": {"strategy": "Compensate", "compensate": {"configMapKeyRef": {"name": "undo", "key": "undo.sql"}}}},
     "CompensateNotPlainSql", [config_map("undo", {"undo.sql": "select 1;\n\\! printenv PGPASSWORD 1>&2\n"})]),
    ("compensate-configmap-missing", "compensating SQL that does not exist",
     {"rollback": {"strategy": "Compensate", "compensate": {"configMapKeyRef": {"name": "no-undo", "key": "k"}}}},
     "CompensateConfigMapNotFound", []),
    ("ca-secret-missing", "a CA that does not exist", {"database.caSecret": {"name": "no-such-ca"},
                                                       "database.sslMode": "-"}, "CaSecretNotFound", []),
    ("swapped-keys", "user name and password keys swapped: the server must never echo the password into status",
     {"database.credentialsSecret": {"name": "swapped-login", "usernameKey": "password",
                                     "passwordKey": "username"}}, "BadCredentials",
     [secret("swapped-login", {"username": "parking_admin", "password": SWAPPED_PASSWORD}, OPT_IN)]),
    ("database-missing", "a database that does not exist", {"database.name": "corpus_no_such_db"},
     "DatabaseNotFound", []),
    ("cleartext-authentication-only", "a client that accepts only cleartext: the server asks for SCRAM, nothing sent",
     {"database.requireAuth": "password"}, "AuthenticationRefused", []),
    ("verify-full-without-a-ca", "verify-full with no CA to verify by", {"database.sslMode": "verify-full"},
     "TLSFailed", []),
    ("nobody-listening", "a port nobody listens on", {"database.port": 1}, "DatabaseUnreachable", []),
]


def cases() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name, description, changes, message in ADMISSION:
        spec = base(len(found))
        for path, value in changes.items():
            _set(spec, path, copy.deepcopy(value))
        found.append({"name": name, "description": description, "expect": {"admission": message}, "spec": spec})
    for name, description, changes, reason, objects in PREFLIGHT:
        spec = base(len(found))
        for path, value in changes.items():
            _set(spec, path, copy.deepcopy(value))
        case: dict[str, Any] = {"name": name, "description": description, "expect": {"preflight": reason},
                                "spec": spec}
        if objects:
            case["objects"] = objects
        found.append(case)
    return found


HEADER = (
    "# Generated by `python -m tests.support.invalid_corpus` (tests/support/invalid_corpus.py). Do not edit.\n"
    "# Hostile or broken DatabaseMigrations, and the one outcome each must have.\n"
    "# Run by tests/e2e/test_invalid_corpus.py against the real API server and operator.\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump({"cases": cases()}, sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
