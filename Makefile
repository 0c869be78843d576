# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if missing and
# installs the project with the exact pins in constraints.txt (re-installs when either file changes).
# `make lint`: ruff (lint + format check) over the repository and mypy over pipeline/ (settings in pyproject.toml).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vidprobe-installed
DEMO_DIR ?= demo-out

.PHONY: demo test lint install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidprobe demo -o $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
