"""Least privilege, proven (issue 11): the verbs the chart grants are exactly the verbs the operator calls.

The calls are enumerated from the code: every call of an operation of `kube.py` in the operator package, with the
resource it names (`kube.get_or_none("jobs", ...)` -> get batch/jobs, `subresource="log"` -> pods/log), the watches
kopf opens for the handlers in handlers.py (list, watch), what kopf itself does (patch its own resource's metadata,
post core/v1 Events, follow CustomResourceDefinitions and namespaces), and one grant no call makes but admission
requires (update on databasemigrations/finalizers: OwnerReferencesPermissionEnforcement, for blockOwnerDeletion on the
Jobs). The chart is rendered with helm in both RBAC modes; the test fails if it grants more or less than that, or in
the wrong place (the Leases only in the operator's namespace, the namespaced rules only in watched namespaces when
scoped)."""

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
# kube.py's operations -> the verb each needs
VERBS = {"get": "get", "get_or_none": "get", "read_bytes": "get", "stream": "get", "list_items": "list",
         "create": "create", "patch": "patch", "replace": "update", "delete": "delete"}
GROUPS = {"jobs": "batch", "deployments": "apps", "leases": "coordination.k8s.io", "databasemigrations": "dbops.io"}
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
# Cluster-scoped resources and the Leases (in the operator's own namespace) are granted apart from the rest.
CLUSTER = {"namespaces", "customresourcedefinitions"}
OWN = {"databasemigrations", "databasemigrations/status", "databasemigrations/finalizers"}


def client_calls() -> set[tuple[str, str]]:
    """(resource, operation) of every call of a `kube.py` operation in the operator package: `kube.<op>(...)` and,
    inside kube.py, `<op>(...)`. The resource must be spelt out (a string, or constants.PLURAL) wherever the call is
    made outside kube.py's own plumbing (which passes its `resource` argument on)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in NOT_THE_OPERATOR:
            continue
        inside_kube = path.name == "kube.py" and path.parent == PACKAGE
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "kube":
                operation = func.attr
            elif inside_kube and isinstance(func, ast.Name):
                operation = func.id
            else:
                continue
            if operation not in VERBS:
                continue
            resource = node.args[0]
            if isinstance(resource, ast.Name) and inside_kube:
                continue  # plumbing: passes its caller's resource on
            if isinstance(resource, ast.Attribute) and resource.attr == "PLURAL":
                name = "databasemigrations"
            else:
                assert isinstance(resource, ast.Constant), f"{path.name}:{node.lineno}: name the resource literally"
                name = resource.value
            sub = next((k.value for k in node.keywords if k.arg == "subresource"), None)
            if sub is not None:
                assert isinstance(sub, ast.Constant), f"{path.name}:{node.lineno}: name the subresource literally"
                name = f"{name}/{sub.value}"
            found.add((name, operation))
    return found


def grant_of(call: tuple[str, str]) -> Grant:
    resource, operation = call
    return GROUPS.get(resource.split("/")[0], ""), resource, VERBS[operation]


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
    grants = {grant_of(call) for call in client_calls()}
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
    assert ("jobs", "create") in calls and ("secrets", "get_or_none") in calls  # the enumeration works
    assert ("pods/log", "read_bytes") in calls and ("databasemigrations/status", "patch") in calls
    for call in calls:
        grant_of(call)


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
