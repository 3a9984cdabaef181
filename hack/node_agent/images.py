"""The image table: which host programs stand in for a container image (``hack/images.yaml``).

No image is ever pulled. An image reference is reduced to its repository (tag and digest dropped)
and matched, in file order, against the glob patterns of each entry; the first entry that matches
says what to put on PATH, which env to add and the default entrypoint/cmd/workingDir (the Docker
ENTRYPOINT/CMD/WORKDIR of the real image). Values may use ``${MO_CACHE}`` and ``${REPO}``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# What a Docker image's PATH usually is; image PATH entries are put in front of it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ImageNotFound(Exception):
    """The image matches no entry of the table: reported to the pod as ErrImagePull."""


@dataclass(frozen=True)
class ImageSpec:
    """What runs an image on this host, with ``${...}`` variables already expanded."""

    pattern: str
    path: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str | None = None
    # The image's own files: container path -> host path, bind-mounted read-only (like an image layer).
    files: Mapping[str, str] = field(default_factory=dict)

    def base_env(self) -> dict[str, str]:
        """The environment the image itself defines (Docker ENV), PATH included."""
        env = {"PATH": ":".join([*self.path, DEFAULT_PATH])}
        env.update(self.env)
        return env


def repository(image: str) -> str:
    """``docker.io/library/postgres:16@sha256:..`` -> ``docker.io/library/postgres``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    # A colon before the last slash belongs to a registry host:port, not to a tag.
    if colon > last_slash:
        name = name[:colon]
    return name


def candidate_names(image: str) -> list[str]:
    """The names an image is known by: as written, and the Docker Hub long/short forms."""
    repo = repository(image)
    names = [repo]
    first = repo.split("/", 1)[0]
    has_registry = "/" in repo and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        # Docker Hub shorthand: postgres == library/postgres == docker.io/library/postgres.
        long = repo if "/" in repo else f"library/{repo}"
        names += [long, f"docker.io/{long}"]
    elif repo.startswith("docker.io/"):
        short = repo[len("docker.io/") :]
        names.append(short)
        if short.startswith("library/"):
            names.append(short[len("library/") :])
    # Deduplicate, keep order.
    return list(dict.fromkeys(names))


def expand_vars(value: str, variables: Mapping[str, str]) -> str:
    """Expand ``${NAME}`` from ``variables``; unknown names are left untouched (no surprise blanks)."""
    return _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), value)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ValueError(f"{what} must be a string or a list of strings")
    return tuple(str(v) for v in value)


class ImageTable:
    """The parsed ``hack/images.yaml``."""

    def __init__(self, entries: list[ImageSpec], source: str = "hack/images.yaml") -> None:
        self.entries = entries
        self.source = source

    @classmethod
    def parse(cls, data: Any, variables: Mapping[str, str], source: str = "hack/images.yaml") -> ImageTable:
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{source}: expected a mapping with an 'images' list")
        entries: list[ImageSpec] = []
        for i, raw in enumerate(data["images"]):
            if not isinstance(raw, dict):
                raise ValueError(f"{source}: images[{i}] is not a mapping")
            patterns = _str_list(raw.get("match"), f"images[{i}].match")
            if not patterns:
                raise ValueError(f"{source}: images[{i}] has no 'match'")
            env_raw = raw.get("env") or {}
            if not isinstance(env_raw, dict):
                raise ValueError(f"{source}: images[{i}].env must be a mapping")

            def ex(v: Any) -> str:
                return expand_vars(str(v), variables)

            wd = raw.get("workingDir")
            files_raw = raw.get("files") or {}
            if not isinstance(files_raw, dict) or not all(str(k).startswith("/") for k in files_raw):
                raise ValueError(f"{source}: images[{i}].files must map absolute container paths to host paths")
            common = {
                "files": {str(k): ex(v) for k, v in files_raw.items()},
                "path": tuple(ex(p) for p in _str_list(raw.get("path"), "path")),
                "env": {str(k): ex(v) for k, v in env_raw.items()},
                "entrypoint": tuple(ex(a) for a in _str_list(raw.get("entrypoint"), "entrypoint")),
                "cmd": tuple(ex(a) for a in _str_list(raw.get("cmd"), "cmd")),
                "working_dir": ex(wd) if wd else None,
            }
            entries.extend(ImageSpec(pattern=p, **common) for p in patterns)  # type: ignore[arg-type]
        return cls(entries, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str], variables: Mapping[str, str] | None = None) -> ImageTable:
        p = Path(path)
        if variables is None:
            variables = default_variables(p)
        with p.open() as f:
            return cls.parse(yaml.safe_load(f), variables, source=str(p))

    def lookup(self, image: str) -> ImageSpec:
        names = candidate_names(image)
        for entry in self.entries:
            if any(fnmatch.fnmatchcase(n, entry.pattern) for n in names):
                return entry
        raise ImageNotFound(f"image {image!r} is not in {self.source} (no local program stands in for it)")


def default_variables(images_file: Path) -> dict[str, str]:
    """``${MO_CACHE}`` and ``${REPO}`` as the hack/ scripts define them (see hack/versions.sh)."""
    cache = os.environ.get("MO_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migration-operator"
    )
    repo = os.environ.get("REPO") or str(images_file.resolve().parent.parent)
    return {"MO_CACHE": cache, "REPO": repo}
