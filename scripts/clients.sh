#!/usr/bin/env bash
# Install the client libraries the end-to-end tier drives, once, outside the repository:
# the OpenAI Node SDK, the Vercel AI SDK and playwright-core (the dashboard's browser test
# drives chromium with it) from npm (into the cache), and the OpenAI Agents SDK from PyPI
# into .venv/agents-target (off the venv's path: it needs the PyPI `requests`, which this
# project's own `requests` package shadows). Prints the two folders.
set -euo pipefail
cd "$(dirname "$0")/.."
node_dir="${NOMYO_LLAMA_CACHE:-$HOME/.cache/nomyo-router}/node-clients-2"
if [ ! -d "$node_dir/node_modules/@ai-sdk/openai" ] || [ ! -d "$node_dir/node_modules/playwright-core" ]; then
    mkdir -p "$node_dir"
    npm install --no-audit --no-fund --silent --prefix "$node_dir" \
        openai@7.59.0 ai@7.0.173 @ai-sdk/openai@4.0.118 playwright-core@1.65.1 >&2
fi
agents=".venv/agents-target"
[ -d "$agents/agents" ] || .venv/bin/pip install --disable-pip-version-check -q --target "$agents" \
    "openai-agents==0.24.0" >&2
echo "$node_dir"
echo "$PWD/$agents"
