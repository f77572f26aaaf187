# Two commands matter: `make run` (the gateway locally) and `make test` (everything CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.13: on PATH, or the pyenv-installed 3.13.x when pyenv has no global 3.13.
PYTHON313 := $(shell for p in python3.13 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.13*/bin/python3.13 2>/dev/null); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed
PORT ?= 7071
FAKE_PORT ?= 18080

.PHONY: help venv deps browser run test typecheck lint clean bench smoke

help:
	@echo "make run    - run the gateway locally (func start if Core Tools exist, else the development host)"
	@echo "make test   - install everything needed, type-check (mypy) and run the whole test suite"
	@echo "make typecheck - mypy, strict for gateway/ (configured in pyproject.toml)"
	@echo "make lint   - ruff"
	@echo "make smoke URL=https://<app>.azurewebsites.net KEY=<gateway key> - smoke-test a deployed gateway"

$(STAMP_PY): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON313)" || { echo "Python 3.13 is required (python3.13 on PATH or under pyenv)"; exit 1; }
	@test -x $(PY) || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

venv: $(STAMP_PY)
deps: $(STAMP_PY) $(STAMP_NPM)

local.settings.json:
	cp local.settings.sample.json local.settings.json
	@echo "Created local.settings.json from the sample (dev key, the fake Azure OpenAI as backend)."

run: deps local.settings.json
	@$(PY) -m tests.support.run_local --port $(PORT) --fake-port $(FAKE_PORT)

test: deps browser
	$(PY) -m mypy
	$(PY) -m pytest

# Chromium for the operator console's browser test (tests/e2e/test_console.py), driven by the playwright package:
# installed with apt-get when missing and we are root; otherwise that test skips and says why. No browser download.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null || true; }; } || true
	@command -v chromium >/dev/null || echo "chromium not available: the console's browser test will skip"

typecheck: venv
	$(PY) -m mypy

lint: venv
	$(PY) -m ruff check .

# Smoke test of a deployed gateway (docs/deploy.md). The key goes through the environment, never echoed.
# Optional: MODEL=gpt-4o-mini EMBEDDING_MODEL=text-embedding-3-small.
smoke: venv
	@test -n "$(URL)" && test -n "$(KEY)" || { echo "usage: make smoke URL=https://<app>.azurewebsites.net KEY=<gateway key> [MODEL=...] [EMBEDDING_MODEL=...]"; exit 2; }
	@GATEWAY_SMOKE_KEY='$(KEY)' $(PY) scripts/smoke.py --url '$(URL)' $(if $(MODEL),--model '$(MODEL)') \
		$(if $(EMBEDDING_MODEL),--embedding-model '$(EMBEDDING_MODEL)')

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache

# Benchmark (docs/performance.md): direct, two floors, the gateway; PEERS=litellm adds LiteLLM. Bounded (< 6 min).
# wrk is installed with apt-get when missing and we are root; otherwise the asyncio client measures everything.
bench: deps
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null || true; }; } || true
	@command -v wrk >/dev/null || echo "wrk not available: the asyncio client measures every workload"
	$(PY) -m bench.run --with-limits $(if $(PEERS),--peers $(PEERS)) $(BENCH_ARGS)
