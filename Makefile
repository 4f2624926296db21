# Two commands: `make run` and `make test`. Everything else they need is set up here, from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced

.PHONY: run test setup browser lint typecheck unit integration e2e bench clean

$(STAMP): pyproject.toml uv.lock
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"; }
	@UV_PYTHON=$(VENV)/bin/python $(UV) sync --quiet --frozen
	@touch $(STAMP)

setup: $(STAMP)
	@$(VENV)/bin/python -c "from shared.infra.kafka import ensure_kafka_jars; ensure_kafka_jars()"

# Debian's Chromium renders the look-up page in the end-to-end tests (installed as root, as on CI).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: setup
	@$(VENV)/bin/tthc up

test: setup browser
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy shared services tests bench
	@$(VENV)/bin/pytest

unit: setup
	@$(VENV)/bin/pytest -m unit

integration: setup
	@$(VENV)/bin/pytest -m integration

e2e: setup browser
	@$(VENV)/bin/pytest -m e2e

clean:
	rm -rf .run
