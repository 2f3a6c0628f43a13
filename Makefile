# FLAM video pipeline. `make help` lists the targets.
# Infrastructure knobs are Make variables; hyperparameters live in configs/ and ARGS overrides.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
# e.g. TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124" for a GPU box
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

DATASET     ?= multigrid
OUT         ?= data
EPISODES    ?=
WORKERS     ?=
CLIP_LEN    ?=
ARGS        ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint format ingest bench-ingest clean-data

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install torch ($(TORCH_SPEC)) and this package with [dev] extras

test: $(STAMP)  ## run the default test suite (fast; no GPU, no network)
	$(PY) -m pytest -q

test-all: $(STAMP)  ## run every test including the slow ones
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)  ## ruff check + format check + Dockerfile lint (hadolint)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/*.Dockerfile

format: $(STAMP)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

ingest: $(STAMP)  ## render/extract DATASET into clip shards under OUT (EPISODES= WORKERS= CLIP_LEN= ARGS=)
	$(PY) -m ingest $(DATASET) --out $(OUT) \
		$(if $(EPISODES),--episodes $(EPISODES)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(CLIP_LEN),--clip-len $(CLIP_LEN)) $(ARGS)

bench-ingest: $(STAMP)  ## ingest throughput vs the bare render loop, and 1 -> 2 worker scaling
	$(PY) bench/ingest.py

clean-data:  ## delete the default data/ folder
	rm -rf data
