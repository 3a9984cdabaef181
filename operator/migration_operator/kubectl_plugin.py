"""kubectl-dbmig: a kubectl plugin for DatabaseMigrations (installed with the package as `kubectl-dbmig`, so
`kubectl dbmig ...` finds it on PATH).

    kubectl dbmig list [-n NS | -A]        the migrations, one line each
    kubectl dbmig status NAME [-n NS]      phase, conditions, snapshots before/after, migrations, deployment log
    kubectl dbmig approve NAME [-n NS]     set dbops.io/approved=true on a run waiting in AwaitingApproval
    kubectl dbmig logs NAME [-n NS] [--step STEP]   the output of the run's Jobs (pg_dump, Flyway, ...)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config

from . import constants
from .models import DatabaseMigrationStatus, Phase, parse_status


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def render_status(obj: dict[str, Any], now: datetime | None = None) -> str:
    """The human view of one DatabaseMigration (pure: unit-tested)."""
    meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    status: DatabaseMigrationStatus = parse_status(obj.get("status"))
    database = spec.get("database", {})
    target = (spec.get("migrations") or {}).get("targetVersion") or "latest"
    out = [
        f"Name:       {meta.get('namespace')}/{meta.get('name')}",
        f"Database:   {database.get('name')} on {database.get('host')}:{database.get('port', 5432)}",
        f"Target:     {target}    Rollback: {(spec.get('rollback') or {}).get('strategy', 'Restore')}"
        f"    Dry run: {spec.get('dryRun', False)}",
        f"Phase:      {status.phase or '(not started)'}",
        f"Message:    {status.message or ''}",
    ]
    if status.started_at:
        out.append(f"Started:    {status.started_at}" + (f"    Completed: {status.completed_at}"
                                                          if status.completed_at else ""))
    if status.conditions:
        out += ["", "Conditions:", _table(
            ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            [(c.type, c.status, c.reason, _age(c.last_transition_time, now), c.message[:100])
             for c in status.conditions])]
    if status.before or status.after:
        before, after = status.before, status.after

        def pair(attribute: str) -> tuple[Any, Any]:
            return (getattr(before, attribute, None) if before else None,
                    getattr(after, attribute, None) if after else None)

        rows: list[Sequence[Any]] = [("version", *pair("version")), ("tables", *pair("tables")),
                                     ("foreign keys", *pair("foreign_keys")), ("indexes", *pair("indexes"))]
        tables = sorted(set(before.rows if before else {}) | set(after.rows if after else {}))
        rows += [(f"rows {t}", (before.rows.get(t) if before else None), (after.rows.get(t) if after else None))
                 for t in tables]
        out += ["", "Snapshots:", _table(["", "BEFORE", "AFTER"], rows)]
    if status.pending:
        out += ["", "Pending:", _table(["VERSION", "SCRIPT"], [(p.version, p.script or p.description)
                                                                for p in status.pending])]
    if status.applied:
        out += ["", "Applied:", _table(
            ["VERSION", "SCRIPT", "CHECKSUM", "TIME(ms)", "SUCCESS"],
            [(a.version, a.script, a.checksum, a.execution_time_ms, a.success) for a in status.applied])]
    if status.backup:
        b = status.backup
        where = b.clone_database or f"{b.pvc}:{b.path}"
        out += ["", f"Backup:     {b.method} {where} size={b.size_bytes} verified={b.verified}"]
    if status.maintenance and status.maintenance.deployment:
        m = status.maintenance
        out.append(f"App:        deployment/{m.deployment} original replicas {m.original_replicas}")
    if status.maintenance and status.maintenance.prestart_refused:
        out.append(f"Pre-start:  refused ({status.maintenance.prestart_refused}): the Jobs started in their phases")
    if status.rollback and status.rollback.strategy:
        r = status.rollback
        out.append(f"Rollback:   {r.strategy}: {r.reason or ''} {r.error or ''}".rstrip())
    if status.jobs:
        out += ["", "Jobs:", _table(["STEP", "JOB"], sorted(status.jobs.items()))]
    if status.log:
        out += ["", "Log:", _table(["TIME", "PHASE", "MESSAGE"], [(e.time, e.phase, e.message) for e in status.log])]
    return "\n".join(out)


def _api() -> tuple[client.CustomObjectsApi, client.CoreV1Api, client.BatchV1Api]:
    config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api(), client.BatchV1Api()


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    _, active = config.list_kube_config_contexts()
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                    constants.PLURAL, name))


def cmd_list(args: argparse.Namespace) -> int:
    custom, _, _ = _api()
    if args.all_namespaces:
        items = custom.list_cluster_custom_object(constants.GROUP, constants.VERSION, constants.PLURAL)["items"]
    else:
        items = custom.list_namespaced_custom_object(constants.GROUP, constants.VERSION, _namespace(args),
                                                     constants.PLURAL)["items"]
    rows = []
    for obj in items:
        status = obj.get("status") or {}
        rows.append((obj["metadata"]["namespace"], obj["metadata"]["name"], status.get("phase", ""),
                     (obj["spec"].get("migrations") or {}).get("targetVersion", "latest"),
                     _age(obj["metadata"].get("creationTimestamp")), (status.get("message") or "")[:80]))
    print(_table(["NAMESPACE", "NAME", "PHASE", "TARGET", "AGE", "MESSAGE"], rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    custom, _, _ = _api()
    print(render_status(_get(custom, _namespace(args), args.name)))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    custom, _, _ = _api()
    namespace = _namespace(args)
    obj = _get(custom, namespace, args.name)
    phase = (obj.get("status") or {}).get("phase")
    if phase != Phase.AWAITING_APPROVAL and not args.force:
        print(f"{namespace}/{args.name} is in phase {phase or '(none)'}, not AwaitingApproval; "
              "use --force to approve ahead of time", file=sys.stderr)
        return 1
    custom.patch_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.PLURAL, args.name,
        {"metadata": {"annotations": {constants.APPROVED_ANNOTATION: "true"}}})
    print(f"databasemigration.dbops.io/{args.name} approved")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    _, core, batch = _api()
    namespace = _namespace(args)
    selector = f"{constants.MIGRATION_LABEL}={args.name}"
    if args.step:
        # a backup's or migration's Job may be the pre-started one (maintenance.prestartMigration)
        steps = [args.step, f"armed-{args.step}"] if args.step in ("backup", "migrate") else [args.step]
        selector += f",{constants.STEP_LABEL} in ({','.join(steps)})"
    jobs = sorted(batch.list_namespaced_job(namespace, label_selector=selector).items,
                  key=lambda j: j.metadata.creation_timestamp)
    if not jobs:
        print(f"no Jobs for {namespace}/{args.name}", file=sys.stderr)
        return 1
    for job in jobs:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
        for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
            for container in pod.spec.containers:
                print(f"==> job/{job.metadata.name} pod/{pod.metadata.name} container/{container.name} <==")
                try:
                    print(core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container.name),
                          end="")
                except client.ApiException as error:
                    # no log endpoint (or the pod is gone): the termination message still holds the outcome
                    message = next((s.state.terminated.message for s in (pod.status.container_statuses or [])
                                    if s.name == container.name and s.state.terminated), None)
                    print(message or f"(no log: {error.reason})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl dbmig", description="Inspect and approve DatabaseMigrations.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_namespace(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        return sp

    ls = with_namespace(sub.add_parser("list", help="list migrations"))
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    ls.set_defaults(func=cmd_list)
    st = with_namespace(sub.add_parser("status", help="phase, conditions, snapshots and log of a migration"))
    st.add_argument("name")
    st.set_defaults(func=cmd_status)
    ap = with_namespace(sub.add_parser("approve", help="approve a migration waiting in AwaitingApproval"))
    ap.add_argument("name")
    ap.add_argument("--force", action="store_true", help="approve even if not (yet) awaiting approval")
    ap.set_defaults(func=cmd_approve)
    lg = with_namespace(sub.add_parser("logs", help="output of the migration's Jobs"))
    lg.add_argument("name")
    lg.add_argument("--step", help="only this step (validate, backup, migrate, restore, repair, compensate)")
    lg.set_defaults(func=cmd_logs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except client.ApiException as error:
        print(f"error: {error.status} {error.reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
