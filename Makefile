# Two commands: `make run` and `make test`. Everything else they need is set up here, from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced

.PHONY: run test setup lint typecheck unit integration e2e bench clean

$(STAMP): pyproject.toml uv.lock
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"; }
	@UV_PYTHON=$(VENV)/bin/python $(UV) sync --quiet --frozen
	@touch $(STAMP)

setup: $(STAMP)
	@$(VENV)/bin/python -c "from shared.infra.kafka import ensure_kafka_jars; ensure_kafka_jars()"

run: setup
	@$(VENV)/bin/tthc up

test: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy shared services tests
	@$(VENV)/bin/pytest

unit: setup
	@$(VENV)/bin/pytest -m unit

integration: setup
	@$(VENV)/bin/pytest -m integration

e2e: setup
	@$(VENV)/bin/pytest -m e2e

clean:
	rm -rf .run
