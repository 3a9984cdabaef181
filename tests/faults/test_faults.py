"""One fault at a random moment inside one phase of a real run (real API server, PostgreSQL, Flyway, the chart's
operator pod), then the invariants issue 14 lists:
- the run ends in a terminal phase its strategy allows for that fault;
- the app is back at its original replicas, or left down with the status saying so (MaintenanceMode True);
- exactly one Job UID per Job name ever existed (a watch of the namespace from before the run);
- the database equals the "before" fingerprint after a rollback that puts it back, or the expected "after" one
  after success (never a half-restored database presented as restored);
- the secret scan is clean; no Lease of the run is left held;
- the status's deployment log names the fault, where the operator can see it (see `FAULT_WORDS`).
The trial's outcome goes into the matrix (tests/faults/matrix.py) before the test passes or fails.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import ParkingApp, parking_world, secret_hits
from tests.faults import matrix
from tests.faults.matrix import ORDER, SCENARIOS, TERMINAL, Database, Result, Trial
from tests.support import faults, local_cluster, postgres
from tests.support.operator import Operator, OperatorPod
from tests.support.wait import WaitTimeout, wait_for

MIGRATION = "faulted"
MAX_DELAY = 1.5  # seconds into the phase at most: the sample database's phases last one to a few seconds
UNREACHABLE_SECONDS = 30
SCALED_TO = 5
SMALL_CLAIM = "db-backups-small"
HISTORY = "flyway_schema_history"
T = TypeVar("T")
# The phases in which the app must stay down: a scale-up there is the operator's to undo (guards.hold) and to log.
APP_DOWN = frozenset({"BackingUp", "Migrating", "Verifying"})

# What the status would say if the operator saw the fault: words looked for in the deployment log, the message, the
# conditions and the rollback record.
FAULT_WORDS = {
    "operator-kill": ("picked this run up",),
    "apiserver-restart": ("api server", "apiserver", "connection refused", "watch"),
    "postgres-kill": ("terminat", "connection", "server closed", "shut down", "recovery", "57p01"),
    "kubelet-restart": ("kubelet",),
    "backup-volume-full": ("no space left", "enospc", "space"),
    "database-unreachable": ("timeout", "timed out", "unreachable", "connection", "retrying"),
    "app-scaled-up": (f"scaled to {SCALED_TO}",),
}


# ---------------------------------------------------------------------------------------------- expected databases
def _comparable(fingerprint: dict[str, Any], history: list[tuple[Any, ...]]) -> dict[str, Any]:
    """A fingerprint without the history table's rows (install times, durations), plus its (version, success)."""
    rows = {k: v for k, v in fingerprint["rows"].items() if k != HISTORY}
    return {**fingerprint, "rows": rows, "history": [(str(h[0]), bool(h[4])) for h in history]}


def _state(database: str) -> dict[str, Any]:
    return _comparable(postgres.fingerprint(database), postgres.history(database))


@functools.cache
def expected_after(scenario: str, host: str) -> dict[str, Any]:
    """The database after the scenario's migration succeeded (good) or was repaired (Repair: V6 kept, the index
    V7 built outside a transaction kept): the same SQL applied by hand on another copy of the template, the history
    that Flyway would have written. `host` keys the cache to the suite's PostgreSQL."""
    del host
    v6 = (matrix_dir() / "good" / "V6__add_parking_zones.sql").read_text()
    extra = "CREATE INDEX tickets_entered_at_idx ON tickets (entered_at);" if scenario == "Repair" else ""
    with postgres.cloned_database("fltref") as database:
        with postgres.connect(database, user=postgres.APP_ROLE, password=postgres.APP_PASSWORD) as conn:
            with conn.transaction():
                conn.execute(v6)
            if extra:
                conn.execute(extra)
        state = _comparable(postgres.fingerprint(database), postgres.history(database))
    state["history"] = [*state["history"], ("6", True)]
    return state


def matrix_dir() -> Any:
    from tests.e2e.conftest import MIGRATIONS_NEXT
    return MIGRATIONS_NEXT


# ---------------------------------------------------------------------------------------------- the trial
def _phase(app: ParkingApp) -> str | None:
    phase = app.status(MIGRATION).get("phase")
    return str(phase) if phase else None


