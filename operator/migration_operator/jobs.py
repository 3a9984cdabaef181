"""Job manifests (plain dicts) and the reading of a Job's outcome: the parts every step shares.

What each step's pod runs (image, script, env, volumes) is defined beside the phase or plan that uses it, in
`machine/`, as a `PodParts`; `build_job` wraps those parts into the same Job for every step.

Every pod passes PodSecurity `restricted`; credentials only ever arrive as secretKeyRef env; every Job is
owned by its DatabaseMigration (garbage-collected with it) and named deterministically, so a restarted
operator finds the Job it created instead of creating a second one. No step that ran is retried by Kubernetes:
whether to retry a migration is never a blind decision. Only a pod that ran nothing is replaced (`POD_FAILURE_POLICY`:
the runtime could not start a container - a kubelet restarted while it started it - or the kubelet refused the pod),
up to START_RETRIES times, by the Job controller under the same Job.

A Job counts as ended as soon as its one pod has (`ended_pod_state`): the Job controller reports a finished pod only
at its next batched sync, up to a second later, and two Jobs run inside the maintenance window.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import constants, flyway, kube, tail
from .models import BackupMethod, DatabaseMigrationSpec
from .observations import ABSENT, JobObservation, JobState
from .reasons import Step

MAX_NAME = 63


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
        # the variables whose values `scrubbed` masks in the step's output
        {"name": SCRUB_VARS, "value": f"{user_var} {password_var}"},
    ]


SCRUB_VARS = "DBOPS_SCRUB_VARS"
# Every step's script runs in a subshell whose output (stdout and stderr, then the termination message) passes
# through awk, which masks the values of the variables named in $DBOPS_SCRUB_VARS: the pod's log and its status carry
# no login, whatever the tools print (Flyway's `installedBy`, a psql error, a compensating SQL's `\! printenv`). The
# pod-side twin of `errors.scrub`; without awk in the image the output passes unchanged. The first and the last line
# of the log are `tail`'s BEGIN and END marks: the operator sees the script's end in its log, ~1 s before the kubelet
# reports the container's.
_SCRUB_PRELUDE = r"""dbops_scrub='BEGIN { n = split(ENVIRON["DBOPS_SCRUB_VARS"], names, " ")
  for (i = 1; i <= n; i++) { v = ENVIRON[names[i]]; if (length(v) >= 3) { k++; s[k] = v } }
  for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
    if (length(s[j]) > length(s[i])) { t = s[i]; s[i] = s[j]; s[j] = t } }
{ line = $0
  for (i = 1; i <= k; i++) { out = ""
    while ((p = index(line, s[i])) > 0) {
      hit = 1; out = out substr(line, 1, p - 1) "***"; line = substr(line, p + length(s[i])) }
    line = out line }
  if (mode != "detect") { print line; fflush() } }
END { if (mode == "detect") exit hit ? 0 : 1 }'
command -v awk >/dev/null 2>&1 || dbops_scrub=''
dbops_filter() { if [ -n "$dbops_scrub" ]; then awk "$dbops_scrub" "$@"; else cat "$@"; fi; }
dbops_mark=$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo "$$-$(date +%s)")
echo "DBOPS-BEGIN $dbops_mark"
{ (
"""
# The termination message is rewritten only when it holds a value: a step that writes its own scrubbed message (the
# Flyway Jobs: `flyway.SCRIPT_PRELUDE`) keeps its 4096 bytes.
_SCRUB_EPILOGUE = r"""
) 2>&1; echo $? >/tmp/.dbops-rc; } | dbops_filter
if [ -n "$dbops_scrub" ] && [ -s /dev/termination-log ] \
   && awk -v mode=detect "$dbops_scrub" /dev/termination-log 2>/dev/null; then
  dbops_filter /dev/termination-log >/tmp/.dbops-tl 2>/dev/null && cat /tmp/.dbops-tl >/dev/termination-log 2>/dev/null
