# Unity: `make run` starts it, `make test` checks it. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps run test lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { bash scripts/install-system-deps.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q -e . --group dev
	@touch $(STAMP)

install: $(STAMP)  ## virtualenv with Unity and its development tools

system-deps:  ## Debian packages the tests need (postgresql, redis-server)
	@bash scripts/install-system-deps.sh

run: install  ## start Unity on the embedded SQLite default (./data)
	$(BIN)/unity serve

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: install system-deps lint  ## lint, then the whole suite with coverage (fails under 85 %)
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

bench: install  ## benchmarks; each prints one JSON object
	$(BIN)/unity bench

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache
