"""Pod volumes: materialised as host directories, then bind-mounted into each container by the shim.

ConfigMap, Secret, downwardAPI and projected volumes are written like the kubelet's AtomicWriter does
(a timestamped directory, a ``..data`` symlink swapped atomically, and one symlink per top-level
entry), so they can be refreshed while the container runs and readers never see a half update.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .envres import ConfigError, expand_with, field_ref_value, resource_field_value
from .kube import ApiError, Kube

log = logging.getLogger(__name__)
Obj = dict[str, Any]

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_MODE = 0o644


class VolumeError(Exception):
    """A volume cannot be set up yet (FailedMount): the container stays ContainerCreating."""


class ApiSources:
    """ConfigMap/Secret reads for one sync of one pod (cached, so env and volumes agree)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._cache: dict[tuple[str, str, str], Obj | None] = {}

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        key = (kind, namespace, name)
        if key not in self._cache:
            self._cache[key] = self.kube.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        return self._cache[key]

    def configmap_files(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self._get("configmaps", namespace, name)
        if obj is None:
            return None
        files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return files

    def secret_files(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self._get("secrets", namespace, name)
        if obj is None:
            return None
        files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        # stringData is write-only in the API, but harmless to honour if a fake server returns it.
        files.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return files

    # envres.Sources
    def configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get("configmaps", namespace, name)
        return None if obj is None else {k: str(v) for k, v in (obj.get("data") or {}).items()}

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        files = self.secret_files(namespace, name)
        return None if files is None else {k: v.decode("utf-8", errors="replace") for k, v in files.items()}


# ---------------------------------------------------------------------------------------------
# AtomicWriter.


def write_atomic_dir(target: Path, files: Mapping[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` show exactly ``files`` ({relative path: (content, mode)}). Returns whether
    anything changed (unchanged content is not rewritten, like the kubelet)."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink():
        current = target / os.readlink(data_link)
        existing: dict[str, tuple[bytes, int]] = {}
        for p in current.rglob("*"):
            if p.is_file():
                existing[str(p.relative_to(current))] = (p.read_bytes(), p.stat().st_mode & 0o777)
        if existing == dict(files):
            return False
    else:
        current = None
    ts = target / f"..{datetime.now(UTC).strftime('%Y_%m_%d_%H_%M_%S.%f')}"
    ts.mkdir()
    for rel, (content, mode) in files.items():
        p = ts / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(mode)
    tmp_link = target / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(ts.name)
    os.replace(tmp_link, data_link)
    top = {rel.split("/", 1)[0] for rel in files}
    for name in top:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.is_symlink() and entry.name not in top:
            entry.unlink()
    if current is not None and current.exists():
        shutil.rmtree(current, ignore_errors=True)
    return True


def _mode(v: Any, default: int) -> int:
    return int(v) & 0o777 if v is not None else default


def _select_items(
    data: Mapping[str, bytes] | None,
    items: list[Obj] | None,
    mode: int,
    what: str,
    optional: bool,
) -> dict[str, tuple[bytes, int]]:
    if data is None:
        if optional:
            return {}
        raise VolumeError(f"{what} not found")
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            raise VolumeError(f"couldn't find key {key} in {what}")
        out[item.get("path") or key] = (data[key], _mode(item.get("mode"), mode))
    return out


@dataclass
class Token:
    token: str
    refresh_at: float


class VolumeManager:
    """Sets up (and refreshes) the volumes of one pod under ``<pod dir>/volumes``."""

    def __init__(self, kube: Kube, pod_dir: Path) -> None:
        self.kube = kube
        self.root = pod_dir / "volumes"
        self._tokens: dict[tuple[str, str, int], Token] = {}

    def _token(self, pod: Obj, audience: str, expiration: int) -> bytes:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        sa = spec.get("serviceAccountName") or "default"
        key = (sa, audience, expiration)
        cached = self._tokens.get(key)
        if cached and time.time() < cached.refresh_at:
            return cached.token.encode()
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        try:
            res = self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
        except ApiError as e:
            raise VolumeError(f"failed to fetch token for serviceaccount {sa}: {e}") from e
        status = res.get("status") or {}
        token = str(status.get("token", ""))
        ttl = float(expiration)
        exp = status.get("expirationTimestamp")
        if exp:
            with contextlib.suppress(ValueError):
                ttl = datetime.fromisoformat(str(exp).replace("Z", "+00:00")).timestamp() - time.time()
        # Like the kubelet: refresh at 80% of the lifetime, and at least daily.
        self._tokens[key] = Token(token, time.time() + min(ttl * 0.8, 86400))
        return token.encode()

    def _projected(
        self, pod: Obj, vol: Obj, sources: ApiSources, pod_ip: str, host_ip: str
    ) -> dict[str, Any]:
        ns = pod["metadata"]["namespace"]
        mode = _mode(vol.get("defaultMode"), DEFAULT_MODE)
        files: dict[str, tuple[bytes, int]] = {}
        for src in vol.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = self._token(pod, t.get("audience") or "", int(t.get("expirationSeconds") or 3607))
                files[t.get("path") or "token"] = (token, mode)
            elif "configMap" in src:
                c = src["configMap"]
                files.update(
                    _select_items(
                        sources.configmap_files(ns, c.get("name", "")),
                        c.get("items"),
                        mode,
                        f'configmap "{c.get("name", "")}"',
                        bool(c.get("optional")),
                    )
                )
            elif "secret" in src:
                s = src["secret"]
                files.update(
                    _select_items(
                        sources.secret_files(ns, s.get("name", "")),
                        s.get("items"),
                        mode,
                        f'secret "{s.get("name", "")}"',
                        bool(s.get("optional")),
                    )
                )
            elif "downwardAPI" in src:
                files.update(
                    self._downward(pod, src["downwardAPI"].get("items") or [], mode, pod_ip, host_ip)
                )
            else:
                log.warning(
                    "pod %s/%s: unsupported projected source %s ignored",
                    ns,
                    pod["metadata"]["name"],
                    sorted(src),
                )
        return files

    @staticmethod
    def _downward(
        pod: Obj, items: list[Obj], mode: int, pod_ip: str, host_ip: str
    ) -> dict[str, tuple[bytes, int]]:
        files: dict[str, tuple[bytes, int]] = {}
        containers = (pod.get("spec") or {}).get("containers") or []
        for item in items:
            if "fieldRef" in item:
                try:
                    value = field_ref_value(pod, item["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
                except ConfigError as e:
                    raise VolumeError(str(e)) from e
            elif "resourceFieldRef" in item:
                rf = item["resourceFieldRef"]
                c: Obj = next((c for c in containers if c.get("name") == rf.get("containerName")), {})
                value = resource_field_value(c, rf.get("resource", ""), rf.get("divisor"))
            else:
                continue
            files[item["path"]] = (value.encode(), _mode(item.get("mode"), mode))
        return files

    def setup(self, pod: Obj, sources: ApiSources, pod_ip: str, host_ip: str) -> dict[str, tuple[Path, bool]]:
        """Materialise (or refresh) every volume; returns {volume name: (host path, forced read-only)}.
        Raises VolumeError when one cannot be set up yet."""
        ns = pod["metadata"]["namespace"]
        result: dict[str, tuple[Path, bool]] = {}
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            name = vol["name"]
            target = self.root / name
            if "configMap" in vol:
                c = vol["configMap"]
                mode = _mode(c.get("defaultMode"), DEFAULT_MODE)
                files = _select_items(
                    sources.configmap_files(ns, c.get("name", "")),
                    c.get("items"),
                    mode,
                    f'configmap "{c.get("name", "")}"',
                    bool(c.get("optional")),
                )
                write_atomic_dir(target, files)
                result[name] = (target, True)
            elif "secret" in vol:
                s = vol["secret"]
                mode = _mode(s.get("defaultMode"), DEFAULT_MODE)
                files = _select_items(
                    sources.secret_files(ns, s.get("secretName", "")),
                    s.get("items"),
                    mode,
                    f'secret "{s.get("secretName", "")}"',
                    bool(s.get("optional")),
                )
                write_atomic_dir(target, files)
                result[name] = (target, True)
            elif "projected" in vol:
                write_atomic_dir(target, self._projected(pod, vol["projected"], sources, pod_ip, host_ip))
                result[name] = (target, True)
            elif "downwardAPI" in vol:
                d = vol["downwardAPI"]
                files = self._downward(
                    pod, d.get("items") or [], _mode(d.get("defaultMode"), DEFAULT_MODE), pod_ip, host_ip
                )
                write_atomic_dir(target, files)
                result[name] = (target, True)
            elif "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
                result[name] = (target, False)
            elif "hostPath" in vol:
                hp = vol["hostPath"]
                path = Path(hp.get("path", "/"))
                kind = hp.get("type") or ""
                if kind == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                elif kind and not path.exists():
                    raise VolumeError(f"hostPath {path} does not exist (type {kind})")
                result[name] = (path, False)
            elif "persistentVolumeClaim" in vol:
                pvc_src = vol["persistentVolumeClaim"]
                result[name] = (
                    self._pvc_path(ns, pvc_src.get("claimName", "")),
                    bool(pvc_src.get("readOnly")),
                )
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise VolumeError(f"volume {name}: unsupported volume type {kinds} on this node")
        return result

    def _pvc_path(self, ns: str, claim: str) -> Path:
        pvc = self.kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        if pvc is None:
            raise VolumeError(f'persistentvolumeclaim "{claim}" not found')
        if pvc.get("metadata", {}).get("deletionTimestamp"):
            raise VolumeError(f'persistentvolumeclaim "{claim}" is being deleted')
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise VolumeError(f'persistentvolumeclaim "{claim}" is not bound yet')
        pv = self.kube.get(f"/api/v1/persistentvolumes/{pv_name}")
        if pv is None:
            raise VolumeError(f'persistentvolume "{pv_name}" not found')
        spec = pv.get("spec") or {}
        path = (spec.get("local") or {}).get("path") or (spec.get("hostPath") or {}).get("path")
        if not path:
            raise VolumeError(
                f"persistentvolume {pv_name} is neither local nor hostPath; this node cannot mount it"
            )
        p = Path(path)
        if not p.exists():
            if "hostPath" in spec:
                p.mkdir(parents=True, exist_ok=True)
            else:
                raise VolumeError(f"persistentvolume {pv_name}: local path {p} does not exist")
        return p


def container_mounts(
    container: Obj,
    volumes: Mapping[str, tuple[Path, bool]],
    env: Mapping[str, str],
    termination_log: Path,
    tmp_dir: Path | None = None,
    image_files: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The shim's mount list for one container: its volumeMounts, the termination-log file and, with
    ``tmp_dir``, a private /tmp (a container has its own filesystem; here they share the host's, so two
    pods writing /tmp/x would clash) unless a volumeMount already targets /tmp."""
    # The image's files first, so a volume mounted at or below one of their paths wins, as over an image layer.
    mounts: list[dict[str, Any]] = [
        {"src": src, "dst": dst, "readOnly": True} for dst, src in sorted((image_files or {}).items())
    ]
    for vm in container.get("volumeMounts") or []:
        name = vm.get("name", "")
        if name not in volumes:
            raise VolumeError(f"volumeMount {name!r} names no volume of the pod")
        src, forced_ro = volumes[name]
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand_with(vm["subPathExpr"], env)
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise VolumeError(f"subPath {sub!r} must be a relative path without '..'")
            sub_src = src / sub
            if not sub_src.exists() and not sub_src.is_symlink():
                # The kubelet creates a missing subPath as a directory.
                sub_src.mkdir(parents=True, exist_ok=True)
            # Resolve here: for ConfigMap volumes the entry is a symlink into ..data.
            src = sub_src.resolve()
        mounts.append(
            {
                "src": str(src),
                "dst": vm.get("mountPath", ""),
                # ConfigMap/Secret/projected volumes are always read-only in a real kubelet.
                "readOnly": bool(vm.get("readOnly")) or forced_ro,
            }
        )
    if tmp_dir is not None and not any(Path(m["dst"]) == Path("/tmp") for m in mounts):
        mounts.append({"src": str(tmp_dir), "dst": "/tmp", "readOnly": False})
    path = container.get("terminationMessagePath") or "/dev/termination-log"
    mounts.append({"src": str(termination_log), "dst": path, "readOnly": False})
    return mounts
