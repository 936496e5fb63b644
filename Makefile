# keel: `make run` and `make test` are all a new machine needs (Python 3.11+ and make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8

TS_CLIENT := clients/typescript

.PHONY: run test setup check bench openapi clients clients-typescript clean

# the venv is rebuilt only when the lock changes; uv itself lives in the venv (kept by --inexact)
$(VENV)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "keel needs Python 3.11 or newer as $(PYTHON) (make PYTHON=python3.12 ...)"; exit 1; }
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet uv==$(UV_VERSION); }
	$(BIN)/uv sync --frozen --inexact --quiet
	@touch $@

setup: $(VENV)/.synced

# the TypeScript SDK's toolchain (generator, tsc, ws, eventsource), reinstalled only when its lock changes
$(TS_CLIENT)/node_modules/.synced: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	npm ci --prefix $(TS_CLIENT) --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	$(BIN)/keel migrate
	$(BIN)/keel serve

# format, lint, types, import contracts, then every test: the same in CI
check: setup
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check $(TS_CLIENT)/node_modules/.synced
	$(BIN)/pytest --cov --cov-report=term:skip-covered -p no:cacheprovider

bench: setup
	$(BIN)/python bench/run.py

openapi: setup
	$(BIN)/keel openapi -o openapi.json

clients: clients-typescript

# regenerate the committed TypeScript client from the document keel serves
clients-typescript: setup $(TS_CLIENT)/node_modules/.synced
	$(BIN)/keel openapi -o $(TS_CLIENT)/openapi.json
	cd $(TS_CLIENT) && node_modules/.bin/openapi-ts --silent

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .coverage htmlcov $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist
