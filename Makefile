# The README's two commands: `make demo` (the whole tiny study through Dagster) and `make test`.
# Both set up .venv on a fresh machine first (idempotent: a stamp file records the installed pyproject).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
UV      := 0.13.9
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
# bytecode is written where Python would compile a module anyway (a machine may say otherwise in its environment)
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup bytecode browser services demo test test-fast test-slow ui clean-artifacts

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
	# uv installs in parallel (set-up 1 min instead of 2), from the sources pip is configured with (scripts/uv_args.py),
	# weighing every index alike as pip does (unsafe-best-match: uv alone stops at the first index that has a package).
	# Pinning torch==2.13.0 takes the CPU build from local disk, never a multi-GB CUDA one.
	$(BIN)/pip install -q uv==$(UV)
	$(BIN)/uv pip install -q --python $(BIN)/python --index-strategy unsafe-best-match \
	  $$($(BIN)/python scripts/uv_args.py) torch==2.13.0 -e '.[test,cluster]'
	touch $(STAMP)

# The bytecode of what the suite's processes import, written once per install, before the suite: a few hundred
# processes (`mt` commands, Dagster's servers and run workers, Ray's) would otherwise each compile what they import.
# scripts/warm_bytecode.py imports it, where compiling the whole venv wrote far more than the suite reads
# (docs/TESTING.md). The demo does without it: its one process imports what every step needs before forking
# (mt_run.runner), writing the bytecode of just those modules.
BYTECODE := $(VENV)/.bytecode
bytecode: $(BYTECODE)
$(BYTECODE): $(STAMP) scripts/warm_bytecode.py
	$(BIN)/python scripts/warm_bytecode.py
	touch $(BYTECODE)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: setup
	$(BIN)/mt demo

# pytest-xdist: three workers on a 2-core machine (each test's processes wait on subprocesses, servers and locks part of
# the time: a third worker fills it; every torch gets one thread, tests/conftest.py); a test file is one unit, handed
# out longest first (tests/conftest.py, "pytest-xdist"). `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 3
PYTEST  := WANDB_MODE=disabled $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# the whole suite, slow tests included (what .ci/run runs)
test: setup bytecode browser services
	$(PYTEST)

# the inner loop: everything but the tests marked slow
test-fast: setup bytecode
	$(PYTEST) -m 'not slow'

# only the slow ones: a study end to end through Dagster, the Pipes runs, lineage through Dagster, the browser
test-slow: setup bytecode browser services
	$(PYTEST) -m slow

# `dagster dev` on 127.0.0.1:3000 in a process group of its own: Ctrl-C or SIGTERM stops all of it in 5 s (mt_cli/ui.py)
ui: setup
	$(BIN)/mt ui --port 3000

clean-artifacts:
	rm -rf artifacts .dagster
