# The two set-up commands of the README: `make run` and `make test`.
# Each creates .venv if needed, installs the package, and installs Debian's
# dataset-fashion-mnist when /usr/share/datasets/fashion-mnist is missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= configs/dnr_fmnist.py
WORKDIR ?= runs/dnr_fmnist
PYTEST_ARGS ?=

.PHONY: run test notebooks setup dataset bench clean

run: setup
	$(PY) -m neurojax.main --config=$(CONFIG) --workdir=$(WORKDIR)

# The tests also need torch and torchvision (the `convert` extra): the
# importer is checked against torchvision's ResNets. Two worker processes
# (pytest-xdist), a test file each at a time, so a file's fixtures are built
# once: much of a test is single-threaded start-up and compiling.
# `make test TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= 2
test: setup $(VENV)/.convert
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS) tests

# Every notebook in colab/, top to bottom, in its SMALL mode (CI runs this too).
notebooks: setup $(VENV)/.convert
	$(PY) colab/execute.py

setup: $(VENV)/.installed dataset

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

$(VENV)/.convert: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,convert]'
	@touch $@

dataset:
	@if [ ! -d $(FMNIST_DIR) ]; then \
	  echo "Installing Debian's dataset-fashion-mnist into $(FMNIST_DIR)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Throughput against PyTorch eager (installs the `convert` extra: torch, torchvision).
bench: setup $(VENV)/.convert
	$(PY) benchmarks/throughput.py

clean:
	rm -rf runs benchmarks/out .pytest_cache
