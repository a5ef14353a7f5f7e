# Two commands a new machine needs: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.bench: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/polytask demo

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench docs/_site
	$(BIN)/ruff format --check src

typecheck: $(VENV)/.dev
	$(BIN)/mypy

unit: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The documentation site at http://127.0.0.1:8000, rebuilt on every save.
# (`make test` builds it with --strict and checks its links: tests/test_docs_site.py.)
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(VENV)/.bench
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist site .mypy_cache .ruff_cache
