# ct_assets — `make demo`, `make test`, `make dev`. Needs only python3 (3.11+) on the PATH.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CT := $(BIN)/ct
# The UI test drives Debian's Chromium (Playwright's own browser download fails here).
CHROMIUM := /usr/bin/chromium
# The daemon end-to-end test runs on Postgres storage: a private server started from Debian's
# postgresql binaries (/usr/lib/postgresql/<version>/bin), whatever version the release ships.
POSTGRES_BIN = $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The tests' temporary files (SQLite instances, DuckDB files, model stores) go to tmpfs when the
# machine has one: every Dagster event is a SQLite commit, and on disk each waits for fsync
# (defs/test_lifecycle.py: 80 s on disk, 70 s on /dev/shm). Removed after a passing run, kept
# for a look after a failing one (pytest clears it at the next run).
TEST_TMP := $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm/ct_assets_tests-$$(id -u))

.PHONY: demo test dev serve lint bench clean system-packages bytecode

# The environment: uv installs it (from PyPI, into the venv) in 26 s on a fresh clone where pip
# took 110 s (the same packages); pip stays in the venv for users and `ct package`.
# --compile-bytecode: uv writes no .pyc of its own, and where PYTHONDONTWRITEBYTECODE is set (as
# on this machine) Python never writes one either, so every process (each run worker, code
# server, `ct` call) would compile Dagster, polars and the rest from source again: importing
# ct_assets.definitions takes 7.5 s that way and 3.5 s from .pyc. Compiling costs 14 s, once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

## demo: the whole loop on the simulator: 30 days of history, a first model, 10 more days with
## a drift injected on a known day, its detection, the retrain; prints summaries and a timeline
demo: $(STAMP) bytecode
	DAGSTER_HOME=$$($(CT) home) $(CT) demo

# The Debian packages the suite needs and this machine lacks, in one apt-get, without the
# recommended packages (Chromium's bring printer tools and a notification daemon).
MISSING_PACKAGES = $(if $(wildcard $(CHROMIUM)),,chromium) $(if $(POSTGRES_BIN),,postgresql)
system-packages:
	@if [ -n "$(strip $(MISSING_PACKAGES))" ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$(MISSING_PACKAGES) >/dev/null; \
	fi

# Our own modules' bytecode (the venv's is compiled at install): written once here, where
# PYTHONDONTWRITEBYTECODE would leave every process to compile them again.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 ct_assets ct_assets_tests

## test: the whole suite (installs Debian's chromium for the UI test and postgresql for the
## daemon test when they are missing), one test file per worker on two workers, the longest
## files first (ct_assets_tests/conftest.py)
test: $(STAMP) system-packages bytecode
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
		$(if $(TEST_TMP),--basetemp=$(TEST_TMP))
	$(if $(TEST_TMP),rm -rf $(TEST_TMP))

## dev: the Dagster UI with the daemon (sensors, schedules, automation) on 127.0.0.1:3000
dev: $(STAMP) bytecode
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
