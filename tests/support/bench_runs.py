"""The runs `make bench` times on the cluster: the operator and the minimal script (hack/bench-script.sh) migrating
identical copies of a database, the app (the parking gateway) as the maintenance Deployment, each run recorded by
`bench_watch` and reduced to seconds: phases, the app's downtime, where inside the window the time went, Job
times, reaction latencies.

Every namespace is `bench-run-*` (the operator started by tests/bench.py watches exactly that) or `bench-rss-*` (the
memory figure's own operator): never a prefix another session's e2e operator watches.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import bench_seed, postgres
from tests.support.bench_watch import GROUP, PLURAL, VERSION, Recording, record
from tests.support.kube import kubectl_binary, temporary_namespace, wait_crd_established
from tests.support.operator import REPO
from tests.support.wait import wait_for

RUN_PREFIX = "bench-run"
RSS_PREFIX = "bench-rss"
TERMINAL = ("Succeeded", "RolledBack", "Failed")
MIGRATIONS = REPO / "examples" / "parking" / "migrations"
CRD_PATH = REPO / "crds" / "dbops.io_databasemigrations.yaml"
SCRIPT = REPO / "hack" / "bench-script.sh"
REPLICAS = 3
# The phases whose time is the app's downtime, in the order the default spec runs them.
WINDOW_PHASES = ("EnteringMaintenance", "BackingUp", "Migrating", "Verifying", "ExitingMaintenance")
# The same TLS choice for the operator's runs (spec.database.sslMode) and the script's (PGSSLMODE, Flyway's URL).
SSL_MODE = os.environ.get("BENCH_SSLMODE", "require")
# The operator's Jobs' CPU request (jobTemplate.resources.requests.cpu; empty: none). Without one a Job's pod is
# BestEffort, and on a node with cgroup QoS its cgroup gets cpu.shares 2 (kubepods/besteffort), against 1024 for each
# host process, the script's pg_dump and Flyway among them: on a machine other sessions load, the operator's pg_dump
# and Flyway then wait for CPU that the script's get (measured: pod run 10.9 s vs 3.5 s on the host at load 11).
# A request puts the pod in kubepods/burstable with shares proportional to it, which is what production should give
# Jobs that run inside a maintenance window anyway.
JOB_CPU = os.environ.get("BENCH_JOB_CPU", "250m")
PHASE_LABELS = {"Preflight": "preflight", "EnteringMaintenance": "drain", "BackingUp": "backup",
                "Migrating": "migrate", "Verifying": "verify", "ExitingMaintenance": "scale-up",
                "RollingBack": "rollback"}


def migration_files(extra: dict[str, str] | None = None) -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(MIGRATIONS.glob("V*.sql"))}
    files.update(extra if extra is not None else {bench_seed.MIGRATION_NAME: bench_seed.MIGRATION_SQL})
    return files


def ensure_crd(api: client.ApiClient) -> None:
    """The CRD must be there (the e2e suites install it); installed from crds/ only when it is missing, so a
    benchmark never replaces what another session installed."""
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_PATH.read_text())
    name = body["metadata"]["name"]
    try:
        ext.read_custom_resource_definition(name)
    except ApiException as error:
        if error.status != 404:
            raise
        ext.create_custom_resource_definition(body)

    wait_crd_established(api, name)


# Consent labels (migration_operator/policy.py): a Secret may serve as credentials, a Deployment may be scaled to 0.
CREDENTIALS_OPT_IN = {"dbops.io/credentials": "true"}
MAINTENANCE_OPT_IN = {"dbops.io/maintenance": "allowed"}


def _secret(name: str, data: dict[str, str]) -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels=dict(CREDENTIALS_OPT_IN)),
                           data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})


# ------------------------------------------------------------------------------------------------ one namespace
@dataclass
class Place:
    """A namespace with what a run needs: the Secrets, the backup PVC, the migrations ConfigMap, and (optional)
    the gateway Deployment at REPLICAS on `database`."""

    api: client.ApiClient
    namespace: str
    database: str | None

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def spec(self, database: str, *, method: str = "Dump", maintenance: bool = True,
             failing_check: bool = False, prestart: bool = False, **overrides: Any) -> dict[str, Any]:
        endpoint = postgres.cluster_endpoint()
        backup: dict[str, Any] = {"method": method}
        if method == "Dump":
            backup["volume"] = {"claimName": "db-backups"}
        spec: dict[str, Any] = {
            "database": {"host": endpoint.host, "port": endpoint.port, "name": database,
                         "credentialsSecret": {"name": "parking-db-admin"}, "sslMode": SSL_MODE},
            "migrations": {"configMap": {"name": "bench-migrations"}},
            "backup": backup,
            "verify": {"requiredTables": ["clients", "parking_spots", "tickets"]},
            "rollback": {"strategy": "Restore"},
        }
        if maintenance:
            # the backup and migrate Jobs' pods (and Flyway's JVM) started while the app drains, or not: said either
            # way (maintenance.prestartMigration is on when unset)
            spec["maintenance"] = {"deployment": {"name": "api-gateway"}, "prestartMigration": prestart}
        if failing_check:  # the migration succeeds, the verification fails: the run restores its backup
            spec["verify"]["checks"] = [{"name": "fails-on-purpose", "sql": "select false"}]
        if JOB_CPU:
            spec["jobTemplate"] = {"resources": {"requests": {"cpu": JOB_CPU}}}
        spec.update(overrides)
        return spec

    def create(self, name: str, spec: dict[str, Any], **metadata: Any) -> float:
        """Creates the DatabaseMigration; returns the wall time just before the request."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseMigration",
                "metadata": {"name": name, **metadata}, "spec": spec}
        at = time.time()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        return at

    def delete_migrations(self, timeout: float = 180) -> None:
        """Deletes every DatabaseMigration here and waits until they are gone (their finalizer needs the operator)."""
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        for item in listing.get("items") or []:
            with contextlib.suppress(ApiException):
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                            item["metadata"]["name"])

        def gone() -> bool:
            left = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            return not left.get("items")

        try:
            wait_for(gone, timeout=timeout, what=f"DatabaseMigrations of {self.namespace} deleted")
        except AssertionError:
            # last resort, for our own objects only: without it the namespace would stay Terminating forever
            for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]:
                with contextlib.suppress(ApiException):
                    self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, item["metadata"]["name"],
                        {"metadata": {"finalizers": []}})
            print(f"  (warning: DatabaseMigrations of {self.namespace} were not deleted in {timeout:.0f}s; "
                  "finalizers removed)")


