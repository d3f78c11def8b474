# Two commands set everything up on a fresh machine:
#   make demo   - installs oncely in .venv and runs `oncely demo` on the embedded store
#   make test   - installs oncely in .venv and runs lint, types and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo quickstart test postgres-binaries bench bench-all

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The story, end to end: 3 replicas behind one port, a real SMTP server, the built-in
# scheduler, signups; first the story's timers (duplicates), then oncely under chaos.
demo: $(VENV)/.installed
	$(VENV)/bin/oncely demo --naive --chaos

quickstart: $(VENV)/.installed
	bash examples/quickstart/run.sh

# The tests use a PostgreSQL server on 127.0.0.1:5432 if there is one, else start a
# throwaway cluster from the server binaries, which this installs when they are missing.
postgres-binaries:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { echo "installing PostgreSQL server binaries for the tests"; \
	    apt-get update -qq && apt-get install -y -qq postgresql; }

test: $(VENV)/.installed postgres-binaries
	$(PY) -m ruff check src tests bench examples
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/process_rate.py

# issue 7: oncely vs Procrastinate, PgQueuer and plain SKIP LOCKED loops -> bench/RESULTS.md
bench-all: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py
