# Two commands get a newcomer from clone to running: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck bench loadtest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,loadtest]'
	touch $(STAMP)

## run: start a node on the embedded broker at http://127.0.0.1:8000 with the demo page
run: $(STAMP)
	$(BIN)/fanline node --broker memory:// --port 8000 --client-publish

## test: lint, type-check and run the whole suite (starts the brokers it needs)
test: $(STAMP)
	$(BIN)/ruff check node broker_adapters tests loadtest
	$(BIN)/mypy
	$(BIN)/pytest -q

## bench: measure fan-out, latency and memory; writes loadtest/results/
bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

## loadtest: a short headless Locust run (about 30 s) against a local node
loadtest: $(STAMP)
	$(BIN)/python -m loadtest.run_local

lint: $(STAMP)
	$(BIN)/ruff check node broker_adapters tests loadtest

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
