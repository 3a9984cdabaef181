"""The image table of the node agent: hack/images.yaml and how images are matched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from node_agent.images import ImageNotFound, ImageTable, candidate_names, repository

REPO = Path(__file__).resolve().parents[2]

VARS = {"MO_CACHE": "/cache", "REPO": "/repo"}


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("postgres", "postgres"),
        ("postgres:16", "postgres"),
        ("docker.io/library/postgres:16@sha256:abc", "docker.io/library/postgres"),
        ("localhost:5000/team/app:1.2", "localhost:5000/team/app"),
        ("localhost:5000/team/app", "localhost:5000/team/app"),
        ("ghcr.io/x/migration-operator@sha256:0f", "ghcr.io/x/migration-operator"),
    ],
)
def test_repository_drops_tag_and_digest(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_docker_hub_names_are_equivalent() -> None:
    assert candidate_names("postgres:16") == ["postgres", "library/postgres", "docker.io/library/postgres"]
    assert candidate_names("docker.io/library/postgres") == [
        "docker.io/library/postgres",
        "library/postgres",
        "postgres",
    ]
    assert candidate_names("flyway/flyway:11") == ["flyway/flyway", "docker.io/flyway/flyway"]
    assert candidate_names("ghcr.io/a/b") == ["ghcr.io/a/b"]


def table() -> ImageTable:
    return ImageTable.parse(
        {
            "images": [
                {"match": ["postgres"], "cmd": ["psql"]},
                {
                    "match": "flyway/flyway",
                    "path": ["${MO_CACHE}/flyway/current"],
                    "entrypoint": ["flyway"],
                    "workingDir": "/flyway",
                },
                {
                    "match": ["*/migration-operator"],
                    "env": {"PYTHONPATH": "${REPO}/operator", "N": 1},
                    "entrypoint": ["${MO_CACHE}/venv/current/bin/python", "-m", "migration_operator"],
                },
                {"match": ["*"], "cmd": ["${UNKNOWN}"]},
            ]
        },
        VARS,
    )


def test_lookup_first_match_and_expansion() -> None:
    t = table()
    assert t.lookup("docker.io/library/postgres:16").cmd == ("psql",)
    fw = t.lookup("flyway/flyway:11.20.3")
    assert fw.path == ("/cache/flyway/current",)
    assert fw.entrypoint == ("flyway",)
    assert fw.working_dir == "/flyway"
    op = t.lookup("ghcr.io/acme/migration-operator:0.1.0")
    assert op.env == {"PYTHONPATH": "/repo/operator", "N": "1"}
    assert op.entrypoint == ("/cache/venv/current/bin/python", "-m", "migration_operator")
    # Unknown ${VARS} stay as written rather than silently becoming empty.
    assert t.lookup("something/else").cmd == ("${UNKNOWN}",)


def test_unknown_image_is_reported() -> None:
    t = ImageTable.parse({"images": [{"match": "busybox", "cmd": ["sh"]}]}, VARS)
    with pytest.raises(ImageNotFound, match=r"image 'nginx:1' is not in hack/images.yaml"):
        t.lookup("nginx:1")


@pytest.mark.parametrize(
    "bad", [{}, {"images": [{"cmd": ["x"]}]}, {"images": [{"match": "x", "env": ["a"]}]}]
)
def test_malformed_tables_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        ImageTable.parse(bad, VARS)


def test_the_project_table_covers_the_images_we_run() -> None:
    t = ImageTable.load(REPO / "hack" / "images.yaml", VARS)
    for image in (
        "postgres:16",
        "docker.io/library/postgres:17",
        "flyway/flyway:11.20.3",
        "busybox:1.36",
        "debian:12",
        "alpine",
        "ghcr.io/example/migration-operator:0.1.0",
        "ghcr.io/example/parking-gateway:1",
    ):
        t.lookup(image)
    assert t.lookup("flyway/flyway").entrypoint == ("flyway",)
    assert "/cache/flyway/current" in t.lookup("flyway/flyway").path
    op = t.lookup("registry.local/migration-operator")
    assert op.entrypoint == ("/cache/venv/current/bin/python", "-m", "migration_operator")
    assert op.env["PYTHONPATH"] == "/repo/operator"
    gw = t.lookup("x/parking-gateway:2")
    assert gw.entrypoint == ("/cache/venv/current/bin/python", "/repo/examples/parking/gateway/gateway.py")
    assert t.lookup("busybox").cmd == ("sh",)