def _at_or_after(phase: str | None, wanted: str) -> bool:
    return phase is not None and phase in ORDER and ORDER.index(phase) >= ORDER.index(wanted)


def _reach(app: ParkingApp, wanted: str, trial: Trial, timeout: float = 420) -> tuple[str, float]:
    """Waits for the phase (or any later one: a short phase may be over between two polls), then a random delay
    inside it; returns the phase the run is in at the end of the delay, which is where the fault lands."""
    def there() -> str | None:
        phase = _phase(app)
        return phase if _at_or_after(phase, wanted) else None

    seen = wait_for(there, timeout=timeout, interval=0.1, what=f"{MIGRATION} in {wanted} or later",
                    describe=lambda: app.describe(MIGRATION))
    delay = trial.rng().uniform(0, MAX_DELAY) if seen == wanted else 0.0
    if delay:
        threading.Event().wait(delay)  # the random moment inside the phase (not a synchronisation)
    return _phase(app) or seen, delay


def _terminal(app: ParkingApp) -> dict[str, Any] | None:
    status = app.status(MIGRATION)
    return status if status.get("phase") in TERMINAL else None


def _job_pod_running(app: ParkingApp) -> bool:
    pods = app.core.list_namespaced_pod(app.namespace, label_selector="job-name").items
    return any(p.status.phase == "Running" for p in pods)


def _operator_ips(operator: Operator, api: client.ApiClient) -> list[str]:
    assert isinstance(operator, OperatorPod)
    pods = client.CoreV1Api(api).list_namespaced_pod(operator.namespace).items
    return [p.status.pod_ip for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp]


def _inject(trial: Trial, app: ParkingApp, operator: Operator | None, db: Database, landed: str) -> list[str]:
    """The fault itself; returns notes. Every injector puts the machine back before it returns or raises."""
    api, fault, notes = app.api, trial.cell.fault, []
    if fault == "operator-kill":
        assert operator is not None
        faults.kill_operator(operator)
    elif fault == "apiserver-restart":
        down = faults.restart_apiserver(api, local_cluster.local_node(api))
        notes.append(f"API server not ready for {down:.1f} s")
    elif fault == "postgres-kill":
        probe = {"host": db.host, "port": db.port, "user": "postgres", "password": "postgres", "dbname": "postgres"}
        faults.kill_postgres(api, db.namespace, db.pod, probe)
    elif fault == "kubelet-restart":
        try:
            wait_for(lambda: _job_pod_running(app) or _phase(app) in TERMINAL, timeout=60,
                     what="a Job's pod running", interval=0.1)
        except WaitTimeout:
            notes.append("no Job pod seen running")
        if not _job_pod_running(app):
            notes.append(f"no Job pod running when the kubelet was killed (phase {_phase(app)})")
        down = faults.restart_kubelet(api, local_cluster.local_node(api))
        notes.append(f"the Node Ready again {down:.1f} s after the kill")
    elif fault == "database-unreachable":
        assert operator is not None
        pod_ip = client.CoreV1Api(api).read_namespaced_pod(db.pod, db.namespace).status.pod_ip
        with faults.database_unreachable(_operator_ips(operator, api), pod_ip, db.port):
            threading.Event().wait(UNREACHABLE_SECONDS)  # the length of the outage is the fault
        assert faults.firewall_clean(), "the MO-FAULT chain is still there"
    elif fault == "app-scaled-up":
        faults.scale_app(api, app.namespace, "api-gateway", SCALED_TO)
    elif fault == "backup-volume-full":
        pass  # the small claim is the fault: set up before the run
    else:
        raise AssertionError(f"unknown fault {fault}")
    return notes


def _expected_replicas(app: ParkingApp, trial: Trial, landed: str, status: dict[str, Any], notes: list[str]) -> int:
    """What the app must run at the end. Scaled up by someone else before maintenance, the new count is the
    original; while the operator records it (EnteringMaintenance), whichever it recorded; once the operator has
    scaled it back (exiting, rolling back, or already ended), a later scale-up is someone else's to keep."""
    if trial.cell.fault != "app-scaled-up":
        return app.replicas
    index = ORDER.index(landed)
    if index < ORDER.index("EnteringMaintenance"):
        return SCALED_TO
    recorded = (status.get("maintenance") or {}).get("originalReplicas")
    if landed == "EnteringMaintenance" and recorded in (app.replicas, SCALED_TO):
        return int(recorded)
    if landed in ("ExitingMaintenance", "RollingBack") or landed in TERMINAL:
        now = app.deployment().spec.replicas
        if now == SCALED_TO:
            notes.append(f"the scale to {SCALED_TO} came after the operator's last scale: kept")
            return SCALED_TO
    return app.replicas