def gateway_deployment(database: str, replicas: int) -> dict[str, Any]:
    """The e2e suite's gateway Deployment, unchanged (readiness probe every 2 s on the database's schema)."""
    from tests.e2e.conftest import gateway_deployment as e2e_gateway

    deployment = e2e_gateway(database, replicas)
    deployment["metadata"].setdefault("labels", {}).update(MAINTENANCE_OPT_IN)
    return deployment


def wait_available(api: client.ApiClient, namespace: str, replicas: int = REPLICAS, timeout: float = 180) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    def available() -> bool:
        d = apps.read_namespaced_deployment("api-gateway", namespace)
        pods = core.list_namespaced_pod(namespace, label_selector="app=api-gateway").items
        return bool(d.spec.replicas == replicas and (d.status.available_replicas or 0) == replicas
                    and (d.status.updated_replicas or 0) == replicas and len(pods) == replicas)

    wait_for(available, timeout=timeout, what=f"api-gateway available at {replicas} replicas in {namespace}")


@contextlib.contextmanager
def place(api: client.ApiClient, database: str | None, *, prefix: str = RUN_PREFIX, gateway: bool = True,
          migrations: dict[str, str] | None = None, secret: bool = True, pvc: bool | None = None,
          wait_gone: bool = False) -> Iterator[Place]:
    """A fresh namespace (PodSecurity `restricted`, like the e2e suite's) set up for runs; on the way out its
    DatabaseMigrations are deleted (the operator must still run) and the namespace with them (`wait_gone`: until it
    is gone, so its teardown - pods stopping, the backup volume wiped - does not overlap the next run)."""
    with temporary_namespace(api, prefix) as namespace:
        core = client.CoreV1Api(api)
        login = {"username": postgres.APP_ROLE, "password": postgres.APP_PASSWORD}
        if secret:
            core.create_namespaced_secret(namespace, _secret("parking-db-admin", login))
            core.create_namespaced_secret(namespace, _secret("parking-db-app", login))
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="bench-migrations"), data=migrations or migration_files()))
        here = Place(api, namespace, database)
        try:
            if gateway if pvc is None else pvc:
                core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
                    metadata=client.V1ObjectMeta(name="db-backups"),
                    spec=client.V1PersistentVolumeClaimSpec(
                        access_modes=["ReadWriteOnce"],
                        resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))
            if gateway and database:
                client.AppsV1Api(api).create_namespaced_deployment(namespace, gateway_deployment(database, REPLICAS))
                wait_available(api, namespace)
            yield here
        finally:
            here.delete_migrations()
    if wait_gone and os.environ.get("MO_KEEP_NAMESPACES") != "1":
        core = client.CoreV1Api(api)

        def gone() -> bool:
            try:
                core.read_namespace(namespace)
            except ApiException as error:
                return bool(error.status == 404)
            return False

        with contextlib.suppress(AssertionError):
            wait_for(gone, timeout=120, interval=0.5, what=f"namespace {namespace} deleted")


