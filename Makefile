# Two commands set up and use a fresh machine:
#   make run   - create .venv if missing, install, run the pipeline (dvc repro), print metrics
#   make test  - the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

run: install
	dvc repro
	fer metrics --reports reports

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
