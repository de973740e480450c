# The two commands of the README: `make repro` (set up, then run the pipeline) and `make test`.
# Each sets up `.venv` from nothing: torch first from the pinned CPU build (an unpinned torch pulls
# GBs of CUDA), then the project with the exact pins of requirements-lock.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup repro test lint bench clean-venv repro-%

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# dvc.yaml's commands call `distillery`, so the venv's bin goes first on PATH.
repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# An optional scenario (scenarios/<name>/dvc.yaml, its own params.yaml and outputs), e.g. `make repro-lm`.
repro-%: setup
	cd scenarios/$* && PATH="$(abspath $(BIN)):$$PATH" $(abspath $(BIN))/dvc repro

# The test files run on every core (pytest-xdist); a file stays on one worker (--dist loadfile), so its
# module fixtures (a dvc repo, a Slurm, a Dask cluster) are built once.
test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

# ruff: the formatter and the linter configured in pyproject.toml ([tool.ruff]).
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: setup
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