def settle() -> float:
    """Before a timed run: PostgreSQL's dirty buffers written (CHECKPOINT) and the kernel's dirty pages flushed
    (sync), so the run does not pay for the copy or the teardown that came before it. Returns the seconds it took."""
    started = time.monotonic()
    with postgres.connect() as conn:
        conn.execute("checkpoint")
    os.sync()
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------------- the runs
@dataclass
class Run:
    """One recorded run: the operator's (`name` is the DatabaseMigration) or the script's (`marks`)."""

    kind: str  # operator | script
    label: str
    namespace: str
    database: str
    started: float
    rec: Recording
    name: str = ""
    marks: dict[str, float] = field(default_factory=dict)
    ended: bool = True
    output: str = ""
    maintenance: bool = True

    @property
    def status(self) -> dict[str, Any]:
        return self.rec.final_status(self.name) if self.name else {}


def run_operator(here: Place, name: str, spec: dict[str, Any], label: str, timeout: float) -> Run:
    maintenance = "maintenance" in spec
    with record(here.api, here.namespace, deployment="api-gateway" if maintenance else None) as rec:
        started = here.create(name, spec)

        def done() -> bool:
            phases = rec.phases(name)
            return bool(phases) and phases[-1][0] in TERMINAL

        ended = True
        try:
            wait_for(done, timeout=timeout, interval=0.2, what=f"{name} finished")
        except AssertionError:
            ended = False
        time.sleep(0.3)  # the last events of the Deployment and the Jobs
    return Run("operator", label, here.namespace, spec["database"]["name"], started, rec, name=name, ended=ended,
               maintenance=maintenance)


def tool_paths() -> tuple[str, str]:
    """(kubectl, flyway) as the local cluster installed them (KUBECTL / FLYWAY override)."""
    flyway = os.environ.get("FLYWAY")
    if not flyway:
        cache = subprocess.run(["bash", "-c", f"source {REPO}/hack/versions.sh && echo $MO_CACHE"],
                               capture_output=True, text=True, check=True).stdout.strip()
        flyway = str(Path(cache) / "flyway" / "current" / "flyway")
    return kubectl_binary(), flyway


def script_compression() -> str:
    """The script's pg_dump level: the operator's (backup.compression's default), so that the ratio compares the same
    dump; BENCH_SCRIPT_COMPRESSION overrides it (empty: pg_dump's own default, the runbook's plain `pg_dump -Fc`)."""
    from migration_operator.models import BackupSpec

    return os.environ.get("BENCH_SCRIPT_COMPRESSION", str(BackupSpec().compression))


