"""Pure Kubernetes semantics the agent needs: env resolution, $(VAR) expansion, command/args, QoS.

Everything here works on plain dicts (the pod as the API returns it, camelCase keys), so it is
testable without a cluster; values from ConfigMaps and Secrets come through :class:`Sources`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from .images import ImageSpec

Obj = dict[str, Any]

# Valid env var names for envFrom (kubelet skips, and reports, the invalid ones).
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# What the node offers when a resourceFieldRef asks for a limit the container did not set
# (the kubelet falls back to node allocatable too).
NODE_ALLOCATABLE = {"cpu": "2", "memory": "24Gi", "ephemeral-storage": "100Gi"}


class ConfigError(Exception):
    """A container cannot be configured yet (missing ConfigMap/Secret/key): CreateContainerConfigError."""


class Sources(Protocol):
    """Where ConfigMap and Secret data come from. ``None`` means the object does not exist."""

    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None: ...

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """Decoded (not base64) values."""
        ...


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    """Kubernetes ``$(VAR)`` expansion (third_party/forked/golang/expansion).

    ``$(NAME)`` becomes the value when ``mapping`` knows NAME and is left as written otherwise;
    ``$$`` is an escaped ``$`` (so ``$$(NAME)`` yields the literal ``$(NAME)``).
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    value = mapping(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def expand_with(text: str, env: Mapping[str, str]) -> str:
    return expand(text, env.get)


# ---------------------------------------------------------------------------------------------
# Quantities (only what resourceFieldRef and the QoS class need).

_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(q: str | int | float) -> Decimal:
    if isinstance(q, int | float):
        return Decimal(str(q))
    m = _QUANTITY.match(q.strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {q!r}")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


def resource_field_value(container: Obj, resource: str, divisor: str | None) -> str:
    """``resourceFieldRef``: the container's request/limit in units of ``divisor``, rounded up."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        # An unset request defaults to the limit (API defaulting) - and to 0 when neither is set.
        value = (resources.get("limits") or {}).get(name, "0")
    if value is None:
        value = NODE_ALLOCATABLE.get(name, "0")
    div = parse_quantity(divisor or "1")
    if div == 0:
        div = Decimal(1)
    return str(math.ceil(parse_quantity(value) / div))


# ---------------------------------------------------------------------------------------------
# Downward API.

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def _format_map(m: Mapping[str, str]) -> str:
    return "\n".join(f'{k}="{v}"' for k, v in sorted(m.items()))


def field_ref_value(pod: Obj, field_path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    sub = _SUBSCRIPT.match(field_path)
    if sub:
        return str((meta.get(sub.group(1)) or {}).get(sub.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "metadata.labels": _format_map(meta.get("labels") or {}),
        "metadata.annotations": _format_map(meta.get("annotations") or {}),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path not in simple:
        raise ConfigError(f"unsupported fieldRef fieldPath {field_path!r}")
    return str(simple[field_path])


# ---------------------------------------------------------------------------------------------
# Environment.


def service_env(api_host: str, api_port: int) -> dict[str, str]:
    """The ``kubernetes`` service variables in-cluster clients use (no kube-proxy: the real apiserver)."""
    return {
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
        f"KUBERNETES_PORT_{api_port}_TCP": f"tcp://{api_host}:{api_port}",
        f"KUBERNETES_PORT_{api_port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{api_port}_TCP_PORT": str(api_port),
        f"KUBERNETES_PORT_{api_port}_TCP_ADDR": api_host,
    }


def _key_ref(sources: Sources, namespace: str, ref: Obj, kind: str, var: str) -> str | None:
    """configMapKeyRef / secretKeyRef; ``None`` when optional and absent."""
    name = ref.get("name", "")
    key = ref.get("key", "")
    optional = bool(ref.get("optional"))
    data = sources.configmap(namespace, name) if kind == "ConfigMap" else sources.secret(namespace, name)
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{name}" not found (env {var})')
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name} (env {var})")
    return data[key]


def resolve_env(
    pod: Obj,
    container: Obj,
    sources: Sources,
    pod_ip: str,
    host_ip: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's env as the kubelet computes it: ``base`` (service variables), then envFrom,
    then env in order, each ``value`` expanded against everything defined before it."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = dict(base or {})
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        if "configMapRef" in src:
            ref, kind = src["configMapRef"], "ConfigMap"
            data = sources.configmap(namespace, ref.get("name", ""))
        elif "secretRef" in src:
            ref, kind = src["secretRef"], "Secret"
            data = sources.secret(namespace, ref.get("name", ""))
        else:
            continue
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found (envFrom)')
        for k, v in data.items():
            if _ENV_NAME.match(prefix + k):
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand_with(str(var.get("value") or ""), env)
            continue
        vf = var["valueFrom"] or {}
        value: str | None
        if "fieldRef" in vf:
            value = field_ref_value(pod, vf["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            rf = vf["resourceFieldRef"]
            target = container
            if rf.get("containerName"):
                all_c = (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get(
                    "initContainers", []
                )
                target = next((c for c in all_c if c.get("name") == rf["containerName"]), container)
            value = resource_field_value(target, rf.get("resource", ""), rf.get("divisor"))
        elif "configMapKeyRef" in vf:
            value = _key_ref(sources, namespace, vf["configMapKeyRef"], "ConfigMap", name)
        elif "secretKeyRef" in vf:
            value = _key_ref(sources, namespace, vf["secretKeyRef"], "Secret", name)
        else:
            value = None
        if value is not None:
            env[name] = value
    return env


def process_env(image: ImageSpec, pod: Obj, container_env: Mapping[str, str]) -> dict[str, str]:
    """What the process gets: image ENV, then HOSTNAME (the runtime's), then the pod's env."""
    env = image.base_env()
    env["HOSTNAME"] = (pod.get("metadata") or {}).get("name", "")
    env.update(container_env)
    return env


# ---------------------------------------------------------------------------------------------
# Command line.


class CommandError(Exception):
    """The container has nothing to run, or the program is not on its PATH: StartError."""


def container_argv(container: Obj, image: ImageSpec, env: Mapping[str, str]) -> list[str]:
    """Kubernetes/Docker semantics: ``command`` replaces ENTRYPOINT (and drops CMD), ``args``
    replaces CMD; ``$(VAR)`` in command and args is expanded with the container's env."""
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = [expand_with(str(a), env) for a in command]
        argv += [expand_with(str(a), env) for a in args or []]
    else:
        argv = list(image.entrypoint)
        argv += [expand_with(str(a), env) for a in args] if args else list(image.cmd)
    if not argv:
        raise CommandError(
            f"no command specified: image {container.get('image')!r} has no entrypoint/cmd in the image "
            "table and the container has no command"
        )
    return argv


def resolve_program(program: str, path: str) -> str:
    """A bare program name is looked up on the container's PATH (like execvp); paths are kept."""
    if "/" in program:
        if not os.path.exists(program):
            raise CommandError(f'exec: "{program}": stat {program}: no such file or directory')
        return program
    for d in path.split(":"):
        if not d:
            continue
        candidate = os.path.join(d, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CommandError(f'exec: "{program}": executable file not found in $PATH')


# ---------------------------------------------------------------------------------------------
# QoS class (pkg/apis/core/helper/qos).


def qos_class(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    any_set = False
    for c in containers:
        res = c.get("resources") or {}
        req = {k: parse_quantity(v) for k, v in (res.get("requests") or {}).items() if k in ("cpu", "memory")}
        lim = {k: parse_quantity(v) for k, v in (res.get("limits") or {}).items() if k in ("cpu", "memory")}
        if any(v != 0 for v in req.values()) or lim:
            any_set = True
        for k, v in req.items():
            requests[k] = requests.get(k, Decimal(0)) + v
        for k, v in lim.items():
            limits[k] = limits.get(k, Decimal(0)) + v
        if set(lim) != {"cpu", "memory"}:
            guaranteed = False
        # An unset request is defaulted to the limit by the API, so only a differing one matters.
        if any(k in req and req[k] != lim.get(k) for k in ("cpu", "memory")):
            guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
