# Two commands do everything on a fresh machine with Python >= 3.11:
#   make demo   creates .venv, installs the package, runs the demo job
#   make test   creates .venv with the dev extra, runs the test suite
# GPU users: `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128` (or install the CUDA
# build of torch into .venv first); CPU-only users can save 3 GB with .../whl/cpu.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
# pytest-xdist workers of make test (auto: one per core; 0: one process, no workers)
PYTEST_WORKERS ?= auto

.PHONY: demo test docs lint format bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rl_as_inference needs Python >= 3.11; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch goes in first and on its own: a wheel already on this machine (pip's find-links, such as a
# local CPU build) wins over the ~3 GB CUDA build that a bare `torch` requirement pulls from PyPI.
$(VENV)/.torch: | $(BIN)/python
	@if $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "torch already installed in $(VENV)"; \
	elif [ -n "$(TORCH_INDEX_URL)" ]; then \
		$(BIN)/python -m pip install torch --index-url "$(TORCH_INDEX_URL)"; \
	elif $(BIN)/python -m pip install -q --no-index --no-deps torch 2>/dev/null; then \
		echo "installed torch from a local wheel"; \
	else \
		$(BIN)/python -m pip install torch; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m rl_as_inference.demo

# pytest exits 5 when it collects no test; a vanished suite is reported as the error it is. The test
# files are spread over PYTEST_WORKERS processes, each file on one worker (--dist loadfile), so a
# module's fixtures (a trained run several tests read) are built once.
test: $(VENV)/.installed-dev
	@$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$status

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e ".[docs]"
	@touch $@ $(VENV)/.installed

# The documentation site, warnings as errors (a broken reference or a failing tutorial fails it);
# the tutorials run at their small size. RLAI_DOCS_EXECUTE=off renders them without running.
docs: $(VENV)/.installed-docs
	rm -rf docs/_build
	$(BIN)/python -m sphinx -W --keep-going -b html -q docs docs/_build/html
	@echo "make docs: open docs/_build/html/index.html"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
