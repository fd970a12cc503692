# jarvis-memory: everything a fresh machine (Python 3.11 + pip, npm for buf) needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
PY_SOURCES := server client/jarvis_memory tests proto/generate.py

.PHONY: setup proto check-proto run test pytest lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

## proto: regenerate the Python stubs in client/jarvis/ from proto/
proto: setup
	$(PY) proto/generate.py

## check-proto: fail when the committed stubs differ from what proto/ generates
check-proto: setup
	$(PY) proto/generate.py --check

## run: start the daemon on 127.0.0.1:50051 with its database in ./data/jarvis.db
run: setup
	$(BIN)/jarvis-memory serve

## test: lint, then the whole test suite against real daemons
test: lint pytest

pytest: setup
	$(PY) -m pytest

## lint: ruff, mypy (strict), buf lint, and the generated-code drift check
lint: setup $(BUF)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/mypy server client/jarvis_memory
	$(BUF) lint proto
	$(PY) proto/generate.py --check

## bench: throughput and latency against a real daemon; writes bench-results.json
bench: setup
	$(PY) tests/bench/bench.py

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
