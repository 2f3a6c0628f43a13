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
CONFIG      ?= configs/$(DATASET).yaml
NPROC       ?= 1
# Tokenizer checkpoint for precompute and train (the config key data.tokenizer); empty: the config's own
# (data.tokenizer, else tokenizer_train.run_dir/ckpt/latest).
TOKENIZER   ?=
# One process: plain python. More: torchrun on this node (multi-node: call torchrun yourself, see README).
LAUNCH       = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC))

.DEFAULT_GOAL := help
.PHONY: help demo setup test test-all lint format ingest tokenizer precompute train evaluate compare sweep controller plan expert policy lawm bench-ingest bench-loader bench-plan bench-expert bench-gpu clean-data
MODEL       ?= flam
BRIEF       ?= 1
RUNS        ?=
RUN         ?=
# Latent-action families swept by `make sweep` (kl sparse vq); empty: all three.
LATENT      ?=
# bench-gpu: cuda (the device check, full sizes) or cpu (tiny sizes, eager).
DEVICE      ?= cuda

demo: $(STAMP)  ## the whole job on a small MultiGrid set (ingest, tokenizer, tokens, FLAM, report), CPU ok
	$(PY) -m train.demo --config configs/demo.yaml $(ARGS)

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements-eval-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-eval-nodeps.txt
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv, install torch (TORCH_SPEC, default torch==2.13.0) and this package [dev]

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

tokenizer: $(STAMP)  ## train the FSQ tokenizer of DATASET on its shards in OUT (NPROC= CONFIG= ARGS=)
	$(LAUNCH) -m train.tokenizer --config $(CONFIG) data.root=$(OUT) $(ARGS)

precompute: $(STAMP)  ## encode DATASET's shards with TOKENIZER into the token cache + Recon report (NPROC=)
	$(LAUNCH) -m train.precompute --config $(CONFIG) $(if $(TOKENIZER),data.tokenizer=$(TOKENIZER)) data.root=$(OUT) $(ARGS)

train: $(STAMP)  ## train MODEL (flam, ...) on DATASET's token cache (NPROC= CONFIG= ARGS=)
	$(LAUNCH) -m train.lam --config $(CONFIG) model=$(MODEL) data.root=$(OUT) \
		$(if $(TOKENIZER),data.tokenizer=$(TOKENIZER)) $(ARGS)

evaluate: $(STAMP)  ## score trained runs against ground truth: Table 1, DCI, videos (RUNS="runs/a runs/b" ARGS=)
	$(PY) -m train.evaluate --runs $(RUNS) $(ARGS)

compare: $(STAMP)  ## train all six models on DATASET, then Table 1 (BRIEF=1: CPU minutes; BRIEF=0: full preset, NPROC GPUs)
	$(PY) -m train.compare --config $(CONFIG) $(if $(filter 1,$(BRIEF)),--brief) --nproc $(NPROC) $(ARGS)

sweep: $(STAMP)  ## capacity sweep of MODEL's latent families on DATASET (LATENT=kl|sparse|vq; BRIEF=1: CPU size)
	$(PY) -m train.sweep --config $(CONFIG) $(if $(filter 1,$(BRIEF)),--brief) --model $(MODEL) \
		$(if $(LATENT),--latent $(LATENT)) --nproc $(NPROC) $(ARGS)

controller: $(STAMP)  ## controller from real actions to RUN's latent actions (ARGS="controller.kind=adapter")
	$(PY) -m train.controller --run $(RUN) $(ARGS)

plan: $(STAMP)  ## MultiGrid planning with RUNS="..." (none: make compare's models, trained first; BRIEF=1: CPU size)
	$(PY) -m train.plan $(if $(RUNS),--runs $(RUNS),--config $(CONFIG) $(if $(filter 1,$(BRIEF)),--brief) \
		--nproc $(NPROC)) $(ARGS)

bench-plan: $(STAMP)  ## planning steps/s vs a bare batched forward of the same world model
	$(PY) -m bench.plan

expert: $(STAMP)  ## train the RL expert (PPG) on a Procgen DATASET -> runs/expert-<game>/ (resumable; ARGS=)
	$(PY) -m train.expert --config $(CONFIG) $(ARGS)

policy: BRIEF = 0
policy: $(STAMP)  ## expert, demos, world models, pseudo-labels, BC -> Table 4 (full size; BRIEF=1: CPU minutes)
	$(PY) -m train.policy --config $(CONFIG) $(if $(filter 1,$(BRIEF)),--brief) --nproc $(NPROC) $(ARGS)

lawm: BRIEF = 0
lawm: $(STAMP)  ## LAWM-style world model on labelled + unlabelled episodes, offline RL in latent space -> return vs labels (BRIEF=1: CPU minutes)
	$(PY) -m train.lawm --config $(CONFIG) $(if $(filter 1,$(BRIEF)),--brief) $(ARGS)

bench-expert: $(STAMP)  ## expert env-steps/s vs the bare batched Procgen env stepping random actions
	$(PY) -m bench.expert

bench-loader: $(STAMP)  ## loader clips/s vs a bare decord loop over the same shards
	$(PY) -m bench.loader

bench-ingest: $(STAMP)  ## ingest throughput vs the bare render loop, and 1 -> 2 worker scaling
	$(PY) -m bench.ingest

# A lent GPU machine has torch but no .venv: `make bench-gpu PY=python3` skips the venv.
bench-gpu: $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))  ## GPU check: models vs bare stack, cache vs pixel, precompute, a resumed run (DEVICE=cpu: tiny)
	$(PY) -m bench.gpu --device $(DEVICE) --docs docs/benchmarks.md $(ARGS)

clean-data:  ## delete the default data/ folder
	rm -rf data
