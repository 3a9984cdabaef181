"""Job manifests (plain dicts) for every step the operator delegates to a pod.

    <name>-validate    flyway validate + info          (flyway image)
    <name>-backup      pg_dump -Fc, then pg_restore --list on the file  (postgres image, PVC)
    <name>-migrate     flyway migrate                  (flyway image, backoffLimit 0)
    <name>-restore     drop user schemas + the dump's SQL in ONE transaction  (postgres image, PVC)
    <name>-repair      flyway repair                   (flyway image)
    <name>-compensate  psql --single-transaction of rollback.compensate  (postgres image)

Every pod passes PodSecurity `restricted`; credentials only ever arrive as secretKeyRef env; every Job is
owned by its DatabaseMigration (garbage-collected with it) and named deterministically, so a restarted
operator finds the Job it created instead of creating a second one. No Job is retried by Kubernetes
(backoffLimit 0): whether to retry a migration is never a blind decision.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from . import constants, flyway, pg_scripts
from .models import DatabaseMigrationSpec

MAX_NAME = 63
FLYWAY_STEPS = frozenset({"validate", "migrate", "repair"})
POSTGRES_STEPS = frozenset({"backup", "restore", "compensate"})
STEPS = FLYWAY_STEPS | POSTGRES_STEPS


def _short(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return value[: limit - 9].rstrip("-.") + "-" + digest


def job_name(name: str, step: str) -> str:
    """`<name>-<step>`, shortened deterministically (hash suffix) to fit 63 characters."""
    return f"{_short(name, MAX_NAME - len(step) - 1)}-{step}"


def label_value(name: str) -> str:
    return _short(name, MAX_NAME)


def backup_file(name: str, uid: str) -> str:
    """The dump's path inside the backup volume: unique per object, stable across restarts."""
    short_uid = re.sub(r"[^a-z0-9]", "", uid.lower())[:8] or "run"
    return f"{_short(name, 200)}-{short_uid}.dump"


def selector_labels(name: str, step: str | None = None) -> dict[str, str]:
    labels = {
        constants.MANAGED_BY_LABEL: constants.MANAGED_BY_VALUE,
        constants.MIGRATION_LABEL: label_value(name),
    }
    if step:
        labels[constants.STEP_LABEL] = step
    return labels


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _secret_env(spec: DatabaseMigrationSpec, user_var: str, password_var: str) -> list[dict[str, Any]]:
    secret = spec.database.credentials_secret
    return [
        {"name": user_var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.username_key}}},
        {
            "name": password_var,
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.password_key}},
        },
    ]


def postgres_env(spec: DatabaseMigrationSpec, step: str) -> list[dict[str, Any]]:
    database = spec.database
    return [
        {"name": "PGHOST", "value": database.host},
        {"name": "PGPORT", "value": str(database.port)},
        {"name": "PGDATABASE", "value": database.name},
        *_secret_env(spec, "PGUSER", "PGPASSWORD"),
        {"name": "PGSSLMODE", "value": str(database.ssl_mode)},
        {"name": "PGAPPNAME", "value": f"{constants.APPLICATION_NAME}-{step}"},
        {"name": "PGCONNECT_TIMEOUT", "value": "15"},
        {"name": "HOME", "value": "/tmp"},
    ]


