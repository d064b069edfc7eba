# The two commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

# Everything runs offline: no hub, no telemetry, no wandb.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := disabled
export AXOLOTL_DO_NOT_TRACK := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint install

# torch first, from the CPU wheel on local disk (otherwise pip pulls a multi-GB CUDA build),
# then the package with the tested versions pinned by constraints.txt.
# pip's output goes to $(VENV)/install.log and is shown only when an install fails.
$(BIN)/.nextquill-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -m pip install --upgrade pip \
	  && $(BIN)/python -m pip install "torch==2.13.0" -c constraints.txt \
	  && $(BIN)/python -m pip install -c constraints.txt -e ".[deepspeed,dev]" ) \
	  > $(VENV)/install.log 2>&1 || { tail -n 60 $(VENV)/install.log; exit 1; }
	touch $@

install: $(BIN)/.nextquill-installed

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m nextquill_plugin.demo

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
