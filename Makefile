# Fresh-machine entry points (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/prosqa_valid.json

.PHONY: setup run quickstart app test clean

$(BIN)/probe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel first, so that nothing pulls a multi-gigabyte CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,tl]'
	touch $@

setup: $(BIN)/probe

# The main job: the shipped default model (checkpoints/prosqa-coconut) on the validation split,
# what its thoughts hold, layer by layer, on the first item, and the latent-search measures of
# the analysis model beside the pause control (runs/analysis: report.json, summary.md, figures),
# and the causal tests of the default model's thoughts beside the pause and CoT controls on the
# first 40 items: mean and another item's ablations and counterfactual patches at the thoughts and
# at layer 1, and steering (runs/interventions; everything on the whole split takes about half an
# hour on 2 CPU cores); then the findings table of both, every model side by side (runs/findings.md).
# Each output replaces the last run's (--overwrite), which stays whole until the new one is written.
run: setup
	mkdir -p runs
	$(BIN)/probe eval --data $(DATA) --json runs/eval.json --overwrite
	$(BIN)/probe decode --data $(DATA) --index 0 --json runs/decode-0.json --overwrite
	$(BIN)/probe analyze --ckpt checkpoints/prosqa-coconut-mixed --control checkpoints/prosqa-pause \
		--data $(DATA) --out runs/analysis --overwrite
	$(BIN)/probe intervene --data $(DATA) --limit 40 --sites thought,1 --ablations mean,other \
		--control checkpoints/prosqa-pause --control checkpoints/prosqa-cot --out runs/interventions --overwrite
	$(BIN)/probe analyze --ckpt checkpoints/prosqa-planted --data $(DATA) --out runs/analysis-planted --overwrite
	$(BIN)/probe intervene --ckpt checkpoints/prosqa-planted --data $(DATA) --limit 40 --sites thought,1 \
		--ablations mean,other --out runs/interventions-planted --overwrite
	$(BIN)/probe findings --analysis runs/analysis --analysis runs/analysis-planted \
		--interventions runs/interventions --interventions runs/interventions-planted --out runs/findings.md \
		--overwrite

# Train a small Coconut model through the whole curriculum in about two minutes, then evaluate it.
quickstart: setup
	rm -rf runs/quickstart
	$(BIN)/probe train --config configs/quickstart.yaml
	$(BIN)/probe eval --ckpt $$(ls -d runs/quickstart/epoch-* | tail -n 1) --data $(DATA) --json runs/quickstart/eval.json

# The explorer app on http://localhost:8501 (the default model; nothing is downloaded).
app: setup
	$(BIN)/streamlit run apps/explorer.py

# Two workers, one per core, one thread each (the suite is mostly single-threaded Python); tests that start
# processes of their own (torchrun, Jupyter kernels, the browser) run in groups on one worker (xdist_group).
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

clean:
	rm -rf runs .pytest_cache
