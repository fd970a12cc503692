# jarvis-memory: everything a fresh machine (Python 3.11 + pip, npm for buf) needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
NODE_PACKAGES := @bufbuild/buf@$(BUF_VERSION) @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1 lossless-json@4.3.3
NODE_STAMP := $(TOOLS)/.installed-node
PY_SOURCES := server client/jarvis_memory client/generate_sync.py tests proto/generate.py

.PHONY: setup proto check-proto run test pytest lint fuzz bench clean crash

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# buf (lint) and the Node.js gRPC client the polyglot test uses, in a folder git ignores.
$(BUF): $(NODE_STAMP)
# Remade when the Makefile (and so NODE_PACKAGES) changes.
$(NODE_STAMP): Makefile
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) $(NODE_PACKAGES)
	touch $@

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

pytest: setup $(NODE_STAMP)
	$(PY) -m pytest

## lint: ruff, mypy (strict), buf lint and breaking, and the generated-code drift check
lint: setup $(BUF)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/mypy server client/jarvis_memory
	$(BUF) lint proto
	# The API only grows: no field renumbered, retyped or removed since the previous commit.
	if git rev-parse -q --verify HEAD~1 >/dev/null; then \
		$(BUF) breaking proto --against '.git#ref=HEAD~1,subdir=proto'; fi
	$(PY) proto/generate.py --check
	$(PY) client/generate_sync.py --check

## fuzz: hostile requests on every RPC, many more than `make test` sends (JARVIS_FUZZ_EXAMPLES
## random combinations per RPC, 500 by default; JARVIS_FUZZ_SEED=<seed> replays a run)
fuzz: setup
	JARVIS_FUZZ_EXAMPLES=$${JARVIS_FUZZ_EXAMPLES:-500} $(PY) -m pytest -p no:cacheprovider -s tests/test_fuzz.py

## bench: throughput and latency against a real daemon on SQLite (bench-results.json), then the
## single-call and batch scenarios on PostgreSQL with one and two daemons sharing the database
## (bench-results-postgresql-1.json, -2.json), then remember and recall through jarvis-memory-mcp
## over stdio at 1k and 100k memories (bench-results-mcp.json)
PG_BENCH := health_check,add_memory,add_memories_500,get_memory,list_memories,append_message,set_preference,put_state,put_state_cas,insert_rows_1,insert_rows_500
bench: setup
	$(PY) tests/bench/bench.py
	$(PY) tests/bench/bench.py --backend postgresql --only $(PG_BENCH)
	$(PY) tests/bench/bench.py --backend postgresql --daemons 2 --only $(PG_BENCH)
	$(PY) tests/bench/mcp_bench.py

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

## crash: kill -9 cycles under mixed writers, many more than `make test` runs (JARVIS_CRASH_CYCLES,
## 32 by default): every acknowledged write must survive, file and indexes consistent
crash: setup
	JARVIS_CRASH_CYCLES=$${JARVIS_CRASH_CYCLES:-32} $(PY) -m pytest -p no:cacheprovider tests/test_crash.py
