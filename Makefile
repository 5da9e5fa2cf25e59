# Set up a local environment, run the demo, run the tests.
#   make demo   create .venv (first time) and run the whole pipeline on the built-in demo input
#   make test   create .venv (first time) and run the test suite
# TORCH selects the PyTorch build; the default is the CPU build on this project's machines.

VENV ?= .venv
TORCH ?= torch==2.13.0
PYTHON := $(VENV)/bin/python

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/snakemake --cores all

test: setup
	$(PYTHON) -m pytest