fi
dbops_rc=$(cat /tmp/.dbops-rc 2>/dev/null || echo 1)
echo "DBOPS-END $dbops_mark $dbops_rc"
exit "$dbops_rc"
"""


def scrubbed(script: str) -> str:
    """`script` run so that its output never shows the login (see `_SCRUB_PRELUDE`); its exit code is kept."""
    return _SCRUB_PRELUDE + script.rstrip("\n") + _SCRUB_EPILOGUE


def postgres_env(spec: DatabaseMigrationSpec, step: str) -> list[dict[str, Any]]:
    database = spec.database
    return [
        {"name": "PGHOST", "value": database.host},
        {"name": "PGPORT", "value": str(database.port)},
        {"name": "PGDATABASE", "value": database.name},
        *_secret_env(spec, "PGUSER", "PGPASSWORD"),
        {"name": "PGSSLMODE", "value": database.effective_ssl_mode},
        *([{"name": "PGSSLROOTCERT", "value": CA_FILE}] if database.ca_secret else []),
        # libpq >= 16 (postgres:16 and later); older client tools ignore it (the operator connected first with it)
        *([{"name": "PGREQUIREAUTH", "value": database.require_auth_setting}] if database.require_auth_setting else []),
        {"name": "PGAPPNAME", "value": f"{constants.APPLICATION_NAME}-{step}"},
        {"name": "PGCONNECT_TIMEOUT", "value": "15"},
        {"name": "HOME", "value": "/tmp"},
    ]


CA_MOUNT = "/etc/dbops/ca"
CA_FILE = f"{CA_MOUNT}/ca.crt"


def ca_volume(spec: DatabaseMigrationSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of database.caSecret's certificate at CA_FILE, or nothing without a caSecret."""
    ca = spec.database.ca_secret
    if ca is None:
        return [], []
    volume = {"name": "db-ca", "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
    return [volume], [{"name": "db-ca", "mountPath": CA_MOUNT, "readOnly": True}]


def flyway_env(spec: DatabaseMigrationSpec, step: str) -> list[dict[str, Any]]:
    return [
        {"name": "FLYWAY_URL", "value": flyway.jdbc_url(spec, step, CA_FILE if spec.database.ca_secret else None)},
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


@dataclass(frozen=True)
class PodParts:
    """What a step's pod runs: its main container's image, script and env, the extra volumes, an optional init
    container, and the Job's deadline."""

    image: str
    script: str
    env: list[dict[str, Any]]
    deadline_seconds: int
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    init_containers: list[dict[str, Any]] = field(default_factory=list)


TMP_VOLUME: dict[str, Any] = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT: dict[str, Any] = {"name": "tmp", "mountPath": "/tmp"}


def flyway_pod(
    spec: DatabaseMigrationSpec,
    step: Step,
    deadline_seconds: int,
    *,
    command: Step | None = None,
    init_sql: str | None = None,
) -> PodParts:
    """A Flyway step: the migrations copied into an emptyDir (from the ConfigMap, or by an init container running
    the migrations image), the fixed safety flags of `flyway.job_script`. `command`: the Flyway step the pod runs
    when it is not `step` itself (the armed migrate Job runs `migrate`), `init_sql`: see `flyway.command_line`."""
    volumes: list[dict[str, Any]] = [{"name": "migrations", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "migrations", "mountPath": constants.MIGRATIONS_MOUNT}]
    init_containers: list[dict[str, Any]] = []
    if spec.migrations.config_map:
        # Mounted aside and copied: a ConfigMap volume also holds `..data` directories Flyway would scan.
        volumes.append({"name": "migrations-src", "configMap": {"name": spec.migrations.config_map.name}})
        mounts.append({"name": "migrations-src", "mountPath": f"{constants.MIGRATIONS_MOUNT}-src", "readOnly": True})
    elif spec.migrations.image:
        # The path reaches the shell as a variable, quoted: never as script text (a path is not a command).
        init_containers.append(
            _container(
                spec,
                "copy-migrations",
                spec.migrations.image.image,
                f'cp -R -- "$MIGRATIONS_PATH/." {constants.MIGRATIONS_MOUNT}/',
                [{"name": "MIGRATIONS_PATH", "value": spec.migrations.image.path.rstrip("/") or "/"}],
                [{"name": "migrations", "mountPath": constants.MIGRATIONS_MOUNT}, TMP_MOUNT],
                scrub_output=False,
            )
        )
    ca_volumes, ca_mounts = ca_volume(spec)
    return PodParts(
        image=spec.job_template.flyway_image,
        script=flyway.job_script(spec, command or step, init_sql),
        env=flyway_env(spec, step),
        deadline_seconds=deadline_seconds,
        volumes=[*volumes, *ca_volumes],
        mounts=[*mounts, *ca_mounts],
        init_containers=init_containers,
    )


def postgres_pod(
    spec: DatabaseMigrationSpec,
    step: Step,
    script: str,
    deadline_seconds: int,
    *,
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> PodParts:
    """A step run by the PostgreSQL client tools (`sh -c script`, libpq env)."""
    ca_volumes, ca_mounts = ca_volume(spec)
    return PodParts(
        image=spec.job_template.postgres_image,
        script=script,
        env=[*postgres_env(spec, step), *(env or [])],
        deadline_seconds=deadline_seconds,
        volumes=[*(volumes or []), *ca_volumes],
        mounts=[*(mounts or []), *ca_mounts],
    )


def backup_volume(spec: DatabaseMigrationSpec, name: str, uid: str) -> dict[str, list[dict[str, Any]]]:
    """env/volumes/mounts of a step that reads or writes this run's dump on the backup volume."""
    if spec.backup.volume is None:
        raise ValueError("this step needs spec.backup.volume")
    return {
        "env": [{"name": "BACKUP_FILE", "value": backup_file(name, uid)}],
        "volumes": [{"name": "backup", "persistentVolumeClaim": {"claimName": spec.backup.volume.claim_name}}],
        "mounts": [{"name": "backup", "mountPath": constants.BACKUP_MOUNT}],
    }


def dump_claim(spec: DatabaseMigrationSpec) -> str | None:
    """The backup claim a Dump backup writes to, or None (no backup, Clone, or no volume)."""
    backup = spec.backup
    if backup.enabled and backup.method == BackupMethod.DUMP and backup.volume is not None:
        return backup.volume.claim_name
    return None


def backup_claim_binding(spec: DatabaseMigrationSpec) -> dict[str, list[dict[str, Any]]]:
    """volumes/mounts that make a pod the first consumer of the backup claim: the preflight's validate Job carries
    them so that a claim of a `WaitForFirstConsumer` StorageClass (local-path, most cloud disks) is provisioned and
    bound before the app is touched, not by the backup Job inside the maintenance window. Nothing without a Dump
    backup to a volume.

    The container mounts it read-only, the pod's volume is not: the kubelet gives a volume the pod's fsGroup only at
    its first mount on the node and only when that mount is read-write (`local` and CSI volumes alike); a backup pod
    that mounts it while the validate pod still holds it (the run moves on at the validate container's end, before
    the kubelet tore its pod down) would otherwise find a fresh, root-owned directory it cannot write (measured:
    event AlreadyMountedVolume "the requested fsGroup is 65532, but the volume has GID 0")."""
    claim = dump_claim(spec)
    if claim is None:
        return {"volumes": [], "mounts": []}
    return {
        "volumes": [{"name": "backup", "persistentVolumeClaim": {"claimName": claim}}],
        "mounts": [{"name": "backup", "mountPath": constants.BACKUP_MOUNT, "readOnly": True}],
    }


def build_job(body: dict[str, Any], spec: DatabaseMigrationSpec, step: Step, parts: PodParts) -> dict[str, Any]:
    """The Job manifest for `step` of the DatabaseMigration `body` (metadata.name/namespace/uid used)."""
    metadata = body["metadata"]
    name: str = metadata["name"]
    template = spec.job_template
    labels = {**template.labels, **selector_labels(name, step)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(spec),
        "automountServiceAccountToken": False,
        "containers": [_container(spec, step, parts.image, parts.script, parts.env, [TMP_MOUNT, *parts.mounts])],
        "volumes": [TMP_VOLUME, *parts.volumes],
    }
    if parts.init_containers:
        pod_spec["initContainers"] = parts.init_containers
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations]
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
            "backoffLimit": START_RETRIES,
            "podFailurePolicy": POD_FAILURE_POLICY,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": parts.deadline_seconds,
            "template": {
                "metadata": {"labels": labels, "annotations": dict(template.annotations)},
                "spec": pod_spec,
            },
        },
    }


