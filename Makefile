# The two commands a fresh clone needs: `make demo` and `make test`. Each creates .venv when it
# is missing and installs the project with its pinned dependencies first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: demo demo-full test lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-core: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-core

install: $(VENV)/.installed-core
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed-core
	$(BIN)/lwm demo --config configs/demo.yaml

# The same recipe with the budget every learning bar needs (about 45 minutes on 2 cores).
demo-full: $(VENV)/.installed-core
	$(BIN)/lwm demo --config configs/demo-full.yaml

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check lwm ringattention scripts tests

test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) build *.egg-info
