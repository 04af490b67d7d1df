# Set-up is two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install install-test test demo bench clean serve deploy browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the project's modules are compiled as pip compiles a regular install's: an editable install's are
# compiled on first import, and at every start where PYTHONDONTWRITEBYTECODE is set (Docker images and
# this machine set it): 0.15-0.2 s of each command's start here
PACKAGES := blocks tasks flows deployments sandbox  # pyproject.toml's package-dir (tests/test_packaging.py)
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	$(BIN)/python -m compileall -q $(PACKAGES)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed  ## .venv with the mongo-migrate CLI

install-test: $(VENV)/.installed-test

# two workers (pytest-xdist): most of a test's time is spent waiting on mongods, Prefect and CLI
# processes, so two at once fit two cores (tests/conftest.py says how the tests are handed out)
TEST_WORKERS ?= 2
test: install-test browser  ## the whole suite, against real mongods
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

demo: install-test  ## local source and destination mongods, sample data, a migration
	$(BIN)/mongo-migrate demo

# the UI tests drive Debian's chromium; installed once (apt-get, as root) when missing
browser:
	@sh tests/ensure_chromium.sh

SERVE_PORT ?= $(or $(PREFECT_SERVER_API_PORT),4200)
serve: install  ## Prefect server + UI on SERVE_PORT, a worker, the blocks and deployments
	$(BIN)/python -m mongo_migrate.deployments.serve --port $(SERVE_PORT)

deploy: install  ## blocks and deployments on the server PREFECT_API_URL names
	$(BIN)/python -m mongo_migrate.deployments.deploy $(DEPLOY_ARGS)

bench: install-test
	$(BIN)/python bench/full_copy.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