# The exit code the container runtime gives a container it could not start (containerd's CRI: reason StartError,
# e.g. "failed to start containerd task ...: context canceled" when the kubelet restarted meanwhile): its process
# never ran. No script of ours exits 128 (a process killed by a signal ends 128+N, N >= 1).
START_ERROR_EXIT = 128
START_RETRIES = 2
# Any container that ran and failed (any exit code but 0 and 128) or a pod disrupted (evicted, preempted, its node
# gone: it may have run) fails the Job at once, as backoffLimit 0 did; what is left counts against backoffLimit and
# gets a new pod: a container that never started, a pod the kubelet refused before running anything.
POD_FAILURE_POLICY: dict[str, Any] = {
    "rules": [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [START_ERROR_EXIT]}},
    ]
}


def fails_the_job(
    spec: dict[str, Any], exits: list[tuple[str, int]], conditions: list[dict[str, Any]]
) -> bool | None:
    """Whether a pod that failed (its containers' `exits`, (name, exit code), its `conditions`) fails the Job at once,
    as the Job controller decides it from `spec`'s podFailurePolicy and backoffLimit: True, False (the Job may create
    another pod, or ignores this one), None (it depends on how many pods failed before: the Job's status decides)."""
    failed = [(name, code) for name, code in exits if code != 0]  # exit code 0 is never matched
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        if rule.get("onExitCodes") is not None:
            on = rule["onExitCodes"]
            values, only = set(on.get("values") or []), on.get("containerName")
            matched = any(
                (code in values) == (on.get("operator") == "In") for name, code in failed if only in (None, name)
            )
        else:
            patterns = rule.get("onPodConditions") or []
            matched = any(
                c.get("type") == p.get("type") and c.get("status") == p.get("status", "True")
                for p in patterns
                for c in conditions
            )
        if matched:
            return True if rule.get("action") == "FailJob" else None if rule.get("action") == "Count" else False
    return True if spec.get("backoffLimit") == 0 else None


