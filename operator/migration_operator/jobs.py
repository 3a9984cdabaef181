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

from . import constants, flyway
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


BACKUP_SCRIPT = r"""set -u
F="/backup/$BACKUP_FILE"
fail() {
  { printf 'verified=false\nerror=%s: ' "$1"; tail -c 2500 /tmp/err; } >/tmp/message
  cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log; exit 1
}
: >/tmp/err
rm -f "$F.partial"
pg_dump --format=custom --no-password --file="$F.partial" 2>/tmp/err || fail "pg_dump failed"
pg_restore --list "$F.partial" >/tmp/toc 2>/tmp/err || fail "pg_restore --list cannot read the dump"
size=$(wc -c <"$F.partial" | tr -d ' ')
entries=$(grep -vc '^;' /tmp/toc || true)
[ "$size" -gt 0 ] || fail "the dump is empty"
[ "$entries" -gt 0 ] || fail "the dump lists no entries"
mv -f "$F.partial" "$F" 2>/tmp/err || fail "cannot rename the dump"
printf 'verified=true\nsizeBytes=%s\ntocEntries=%s\npath=%s\n' "$size" "$entries" "$BACKUP_FILE" >/tmp/message
cat /tmp/message; cp /tmp/message /dev/termination-log
"""

# pg_restore --clean cannot remove what the failed migration *added* (a new table, a new FK onto an old
# table blocks the DROP of the old one). So: drop every user schema and replay the dump, all in ONE
# transaction that is committed only when pg_restore produced the whole script; any error rolls back to the
# migrated state (which Flyway left consistent) instead of leaving a half-restored database.
RESTORE_SCRIPT = r"""set -u
F="/backup/$BACKUP_FILE"
fail() {
  { printf '%s: ' "$1"; tail -c 3000 /tmp/err; } >/tmp/message
  cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log; exit 1
}
: >/tmp/err
[ -s "$F" ] || fail "backup file $BACKUP_FILE missing or empty on the backup volume"
pg_restore --list "$F" >/tmp/toc 2>/tmp/err || fail "pg_restore --list cannot read the backup"
if grep -Eq '^[0-9]+; [0-9]+ [0-9]+ SCHEMA - public ' /tmp/toc; then create_public=""; \
else create_public="CREATE SCHEMA public;"; fi
{
  echo "BEGIN;"
  echo "SET LOCAL client_min_messages = warning;"
  echo "DO \$drop\$ DECLARE s text; BEGIN"
  echo "  FOR s IN SELECT nspname FROM pg_namespace"
  echo "           WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP"
  echo "    EXECUTE format('DROP SCHEMA %I CASCADE', s);"
  echo "  END LOOP;"
  echo "END \$drop\$;"
  echo "$create_public"
  if pg_restore --file=- "$F" 2>>/tmp/err; then echo "COMMIT;"; else echo "ROLLBACK;"; echo "\\q"; fi
} | psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 >/tmp/out 2>>/tmp/err
rc=$?
grep -q "^pg_restore:" /tmp/err && fail "pg_restore failed"
[ "$rc" -eq 0 ] || fail "restore failed (psql exit $rc), nothing was changed"
printf 'restored=true\npath=%s\n' "$BACKUP_FILE" >/tmp/message
cat /tmp/message; cp /tmp/message /dev/termination-log
"""

COMPENSATE_SCRIPT = r"""set -u
if [ -n "${COMPENSATE_FILE:-}" ]; then cp "$COMPENSATE_FILE" /tmp/compensate.sql; \
else printf '%s\n' "$COMPENSATE_SQL" >/tmp/compensate.sql; fi
psql --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction --file=/tmp/compensate.sql >/tmp/out 2>/tmp/err
rc=$?
if [ "$rc" -ne 0 ]; then
  { printf 'compensating SQL failed (psql exit %s), rolled back: ' "$rc"
    tail -c 3000 /tmp/err; } >/tmp/message
else
  printf 'compensated=true\n' >/tmp/message
fi
cat /tmp/message; head -c 4096 /tmp/message >/dev/termination-log
exit $rc
"""


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
            script = BACKUP_SCRIPT if step == "backup" else RESTORE_SCRIPT
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
            script = COMPENSATE_SCRIPT

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


def parse_key_values(output: str | None) -> dict[str, str]:
    """`key=value` lines (the backup/restore Jobs' termination message); `error=` takes the rest."""
    values: dict[str, str] = {}
    if not output:
        return values
    lines = output.splitlines()
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key):
            continue
        if key == "error":
            values["error"] = "\n".join([value, *lines[index + 1 :]]).strip()
            break
        values[key] = value
    return values


def parse_backup_output(output: str | None) -> dict[str, Any] | None:
    values = parse_key_values(output)
    if not values:
        return None
    result: dict[str, Any] = {"verified": values.get("verified") == "true"}
    for key in ("sizeBytes", "tocEntries"):
        if values.get(key, "").isdigit():
            result[key] = int(values[key])
    if "path" in values:
        result["path"] = values["path"]
    if "error" in values:
        result["error"] = values["error"]
    if result["verified"] and not result.get("sizeBytes"):
        result.update(verified=False, error="the backup is empty")
    return result