def run_script(here: Place, database: str, workdir: Path, label: str, timeout: float,
               restore_paths: bool = False) -> Run:
    """hack/bench-script.sh on `database`, the dump written to `workdir` (removed afterwards)."""
    migrations = workdir / "migrations"
    migrations.mkdir(parents=True, exist_ok=True)
    for filename, text in migration_files().items():
        (migrations / filename).write_text(text)
    dump = workdir / f"{database}.dump"
    kubectl, flyway = tool_paths()
    endpoint = postgres.test_endpoint()
    env = os.environ | {
        "NAMESPACE": here.namespace, "DEPLOYMENT": "api-gateway", "SELECTOR": "app=api-gateway",
        "PGHOST": endpoint.host, "PGPORT": str(endpoint.port), "PGDATABASE": database,
        "PGUSER": postgres.APP_ROLE, "PGPASSWORD": postgres.APP_PASSWORD, "PGSSLMODE": SSL_MODE,
        "MIGRATIONS_DIR": str(migrations), "DUMP_FILE": str(dump), "KUBECTL": kubectl, "FLYWAY": flyway,
        "DUMP_COMPRESSION": script_compression(),
    }
    with record(here.api, here.namespace) as rec:
        started = time.time()
        try:
            done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout)
            output, ended = done.stdout + done.stderr, done.returncode == 0
        except subprocess.TimeoutExpired as expired:
            got = [part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                   for part in (expired.stdout, expired.stderr)]
            output, ended = "".join(got) + "\n(timed out)", False
        time.sleep(0.3)
    (workdir / "output.log").write_text(output)
    marks: dict[str, float] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "bench-step":
            marks[f"{parts[1]} {parts[2]}"] = float(parts[3])
    if dump.exists():
        marks["dump bytes"] = float(dump.stat().st_size)
        # what the operator's backup Job does beyond the script's `pg_restore --list`: read the whole dump back
        # (pg_scripts.BACKUP_SCRIPT); timed here, after the run, to tell that part of the difference
        begin = time.monotonic()
        subprocess.run(["pg_restore", "--file=/dev/null", str(dump)], capture_output=True, check=False)
        marks["read-back seconds"] = time.monotonic() - begin
        if restore_paths:
            marks.update(time_restore_paths(dump, database))
        dump.unlink()
    return Run("script", label, here.namespace, database, started, rec, marks=marks, ended=ended, output=output)


def _restore_env() -> dict[str, str]:
    endpoint = postgres.test_endpoint()
    return os.environ | {
        "PGHOST": endpoint.host, "PGPORT": str(endpoint.port), "PGSSLMODE": SSL_MODE,
        "PGUSER": os.environ.get("MO_E2E_PG_SUPERUSER", "postgres"),
        "PGPASSWORD": os.environ.get("MO_E2E_PG_PASSWORD", "postgres"),
    }


def time_restore_paths(dump: Path, database: str) -> dict[str, float]:
    """The same dump restored two ways into an empty scratch database on the same server (as the superuser: this
    times the work, not the privileges): replayed in one transaction through psql, as the operator's restore Job does
    (without its drops, which cost nothing on an empty database), with psql timing each statement; and with
    `pg_restore -j2` (a job per table, indexes in parallel), the restore into a new database the issue suggests. The
    longest statement of the first is the biggest table's COPY: one backend whatever the parallelism."""
    env, marks = _restore_env(), {}
    for path in ("one transaction", "parallel"):
        scratch = f"{database}_rp"
        with postgres.connect() as conn:
            postgres.drop_database(conn, scratch)
            conn.execute(f'create database "{scratch}"')
        try:
            begin = time.monotonic()
            if path == "parallel":
                done = subprocess.run(["pg_restore", "-j2", "--exit-on-error", "-d", scratch, str(dump)], env=env,
                                      capture_output=True, text=True, check=False)
            else:
                done = subprocess.run(
                    f"{{ printf '%s\\n' '\\timing on'; pg_restore --file=- '{dump}'; }} "
                    f"| psql -X -q -1 -v ON_ERROR_STOP=1 -d '{scratch}'", shell=True, env=env,
                    capture_output=True, text=True, check=False)
                times = [float(line.split()[1]) / 1000 for line in done.stdout.splitlines()
                         if line.startswith("Time: ")]
                if times:
                    marks["restore longest statement seconds"] = max(times)
            if done.returncode == 0:
                marks[f"restore {path} seconds"] = time.monotonic() - begin
        finally:
            with postgres.connect() as conn:
                postgres.drop_database(conn, scratch)
    return marks


