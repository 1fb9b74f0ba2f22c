# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 first (the local CPU wheel; an unpinned
# torch would pull gigabytes of CUDA packages), then semcache with its extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.semcache-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# setuptools announces every editable install ("Editable installation ... be careful with
# folders ... with the same name as your package"); the adapters/ -> semcache.adapters
# mapping needs that install mode, so the notice says nothing to act on: filter it alone.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e

.PHONY: setup demo test lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(EDITABLE) ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/semcache demo

lint: setup
	$(VENV)/bin/ruff check semcache adapters tests benchmarks
	$(VENV)/bin/mypy semcache adapters

unit: setup
	$(PY) -m pytest

test: lint unit

bench: setup
	$(EDITABLE) ".[bench]"
	$(PY) benchmarks/index_bench.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
