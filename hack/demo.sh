#!/usr/bin/env bash
# make demo: the main job end to end on the local cluster. Installs the chart (the operator runs as a pod
# under its own ServiceAccount), deploys the parking example at schema V5 with the gateway at 3 replicas, applies
# the DatabaseMigration to V6 and narrates each phase as it happens, then prints the final status.
# Re-runnable: it puts parking_db back to V5 and the example namespace back to its start first.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/hack/versions.sh"
export KUBECONFIG=${KUBECONFIG:-$MO_CACHE/cluster/kubeconfig}
export PATH="$BIN_DIR:$MO_CACHE/venv/current/bin:$PATH"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "resetting the example: namespace parking and database parking_db (back to V5)"
# migrations first, while the operator may still remove their finalizer (its Role goes with the namespace)
kubectl -n parking delete databasemigrations --all --wait=true --timeout=120s >/dev/null 2>&1 || true
kubectl delete namespace parking --ignore-not-found --wait=true --timeout=180s >/dev/null
bash "$REPO/hack/postgres.sh" psql -d postgres -c "DROP DATABASE IF EXISTS parking_db WITH (FORCE)" \
  -c "CREATE DATABASE parking_db TEMPLATE parking_template OWNER parking_admin"

say "installing the operator with Helm (chart charts/migration-operator, watching namespace parking)"
kubectl apply -f "$REPO/manifests/examples/parking/namespace.yaml" >/dev/null
# the operator image as built from this checkout (hack/build-images.sh), pinned by digest: a node that pulled an
# earlier build under the same tag must not keep running it
bash "$REPO/hack/build-images.sh" migration-operator parking-gateway >/dev/null
digest=$(curl -sfI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  http://127.0.0.1:5000/v2/dbops/migration-operator/manifests/0.1.0 | tr -d '\r' | awk 'tolower($1)=="docker-content-digest:"{print $2}')
helm upgrade --install migration-operator "$REPO/charts/migration-operator" \
  --namespace migration-operator-system --create-namespace \
  --set 'watchNamespaces={parking}' ${digest:+--set-string "image.digest=$digest"} --wait --timeout 3m
kubectl -n migration-operator-system get pods -o wide
say "the node (kubelet + containerd), DNS, storage and the database, all in the cluster"
kubectl get nodes -o wide
kubectl get pods -A -o custom-columns='NAMESPACE:.metadata.namespace,POD:.metadata.name,IP:.status.podIP,IMAGE:.spec.containers[0].image' \
  --field-selector metadata.namespace!=parking
kubectl -n databases get service postgres

exec "$MO_CACHE/venv/current/bin/python" "$REPO/hack/demo.py"
