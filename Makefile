# keel: `make run` and `make test` are all a new machine needs (Python 3.11+ and make; `make test` also npm).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8
# the Python SDK's hand-written half is held to keel's rules; its generated half (keel_client) is not
CODE   := src tests bench deploy clients/python/keel_client_realtime clients/python/generator

TS_CLIENT := clients/typescript

.PHONY: run test setup check bench soak openapi asyncapi cluster clients clients-python clients-typescript clean

# the venv is rebuilt only when the lock changes; uv itself lives in the venv (kept by --inexact)
$(VENV)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "keel needs Python 3.11 or newer as $(PYTHON) (make PYTHON=python3.12 ...)"; exit 1; }
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet uv==$(UV_VERSION); }
	$(BIN)/uv sync --frozen --inexact --quiet
	@touch $@

# test tooling from npm (the AsyncAPI JSON Schemas), reinstalled only when its lock changes
node_modules/.synced: package.json package-lock.json
	@command -v npm >/dev/null || { echo "make test needs npm (Node.js 18 or newer)"; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(VENV)/.synced

# the TypeScript SDK's toolchain (generator, tsc, ws, eventsource), reinstalled only when its lock changes
$(TS_CLIENT)/node_modules/.synced: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	npm ci --prefix $(TS_CLIENT) --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	$(BIN)/keel migrate
	$(BIN)/keel serve

# format, lint, types, import contracts, then every test (the 30 slowest named at the end): the same in CI
check: setup
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check node_modules/.synced $(TS_CLIENT)/node_modules/.synced
	$(BIN)/pytest -n 2 --dist worksteal --cov --cov-report=term:skip-covered -p no:cacheprovider --durations=30

bench: setup
	$(BIN)/python bench/run.py

# 3 minutes of mixed load (REST reads and writes, 500 WebSockets, 100 SSE streams) through nginx on two instances on
# PostgreSQL (database keel_soak, recreated) and Redis (database 13, flushed): no error, no lost or duplicated message,
# RSS growth < 10 % after warm-up. Not part of `make test`. Needs Debian's nginx.
soak: setup
	$(BIN)/python bench/soak.py

# nginx in front of two keel instances on PostgreSQL and Redis (DATABASE_URL, REDIS_URL), as deploy/ describes; Ctrl-C
# stops it all. Needs Debian's nginx.
cluster: setup
	$(BIN)/python deploy/cluster.py

openapi: setup
	$(BIN)/keel openapi -o openapi.json

asyncapi: setup
	$(BIN)/keel asyncapi -o asyncapi.json

# the SDKs generated from the OpenAPI document; a test fails while a committed one is stale
clients: clients-python clients-typescript

clients-python: setup
	$(BIN)/python clients/python/generator/generate.py

clients-typescript: setup $(TS_CLIENT)/node_modules/.synced
	$(BIN)/keel openapi -o $(TS_CLIENT)/openapi.json
	cd $(TS_CLIENT) && node_modules/.bin/openapi-ts --silent

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .coverage htmlcov $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist
