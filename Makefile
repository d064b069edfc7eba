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

# WordNet for METEOR: no PyPI package ships it; Debian's wordnet-base does (see README).
$(VENV)/nltk_data/corpora/wordnet/lexnames: $(BIN)/.nextquill-installed
	@test -f /usr/share/wordnet/index.sense || { \
	  command -v apt-get >/dev/null || { echo "METEOR needs WordNet: run python -c \"import nltk; nltk.download('wordnet')\" or install Debian's wordnet-base wordnet-sense-index"; exit 1; }; \
	  echo "installing Debian's wordnet-base and wordnet-sense-index (for METEOR)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get install -y -q wordnet-base wordnet-sense-index \
	    || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q wordnet-base wordnet-sense-index; }; \
	  } > $(VENV)/apt.log 2>&1 || { tail -n 30 $(VENV)/apt.log; exit 1; }; }
	$(BIN)/nextquill setup-wordnet --nltk-dir $(VENV)/nltk_data 2>&1 | tail -n 1

install: $(BIN)/.nextquill-installed $(VENV)/nltk_data/corpora/wordnet/lexnames

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m nextquill_plugin.demo.run

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
