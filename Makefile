# migration-operator. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
MO_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/migration-operator
VENV := $(MO_CACHE)/venv/current
PY := $(VENV)/bin/python
BIN_DIR = $(shell bash -c 'source hack/versions.sh && echo $$BIN_DIR')
CLUSTER_KUBECONFIG := $(MO_CACHE)/cluster/kubeconfig
# The suite talks to whatever KUBECONFIG points at; by default, the local cluster.
export KUBECONFIG ?= $(CLUSTER_KUBECONFIG)
PYTEST_ARGS ?=
# e2e in pytest-xdist workers, each with its own operator release and namespace prefix (tests/e2e/conftest.py);
# 0 runs them in one process. Two on this 2-core machine: 77 tests in 18.1 min against 26.3 min in one (measured
# quiet, 2026-12-02); the tests wait on conditions, so a slower machine is slower, not flaky.
E2E_WORKERS ?= 2

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venv
venv: ## create the project virtualenv (cached outside the checkout) and install this checkout into it
	@bash hack/venv.sh >/dev/null

.PHONY: tools
tools: ## build etcd, the Kubernetes control plane, kubelet, kube-proxy, kubectl, crictl and helm from the Go module proxy (cached)
	@bash hack/build-k8s.sh all

.PHONY: cluster
cluster: venv ## start the local cluster (control plane, kubelet+containerd node, CoreDNS, storage, registry+images, PostgreSQL); idempotent
	@bash hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local cluster (keeps the cache)
	@bash hack/cluster.sh down

.PHONY: cluster-status
cluster-status: ## show what of the local cluster runs
	@bash hack/cluster.sh status

.PHONY: cluster-reset
cluster-reset: ## stop the local cluster and wipe its state
	@bash hack/cluster.sh reset

.PHONY: images
images: ## build the images (operator, gateway, migrations, stand-ins) into the local registry (cached by content)
	@bash hack/build-images.sh

.PHONY: crd
crd: venv ## regenerate the CRD from the pydantic models, and the chart and kustomize copies
	@$(PY) -m migration_operator.crd > crds/dbops.io_databasemigrations.yaml
	@bash hack/sync-chart-crd.sh

.PHONY: lint
lint: venv ## ruff and mypy --strict
	@$(VENV)/bin/ruff check operator tests hack examples
	@$(VENV)/bin/mypy
	@$(VENV)/bin/mypy examples/parking/gateway/gateway.py

.PHONY: test-unit
test-unit: venv ## unit tests of pure logic (no cluster)
	@$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

.PHONY: test-db
test-db: ## the backup/restore Job scripts run for real against the local PostgreSQL (every database shape)
	@$(PY) -m pytest tests/db -q $(PYTEST_ARGS)

.PHONY: test-lua
test-lua: ## Argo CD health and action Lua tests, evaluated by gopher-lua (Argo CD's engine)
	@cd argocd/luatest && go test ./... -count=1

.PHONY: test-chart
test-chart: ## helm lint and helm template
	@bash hack/test-chart.sh

.PHONY: test-cluster
test-cluster: ## checks of the local cluster itself: Jobs, volumes, fsGroup, RBAC, PodSecurity, OOM kills, Service DNS + TLS, exec, logs -f, kubelet restart
	@$(PY) -m pytest tests/cluster -q $(PYTEST_ARGS)

# On the local cluster with a real node (its kubelet's configuration beside $KUBECONFIG, the local registry
# answering), the images the suites run are built first (cached by inputs: seconds when nothing changed). Another
# cluster (kind: hack/test-kind.sh loads its own images) is left alone.
LOCAL_IMAGES = migration-operator parking-gateway
define build_local_images
	@if [[ -f "$$(dirname "$$KUBECONFIG")/node/kubelet.yaml" ]] && curl -sf -o /dev/null --max-time 3 http://127.0.0.1:5000/v2/; then \
		bash hack/build-images.sh $(LOCAL_IMAGES); \
	fi
endef

.PHONY: test-e2e
test-e2e: ## end-to-end tests of the operator against $$KUBECONFIG (real PostgreSQL and Flyway)
	$(build_local_images)
	@$(PY) -m pytest tests/e2e -q -n $(E2E_WORKERS) --dist worksteal $(PYTEST_ARGS)

.PHONY: test-install
test-install: ## the Helm chart on $$KUBECONFIG: operator as a pod, RBAC bounds, apply -k + wait, restricted Jobs
	$(build_local_images)
	@$(PY) -m pytest tests/install -q $(PYTEST_ARGS)

# The fault suite (issue 14): every phase x fault cell FAULT_TRIALS times (default 1; 20 for the README's matrix, run by
# hand like a benchmark, in rounds; FAULT_BUDGET_MINUTES=110 stops starting trials after that, and
# `python -m tests.faults.matrix fault-results/trials-*.jsonl` adds sittings up); FAULT_SEED replays a session's draws,
# FAULT_KINDS=operator-kill,... runs only those faults; FAULT_TOP_UP=1 only what FAULT_RESULTS_DIR's sittings lack.
# Its operator watches $$MO_E2E_PREFIX-* (default flt-*), apart from the e2e suite's. The matrix is printed at the end
# and written to fault-results/.
.PHONY: test-faults
test-faults: ## fault injection: operator/API server/PostgreSQL/kubelet killed, volume full, database cut off, app scaled, in every phase (FAULT_TRIALS, FAULT_SEED)
	$(build_local_images)
	@MO_E2E_PREFIX=$${MO_E2E_PREFIX:-flt} $(PY) -m pytest tests/faults -q $(PYTEST_ARGS)

.PHONY: test-faults-smoke
test-faults-smoke: ## the fault suite's smoke slice: one trial per fault kind in a random phase (seed printed)
	$(build_local_images)
	@FAULT_SMOKE=1 MO_E2E_PREFIX=$${MO_E2E_PREFIX:-flt} $(PY) -m pytest tests/faults -q $(PYTEST_ARGS)

.PHONY: test
test: cluster lint test-unit test-db test-lua test-chart test-cluster test-e2e test-install test-faults-smoke ## everything: brings the local cluster up if needed

.PHONY: test-kind
test-kind: ## the same e2e suite on a kind cluster (needs Docker: not on these machines)
	@bash hack/test-kind.sh

.PHONY: demo
demo: cluster ## end to end on the local cluster: install the chart, deploy the parking example, migrate, narrate
	@bash hack/demo.sh

.PHONY: bench
bench: venv ## benchmarks: downtime vs a hand-written script at 1M and 20M rows (BENCH_ROWS), throughput, latencies, memory
	@$(PY) -m tests.bench

.PHONY: bench-quick
bench-quick: venv ## the same benchmark scaled down (200k rows, 1 round, 2 small runs, no 100-run RSS): ~3 min
	@BENCH_ROWS=$${BENCH_ROWS:-200000} BENCH_ROUNDS=$${BENCH_ROUNDS:-1} BENCH_REACTION_RUNS=$${BENCH_REACTION_RUNS:-2} \
		BENCH_RSS=$${BENCH_RSS:-0} $(PY) -m tests.bench

.PHONY: clean
clean: ## remove build leftovers of this checkout (not the cache)
	@rm -rf .pytest_cache .mypy_cache .ruff_cache dist build
