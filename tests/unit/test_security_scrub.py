"""Nothing secret is written anywhere: `errors.scrub` (status, conditions, events, logs) and its pod-side twin
`jobs.scrubbed` (every step's log and termination message). Issue 11: a Secret's values reached status through
PostgreSQL's login error, SQL echoed in errors, row data in check errors, and Job outputs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from migration_operator import errors, jobs, machine
from migration_operator.models import parse_spec
from tests.unit import specs

TOKEN = "ghp_5x1Yb0tT0k3nV4lu3-not-for-your-eyes-0123456789abcdefghijklmnop"  # 63 bytes, like the issue's


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        # PostgreSQL echoes the user name: a Secret key holding a token, used as usernameKey
        (f'connection failed: FATAL:  password authentication failed for user "{TOKEN}"', TOKEN),
        ('FATAL:  role "not-a-role-but-a-password" does not exist', "not-a-role-but-a-password"),
        # a failed migration statement quoted back by Flyway
        ("Statement  : CREATE ROLE app LOGIN PASSWORD 'hunter2-in-a-migration'", "hunter2-in-a-migration"),
        ("ALTER ROLE app PASSWORD $pw$dollar-quoted-s3cret$pw$", "dollar-quoted-s3cret"),
        ("alter role app with password E'esc\\'aped-s3cret'", "aped-s3cret"),
        # conninfo strings and environment dumps (a compensating SQL's \! printenv)
        ("host=db user=app password=conninfo-s3cret sslmode=require", "conninfo-s3cret"),
        ("PGPASSWORD=env-s3cret\nPGUSER=app", "env-s3cret"),
        ('{"user": "app", "password": "json-s3cret"}', "json-s3cret"),
        # row data PostgreSQL quotes in errors: a check casting a secret column, a unique violation's key
        ('check token-is-int failed: invalid input syntax for type integer: "sk_live_rowdata"', "sk_live_rowdata"),
        ('invalid input value for enum plan: "row-secret-enum"', "row-secret-enum"),
        ("DETAIL:  Key (api_token)=(tok_unique_row) already exists.", "tok_unique_row"),
        ("DETAIL:  Failing row contains (1, alice, tok_in_a_row).", "tok_in_a_row"),
        ('value "98765432109876543210" is out of range for type integer', "98765432109876543210"),
    ],
)
def test_scrub_removes_secrets_and_row_data(text: str, leaked: str) -> None:
    scrubbed = errors.scrub(text)
    assert leaked not in scrubbed
    assert "***" in scrubbed


def test_scrub_removes_the_values_in_every_spelling() -> None:
    secret = 'p@ss "word"+/ 100%'
    texts = [secret, json.dumps({"x": secret}), "url: p%40ss%20%22word%22%2B%2F%20100%25", secret.replace("'", "''")]
    for text in texts:
        assert "p@ss" not in errors.scrub(text, [secret]) and "p%40ss" not in errors.scrub(text, [secret]), text


def test_scrub_keeps_what_is_not_secret() -> None:
    text = "preflight failed (BadCredentials): cannot log in to db.shop.svc:5432/parking_db"
    assert errors.scrub(text, ["s3cret"]) == text
    assert errors.scrub("version 6", ["6"]) == "version 6"  # too short to scrub without blanking everything


def test_scrub_document_scrubs_every_string_value() -> None:
    document = {"message": "user s3cret-user", "conditions": [{"message": "x s3cret-user y", "status": "False"}],
                "count": 3, "flag": True}
    scrubbed = errors.scrub_document(document, ["s3cret-user"])
    assert "s3cret-user" not in json.dumps(scrubbed)
    assert scrubbed["count"] == 3 and scrubbed["flag"] is True and scrubbed["conditions"][0]["status"] == "False"


def test_remembered_values_are_scrubbed_in_their_task_only() -> None:
    async def run(value: str) -> tuple[str, str]:
        errors.remember([value])
        await asyncio.sleep(0)
        return errors.scrub("a-s3cret b-s3cret"), value

    async def both() -> list[tuple[str, str]]:
        return list(await asyncio.gather(run("a-s3cret"), run("b-s3cret")))

    (first, _), (second, _) = asyncio.run(both())
    assert first == "*** b-s3cret" and second == "a-s3cret ***"


def test_log_lines_are_scrubbed_message_arguments_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(errors.ScrubFilter())
    log = logging.getLogger("test-scrub")
    log.addHandler(handler)
    log.propagate = False
    try:
        errors.remember(["log-s3cret"])
        log.warning("connecting with %s", "log-s3cret")
        try:
            raise RuntimeError('password authentication failed for user "log-user"')
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        errors.remember([])
    text = stream.getvalue()
    assert "log-s3cret" not in text and "log-user" not in text
    assert "connecting with ***" in text and "RuntimeError" in text


def test_the_operator_installs_the_log_scrubber_on_every_handler_and_on_kopf_events() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        errors.install_log_scrubber()
        assert any(isinstance(f, errors.ScrubFilter) for f in handler.filters)
        assert any(isinstance(f, errors.ScrubFilter) for f in logging.getLogger("kopf.objects").filters)
    finally:
        root.removeHandler(handler)


# ------------------------------------------------------------------------------------------- inside the pods
def _run_step(script: str, tmp_path: Path, **env: str) -> tuple[int, str, str]:
    termination = tmp_path / "termination-log"
    termination.write_text("")
    wrapped = jobs.scrubbed(script).replace("/dev/termination-log", str(termination))
    variables = {"PGUSER": "pod-user", "PGPASSWORD": "pod-s3cret", jobs.SCRUB_VARS: "PGUSER PGPASSWORD",
                 "TERMINATION": str(termination), **env}
    result = subprocess.run(["sh", "-c", wrapped], env=os.environ | variables, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr, termination.read_text()


def test_a_steps_output_never_shows_the_login(tmp_path: Path) -> None:
    """A compensating SQL with `\\! printenv PGPASSWORD 1>&2`, Flyway's `installedBy`: masked in the log and in the
    termination message; the step's exit code is kept."""
    script = """set -u
printenv PGPASSWORD 1>&2
printf '{"installedBy": "%s"}\\n' "$PGUSER"
printf 'error=%s\\n' "$PGPASSWORD" >"$TERMINATION"
exit 3
"""
    code, output, termination = _run_step(script, tmp_path)
    assert code == 3
    assert "pod-s3cret" not in output + termination and "pod-user" not in output
    assert '"installedBy": "***"' in output and termination.startswith("error=***")


def test_a_termination_message_without_a_secret_is_left_whole(tmp_path: Path) -> None:
    code, _, termination = _run_step("head -c 4096 /dev/zero | tr '\\0' x >\"$TERMINATION\"", tmp_path)
    assert code == 0 and len(termination) == 4096


def test_every_container_of_every_step_is_scrubbed() -> None:
    spec = parse_spec(specs.parking(rollback={"strategy": "Compensate", "compensate": {"sql": "select 1"}}))
    body = {"metadata": {"name": "v6", "namespace": "ns", "uid": "u-1"}}
    for step in machine.JOB_PODS:
        job = machine.build_job(body, spec, step)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][2].startswith("dbops_scrub="), step
        names = {e["name"]: e.get("value") for e in container["env"]}
        assert names[jobs.SCRUB_VARS] in ("PGUSER PGPASSWORD", "FLYWAY_USER FLYWAY_PASSWORD"), step


@pytest.mark.parametrize(
    "path", ["/flyway/sql; touch /tmp/pwned-$$", "/flyway/sql $(touch /tmp/pwned)", "/with space/sql", "/a`id`"]
)
def test_the_migrations_image_path_is_never_script_text(path: str, tmp_path: Path) -> None:
    """Issue 11: `migrations.image.path` was pasted into `sh -c` (shell injection into the init container)."""
    spec = parse_spec(specs.parking(migrations={"image": {"image": "registry/app-migrations:6", "path": path}}))
    job = machine.build_job({"metadata": {"name": "v6", "namespace": "ns", "uid": "u"}}, spec, "migrate")
    init: dict[str, Any] = job["spec"]["template"]["spec"]["initContainers"][0]
    assert path not in json.dumps(init["command"])
    assert {"name": "MIGRATIONS_PATH", "value": path} in init["env"]
    # run it: the files of the literal directory are copied, nothing else happens
    source, target = tmp_path / path.lstrip("/"), tmp_path / "migrations"
    source.mkdir(parents=True)
    target.mkdir()
    (source / "V1__a.sql").write_text("select 1;")
    command = init["command"][2].replace("/migrations/", f"{target}/")
    env = os.environ | {"MIGRATIONS_PATH": str(tmp_path) + path}
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in target.iterdir()] == ["V1__a.sql"]
    assert not list(Path("/tmp").glob("pwned*"))