def _allowed(trial: Trial, landed: str) -> set[str]:
    scenario = SCENARIOS[trial.cell.scenario]
    fault = trial.cell.fault
    if fault == "backup-volume-full":
        return {"RolledBack", "Failed"}
    if fault == "postgres-kill":
        # the database died under a step: finishing, rolling back or stopping with the status saying so are all
        # honest ends; what is checked is that the end state matches what the status claims
        return {"Succeeded", "RolledBack", "Failed"} if scenario.name == "good" else {"RolledBack", "Failed"}
    if landed in TERMINAL:
        return {landed}
    return {scenario.ends}


def _status_text(status: dict[str, Any]) -> str:
    parts = [status.get("message") or "", json.dumps(status.get("log") or []),
             json.dumps(status.get("conditions") or []), json.dumps(status.get("rollback") or {})]
    return "\n".join(parts).lower()


def _nameable(fault: str, landed: str) -> bool:
    """Whether the operator can see this fault where it landed (what the log check is enforced on): its own restart
    (reconcile.resume_note), a scale-up while the app must be down (guards.hold), a full volume (the backup fails).
    The others are recorded (the matrix's column) but not required: an API server or kubelet restart leaves the
    operator nothing to see, and a database killed or cut off between two of its queries neither."""
    if fault == "operator-kill":
        return landed not in TERMINAL
    if fault == "app-scaled-up":
        return landed in APP_DOWN
    return fault == "backup-volume-full" and landed == "BackingUp"  # the dump ran into the full volume


def _leases_held(app: ParkingApp, operator: Operator | None, uid: str) -> list[str]:
    coordination = client.CoordinationV1Api(app.api)
    namespaces = {app.namespace}
    if isinstance(operator, OperatorPod):
        namespaces.add(operator.namespace)
    held = []
    for namespace in namespaces:
        for lease in coordination.list_namespaced_lease(namespace).items:
            holder = lease.spec.holder_identity or ""
            if holder == f"{app.namespace}/{MIGRATION}/{uid}":
                held.append(f"{namespace}/{lease.metadata.name}")
    return held


