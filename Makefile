# Two commands on a fresh machine: `make run` and `make test`. Both create .venv and install into it when
# needed (the stamp makes a second call instant unless pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint bench gdu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)        ## train the default model (EP, rt_snippets + GloVe-50d); extra overrides: make run ARGS="..."
	$(PY) run.py $(ARGS)

test: $(STAMP)       ## the full test suite (slow tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip the tests marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check seqep tests run.py hydra_plugins examples

bench: $(STAMP)
	$(PY) run.py task=bench $(ARGS)

gdu: $(STAMP)
	$(PY) run.py task=gdu $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