def _container(
    spec: DatabaseMigrationSpec,
    name: str,
    image: str,
    script: str,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    *,
    scrub_output: bool = True,
) -> dict[str, Any]:
    template = spec.job_template
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        # Explicit command: never depend on an image's entrypoint.
        "command": ["sh", "-c", scrubbed(script) if scrub_output else script],
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


# A Job's output is read from its pod's log, up to this much (its head: Flyway puts an error first, and each step
# prints its sections in order); beyond, `output_truncated` says so and the parsers recover what they can.
LOG_LIMIT_BYTES = 4 * 1024 * 1024
# The kubelet keeps at most this much of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096
# The waiting reasons of a container on its normal way to running: not reported.
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# How much of the termination message must appear in the log for the log to be the same container's output.
_SAME_OUTPUT_PREFIX = 256


def job_state(job: dict[str, Any]) -> tuple[JobState, dict[str, Any] | None]:
    """(Succeeded | Failed | Running, the Failed condition) of a batch/v1 Job read from the API. A Job the
    controller has decided to fail is Failed already: its `FailureTarget` condition (set while its pods terminate,
    before `Failed`), or a failed pod where no retry is allowed (backoffLimit 0, no podFailurePolicy)."""
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    failed = next((c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None)
    failed = failed or next(
        (c for c in conditions if c.get("type") == "FailureTarget" and c.get("status") == "True"), None
    )
    if (status.get("succeeded") or 0) >= 1:
        return "Succeeded", failed
    if failed is not None:
        return "Failed", failed
    spec = job.get("spec")
    no_retry = spec is not None and spec.get("backoffLimit") == 0 and spec.get("podFailurePolicy") is None
    if (status.get("failed") or 0) >= 1 and no_retry:  # (with a podFailurePolicy, FailJob sets FailureTarget)
        return "Failed", None
    return "Running", None


# How close to the Job's activeDeadlineSeconds the pod's own end is no longer trusted: from there the Job controller may
# fail the Job with DeadlineExceeded whatever the pod did (clocks of the operator and the controller may differ).
DEADLINE_MARGIN_SECONDS = 5.0


def _template(job: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of the Job's template."""
    spec: dict[str, Any] | None = ((job.get("spec") or {}).get("template") or {}).get("spec")
    return spec


def _main_name(job: dict[str, Any]) -> str | None:
    containers = (_template(job) or {}).get("containers") or []
    return str(containers[0]["name"]) if containers else None


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _deleting(obj: dict[str, Any]) -> bool:
    return (obj.get("metadata") or {}).get("deletionTimestamp") is not None


def ended_pod_state(
    job: dict[str, Any], pods: list[dict[str, Any]], now: datetime, streamed_exit: int | None = None
) -> JobState | None:
    """Succeeded or Failed when the Job's pod has ended and the Job's status does not say so yet; else None.

    The Job controller reports a finished pod at its next batched sync (up to a second later), and the kubelet marks
    the pod itself Succeeded or Failed only after it tore the pod's sandbox down (~1 s after the container's end is
    reported, measured on the local node): the maintenance window should wait for neither. The pod alone tells the
    outcome only when the Job can do nothing else with it: one pod for one completion, never restarted
    (`restartPolicy: Never`), nothing being deleted, and the Job's active deadline not near (past it, the Job fails
    with DeadlineExceeded whatever the pod did). Then the main container's end decides, as soon as it is known (the
    kubelet's report, or `streamed_exit`: the END line of its log, `tail`): exit code 0 is Succeeded; any other is
    Failed when it fails the Job at once (`fails_the_job`: backoffLimit 0, or a podFailurePolicy's FailJob, as for
    every failure of ours but a container that never started). In every other case the Job's own status decides, as
    it does whenever it already says Succeeded or Failed."""
    spec = job.get("spec")
    if spec is None or _deleting(job) or len(pods) != 1:
        return None
    if (spec.get("completions") or 1) != 1 or (spec["parallelism"] if spec.get("parallelism") is not None else 1) != 1:
        return None
    started = kube.parse_time((job.get("status") or {}).get("startTime"))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (
        started is None or (now - started).total_seconds() >= deadline - DEADLINE_MARGIN_SECONDS
    ):
        return None
    pod = pods[0]
    status = pod.get("status")
    if status is None or _deleting(pod):
        return None
    template = _template(job)
    main = _main_name(job)
    exit_code = main_exit_code(pod, main)
    if status.get("phase") == "Succeeded":
        return "Succeeded" if exit_code == 0 else None
    if status.get("phase") == "Failed":
        return "Failed" if fails_the_job(spec, _exits(pod), status.get("conditions") or []) else None
    if exit_code is None:
        exit_code = streamed_exit  # the END line of its log (`tail`): the container has ended, not yet reported
    if exit_code is None or template is None or template.get("restartPolicy") != "Never":
        return None
    # still Running (or Pending) on the API, but its one container ended for good
    if exit_code == 0:
        return "Succeeded"
    return "Failed" if fails_the_job(spec, [(main or "", exit_code)], []) else None


def ran_nothing(job: dict[str, Any], pod: dict[str, Any]) -> str | None:
    """Why `pod`, failed, ran nothing and is replaced under the Job's policy ("StartError: <the runtime's message>",
    or the kubelet's reason for refusing it); None for a pod that did not fail, or whose failure is the Job's."""
    status = pod.get("status") or {}
    spec = job.get("spec") or {}
    if status.get("phase") != "Failed" or fails_the_job(spec, _exits(pod), status.get("conditions") or []):
        return None
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") == START_ERROR_EXIT:
            text = (terminated.get("message") or "").strip().splitlines()
            return f"{terminated.get('reason') or 'exit code 128'}: {text[0] if text else 'no message'}"[:300]
    return ": ".join(p for p in (status.get("reason"), status.get("message")) if p) or "failed before it ran"


def _exits(pod: dict[str, Any]) -> list[tuple[str, int]]:
    """(name, exit code) of `pod`'s containers (init and app) that terminated."""
    status = pod.get("status") or {}
    found = []
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is not None and terminated.get("exitCode") is not None:
            found.append((str(container.get("name") or ""), int(terminated["exitCode"])))
    return found


def main_state(pod: dict[str, Any], main: str | None) -> dict[str, Any] | None:
    """The state (a ContainerState) of `pod`'s container `main` as the kubelet last reported it, or None."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((c["state"] for c in statuses if c.get("name") == main and c.get("state") is not None), None)


def main_exit_code(pod: dict[str, Any], main: str | None) -> int | None:
    """The exit code of `pod`'s container `main` once the kubelet reported it terminated, else None."""
    terminated = (main_state(pod, main) or {}).get("terminated")
    return int(terminated["exitCode"]) if terminated is not None else None


def _created(pod: dict[str, Any]) -> datetime:
    return kube.parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str | None
    container: str | None
    since: datetime | None


def pod_waiting(pod: dict[str, Any]) -> Waiting | None:
    """Why `pod` cannot start, or None: see `JobObservation.waiting_reason`."""
    status = pod.get("status")
    if status is None or status.get("phase") in ("Succeeded", "Failed"):
        return None
    created = kube.parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled is not None and scheduled.get("status") == "False":
        since = kube.parse_time(scheduled.get("lastTransitionTime")) or created
        return Waiting(scheduled.get("reason") or "Unschedulable", scheduled.get("message"), None, since)
    inits = list(status.get("initContainerStatuses") or [])
    # a container waits at the latest since the pod started on its node or the last init container ended
    ends = [
        kube.parse_time(c["state"]["terminated"].get("finishedAt"))
        for c in inits
        if (c.get("state") or {}).get("terminated")
    ]
    starts = [t for t in [kube.parse_time(status.get("startTime")), *ends] if t is not None]
    since = max(starts) if starts else created
    for container in [*inits, *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting is None or not waiting.get("reason") or waiting["reason"] in STARTING_REASONS:
            continue
        last = (container.get("lastState") or {}).get("terminated")
        if last is not None and last.get("finishedAt") is not None:  # restarted: waiting since its last run ended
            since = kube.parse_time(last["finishedAt"])
        return Waiting(waiting["reason"], waiting.get("message") or None, container.get("name"), since)
    return None


def _may_be_cut(message: str) -> bool:
    # the kubelet cuts at 4096 bytes, possibly inside a UTF-8 sequence (then replaced by U+FFFD)
    return len(message.encode("utf-8", errors="replace")) >= TERMINATION_MESSAGE_LIMIT - 3


def choose_output(
    message: str | None, log: kube.PodLog | None
) -> tuple[str | None, Literal["log", "terminationMessage"] | None, bool]:
    """(output, output_source, output_truncated) from the container's termination message and its log.

    The log wins when it holds something and contains the start of the termination message (each script prints
    the whole text it cuts into the termination message, or the kubelet took the message from the log's tail):
    it is the same output, not cut at 4 KiB. Otherwise (no log, an empty one, or one that is not this
    container's output, e.g. rotated) the termination message."""
    if log is not None and log.text.strip():
        head = (message or "").strip()[:_SAME_OUTPUT_PREFIX]
        if not head or head in log.text:
            return log.text, "log", log.truncated
    if message:
        return message, "terminationMessage", _may_be_cut(message)
    return None, None, False


async def _job_pods(namespace: str, uid: str) -> list[dict[str, Any]]:
    for label in ("batch.kubernetes.io/controller-uid", "controller-uid"):
        pods = await kube.list_items("pods", namespace, f"{label}={uid}")
        if pods:
            return sorted(pods, key=_created)
    return []


async def _read_log(namespace: str, pod: str, container: str, message: str | None) -> kube.PodLog | None:
    """The container's log; None when it cannot be had for good. A transient error is raised (the pass is
    retried) unless the termination message is whole, then the message is as good."""
    try:
        return await kube.read_pod_log(namespace, pod, container, LOG_LIMIT_BYTES)
    except (kube.ApiError, *kube.CONNECTION_ERRORS):
        if message is not None and not _may_be_cut(message):
            return None
        raise


def _follow(namespace: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    """Follow the log of the Job's one running pod's main container (`tail`), when nothing else can follow it."""
    spec = job.get("spec")
    if len(pods) != 1 or spec is None or not _template(job):
        return
    pod, main = pods[0], _main_name(job)
    if _deleting(pod) or pod.get("status") is None:
        return
    state = main_state(pod, main)
    running = state is not None and state.get("running") is not None
    metadata = pod["metadata"]
    label = (metadata.get("labels") or {}).get(constants.MIGRATION_LABEL)
    if running and label and main:
        tail.follow(namespace, metadata["name"], _uid(pod), main, label, LOG_LIMIT_BYTES)


async def observe(namespace: str, name: str, *, read_log: bool = True) -> JobObservation:
    """The Job's state; while it runs, why its pod cannot start (if so); once it ended (its status says so, or its
    pod ended: `ended_pod_state`), its main container's complete output (log, or termination message as the
    fallback), exit code and failure reason.

    `read_log=False` when only the state matters (a Job looked at again on every pass after its result was
    used): no log is read, `output` is the termination message."""
    job = await kube.get_or_none("jobs", namespace, name)
    if job is None:
        return ABSENT
    state, failed_condition = job_state(job)
    pods = await _job_pods(namespace, job["metadata"]["uid"])
    streamed = tail.ended(_uid(pods[0])) if state == "Running" and len(pods) == 1 else None
    if state == "Running":
        early = ended_pod_state(job, pods, datetime.now(UTC), streamed.exit_code if streamed else None)
    else:
        early = None
        for pod in pods:
            tail.forget(_uid(pod))
    state = early or state
    if state == "Running":
        _follow(namespace, job, pods)
        terminating = bool(pods) and all(_deleting(p) for p in pods)
        replaced = [why for why in (ran_nothing(job, p) for p in pods) if why is not None]
        last_why = replaced[-1] if replaced else None
        waiting = next((w for w in (pod_waiting(p) for p in reversed(pods)) if w is not None), None)
        if waiting is None:
            return JobObservation("Running", terminating=terminating, replaced=len(replaced), replaced_why=last_why)
        return JobObservation(
            "Running",
            waiting_reason=waiting.reason,
            waiting_message=waiting.message,
            waiting_container=waiting.container,
            waiting_since=waiting.since,
            terminating=terminating,
            replaced=len(replaced),
            replaced_why=last_why,
        )
    main = _main_name(job)
    message, exit_code, pod_reason, ended_pod = None, None, None, None
    init_failure = None
    for pod in pods:
        status = pod.get("status") or {}
        for init in status.get("initContainerStatuses") or []:
            terminated = (init.get("state") or {}).get("terminated")
            if terminated is not None and terminated.get("exitCode"):
                text = (terminated.get("message") or "").strip()
                init_failure = f"init container {init['name']}: exit code {terminated['exitCode']}" + (
                    f": {text[-1000:]}" if text else ""
                )
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated is not None and (main is None or container.get("name") == main):
                message, exit_code, pod_reason = terminated.get("message"), terminated.get("exitCode"), terminated.get(
                    "reason"
                )
                ended_pod, main = pod, container.get("name")
    log = None
    if early and ended_pod is None and streamed is not None:  # ended by its log's END line: the kubelet has not said
        ended_pod, exit_code = pods[0], streamed.exit_code
        log = streamed.log
    elif read_log and ended_pod is not None and main is not None:
        log = await _read_log(namespace, ended_pod["metadata"]["name"], main, message)
        if log is not None:
            log = kube.PodLog(tail.without_marks(log.text) or "", log.truncated)
    message = tail.without_marks(message)
    output, source, truncated = choose_output(message, log)
    failure = None
    if state == "Failed":
        pod_status = pods[0].get("status") if early and pods else None
        failed_condition = failed_condition or {}
        parts = [
            f"pod {pods[0]['metadata']['name']} failed" if pod_status is not None else None,
            pod_status.get("reason") if pod_status is not None else None,
            pod_status.get("message") if pod_status is not None else None,
            failed_condition.get("reason"),
            failed_condition.get("message"),
            f"exit code {exit_code}" if exit_code is not None else None,
            pod_reason if pod_reason not in (None, "Error", "Completed") else None,
            init_failure if ended_pod is None else None,
        ]
        failure = ": ".join(p for p in parts if p) or "the Job failed"
    return JobObservation(
        state,
        output=output,
        failure=failure,
        exit_code=exit_code,
        output_source=source,
        output_truncated=truncated,
    )
