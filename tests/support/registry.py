"""Images a test makes itself, pushed to the local cluster's registry (hack/registry.sh) under an upstream name, so
the node pulls them like any other image (containerd mirrors docker.io, ghcr.io ... to it).

An image here is a base image of the registry plus one layer of files: built with the registry's HTTP API (no
builder, no daemon), deterministic (sorted entries, fixed owner, mode and mtime, gzip without a timestamp), so the
same files give the same digest and a second push is a no-op.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
from typing import Any

REGISTRY = os.environ.get("MO_REGISTRY_ADDR", "127.0.0.1:5000")
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
LAYER_TYPES = {
    MANIFEST_TYPES[0]: "application/vnd.docker.image.rootfs.diff.tar.gzip",
    MANIFEST_TYPES[1]: "application/vnd.oci.image.layer.v1.tar+gzip",
}


def registry_path(reference: str) -> str:
    """An upstream name's path in the local registry: the registry host dropped (hack/build-images.sh's flat naming).
    docker.io/library/busybox:1.37 -> library/busybox:1.37; busybox:1.37 -> library/busybox:1.37."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        reference = rest
    elif not rest:
        reference = f"library/{reference}"
    return reference


def answering() -> bool:
    """Whether the local registry answers the v2 API."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _request(method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    url = path if path.startswith("http") else f"http://{REGISTRY}{path}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _split(reference: str) -> tuple[str, str]:
    path = registry_path(reference)
    repository, _, tag = path.rpartition(":")
    return repository, tag


def _manifest(repository: str, tag: str) -> tuple[dict[str, Any], str]:
    status, headers, body = _request("GET", f"/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": ", ".join(MANIFEST_TYPES)})
    if status != 200:
        raise RuntimeError(f"registry {REGISTRY}: no manifest {repository}:{tag} ({status}): {body[:200]!r}")
    return json.loads(body), headers.get("Docker-Content-Digest", "")


def _blob(repository: str, digest: str) -> bytes:
    status, _, body = _request("GET", f"/v2/{repository}/blobs/{digest}")
    if status != 200:
        raise RuntimeError(f"registry {REGISTRY}: no blob {repository}@{digest} ({status})")
    return body


def _has_blob(repository: str, digest: str) -> bool:
    return _request("HEAD", f"/v2/{repository}/blobs/{digest}")[0] == 200


def _upload(repository: str, data: bytes, digest: str) -> None:
    if _has_blob(repository, digest):
        return
    status, headers, body = _request("POST", f"/v2/{repository}/blobs/uploads/", data=b"")
    if status != 202:
        raise RuntimeError(f"registry {REGISTRY}: upload to {repository} refused ({status}): {body[:200]!r}")
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    status, _, body = _request("PUT", f"{location}{separator}digest={digest}", data=data,
                               headers={"Content-Type": "application/octet-stream"})
    if status != 201:
        raise RuntimeError(f"registry {REGISTRY}: upload of {digest} failed ({status}): {body[:200]!r}")


def _mount(repository: str, source: str, digest: str) -> None:
    """A base layer into the new repository: mounted from the base's (same registry), else copied."""
    if _has_blob(repository, digest):
        return
    status, _, _ = _request("POST", f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}", data=b"")
    if status != 201:
        _upload(repository, _blob(source, digest), digest)


def files_layer(files: dict[str, str]) -> bytes:
    """A tar of the files (absolute paths inside the image) and their parent directories, byte-for-byte the same for
    the same files: root-owned, 0644 files and 0755 directories, mtime 0, sorted."""
    directories: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        directories.update("/".join(parts[: n + 1]) for n in range(len(parts)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(directories):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            data = files[path].encode()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def push_files_image(reference: str, base: str, files: dict[str, str]) -> str:
    """`reference` = `base` + the files, in the local registry; its manifest digest. Pushes only what is missing."""
    repository, tag = _split(reference)
    base_repository, base_tag = _split(base)
    base_manifest, _ = _manifest(base_repository, base_tag)
    media_type = base_manifest.get("mediaType") or MANIFEST_TYPES[1]
    if media_type not in MANIFEST_TYPES:
        raise RuntimeError(f"base {base}: manifest type {media_type} (a list?) is not supported here")
    config = json.loads(_blob(base_repository, base_manifest["config"]["digest"]))

    tar = files_layer(files)
    layer = gzip.compress(tar, compresslevel=6, mtime=0)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config["rootfs"]["diff_ids"] = [*config["rootfs"]["diff_ids"], "sha256:" + hashlib.sha256(tar).hexdigest()]
    config["history"] = [*config.get("history", []), {"created_by": f"tests: {len(files)} files",
                                                      "created": config.get("created", "1970-01-01T00:00:00Z")}]
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()

    for base_layer in base_manifest["layers"]:
        _mount(repository, base_repository, base_layer["digest"])
    _upload(repository, layer, layer_digest)
    _upload(repository, config_bytes, config_digest)
    manifest = {
        **base_manifest,
        "config": {**base_manifest["config"], "digest": config_digest, "size": len(config_bytes)},
        "layers": [*base_manifest["layers"],
                   {"mediaType": LAYER_TYPES[media_type], "digest": layer_digest, "size": len(layer)}],
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    status, _, answer = _request("PUT", f"/v2/{repository}/manifests/{tag}", data=body,
                                 headers={"Content-Type": media_type})
    if status != 201:
        raise RuntimeError(f"registry {REGISTRY}: manifest {repository}:{tag} refused ({status}): {answer[:300]!r}")
    return digest


def digest_of(reference: str) -> str | None:
    """The manifest digest of `reference` in the local registry, None when it does not hold it."""
    repository, tag = _split(reference)
    try:
        status, headers, _ = _request("HEAD", f"/v2/{repository}/manifests/{tag}",
                                      headers={"Accept": ", ".join(MANIFEST_TYPES)})
    except OSError:
        return None
    return headers.get("Docker-Content-Digest") if status == 200 else None


def pinned_tag(reference: str) -> str:
    """`<tag>@<digest>` of the local registry's current image, else the tag: a node that pulled an earlier build of
    the same tag (imagePullPolicy IfNotPresent) then runs the one just built."""
    from tests.support.runtime import LocalRuntime  # the registry is the node's only when the node is ours

    tag = reference.rpartition(":")[2]
    digest = digest_of(reference) if LocalRuntime.find() is not None and answering() else None
    return f"{tag}@{digest}" if digest else tag


def pinned(reference: str) -> str:
    """`reference` with the local registry's digest (see pinned_tag), else as it is."""
    return f"{reference.rpartition(':')[0]}:{pinned_tag(reference)}"
