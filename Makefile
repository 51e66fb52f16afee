# Two entry points, each doing the whole set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build; set TORCH_SPEC=torch (or a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
# The CPU benchmark: starts the service itself with dummy full-size weights, once per vocoder compile
# setting (eager, then compiled: on an empty inductor cache, then restarted on the one it filled).
BENCH_ARGS ?= --serve-config bench/serve_config_cpu.yaml --serve-versions v1.0 --compile off,default

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

.PHONY: install serve test test-fast lint fuzz bench bench-pieces bench-soak bench-allocator bench-vocoder
install: $(BIN)/.installed

# The preflight fetches missing weights (or stops, saying how to get them) before Serve starts. It also
# writes the config Serve deploys: serve_config.yaml carrying this shell's KOKORO_WEIGHTS and
# KOKORO_MODEL_ROOT, which a Ray cluster started before `serve run` would not see (README, "Weights").
serve: install
	$(BIN)/python -m serve_app.first_run serve_config.yaml --effective-config build/serve_config.yaml && \
		RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.ingress.request_ids:proxy_middlewares \
		$(BIN)/serve run build/serve_config.yaml

# Lint first: CI runs this target, so ruff's findings fail it like a failing test.
test: lint
	$(BIN)/pytest -q tests

# The tier that needs no Ray: well under a minute, for the edit-test loop.
test-fast: install
	$(BIN)/pytest -q -m fast tests

lint: install
	$(BIN)/ruff check .

# The OpenAPI fuzzer against a real service with the tiny model, far more cases than CI's run.
FUZZ_EXAMPLES ?= 300
fuzz: install
	KOKORO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/test_fuzz.py

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Speed and memory of the model by piece size, in-process (what piece_chars trades).
bench-pieces: install
	$(BIN)/python -m bench.piece_sizes

# Memory over hundreds of mixed requests (lengths, formats, languages, clients leaving early): growth <= 5%.
bench-soak: install
	$(BIN)/python -m bench.soak

# What the heap settings in serve_config.yaml and the trim policy cost a CPU replica, in-process.
bench-allocator: install
	$(BIN)/python -m bench.allocator --out docs/benchmarks.md

# Where one piece's synthesis spends its time (operators, each convolution's GFLOP/s), in-process.
bench-vocoder: install
	$(BIN)/python -m bench.vocoder_profile
