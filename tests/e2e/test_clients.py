"""Real client libraries with their default settings against the gateway under uvicorn, in front of
the scripted Ollama-protocol server: the OpenAI Node SDK, the Vercel AI SDK's Responses provider and
the OpenAI Agents SDK (the Python SDK is driven throughout the rest of the tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, THINK_TEXT, TOOL_RESULT_PREFIX, OllamaTestServer
from tests.e2e.processes import GatewayProcess

CLIENTS = Path(__file__).parent / "clients"
MODEL = "tiny:latest"
#: A name the Vercel AI SDK takes for a reasoning model (it sends reasoning options only for those).
REASONING_ALIAS = "gpt-5-mini"


def _required(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not (value and Path(value).exists()):
        message = f"{what} is missing: run `bash scripts/test.sh`, which installs it"
        if os.environ.get("NOMYO_E2E_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(value)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with OllamaTestServer(models=[MODEL], loaded=[MODEL]) as backend:
        proc = GatewayProcess(tmp_path_factory.mktemp("clients"), endpoints=[backend.url],
                              model_aliases={REASONING_ALIAS: MODEL}).start()
        try:
            yield proc, backend
        finally:
            proc.stop()


def _node(script: str, tmp_path: Path, *args: str) -> dict:
    modules = _required("NOMYO_NODE_CLIENTS", "The Node client libraries") / "node_modules"
    (tmp_path / "node_modules").symlink_to(modules)
    copy = tmp_path / script
    copy.write_text((CLIENTS / script).read_text())
    done = subprocess.run(["node", str(copy), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_openai_node_sdk(gateway, tmp_path):
    proc, _ = gateway
    out = _node("node_sdk.mjs", tmp_path, f"{proc.url}/v1", MODEL)
    assert out == {"plain": DEFAULT_TEXT, "deltas": DEFAULT_TEXT, "final": DEFAULT_TEXT, "status": "completed",
                   "retrieved": DEFAULT_TEXT}


def test_the_vercel_ai_sdk_runs_a_tool_and_shows_reasoning(gateway, tmp_path):
    proc, backend = gateway
    out = _node("vercel_ai.mjs", tmp_path, f"{proc.url}/v1", REASONING_ALIAS)
    assert out["toolResults"] == ["Sunny in Paris"] and out["steps"] == 2
    assert out["toolText"] == TOOL_RESULT_PREFIX + "Sunny in Paris"
    assert out["text"] == DEFAULT_TEXT and out.get("reasoning") == THINK_TEXT     # shown from the summary
    asked = [r for r in backend.requests if "[think]" in str(r["messages"])]
    assert asked and all(r["model"] == MODEL for r in asked)


def test_the_openai_agents_sdk_runs_a_tool(gateway, tmp_path):
    proc, _ = gateway
    target = _required("NOMYO_AGENTS_TARGET", "The OpenAI Agents SDK")
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, str(CLIENTS / "agents_sdk.py"), f"{proc.url}/v1", MODEL], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["final"] == TOOL_RESULT_PREFIX + "Sunny in Paris"
    assert out["items"] == ["tool_call_item", "tool_call_output_item", "message_output_item"]


def test_the_agents_sdk_keeps_its_sessions_in_the_gateway(gateway, tmp_path):
    """OpenAIConversationsSession stores a two-turn tool loop in a gateway conversation;
    OpenAIResponsesCompactionSession compacts its history through ``/v1/responses/compact``."""
    proc, backend = gateway
    target = _required("NOMYO_AGENTS_TARGET", "The OpenAI Agents SDK")
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, str(CLIENTS / "agents_sessions.py"), f"{proc.url}/v1", REASONING_ALIAS],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    conversation, compaction = out["conversation"], out["compaction"]
    assert conversation["finals"] == [TOOL_RESULT_PREFIX + "Sunny in Paris"] * 2  # the server always asks of Paris
    turn = ["message", "function_call", "function_call_output", "message"]
    assert conversation["stored"] == turn * 2 and conversation["listed"] == turn * 2
    assert conversation["id"].startswith("conv_")
    # the second turn was asked with the first turn's items as its history
    rome = next(r for r in backend.requests if r["messages"][-1] == {"role": "user", "content": "And in Rome?"})
    assert "What is the weather in Paris?" in str(rome["messages"]) and "Sunny in Paris" in str(rome["messages"])
    assert compaction["finals"] == conversation["finals"]
    assert "compaction" in compaction["kept"]
    summarized = [r for r in backend.requests if "handover note" in str(r["messages"][-1].get("content"))]
    assert summarized


def test_the_agents_sdk_runs_a_hosted_mcp_tool_with_approval(tmp_path):
    """HostedMCPTool with an on_approval_request callback: the gateway asks, the SDK approves, the
    gateway runs the call on the local MCP server and the model answers from its output."""
    from tests.mcp_server import McpTestServer
    target = _required("NOMYO_AGENTS_TARGET", "The OpenAI Agents SDK")
    with OllamaTestServer(models=[MODEL], loaded=[MODEL]) as backend, McpTestServer() as mcp:
        proc = GatewayProcess(tmp_path, endpoints=[backend.url], model_aliases={REASONING_ALIAS: MODEL},
                              mcp_allowed_servers=[f"http://127.0.0.1:{mcp.port}/"]).start()
        try:
            done = subprocess.run([sys.executable, str(CLIENTS / "agents_mcp.py"), f"{proc.url}/v1", REASONING_ALIAS,
                                   mcp.url], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                                  capture_output=True, text=True, timeout=180)
        finally:
            proc.stop()
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["asked"] == ["weather"]
        assert out["final"] == TOOL_RESULT_PREFIX + "Sunny in Paris"
        assert mcp.calls == [("weather", {"city": "Paris"})]
