# One entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed ## create .venv and install Sluice with its test and dev tools

run: install ## serve on :8080 with embedded Postgres and Valkey and a demo tenant
	$(BIN)/sluice serve --demo

system-deps: ## promtool, Prometheus and wrk from Debian's packages (tests/deploy, bench/); a no-op when present
	bash .ci/install-system-deps

test: install system-deps ## run the whole test suite (real Postgres and Redis: embedded unless SLUICE_TEST_*_URL are set)
	$(BIN)/pytest -n auto $(PYTEST_ARGS)

lint: install ## ruff, mypy (strict) and the import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## gateway overhead against direct-to-upstream (needs wrk)
	$(BIN)/python bench/overhead.py

check: lint test ## what CI runs

.PHONY: help install system-deps run test lint fmt bench check
