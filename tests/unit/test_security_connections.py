"""Where the password may go (issue 11): TLS by default (require, verify-full with a CA), SCRAM required by default
(opt-out `requireAuth: any`), the host a DNS name or an IP address and nothing else, the JDBC URL escaped so Flyway
and libpq always aim at the same database, PostgreSQL names within what PostgreSQL accepts."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pydantic
import pytest

from migration_operator import database, flyway, jobs, machine
from migration_operator.models import parse_spec
from tests.unit import specs

LOGIN = database.Credentials("app", "s3cret")
BODY = {"metadata": {"name": "v6", "namespace": "ns", "uid": "u-1"}}


def spec_with(**database_fields: Any) -> Any:
    fields = specs.parking()
    fields["database"] = {**fields["database"], "host": "db.example", "port": 5432, **database_fields}
    return parse_spec(fields)


def env_of(spec: Any, step: str) -> dict[str, str | None]:
    container = machine.build_job(BODY, spec, step)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_tls_and_scram_are_the_default() -> None:
    spec = spec_with()
    params = database.conninfo(spec, LOGIN)
    assert params["sslmode"] == "require" and params["require_auth"] == "scram-sha-256"
    assert env_of(spec, "backup")["PGSSLMODE"] == "require"
    assert env_of(spec, "backup")["PGREQUIREAUTH"] == "scram-sha-256"
    assert "sslmode=require" in flyway.jdbc_url(spec, "migrate")


def test_a_ca_makes_verify_full_the_default_everywhere(tmp_path: Path) -> None:
    spec = spec_with(caSecret={"name": "db-ca"})
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    params = database.conninfo(spec, database.Credentials("app", "s3cret", pem))
    assert params["sslmode"] == "verify-full"
    assert Path(params["sslrootcert"]).read_text() == pem
    for step in ("backup", "migrate"):
        pod = machine.build_job(BODY, spec, step)["spec"]["template"]["spec"]
        assert {"name": "db-ca", "secret": {"secretName": "db-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in (
            pod["volumes"]
        )
        assert {"name": "db-ca", "mountPath": jobs.CA_MOUNT, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert env_of(spec, "backup")["PGSSLROOTCERT"] == jobs.CA_FILE
    url = urllib.parse.urlparse(flyway.jdbc_url(spec, "migrate", jobs.CA_FILE).removeprefix("jdbc:"))
    assert urllib.parse.parse_qs(url.query) == {
        "sslmode": ["verify-full"], "ApplicationName": ["migration-operator-migrate"], "sslrootcert": [jobs.CA_FILE]
    }


def test_an_explicit_ssl_mode_and_the_require_auth_opt_out_are_honoured() -> None:
    spec = spec_with(sslMode="disable", requireAuth="any")
    params = database.conninfo(spec, LOGIN)
    assert params["sslmode"] == "disable" and "require_auth" not in params
    assert "PGREQUIREAUTH" not in env_of(spec, "backup")
    assert database.conninfo(spec_with(requireAuth="scram-sha-256,md5"), LOGIN)["require_auth"] == "scram-sha-256,md5"


@pytest.mark.parametrize("value", ["cleartext", "password,!md5", "scram-sha-256;", ""])
def test_require_auth_takes_libpq_methods_only(value: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        spec_with(requireAuth=value)


@pytest.mark.parametrize(
    "host",
    [
        "db:5432/other?sslfactory=org.postgresql.ssl.NonValidatingFactory&x=",  # the issue's: two different targets
        "db,evil.example",  # libpq: two hosts
        "db.example/other",
        "http://db.example",
        "db example",
        " db.example",
        "db.example\n",
        "-db.example",
        "a" * 64 + ".example",  # a label over 63 characters
        "1:2:3:4:5:6:7:8:9",  # not an IPv6 address
        "bücher.example",  # IDNs are given in punycode
    ],
)
def test_a_host_is_a_dns_name_or_an_ip_address_and_nothing_else(host: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        spec_with(host=host)


@pytest.mark.parametrize("host", ["db", "db.shop.svc", "DB.Shop.svc.cluster.local.", "10.1.2.3", "::1", "fd00::5"])
def test_valid_hosts(host: str) -> None:
    spec = spec_with(host=host)
    url = flyway.jdbc_url(spec, "migrate")
    assert url.startswith(f"jdbc:postgresql://[{host}]:5432/" if ":" in host else f"jdbc:postgresql://{host}:5432/")


@pytest.mark.parametrize("name", ["parking_db", "we?ird&na=me/x", "sp ace+plus%", "Ünïcødé", "a" * 63])
def test_the_jdbc_url_escapes_the_database_name(name: str) -> None:
    url = flyway.jdbc_url(spec_with(name=name), "migrate")
    rest = url.removeprefix("jdbc:postgresql://db.example:5432/")
    path, _, query = rest.partition("?")
    assert "/" not in path and "?" not in path and "&" not in path
    assert urllib.parse.unquote(path) == name
    assert urllib.parse.parse_qs(query)["sslmode"] == ["require"]


@pytest.mark.parametrize("name", ["é" * 32, "a" * 64, "nul\x00byte", "new\nline", ""])
def test_postgresql_names_within_what_postgresql_accepts(name: str) -> None:
    """At most 63 bytes (PostgreSQL would cut a longer name and mean another object), no control character."""
    for fields in ({"database": {"name": name}}, {"migrations": {"table": name}}, {"migrations": {"schemas": [name]}}):
        spec = specs.parking()
        for key, value in fields.items():
            spec[key] = {**spec[key], **value}
        with pytest.raises(pydantic.ValidationError):
            parse_spec(spec)


def test_a_login_never_prints() -> None:
    assert "s3cret" not in repr(LOGIN) and "app" not in repr(LOGIN)
