# Heinsen routing model zoo. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets with a one-line description each.
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sort -u | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[zoo,dev]'
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create/refresh .venv with the package and all dependencies (offline-safe pins).

.PHONY: test
test: $(STAMP) ## Run the test suite (fast tests; slow and gpu are deselected).
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: test-all
test-all: $(STAMP) ## Run every test, slow ones included (gpu tests skip without CUDA).
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## Lint with ruff.
	$(PY) -m ruff check src tests reproduce

.PHONY: format
format: $(STAMP) ## Format with ruff.
	$(PY) -m ruff format src tests reproduce

.PHONY: clean
clean: ## Remove caches and run outputs (keeps .venv).
	rm -rf .pytest_cache .ruff_cache runs lightning_logs results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
