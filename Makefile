# The two commands of the README:
#   make demo   set up, start the local stack, generate traffic, run the segmenter, show segments
#   make test   set up, then lint and run every test (unit, integration, doctests)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench quality clean down

$(BIN)/segmenter: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/segmenter
	$(BIN)/segmenter devstack install

demo: setup
	$(BIN)/segmenter demo

lint: $(BIN)/segmenter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stream state consumers loadtest

test: setup lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m loadtest.bench_throughput

quality: setup
	$(BIN)/python -m loadtest.quality

down: $(BIN)/segmenter
	$(BIN)/segmenter devstack down

clean: down
	rm -rf $(VENV) .devstack
