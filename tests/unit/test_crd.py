"""The committed CRD is what the models generate, it is structural, and samples validate against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import specs
import yaml
from schema_check import validate, walk

from migration_operator import crd, models

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "dbops.io_databasemigrations.yaml"
SAMPLES = sorted((Path(__file__).parent / "data" / "samples").glob("*.yaml"))


def _schema() -> dict[str, Any]:
    document = yaml.safe_load(CRD_FILE.read_text())
    schema: dict[str, Any] = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/dbops.io_databasemigrations.yaml is stale: run "
        "`python -m migration_operator.crd > crds/dbops.io_databasemigrations.yaml`"
    )


def test_schema_is_structural() -> None:
    for path, node in walk(_schema()):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "nullable" not in node or node["nullable"] is True, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "anyOf" not in node, path
        assert "type" in node, f"{path} has no type"


def test_names_and_printer_columns() -> None:
    document = yaml.safe_load(CRD_FILE.read_text())
    assert document["metadata"]["name"] == "databasemigrations.dbops.io"
    names = document["spec"]["names"]
    assert names["shortNames"] == ["dbmig", "dbm"] and names["categories"] == ["dbops"]
    version = document["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Target"]["jsonPath"] == ".spec.migrations.targetVersion"
    assert columns["Message"]["jsonPath"] == ".status.message" and "priority" not in columns["Message"]
    assert "Age" in columns


def test_every_status_field_the_operator_writes_is_declared() -> None:
    status = _schema()["properties"]["status"]["properties"]
    for field in (
        "phase",
        "message",
        "observedGeneration",
        "conditions",
        "before",
        "after",
        "pending",
        "applied",
        "backup",
        "maintenance",
        "jobs",
        "log",
        "startedAt",
        "completedAt",
        "rollback",
    ):
        assert field in status, field
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["before"]["properties"]["rows"]["additionalProperties"] == {"type": "integer"}


def test_spec_defaults_and_rules() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["properties"]["database"]["properties"]["port"]["default"] == 5432
    assert spec["properties"]["rollback"]["properties"]["strategy"]["default"] == "Restore"
    # CEL rules read it
    assert spec["properties"]["rollback"]["default"] == {"strategy": "Restore", "onFailure": "KeepAppDown"}
    rules = [
        r["rule"]
        for node in (spec, *spec["properties"].values())
        for r in node.get("x-kubernetes-validations", [])
    ]
    assert "has(self.configMap) != has(self.image)" in str(
        spec["properties"]["migrations"]["x-kubernetes-validations"]
    )
    immutable = [
        name
        for name, node in spec["properties"].items()
        if any(r["rule"] == "self == oldSelf" for r in node.get("x-kubernetes-validations", []))
    ]
    assert "approval" not in immutable
    assert {"database", "migrations", "backup", "rollback", "dryRun", "jobTemplate"} <= set(immutable)
    assert rules


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_validates(sample: Path) -> None:
    document = yaml.safe_load(sample.read_text())
    assert validate(document, _schema()) == []
    models.parse_spec(document["spec"])


def test_examples_elsewhere_in_the_repo_validate() -> None:
    found = []
    for folder in ("examples", "manifests", "charts", "argocd"):
        for path in (ROOT / folder).rglob("*.yaml") if (ROOT / folder).exists() else []:
            if "templates" in path.parts:
                continue
            for document in yaml.safe_load_all(path.read_text()):
                if isinstance(document, dict) and document.get("kind") == "DatabaseMigration":
                    found.append(path)
                    # Argo CD health testdata carry synthetic (even deliberately wrong) status: check spec.
                    document.pop("status", None)
                    assert validate(document, _schema()) == [], path
    assert found is not None


def test_unknown_and_wrong_fields_are_reported() -> None:
    document = yaml.safe_load(SAMPLES[0].read_text())
    document["spec"]["database"]["port"] = 70000
    document["spec"]["rollback"]["strategy"] = "Undo"
    document["spec"]["migrations"]["targetVersion"] = "v6"
    document["spec"]["surprise"] = 1
    errors = "\n".join(validate(document, _schema()))
    for fragment in ("port", "Undo", "targetVersion", "surprise"):
        assert fragment in errors


def test_default_flyway_image_follows_hack_versions() -> None:
    import re

    from migration_operator import constants

    versions = (ROOT / "hack" / "versions.sh").read_text()
    match = re.search(r"FLYWAY_VERSION=\$\{FLYWAY_VERSION:-(\d+)\.(\d+)", versions)
    assert match, "FLYWAY_VERSION not found in hack/versions.sh"
    assert f"flyway/flyway:{match[1]}.{match[2]}" == constants.DEFAULT_FLYWAY_IMAGE


def test_backup_compression_is_a_gzip_level_checked_at_admission() -> None:
    compression = _schema()["properties"]["spec"]["properties"]["backup"]["properties"]["compression"]
    assert (compression["type"], compression["default"]) == ("integer", 1)
    assert (compression["minimum"], compression["maximum"]) == (0, 9)
    document = yaml.safe_load(SAMPLES[0].read_text())
    for level, refused in ((0, False), (9, False), (10, True), (-1, True)):
        document["spec"].setdefault("backup", {})["compression"] = level
        errors = validate(document, _schema())
        assert bool(errors) == refused, (level, errors)
        assert any("compression" in e for e in errors) == refused, errors
    assert models.parse_spec({**specs.parking(), "backup": {"volume": {"claimName": "b"}}}).backup.compression == 1
