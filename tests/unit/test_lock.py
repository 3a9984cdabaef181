"""lock.py: one Lease per database whatever the host is spelt like, one per maintenance Deployment, taken together.
The coordination API is faked in memory with the API server's semantics that matter here (404 on a missing Lease,
409 on a create of an existing one or a write with a stale resourceVersion); the Leases are the API's JSON
documents."""

from __future__ import annotations

from typing import Any

import pytest

from migration_operator import kube, lock
from migration_operator.models import DatabaseMigrationSpec, parse_spec
from tests.unit import fake_leases, specs


class Coordination(fake_leases.Coordination):
    def holders(self) -> dict[str, str]:
        """Lease annotation (what it guards) -> holder."""
        return {
            next(iter(lease["metadata"]["annotations"].values())): lease["spec"]["holderIdentity"]
            for lease in self.leases.values()
        }


class Cluster:
    def __init__(self) -> None:
        self.coordination = Coordination()
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}

    def run(self, namespace: str, name: str, *, host: str = "db", database: str = "parking_db",
            port: int = 5432, deployment: str | None = "api-gateway") -> tuple[dict[str, Any], DatabaseMigrationSpec]:
        fields: dict[str, Any] = {}
        if deployment:
            fields["maintenance"] = {"deployment": {"name": deployment}}
        raw = specs.parking(**fields)
        raw["database"].update(host=host, name=database, port=port)
        body = {
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"},
            "spec": raw,
            "status": {"phase": "Preflight"},
        }
        self.runs[(namespace, name)] = body
        return body, parse_spec(raw)

    def finish(self, body: dict[str, Any]) -> None:
        body["status"]["phase"] = "Succeeded"

    async def get_migration(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.runs.get((namespace, name))


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    fake = Cluster()
    monkeypatch.setattr(kube, "request", fake.coordination.request)
    monkeypatch.setattr(kube, "get_migration", fake.get_migration)
    monkeypatch.setenv("DBOPS_LOCK_NAMESPACE", "dbops-system")
    monkeypatch.delenv("DBOPS_CLUSTER_DOMAIN", raising=False)
    return fake


def spec_with(host: str, port: int = 5432, name: str = "parking_db") -> DatabaseMigrationSpec:
    raw = specs.parking()
    raw["database"].update(host=host, port=port, name=name)
    return parse_spec(raw)


# --------------------------------------------------------------------------------------------- the key
@pytest.mark.parametrize(
    "host",
    [
        "db",
        "db.shop",
        "db.shop.svc",
        "db.shop.svc.cluster.local",
        "db.shop.svc.cluster.local.",
        "DB.Shop.SVC.Cluster.Local",
        "DB",
    ],
)
def test_every_spelling_of_a_service_is_one_database(host: str) -> None:
    assert lock.database_key(spec_with(host), "shop") == "db.shop.svc.cluster.local:5432/parking_db"
    assert lock.lease_name(spec_with(host), "shop") == lock.lease_name(spec_with("db.shop.svc.cluster.local"))


def test_a_short_name_means_the_service_of_the_runs_namespace() -> None:
    assert lock.lease_name(spec_with("db"), "shop") != lock.lease_name(spec_with("db"), "billing")
    assert lock.lease_name(spec_with("db"), "billing") == lock.lease_name(spec_with("db.billing"), "shop")


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("10.0.0.7", "10.0.0.7"),
        ("2001:DB8:0:0::1", "[2001:db8::1]"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("pg.example.com.", "pg.example.com"),
        ("Prod-DB.eu-west-1.rds.amazonaws.com", "prod-db.eu-west-1.rds.amazonaws.com"),
        ("localhost", "localhost"),
        ("pg-0.pg.shop.svc", "pg-0.pg.shop.svc.cluster.local"),
    ],
)
def test_addresses_and_outside_names_keep_their_identity(host: str, canonical: str) -> None:
    assert lock.canonical_host(host, "shop") == canonical


def test_the_cluster_domain_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOPS_CLUSTER_DOMAIN", "k8s.example.")
    assert lock.canonical_host("db", "shop") == "db.shop.svc.k8s.example"
    assert lock.canonical_host("db.shop.svc.k8s.example", "other") == "db.shop.svc.k8s.example"


def test_port_and_database_name_are_part_of_the_key() -> None:
    base = lock.lease_name(spec_with("db"), "shop")
    assert lock.lease_name(spec_with("db", port=5433), "shop") != base
    assert lock.lease_name(spec_with("db", name="billing_db"), "shop") != base
    assert lock.lease_name(spec_with("db", name="Parking_DB"), "shop") != base  # PostgreSQL names are exact


