# One-command set-up: every target creates .venv and installs the package first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: test test-slow demo install bench clean-nbs

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=70,<81' wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Notebooks clean and exported, nbdev_test on every notebook, pytest; closes with "N passed, N failed".
test: $(STAMP)
	$(BIN)/python tools/test_all.py

# Also the cells flagged slow (long trainings, multi-process launches).
test-slow: $(STAMP)
	$(BIN)/python tools/test_all.py --flags slow

# The main job: the training notebook, headless, on the embedded synthetic data set.
demo: $(STAMP)
	mkdir -p $(OUT)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill -k python3 --language python nbs/05_train_gol.ipynb $(OUT)/05_train_gol.ipynb \
		-p preset demo_cpu -p smoke False -p output_dir $(OUT)/demo_cpu

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
