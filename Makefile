# Two commands set everything up on a fresh machine:
#   make demo   - installs oncely in .venv and runs the example on the embedded store
#   make test   - installs oncely in .venv and runs lint, types and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	bash examples/quickstart/run.sh

test: $(VENV)/.installed
	$(PY) -m ruff check src tests bench examples
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/process_rate.py
