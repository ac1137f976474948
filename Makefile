# usersignals: the two commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install run up down status test test-unit test-integration bench-indexing bench-freshness bench-serving lock clean

install:
	@bash infra/install.sh

run: install
	@$(PY) -m infra.stack run

up: install
	@$(PY) -m infra.stack up $(if $(GENERATOR),--generator --rate $(GENERATOR),)

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.stack down; else echo "nothing installed, nothing running"; fi

status:
	@$(PY) -m infra.stack status

test: install
	@$(PY) -m pytest -q tests

test-unit: install
	@$(PY) -m pytest -q tests/unit

test-integration: install
	@$(PY) -m pytest -q tests/integration

bench-indexing: install
	@$(PY) -m bench.indexing

bench-freshness: install
	@$(PY) -m bench.freshness

bench-serving: install
	@$(PY) -m bench.serving

# Re-resolve the lock files from requirements/*.in (fresh throwaway environments).
lock:
	@bash infra/lock.sh

clean: down
	rm -rf var build .install-stamp
