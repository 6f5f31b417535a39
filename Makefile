# Buddy: `make demo` and `make test` work from a fresh clone with python3 >= 3.11 and PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := buddy workers tests examples

.DEFAULT_GOAL := help
.PHONY: help venv install browser demo test lint fmt clean distclean

help:
	@echo "make demo       install, then a live campaign on stdlib files, checked against reality"
	@echo "make test       install, then ruff, mypy and pytest"
	@echo "make lint       ruff check + ruff format --check + mypy"
	@echo "make fmt        ruff format + ruff check --fix"
	@echo "make browser    headless Chromium for the Flower dashboard test (apt-get, as root or CI=true)"
	@echo "make venv       create $(VENV) and pip install -e '.[dev]' (again when pyproject.toml changes)"
	@echo "make clean      remove caches, .demo/ and outputs/ (distclean: also $(VENV))"

venv: $(STAMP)
install: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Buddy needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1). Try: make PYTHON=python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

# Debian's chromium for tests/integration/test_flower.py's dashboard screenshot. Installed when
# missing and we are root (or CI=true with passwordless sudo); never fails the build: without it
# the test is skipped with the reason on a laptop and fails under CI=true.
APT_CHROMIUM := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "browser: $$(command -v chromium || command -v chromium-browser)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "browser: no chromium and no apt-get: the Flower screenshot test will be skipped (fails if CI=true)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		echo "browser: installing Debian's chromium (for the Flower screenshot test)"; \
		sh -c '$(APT_CHROMIUM)' >/dev/null || echo "browser: apt-get failed; the screenshot test will say so"; \
	elif [ "$$CI" = "true" ] && sudo -n true 2>/dev/null; then \
		echo "browser: installing Debian's chromium with sudo (CI=true)"; \
		sudo -n sh -c '$(APT_CHROMIUM)' >/dev/null || echo "browser: apt-get failed; the screenshot test will say so"; \
	else \
		echo "browser: no chromium and not root: the Flower screenshot test will be skipped (run 'sudo make browser')"; \
	fi

demo: install
	$(BIN)/python examples/demo.py
	@echo "demo outputs: .demo/out (report: .demo/out/report.md, manifest: .demo/manifest.json)"

test: install browser
	$(BIN)/ruff check buddy workers tests
	$(BIN)/mypy buddy workers
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy buddy workers

fmt: install
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

clean:
	rm -rf .demo outputs build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