# ------------------------------------------------------------------------------------------- the Leases
async def test_two_spellings_of_one_database_wait_for_each_other(cluster: Cluster) -> None:
    first, first_spec = cluster.run("shop", "v6", host="db", deployment=None)
    second, second_spec = cluster.run("shop", "v7", host="DB.shop.svc.cluster.local.", deployment=None)
    assert (await lock.acquire(first, first_spec)).acquired
    waiting = await lock.acquire(second, second_spec)
    assert not waiting.acquired
    assert waiting.holder == "shop/v6 (holding database db.shop.svc.cluster.local:5432/parking_db)"
    await lock.release(first, first_spec)
    assert (await lock.acquire(second, second_spec)).acquired


async def test_runs_in_other_namespaces_against_one_database_exclude_each_other(cluster: Cluster) -> None:
    first, first_spec = cluster.run("shop", "v6", host="db", deployment=None)
    second, second_spec = cluster.run("billing", "v1", host="db.shop", deployment=None)
    assert (await lock.acquire(first, first_spec)).acquired
    assert not (await lock.acquire(second, second_spec)).acquired


async def test_two_databases_of_one_app_wait_for_the_deployment(cluster: Cluster) -> None:
    """Different databases, one maintenance Deployment: the second run waits, names the first and what it holds,
    and holds nothing meanwhile (both Leases or neither)."""
    first, first_spec = cluster.run("shop", "orders-v3", database="orders")
    second, second_spec = cluster.run("shop", "parking-v6", database="parking_db")
    assert (await lock.acquire(first, first_spec)).acquired
    waiting = await lock.acquire(second, second_spec)
    assert not waiting.acquired
    assert waiting.holder == "shop/orders-v3 (holding Deployment shop/api-gateway)"
    assert cluster.coordination.holders() == {
        "db.shop.svc.cluster.local:5432/orders": "shop/orders-v3/uid-orders-v3",
        "shop/api-gateway": "shop/orders-v3/uid-orders-v3",
    }
    # meanwhile a run of the second's database with another app is free to go
    third, third_spec = cluster.run("shop", "parking-admin-v2", database="parking_db", deployment="admin-ui")
    assert (await lock.acquire(third, third_spec)).acquired
    await lock.release(third, third_spec)
    await lock.release(first, first_spec)
    assert cluster.coordination.holders() == {}
    assert (await lock.acquire(second, second_spec)).acquired
    assert set(cluster.coordination.holders().values()) == {"shop/parking-v6/uid-parking-v6"}


async def test_a_run_holding_the_database_gives_it_back_when_the_app_is_busy(cluster: Cluster) -> None:
    busy, busy_spec = cluster.run("shop", "orders-v3", database="orders")
    assert (await lock.acquire(busy, busy_spec)).acquired
    mine, mine_spec = cluster.run("shop", "parking-v6", database="parking_db")
    # it took the database's Lease in an earlier pass (an operator of an older version, or a race)
    database_only, _ = cluster.run("shop", "parking-v6", database="parking_db", deployment=None)
    assert (await lock.acquire(database_only, parse_spec(database_only["spec"]))).acquired
    assert not (await lock.acquire(mine, mine_spec)).acquired
    assert "shop/parking-v6/uid-parking-v6" not in cluster.coordination.holders().values()


async def test_the_leases_of_a_finished_run_are_taken_over(cluster: Cluster) -> None:
    first, first_spec = cluster.run("shop", "v6")
    second, second_spec = cluster.run("shop", "v7")
    assert (await lock.acquire(first, first_spec)).acquired
    cluster.finish(first)
    assert (await lock.acquire(second, second_spec)).acquired
    assert set(cluster.coordination.holders().values()) == {"shop/v7/uid-v7"}
    await lock.release(first, first_spec)  # not its Leases any more: left alone
    assert set(cluster.coordination.holders().values()) == {"shop/v7/uid-v7"}


async def test_a_lost_race_for_the_second_lease_gives_the_first_back(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, spec = cluster.run("shop", "v6")
    create = cluster.coordination.create_namespaced_lease

    def racing(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if lock.DEPLOYMENT_ANNOTATION in body["metadata"]["annotations"]:
            raise kube.ApiError(409, "Conflict")
        return create(namespace, body)

    monkeypatch.setattr(cluster.coordination, "create_namespaced_lease", racing)
    waiting = await lock.acquire(run, spec)
    assert not waiting.acquired
    assert waiting.holder == "another migration (it just took the lease of Deployment shop/api-gateway)"
    assert cluster.coordination.holders() == {}


async def test_acquire_is_idempotent_and_release_frees_both(cluster: Cluster) -> None:
    run, spec = cluster.run("shop", "v6")
    assert (await lock.acquire(run, spec)).acquired
    assert (await lock.acquire(run, spec)) == lock.LockObservation(acquired=True, holder="shop/v6")
    assert len(cluster.coordination.leases) == 2
    assert all(namespace == "dbops-system" for namespace, _ in cluster.coordination.leases)
    await lock.release(run, spec)
    assert cluster.coordination.leases == {}
