# Two entry points, each doing the whole set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build; set TORCH_SPEC=torch (or a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
# The CPU benchmark: starts the service itself with dummy full-size weights.
BENCH_ARGS ?= --serve-config bench/serve_config_cpu.yaml --serve-versions v1.0

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

.PHONY: install serve test bench bench-chunks
install: $(BIN)/.installed

serve: install
	$(BIN)/serve run serve_config.yaml

test: install
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Speed and memory of the model by chunk size, in-process (what chunk_chars trades).
bench-chunks: install
	$(BIN)/python -m bench.chunk_sizes
