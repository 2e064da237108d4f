# Two set-up commands: `make reproduce` (the whole pipeline, default profile) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow" -n 2
PROFILE ?= default

.PHONY: setup reproduce smoke test test-all lab clean-venv

setup: $(STAMP)

# Rebuilt only when the pins change: a no-op when up to date.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Both set `profile` in params.yaml (dvc exp run -S) and reproduce, so params.yaml always names what the
# workspace holds; finished stages are not recomputed, and switching back restores outputs from DVC's cache.
reproduce: setup
	$(BIN)/dvc exp run -S profile=$(PROFILE)

smoke: setup
	$(BIN)/dvc exp run -S profile=smoke

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -n 2

lab: setup
	$(BIN)/jupyter lab

clean-venv:
	rm -rf $(VENV)
