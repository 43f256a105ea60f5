# The two commands of the README:
#   make demo   set up, start the local stack, generate traffic, run the segmenter, show segments
#   make test   set up, then lint and run every test (unit, integration, doctests)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench bench-quick quality soak clean up status down

# PYTHONWARNINGS: setuptools announces every editable install with a boxed warning.
$(BIN)/segmenter: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/segmenter
	$(BIN)/python -m loadtest.dev devstack install

demo: setup
	$(BIN)/python -m loadtest.dev demo

lint: $(BIN)/segmenter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stream state consumers loadtest examples

test: setup lint
	$(BIN)/pytest

# The benchmark suite (not part of make test): report and plots in loadtest/out/.
$(VENV)/.bench: $(BIN)/segmenter
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: setup $(VENV)/.bench
	$(BIN)/python -m loadtest.suite

bench-quick: setup $(VENV)/.bench
	$(BIN)/python -m loadtest.suite --quick

# Segment quality: every scenario live and as a backlog, plus the CDNOW purchase history
# (the quality extra) against a batch RFM k-means (scikit-learn, in the dev extra).
# Report in loadtest/results/<UTC date>/quality.md and quality.json.
quality: setup
	$(BIN)/pip install -q -e '.[dev,quality]'
	$(BIN)/python -m loadtest.quality

# 30 minutes of live traffic under kills, rebalances, Redis and broker outages, Redis
# restarted empty and failed over to a replica; then exact counts and no duplicate change
# ids. Report in loadtest/results/<UTC date>/soak.md and soak.json (not run by CI).
soak: setup
	$(BIN)/python -m loadtest.soak

# The local stack alone (Redis and a broker, tracked by PID in .devstack/).
up: setup
	$(BIN)/python -m loadtest.dev devstack up

status: $(BIN)/segmenter
	$(BIN)/python -m loadtest.dev devstack status

down: $(BIN)/segmenter
	$(BIN)/python -m loadtest.dev devstack down

clean: down
	rm -rf $(VENV) .venv-quix .venv-bytewax .devstack
