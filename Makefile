# Two entry points for a fresh machine with only Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint format benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Chromium and ChromeDriver from Debian's packages, for the report's browser test (which is
# skipped without them); needs root and apt-get, and says so when it cannot install them.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; } \
	  || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium (needs root and apt-get): the browser test will be skipped"; fi

demo: $(STAMP)
	$(BIN)/fae demo --out demo-output

# two pytest-xdist workers, one per core (tests/conftest.py gives each one thread); each test
# file stays on one worker, so that its module fixtures are made once
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

benchmark: $(STAMP)
	$(BIN)/python -m pytest -q -m benchmark

clean:
	rm -rf $(VENV) demo-output .pytest_cache
