"""Flyway: the fixed safety configuration, the command lines of our Jobs and the parsing of their output.

The runbook's safety flags are not configurable: `baselineOnMigrate=false`, `validateOnMigrate=true`,
`outOfOrder=false`, `cleanDisabled=true` and an empty `ignoreMigrationPatterns` (Flyway 10+: missing and
pending migrations are errors). `clean` is never run: `command_line` refuses it.

Flyway 12's command line exits 0 even when `migrate` or `validate` fails with `-outputType=json`
(measured: the JSON carries `"error"` / `"validationSuccessful": false`). So the Job script derives its exit
code from the JSON, and the operator judges the JSON, not the exit code alone.

The Job script prints sections `==> <name> <==` followed by Flyway's JSON (or the stderr tail when there is no
JSON) on stdout, and their first 4096 bytes to the termination message. The operator parses the pod's log (the
whole text, `jobs.observe`); the termination message is only the fallback when the log cannot be read. Flyway's
error JSON puts `errorCode` and `message` first, so the message survives truncation; `_lenient_json` recovers it
from a cut document.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from . import constants, reasons
from .models import DatabaseMigrationSpec, PendingMigration

SAFETY_FLAGS: tuple[str, ...] = (
    "-baselineOnMigrate=false",
    "-validateOnMigrate=true",
    "-outOfOrder=false",
    "-cleanDisabled=true",
)
# Empty: missing, pending and future migrations are all errors. Flyway rejects the key given twice.
STRICT_PATTERNS = "-ignoreMigrationPatterns="
# The preflight `validate` runs before migrating, when pending migrations are the point: ignore only those.
PREFLIGHT_PATTERNS = "-ignoreMigrationPatterns=*:pending"
ALLOWED_COMMANDS = frozenset({"info", "validate", "migrate", "repair"})
# SQL callbacks among the migrations (beforeValidate.sql, beforeInfo.sql, afterInfo.sql ...) are the user's SQL:
# preflight and dry runs run before any backup exists and promise to change nothing, so they skip them (Flyway 12:
# `skipDefaultCallbacks` skips the SQL callbacks found in `locations`; there are no others). migrate and repair run
# them: a backup exists by then, and running them there is what the user asked for.
SKIP_CALLBACKS = "-skipDefaultCallbacks=true"
SECTION = re.compile(r"^==> (?P<name>[\w.-]+) <==$", re.MULTILINE)


def jdbc_url(spec: DatabaseMigrationSpec, step: str, ca_file: str | None = None) -> str:
    """The JDBC URL of the database, every part escaped: the host is a validated DNS name or IP address (IPv6 in
    brackets), the database name and every parameter are percent-encoded (the driver decodes them), so no value can
    add a parameter, a path or another host: Flyway and libpq always aim at the same database."""
    database = spec.database
    host = f"[{database.host}]" if ":" in database.host else database.host
    params = {"sslmode": database.effective_ssl_mode, "ApplicationName": f"{constants.APPLICATION_NAME}-{step}"}
    if ca_file:
        params["sslrootcert"] = ca_file
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return f"jdbc:postgresql://{host}:{int(database.port)}/{urllib.parse.quote(database.name, safe='')}?{query}"


def command_line(
    spec: DatabaseMigrationSpec,
    command: str,
    *,
    preflight: bool = False,
    callbacks: bool = True,
    init_sql: str | None = None,
) -> list[str]:
    """`flyway ...` for one command, safety flags first. The URL and login come from the environment.
    `preflight`: the preflight's `validate` (pending migrations allowed, no callbacks); `callbacks=False`: another
    command of the preflight (its `info`), which must not run the user's SQL callbacks either; `init_sql`: what
    Flyway runs first on its session (the pre-started migrate Job's wait for its go, gosignal.wait_sql)."""
    assert command != "clean", "flyway clean is never run"
    if command not in ALLOWED_COMMANDS:
        raise ValueError(f"unsupported flyway command {command!r}")
    migrations = spec.migrations
    args = [
        "flyway",
        *SAFETY_FLAGS,
        PREFLIGHT_PATTERNS if preflight else STRICT_PATTERNS,
        f"-locations=filesystem:{constants.MIGRATIONS_MOUNT}",
        f"-table={migrations.table}",
        "-connectRetries=3",
        # Session-level advisory lock: a non-transactional migration (CREATE INDEX CONCURRENTLY) would
        # otherwise wait forever for Flyway's own lock transaction.
        "-postgresql.transactional.lock=false",
        "-outputType=json",
    ]
    if preflight or not callbacks:
        args.append(SKIP_CALLBACKS)
    if migrations.schemas:
        args.append("-schemas=" + ",".join(migrations.schemas))
    if migrations.target_version and command in ("info", "validate", "migrate"):
        args.append(f"-target={migrations.target_version}")
    if init_sql:
        args.append(f"-initSql={init_sql}")
    args.append(command)
    return args


# The shell around Flyway in every Flyway Job: run the commands, keep their JSON, derive the exit code from
# it, and write the sections to the termination message.
SCRIPT_PRELUDE = r"""set -u
rc=0
run() {
  name=$1; shift
  "$@" >"/tmp/$name.json" 2>"/tmp/$name.err" || rc=1
  if grep -q '"error" *: *{' "/tmp/$name.json" \
     || grep -q '"validationSuccessful" *: *false' "/tmp/$name.json" \
     || grep -q '"success" *: *false' "/tmp/$name.json" || [ ! -s "/tmp/$name.json" ]; then rc=1; fi
}
emit() {
  for name in "$@"; do
    printf '==> %s <==\n' "$name"
    if [ -s "/tmp/$name.json" ]; then cat "/tmp/$name.json"; else tail -c 1500 "/tmp/$name.err"; fi
    printf '\n'
  done >/tmp/message
  # scrubbed before it is cut to the termination message's 4 KiB (jobs.scrubbed defines dbops_filter)
  if command -v dbops_filter >/dev/null 2>&1 && dbops_filter /tmp/message >/tmp/message.scrubbed; then
    mv /tmp/message.scrubbed /tmp/message
  fi
  cat /tmp/message
  head -c 4096 /tmp/message >/dev/termination-log
}
"""

COPY_MIGRATIONS = (
    f"cp -L {constants.MIGRATIONS_MOUNT}-src/* {constants.MIGRATIONS_MOUNT}/ 2>/dev/null; "
    f"ls {constants.MIGRATIONS_MOUNT} >/dev/null\n"
)


def job_script(spec: DatabaseMigrationSpec, step: str, init_sql: str | None = None) -> str:
    """The `sh -c` script of the Flyway Job for `step` (validate, migrate, repair). The `validate` step is the
    preflight (and all of a dry run): neither of its commands runs SQL callbacks. `init_sql`: see `command_line`
    (migrate only: the pre-started migrate Job)."""
    copy = COPY_MIGRATIONS if spec.migrations.config_map else ""
    if step == "validate":
        body = (
            f"run validate {shlex.join(command_line(spec, 'validate', preflight=True))}\n"
            f"run info {shlex.join(command_line(spec, 'info', callbacks=False))}\n"
            "emit validate info\n"
        )
    elif step in ("migrate", "repair"):
        command = command_line(spec, step, init_sql=init_sql if step == "migrate" else None)
        body = f"run {step} {shlex.join(command)}\nemit {step}\n"
    else:
        raise ValueError(f"no flyway script for step {step!r}")
    return SCRIPT_PRELUDE + copy + body + "exit $rc\n"


# ------------------------------------------------------------------------------------------------ parsing
def sections(output: str | None) -> dict[str, str]:
    """Split a Job's output into its `==> name <==` sections (no header: one section ""). Text before the first
    header (a shell's stderr in the log) belongs to no section."""
    if not output:
        return {}
    matches = list(SECTION.finditer(output))
    if not matches:
        return {"": output}
    found: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(output)
        found[match["name"]] = output[match.end() : end].strip()
    return found


def _unescape(text: str) -> str:
    try:
        value: str = json.loads(f'"{text}"')
        return value
    except json.JSONDecodeError:
        return text.replace("\\n", "\n").replace('\\"', '"')


def _lenient_json(text: str | None) -> dict[str, Any] | None:
    """Flyway's JSON, or what can be recovered from a truncated one (errorCode, message)."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        pass
    recovered: dict[str, Any] = {"truncated": True}
    code = re.search(r'"errorCode"\s*:\s*"([^"]*)"', text)
    message = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    if code or message:
        recovered["error"] = {
            "errorCode": code[1] if code else "UNKNOWN",
            "message": _unescape(message[1]) if message else "",
        }
    for key in ("validationSuccessful", "success"):
        flag = re.search(rf'"{key}"\s*:\s*(true|false)', text)
        if flag:
            recovered[key] = flag[1] == "true"
    for key in ("schemaVersion", "targetSchemaVersion", "initialSchemaVersion"):
        version = re.search(rf'"{key}"\s*:\s*"([^"]*)"', text)
        if version:
            recovered[key] = version[1]
    executed = re.search(r'"migrationsExecuted"\s*:\s*(\d+)', text)
    if executed:
        recovered["migrationsExecuted"] = int(executed[1])
    return recovered


def _clean_message(message: str) -> str:
    """Flyway's message without its advertising line and with the statement hint dropped."""
    lines = [
        line
        for line in message.splitlines()
        if not line.startswith("Need more flexibility")
        and "Run Flyway with -X" not in line
        and not set(line.strip()) <= {"-"}
    ]
    return "\n".join(lines).strip()


def _error_of(document: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if not document:
        return None, None
    error = document.get("error")
    if isinstance(error, dict):
        return error.get("errorCode"), _clean_message(str(error.get("message") or ""))
    return None, None


def error_text(output: str | None) -> str | None:
    """The most useful one-paragraph error of any of our Jobs' outputs."""
    for text in sections(output).values():
        document = _lenient_json(text)
        code, message = _error_of(document)
        if message or code:
            return message or code
        if document is None and text.strip():
            return text.strip()[-1500:]
    return None


@dataclass
class ValidateResult:
    successful: bool
    error_code: str | None = None
    error: str | None = None
    invalid: list[dict[str, Any]] = field(default_factory=list)
    schema_version: str | None = None
    pending: list[PendingMigration] | None = None


def _pending_from_info(info: dict[str, Any] | None) -> list[PendingMigration] | None:
    if not info or info.get("truncated") or not isinstance(info.get("migrations"), list):
        return None
    pending = []
    for migration in info["migrations"]:
        if migration.get("state") == "Pending" and migration.get("version"):
            pending.append(
                PendingMigration(
                    version=str(migration["version"]),
                    description=str(migration.get("description") or ""),
                    script=PurePosixPath(str(migration.get("filepath") or "")).name,
                )
            )
    return pending


def parse_validate_output(output: str | None) -> ValidateResult:
    parts = sections(output)
    validate = _lenient_json(parts.get("validate"))
    info = _lenient_json(parts.get("info"))
    info_version = info.get("schemaVersion") if info else None
    if validate is None:
        text = (parts.get("validate") or output or "").strip()
        return ValidateResult(False, error=text[-1500:] or "flyway validate produced no output")
    code, message = _error_of(validate)
    if code or message:
        return ValidateResult(False, error_code=code, error=message, schema_version=info_version)
    invalid = [m for m in validate.get("invalidMigrations") or [] if isinstance(m, dict)]
    if validate.get("validationSuccessful") is False or invalid:
        details = [str((m.get("errorDetails") or {}).get("errorMessage") or "") for m in invalid]
        text = "; ".join(d for d in details if d) or str(validate.get("allErrorMessages") or "")
        codes = [str((m.get("errorDetails") or {}).get("errorCode") or "") for m in invalid]
        return ValidateResult(
            False,
            error_code=codes[0] if codes else None,
            error=_clean_message(text) or "validation failed",
            invalid=invalid,
            schema_version=info_version,
        )
    return ValidateResult(
        True, schema_version=str(info_version) if info_version else None, pending=_pending_from_info(info)
    )


def classify_validate_failure(result: ValidateResult, failure: str | None) -> tuple[str, str]:
    """(reason, message) for a failed preflight validate."""
    text = result.error or failure or "flyway validate failed"
    code = (result.error_code or "").upper()
    lowered = text.lower()
    if "CHECKSUM" in code or "checksum mismatch" in lowered:
        reason = reasons.CHECKSUM_MISMATCH
        hint = " An applied migration was modified: revert the file (never edit applied migrations)."
    elif "NOT_RESOLVED" in code or "not resolved locally" in lowered or "missing" in lowered:
        reason = reasons.MISSING_MIGRATION
        hint = " A migration applied to the database is missing from the migrations source."
    elif "FAILED" in code or "failed migration" in lowered:
        reason = reasons.FAILED_MIGRATION_IN_HISTORY
        hint = ""
    elif "password authentication failed" in lowered or "28P01" in text:
        reason, hint = reasons.BAD_CREDENTIALS, ""
    elif "connection" in lowered and ("refused" in lowered or "unable to obtain" in lowered):
        reason, hint = reasons.DATABASE_UNREACHABLE, ""
    else:
        reason, hint = reasons.VALIDATION_FAILED, ""
    return reason, f"flyway validate: {text}{hint}"


@dataclass
class MigrateResult:
    success: bool
    migrations_executed: int = 0
    initial_schema_version: str | None = None
    target_schema_version: str | None = None
    error_code: str | None = None
    error: str | None = None
    migrations: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "operation": "migrate",
            "success": self.success,
            "migrationsExecuted": self.migrations_executed,
        }
        for key, value in (
            ("initialSchemaVersion", self.initial_schema_version),
            ("targetSchemaVersion", self.target_schema_version),
            ("errorCode", self.error_code),
            ("error", self.error),
        ):
            if value is not None:
                summary[key] = value[:2000] if isinstance(value, str) else value
        return summary


def parse_migrate_output(output: str | None) -> MigrateResult:
    parts = sections(output)
    text = parts.get("migrate", parts.get("", ""))
    document = _lenient_json(text)
    if document is None:
        return MigrateResult(False, error=(text or "").strip()[-1500:] or None)
    code, message = _error_of(document)
    success = bool(document.get("success", not (code or message))) and not (code or message)
    migrations = [m for m in document.get("migrations") or [] if isinstance(m, dict)]
    return MigrateResult(
        success=success,
        migrations_executed=int(document.get("migrationsExecuted") or 0),
        initial_schema_version=document.get("initialSchemaVersion"),
        target_schema_version=document.get("targetSchemaVersion"),
        error_code=code,
        error=message,
        migrations=migrations,
    )


def migration_file(name: str) -> PendingMigration | None:
    """`V6__add_parking_zones.sql` -> version 6, description "add parking zones" (None: not versioned)."""
    match = re.match(r"^V(?P<version>[0-9]+(?:[._][0-9]+)*)__(?P<description>.+)\.sql$", name)
    if not match:
        return None
    return PendingMigration(
        version=match["version"].replace("_", "."),
        description=match["description"].replace("_", " "),
        script=name,
    )
