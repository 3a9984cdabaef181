#!/usr/bin/env bash
# Run the node agent (the local cluster's kubelet: pods as host processes), in the foreground.
#   hack/node-agent.sh [run] [--kubeconfig PATH] [--state-dir DIR] ...   (defaults: hack/README.md)
#   hack/node-agent.sh logs NAMESPACE POD [-c CONTAINER] [-f] [-p]
#   hack/node-agent.sh cleanup | make-pvs --count 10
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$HACK_DIR/versions.sh"
PYTHON="$MO_CACHE/venv/current/bin/python"
export PYTHONPATH="$HACK_DIR${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m node_agent "$@"
