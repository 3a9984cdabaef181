"""The backup claim is bound in preflight, before the app is touched (issue 13).

A claim of a `WaitForFirstConsumer` StorageClass (the local cluster's local-path `local`, most clouds' default disks)
gets its volume only when its first pod is scheduled. That pod used to be the backup Job's, inside the maintenance
window (~4-5 s of provisioning here, far more for a cloud disk); the preflight's validate Job now mounts the claim
read-only, so the provisioning happens while the app still serves. A claim that does not exist, or that no volume is
provisioned for, fails preflight with a message naming it, the app untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import ParkingApp
from tests.e2e.test_preflight import _assert_failed_without_touching_the_app
from tests.support.wait import WaitAborted, wait_for

APP_UNTOUCHED_PHASES = {None, "Pending", "AwaitingApproval", "Preflight"}


def _binding_mode(parking: ParkingApp, claim: str) -> str | None:
    """The volumeBindingMode of the claim's StorageClass (the cluster's default one when the claim names none)."""
    storage = client.StorageV1Api(parking.api)
    name = parking.core.read_namespaced_persistent_volume_claim(claim, parking.namespace).spec.storage_class_name
    if name is None:
        defaults = [
            c for c in storage.list_storage_class().items
            if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
        ]
        return defaults[0].volume_binding_mode if defaults else None
    return str(storage.read_storage_class(name).volume_binding_mode)


def test_backup_claim_is_bound_while_the_app_still_runs(parking: ParkingApp) -> None:
    claim = "db-backups"
    if _binding_mode(parking, claim) != "WaitForFirstConsumer":
        pytest.skip("the claim's StorageClass binds at once (not WaitForFirstConsumer): nothing for preflight to bind")
    pvc = parking.core.read_namespaced_persistent_volume_claim(claim, parking.namespace)
    assert pvc.status.phase == "Pending", "a WaitForFirstConsumer claim without a consumer yet must still be Pending"
    parking.set_migrations("good")
    name = "claim-bound-early"
    parking.create_migration(name, parking.spec())

    def bound_in_preflight() -> dict[str, Any] | None:
        # The claim first, then the run: a Bound claim read before a run still in Preflight was bound before the
        # run entered maintenance (nothing else in the namespace mounts it).
        phase_before = parking.core.read_namespaced_persistent_volume_claim(claim, parking.namespace).status.phase
        status = parking.status(name)
        if status.get("phase") not in APP_UNTOUCHED_PHASES:
            raise WaitAborted(
                f"{name} reached {status.get('phase')} with the claim not yet seen Bound during preflight "
                f"(last seen {phase_before}):\n{parking.describe(name)}"
            )
        return status if phase_before == "Bound" and status.get("phase") == "Preflight" else None

    seen = wait_for(bound_in_preflight, timeout=180, what=f"{claim} Bound while {name} is in Preflight",
                    interval=0.1, describe=lambda: parking.describe(name))
    assert parking.deployment().spec.replicas == parking.replicas, "the app was touched before the claim was bound"
    validate = next(j for j in parking.jobs(name) if j.metadata.labels.get("dbops.io/step") == "validate")
    claims = [v.persistent_volume_claim for v in validate.spec.template.spec.volumes if v.persistent_volume_claim]
    # read-write volume (the kubelet sets the fsGroup at the first read-write mount only), read-only in the container
    assert [(c.claim_name, c.read_only) for c in claims] == [(claim, None)]
    mounts = validate.spec.template.spec.containers[0].volume_mounts
    assert [(m.mount_path, m.read_only) for m in mounts if m.name == "backup"] == [("/backup", True)]
    assert not any(j.metadata.labels.get("dbops.io/step") == "backup" for j in parking.jobs(name)), seen

    status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    log = "\n".join(str(entry) for entry in status.get("log") or [])
    assert f"it mounts the backup claim {claim} read-only" in log, log
    assert status["backup"]["verified"] is True and status["backup"]["pvc"] == claim


def test_missing_backup_claim_fails_preflight(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    name = "no-claim"
    spec = parking.spec(backup={"method": "Dump", "volume": {"claimName": "no-such-claim"}})
    parking.create_migration(name, spec)
    _assert_failed_without_touching_the_app(
        parking, name, "BackupVolumeNotFound", "PersistentVolumeClaim no-such-claim (spec.backup.volume) not found"
    )
    assert not parking.jobs(name), "no Job for a run whose backup claim does not exist"


def test_backup_claim_never_provisioned_fails_preflight_naming_it(parking: ParkingApp) -> None:
    """A StorageClass whose provisioner does not exist: the validate pod waits for the claim without any condition
    saying so (the scheduler holds it in its binding cycle), so preflight itself must stop waiting."""
    storage = client.StorageV1Api(parking.api)
    storage_class = f"{parking.namespace}-nowhere"
    storage.create_storage_class(client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=storage_class, labels={"dbops.io/test": "backup-claim"}),
        provisioner="example.invalid/nowhere",
        volume_binding_mode="WaitForFirstConsumer",
    ))
    try:
        parking.core.create_namespaced_persistent_volume_claim(parking.namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="unprovisioned"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"], storage_class_name=storage_class,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ))
        parking.set_migrations("good")
        name = "claim-never-bound"
        backup = {"method": "Dump", "volume": {"claimName": "unprovisioned"}}
        parking.create_migration(name, parking.spec(backup=backup))
        _assert_failed_without_touching_the_app(
            parking, name, "BackupVolumeNotFound", "PersistentVolumeClaim unprovisioned (spec.backup.volume) is still "
        )
        message = parking.condition(name, "Stalled")["message"]  # type: ignore[index]
        assert f"StorageClass {storage_class}" in message and "kubectl describe pvc unprovisioned" in message, message
        assert parking.core.read_namespaced_persistent_volume_claim(
            "unprovisioned", parking.namespace).status.phase == "Pending"
    finally:
        with contextlib.suppress(ApiException):
            storage.delete_storage_class(storage_class)


def test_a_run_without_maintenance_writes_its_backup_into_the_claim_its_validate_pod_still_holds(
    parking: ParkingApp,
) -> None:
    """No drain between preflight and backup: the backup pod mounts the fresh claim while the validate pod, whose
    container has just ended, may still hold it. The kubelet gives a volume the pods' fsGroup only at its first
    read-write mount, so the validate pod's volume is read-write (its container's mount read-only): with a read-only
    first mount, this run failed 5 times out of 5 ("the backup volume /backup is missing or not writable")."""
    claim = "db-backups"
    pvc = parking.core.read_namespaced_persistent_volume_claim(claim, parking.namespace)
    if _binding_mode(parking, claim) == "WaitForFirstConsumer":
        assert pvc.status.phase == "Pending", "the claim must be fresh: its first mount is this run's"
    parking.set_migrations("good")
    name = "claim-first-mount"
    spec = parking.spec()
    del spec["maintenance"]
    parking.create_migration(name, spec)
    status = parking.wait_done(name)
    assert status["phase"] == "Succeeded", parking.describe(name)
    assert status["backup"]["verified"] is True and status["backup"]["pvc"] == claim
