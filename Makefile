# The two set-up commands of the README: `make demo` and `make test`. Both create .venv
# (Python 3.11+) and install the package with its server and dev extras on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make demo PROVIDER=runpod (or runpod-pod, ovh) rehearses another provider.
PROVIDER ?= sandbox

.PHONY: install test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Python 3.11 or newer is required (set PYTHON=python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@touch $@

install: $(STAMP)

# Shell scripts of the repository: keep this list in step when adding one.
SHELL_SCRIPTS := .ci/run .ci/actionlint action/install.sh action/run.sh action/workflow-commands.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint image/Dockerfile
	$(BIN)/shellcheck -x $(SHELL_SCRIPTS)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-actions action.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --no-progress --quiet .
	.ci/actionlint

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers, a test file each at a time (a file's tests share fixtures and timing).
unit: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python -m ondemand.demo --provider $(PROVIDER)

bench: $(STAMP)
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
