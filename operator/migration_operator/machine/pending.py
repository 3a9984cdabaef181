"""Pending and AwaitingApproval: wait for an approval when the spec asks for one, then for the database's Lease
(one run per database at a time), then enter Preflight.

Observes: the approval annotation, and the Lease (taken here: acquiring is the observation).
Actions: none besides taking the Lease while observing.
"""

from __future__ import annotations

from typing import Any

from .. import constants, lock, reasons
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase
from ..observations import Observations
from .context import Context
from .core import POLL_LOCK, Decision, Run, enter, progress, stay


async def observe(ctx: Context) -> dict[str, Any]:
    approved = ctx.annotations.get(constants.APPROVED_ANNOTATION) == "true"
    fields: dict[str, Any] = {"approved": approved}
    if approved or not ctx.spec.approval.required:
        fields["lock"] = await lock.acquire(ctx.body, ctx.spec)
    return fields


def decide(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    if spec.approval.required and not obs.approved:
        message = (
            f"waiting for approval: kubectl annotate dbmig {run.name} dbops.io/approved=true"
            if run.name
            else "waiting for approval (annotation dbops.io/approved=true)"
        )
        return Decision(
            phase=Phase.AWAITING_APPROVAL,
            message=message,
            log=message,
            conditions=progress(reasons.AWAITING_APPROVAL, message),
        )
    if obs.lock is None or not obs.lock.acquired:
        holder = obs.lock.holder if obs.lock and obs.lock.holder else "another migration"
        message = (
            f"waiting for {holder} to finish: one migration at a time for "
            f"{spec.database.host}:{spec.database.port}/{spec.database.name}"
        )
        return stay(
            Phase.PENDING,
            message,
            reasons.WAITING_FOR_LOCK,
            POLL_LOCK,
            log=message if status.message != message else None,
        )
    return enter(Phase.PREFLIGHT, "preflight: checking the database, the history and the migrations")


def decide_awaiting_approval(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run
) -> Decision:
    if spec.approval.required and not obs.approved:
        message = status.message or "waiting for approval"
        return Decision(
            phase=Phase.AWAITING_APPROVAL, message=message, conditions=progress(reasons.AWAITING_APPROVAL, message)
        )
    decision = decide(spec, status, obs, run)
    decision.log = f"approved; {decision.log or decision.message}"
    return decision
