# `make demo` and `make test` each set up .venv first (torch from this machine's wheels, then the project).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-vit test test-slow lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# CLIP on the shapes data, a shorter schedule than configs/clip/shapes.yaml (1,500 of its 3,800 steps), then
# zero-shot top-1/top-5 on the seen and held-out colour-shape pairs, chance beside.
DEMO_STEPS ?= 1500
demo: setup
	$(PY) -m training.train configs/clip/shapes.yaml run.name=clip-shapes-demo train.steps=$(DEMO_STEPS) \
		train.eval_every=500 run.overwrite=true
	$(PY) -m eval.zeroshot --checkpoint runs/clip-shapes-demo --dataset shapes

demo-vit: setup
	$(PY) -m training.train configs/vit/shapes.yaml run.overwrite=true
	$(PY) -m eval.classify --checkpoint runs/vit-shapes --dataset shapes --split test

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  # pytest exits 5 when no test carries the mark yet
	$(PY) -m pytest -q -m slow || test $$? -eq 5

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