def flyway_env(spec: DatabaseMigrationSpec, step: str) -> list[dict[str, Any]]:
    return [
        {"name": "FLYWAY_URL", "value": flyway.jdbc_url(spec, step)},
        *_secret_env(spec, "FLYWAY_USER", "FLYWAY_PASSWORD"),
        {"name": "HOME", "value": "/tmp"},
        {"name": "JAVA_TOOL_OPTIONS", "value": "-Djava.io.tmpdir=/tmp -XX:-UsePerfData"},
    ]


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(spec: DatabaseMigrationSpec) -> dict[str, Any]:
    template = spec.job_template
    return {
        "runAsNonRoot": True,
        "runAsUser": template.run_as_user,
        "runAsGroup": template.run_as_group,
        "fsGroup": template.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_job(body: dict[str, Any], spec: DatabaseMigrationSpec, step: str) -> dict[str, Any]:
    """The Job manifest for `step` of the DatabaseMigration `body` (metadata.name/namespace/uid used)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    metadata = body["metadata"]
    name: str = metadata["name"]
    uid: str = metadata.get("uid", "")
    template = spec.job_template
    timeouts = spec.timeouts
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    init_containers: list[dict[str, Any]] = []
    env: list[dict[str, Any]]

    if step in FLYWAY_STEPS:
        image = template.flyway_image
        env = flyway_env(spec, step)
        script = flyway.job_script(spec, step)
        volumes.append({"name": "migrations", "emptyDir": {}})
        mounts.append({"name": "migrations", "mountPath": constants.MIGRATIONS_MOUNT})
        if spec.migrations.config_map:
            # Mounted aside and copied: a ConfigMap volume also holds `..data` directories Flyway would scan.
            volumes.append({"name": "migrations-src", "configMap": {"name": spec.migrations.config_map.name}})
            mounts.append(
                {"name": "migrations-src", "mountPath": f"{constants.MIGRATIONS_MOUNT}-src", "readOnly": True}
            )
        elif spec.migrations.image:
            init_containers.append(
                _container(
                    spec,
                    "copy-migrations",
                    spec.migrations.image.image,
                    f"cp -R {spec.migrations.image.path.rstrip('/')}/. {constants.MIGRATIONS_MOUNT}/",
                    [],
                    [{"name": "migrations", "mountPath": constants.MIGRATIONS_MOUNT}, mounts[0]],
                )
            )
        deadline = {
            "validate": timeouts.preflight_seconds,
            "migrate": timeouts.migrate_seconds,
            "repair": timeouts.rollback_seconds,
        }[step]
    else:
        image = template.postgres_image
        env = postgres_env(spec, step)
        deadline = timeouts.backup_seconds if step == "backup" else timeouts.rollback_seconds
        if step in ("backup", "restore"):
            if spec.backup.volume is None:
                raise ValueError(f"step {step} needs spec.backup.volume")
            env.append({"name": "BACKUP_FILE", "value": backup_file(name, uid)})
            volumes.append(
                {"name": "backup", "persistentVolumeClaim": {"claimName": spec.backup.volume.claim_name}}
            )
            mounts.append({"name": "backup", "mountPath": constants.BACKUP_MOUNT})
            script = pg_scripts.BACKUP_SCRIPT if step == "backup" else pg_scripts.RESTORE_SCRIPT
        else:
            compensate = spec.rollback.compensate
            if compensate is None:
                raise ValueError("step compensate needs spec.rollback.compensate")
            if compensate.config_map_key_ref:
                ref = compensate.config_map_key_ref
                volumes.append(
                    {
                        "name": "compensate",
                        "configMap": {
                            "name": ref.name,
                            "items": [{"key": ref.key, "path": "compensate.sql"}],
                        },
                    }
                )
                mounts.append({"name": "compensate", "mountPath": "/compensate", "readOnly": True})
                env.append({"name": "COMPENSATE_FILE", "value": "/compensate/compensate.sql"})
            else:
                env.append({"name": "COMPENSATE_SQL", "value": compensate.sql or ""})
            script = pg_scripts.COMPENSATE_SCRIPT

    labels = {**template.labels, **selector_labels(name, step)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(spec),
        "automountServiceAccountToken": False,
        "containers": [_container(spec, step, image, script, env, mounts)],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations
        ]
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in template.image_pull_secrets]

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, step),
            "namespace": metadata.get("namespace"),
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": deadline,
            "template": {
                "metadata": {"labels": labels, "annotations": dict(template.annotations)},
                "spec": pod_spec,
            },
        },
    }


def _container(
    spec: DatabaseMigrationSpec,
    name: str,
    image: str,
    script: str,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    template = spec.job_template
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        # Explicit command: never depend on an image's entrypoint.
        "command": ["sh", "-c", script],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy
    resources = template.resources.model_dump(by_alias=True, exclude_none=True)
    resources = {key: value for key, value in resources.items() if value}
    if resources:
        container["resources"] = resources
    return container
