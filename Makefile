# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if missing and
# installs the project with the exact pins in constraints.txt (re-installs when either file changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vidprobe-installed
DEMO_DIR ?= demo-out

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidprobe demo -o $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
