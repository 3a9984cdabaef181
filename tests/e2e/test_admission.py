"""Invalid resources are rejected when applied, with a message a user can act on (schema and CEL rules)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import ParkingApp
from tests.support.kube import kubectl_binary


def _apply(parking: ParkingApp, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    body = {"apiVersion": "dbops.io/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": name, "namespace": parking.namespace}, "spec": spec}
    return subprocess.run([kubectl_binary(), "apply", "-f", "-"], input=yaml.safe_dump(body),
                          capture_output=True, text=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["database"].update(port=70000), "spec.database.port"),
        (lambda s: s.update(rollback={"strategy": "Compensate"}), "requires rollback.compensate"),
        (lambda s: s.update(rollback={"strategy": "Sometimes"}), "Unsupported value"),
        (lambda s: s["migrations"].update(image={"image": "x", "path": "/sql"}), "exactly one of"),
        (lambda s: s.update(backup={"method": "Dump"}), "claimName"),
        (lambda s: s["migrations"].update(targetVersion="six"), "targetVersion"),
    ],
    ids=["port-range", "compensate-without-sql", "unknown-strategy", "two-sources", "dump-without-volume",
         "bad-target"],
)
def test_invalid_resource_is_rejected_at_apply(parking: ParkingApp, change: Any, message: str) -> None:
    spec = parking.spec()
    change(spec)
    result = _apply(parking, "invalid", spec)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_spec_is_immutable_once_created_except_approval(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.create_migration("frozen", parking.spec(approval={"required": True}))
    parking.wait_phase("frozen", "AwaitingApproval")
    with pytest.raises(ApiException) as rejected:
        parking.custom.patch_namespaced_custom_object(
            "dbops.io", "v1alpha1", parking.namespace, "databasemigrations", "frozen",
            {"spec": {"database": {"name": "another_db"}}})
    assert rejected.value.status == 422
    assert "immutable" in str(rejected.value.body)
    # approval stays editable (switching it off lets the run go on)
    parking.custom.patch_namespaced_custom_object(
        "dbops.io", "v1alpha1", parking.namespace, "databasemigrations", "frozen",
        {"spec": {"approval": {"required": False}}})
    assert parking.wait_done("frozen")["phase"] == "Succeeded", parking.describe("frozen")
