"""Opt-in on both sides of every reference, and the operator's allow-lists (policy.py): pure decisions over what
preflight read."""

from __future__ import annotations

import pytest

from migration_operator import policy, reasons
from migration_operator.models import parse_spec
from tests.unit import specs

LABEL = {policy.CREDENTIALS_LABEL: "true"}


def refusal(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
            migration: str = "parking-db-v6", host: str = "db.shop.svc") -> str | None:
    found = policy.secret_problem("spec.database.credentialsSecret", "login", labels, annotations, migration, host,
                                  "shop")
    return found[0] if found else None


def test_a_secret_without_consent_is_refused() -> None:
    assert refusal() == reasons.CREDENTIALS_NOT_OPTED_IN
    assert refusal({policy.CREDENTIALS_LABEL: "yes"}) == reasons.CREDENTIALS_NOT_OPTED_IN
    assert refusal({"app": "payments"}, {"team": "payments"}) == reasons.CREDENTIALS_NOT_OPTED_IN


def test_a_labelled_secret_serves_every_run_of_its_namespace() -> None:
    assert refusal(LABEL) is None
    assert refusal(LABEL, migration="anything") is None


def test_an_annotation_naming_the_runs_is_consent_too_and_narrows_the_label() -> None:
    served = {policy.ALLOWED_MIGRATIONS_ANNOTATION: "parking-db-v*, billing-db-v2"}
    assert refusal(None, served) is None
    assert refusal(None, served, migration="billing-db-v2") is None
    assert refusal(LABEL, served, migration="other-run") == reasons.CREDENTIALS_NOT_OPTED_IN


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        ("db.shop.svc", "db.shop.svc", True),
        ("*.shop.svc.cluster.local", "db.shop", True),  # the canonical spelling of a Service name counts
        ("*.shop.svc.cluster.local", "db", True),  # a bare name is expanded with the run's namespace
        ("*.shop.svc.cluster.local", "db.billing", False),
        ("10.0.0.0/8, 192.168.1.7", "10.2.3.4", True),
        ("10.0.0.0/8", "11.2.3.4", False),
        ("fd00::/8", "fd00::5", True),
        ("DB.Shop.SVC", "db.shop.svc.", True),
        ("db.shop.svc", "evil.example", False),
    ],
)
def test_allowed_hosts_globs_and_cidrs(allowed: str, host: str, ok: bool) -> None:
    found = refusal(LABEL, {policy.ALLOWED_HOSTS_ANNOTATION: allowed}, host=host)
    assert (found is None) == ok, found
    operator = policy.OperatorPolicy(allowed_hosts=policy.patterns(allowed))
    spec = parse_spec({**specs.parking(), "database": {**specs.parking()["database"], "host": host}})
    assert (not policy.operator_problems(spec, operator, "shop")) == ok


def test_a_deployment_without_the_maintenance_label_is_refused() -> None:
    assert policy.deployment_problem("api-gateway", {"app": "api-gateway"}) is not None
    assert policy.deployment_problem("api-gateway", None) is not None
    assert policy.deployment_problem("api-gateway", {policy.MAINTENANCE_LABEL: "allowed"}) is None


def test_allowed_images_cover_every_pod_and_both_spellings() -> None:
    operator = policy.OperatorPolicy(allowed_images=("docker.io/library/postgres:*", "flyway/flyway:12.*"))
    assert policy.operator_problems(parse_spec(specs.parking()), operator, "ns") == []
    hostile = parse_spec(specs.parking(
        migrations={"image": {"image": "evil.example/miner:1"}},
        jobTemplate={"postgresImage": "postgres:15", "flywayImage": "evil.example/flyway:12.4"},
    ))
    found = policy.operator_problems(hostile, operator, "ns")
    assert [r for r, _ in found] == [reasons.IMAGE_NOT_ALLOWED, reasons.IMAGE_NOT_ALLOWED]
    assert "spec.jobTemplate.flywayImage" in found[0][1] and "spec.migrations.image.image" in found[1][1]


def test_allowed_service_accounts_include_the_default_one_when_none_is_named() -> None:
    operator = policy.OperatorPolicy(allowed_service_accounts=("migrations",))
    assert [r for r, _ in policy.operator_problems(parse_spec(specs.parking()), operator, "ns")] == [
        reasons.SERVICE_ACCOUNT_NOT_ALLOWED
    ]
    spec = parse_spec(specs.parking(jobTemplate={"serviceAccountName": "migrations"}))
    assert policy.operator_problems(spec, operator, "ns") == []


def test_empty_allow_lists_allow_anything_and_come_from_the_environment() -> None:
    assert policy.operator_problems(parse_spec(specs.parking()), policy.OperatorPolicy(), "ns") == []
    found = policy.OperatorPolicy.from_environment(
        {policy.ENV_ALLOWED_IMAGES: "a/*, b/*\nc", policy.ENV_ALLOWED_HOSTS: "", "OTHER": "x"}
    )
    assert found == policy.OperatorPolicy(allowed_images=("a/*", "b/*", "c"))


def test_image_names_as_the_runtime_resolves_them() -> None:
    assert policy.image_names("postgres:15") == {"postgres:15", "docker.io/library/postgres:15"}
    assert policy.image_names("flyway/flyway:12") == {"flyway/flyway:12", "docker.io/flyway/flyway:12"}
    assert policy.image_names("ghcr.io/dbops/x:1") == {"ghcr.io/dbops/x:1"}
    assert policy.image_names("localhost/x:1") == {"localhost/x:1"}


# ------------------------------------------------------------------------------------------ keyed checksums
def test_status_checksums_are_keyed_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """status.before/after published md5 checksums of whole small tables to anyone who may `get dbmig`: now an HMAC
    under a per-run key derived from the operator's key, comparable only by the operator."""
    from migration_operator import digests

    digests.operator_key.cache_clear()
    monkeypatch.setenv(digests.ENV_KEY, "operator-key-1")
    md5 = "5d41402abc4b2a76b9719d911017c592"  # md5("hello"): what a dictionary attack would look up
    first = digests.keyed("uid-1", md5)
    assert first.startswith(digests.PREFIX) and md5 not in first
    assert digests.keyed("uid-1", md5) == first  # comparable within the run (and across restarts)
    assert digests.keyed("uid-2", md5) != first  # not across runs
    digests.operator_key.cache_clear()
    monkeypatch.setenv(digests.ENV_KEY, "operator-key-2")
    assert digests.keyed("uid-1", md5) != first  # nor without the operator's key
    digests.operator_key.cache_clear()
