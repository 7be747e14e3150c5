# `make run` and `make test` set everything up on a fresh machine: a virtual environment in
# .venv, the CPU build of torch first (so no multi-GB CUDA build is pulled), then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# pytest-xdist workers for `make test` / `make test-fast`: the tests run one torch thread each,
# so two workers use both cores of a 2-core machine (PYTEST_WORKERS=0 runs them in-process).
PYTEST_WORKERS ?= 2

.PHONY: install run test test-fast test-lowest bench lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## The main job: every algorithm on the built-in facts task, results under results/sweeps/.
run: $(STAMP)
	$(PY) -m alignbench algo=ppo,rrhf --multirun

## Lint, format check, and the whole test suite (slow end-to-end tests included).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(PYTEST_WORKERS)

## The suite without the slow end-to-end tests.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

## The fast tests against the lowest versions pyproject.toml allows, in their own venv
## (.venv-lowest); not part of `make test` / CI (the install alone takes minutes). See .ci/lowest.
test-lowest:
	bash .ci/lowest

## alignbench vs TRL 1.16 (GRPO, RLOO, DPO, reward model): seconds per step and loss parity.
## Installs the optional extra `bench` (TRL is never a runtime dependency).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/trl_parity.py
	$(PY) -m pytest -q -p no:cacheprovider tests/test_trl_parity.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-lowest build *.egg-info .pytest_cache .ruff_cache
