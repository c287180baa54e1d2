# Two commands for a fresh machine: `make run` (the gateway) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch for `tandem distill`, CPU build (override with e.g. TORCH_SPEC=torch on a GPU machine).
TORCH_SPEC ?= torch==2.13.0+cpu
# llama-cpp-python compiles llama.cpp on first install: use every core.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install run test lint unit integration bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[dev,optimize]'
	touch $@

run: install
	$(BIN)/tandem serve

lint: install
	$(BIN)/ruff check tandem tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

unit: install
	$(BIN)/python -m pytest -q -m "not integration"

integration: install
	$(BIN)/python -m pytest -q -m integration

bench: install
	$(BIN)/tandem bench runtime --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
