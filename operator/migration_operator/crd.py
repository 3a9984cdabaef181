"""Generate the DatabaseMigration CRD from the pydantic models.

    python -m migration_operator.crd > crds/dbops.io_databasemigrations.yaml

Kubernetes wants a *structural* schema: every node has a `type`, no `$ref`, no `anyOf` around a type, no
`title`. pydantic's JSON schema is close; this module inlines the `$defs`, turns `Optional[X]` into plain X
(the API server prunes nulls of optional fields, which is what `has()` in our CEL rules expects), gives
object-valued defaults (`default_factory=Model`) the model's full default object so their nested defaults
apply, and marks free-form maps (`dict[str, Any]`) with `x-kubernetes-preserve-unknown-fields`. A short
generator of our own was preferred to `kube-custom-resource`: forty lines, no dependency, and we control
every rule it emits.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from . import constants
from .models import DatabaseMigrationSpec, DatabaseMigrationStatus

_DROP_KEYS = {"title", "$defs"}


class _KubeJsonSchema(GenerateJsonSchema):
    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            inner = self.generate_inner(schema["schema"])
            if isinstance(value, BaseModel):
                # The full default object, not `{}`: the API server evaluates the CEL rules of a structural
                # schema against its defaults, and `{}` lacks the keys the rules read (no such key: method).
                return {**inner, "default": value.model_dump(by_alias=True, exclude_none=True, mode="json")}
            return inner
        return super().default_schema(schema)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = dict(target)
        for key, value in node.items():
            if key == "x-kubernetes-validations":
                merged[key] = [*target.get(key, []), *value]
            else:
                merged[key] = value
        node = merged
    if node.get("x-kubernetes-int-or-string"):
        return {k: v for k, v in node.items() if k not in _DROP_KEYS}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {branches} in a structural schema")
        node = {**branches[0], **node}
        if "$ref" in node:
            return _structural(node, defs)
    if node.get("default", "absent") is None:
        del node["default"]
    if node.get("additionalProperties") is True or (
        node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node
    ):
        node.pop("additionalProperties", None)
        node["type"] = "object"
        node["x-kubernetes-preserve-unknown-fields"] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "description":
            out[key] = " ".join(str(value).split())
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_KubeJsonSchema, mode="validation")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


def status_schema() -> dict[str, Any]:
    schema = model_schema(DatabaseMigrationStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def crd() -> dict[str, Any]:
    spec_schema = model_schema(DatabaseMigrationSpec)
    spec_schema["description"] = (DatabaseMigrationSpec.__doc__ or "").strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{constants.PLURAL}.{constants.GROUP}",
            "labels": {"app.kubernetes.io/name": "migration-operator"},
        },
        "spec": {
            "group": constants.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": constants.KIND,
                "listKind": f"{constants.KIND}List",
                "plural": constants.PLURAL,
                "singular": constants.SINGULAR,
                "shortNames": list(constants.SHORT_NAMES),
                "categories": list(constants.CATEGORIES),
            },
            "versions": [
                {
                    "name": constants.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Target", "type": "string", "jsonPath": ".spec.migrations.targetVersion"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {
                            "name": "Database",
                            "type": "string",
                            "priority": 1,
                            "jsonPath": ".spec.database.name",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Message", "type": "string", "jsonPath": ".status.message"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "One run of the production migration runbook "
                            "(backup, maintenance, "
                            "Flyway migrate, verify, rollback) against one PostgreSQL database.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m migration_operator.crd` from operator/migration_operator/models.py. "
    "Do not edit.\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=1000, allow_unicode=True)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
