# The two commands of the README. Both create and reuse .venv and install raymmft into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raymmft-installed

.PHONY: demo test test-fast lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job: a hyperparameter search on the built-in world with a tiny model, offline, on CPU.
demo: $(STAMP)
	$(VENV)/bin/raymmft search search_spaces/demo.yaml $(ARGS)

# Every test, Ray end-to-end tests included.
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# The inner loop: core tests only (no Ray, nothing slow), under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray and not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check raymmft tests scripts benchmarks
	$(VENV)/bin/ruff check raymmft tests scripts benchmarks
