"""The narrated part of `make demo`: deploy the parking example at V5, apply the migration to V6, and tell what
happens as it happens (phase, elapsed time, what the gateway is doing), then print the final status."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "parking"
NAME = "parking-db-v6"
TERMINAL = {"Succeeded", "RolledBack", "Failed"}


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def gateway_state(apps: client.AppsV1Api) -> str:
    try:
        d = apps.read_namespaced_deployment("api-gateway", NAMESPACE)
    except client.ApiException:
        return "gateway: not deployed"
    return (f"gateway: {d.status.ready_replicas or 0}/{d.spec.replicas} ready"
            f" ({d.status.replicas or 0} pods)")


def main() -> int:
    config.load_kube_config()
    apps = client.AppsV1Api()
    custom = client.CustomObjectsApi()

    rendered = [d for d in yaml.safe_load_all(kubectl("kustomize", str(REPO / "manifests/examples/parking"))) if d]
    release = [d for d in rendered if d["kind"] != "DatabaseMigration"]
    migration = [d for d in rendered if d["kind"] == "DatabaseMigration"]

    print("\n== deploying the current release: gateway at schema V5, 3 replicas (kubectl apply, kustomize)")
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(release))
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/api-gateway", "--timeout=180s")
    print(gateway_state(apps))
    print(kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide").rstrip())
    db = migration[0]["spec"]["database"]
    print(f"database: {db['host']}:{db.get('port', 5432)}/{db['name']} (Service "
          + kubectl("-n", "databases", "get", "service", "postgres", "-o",
                    "jsonpath={.metadata.name} {.spec.clusterIP}:{.spec.ports[0].port}") + ")")

    print(f"\n== applying DatabaseMigration {NAME} (V5 -> V6: parking_zones, backfill, foreign key)")
    print(kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(migration)).strip())
    start = time.monotonic()
    last: tuple[Any, ...] = ()
    deadline = start + 600
    phase = None
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object("dbops.io", "v1alpha1", NAMESPACE, "databasemigrations", NAME)
        status = obj.get("status") or {}
        phase = status.get("phase")
        line = (phase, status.get("message"), gateway_state(apps))
        if line != last:
            print(f"[{time.monotonic() - start:6.1f}s] {phase or '(no status yet)':<20} {line[2]:<32} "
                  f"{status.get('message') or ''}")
            last = line
        if phase in TERMINAL:
            break
        time.sleep(0.5)  # narration cadence, not synchronisation: the loop ends on the phase
    print("\n== the run's Jobs and their pods (images pulled by containerd from the local registry mirror)")
    print(kubectl("-n", NAMESPACE, "get", "jobs", "-o", "custom-columns=JOB:.metadata.name,"
                  "STEP:.metadata.labels.dbops\\.io/step,IMAGE:.spec.template.spec.containers[0].image,"
                  "SUCCEEDED:.status.succeeded").rstrip())
    print(kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide").rstrip())
    print("\n== final status (kubectl dbmig status)")
    subprocess.run([sys.executable, "-m", "migration_operator.kubectl_plugin", "status", NAME, "-n", NAMESPACE])
    print("\n== kubectl get dbmig")
    print(kubectl("-n", NAMESPACE, "get", "dbmig"))
    return 0 if phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
