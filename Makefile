# The README's two commands: `make demo` (the whole tiny study through Dagster) and `make test`.
# Both set up .venv on a fresh machine first (idempotent: a stamp file records the installed pyproject).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: setup browser services demo test test-fast test-slow ui clean-artifacts

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

browser:
	@# tests/test_ui.py drives Debian's chromium; where it cannot be installed (no apt, not root) the test skips
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && apt-get install -y -q chromium; } || echo "chromium not installed: tests/test_ui.py will skip"

services:
	@# tests/test_postgres.py starts Debian's PostgreSQL server; where it cannot be installed (no apt, not root) it skips
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && apt-get install -y -q postgresql; } || echo "postgresql not installed: tests/test_postgres.py will skip"

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU PyTorch from the local wheel first, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e '.[test,cluster]'
	# pip compiles one file at a time; compileall uses every core. (The bytecode must be there: Dagster starts its run
	# workers with `python -B`, which would otherwise compile torch in every run.) Errors are pip's to ignore too.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: setup
	$(BIN)/mt demo

# pytest-xdist: two workers on a 2-core machine; a test file is one unit, handed out longest first (tests/conftest.py,
# "pytest-xdist"). `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2
PYTEST  := WANDB_MODE=disabled $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# the whole suite, slow tests included (what .ci/run runs)
test: setup browser services
	$(PYTEST)

# the inner loop: everything but the tests marked slow
test-fast: setup
	$(PYTEST) -m 'not slow'

# only the slow ones: a study end to end through Dagster, the Pipes runs, lineage through Dagster, the browser
test-slow: setup browser services
	$(PYTEST) -m slow

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean-artifacts:
	rm -rf artifacts .dagster
