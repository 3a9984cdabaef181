#!/usr/bin/env bash
# Static checks of the install artefacts (make test-chart): helm lint, helm template in both RBAC modes,
# the chart's and kustomize's CRD copies in sync with crds/, manifests/base equal to the chart, the kustomize
# trees render; with a reachable cluster ($KUBECONFIG), a server-side dry run of what the chart renders.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.sh
[[ -x $BIN_DIR/helm && -x $BIN_DIR/kubectl ]] || bash hack/build-k8s.sh all
helm=$BIN_DIR/helm
kubectl=$BIN_DIR/kubectl
chart=charts/migration-operator
kube_version=${K8S_VERSION#v}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { echo "== $*" >&2; }

step "helm lint"
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" --set 'watchNamespaces={parking,billing}'
"$helm" lint --strict "$chart" --set 'watchNamespacePatterns={team-*}'

step "helm template: all namespaces, scoped, namespace patterns, ServiceMonitor"
"$helm" template migration-operator "$chart" -n migration-operator-system --kube-version "$kube_version" \
  > "$tmp/all.yaml"
"$helm" template migration-operator "$chart" -n migration-operator-system --kube-version "$kube_version" \
  --set 'watchNamespaces={parking,billing}' > "$tmp/scoped.yaml"
"$helm" template migration-operator "$chart" -n migration-operator-system --kube-version "$kube_version" \
  --set metrics.serviceMonitor.enabled=true > "$tmp/monitor.yaml"
grep -q -- '--all-namespaces' "$tmp/all.yaml"
grep -q 'kind: ClusterRoleBinding' "$tmp/all.yaml"
# one Role per watched namespace, plus the Lease Role in the operator's own namespace
[[ $(grep -c '^kind: Role$' "$tmp/scoped.yaml") == 3 && $(grep -c '^kind: RoleBinding$' "$tmp/scoped.yaml") == 3 ]]
if grep -q -- '--all-namespaces' "$tmp/scoped.yaml"; then echo "scoped chart watches all namespaces" >&2; exit 1; fi
# namespace globs: one --namespace per pattern, the cluster-wide RBAC (no per-namespace Role but the Lease one)
"$helm" template migration-operator "$chart" -n migration-operator-system --kube-version "$kube_version" \
  --set 'watchNamespacePatterns={team-*,e2e-*}' > "$tmp/patterns.yaml"
# (pipes into `grep -q` are read from a string: under pipefail the writer's SIGPIPE would fail the check at random)
namespace_args=$(grep -A1 -- '- --namespace$' "$tmp/patterns.yaml")
grep -q '"team-\*"' <<<"$namespace_args"
grep -q '"e2e-\*"' <<<"$namespace_args"
if grep -q -- '--all-namespaces' "$tmp/patterns.yaml"; then echo "patterns chart watches all namespaces" >&2; exit 1; fi
grep -q 'kind: ClusterRoleBinding' "$tmp/patterns.yaml"
[[ $(grep -c '^kind: Role$' "$tmp/patterns.yaml") == 1 ]]
if "$helm" template migration-operator "$chart" --kube-version "$kube_version" \
  --set 'watchNamespacePatterns={team-*}' --set 'watchNamespaces={parking}' >/dev/null 2>&1; then
  echo "watchNamespacePatterns together with watchNamespaces should be refused" >&2; exit 1
fi
# a Job's output is read from its pod's log: `get` on pods/log in the ClusterRole, and in every watched namespace
grep -q 'verbs: \["get"\]' <<<"$(grep -A1 'resources: \["pods/log"\]' "$tmp/all.yaml")"
[[ $(grep -c 'resources: \["pods/log"\]' "$tmp/scoped.yaml") == 2 ]]
grep -q 'kind: ServiceMonitor' "$tmp/monitor.yaml"
# the admission policies: on by default where the API server has them (1.30+), off when disabled or older
[[ $(grep -c '^kind: ValidatingAdmissionPolicy$' "$tmp/all.yaml") == 2 ]]
[[ $(grep -c '^kind: ValidatingAdmissionPolicyBinding$' "$tmp/all.yaml") == 2 ]]
if grep -q ValidatingAdmissionPolicy <<<"$("$helm" template migration-operator "$chart" --kube-version 1.29.0)" \
  || grep -q ValidatingAdmissionPolicy <<<"$("$helm" template migration-operator "$chart" --kube-version "$kube_version" \
    --set admissionPolicy.enabled=false)"; then
  echo "admission policies rendered where they should not be" >&2; exit 1
fi
# the allow-lists reach the operator (env) and the Job admission policy (RE2 patterns)
"$helm" template migration-operator "$chart" --kube-version "$kube_version" \
  --set 'policy.allowedImages={docker.io/library/postgres:*,registry.example.com/m/*}' > "$tmp/policy.yaml"
grep -q 'value: "docker.io/library/postgres:\*,registry.example.com/m/\*"' "$tmp/policy.yaml"
grep -qF "r'^registry\\\\.example\\\\.com/m/.*\$'" "$tmp/policy.yaml"
if "$helm" template migration-operator "$chart" --set "policy.allowedImages={it's}" >/dev/null 2>&1; then
  echo "a pattern with a quote should be refused" >&2; exit 1
fi
# a digest pins the image (tag@digest); the version label stays the tag
digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"$helm" template migration-operator "$chart" --kube-version "$kube_version" --set image.digest=$digest > "$tmp/digest.yaml"
grep -q "image: ghcr.io/dbops/migration-operator:0.1.0@$digest\$" "$tmp/digest.yaml"
if grep -q "version: .*$digest" "$tmp/digest.yaml"; then echo "the digest reached a label" >&2; exit 1; fi
# two replicas with leader election by default (RollingUpdate, a PodDisruptionBudget, anti-affinity); several
# replicas without leader election are refused, one without it is the standalone Recreate Deployment
"$helm" template migration-operator "$chart" --kube-version "$kube_version" > "$tmp/ha.yaml"
grep -q -- '- --leader-elect$' "$tmp/ha.yaml"
grep -q 'kind: PodDisruptionBudget' "$tmp/ha.yaml"
grep -q 'type: RollingUpdate' "$tmp/ha.yaml"
grep -q 'value: "migration-operator-leader"' "$tmp/ha.yaml"
if "$helm" template migration-operator "$chart" --kube-version "$kube_version" --set replicaCount=2 \
    --set leaderElection.enabled=false >/dev/null 2>&1; then
  echo "replicaCount=2 without leader election should be refused" >&2; exit 1
fi
"$helm" template migration-operator "$chart" --kube-version "$kube_version" --set replicaCount=1 \
  --set leaderElection.enabled=false > "$tmp/single.yaml"
grep -q 'type: Recreate' "$tmp/single.yaml"
if grep -qE -- '--leader-elect|kind: PodDisruptionBudget' "$tmp/single.yaml"; then
  echo "a single standalone replica got leader election or a PodDisruptionBudget" >&2; exit 1
fi

step "copies in sync (hack/sync-chart-crd.sh --check)"
bash hack/sync-chart-crd.sh --check

step "manifests/base matches the chart"
bash manifests/check-chart-parity.sh

step "kustomize renders"
"$kubectl" kustomize manifests/base > /dev/null
"$kubectl" kustomize manifests/examples/parking > "$tmp/parking.yaml"
grep -qE 'name: api-gateway-migrations-[a-z0-9]{10}$' "$tmp/parking.yaml"

if "$kubectl" version --request-timeout=5s >/dev/null 2>&1; then
  step "server-side dry run against $KUBECONFIG"
  # In namespace default: a dry run does not create the release namespace.
  "$helm" template migration-operator "$chart" -n default --kube-version "$kube_version" \
    | "$kubectl" apply --dry-run=server -f - >/dev/null
else
  step "no reachable cluster: server-side dry run skipped"
fi
echo "chart checks passed" >&2
