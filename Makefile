# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m dropr.demo --config conf/dropr.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tests that start no process (tests/support/guard.py keeps the marker honest).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not process" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m dropr.cli bench --fs here --quick

clean:
	rm -rf $(VENV) var build *.egg-info
