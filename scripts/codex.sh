#!/usr/bin/env bash
# Install Codex CLI (the version the end-to-end tier drives) from npm into the cache outside the
# repository, once; print the path of its `codex` command.
set -euo pipefail
version="${NOMYO_CODEX_VERSION:-0.169.0}"
cache="${NOMYO_LLAMA_CACHE:-$HOME/.cache/nomyo-router}/codex-$version"
bin="$cache/node_modules/.bin/codex"
if [ ! -x "$bin" ]; then
    mkdir -p "$cache"
    npm install --no-audit --no-fund --silent --prefix "$cache" "@openai/codex@$version" >&2
fi
"$bin" --version >&2
echo "$bin"
