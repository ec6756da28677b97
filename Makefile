# `make demo` and `make test` each set up .venv first (torch from this machine's wheels, then the project).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-vit circuits test test-browser test-slow readme-check lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,web]'
	touch $(STAMP)

setup: $(STAMP)

# TransformerLens (the circuits cross-check), CLIP_benchmark (the export's cross-check) and what they pull in (transformers, datasets, wandb, pandas) get a venv
# of their own that sees .venv's packages through a .pth file: installed in .venv, timm and diffusers would import
# transformers and wandb in every process (0.6 s each, minutes over the test suite).
TL_VENV := $(VENV)/transformer-lens
TL_PY := $(TL_VENV)/bin/python
TL_STAMP := $(TL_VENV)/.installed

$(TL_STAMP): $(STAMP)
	test -x $(TL_PY) || $(PYTHON) -m venv $(TL_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(TL_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/base-venv.pth"
	$(TL_PY) -m pip install -q 'transformer-lens>=3.9,<4' 'clip-benchmark>=1.6' 'numpy<2.4'
	touch $(TL_STAMP)

# The whole suite on the shapes data in short schedules, two jobs at a time on 1 thread each (two 1-thread jobs side
# by side get 1.7x the work of one 2-thread job done on 2 cores: these small models do not scale to 2 threads):
#   1. a CLIP (configs/clip/shapes.yaml cut to 1,200 steps; its warmup-stable-decay schedule decays over the last
#      240 of them, the 20% the demo was measured with) beside the judge classifier (configs/vit/shapes.yaml);
#      then the CLIP's zero-shot evaluation;
#   2. unCLIP on that CLIP: the decoder (short run of configs/unclip/shapes-decoder.yaml) beside the prior (of
#      shapes-prior.yaml), neither with an evaluation of its own: step 3 judges the stack (the upsampler is left out,
#      as a 300-step one does not yet beat bicubic);
#   3. a grid of the decoder's 16 px images for six prompts (shown at 128 px, each row labelled) beside the prompt
#      accuracy the judge gives the generated images.
# The job beside writes its output to runs/<name>.log and shows its last lines when it ends; `make demo` fails if
# either job does.
DEMO_STEPS ?= 1200
DEMO_PRIOR_STEPS ?= 100
DEMO_DECODER_STEPS ?= 500
DEMO_PROMPTS := "a red circle" "a green square" "a blue triangle" "a yellow star" "a purple diamond" "an orange cross"
DEMO_TRAIN := $(PY) -m training.train
# $(call beside,LOG,BACKGROUND COMMAND,FOREGROUND COMMAND): both at once, the first's output to LOG
beside = mkdir -p runs; echo 'in the background, output to $(1):$(2)'; $(2) > $(1) 2>&1 & bg=$$!; $(3); fg=$$?; \
	wait $$bg; bg=$$?; tail -n 3 $(1); [ $$bg = 0 ] || echo "error: the job beside failed; see $(1)" >&2; \
	[ $$fg = 0 ] && [ $$bg = 0 ]
demo: setup
	@$(call beside,runs/judge-shapes-demo.log,\
		$(DEMO_TRAIN) configs/vit/shapes.yaml run.name=judge-shapes-demo train.threads=1 train.progress=false \
			train.eval_every=0 run.overwrite=true,\
		$(DEMO_TRAIN) configs/clip/shapes.yaml run.name=clip-shapes-demo train.threads=1 train.steps=$(DEMO_STEPS) \
			optim.decay_fraction=0.2 train.eval_every=0 run.overwrite=true)
	$(PY) -m eval.zeroshot --checkpoint runs/clip-shapes-demo --dataset shapes
	@$(call beside,runs/unclip-demo-prior.log,\
		$(DEMO_TRAIN) configs/unclip/shapes-prior.yaml task.clip=runs/clip-shapes-demo run.out_dir=runs/unclip-demo/prior \
			train.threads=1 train.progress=false train.steps=$(DEMO_PRIOR_STEPS) optim.warmup_steps=20 \
			data.eval_split=null run.overwrite=true,\
		$(DEMO_TRAIN) configs/unclip/shapes-decoder.yaml task.clip=runs/clip-shapes-demo \
			run.out_dir=runs/unclip-demo/decoder train.threads=1 train.steps=$(DEMO_DECODER_STEPS) \
			data.eval_split=null run.overwrite=true)
	@$(call beside,runs/unclip-demo-grid.log,\
		$(PY) -m multimodal.generate --checkpoint runs/unclip-demo $(DEMO_PROMPTS) --n 6 --no-upsample --threads 1 \
			--out runs/unclip-demo/grid.png,\
		$(PY) -m eval.generation --checkpoint runs/unclip-demo --judge runs/judge-shapes-demo --n 2 --no-ablation \
			--threads 1)

demo-vit: setup
	$(PY) -m training.train configs/vit/shapes.yaml run.overwrite=true
	$(PY) -m eval.classify --checkpoint runs/vit-shapes --dataset shapes --split test

circuits: setup  # "A Mathematical Framework for Transformer Circuits" on this machine: 0-, 1- and 2-layer attention-only
	for depth in 0 1 2; do \
		$(PY) -m training.train configs/circuits/attn$$depth.yaml run.overwrite=true train.progress=false || exit 1; \
		$(PY) -m eval.circuits --checkpoint runs/circuits-attn$$depth || exit 1; \
	done

test: setup $(TL_STAMP)
	$(PY) -m pytest -q -m "not slow and not transformer_lens and not clip_benchmark and not browser"
	$(TL_PY) -m pytest -q -m "(transformer_lens or clip_benchmark) and not slow"

# The web demo in a real browser: Debian's headless Chromium and its chromedriver (apt; selenium drives them and never
# downloads a browser of its own).
test-browser: setup
	test -x /usr/bin/chromedriver || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium chromium-driver; }
	$(PY) -m pytest -q -m "browser and not slow"

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
