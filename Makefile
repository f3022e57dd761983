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
	@printf "  \033[36m%-22s\033[0m %s\n" "reproduce-<row>" "One paper row: $(REPRO_ROWS)"
	@echo "  Knobs: GPUS=N DEVICES=N RESUME=1 ARGS=\"...\" SELECT=final|val DATA_DIR=... MODEL_DIR=... PRECISION=..."
	@echo "         LOGGER=csv|tensorboard|wandb SMOKE=1"

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

# ---------------------------------------------------------------------------------------------------------
# The embedded offline default and benchmarks
.PHONY: demo
DEMO_ARGS ?=
demo: $(STAMP) ## Routing head vs linear probes on held-out BBC News articles (offline, 2 CPU cores; DEMO_ARGS=--help).
	THP_MEM_ALLOC_ENABLE=1 $(PY) -m heinsen_zoo.demo $(DEMO_ARGS)  # huge pages: ~12x fewer page faults per step

BENCH_ARGS ?= --quick
.PHONY: bench bench-gpu
bench: $(STAMP) ## Routing benchmark, ours vs the original module (BENCH_ARGS="--sizes cpu": README table; "--device cuda": GPU).
	$(PY) reproduce/benchmarks/bench_routing.py $(BENCH_ARGS)

bench-gpu: $(STAMP) ## GPU routing check (< 5 min on one H200): gpu-marked routing tests + the GPU ours-vs-original table.
	PY=$(PY) bash reproduce/benchmarks/gpu_routing_check.sh

# ---------------------------------------------------------------------------------------------------------
# Reproductions of the papers' published numbers (reproduce/expected.yaml). Knobs:
#   GPUS=N (DDP on N GPUs; the config's batch stays the paper's effective batch, each GPU loads batch / N)
#   DEVICES=N (device-agnostic: with SMOKE=1 N CPU processes over DDP/gloo, else N devices like GPUS=N)
#   RESUME=1 (continue each row from <RESULTS_DIR>/runs/<row>/checkpoints/last.ckpt, the latest epoch)
#   ARGS="..." (extra LightningCLI overrides, e.g. ARGS="--trainer.num_nodes 2 --trainer.max_epochs 1")
#   SELECT=final|val (tested head: final, as the papers; val = best val/acc on a split carved from train)
#   DATA_DIR=data  MODEL_DIR=<local weights>  PRECISION=32-true|bf16-mixed|16-mixed
#   LOGGER=csv|tensorboard|wandb  SMOKE=1 (tiny stand-ins on CPU: checks the chain, reproduces nothing)
GPUS ?= 1
DEVICES ?=
RESUME ?=
ARGS ?=
SELECT ?= final
DATA_DIR ?= data
MODEL_DIR ?=
PRECISION ?=
LOGGER ?= csv
SMOKE ?=
RESULTS_DIR ?= results
REPRO := $(PY) -m heinsen_zoo.reproduction.runner --gpus $(GPUS) --data-dir $(DATA_DIR) --logger $(LOGGER) \
	--results-dir $(RESULTS_DIR) --select $(SELECT) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR)) \
	$(if $(PRECISION),--precision $(PRECISION)) $(if $(DEVICES),--devices $(DEVICES)) $(if $(RESUME),--resume) \
	$(if $(SMOKE),--smoke) $(if $(ARGS),--args="$(ARGS)")

.PHONY: reproduce-vision reproduce-text reproduce-2019
reproduce-vision: $(STAMP) ## Reproduce ImageNet-1k, CIFAR-10, CIFAR-100 (2022) and report.
	$(REPRO) --group vision
reproduce-text: $(STAMP) ## Reproduce IMDB, SST-5, then SST-2 from the SST-5 head (2022) and report.
	$(REPRO) --group text
reproduce-2019: $(STAMP) ## Reproduce smallNORB, SST-5, SST-2 (2019 capsules) and report.
	$(REPRO) --group 2019

# The rows are those of src/heinsen_zoo/configs/rows.yaml (+ $$HEINSEN_ROWS files): listed here for `make help`;
# any reproduce-<row> goes to the runner, which names the known rows when <row> is not one.
ROWS_FILE := src/heinsen_zoo/configs/rows.yaml
REPRO_ROWS := $(shell sed -n 's/^  \([A-Za-z0-9_.-]*\):[[:space:]]*$$/\1/p' $(ROWS_FILE) $(subst :, ,$(HEINSEN_ROWS)) 2>/dev/null)
reproduce-%: $(STAMP) ## One paper row (e.g. make reproduce-cifar10).
	$(REPRO) --rows $*

.PHONY: rows
rows: ## Print the reproduction rows (configs/rows.yaml + $HEINSEN_ROWS), one a line.
	@printf '%s\n' $(REPRO_ROWS)

.PHONY: gpu-check
gpu-check: $(STAMP) ## On a machine with one CUDA GPU (< 5 min): gpu tests, bf16 smoke rows, the demo; prints a table.
	$(PY) -m heinsen_zoo.reproduction.gpu_check

.PHONY: report
report: $(STAMP) ## Render the reproduction table from results/ (fails on an out-of-tolerance number).
	$(PY) -m heinsen_zoo.reproduction.runner --report-only --results-dir $(RESULTS_DIR) $(if $(SMOKE),--smoke)
