# PowerGate: the two set-up commands are `make demo` and `make test`.
# Python packages install into .venv from PyPI; the console's front-end assets come from npm (frontend/, with a lock
# file) and are copied into src/powergate/web/static/vendor/ by `make assets`. Nothing is fetched at run time.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install assets demo test check lint types format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) assets

# Front-end assets (Chart.js, htmx, ...) from the npm registry, pinned by frontend/package-lock.json.
assets:
	bash frontend/build.sh

# Installs everything and runs the platform on its embedded defaults with a demo organisation and virtual meters.
demo: install
	$(VENV)/bin/powergate demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

types: install
	$(VENV)/bin/mypy

check: lint types test

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(PY) -m bench.run --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
