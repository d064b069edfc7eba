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

# torch first, then the package with the tested versions pinned by constraints.txt (ours only).
# Where pip finds a CPU wheel of torch (this project's machines have one on local disk) it takes
# it; elsewhere it downloads PyPI's torch 2.13.0, the CUDA build (about 3 GB with its CUDA
# libraries; it runs on the CPU too), unless TORCH_INDEX names the CPU wheels' index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu      (about 200 MB)
# pip's output goes to $(VENV)/install.log and is shown only when an install fails.
TORCH_INDEX ?=
TORCH_SOURCE := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
$(BIN)/.nextquill-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -m pip install --upgrade pip \
	  && $(BIN)/python -m pip install "torch==2.13.0" $(TORCH_SOURCE) -c constraints.txt \
	  && $(BIN)/python -m pip install -c constraints.txt -e ".[axolotl,deepspeed,trl,dev]" ) \
	  > $(VENV)/install.log 2>&1 || { tail -n 60 $(VENV)/install.log; exit 1; }
	touch $@

# WordNet for METEOR: no PyPI package ships it; Debian's wordnet-base does (see README).
$(VENV)/nltk_data/corpora/wordnet/lexnames: $(BIN)/.nextquill-installed
	@test -f /usr/share/wordnet/index.sense || { \
	  command -v apt-get >/dev/null || { echo "METEOR needs WordNet: run $(BIN)/nextquill setup-wordnet (NLTK's download, online) or install Debian's wordnet-base wordnet-sense-index"; exit 1; }; \
	  echo "installing Debian's wordnet-base and wordnet-sense-index (for METEOR)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get install -y -q wordnet-base wordnet-sense-index \
	    || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q wordnet-base wordnet-sense-index; }; \
	  } > $(VENV)/apt.log 2>&1 || { tail -n 30 $(VENV)/apt.log; exit 1; }; }
	$(BIN)/nextquill setup-wordnet --nltk-dir $(VENV)/nltk_data 2>&1 | tail -n 1

install: $(BIN)/.nextquill-installed $(VENV)/nltk_data/corpora/wordnet/lexnames

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m nextquill_plugin.demo.run

# Tests run in TEST_WORKERS pytest-xdist processes: most tests wait on one single-threaded
# subprocess (axolotl train, torchrun), so two workers keep two cores busy. Each test goes to
# whichever worker is free, except tests in one xdist_group (those sharing the runs of a module
# fixture), which stay in one worker. --durations names the slowest.
TEST_WORKERS ?= 2
test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
