# consulgw developer entry points. README documents `make demo` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test lint typecheck unit demo bench services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

services:
	scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check consulgw tests bench
	$(BIN)/ruff format --check consulgw tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: $(STAMP) services lint typecheck unit

demo: $(STAMP)
	$(BIN)/consulgw demo $(DEMO_ARGS)

bench: $(STAMP) services
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis test-artifacts
