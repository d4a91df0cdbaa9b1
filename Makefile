# ct_assets — `make demo`, `make test`, `make dev`. Needs only python3 (3.11+) on the PATH.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CT := $(BIN)/ct
# The UI test drives Debian's Chromium (Playwright's own browser download fails here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test dev serve lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: the whole loop on the simulator: 30 days of history, a first model, 10 more days with
## a drift injected on a known day, its detection, the retrain; prints summaries and a timeline
demo: $(STAMP)
	DAGSTER_HOME=$$($(CT) home) $(CT) demo

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

## test: the whole suite (installs Debian's chromium for the UI test when it is missing), one
## test file per worker on two workers: the daemon and the retraining-loop files run side by side
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

## dev: the Dagster UI with the daemon (sensors, schedules, automation) on 127.0.0.1:3000
dev: $(STAMP)
	DAGSTER_HOME=$$($(CT) home) $(BIN)/dg dev --host 127.0.0.1 --port 3000

## serve: the deployed model over HTTP on 127.0.0.1:8080 (Open Inference Protocol v2, /predict,
## /feedback, /metrics); hot-swaps on promotion or rollback
serve: $(STAMP)
	$(CT) serve --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf data/landing data/quarantine data/dagster data/warehouse.duckdb* data/landing_catalog.*
