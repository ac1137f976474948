# usersignals: the two commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1
# Each test target's temporary files in a directory of its own (emptied when it starts): pytest's
# default numbered directories are shared by every run of the user, and a second pytest run (unit
# tests in another terminal) deletes the older ones, with the servers' data under a running suite.
TEST_TMP := $(or $(TMPDIR),/tmp)/usersignals-tests-$(shell printf %s "$(CURDIR)" | cksum | cut -d' ' -f1)

.PHONY: install run up down status test test-unit test-integration bench-indexing bench-freshness bench-serving \
	bench-offline bench-analytics bench-retrain bench-training test-faults soak audit airflow trino trino-cli lake-migrate lock \
	jars-lock clean

install:
	@bash infra/install.sh

run: install
	@$(PY) -m infra.stack run $(if $(TRINO),--trino,)

up: install
	@$(PY) -m infra.stack up $(if $(GENERATOR),--generator --rate $(GENERATOR),) $(if $(TRINO),--trino,)

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.stack down; else echo "nothing installed, nothing running"; fi

status:
	@$(PY) -m infra.stack status

test: install
	@mkdir -p $(TEST_TMP) && $(PY) -m pytest -q tests --basetemp=$(TEST_TMP)/all

test-unit: install
	@mkdir -p $(TEST_TMP) && $(PY) -m pytest -q tests/unit --basetemp=$(TEST_TMP)/unit

test-integration: install
	@mkdir -p $(TEST_TMP) && $(PY) -m pytest -q tests/integration --basetemp=$(TEST_TMP)/integration

# kill -9 each part of the running stack under load; last line {"bench": "faults", ...}
test-faults: install
	@$(PY) -m bench.faults

# 30 minutes at 150 home-feed requests/s + 2k events/s; last line {"bench": "soak", ...}
soak: install
	@$(PY) -m bench.soak

# every locked dependency against known vulnerabilities (pip-audit; needs its vulnerability service)
audit:
	@bash infra/audit.sh

bench-indexing: install
	@$(PY) -m bench.indexing

bench-freshness: install
	@$(PY) -m bench.freshness

bench-serving: install
	@$(PY) -m bench.serving

bench-offline: install
	@$(PY) -m bench.offline

bench-analytics: install
	@$(PY) -m bench.analytics

bench-retrain: install
	@$(PY) -m bench.retrain

# the lake path of training-examples on 150k generated events; last line {"bench": "training", ...}
bench-training: install
	@$(PY) -m bench.training

# Airflow (scheduler, API server, UI) on USERSIGNALS_AIRFLOW_PORT (8080), DAGs from dags/.
airflow: install lake-migrate
	@echo "Airflow UI: http://127.0.0.1:$${USERSIGNALS_AIRFLOW_PORT:-8080}  user admin, password: see var/airflow/simple_auth_manager_passwords.json.generated"
	@$(PY) -m infra.airflow standalone

# Trino 476 alone (one node, on Temurin 25) over the lake's catalog, on USERSIGNALS_TRINO_PORT
# (8081); starts the stack's PostgreSQL if it is not up. Ctrl-C stops it. Config: infra/trino/local/.
trino: install
	@$(PY) -m infra.trino

# The Trino CLI on that server, catalog lake, schema usersignals; interactive, or one statement:
# make trino-cli SQL='SELECT count(*) FROM raw_events'
trino-cli: install
	@$(PY) -m infra.trino cli $(if $(SQL),--execute "$(SQL)",)

# Create or evolve the Iceberg tables (idempotent; the local stack runs it on start).
lake-migrate: install
	@$(PY) -m iceberg_schemas

# hadolint (requirements/main.lock) on every image's Dockerfile (infra/images/), failing on warnings;
# tests/unit/test_images.py runs it too, with the manifests' image names and the pinned versions.
.PHONY: images-lint
images-lint: install
	@.venv/bin/hadolint --failure-threshold warning infra/images/*.Dockerfile && echo "infra/images: hadolint clean"

# The Kubernetes manifests as a cluster gets them (kustomize, built by `make install`): the base
# (infra/k8s/base), or an overlay with one cluster's addresses: make k8s-render OVERLAY=example
.PHONY: k8s-render
k8s-render:
	@bash infra/install.sh >&2   # its progress on stderr: stdout is the YAML (| kubectl apply -f -)
	@build/bin/kustomize build --load-restrictor LoadRestrictionsNone \
	  infra/k8s/$(if $(OVERLAY),overlays/$(OVERLAY),base)

# Re-record infra/jars.sha256 after a deliberate change of infra/pom.xml.
jars-lock:
	@bash infra/jars.sh lock

# Re-resolve the lock files from requirements/*.in (fresh throwaway environments).
lock:
	@bash infra/lock.sh

clean: down
	rm -rf var build .install-stamp

# Render the pages generated from the code: docs/reference/configuration.md, docs/reference/metrics.md,
# docs/benchmarks.md (tests/unit/test_docs.py fails when the committed ones drift). Standard library only.
.PHONY: docs
docs:
	@$(if $(wildcard $(PY)),$(PY),python3) -m infra.docs
