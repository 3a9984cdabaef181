"""Issue 11 on the live cluster: creating a DatabaseMigration is not a way to read Secrets, scale any app, write with a
"check", or reach a database without TLS. Each test shows a hole the issue found (it failed before the fix) and that
it is closed; the autouse secret scan (conftest.py) runs after each of them too."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import CREDENTIALS_OPT_IN, GROUP, PLURAL, VERSION, ParkingApp
from tests.support import postgres
from tests.support.sampler import Sampler

# a 63-byte token, like the one the issue printed through status
TOKEN = "ghp_" + "T0k3nV4lu3SecretPaymentsApi" + "x" * 32
# The CA that signed the database's certificate: MO_E2E_DB_CA (a file), else the cluster's database's (ca.crt of
# Secret databases/postgres-tls).
TLS_SECRET = ("databases", "postgres-tls")


def database_ca(api: client.ApiClient) -> str | None:
    if os.environ.get("MO_E2E_DB_CA"):
        return Path(os.environ["MO_E2E_DB_CA"]).read_text()
    if postgres.in_cluster():
        try:
            secret = client.CoreV1Api(api).read_namespaced_secret(TLS_SECRET[1], TLS_SECRET[0])
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        encoded = (secret.data or {}).get("ca.crt")
        return base64.b64decode(encoded).decode() if encoded else None
    return None


def _secret(parking: ParkingApp, name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> None:
    parking.core.create_namespaced_secret(parking.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()}))


def _failed_in_preflight(parking: ParkingApp, name: str, reason: str) -> dict[str, object]:
    with Sampler(parking.api, parking.namespace, name) as sampler:
        status = parking.wait_done(name, timeout=180)
    assert status["phase"] == "Failed", parking.describe(name)
    stalled = parking.condition(name, "Stalled")
    assert stalled and stalled["reason"] == reason, parking.describe(name)
    assert all(s.replicas in (3, None) for s in sampler.samples), "the app was scaled"
    assert not parking.jobs(name), "a Job was created"
    return status


def _everything_users_see(parking: ParkingApp, name: str) -> str:
    """The run's status, its events, the operator's log (the spec is the tenant's own text, not looked at)."""
    events = " ".join(f"{e.reason} {e.message}" for e in parking.events(name))
    log = parking.operator.log_text() if parking.operator else ""
    return str(parking.status(name)) + events + log


def test_a_token_secret_that_did_not_opt_in_is_never_used_nor_printed(parking: ParkingApp) -> None:
    """`{name: payments-api-token, usernameKey: token}` printed 63 bytes of the token through PostgreSQL's login
    error into status, conditions, the log and a Warning event."""
    parking.set_migrations("good")
    _secret(parking, "payments-api-token", {"token": TOKEN, "url": "https://payments.example/api"})
    spec = parking.spec()
    spec["database"]["credentialsSecret"] = {"name": "payments-api-token", "usernameKey": "token",
                                             "passwordKey": "url"}
    parking.create_migration("steal-token", spec)
    status = _failed_in_preflight(parking, "steal-token", "CredentialsNotOptedIn")
    assert "dbops.io/credentials" in str(status["message"])
    assert TOKEN not in _everything_users_see(parking, "steal-token")
    assert TOKEN[:20] not in _everything_users_see(parking, "steal-token")


def test_swapped_keys_never_print_the_password(parking: ParkingApp) -> None:
    """An opted-in Secret with usernameKey and passwordKey swapped by mistake: PostgreSQL echoes the "user name",
    which is the password."""
    parking.set_migrations("good")
    password = "Sw4pped-Pa55word-for-the-scan"
    _secret(parking, "swapped", {"username": "parking_admin", "password": password}, CREDENTIALS_OPT_IN)
    spec = parking.spec()
    spec["database"]["credentialsSecret"] = {"name": "swapped", "usernameKey": "password", "passwordKey": "username"}
    parking.create_migration("swapped", spec)
    status = _failed_in_preflight(parking, "swapped", "BadCredentials")
    assert 'for user "***"' in str(status["message"]), status["message"]
    assert password not in _everything_users_see(parking, "swapped")


def test_a_deployment_that_did_not_opt_in_is_never_scaled(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.apps.patch_namespaced_deployment(
        "api-gateway", parking.namespace, {"metadata": {"labels": {"dbops.io/maintenance": None}}})
    parking.create_migration("any-app", parking.spec())
    status = _failed_in_preflight(parking, "any-app", "DeploymentNotOptedIn")
    assert "dbops.io/maintenance" in str(status["message"])
    assert "dbops.io/original-replicas" not in (parking.deployment().metadata.annotations or {})


def test_a_check_cannot_write_through_the_operators_session(parking: ParkingApp) -> None:
    """`select true; commit; begin read write; delete ...; commit` passed as a check and committed the delete."""
    parking.set_migrations("good")
    with postgres.connect(parking.database) as conn:
        conn.execute("create table keep_me (id int primary key)")
        conn.execute("insert into keep_me select generate_series(1, 3)")
        conn.execute("alter table keep_me owner to parking_admin")
    hostile = "select true; commit; begin read write; delete from keep_me; commit"
    spec = parking.spec(verify={"checks": [{"name": "sneaky", "sql": hostile}]}, rollback={"strategy": "Repair"})
    parking.create_migration("sneaky-check", spec)
    status = parking.wait_done("sneaky-check")
    assert status["phase"] == "RolledBack", parking.describe("sneaky-check")
    verified = parking.condition("sneaky-check", "Verified")
    assert verified and "check sneaky failed" in verified["message"], verified
    assert "multiple commands" in verified["message"], verified
    with postgres.connect(parking.database) as conn:
        assert conn.execute("select count(*) from keep_me").fetchone() == (3,)
    parking.wait_gateway_available(3)


def test_compensate_sql_with_a_psql_meta_command_is_refused(parking: ParkingApp) -> None:
    """`\\! printenv PGPASSWORD 1>&2` in the compensating SQL put the password into the rollback error: refused at
    admission when inline, in preflight when it comes from a ConfigMap (the Job's own output is scrubbed anyway)."""
    parking.set_migrations("good")
    meta = "\\! printenv PGPASSWORD 1>&2\nselect 1;"
    with pytest.raises(ApiException) as refused:
        parking.create_migration("meta-inline", parking.spec(
            rollback={"strategy": "Compensate", "compensate": {"sql": meta}}))
    assert refused.value.status == 422 and "meta-command" in str(refused.value.body)
    parking.core.create_namespaced_config_map(parking.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="undo"), data={"undo.sql": meta}))
    parking.create_migration("meta-configmap", parking.spec(
        rollback={"strategy": "Compensate", "compensate": {"configMapKeyRef": {"name": "undo", "key": "undo.sql"}}}))
    _failed_in_preflight(parking, "meta-configmap", "CompensateNotPlainSql")


