"""Least privilege, proven (issue 11): the verbs the chart grants are exactly the verbs the operator calls.

The calls are enumerated from the code: every Kubernetes API method the operator package calls (its `kube.load()`
clients, by the official client's naming: read_namespaced_job -> get batch/jobs), the watches kopf opens for the
handlers in handlers.py (list, watch), what kopf itself does (patch its own resource's metadata, post core/v1 Events,
follow CustomResourceDefinitions and namespaces), and one grant no call makes but admission requires (update on
databasemigrations/finalizers: OwnerReferencesPermissionEnforcement, for blockOwnerDeletion on the Jobs). The chart is
rendered with helm in both RBAC modes; the test fails if it grants more or less than that, or in the wrong place
(the Leases only in the operator's namespace, the namespaced rules only in watched namespaces when scoped)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "migration_operator"
# The kubectl plugin runs with its user's credentials, not the operator's.
NOT_THE_OPERATOR = {"kubectl_plugin.py"}
CLIENTS = {"core", "apps", "batch", "custom", "coordination"}
VERBS = {"read": "get", "get": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update",
         "delete": "delete"}
RESOURCES = {
    "job": ("batch", "jobs"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "deployment": ("apps", "deployments"),
    "config_map": ("", "configmaps"),
    "secret": ("", "secrets"),
    "persistent_volume_claim": ("", "persistentvolumeclaims"),
    "lease": ("coordination.k8s.io", "leases"),
    "custom_object": ("dbops.io", "databasemigrations"),
    "custom_object_status": ("dbops.io", "databasemigrations/status"),
    "namespace": ("", "namespaces"),
}
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
# Cluster-scoped resources and the Leases (in the operator's own namespace) are granted apart from the rest.
CLUSTER = {"namespaces", "customresourcedefinitions"}
OWN = {"databasemigrations", "databasemigrations/status", "databasemigrations/finalizers"}


def client_calls() -> set[str]:
    """Names of the Kubernetes client methods the operator package calls (`<...>.core.read_namespaced_secret`)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in NOT_THE_OPERATOR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            owner = node.value.value  # `clients.core.<method>`, `load().core.<method>`, `kube.load().core.<method>`
            is_client = (isinstance(owner, ast.Name) and owner.id == "clients") or isinstance(owner, ast.Call)
            if node.value.attr in CLIENTS and is_client:
                found.add(node.attr)
    return found


def grant_of(method: str) -> Grant:
    match = re.fullmatch(r"(read|get|list|create|patch|replace|delete)_(?:namespaced_)?(\w+?)", method)
    assert match, f"cannot map the client call {method} to a verb: extend the test"
    verb, resource = match.groups()
    assert resource in RESOURCES, f"cannot map the client call {method} to a resource: extend the test"
    group, plural = RESOURCES[resource]
    return group, plural, VERBS[verb]


def kopf_watches() -> set[Grant]:
    """list + watch of every resource a handler in handlers.py is registered for."""
    tree = ast.parse((PACKAGE / "handlers.py").read_text())
    watched = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = ast.unparse(node.func)
        if not re.fullmatch(r"kopf\.(on\.(event|create|update|delete|resume|field)|daemon|timer|index)", name):
            continue
        args = [ast.unparse(a) for a in node.args[:3]]
        if args[:3] == ["constants.GROUP", "constants.VERSION", "constants.PLURAL"]:
            watched.add(("dbops.io", "databasemigrations"))
        else:
            group, _, plural = (ast.literal_eval(a) for a in node.args[:3])
            watched.add(("" if group == "" else group, plural))
    return {(group, plural, verb) for group, plural in watched for verb in ("list", "watch")}


def used() -> set[Grant]:
    grants = {grant_of(method) for method in client_calls()}
    grants |= kopf_watches()
    grants |= {
        ("dbops.io", "databasemigrations", "patch"),  # kopf: finalizer, progress annotations
        ("", "events", "create"),  # kopf posts core/v1 Events
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # kopf follows the CRDs
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),  # kopf resolves namespace globs
        ("", "namespaces", "watch"),
        ("dbops.io", "databasemigrations/finalizers", "update"),  # admission, for blockOwnerDeletion
    }
    return grants


def helm() -> str | None:
    local = subprocess.run(["bash", "-c", f"source {REPO}/hack/versions.sh && echo $BIN_DIR"],
                           capture_output=True, text=True).stdout.strip()
    candidate = Path(local) / "helm"
    return str(candidate) if candidate.exists() else shutil.which("helm")


def render(*values: str) -> list[dict[str, Any]]:
    binary = helm()
    if binary is None:
        pytest.skip("helm is not installed (make tools)")
    args = [binary, "template", "mo", str(REPO / "charts/migration-operator"), "-n", "operators",
            "--kube-version", "1.35.0"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def grants_of(doc: dict[str, Any]) -> set[Grant]:
    return {(group, resource, verb) for rule in doc.get("rules", []) for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_every_client_call_maps_to_a_grant() -> None:
    calls = client_calls()
    assert "create_namespaced_job" in calls and "read_namespaced_secret" in calls  # the enumeration works
    for method in calls:
        grant_of(method)


def test_all_namespaces_grants_exactly_what_the_operator_calls() -> None:
    docs = render()
    cluster = set().union(*(grants_of(d) for d in docs if d["kind"] == "ClusterRole"))
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): grants_of(d) for d in docs if d["kind"] == "Role"}
    assert list(roles) == [("operators", "mo-migration-operator-lock")]
    leases = {g for g in used() if g[1] == "leases"}
    assert roles[("operators", "mo-migration-operator-lock")] == leases
    assert cluster == used() - leases, (
        f"granted, never called: {sorted(cluster - used())}; called, not granted: {sorted(used() - leases - cluster)}"
    )


def test_scoped_install_grants_exactly_the_same_and_only_where_needed() -> None:
    docs = render("watchNamespaces={shop,billing}")
    cluster = set().union(*(grants_of(d) for d in docs if d["kind"] == "ClusterRole"))
    roles = {d["metadata"]["namespace"]: grants_of(d) for d in docs if d["kind"] == "Role"}
    leases = {g for g in used() if g[1] == "leases"}
    expected_cluster = {g for g in used() if g[1] in CLUSTER | OWN}
    assert cluster == expected_cluster, sorted(cluster ^ expected_cluster)
    namespaced = used() - leases - expected_cluster
    assert roles == {"shop": namespaced, "billing": namespaced, "operators": leases}


def test_the_charts_rbac_table_says_exactly_what_is_granted() -> None:
    """charts/migration-operator/README.md: one row per resource, its verbs, none stale."""
    rows = re.findall(r"^\| ([\w.\"]+) \| ([\w./]+) \| ([a-z ]+) \| [^|]+ \| [^|]+ \|$",
                      (REPO / "charts/migration-operator/README.md").read_text(), re.MULTILINE)
    table = {(group.strip('"'), resource, verb) for group, resource, verbs in rows for verb in verbs.split()}
    assert table == used(), sorted(table ^ used())
