# `make demo` and `make test` each set up .venv first (torch from this machine's wheels, then the project).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-vit test test-slow readme-check lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The whole suite on the shapes data in short schedules, under 20 minutes on 2 CPU cores: a CLIP (1,000 of
# configs/clip/shapes.yaml's 3,800 steps), zero-shot evaluated; then unCLIP on that CLIP: a prior and a decoder
# (short runs of configs/unclip/shapes-{prior,decoder}.yaml; the upsampler is left out, as a 300-step one does not yet
# beat bicubic), a judge classifier (configs/vit/shapes.yaml), a grid of the decoder's 16 px images for
# six prompts (shown at 128 px, each row labelled), and the prompt accuracy the judge gives the generated images.
DEMO_STEPS ?= 1000
DEMO_PRIOR_STEPS ?= 100
DEMO_DECODER_STEPS ?= 500
DEMO_PROMPTS := "a red circle" "a green square" "a blue triangle" "a yellow star" "a purple diamond" "an orange cross"
demo: setup
	$(PY) -m training.train configs/clip/shapes.yaml run.name=clip-shapes-demo train.steps=$(DEMO_STEPS) \
		train.eval_every=0 run.overwrite=true
	$(PY) -m eval.zeroshot --checkpoint runs/clip-shapes-demo --dataset shapes
	$(PY) -m training.train configs/unclip/shapes-prior.yaml task.clip=runs/clip-shapes-demo \
		run.out_dir=runs/unclip-demo/prior train.steps=$(DEMO_PRIOR_STEPS) optim.warmup_steps=20 \
		task.eval_samples=100 run.overwrite=true
	$(PY) -m training.train configs/unclip/shapes-decoder.yaml task.clip=runs/clip-shapes-demo \
		run.out_dir=runs/unclip-demo/decoder train.steps=$(DEMO_DECODER_STEPS) train.eval_every=0 run.overwrite=true
	$(PY) -m training.train configs/vit/shapes.yaml run.name=judge-shapes-demo train.eval_every=0 run.overwrite=true
	$(PY) -m multimodal.generate --checkpoint runs/unclip-demo $(DEMO_PROMPTS) --n 6 --no-upsample \
		--out runs/unclip-demo/grid.png
	$(PY) -m eval.generation --checkpoint runs/unclip-demo --judge runs/judge-shapes-demo --n 2 --no-ablation

demo-vit: setup
	$(PY) -m training.train configs/vit/shapes.yaml run.overwrite=true
	$(PY) -m eval.classify --checkpoint runs/vit-shapes --dataset shapes --split test

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  # the long fault-injection runs (many random SIGKILLs, accelerate launch losing a worker)
	$(PY) -m pytest -q -m slow

readme-check: setup  # after `make demo`: every command of README.md, in order, on a copy of the demo's runs
	$(PY) -m tests.readme

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