def test_verify_full_with_the_databases_ca_and_a_wrong_ca_sends_nothing(parking: ParkingApp, tmp_path: Path) -> None:
    """With database.caSecret the default is verify-full, for the operator's connections (libpq) and its Jobs'
    (Flyway's JDBC driver); a server whose certificate the CA did not sign gets no password."""
    ca = database_ca(parking.api)
    if ca is None:
        pytest.skip("the database's CA certificate is not at hand (MO_E2E_DB_CA)")
    parking.set_migrations("good")
    parking.core.create_namespaced_secret(parking.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="db-ca"), string_data={"ca.crt": ca}))
    spec = parking.spec(dryRun=True)
    spec["database"]["caSecret"] = {"name": "db-ca"}
    del spec["database"]["sslMode"]
    parking.create_migration("verified-tls", spec)
    status = parking.wait_done("verified-tls")
    assert status["phase"] == "Succeeded", parking.describe("verified-tls")
    assert parking.jobs("verified-tls"), "the validate Job (Flyway over verify-full) ran"

    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(tmp_path / "other.key"), "-out", str(other_ca)], check=True, capture_output=True)
    parking.core.create_namespaced_secret(parking.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="other-ca"), string_data={"ca.crt": other_ca.read_text()}))
    spec["database"]["caSecret"] = {"name": "other-ca"}
    parking.create_migration("wrong-ca", spec)
    _failed_in_preflight(parking, "wrong-ca", "TLSFailed")


