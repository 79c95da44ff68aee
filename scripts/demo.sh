#!/usr/bin/env bash
# A demo without Ollama: llama-server with the tiny scripted model, and the gateway
# in front of it on http://127.0.0.1:12434. Ctrl-C stops both.
#   bash scripts/demo.sh
# then, in another shell:
#   curl -s http://127.0.0.1:12434/v1/responses -H 'Content-Type: application/json' \
#        -d '{"model": "tiny-llama", "input": "hi"}'
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --disable-pip-version-check -q ".[test]"
rm -rf build ./*.egg-info

cache="${NOMYO_LLAMA_CACHE:-$HOME/.cache/nomyo-router}"
mkdir -p "$cache/demo"
server="$(PYTHON=.venv/bin/python bash scripts/llama-server.sh)"
model="$cache/tiny-model.gguf"
.venv/bin/python scripts/make_tiny_model.py "$model" >&2

llama_port="${LLAMA_PORT:-8081}"
"$server" -m "$model" --alias tiny-llama --jinja --host 127.0.0.1 --port "$llama_port" \
    -c 16384 -np 2 -t 1 --no-webui --reasoning-format deepseek >"$cache/demo/llama-server.log" 2>&1 &
llama_pid=$!
trap 'kill $llama_pid 2>/dev/null || true' EXIT

cat >"$cache/demo/config.yaml" <<YAML
endpoints: []
llama_server_endpoints: ["http://127.0.0.1:$llama_port/v1"]
max_concurrent_connections: 2
db_path: $cache/demo/store.db
YAML

for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$llama_port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "llama-server is serving the tiny model as 'tiny-llama'; starting the gateway on :12434" >&2
echo "try: curl -s http://127.0.0.1:12434/v1/responses -H 'Content-Type: application/json' -d '{\"model\": \"tiny-llama\", \"input\": \"hi\"}'" >&2
NOMYO_ROUTER_CONFIG_PATH="$cache/demo/config.yaml" .venv/bin/python serve.py --host 127.0.0.1 --port 12434
