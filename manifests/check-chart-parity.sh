#!/usr/bin/env bash
# Fails when manifests/base and the Helm chart (default values) would install different objects. Labels and
# annotations are ignored (Helm adds its own); everything else must match: RBAC rules, Deployment spec,
# Service, ServiceAccount. Needs helm and kubectl (hack/build-k8s.sh builds both into $BIN_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/hack/versions.sh"
helm=${HELM:-$BIN_DIR/helm}
kubectl=${KUBECTL:-$BIN_DIR/kubectl}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$helm" template migration-operator "$root/charts/migration-operator" --namespace migration-operator-system \
  --kube-version 1.35.0 --set crds.install=false > "$tmp/helm.yaml"
"$kubectl" kustomize "$root/manifests/base" > "$tmp/kustomize.yaml"

python3 - "$tmp/helm.yaml" "$tmp/kustomize.yaml" <<'PY'
import json, sys
import yaml

def objects(path):
    out = {}
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue
        # the chart generates the checksum key (random, kept across upgrades); kustomize users create it themselves
        if doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-checksum-key"):
            continue
        for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
            meta.pop("labels", None)
            meta.pop("annotations", None)
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out

helm, kustomize = objects(sys.argv[1]), objects(sys.argv[2])
failed = False
for key in sorted(set(helm) | set(kustomize)):
    if key not in helm or key not in kustomize:
        print(f"{key[0]}/{key[1]} only in {'the chart' if key in helm else 'manifests/base'}")
        failed = True
    elif helm[key] != kustomize[key]:
        print(f"{key[0]}/{key[1]} differs:\n chart: {json.dumps(helm[key], sort_keys=True)}\n"
              f" base:  {json.dumps(kustomize[key], sort_keys=True)}")
        failed = True
sys.exit(1 if failed else 0)
PY
echo "manifests/base matches the chart"
