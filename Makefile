# `make demo` and `make test` each set up .venv first (torch from this machine's wheels, then the project).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
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
