# ComfyUI-TapTune developer commands. `make demo` and `make test` work on a fresh machine.
PY      := .venv/bin/python
PORT    ?= 8188
PYTEST_ARGS ?=

.PHONY: host demo test test-core lint bench clean

host:  ## .venv/ and a real ComfyUI 0.3.75 in .host/ComfyUI/ (idempotent)
	@bash devtools/host.sh

demo: host  ## a ComfyUI with this pack, a random demo checkpoint, a demo adapter and the example workflows
	@$(PY) -m devtools.demo --port $(PORT)

test: host  ## the whole test suite (pure-torch core and real-ComfyUI host tests)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-core: host  ## only the pure-torch adapter_core tests
	@$(PY) -m pytest tests/core $(PYTEST_ARGS)

lint: host
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

bench: host  ## the benchmarks of bench/ (minutes; writes bench/results/)
	@$(PY) -m bench.run_all

clean:
	rm -rf .demo .pytest_cache .ruff_cache