def run_trial(trial: Trial, app: ParkingApp, operator: Operator | None, db: Database) -> Result:
    cell, scenario = trial.cell, SCENARIOS[trial.cell.scenario]
    result = Result(trial=trial.id, cell=cell.key, fault=cell.fault, intended_phase=cell.phase,
                    scenario=cell.scenario)
    app.set_migrations(*scenario.variants)
    before = postgres.fingerprint(app.database)
    before_state = _state(app.database)
    log_before = operator.log_text() if operator else ""
    spec = app.spec(rollback=scenario.rollback)
    spec["maintenance"] = {**spec["maintenance"], "prestartMigration": cell.prestart}  # said either way
    started = time.monotonic()
    with faults.JobWatch(app.api, app.namespace) as jobs:
        if cell.fault == "backup-volume-full":
            spec["backup"] = {"method": "Dump", "volume": {"claimName": SMALL_CLAIM}}
            with faults.small_backup_volume(app.api, app.namespace, SMALL_CLAIM):
                app.create_migration(MIGRATION, spec)
                landed, _ = _reach(app, cell.phase, trial)
                restored = time.monotonic()
                status = app.wait_done(MIGRATION, timeout=600)
        else:
            app.create_migration(MIGRATION, spec)
            landed, _ = _reach(app, cell.phase, trial)
            injected = time.monotonic()
            result.notes += _inject(trial, app, operator, db, landed)
            restored = time.monotonic()
            if cell.fault == "app-scaled-up":
                # instant, and the status lags the operator's decision by one patch: a scale-up read as the end of a
                # phase may have landed after the next one began; classified where the status says it is now
                now = _phase(app)
                if now is not None and now != landed and _at_or_after(now, landed):
                    result.notes.append(f"injected as the status went from {landed} to {now}")
                    landed = now
            result.fault_seconds = round(restored - injected, 1)
            status = wait_for(lambda: _terminal(app), timeout=900, what=f"{MIGRATION} terminal", interval=0.2,
                              describe=lambda: app.describe(MIGRATION))
        ended = time.monotonic()
    result.landed_phase, result.terminal_phase = landed, status.get("phase")
    result.recover_seconds = round(ended - restored, 1)
    result.run_seconds = round(ended - started, 1)
    if landed != cell.phase:
        result.notes.append(f"landed in {landed}, not {cell.phase}")
    failures = result.failures

    # 1. the terminal phase
    allowed = _allowed(trial, landed)
    if result.terminal_phase not in allowed:
        failures.append(f"ended {result.terminal_phase}, allowed {sorted(allowed)}: {status.get('message')}")

    # 2. the app
    original = _expected_replicas(app, trial, landed, status, result.notes)
    maintenance = app.condition(MIGRATION, "MaintenanceMode") or {}
    if result.terminal_phase == "Failed" and app.deployment().spec.replicas == 0:
        if maintenance.get("status") != "True":
            failures.append("the app is left at 0 replicas but MaintenanceMode is not True")
    else:
        try:
            app.wait_gateway_available(original, timeout=240)
        except WaitTimeout as error:
            failures.append(f"the app is not back at {original} replicas: {str(error)[:300]}")
        recorded = (status.get("maintenance") or {}).get("originalReplicas")
        if recorded not in (None, original) and trial.cell.fault != "app-scaled-up":
            failures.append(f"status records originalReplicas {recorded}, the app ran {original}")

    # 3. one Job per name
    if jobs.duplicates():
        failures.append(f"Jobs created twice under one name: {jobs.duplicates()}")

    # 4. the database
    reference = "Repair" if scenario.name == "Repair" else "good"
    state, exact, after = _after_run(lambda: (_state(app.database), postgres.fingerprint(app.database),
                                              expected_after(reference, db.host)), result.notes)
    rollback = status.get("rollback") or {}
    if result.terminal_phase == "Succeeded" and state != after:
        failures.append(f"Succeeded but the database is not the expected 'after': {_diff(after, state)}")
    if result.terminal_phase == "RolledBack":
        want = after if scenario.name == "Repair" else before_state
        if state != want and not (scenario.name == "Repair" and rollback.get("databaseUnchanged")):
            failures.append(f"RolledBack but the database is not the promised state: {_diff(want, state)}")
        if scenario.name != "Repair" and exact != before:
            failures.append("RolledBack but the database differs from the 'before' fingerprint")
    if rollback.get("databaseRestored"):
        # Restore and Compensate promise the "before" database; Repair keeps what succeeded (V6) and repairs history
        if scenario.name == "Repair" and state != after:
            failures.append(f"the status says the database was repaired, but it is not: {_diff(after, state)}")
        if scenario.name != "Repair" and exact != before:
            failures.append("the status says the database was restored, but it is not the 'before' database")
    if result.terminal_phase == "Failed" and state not in (before_state, after):
        result.notes.append("Failed with the database neither 'before' nor 'after' (the status says Failed)")

    # 5. secrets
    log_now = operator.log_text() if operator else ""
    delta = log_now[len(log_before):] if log_now.startswith(log_before) else log_now
    hits = secret_hits(app, delta)
    if hits:
        failures.append("secret values seen: " + "; ".join(hits[:3]))

    # 6. no Lease left held
    uid = app.get(MIGRATION)["metadata"]["uid"]
    try:
        wait_for(lambda: not _leases_held(app, operator, uid), timeout=60, what="the run's Leases released")
    except WaitTimeout:
        failures.append(f"Leases still held: {_leases_held(app, operator, uid)}")

    # 7. the deployment log names the fault
    text = _status_text(app.status(MIGRATION))
    words = [word for word in FAULT_WORDS[cell.fault] if word in text]
    named = bool(words)
    if words:
        result.notes.append(f"the status says {words}")
    result.status_log = [str(entry.get("message", ""))[:300] for entry in app.status(MIGRATION).get("log") or []]
    if _nameable(cell.fault, landed):
        result.fault_named = named
        if not named:
            failures.append(f"the status does not name the fault ({cell.fault}): {status.get('log')}")
    elif named:
        result.fault_named = True
    result.passed = not failures
    return result


