# Two commands a new machine needs: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit versions docs bench clean

# The other supported Pythons: `make test` runs the suite on each too (without the
# cluster engines, the docs site and the upstream suites: tests/_side_versions.py),
# in its own venv (.venv-3.12, .venv-3.13). Each is taken from pyenv, else from
# PATH; one that is missing is skipped with a note, except on CI (CI=true), where
# the run fails.
VERSIONS    ?= 3.12 3.13
# The version whose run uses the channel's Python fast paths instead of the C
# ones (POLYTASK_PURE_PYTHON=1), so that the suite covers both.
PURE_ON     ?= 3.13
PYENV_ROOT  ?= $(HOME)/.pyenv

# The C extension (setup.py: the channel's fast paths) needs a C compiler; as root
# on a machine without one, it is installed with apt-get. Without it the install
# still works (the same paths in Python), and tests/test_channel.py says so.
NATIVE := setup.py src/polytask/_ipc/_lane.c

$(BIN)/python:
	@command -v cc >/dev/null || command -v gcc >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null; } || \
	  echo "no C compiler: polytask's channel will use its Python fast paths"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.base: $(BIN)/python pyproject.toml $(NATIVE)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml $(NATIVE)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.bench: $(BIN)/python pyproject.toml $(NATIVE)
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

versions:
	@set -e; for v in $(VERSIONS); do \
	  py=$$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
	  if [ -z "$$py" ] && command -v python$$v >/dev/null && python$$v -c pass 2>/dev/null; then \
	    py=$$(command -v python$$v); fi; \
	  if [ -z "$$py" ]; then \
	    if [ -n "$$CI" ]; then echo "Python $$v not found (pyenv or PATH): CI tests every version in VERSIONS" >&2; exit 1; fi; \
	    echo "== Python $$v not found (pyenv or PATH): skipped here; CI fails on it"; continue; fi; \
	  venv=.venv-$$v; \
	  [ -x $$venv/bin/python ] || { $$py -m venv $$venv && $$venv/bin/python -m pip install -q --upgrade pip; }; \
	  [ $$venv/.test -nt pyproject.toml ] && [ $$venv/.test -nt src/polytask/_ipc/_lane.c ] && [ $$venv/.test -nt setup.py ] || { $$venv/bin/pip install -q -e '.[test]' && touch $$venv/.test; }; \
	  pure=; pure_note=; if [ "$$v" = "$(PURE_ON)" ]; then pure=POLYTASK_PURE_PYTHON=1; \
	    pure_note=" ($$pure: the channel's Python fast paths)"; fi; \
	  echo "== Python $$v ($$py): the suite without the cluster engines$$pure_note"; \
	  start=$$(date +%s); \
	  env $$pure $$venv/bin/python -m pytest -p tests._side_versions -q $(PYTEST_ARGS); \
	  echo "== Python $$v: $$(( $$(date +%s) - start )) s"; \
	done

test: lint typecheck unit versions

# The documentation site at http://127.0.0.1:8000, rebuilt on every save.
# (`make test` builds it with --strict and checks its links: tests/test_docs_site.py.)
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(VENV)/.bench
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist site .mypy_cache .ruff_cache src/polytask/_ipc/*.so
