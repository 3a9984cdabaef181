"""The runbook as a phase machine: one module per phase, each holding side by side what the phase observes
(`observe`, the only I/O), how it decides (`decide`, pure) and the pods of the steps it runs (`pod`/`pods`).

    Pending -> (AwaitingApproval) -> Preflight -> [BackingUp, EnteringMaintenance in the order of
    backup.timing] -> Migrating -> Verifying -> ExitingMaintenance -> Succeeded
    any failure once the app or the database was touched -> RollingBack -> RolledBack | Failed
    a failure before that (preflight) -> Failed, app untouched

| to change                                   | open                                         |
|---------------------------------------------|----------------------------------------------|
| waiting for approval, the per-database Lease | machine/pending.py                          |
| what preflight checks                        | machine/preflight.py                        |
| BackingUp, a backup method (Dump, Clone)     | machine/backup.py (`BACKUP_METHODS`)        |
| scaling the app down / back, the drain       | machine/maintenance.py                      |
| Migrating (the flyway migrate Job)           | machine/migrate.py (flags: flyway.py)       |
| Verifying                                    | machine/verify.py                           |
| RollingBack, a rollback strategy             | machine/rollback.py (`ROLLBACK_STRATEGIES`) |
| enter/stay/fail, timeouts, actions, Decision | machine/core.py                             |
| timestamps (startedAt, phaseStartedAt ...)   | `stamp` below                               |

`decide(spec, status, observations, name, uid)` is pure: every transition has a unit test in
tests/unit/test_phases.py. Restart safety comes from the inputs: a Job is identified by its deterministic name, so
re-entering a phase finds the existing Job instead of creating a second; the original replica count is in status
and in an annotation on the Deployment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import jobs
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase
from ..observations import Observations
from ..reasons import Step
from . import backup, guards, maintenance, migrate, pending, preflight, prestart, rollback, verify
from .context import Context
from .core import Decide, Decision, PodBuilder, ReleaseLock, Run, first_line, iso


async def _nothing(ctx: Context) -> dict[str, Any]:
    return {}


def _terminal(spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, run: Run) -> Decision:
    """A finished run: nothing to do but make sure the Lease is gone."""
    phase = Phase(status.phase) if status.phase else Phase.FAILED
    return Decision(phase=phase, message=status.message or phase.value, actions=[ReleaseLock()])


@dataclass(frozen=True)
class PhaseEntry:
    observe: Callable[[Context], Awaitable[dict[str, Any]]]
    decide: Decide


PHASES: dict[Phase, PhaseEntry] = {
    Phase.PENDING: PhaseEntry(pending.observe, pending.decide),
    Phase.AWAITING_APPROVAL: PhaseEntry(pending.observe, pending.decide_awaiting_approval),
    Phase.PREFLIGHT: PhaseEntry(preflight.observe, preflight.decide),
    Phase.BACKING_UP: PhaseEntry(backup.observe, backup.decide),
    Phase.ENTERING_MAINTENANCE: PhaseEntry(maintenance.observe_entering, maintenance.decide_entering),
    Phase.MIGRATING: PhaseEntry(migrate.observe, migrate.decide),
    Phase.VERIFYING: PhaseEntry(verify.observe, verify.decide),
    Phase.EXITING_MAINTENANCE: PhaseEntry(maintenance.observe_deployment, maintenance.decide_exiting),
    Phase.ROLLING_BACK: PhaseEntry(rollback.observe, rollback.decide),
    Phase.SUCCEEDED: PhaseEntry(_nothing, _terminal),
    Phase.ROLLED_BACK: PhaseEntry(_nothing, _terminal),
    Phase.FAILED: PhaseEntry(_nothing, _terminal),
}

# Which pod runs each step: defined by the phase or plan that runs it.
JOB_PODS: dict[Step, PodBuilder] = {
    Step.VALIDATE: preflight.pod,
    Step.MIGRATE: migrate.pod,
    Step.ARMED_MIGRATE: prestart.armed_migrate_pod,
    Step.ARMED_BACKUP: prestart.armed_backup_pod,
    **{step: build for method in backup.BACKUP_METHODS.values() for step, build in method.pods().items()},
    **{step: build for plan in rollback.ROLLBACK_STRATEGIES.values() for step, build in plan.pods().items()},
}


def current_phase(status: DatabaseMigrationStatus) -> Phase:
    return Phase(status.phase) if status.phase else Phase.PENDING


async def observe(ctx: Context, **known: Any) -> Observations:
    """What the current phase needs to see, plus what every pass knows (`known`: now, generation, last error)."""
    fields = await PHASES[ctx.phase].observe(ctx)
    if guards.app_must_be_down(ctx.status, ctx.phase) and "deployment" not in fields:
        fields.update(await maintenance.observe_deployment(ctx))
    return Observations(**known, **fields)


def stamp(decision: Decision, status: DatabaseMigrationStatus, obs: Observations) -> Decision:
    """The run's timestamps, set here and nowhere else: phaseStartedAt when the phase changes (or was never set),
    startedAt when the run leaves the waiting phases, completedAt when it ends."""
    now = iso(obs.now)
    if decision.phase != current_phase(status) or not status.phase_started_at:
        decision.record(phase_started_at=now)
    waiting = (Phase.PENDING, Phase.AWAITING_APPROVAL)
    if not status.started_at and decision.phase not in waiting:
        decision.record(started_at=now)
    if decision.terminal and not status.completed_at:
        decision.record(completed_at=now)
    return decision


def decide(
    spec: DatabaseMigrationSpec, status: DatabaseMigrationStatus, obs: Observations, name: str = "", uid: str = ""
) -> Decision:
    """The next step of the runbook for one DatabaseMigration: the guards first (window, deadline, errors, holding
    the app down), then the phase."""
    phase = current_phase(status)
    if phase not in guards.GUARDED:
        return stamp(PHASES[phase].decide(spec, status, obs, Run(name, uid)), status, obs)
    decision = guards.before(spec, status, obs, phase)
    if decision is None:
        decision = PHASES[phase].decide(spec, status, obs, Run(name, uid))
        last = obs.last_error
        if last is not None and decision.phase == phase and last.at >= (status.phase_started_at or ""):
            decision.message += f" (retrying after {last.action} failed: {first_line(last.message, 200)})"
    return stamp(guards.after(spec, status, obs, phase, decision), status, obs)


def build_job(
    body: dict[str, Any], spec: DatabaseMigrationSpec, step: Step, env: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """The Job manifest of `step` for the DatabaseMigration `body` (`env`: what the decision adds to its container)."""
    metadata = body["metadata"]
    parts = JOB_PODS[Step(step)](spec, Run(metadata["name"], metadata.get("uid", "")))
    if env:
        parts = dataclasses.replace(parts, env=[*parts.env, *({"name": k, "value": v} for k, v in env)])
    return jobs.build_job(body, spec, Step(step), parts)