def _after_run(read: Callable[[], T], notes: list[str]) -> T:
    """A read of the suite's database once the run has ended. After an API server restart the database's Service
    can lose its endpoint for a minute after the run ended (the restarted API server serves before its authorizers'
    caches are synced, the controller manager's and the kubelet's watches get 403, the Node goes Unknown, its pods
    not Ready: README "Fault injection"). A refusal then is the cluster's, not the run's: the read waits it out
    (matrix.DATABASE_GRACE_SECONDS), as the suite does before a trial, and the wait goes into the trial's notes."""
    value, waited = postgres.read_through_outage(read, matrix.DATABASE_GRACE_SECONDS)
    if waited:
        notes.append(f"after the run, the suite's {waited}")
    return value


def _diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    details = []
    for key in keys[:4]:
        w, g = want.get(key), got.get(key)
        if isinstance(w, dict) and isinstance(g, dict):
            details += [f"{key}[{n}]: {w.get(n)!r} -> {g.get(n)!r}" for n in sorted(set(w) | set(g))
                        if w.get(n) != g.get(n)][:3]
        else:
            details.append(f"{key}: {str(w)[:200]} -> {str(g)[:200]}")
    return "; ".join(details)


def _skip_reason(fault: str, operator: Operator | None, api: client.ApiClient) -> str | None:
    if fault in ("operator-kill", "database-unreachable") and not isinstance(operator, OperatorPod):
        return "needs the operator as the chart's pod (MO_E2E_OPERATOR=pod)"
    if fault in ("apiserver-restart", "kubelet-restart", "database-unreachable", "backup-volume-full"):
        return faults.host_fault_reason(api)
    return None


def _recorded_trial(trial: Trial, app: ParkingApp, operator: Operator | None, db: Database) -> Result:
    """run_trial, its result recorded for the matrix even when the trial itself breaks."""
    try:
        result = run_trial(trial, app, operator, db)
    except (AssertionError, ApiException, RuntimeError, OSError, psycopg.Error) as error:
        result = Result(trial=trial.id, cell=trial.cell.key, fault=trial.cell.fault, intended_phase=trial.cell.phase,
                        scenario=trial.cell.scenario, failures=[f"the trial broke: {str(error)[:1500]}"])
        result.notes.append(app.describe(MIGRATION)[:3000])
    matrix.record(result)
    return result


@pytest.mark.timeout(1800)
def test_the_run_survives_the_fault(trial: Trial, parking: ParkingApp, operator: Operator | None,
                                    fault_postgres: Database, api: client.ApiClient) -> None:
    reason = _skip_reason(trial.cell.fault, operator, api)
    if reason:
        pytest.skip(reason)
    result = _recorded_trial(trial, parking, operator, fault_postgres)
    assert result.passed, f"{trial.id}: " + "\n".join(result.failures) + "\n" + parking.describe(MIGRATION)


@pytest.mark.timeout(3600)  # seven runs on a shared 2-core machine: minutes, more under other sessions' load
def test_smoke_slice(operator: Operator | None, fault_postgres: Database, api: client.ApiClient) -> None:
    """One trial per fault kind, in a cell drawn with FAULT_SEED. The faults whose effect stays inside the trial's
    own run, or whose every run must still end as promised (the operator killed, the kubelet restarted, the app
    scaled, a full volume), run at the same time, each in its own world; the API server restart (the suite's own
    API calls would fail during it), the PostgreSQL kill (every run on that database may then end RolledBack) and
    the operator cut off from the database (a run in Preflight then fails, untouched) run alone afterwards."""
    if not matrix.smoke():
        pytest.skip("the smoke slice runs with FAULT_SMOKE=1 (make test-faults-smoke)")
    trials = [t for t in matrix.plan() if not _skip_reason(t.cell.fault, operator, api)]
    together = [t for t in trials if t.cell.fault not in matrix.RUN_ALONE]
    alone = [t for t in trials if t.cell.fault in matrix.RUN_ALONE]

    def one(trial: Trial) -> Result:
        with parking_world(api, operator) as app:
            return _recorded_trial(trial, app, operator, fault_postgres)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(together))) as pool:
        results = list(pool.map(one, together))
    results += [one(trial) for trial in alone]
    failed = [r for r in results if not r.passed]
    assert not failed, "\n".join(f"{r.trial}: {'; '.join(r.failures)}" for r in failed)
