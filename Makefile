# Two commands: `make run` and `make test`. Everything else they need is set up here, from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced

.PHONY: run test setup tools lint typecheck unit integration e2e bench soak clean

$(STAMP): pyproject.toml uv.lock
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"; }
	@UV_PYTHON=$(VENV)/bin/python $(UV) sync --quiet --frozen
	@touch $(STAMP)

setup: $(STAMP)
	@$(VENV)/bin/python -c "from shared.infra.kafka import ensure_kafka_jars; ensure_kafka_jars()"

# Debian's Chromium renders the pages in the end-to-end tests; Debian's Prometheus brings promtool for the
# alert and recording rules (installed as root, as on CI).
tools:
	@command -v chromium >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium prometheus >/dev/null; }

run: setup
	@$(VENV)/bin/tthc up

test: setup tools lint typecheck
	@$(VENV)/bin/pytest

lint: setup
	@$(VENV)/bin/ruff check .

typecheck: setup
	@$(VENV)/bin/mypy shared services tests bench

unit: setup tools
	@$(VENV)/bin/pytest -m unit

integration: setup
	@$(VENV)/bin/pytest -m integration

e2e: setup tools
	@$(VENV)/bin/pytest -m e2e

# Measurements, not tests: results land in bench/results/ (see docs/performance.md).
bench: setup
	@$(VENV)/bin/python -m bench.resolution_throughput
	@$(VENV)/bin/python -m bench.metrics_memory
	@$(VENV)/bin/python -m bench.metrics_takeover
	@$(VENV)/bin/python -m bench.notify_delivery
	@$(VENV)/bin/python -m bench.pipeline_floor --dossiers 40000 --instances 2
	@$(VENV)/bin/python -m bench.end_to_end --rate 1000 --seconds 60
	@$(VENV)/bin/python -m bench.end_to_end --max --seconds 60

# Fault injection for longer: every service SIGKILLed in turn, the broker and PostgreSQL restarted, round after
# round under load for TTHC_SOAK_SECONDS (default 600), then the same reconciliation as the suite's chaos test;
# then as long with each broker of a three-node cluster SIGKILLed in turn.
soak: setup
	@TTHC_SOAK_SECONDS=$${TTHC_SOAK_SECONDS:-600} $(VENV)/bin/pytest tests/e2e/test_chaos.py -s

clean:
	rm -rf .run
