"""Verifying: the runbook's checks after the migration. No failed history row, the expected version reached,
the required tables present, foreign keys and indexes not fewer than before (unless allowed), the user's SQL
checks true. The "after" snapshot and the rows this run installed go to status.

Observes: `database.verify` (read-only session).
Actions: none.
"""

from __future__ import annotations

from typing import Any

from .. import database, reasons
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase
from ..observations import ConditionChange, Observations, Verification
from . import context
from .context import Context
from .core import (
    POLL_RETRY,
    Decision,
    Run,
    enter,
    expected_version,
    fail,
    first_line,
    next_phase,
    same_version,
    stay,
    timed_out,
)

PHASE = Phase.VERIFYING


async def observe(ctx: Context) -> dict[str, Any]:
    last_rank = ctx.status.before.last_installed_rank if ctx.status.before else None
    login, checks_login = await context.credentials(ctx), await context.check_credentials(ctx)
    return {"verification": await database.verify(ctx.spec, login, last_rank, checks_login, ctx.uid)}


def table_present(required: str, names: list[str]) -> bool:
    if "." in required:
        return required in names or (required.startswith("public.") and required[7:] in names)
    return any(name == required or name.endswith("." + required) for name in names)


def verification_problems(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, verification: Verification
) -> list[str]:
    problems: list[str] = []
    after = verification.snapshot
    for row in verification.failed_rows:
        problems.append(f"failed row in {spec.migrations.table}: version {row.version} ({row.script})")
    expected = expected_version(spec, status)
    if expected and not same_version(after.version, expected):
        problems.append(f"database at version {after.version or 'none'}, expected {expected}")
    for table in spec.verify.required_tables:
        if not table_present(table, after.table_names):
            problems.append(f"required table {table} missing")
    before = status.before
    if before and not spec.verify.allow_dropped_objects:
        if after.foreign_keys < before.foreign_keys:
            problems.append(f"foreign keys dropped from {before.foreign_keys} to {after.foreign_keys}")
        if after.indexes < before.indexes:
            problems.append(f"indexes dropped from {before.indexes} to {after.indexes}")
    for check in spec.verify.checks:
        outcome = verification.check_results.get(check.name, "not run")
        if outcome is not True:
            problems.append(f"check {check.name} " + ("returned false" if outcome is False else f"failed: {outcome}"))
    return problems


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    verification = obs.verification
    if verification is None or verification.error:
        if timed_out(status, obs, spec.timeouts.verify_seconds):
            error = verification.error if verification and verification.error else "no result"
            return fail(
                spec,
                status,
                PHASE,
                reasons.VERIFICATION_FAILED,
                f"verification timed out: {error}",
                [ConditionChange(reasons.VERIFIED, "False", reasons.VERIFICATION_FAILED, error)],
            )
        message = "verifying" + (
            f": retrying ({first_line(verification.error)})" if verification and verification.error else ""
        )
        return stay(PHASE, message, reasons.VERIFYING, POLL_RETRY)
    results: dict[str, Any] = {"after": verification.snapshot, "applied": list(verification.applied)}
    problems = verification_problems(spec, status, verification)
    if problems:
        text = "; ".join(problems)
        decision = fail(
            spec,
            status,
            PHASE,
            reasons.VERIFICATION_FAILED,
            text,
            [ConditionChange(reasons.VERIFIED, "False", reasons.VERIFICATION_FAILED, text)],
        )
        return decision.record(**results)
    before = status.before
    after = verification.snapshot
    summary = (
        f"tables {before.tables if before else '?'}->{after.tables}, "
        f"foreign keys {before.foreign_keys if before else '?'}->{after.foreign_keys}, "
        f"indexes {before.indexes if before else '?'}->{after.indexes}"
    )
    message = f"verified: version {after.version}, {summary}"
    if spec.verify.checks:
        message += f", {len(spec.verify.checks)} check(s) true"
    decision = enter(next_phase(PHASE, spec), message, **results)
    decision.conditions.append(ConditionChange(reasons.VERIFIED, "True", reasons.VERIFICATION_SUCCEEDED, message))
    return decision