def test_the_issues_jdbc_url_injection_is_refused_at_admission(parking: ParkingApp) -> None:
    spec = parking.spec()
    spec["database"]["host"] = "db:5432/other?sslfactory=org.postgresql.ssl.NonValidatingFactory&x="
    with pytest.raises(ApiException) as refused:
        parking.custom.create_namespaced_custom_object(GROUP, VERSION, parking.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseMigration", "metadata": {"name": "two-targets"},
            "spec": spec})
    assert refused.value.status == 422 and "spec.database.host" in str(refused.value.body)


def test_status_shows_keyed_checksums_never_a_plain_hash_of_the_rows(parking: ParkingApp) -> None:
    parking.set_migrations("good")
    parking.create_migration("checksums", parking.spec(dryRun=True))
    before = parking.wait_done("checksums")["before"]
    with postgres.connect(parking.database) as conn:
        plain = conn.execute(
            "select coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), md5('')) from public.clients t"
        ).fetchone()
    assert plain is not None
    assert before["checksums"]["public.clients"].startswith("hmac-sha256:")
    assert plain[0] not in str(before)
    assert before["schemaHash"].startswith("hmac-sha256:")


def test_a_failed_statement_with_a_password_never_reaches_status(parking: ParkingApp) -> None:
    """psql quotes the failed statement back (LINE 1: ...): a compensating `ALTER ROLE ... PASSWORD '...'` that fails
    put the password into the rollback's error, the conditions and an event. (Flyway 12 does not quote statements.)"""
    parking.set_migrations("good", "fail-in-tx")
    password = "S3cret-In-A-Failed-Statement"
    undo = f"ALTER ROLE reporting PASSWORD '{password}' VALID BOGUS;"
    parking.create_migration("role-password", parking.spec(
        rollback={"strategy": "Compensate", "compensate": {"sql": undo}, "onFailure": "BringAppBack"}))
    status = parking.wait_done("role-password")
    assert status["phase"] == "Failed", parking.describe("role-password")
    rolled_back = parking.condition("role-password", "RolledBack")
    assert rolled_back and "syntax error" in rolled_back["message"], rolled_back
    assert password not in _everything_users_see(parking, "role-password")
    parking.wait_gateway_available(3)


def test_a_check_that_casts_row_data_never_shows_the_row(parking: ParkingApp) -> None:
    """A check's error quotes the value it could not cast: a secret column would reach status."""
    parking.set_migrations("good")
    with postgres.connect(parking.database) as conn:
        conn.execute("create table api_tokens (id int primary key, token text)")
        conn.execute("insert into api_tokens values (1, 'tok_live_RowDataSecret42')")
        conn.execute("alter table api_tokens owner to parking_admin")
    check = {"name": "token-is-a-number", "sql": "select token::int = 1 from api_tokens where id = 1"}
    parking.create_migration("row-data", parking.spec(verify={"checks": [check]}, rollback={"strategy": "Repair"}))
    status = parking.wait_done("row-data")
    assert status["phase"] == "RolledBack", parking.describe("row-data")
    verified = parking.condition("row-data", "Verified")
    assert verified and "invalid input syntax" in verified["message"], verified
    assert "tok_live_RowDataSecret42" not in _everything_users_see(parking, "row-data")
    parking.wait_gateway_available(3)
