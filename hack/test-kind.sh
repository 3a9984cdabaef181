#!/usr/bin/env bash
# The end-to-end suite on kind, with real images: create a kind cluster, build and `kind load` the operator and
# gateway images, run PostgreSQL 15 in the cluster with parking_db and parking_template seeded to V5, install
# the chart, then run tests/e2e against it.
#
# Needs docker, kind, kubectl and helm on PATH. It cannot run on the development machines (no Docker), which
# is why it is kept this small; the same suite runs there against the local cluster (make test-e2e).
#
#   hack/test-kind.sh                      # KEEP_CLUSTER=1 to leave the cluster up afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.sh

cluster=${KIND_CLUSTER:-migration-operator}
tag=${IMAGE_TAG:-0.1.0}
operator_image=ghcr.io/dbops/migration-operator:$tag
gateway_image=ghcr.io/dbops/parking-gateway:$tag
flyway_image=${FLYWAY_IMAGE:-flyway/flyway:12.4}
pg_local_port=${PG_LOCAL_PORT:-25432}
export KUBECONFIG=$MO_CACHE/kind/$cluster.kubeconfig
mkdir -p "$(dirname "$KUBECONFIG")"

cleanup() {
  [[ -n ${port_forward:-} ]] && kill "$port_forward" 2>/dev/null || true
  [[ ${KEEP_CLUSTER:-0} == 1 ]] || kind delete cluster --name "$cluster"
}
trap cleanup EXIT

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config hack/kind.yaml --kubeconfig "$KUBECONFIG" --wait 120s
fi

docker build -t "$operator_image" .
docker build -t "$gateway_image" examples/parking/gateway
kind load docker-image --name "$cluster" "$operator_image" "$gateway_image"

# PostgreSQL: superuser postgres/postgres, role parking_admin owning parking_db and parking_template (the
# database each test clones), both migrated to V5 by Flyway, as hack/postgres.sh does on the local cluster.
kubectl create namespace databases --dry-run=client -o yaml | kubectl apply -f -
kubectl -n databases create configmap parking-migrations --from-file=examples/parking/migrations \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n databases apply -f - <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: postgres-init
data:
  init.sql: |
    create role parking_admin login password 'parking_admin';
    create database parking_db owner parking_admin;
    create database parking_template owner parking_admin;
---
apiVersion: v1
kind: Service
metadata:
  name: postgres
spec:
  selector: {app: postgres}
  ports: [{name: postgres, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: postgres
spec:
  serviceName: postgres
  replicas: 1
  selector:
    matchLabels: {app: postgres}
  template:
    metadata:
      labels: {app: postgres}
    spec:
      containers:
        - name: postgres
          image: postgres:15
          env:
            - {name: POSTGRES_PASSWORD, value: postgres}
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          ports: [{containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -U, postgres, -h, 127.0.0.1]}
            periodSeconds: 2
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: init, mountPath: /docker-entrypoint-initdb.d}
      volumes:
        - name: init
          configMap: {name: postgres-init}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
EOF
kubectl -n databases rollout status statefulset/postgres --timeout=180s

kubectl -n databases delete job seed-parking --ignore-not-found
kubectl -n databases apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: seed-parking
spec:
  backoffLimit: 3
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: flyway
          image: $flyway_image
          command: [sh, -ec]
          args:
            - |
              for db in parking_db parking_template; do
                flyway -url=jdbc:postgresql://postgres:5432/\$db -user=parking_admin -password=parking_admin \
                  -locations=filesystem:/sql -target=5 migrate
              done
          volumeMounts: [{name: sql, mountPath: /sql}]
      volumes:
        - name: sql
          configMap: {name: parking-migrations}
EOF
kubectl -n databases wait --for=condition=Complete job/seed-parking --timeout=300s

helm upgrade --install migration-operator charts/migration-operator \
  --namespace migration-operator-system --create-namespace \
  --set image.tag="$tag" --set image.pullPolicy=Never --wait --timeout 180s

# The tests reach PostgreSQL through a port-forward; pods and the operator use the Service.
kubectl -n databases port-forward svc/postgres "$pg_local_port:5432" >/dev/null &
port_forward=$!
for _ in $(seq 30); do (exec 3<>"/dev/tcp/127.0.0.1/$pg_local_port") 2>/dev/null && break; sleep 1; done

MO_E2E_OPERATOR=external MO_E2E_DB_SSLMODE=disable \
MO_E2E_PG_HOST=127.0.0.1 MO_E2E_PG_PORT="$pg_local_port" \
MO_E2E_DB_HOST=postgres.databases.svc.cluster.local MO_E2E_DB_PORT=5432 \
  make test-e2e
