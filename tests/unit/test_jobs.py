"""Job manifests: restricted pods, secrets only by reference, deterministic names, ownership."""

from __future__ import annotations

import json
from typing import Any

import pytest
import specs

from migration_operator import jobs, machine, pg_scripts
from migration_operator.models import parse_spec
from migration_operator.reasons import Step

BODY = {"metadata": {"name": "parking-db-v6", "namespace": "parking", "uid": "1234abcd-0000"}}
BASE: dict[str, Any] = specs.parking(
    rollback={"strategy": "Compensate", "compensate": {"sql": "drop table parking_zones;"}}
)
SPEC = parse_spec(BASE)
STEPS = sorted(Step)
FLYWAY_STEPS = {Step.VALIDATE, Step.MIGRATE, Step.ARMED_MIGRATE, Step.REPAIR}


def pod(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("step", STEPS)
def test_pods_pass_restricted_pod_security(step: str) -> None:
    spec = pod(machine.build_job(BODY, SPEC, step))
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert container["command"][:2] == ["sh", "-c"]
    for volume in spec["volumes"]:
        assert set(volume) & {"emptyDir", "configMap", "persistentVolumeClaim", "secret"}, volume


@pytest.mark.parametrize("step", STEPS)
def test_credentials_only_by_secret_reference(step: str) -> None:
    job = machine.build_job(BODY, SPEC, step)
    container = pod(job)["containers"][0]
    secret_vars = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    user, password = ("FLYWAY_USER", "FLYWAY_PASSWORD") if step in FLYWAY_STEPS else ("PGUSER", "PGPASSWORD")
    assert secret_vars == {
        user: {"name": "parking-db-admin", "key": "username"},
        password: {"name": "parking-db-admin", "key": "password"},
    }
    command = json.dumps(container["command"]).lower().replace("--no-password", "")
    assert "password" not in command
    assert not [e for e in container["env"] if "PASSWORD" in e["name"] and "value" in e]


@pytest.mark.parametrize("step", STEPS)
def test_names_labels_owner_and_no_retries(step: str) -> None:
    job = machine.build_job(BODY, SPEC, step)
    assert job["metadata"]["name"] == f"parking-db-v6-{step}"
    assert job["metadata"]["namespace"] == "parking"
    labels = job["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/managed-by": "migration-operator",
        "dbops.io/migration": "parking-db-v6",
        "dbops.io/step": step,
    }
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "dbops.io/v1alpha1",
        "kind": "DatabaseMigration",
        "name": "parking-db-v6",
        "uid": "1234abcd-0000",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    # no step that ran is retried: only a pod that ran nothing gets another (tests/unit/test_job_output.py)
    assert job["spec"]["backoffLimit"] == jobs.START_RETRIES
    assert job["spec"]["podFailurePolicy"] == jobs.POD_FAILURE_POLICY
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert job["spec"]["activeDeadlineSeconds"] > 0
    container = pod(job)["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_long_names_are_shortened_deterministically() -> None:
    name = "a-very-long-database-migration-name-for-the-parking-database-release-2026"
    first, second = jobs.job_name(name, "backup-verify"), jobs.job_name(name, "backup-verify")
    assert first == second and len(first) <= 63 and first.endswith("-backup-verify")
    assert jobs.job_name(name + "x", "migrate") != jobs.job_name(name + "y", "migrate")
    assert len(jobs.label_value(name)) <= 63


def test_default_images_and_template_controls() -> None:
    spec = parse_spec(
        {
            **BASE,
            "jobTemplate": {
                "postgresImage": "registry.local/postgres:16",
                "serviceAccountName": "migrator",
                "nodeSelector": {"pool": "db"},
                "tolerations": [{"key": "db", "operator": "Exists"}],
                "imagePullSecrets": [{"name": "regcred"}],
                "resources": {"limits": {"memory": "1Gi", "cpu": 1}},
                "runAsUser": 1001,
                "labels": {"team": "parking"},
            },
        }
    )
    backup = machine.build_job(BODY, spec, "backup")
    spec_pod = pod(backup)
    assert spec_pod["containers"][0]["image"] == "registry.local/postgres:16"
    assert spec_pod["serviceAccountName"] == "migrator" and spec_pod["nodeSelector"] == {"pool": "db"}
    assert spec_pod["tolerations"] == [{"key": "db", "operator": "Exists"}]
    assert spec_pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec_pod["containers"][0]["resources"] == {"limits": {"memory": "1Gi", "cpu": 1}}
    assert spec_pod["securityContext"]["runAsUser"] == 1001
    assert backup["metadata"]["labels"]["team"] == "parking"
    assert pod(machine.build_job(BODY, SPEC, "migrate"))["containers"][0]["image"] == "flyway/flyway:12.4"
    assert pod(machine.build_job(BODY, SPEC, "backup"))["containers"][0]["image"] == "postgres:15"


def test_flyway_jobs_mount_migrations_and_postgres_jobs_the_backup() -> None:
    migrate = pod(machine.build_job(BODY, SPEC, "migrate"))
    mounts = {m["mountPath"] for m in migrate["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/migrations", "/migrations-src"} <= mounts
    env = {e["name"]: e.get("value") for e in migrate["containers"][0]["env"]}
    assert env["FLYWAY_URL"].startswith("jdbc:postgresql://127.0.0.1:15432/parking_db")
    restore = pod(machine.build_job(BODY, SPEC, "restore"))
    assert {"name": "backup", "persistentVolumeClaim": {"claimName": "db-backups"}} in restore["volumes"]
    env = {e["name"]: e.get("value") for e in restore["containers"][0]["env"]}
    assert env["BACKUP_FILE"] == jobs.backup_file("parking-db-v6", "1234abcd-0000")
    assert env["PGAPPNAME"] == "migration-operator-restore" and env["PGPORT"] == "15432"


def test_image_source_copies_migrations_with_an_init_container() -> None:
    spec = parse_spec({**BASE, "migrations": {"image": {"image": "registry/app-migrations:6", "path": "/sql/"}}})
    job_pod = pod(machine.build_job(BODY, spec, "migrate"))
    init = job_pod["initContainers"][0]
    assert init["image"] == "registry/app-migrations:6"
    # the path reaches `cp` through the environment, quoted, never as script text (tests/unit/test_security_jobs.py)
    assert init["command"][2] == 'cp -R -- "$MIGRATIONS_PATH/." /migrations/'
    assert {"name": "MIGRATIONS_PATH", "value": "/sql"} in init["env"]
    assert not any("configMap" in v for v in job_pod["volumes"])


def test_compensate_from_configmap_key() -> None:
    spec = parse_spec(
        {
            **BASE,
            "rollback": {
                "strategy": "Compensate",
                "compensate": {"configMapKeyRef": {"name": "undo", "key": "V6.undo.sql"}},
            },
        }
    )
    job_pod = pod(machine.build_job(BODY, spec, "compensate"))
    assert {
        "name": "compensate",
        "configMap": {"name": "undo", "items": [{"key": "V6.undo.sql", "path": "compensate.sql"}]},
    } in job_pod["volumes"]
    env = {e["name"]: e.get("value") for e in job_pod["containers"][0]["env"]}
    assert env["COMPENSATE_FILE"] == "/compensate/compensate.sql" and "COMPENSATE_SQL" not in env
    assert "--single-transaction" in job_pod["containers"][0]["command"][2]


def test_backup_output_parsing() -> None:
    ok = pg_scripts.parse_backup_output("verified=true\nsizeBytes=2048\ntocEntries=12\npath=x.dump\n")
    assert ok == {"verified": True, "sizeBytes": 2048, "tocEntries": 12, "path": "x.dump"}
    failed = pg_scripts.parse_backup_output("verified=false\nerror=pg_dump failed: FATAL: no\nsecond line\n")
    assert failed is not None and failed["verified"] is False
    assert failed["error"] == "pg_dump failed: FATAL: no\nsecond line"
    assert pg_scripts.parse_backup_output(None) is None
    empty = pg_scripts.parse_backup_output("verified=true\nsizeBytes=0\n")
    assert empty is not None and empty["verified"] is False
    # an empty database's dump: a valid backup with no entry; keys added by DUMP_SCHEMAS and the free space
    scoped = pg_scripts.parse_backup_output(
        "verified=true\nsizeBytes=1300\ntocEntries=0\npath=y.dump\nschemas=public Sales\nabsentSchemas=\n"
        "freeBytes=4096\nreadBack=streamed\n"
    )
    assert scoped == {
        "verified": True,
        "sizeBytes": 1300,
        "tocEntries": 0,
        "freeBytes": 4096,
        "path": "y.dump",
        "readBack": "streamed",
        "schemas": ["public", "Sales"],
        "absentSchemas": [],
    }


def test_backup_job_dumps_at_the_spec_compression_level() -> None:
    env = {e["name"]: e.get("value") for e in pod(machine.build_job(BODY, SPEC, "backup"))["containers"][0]["env"]}
    assert env["BACKUP_COMPRESSION"] == "1"  # the default: ~2x pg_dump's own default level's speed (issue 13)
    spec = parse_spec({**BASE, "backup": {"volume": {"claimName": "db-backups"}, "compression": 0}})
    env = {e["name"]: e.get("value") for e in pod(machine.build_job(BODY, spec, "backup"))["containers"][0]["env"]}
    assert env["BACKUP_COMPRESSION"] == "0"
    assert '--compress="${BACKUP_COMPRESSION:-1}"' in pg_scripts.BACKUP_SCRIPT


def test_validate_job_mounts_the_backup_claim_read_only_to_bind_it_before_maintenance() -> None:
    """A WaitForFirstConsumer claim is provisioned for its first pod: the validate Job's, in preflight. Its container
    mounts it read-only; the pod's volume is read-write so that the kubelet gives it the pod's fsGroup at this first
    mount (a read-only first mount never gets it, and a backup pod mounting it next could not write)."""
    validate = pod(machine.build_job(BODY, SPEC, "validate"))
    claim = {"name": "backup", "persistentVolumeClaim": {"claimName": "db-backups"}}
    assert claim in validate["volumes"]
    mounts = validate["containers"][0]["volumeMounts"]
    assert {"name": "backup", "mountPath": "/backup", "readOnly": True} in mounts
    # the other Flyway Jobs do not hold the claim; the backup Job writes to it
    assert not any("persistentVolumeClaim" in v for v in pod(machine.build_job(BODY, SPEC, "migrate"))["volumes"])
    backup = pod(machine.build_job(BODY, SPEC, "backup"))
    assert {"name": "backup", "mountPath": "/backup"} in backup["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(
    "backup",
    [
        {"method": "Clone"},
        {"enabled": False},
        {"enabled": False, "volume": {"claimName": "db-backups"}},
    ],
    ids=["clone", "disabled", "disabled-with-volume"],
)
def test_validate_job_holds_no_claim_without_a_dump_to_a_volume(backup: dict[str, Any]) -> None:
    spec = parse_spec({**BASE, "backup": backup, "rollback": {"strategy": "None"}})
    validate = pod(machine.build_job(BODY, spec, "validate"))
    assert not any("persistentVolumeClaim" in v for v in validate["volumes"])
    assert all(m["mountPath"] != "/backup" for m in validate["containers"][0]["volumeMounts"])


def _job(
    conditions: list[tuple[str, str]] = (), failed: int = 0, backoff: int = 0, policy: object = None
) -> dict[str, Any]:
    status = {"succeeded": 0, "failed": failed, "conditions": [{"type": t, "status": s} for t, s in conditions]}
    spec: dict[str, Any] = {"backoffLimit": backoff}
    if policy is not None:
        spec["podFailurePolicy"] = policy
    return {"status": status, "spec": spec}


def test_a_job_the_controller_decided_to_fail_is_failed_already() -> None:
    from migration_operator.jobs import job_state

    assert job_state(_job())[0] == "Running"
    assert job_state(_job([("Failed", "True")]))[0] == "Failed"
    # FailureTarget: the Job will fail, its pods are terminating (the Failed condition comes after them)
    assert job_state(_job([("FailureTarget", "True")]))[0] == "Failed"
    # a failed pod with no retry allowed (e.g. the pod deleted while it waited) fails the Job
    assert job_state(_job(failed=1))[0] == "Failed"
    assert job_state(_job(failed=1, backoff=2))[0] == "Running"
    assert job_state(_job(failed=1, policy={"rules": []}))[0] == "Running"
