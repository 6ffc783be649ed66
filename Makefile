# Two commands for a fresh machine:  `make run` (set up + serve, embedded mode)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench clean chromium

# torch first and pinned: any other request for torch may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The dashboard's browser test (tests/integration/test_ui.py) drives Debian's chromium, never a downloaded one.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

run: setup
	$(BIN)/python -m app.cli serve

lint: setup
	$(BIN)/ruff check app worker migrations tests bench
	$(BIN)/ruff format --check app worker migrations tests bench

# Two tests at once, one per core (tests/conftest.py gives each test process one torch thread); a test
# file stays in one process, so its module fixtures are built once.
TEST_WORKERS ?= 2
test: setup chromium lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=25

clean:
	rm -rf $(VENV) data
