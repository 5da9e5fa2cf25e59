# Set up a local environment, run the demo, run the tests.
#   make demo   create .venv (first time), run the whole pipeline on the built-in demo input and
#               make its report, results/report.html
#   make test   create .venv (first time), add the test extras and run the test suite
# TORCH selects the PyTorch build; the default is the CPU build on this project's machines.

VENV ?= .venv
TORCH ?= torch==2.13.0
PYTHON := $(VENV)/bin/python

.PHONY: setup demo test builtin-models report-screenshot

# The pipeline and its runtime dependencies: all that the demo needs.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e .
	touch $@

# The test extras besides (fair-esm, Triton, ...: a few GB).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/snakemake --cores all
	$(VENV)/bin/snakemake --report results/report.html

# README's picture of the demo's report: its job timeline, in headless Chromium.
report-screenshot: demo
	$(PYTHON) tests/report_screenshot.py results/report.html report_screenshot.png \
	  --result results/report/job_timeline.png --size 1400x660

# The slowest tests are listed at the end, so that a new slow one is seen.
test: $(VENV)/.installed-test
	$(PYTHON) -m pytest --durations=15

# Rebuild the built-in models and the demo input from ../shared/data (see README): the two small
# embedding models, reads simulated the same way from both genomes, the classifiers for 300 and
# 500 bp trained on them by the workflow's `train` target with their reports, and the demo reads,
# simulated the same way from the held-out regions.
builtin-models: setup
	$(PYTHON) -m virnucpro.model_store.builtin --data ../shared/data --out resources/models
	$(PYTHON) -m virnucpro.demo.inputs training-inputs --data ../shared/data --out resources/training
	for length in 300 500; do \
	  $(VENV)/bin/snakemake train --cores all --config expected_length=$$length && \
	  cp results/training/expected_length_$$length/classifier.pt resources/models/classifier_$$length.pt && \
	  mkdir -p resources/models/classifier_$${length}_training && \
	  cp results/training/expected_length_$$length/report.md results/training/expected_length_$$length/metrics.json \
	     results/training/expected_length_$$length/roc.png results/training/expected_length_$$length/training_curve.png \
	     results/training/expected_length_$$length/held_out_regions.tsv resources/models/classifier_$${length}_training/ \
	  || exit 1; \
	done
	$(PYTHON) -m virnucpro.demo.inputs demo-input --data ../shared/data \
	  --held-out results/training/expected_length_300/held_out_regions.tsv --out resources/demo/demo_reads.fa
