# One-command set-up: every target creates .venv and installs the package first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

LAB_STAMP := $(VENV)/.lab-installed
LAB_ARGS ?=

.PHONY: test test-slow demo readme study-table lab install mmdet bench gpu-check clean-nbs

MMDET_STAMP := $(VENV)/.mmdet-installed

# The package, its notebooks' tools (papermill, nbdev, pytest) and the torchvision engine: a few minutes.
$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=70,<81' wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The mmdetection engine, only where it is needed (make test, gol-train --engine mmdet, notebooks 08/08a): mmcv's
# compiled ops exist only as source, so tools/build_mmcv.sh compiles them against this venv's torch once and caches
# the wheel in ~/.cache/gol_nb/wheels (later installs take seconds). pip gets the wheel by path (it never builds mmcv
# itself); the superseded mmdet 3.3 stack (same import names) is removed first.
$(MMDET_STAMP): $(STAMP) tools/build_mmcv.sh
	@echo "make mmdet: installing the mmdetection engine (needed by make test, gol-train --engine mmdet and notebooks" \
	      "08/08a); the first time this compiles mmcv's ops, 10-45 min on 2 cores, then its wheel is cached."
	$(BIN)/pip uninstall -q -y mmdet mmengine mmcv-lite mmcv 2>/dev/null || true
	MMCV_WHEEL=$$(bash tools/build_mmcv.sh $(BIN)/python) && $(BIN)/pip install -q -e '.[dev,mmdet]' "$$MMCV_WHEEL"
	touch $(MMDET_STAMP)

install: $(STAMP)

mmdet: $(MMDET_STAMP)

# Notebooks clean and exported, nbdev_test on every notebook, pytest; closes with "N passed, N failed".
test: $(MMDET_STAMP)
	$(BIN)/python tools/test_all.py

# Also the cells flagged slow (long trainings, multi-process launches).
test-slow: $(MMDET_STAMP)
	$(BIN)/python tools/test_all.py --flags slow

# The main job: the training notebook, headless, on the embedded synthetic data set. Each run trains afresh: it
# replaces $(OUT)/demo_cpu (a run folder is never silently reused; resume=true continues a run on purpose).
demo: $(STAMP)
	mkdir -p $(OUT)
	rm -rf $(OUT)/demo_cpu
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill -k python3 --language python nbs/05_train_gol.ipynb $(OUT)/05_train_gol.ipynb \
		-p preset demo_cpu -p smoke False -p output_dir $(OUT)/demo_cpu

# The README's demo results block, written from $(OUT)/demo_cpu (metrics.json, config.yaml, run_info.json).
readme: $(STAMP)
	$(BIN)/python tools/readme_results.py --run $(OUT)/demo_cpu

# README's "What the miniature LVIS shows" block, written from a study's summary.csv (nbs/09_ablations.ipynb, default
# study in runs/studies/activations; another with STUDY=runs/studies/NAME).
STUDY ?= runs/studies/activations
study-table: $(STAMP)
	$(BIN)/python tools/study_table.py --study-dir $(STUDY)

# JupyterLab on the repository (installed into .venv on first use), opening in nbs/: outputs/ (executed notebooks)
# and run folders are in reach too. The notebooks name the kernel `python3`; here it is this venv's Python
# (registered in .venv, and .venv's Jupyter folder comes first), so notebooks run without switching kernels (as root,
# e.g. in a container, with --allow-root). Its display name is `python3`, as nbdev_clean writes it into the notebooks:
# JupyterLab then does not rewrite the kernelspec and mark a notebook modified on opening.
# More options: make lab LAB_ARGS='--no-browser --port 8899'
$(LAB_STAMP): $(STAMP)
	$(BIN)/pip install -q 'jupyterlab>=4.2,<5' 'ipywidgets>=8.1,<9'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(BIN)/jupyter lab --notebook-dir=. --LabApp.default_url=/lab/tree/nbs \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py

# What only a GPU machine can show, in one script (<= 8 min there): the loss benchmark, a fp32 and a bf16 step of every
# paper preset, the evaluation benchmark, a 2-GPU torchrun launch, an mmdetection step on CUDA; written to
# $(OUT)/gpu_check.json. Its CPU smoke (CI runs it): make gpu-check ARGS='--cpu --quick'
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out $(OUT)/gpu_check.json $(ARGS)

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
