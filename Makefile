# Two commands set up and use a fresh machine:
#   make run   - create .venv if missing, install, run the pipeline (dvc repro), print metrics
#   make test  - the test suite (what CI runs), in TEST_WORKERS pytest-xdist processes
#   make test-long - the opt-in long tests: the kill loop, the two-worker demonstration
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# whole test files per worker (--dist loadfile): a file's module fixture is built once;
# the longest files go first (tests/conftest.py). 1 runs the suite in one process.
TEST_WORKERS ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-long lint install

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
	$(BIN)/pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test-long: install
	$(BIN)/pytest -m long

lint: install
	$(BIN)/ruff check .
