"""metav1.Condition bookkeeping: upsert by type, `lastTransitionTime` moves only when `status` flips,
`observedGeneration` on every condition. The list is always written whole (a JSON merge patch replaces
lists), so callers read the current list, apply changes here, and write the result."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import reasons
from .observations import ConditionChange

MESSAGE_LIMIT = 32768  # metav1.Condition.message maxLength


def upsert(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with the condition of `type_` set; other conditions unchanged."""
    result = [dict(c) for c in conditions]
    existing = next((c for c in result if c.get("type") == type_), None)
    fresh: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "lastTransitionTime": now,
    }
    if generation is not None:
        fresh["observedGeneration"] = generation
    if existing is None:
        result.append(fresh)
    else:
        if existing.get("status") == status and existing.get("lastTransitionTime"):
            fresh["lastTransitionTime"] = existing["lastTransitionTime"]
        existing.clear()
        existing.update(fresh)
    return result


def apply(
    conditions: list[dict[str, Any]], changes: Iterable[ConditionChange], now: str, generation: int | None
) -> list[dict[str, Any]]:
    """Apply the decision's condition changes in order."""
    result = [dict(c) for c in conditions]
    for change in changes:
        result = upsert(result, change.type, change.status, change.reason, change.message, now, generation)
    result = [{**c, "observedGeneration": generation} if generation is not None else c for c in result]
    order = {kind: index for index, kind in enumerate(reasons.CONDITION_TYPES)}
    return sorted(result, key=lambda c: order.get(c.get("type", ""), len(order)))


def initial(now: str, generation: int | None) -> list[dict[str, Any]]:
    """First visit: Ready=False at once, so `kubectl wait` never sees a stale or missing Ready."""
    conditions: list[dict[str, Any]] = []
    for type_, status, reason in (
        (reasons.READY, "False", reasons.PENDING),
        (reasons.RECONCILING, "True", reasons.PENDING),
        (reasons.STALLED, "False", reasons.PENDING),
    ):
        conditions = upsert(conditions, type_, status, reason, "", now, generation)
    return conditions


def get(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    condition = get(conditions, type_)
    return bool(condition and condition.get("status") == "True")
