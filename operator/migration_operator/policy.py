"""Who may use what: the opt-ins and allow-lists preflight enforces before the app or the database is touched, and
before any credential is sent anywhere.

The right to create a DatabaseMigration is delegated narrowly (an Argo CD project, a namespace's "migration-requester"
Role); it must not become the right to read a Secret, scale any app, run any image or reach any host. So every
reference needs consent from both sides:

- the credentials Secret (and `verify.credentialsSecret`): label `dbops.io/credentials: "true"`, or annotation
  `dbops.io/allowed-migrations` naming the DatabaseMigrations it serves (comma-separated names or globs). Annotation
  `dbops.io/allowed-hosts` (globs, or CIDRs for IP addresses) narrows the database hosts its login may be sent to;
- the maintenance Deployment: label `dbops.io/maintenance: "allowed"`;
- the operator's own allow-lists (chart values `policy.*`, environment DBOPS_ALLOWED_IMAGES,
  DBOPS_ALLOWED_SERVICE_ACCOUNTS, DBOPS_ALLOWED_HOSTS; comma-separated globs, empty = anything): the images of
  every pod (postgres, Flyway, the migrations image), the pods' ServiceAccount, the database host.

Pure functions of what preflight read; unit-tested in tests/unit/test_policy.py.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import lock, reasons
from .models import DatabaseMigrationSpec

CREDENTIALS_LABEL = "dbops.io/credentials"
CREDENTIALS_LABEL_VALUE = "true"
ALLOWED_MIGRATIONS_ANNOTATION = "dbops.io/allowed-migrations"
ALLOWED_HOSTS_ANNOTATION = "dbops.io/allowed-hosts"
MAINTENANCE_LABEL = "dbops.io/maintenance"
MAINTENANCE_LABEL_VALUE = "allowed"
ENV_ALLOWED_IMAGES = "DBOPS_ALLOWED_IMAGES"
ENV_ALLOWED_SERVICE_ACCOUNTS = "DBOPS_ALLOWED_SERVICE_ACCOUNTS"
ENV_ALLOWED_HOSTS = "DBOPS_ALLOWED_HOSTS"
DEFAULT_SERVICE_ACCOUNT = "default"

Problem = tuple[str, str]  # (reason, message)


def patterns(text: str | None) -> tuple[str, ...]:
    """A comma- (or whitespace-) separated list of globs, empty entries dropped."""
    return tuple(item for item in re.split(r"[,\s]+", text or "") if item)


@dataclass(frozen=True)
class OperatorPolicy:
    """The operator's allow-lists (empty: anything)."""

    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> OperatorPolicy:
        env = os.environ if environ is None else environ
        return cls(
            allowed_images=patterns(env.get(ENV_ALLOWED_IMAGES)),
            allowed_service_accounts=patterns(env.get(ENV_ALLOWED_SERVICE_ACCOUNTS)),
            allowed_hosts=patterns(env.get(ENV_ALLOWED_HOSTS)),
        )


def image_names(image: str) -> set[str]:
    """The spellings of an image reference an allow-list may use: as written, and fully qualified the way the
    container runtime resolves it (`postgres:15` is `docker.io/library/postgres:15`)."""
    names = {image}
    first, _, rest = image.partition("/")
    if not rest:
        names.add(f"docker.io/library/{image}")
    elif "." not in first and ":" not in first and first != "localhost":
        names.add(f"docker.io/{image}")
    return names


def _host_matches(host: str, namespace: str, allowed: Iterable[str]) -> bool:
    spellings = {host.lower().rstrip("."), lock.canonical_host(host, namespace).strip("[]")}
    for entry in allowed:
        entry = entry.strip()
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if any(fnmatch.fnmatchcase(name, entry.lower().rstrip(".")) for name in spellings):
                return True
            continue
        for name in spellings:
            try:
                if ipaddress.ip_address(name) in network:
                    return True
            except ValueError:
                pass
    return False


def _matches(value: str, allowed: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in allowed)


