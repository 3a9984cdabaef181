"""Condition upserts keep metav1 semantics."""

from __future__ import annotations

from migration_operator import conditions, reasons
from migration_operator.observations import ConditionChange

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_condition_is_appended_with_generation() -> None:
    result = conditions.upsert([], "Ready", "False", "Pending", "", T0, 3)
    assert result == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]


def test_transition_time_moves_only_when_status_flips() -> None:
    first = conditions.upsert([], "Ready", "False", "Pending", "", T0, 1)
    same = conditions.upsert(first, "Ready", "False", "Migrating", "running", T1, 1)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["reason"] == "Migrating"
    flipped = conditions.upsert(same, "Ready", "True", "Succeeded", "done", T1, 1)
    assert flipped[0]["lastTransitionTime"] == T1


def test_upsert_does_not_mutate_its_input_and_keeps_other_types() -> None:
    original = conditions.initial(T0, 1)
    updated = conditions.upsert(original, "Ready", "True", "Succeeded", "", T1, 1)
    assert conditions.get(original, "Ready")["status"] == "False"  # type: ignore[index]
    assert {c["type"] for c in updated} == {"Ready", "Reconciling", "Stalled"}


def test_apply_stamps_generation_on_every_condition_and_orders_by_type() -> None:
    start = conditions.initial(T0, 1)
    result = conditions.apply(
        start,
        [
            ConditionChange(reasons.MIGRATED, "True", "MigrationSucceeded", "ok"),
            ConditionChange(reasons.READY, "True", "Succeeded", "ok"),
        ],
        T1,
        2,
    )
    assert [c["type"] for c in result] == ["Ready", "Reconciling", "Stalled", "Migrated"]
    assert all(c["observedGeneration"] == 2 for c in result)
    assert conditions.is_true(result, "Ready") and not conditions.is_true(result, "Stalled")


def test_initial_conditions_say_not_ready() -> None:
    initial = conditions.initial(T0, 1)
    assert conditions.get(initial, "Ready")["status"] == "False"  # type: ignore[index]
    assert conditions.is_true(initial, "Reconciling")


def test_long_messages_are_cut_to_the_api_limit() -> None:
    result = conditions.upsert([], "Migrated", "False", "MigrationFailed", "x" * 40000, T0, 1)
    assert len(result[0]["message"]) == conditions.MESSAGE_LIMIT
