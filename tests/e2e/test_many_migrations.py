"""Many migrations from a migrations image (issue 10, point 4): Flyway's output then exceeds the 4 KiB a
termination message holds, and the operator must read it whole.

The image `ghcr.io/dbops/many-migrations:40-<hash>` holds the parking example's V1-V5 and 40 generated migrations
V5_1 ... V5_40 (deterministic: the tag's hash is the files'). With a real node the test builds it as busybox:1.37 plus
one layer of those files and pushes it to the local registry (tests/support/registry.py), from which the node pulls
it like any image. A first run brings the database part way, to 5.14 (a release's targetVersion); the second,
without targetVersion, must find every pending one (the preflight `flyway info` is ~20 KiB), apply all 26, verify
version 5.40 and say so.
"""

from __future__ import annotations

import hashlib

import pytest
from kubernetes import client

from tests.e2e.conftest import MIGRATIONS, ParkingApp
from tests.support import postgres, registry
from tests.support.runtime import LocalRuntime

IMAGE = "ghcr.io/dbops/many-migrations"
BASE_IMAGE = "busybox:1.37"  # the copy-migrations init container needs sh and cp, as for parking-migrations
COUNT = 40
PART_WAY = 14


def generated_migrations() -> dict[str, str]:
    """V5_1 ... V5_40: tables referencing the parking spots, columns, indexes, a backfill, like a year of releases."""
    files: dict[str, str] = {}
    for n in range(1, COUNT + 1):
        table = f"spot_note_{(n + 1) // 2:02d}"
        if n % 2:
            sql = (
                f"create table {table} (\n"
                "  id bigint generated always as identity primary key,\n"
                "  spot_id bigint not null references parking_spots (id),\n"
                "  note text not null default ''\n"
                ");\n"
                f"insert into {table} (spot_id, note) select id, 'release 5.{n}' from parking_spots;\n"
            )
            name = f"V5_{n}__create_{table}.sql"
        else:
            sql = (
                f"alter table {table} add column reviewed_at timestamptz;\n"
                f"create index {table}_spot_idx on {table} (spot_id);\n"
            )
            name = f"V5_{n}__review_{table}.sql"
        files[name] = sql
    return files


def image_files(generated: dict[str, str]) -> dict[str, str]:
    """The image's files: the example's V1-V5 under /flyway/sql/release-5, the generated ones under generated/."""
    files = {f"/flyway/sql/release-5/{p.name}": p.read_text() for p in sorted(MIGRATIONS.glob("V*.sql"))}
    return files | {f"/flyway/sql/generated/{name}": text for name, text in generated.items()}


def image_reference(files: dict[str, str]) -> str:
    """The tag names the content, so a node that pulled another content under the same name never runs it."""
    digest = hashlib.sha256("".join(f"{path}\0{text}\0" for path, text in sorted(files.items())).encode())
    return f"{IMAGE}:{COUNT}-{digest.hexdigest()[:12]}"


@pytest.fixture
def many_migrations_image(parking: ParkingApp) -> tuple[str, dict[str, str]]:
    """(image reference, the generated migrations), the image available to the cluster's node."""
    generated = generated_migrations()
    files = image_files(generated)
    reference = image_reference(files)
    if LocalRuntime.find() is None or not registry.answering():
        pytest.skip("the many-migrations image is pushed to the local cluster's registry only")
    registry.push_files_image(reference, BASE_IMAGE, files)
    return reference, generated


def termination_message_bytes(parking: ParkingApp, job: str) -> int:
    pods = parking.core.list_namespaced_pod(parking.namespace, label_selector=f"job-name={job}").items
    messages = [
        len((c.state.terminated.message or "").encode())
        for p in pods
        for c in p.status.container_statuses or []
        if c.state and c.state.terminated
    ]
    return max(messages, default=0)


def test_thirty_migrations_from_an_image_on_a_database_part_way(
    parking: ParkingApp, many_migrations_image: tuple[str, dict[str, str]]
) -> None:
    image, generated = many_migrations_image
    source = {"image": {"image": image, "path": "/flyway/sql"}}
    tables = ["clients", "parking_spots", "tickets", "spot_note_01"]

    # the previous release: 5.1 ... 5.14
    first = parking.spec(migrations={**source, "targetVersion": f"5.{PART_WAY}"})
    parking.create_migration("to-5-14", first)
    status = parking.wait_done("to-5-14")
    assert status["phase"] == "Succeeded", parking.describe("to-5-14")
    assert [m["version"] for m in status["applied"]] == [f"5.{n}" for n in range(1, PART_WAY + 1)]
    assert postgres.history(parking.database)[-1][0] == f"5.{PART_WAY}"

    # this release: no targetVersion, everything the image holds
    second = parking.spec(migrations=source, verify={"requiredTables": [*tables, f"spot_note_{COUNT // 2}"]})
    parking.create_migration("to-latest", second)
    status = parking.wait_done("to-latest")
    assert status["phase"] == "Succeeded", parking.describe("to-latest")
    expected = [f"5.{n}" for n in range(PART_WAY + 1, COUNT + 1)]
    # the preflight output was far beyond what a termination message holds: the operator read it whole
    assert termination_message_bytes(parking, "to-latest-validate") >= 4090
    assert [m["version"] for m in status["pending"]] == expected
    assert [m["version"] for m in status["applied"]] == expected
    scripts = {f"5.{name.removeprefix('V5_').split('__')[0]}": name for name in generated}
    assert [m["script"].rsplit("/", 1)[-1] for m in status["applied"]] == [scripts[v] for v in expected]
    assert status["after"]["version"] == f"5.{COUNT}"
    count = len(expected)
    assert f"from version 5.{PART_WAY} to 5.{COUNT} ({count} migration(s))" in status["message"], status["message"]
    migrated = parking.condition("to-latest", "Migrated")
    assert migrated is not None and migrated["message"] == (
        f"migrated: {count} migration(s) applied, now at version 5.{COUNT}"
    ), migrated
    history = postgres.history(parking.database)
    assert [row[0] for row in history][-count:] == expected and all(row[4] for row in history)
    # the app is back
    parking.wait_gateway_available()
    assert client.AppsV1Api(parking.api).read_namespaced_deployment("api-gateway", parking.namespace).spec.replicas == 3
