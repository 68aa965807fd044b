# ironcore: `make serve` runs the server on its embedded defaults, `make test` runs the suite.
# Both build their own virtual environment in .venv; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve demo test lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ironcore needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --target $(VENV)/paho1 paho-mqtt==1.6.1
	$(BIN)/pip install --quiet --target $(VENV)/cryptoauthlib cryptoauthlib
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/ironcore serve $(ARGS)

# `make demo` tells the whole story against a server it starts, on a temporary data directory.
demo: $(STAMP)
	$(BIN)/ironcore demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src tests
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m benchmarks.api

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