def secret_problem(
    kind: str,
    name: str,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
    migration: str,
    host: str,
    namespace: str,
) -> Problem | None:
    """Why the Secret `name` may not be used by the DatabaseMigration `migration` against `host`, or None."""
    labels, annotations = labels or {}, annotations or {}
    served = annotations.get(ALLOWED_MIGRATIONS_ANNOTATION)
    labelled = labels.get(CREDENTIALS_LABEL) == CREDENTIALS_LABEL_VALUE
    how = (
        f'label it {CREDENTIALS_LABEL}="{CREDENTIALS_LABEL_VALUE}", or annotate it {ALLOWED_MIGRATIONS_ANNOTATION} '
        "with the DatabaseMigrations it serves"
    )
    if not labelled and served is None:
        return reasons.CREDENTIALS_NOT_OPTED_IN, (
            f"Secret {name} ({kind}) has not opted in to be used by DatabaseMigrations: {how}. Nothing was read "
            "from it and no credential was sent"
        )
    if served is not None and not _matches(migration, patterns(served)):
        return reasons.CREDENTIALS_NOT_OPTED_IN, (
            f"Secret {name} ({kind}) serves only the DatabaseMigrations {served!r} "
            f"(annotation {ALLOWED_MIGRATIONS_ANNOTATION}), not {migration}"
        )
    hosts = annotations.get(ALLOWED_HOSTS_ANNOTATION)
    if hosts is not None and not _host_matches(host, namespace, patterns(hosts)):
        return reasons.HOST_NOT_ALLOWED, (
            f"Secret {name} ({kind}) may be sent only to the hosts {hosts!r} (annotation {ALLOWED_HOSTS_ANNOTATION}), "
            f"not to {host}"
        )
    return None


def deployment_problem(name: str, labels: Mapping[str, str] | None) -> Problem | None:
    """Why the Deployment `name` may not be put in maintenance (scaled to 0), or None."""
    if (labels or {}).get(MAINTENANCE_LABEL) == MAINTENANCE_LABEL_VALUE:
        return None
    return reasons.DEPLOYMENT_NOT_OPTED_IN, (
        f'Deployment {name} (spec.maintenance) has not opted in to be scaled down: label it {MAINTENANCE_LABEL}='
        f'"{MAINTENANCE_LABEL_VALUE}"'
    )


def images(spec: DatabaseMigrationSpec) -> list[tuple[str, str]]:
    """(field, image) of every image the run's pods may use."""
    found = [
        ("spec.jobTemplate.postgresImage", spec.job_template.postgres_image),
        ("spec.jobTemplate.flywayImage", spec.job_template.flyway_image),
    ]
    if spec.migrations.image:
        found.append(("spec.migrations.image.image", spec.migrations.image.image))
    return found


def operator_problems(spec: DatabaseMigrationSpec, policy: OperatorPolicy, namespace: str) -> list[Problem]:
    """What the operator's allow-lists refuse in this spec."""
    problems: list[Problem] = []
    if policy.allowed_images:
        for field, image in images(spec):
            if not any(_matches(name, policy.allowed_images) for name in image_names(image)):
                problems.append(
                    (
                        reasons.IMAGE_NOT_ALLOWED,
                        f"image {image} ({field}) is not among the operator's allowed images "
                        f"({', '.join(policy.allowed_images)})",
                    )
                )
    account = spec.job_template.service_account_name or DEFAULT_SERVICE_ACCOUNT
    if policy.allowed_service_accounts and not _matches(account, policy.allowed_service_accounts):
        problems.append(
            (
                reasons.SERVICE_ACCOUNT_NOT_ALLOWED,
                f"ServiceAccount {account} (spec.jobTemplate.serviceAccountName) is not among the operator's allowed "
                f"ServiceAccounts ({', '.join(policy.allowed_service_accounts)})",
            )
        )
    host = spec.database.host
    if policy.allowed_hosts and not _host_matches(host, namespace, policy.allowed_hosts):
        problems.append(
            (
                reasons.HOST_NOT_ALLOWED,
                f"database host {host} is not among the operator's allowed hosts ({', '.join(policy.allowed_hosts)}): "
                "no credential was sent",
            )
        )
    return problems
