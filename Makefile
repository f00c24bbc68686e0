# bento-rollout — every target installs what it needs and is idempotent.
#   make demo   the local progressive-rollout demo (trains, brings the stack up, runs 5 rollouts)
#   make demo-cluster  a good and a faulty release on a single-node cluster, through Traefik
#   make test   unit + integration (real bentoml/nginx/prometheus/locust) + e2e (real kube-apiserver)
#   make lint   ruff + import layering
#   make bench  serving, router, rollback and judge benchmarks -> bench/results/*.json + summary.md
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYS_STAMP := .cache/system.installed
export BENTOML_HOME ?= $(CURDIR)/.cache/bentoml
export ROLLOUT_HOME ?= $(CURDIR)/.state
export PATH := $(CURDIR)/.cache/bin:$(PATH)

.PHONY: setup system venv tools checkov images models demo demo-cluster test test-unit test-integration test-e2e lint bench clean

setup: system venv tools checkov

system: $(SYS_STAMP)
$(SYS_STAMP): .ci/install-system.sh
	.ci/step 'apt: Debian packages (nginx, Prometheus, containerd, ...)' bash .ci/install-system.sh
	@mkdir -p $(dir $@) && touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	.ci/step "pip: the project's Python packages into $(VENV)" $(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Go-built tools (kube-apiserver, etcd, helm, skaffold) for the Kubernetes tier, cached in .cache/bin
tools: $(SYS_STAMP)
	bash tests/k8s/build-tools.sh

# checkov (the chart's security scan, tests/e2e/test_chart_security.py) in a venv of its own: its
# pins (packaging<24, boto3, networkx 2.x...) would downgrade the project's own dependencies
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := .cache/checkov/installed-$(CHECKOV_VERSION)
checkov: $(CHECKOV_STAMP)
$(CHECKOV_STAMP):
	test -x .cache/checkov/bin/python || $(PY) -m venv .cache/checkov
	.cache/checkov/bin/pip install -q --upgrade pip
	.ci/step 'checkov: the chart scanner $(CHECKOV_VERSION) into .cache/checkov (once)' \
	  .cache/checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

# the project's own images (the Bento, the controller) built with buildah into .cache/images, for
# the tests that run them on real pods; `make test` builds them first (a test would build what is
# missing too, but inside a fixture with no progress); an unchanged image takes no time
images: system venv
	.ci/step 'images: the Bento and controller images (buildah) into .cache/images' $(BIN)/python -m tests.k8s.buildah_images

models: venv
	.ci/step 'models: training the scikit-learn models into $(BENTOML_HOME)' $(BIN)/python -m bentos.train --all

# the local demo needs no Kubernetes toolchain (no Go builds, no checkov): packages and the venv only
demo: system venv
	$(BIN)/rollout demo

# the same rollouts on a single-node cluster (KServe, Traefik as the Gateway API data plane, the
# operator in its pod): everything the Kubernetes tier needs, then tests/k8s/cluster_rollouts.py
demo-cluster: setup images
	$(BIN)/python -m tests.k8s.cluster_rollouts

# images first (cold: minutes, with progress), so that no test fixture builds one silently
test: setup images
	$(BIN)/python -m pytest tests/unit tests/integration tests/e2e

test-unit: venv
	$(BIN)/python -m pytest tests/unit

# real nginx, Prometheus, bentoml and locust: the Debian packages and the venv
test-integration: system venv
	$(BIN)/python -m pytest tests/integration

# the Kubernetes tier (kube-apiserver, the single-node cluster, helm, checkov): everything
test-e2e: setup images
	$(BIN)/python -m pytest tests/e2e

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf .state reports bench/results
