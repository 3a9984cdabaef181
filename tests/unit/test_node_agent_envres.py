"""Env resolution, $(VAR) expansion, command/args and QoS of the node agent (hack/node_agent)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from node_agent.envres import (
    CommandError,
    ConfigError,
    container_argv,
    expand,
    process_env,
    qos_class,
    resolve_env,
    resolve_program,
    service_env,
)
from node_agent.images import ImageSpec


class FakeSources:
    def __init__(self, configmaps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]) -> None:
        self.configmaps = configmaps
        self.secrets = secrets

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.secrets.get(name)


SOURCES = FakeSources({"cfg": {"a": "1", "b": "2", "bad name": "x"}}, {"sec": {"pw": "s3cret"}})


def pod(**container: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "web"},
            "annotations": {"note": "n"},
        },
        "spec": {
            "nodeName": "local-node",
            "serviceAccountName": "sa",
            "containers": [{"name": "c", **container}],
        },
    }


def env_of(**container: Any) -> dict[str, str]:
    p = pod(**container)
    return resolve_env(p, p["spec"]["containers"][0], SOURCES, "127.0.1.7", "127.0.0.1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x-$(A)-$(B)", "x-1-two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("trailing $", "trailing $"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}.get) == expected


def test_plain_values_expand_earlier_vars_only() -> None:
    env = env_of(
        env=[{"name": "X", "value": "a-$(Y)"}, {"name": "Y", "value": "y"}, {"name": "Z", "value": "$(Y)!"}]
    )
    assert env == {"X": "a-$(Y)", "Y": "y", "Z": "y!"}


def test_value_from_sources_and_downward_api() -> None:
    env = env_of(
        env=[
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "a", "optional": True}}},
            {
                "name": "OPTKEY",
                "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey", "optional": True}},
            },
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "URL", "value": "http://$(IP):80/$(NAME)"},
        ]
    )
    assert env == {
        "PW": "s3cret",
        "A": "1",
        "NAME": "p",
        "NS": "ns",
        "UID": "u-1",
        "NODE": "local-node",
        "SA": "sa",
        "IP": "127.0.1.7",
        "HOST": "127.0.0.1",
        "APP": "web",
        "NOTE": "n",
        "URL": "http://127.0.1.7:80/p",
    }


def test_missing_sources_are_config_errors() -> None:
    with pytest.raises(ConfigError, match='configmap "nope" not found'):
        env_of(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "a"}}}])
    with pytest.raises(ConfigError, match="couldn't find key zz in Secret ns/sec"):
        env_of(env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "zz"}}}])
    with pytest.raises(ConfigError):
        env_of(envFrom=[{"secretRef": {"name": "nope"}}])


def test_env_from_prefix_skips_invalid_names_and_env_wins() -> None:
    env = env_of(
        envFrom=[
            {"configMapRef": {"name": "cfg"}, "prefix": "C_"},
            {"secretRef": {"name": "gone", "optional": True}},
        ],
        env=[{"name": "C_a", "value": "override"}],
    )
    assert env == {"C_a": "override", "C_b": "2"}


def test_resource_field_ref_uses_limits_then_node_allocatable() -> None:
    env = env_of(
        resources={"limits": {"memory": "64Mi", "cpu": "250m"}},
        env=[
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {
                "name": "EPH",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage", "divisor": "1Gi"}},
            },
        ],
    )
    assert env == {"MEM": "64", "CPU": "1", "MCPU": "250", "EPH": "100"}


def test_service_env_points_at_the_apiserver() -> None:
    env = service_env("127.0.0.1", 16443)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "16443"


IMAGE = ImageSpec(pattern="x", path=("/opt/x/bin",), env={"IMG": "1"}, entrypoint=("ep",), cmd=("c1", "c2"))


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({}, ["ep", "c1", "c2"]),
        ({"args": ["a", "$(V)"]}, ["ep", "a", "v"]),
        ({"command": ["cmd", "$(V)"]}, ["cmd", "v"]),
        ({"command": ["cmd"], "args": ["$$(V)", "$(NOPE)"]}, ["cmd", "$(V)", "$(NOPE)"]),
    ],
)
def test_command_and_args_semantics(container: dict[str, Any], expected: list[str]) -> None:
    assert container_argv(container, IMAGE, {"V": "v"}) == expected


def test_nothing_to_run_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="no command"):
        container_argv({"image": "postgres"}, ImageSpec(pattern="postgres"), {})


def test_process_env_layers_image_hostname_and_pod_env() -> None:
    env = process_env(IMAGE, pod(), {"IMG": "pod", "HOSTNAME": "h"})
    assert env["PATH"].startswith("/opt/x/bin:")
    assert env["IMG"] == "pod"
    assert env["HOSTNAME"] == "h"
    assert process_env(IMAGE, pod(), {})["HOSTNAME"] == "p"


def test_resolve_program_on_path(tmp_path: Path) -> None:
    prog = tmp_path / "tool"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    assert resolve_program("tool", f"/nonexistent:{tmp_path}") == str(prog)
    assert resolve_program("/bin/sh", "") == "/bin/sh"
    with pytest.raises(CommandError, match="executable file not found"):
        resolve_program("no-such-tool-xyz", str(tmp_path))


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ([{}], "BestEffort"),
        (
            [{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}],
            "Guaranteed",
        ),
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),
        ([{"requests": {"cpu": "100m"}}], "Burstable"),
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable"),
        (
            [{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}],
            "Burstable",
        ),
    ],
)
def test_qos_class(resources: list[dict[str, Any]], expected: str) -> None:
    p = {"spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]}}
    assert qos_class(p) == expected
