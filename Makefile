# The two commands of the README (in full: docs/reproduce.md). Each creates (or reuses) the local
# virtual environment .venv.
#   make reproduce   train every configuration of the paper's tables, then build tables + figures
#                    and the results block of docs/results.md
#   make test        lint and format check (ruff), unit tests and the notebooks (pytest --nbval-lax)
# Pass options to `mlic reproduce` with ARGS, e.g.  make reproduce ARGS="--only table4 --seeds 3"
# A fresh clone's run records are complete, so `make reproduce` trains nothing and only rebuilds
# the report (byte for byte the same); `make reproduce ARGS=--retrain` trains every run again
# from scratch.

# Any Python 3.11-3.13 (pyproject.toml's requires-python); CI runs PYTHON=python3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mlic-installed

.PHONY: reproduce test lint venv clean-results

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
		{ echo "make: $(PYTHON) is not Python 3.11-3.13 (set PYTHON=python3.11, for example)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m mlic reproduce $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest --nbval-lax --nbval-current-env tests notebooks $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
