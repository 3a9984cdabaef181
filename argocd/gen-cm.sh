#!/usr/bin/env bash
# Regenerates argocd/argocd-cm.yaml from argocd/resource_customizations. The Go tests in argocd/luatest
# render it and fail when the committed file differs, so run this after editing any .lua file.
set -euo pipefail
cd "$(dirname "$0")/luatest"
go test -count=1 -run '^TestConfigMap' ./... -args -update
