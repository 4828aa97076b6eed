# ComfyUI-TapTune developer commands. `make demo` and `make test` work on a fresh machine.
#
# By default every target uses the development host that `make host` builds: .venv/ and ComfyUI
# 0.3.75 in .host/ComfyUI/ (PYTHON, if given, is then the interpreter that creates .venv/).
#
# Any other ComfyUI: `make test COMFYUI_DIR=/path/to/ComfyUI PYTHON=/path/to/python` (likewise
# demo, test-core, lint, bench). PYTHON is the interpreter of the environment that runs that
# ComfyUI (default python3; `test` needs requirements-dev.txt installed there, `lint` ruff). Nothing is built then and
# neither .venv/ nor .host/ComfyUI/ is used: the tests import that ComfyUI in-process and the
# server test starts its main.py.
PORT    ?= 8188
PYTEST_ARGS ?=
COMFYUI_DIR ?=

ifeq ($(strip $(COMFYUI_DIR)),)
PY      := .venv/bin/python
else
# Absolute, for devtools/comfy_host.py (it reads COMFYUI_DIR from the environment).
override COMFYUI_DIR := $(abspath $(COMFYUI_DIR))
export COMFYUI_DIR
PYTHON  ?= python3
export PYTHON
PY      := $(PYTHON)
endif

.PHONY: host browser manager demo test test-core lint bench quality pocket-model gpu-check clean

host:  ## .venv/ and a real ComfyUI 0.3.75 in .host/ComfyUI/ (idempotent); with COMFYUI_DIR: only checks that ComfyUI and PYTHON
	@bash devtools/host.sh

demo: host  ## a ComfyUI with this pack, the pocket model's demo files and the example workflows (CPU variants)
	@$(PY) -m devtools.demo --port $(PORT)

browser:  ## Debian's chromium for the browser test (apt-get as root when missing; never downloads a browser)
	@bash devtools/browser.sh

manager: host  ## ComfyUI-Manager's cm-cli (comfyui-manager from PyPI) in .host/manager-site, for the install test
	@bash devtools/manager.sh $(PY)

test: host browser manager  ## the whole test suite (pure-torch core and real-ComfyUI host tests, the front end in chromium)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-core: host  ## only the pure-torch adapter_core tests
	@$(PY) -m pytest tests/core $(PYTEST_ARGS)

lint: host
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

bench: host  ## the benchmarks of bench/ (minutes; writes bench/results/)
	@$(PY) -m bench.run_all

quality: host  ## the pocket world's quality table (every method x 4 subjects x 3 seeds, two shards; about 2 h on 2 cores; resumes)
	@$(PY) -m bench.quality --shard 0/2 --threads 1 & first=$$!; $(PY) -m bench.quality --shard 1/2 --threads 1 && wait $$first
	@$(PY) -m bench.quality --table --docs

pocket-model: host  ## train the pocket model again from its seed (under 30 min on 2 cores; writes pocket/weights/)
	@$(PY) -m devtools.train_pocket

gpu-check:  ## on one NVIDIA GPU (no network, nothing built): CUDA checks and the SD 1.5 training benchmark (< 8 min; writes bench/results/gpu_check.*)
	@$(PY) -m devtools.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf .demo .pytest_cache .ruff_cache