# ----------------------------------------------------------------------------------------------- the figures
def _span(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None else None


def flyway_sql_seconds(database: str, version: str = "6") -> float | None:
    """Flyway's own execution time of one migration (flyway_schema_history.execution_time, ms)."""
    try:
        with postgres.connect(database) as conn:
            row = conn.execute("select execution_time from flyway_schema_history where version = %s and success",
                               (version,)).fetchone()
    except Exception:
        return None
    return row[0] / 1000 if row and row[0] is not None else None


def job_figures(run: Run) -> dict[str, dict[str, Any]]:
    """Per Job of an operator run: created, finished (as the watch saw them), its wall time, and the reaction: the
    first status write that moved the run on (new phase or new log entry) after the Job ended, that is after its pod
    ended or its status said so, whichever came first (the operator acts on the pod's end since the pods' watch)."""
    figures: dict[str, dict[str, Any]] = {}
    rec = run.rec
    for job in rec.job_names(run.name):
        event = next(e for e in rec.jobs if e.name == job)
        created = rec.job_created(job)
        finished = rec.job_finished(job)
        pod = rec.job_pod(job)
        ends = [at for at in (pod["done"], finished[0] if finished else None) if at is not None]
        # the phase change that followed the Job: the operator may move on before the API shows the pod's end
        step_event = rec.next_phase_change(run.name, created) if created is not None and ends else None
        figures[event.step or job] = {
            "job": job,
            "created": created,
            "pod_created": pod["created"],
            "pod_running": pod["running"],
            "pod_done": pod["done"],
            # Job created -> its pod created (Job controller), -> Running (scheduler, node agent), -> done (the
            # step's own work), -> the Job's status says so (Job controller)
            "split": {
                "job->pod": _span(created, pod["created"]),
                "pod start": _span(pod["created"], pod["running"]),
                "pod run": _span(pod["running"], pod["done"]),
                "pod->job done": _span(pod["done"], finished[0] if finished else None),
            },
            "finished": finished[0] if finished else None,
            "state": finished[1] if finished else "Running",
            "seconds": _span(created, finished[0] if finished else None),
            # from the Job's status (the Job controller reports a finished pod in batches, up to a second later):
            # negative when the run moved on before it, on the pod's end
            "reaction": _span(finished[0], step_event.at) if finished and step_event else None,
            # from the pod's end (its container's, as the API first shows it): what the app's window sees; negative
            # when the run moved on first (the operator saw the END line of the step's log: migration_operator.tail)
            "reaction_from_pod": _span(pod["done"], step_event.at) if step_event else None,
            "pod_phase_done": pod["phase done"],
            "reaction_to": step_event.phase if step_event else None,
        }
    return figures


def operator_figures(run: Run) -> dict[str, Any]:
    rec, name = run.rec, run.name
    phases = rec.phases(name)
    entered: dict[str, float] = {}
    for phase, at in phases:
        entered.setdefault(phase, at)
    durations: dict[str, float] = {}
    for (phase, at), (_, following) in itertools.pairwise(phases):
        durations[phase] = durations.get(phase, 0.0) + (following - at)
    down = rec.downtime(REPLICAS, after=run.started) if run.maintenance else None
    status = run.status
    jobs = job_figures(run)
    first_job = rec.first_job(name, after=run.started)
    figures: dict[str, Any] = {
        "label": run.label, "namespace": run.namespace, "name": name, "database": run.database,
        "ended": run.ended, "phase": status.get("phase"), "message": status.get("message"),
        "phases": [(phase, at - run.started) for phase, at in phases],
        "durations": {PHASE_LABELS.get(k, k): v for k, v in durations.items()},
        "downtime": _span(*down) if down else None,
        "jobs": jobs,
        "created_to_first_job": _span(run.started, first_job.at) if first_job else None,
        "backup_bytes": (status.get("backup") or {}).get("sizeBytes"),
        "applied": status.get("applied"),
        "log": status.get("log"),
        "database_unchanged": (status.get("rollback") or {}).get("databaseUnchanged"),
    }
    entering = entered.get("EnteringMaintenance")
    if down and entering is not None and "drain" in figures["durations"] and down[0] > entering:
        # with pre-started Jobs the app keeps serving while their pods start: that head start is not the drain
        head_start = down[0] - entering
        figures["durations"]["drain"] -= head_start
        figures["durations"]["head start (app up)"] = head_start
    exiting = entered.get("ExitingMaintenance")
    if down and exiting:
        figures["durations"]["scale-up"] = down[1] - exiting
        figures["durations"]["exit phase"] = durations.get("ExitingMaintenance")
    restored = rec.first_status(name, lambda s: bool((s.get("rollback") or {}).get("databaseRestored")))
    if "RollingBack" in entered and restored:
        figures["rollback_to_restored"] = restored - entered["RollingBack"]
    rolling_back = entered.get("RollingBack")
    if down and rolling_back is not None and not exiting:
        # a rollback brings the app back itself: what it costs before the scale-up (stopping the step, deciding
        # whether to restore, restoring) and the scale-up after it
        scaled = rec.first_deployment(lambda s: s.replicas == REPLICAS, rolling_back)
        if scaled is not None:
            figures["durations"]["rollback (app down)"] = scaled - rolling_back
            figures["durations"]["scale-up"] = down[1] - scaled
    figures["timeline"] = operator_timeline(run, entered, down, jobs)
    figures["durations_from_status_log"] = status_log_durations(status)
    return figures


def status_log_durations(status: dict[str, Any]) -> dict[str, float]:
    """The phase durations as status.log tells them (its times have a one-second resolution: a cross-check of the
    watch's figures, not a replacement)."""
    from datetime import datetime

    firsts: list[tuple[str, float]] = []
    for entry in status.get("log") or []:
        when = datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00")).timestamp()
        if not firsts or firsts[-1][0] != entry.get("phase"):
            firsts.append((str(entry.get("phase")), when))
    durations: dict[str, float] = {}
    for (phase, at), (_, following) in itertools.pairwise(firsts):
        durations[PHASE_LABELS.get(phase, phase)] = durations.get(PHASE_LABELS.get(phase, phase), 0.0) + following - at
    return durations


def operator_timeline(run: Run, entered: dict[str, float], down: tuple[float, float] | None,
                      jobs: dict[str, dict[str, Any]]) -> list[tuple[float, str]]:
    """What happened inside the app's window, in seconds from the moment it went below REPLICAS available."""
    if down is None:
        return []
    rec, origin = run.rec, down[0]
    points: list[tuple[float | None, str]] = [(down[0], "app below all replicas available (window opens)")]
    for phase, at in entered.items():
        points.append((at, f"phase {phase}"))
    maintenance = entered.get("EnteringMaintenance", run.started)
    points.append((rec.first_deployment(lambda s: s.replicas == 0, maintenance), "Deployment spec.replicas 0 seen"))
    points.append((rec.pods_gone(down[0]), "last app pod gone"))
    for step, job in jobs.items():
        points.append((job["created"], f"{step} Job created"))
        points.append((job["pod_created"], f"{step} pod created"))
        points.append((job["pod_running"], f"{step} pod Running"))
        points.append((job["pod_done"], f"{step} container ended (API)"))
        points.append((job.get("pod_phase_done"), f"{step} pod {job['state']}"))
        points.append((job["finished"], f"{step} Job {job['state'].lower()} (Job {_fmt(job['seconds'])})"))
    back = entered.get("ExitingMaintenance") or entered.get("RollingBack")
    if back:
        points.append((rec.first_deployment(lambda s: s.replicas == REPLICAS, back),
                       f"Deployment spec.replicas {REPLICAS} seen"))
    points.append((down[1], "all replicas available (window closes)"))
    timeline = [(at - origin, text) for at, text in points if at is not None]
    return sorted(timeline, key=lambda point: point[0])


def script_figures(run: Run) -> dict[str, Any]:
    rec, marks = run.rec, run.marks
    down = rec.downtime(REPLICAS, after=run.started)
    durations = {step: _span(marks.get(f"{step} start"), marks.get(f"{step} end"))
                 for step in ("drain", "backup", "migrate", "scale-up")}
    figures: dict[str, Any] = {
        "label": run.label, "namespace": run.namespace, "database": run.database, "ended": run.ended,
        "durations": {k: v for k, v in durations.items() if v is not None},
        "downtime": _span(*down) if down else None,
        "dump_bytes": int(marks["dump bytes"]) if "dump bytes" in marks else None,
        "read_back_seconds": marks.get("read-back seconds"),
        "restore_paths": {key.removeprefix("restore ").removesuffix(" seconds"): value
                          for key, value in marks.items() if key.startswith("restore ")},
        "output_tail": run.output[-3000:] if not run.ended else "",
    }
    timeline: list[tuple[float, str]] = []
    if down:
        points: list[tuple[float | None, str]] = [(down[0], "app below all replicas available (window opens)")]
        for key, at in marks.items():
            if key not in ("dump bytes", "read-back seconds") and not key.startswith("restore "):
                points.append((at, f"script: {key}"))
        points.append((rec.first_deployment(lambda s: s.replicas == 0, run.started), "Deployment spec.replicas 0 seen"))
        points.append((rec.pods_gone(down[0]), "last app pod gone"))
        points.append((down[1], "all replicas available (window closes)"))
        timeline = sorted(((at - down[0], text) for at, text in points if at is not None), key=lambda p: p[0])
    figures["timeline"] = timeline
    return figures


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


# ------------------------------------------------------------------------------------------- operator memory
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SLEEP_MIGRATION = {"V6__bench_sleep.sql": "SELECT pg_sleep(3600);\n"}


def rss_population(api: client.ApiClient, pid: int, namespaces: int = 20, per_namespace: int = 5,
                   running: int = 5, timeout: float = 420) -> dict[str, Any]:
    """RSS of the operator process `pid` (watching RSS_PREFIX-*) with namespaces x per_namespace DatabaseMigrations:
    `running` of them really running (each on its own copy of the parking database, in Migrating: a Flyway Job
    in `pg_sleep`), the others finished (Failed in preflight: their credentials Secret does not exist, which
    ends a run without a Job). Sampled every 0.5 s for 5 s once all are where they should be."""
    idle = rss_kib(pid)
    total = namespaces * per_namespace
    with contextlib.ExitStack() as stack:
        places: list[Place] = []
        started = time.monotonic()
        for index in range(namespaces):
            database = stack.enter_context(postgres.cloned_database("bench")) if index < running else None
            here = stack.enter_context(place(api, database, prefix=RSS_PREFIX, gateway=False,
                                             migrations=migration_files(SLEEP_MIGRATION)))
            places.append(here)
            for number in range(per_namespace):
                if database is not None and number == 0:
                    here.create("running", here.spec(database, maintenance=False, backup={"enabled": False},
                                                     rollback={"strategy": "None"}))
                else:
                    spec = here.spec(f"absent_{number}", maintenance=False)
                    spec["database"]["credentialsSecret"] = {"name": "no-such-secret"}
                    here.create(f"finished-{number}", spec)

        def counts() -> tuple[int, int]:
            finished = migrating = 0
            for here in places:
                for item in here.custom.list_namespaced_custom_object(GROUP, VERSION, here.namespace,
                                                                      PLURAL)["items"]:
                    status = item.get("status") or {}
                    if status.get("phase") in TERMINAL:
                        finished += 1
                    elif status.get("phase") == "Migrating" and "migrate" in (status.get("jobs") or {}):
                        migrating += 1
            return finished, migrating

        reached = True
        try:
            wait_for(lambda: counts() == (total - running, running), timeout=timeout, interval=1.0,
                     what=f"{total - running} finished and {running} migrating")
        except AssertionError:
            reached = False
        settle = time.monotonic() - started
        time.sleep(2)
        samples = []
        for _ in range(10):
            samples.append(rss_kib(pid))
            time.sleep(0.5)
        finished, migrating = counts()
        for here in places:  # while the operator still runs: the finalizers need it
            here.delete_migrations()
    return {"idle_kib": idle, "max_kib": max(samples), "last_kib": samples[-1], "migrations": total,
            "namespaces": namespaces, "finished": finished, "running": migrating, "reached": reached,
            "seconds_to_reach": settle}


def make_workdir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="script-", dir=root))
