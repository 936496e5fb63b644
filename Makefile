# keel: `make run` and `make test` are all a new machine needs (Python 3.11+ and make; `make test` also npm).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.8

.PHONY: run test setup check bench openapi asyncapi clean

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

run: setup
	$(BIN)/keel migrate
	$(BIN)/keel serve

# format, lint, types, import contracts, then every test: the same in CI
check: setup
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check node_modules/.synced
	$(BIN)/pytest --cov --cov-report=term:skip-covered -p no:cacheprovider

bench: setup
	$(BIN)/python bench/run.py

openapi: setup
	$(BIN)/keel openapi -o openapi.json

asyncapi: setup
	$(BIN)/keel asyncapi -o asyncapi.json

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .coverage htmlcov
