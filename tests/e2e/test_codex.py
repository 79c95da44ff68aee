"""Codex CLI, unchanged and with its default configuration (only a provider block added), driven
through the gateway in front of the scripted Ollama-protocol server: a tool call, the command run,
its output sent back, the final answer; a resumed session; a namespaced sub-agent tool."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.ollama_server import CODEX_COMMAND, THINK_TEXT, TOOL_RESULT_PREFIX, OllamaTestServer
from tests.e2e.processes import GatewayProcess

MODEL = "qwen3-coder:30b"
CLIENT_MODEL = "gpt-5.1-codex"


def _codex() -> str:
    binary = os.environ.get("NOMYO_CODEX") or next(
        (str(p) for p in sorted((Path.home() / ".cache" / "nomyo-router").glob("codex-*/node_modules/.bin/codex"))),
        "")
    if not (binary and Path(binary).exists()):
        message = "Codex CLI is missing: run `bash scripts/test.sh`, which installs it from npm"
        if os.environ.get("NOMYO_E2E_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def setup(tmp_path):
    codex = _codex()
    with OllamaTestServer(models=[MODEL], loaded=[MODEL]) as backend:
        gateway = GatewayProcess(tmp_path, endpoints=[backend.url], model_aliases={CLIENT_MODEL: MODEL}).start()
        home = tmp_path / "codex-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'model = "{CLIENT_MODEL}"\nmodel_provider = "nomyo"\n\n[model_providers.nomyo]\n'
            f'name = "NOMYO Router"\nbase_url = "{gateway.url}/v1"\nwire_api = "responses"\n')
        work = tmp_path / "work"
        work.mkdir()
        env = {**os.environ, "CODEX_HOME": str(home), "OPENAI_API_KEY": "unused"}

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([codex, "exec", "--skip-git-repo-check", *args], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        try:
            yield run, backend, gateway
        finally:
            gateway.stop()


def _assistant_calls(messages: list[dict]) -> list[str]:
    return [c["function"]["name"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]


def test_codex_runs_a_tool_and_resumes_its_session(setup):
    run, backend, gateway = setup
    first = run("[think] Show me the greeting.")
    assert first.returncode == 0, first.stderr[-3000:]
    assert TOOL_RESULT_PREFIX in first.stdout and "nomyo-codex-e2e" in first.stdout, first.stdout[-2000:]
    turn, answer = backend.requests[0], backend.requests[1]
    offered = [t["function"]["name"] for t in turn["tools"]]
    assert "exec_command" in offered and "multi_agent_v1__spawn_agent" in offered and turn["stream"] is True
    assert answer["messages"][-1]["role"] == "tool" and "nomyo-codex-e2e" in answer["messages"][-1]["content"]
    assert _assistant_calls(answer["messages"]) == ["exec_command"]
    assert {r["model"] for r in backend.requests} == {MODEL}

    seen = len(backend.requests)
    resumed = run("resume", "--last", "Once more, please.")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = backend.requests[seen]["messages"]
    assert "Once more, please." in str(history[-1]["content"])
    assert _assistant_calls(history) == ["exec_command"]          # the earlier call, resent and mapped back
    assert THINK_TEXT in [m.get("reasoning_content") or m.get("reasoning") for m in history]
    assert CODEX_COMMAND in str(history)
    assert "Traceback" not in gateway.log.read_text()


def test_codex_gets_a_namespaced_tool_call_back_with_its_namespace(setup):
    run, backend, gateway = setup
    done = run("[agent] Wait for the helper agent.")
    assert done.returncode == 0, done.stderr[-3000:]
    follow_up = backend.requests[1]["messages"]
    assert _assistant_calls(follow_up) == ["multi_agent_v1__wait_agent"]
    # Codex ran the call as its wait_agent tool (in the multi_agent_v1 namespace): the output it
    # sent back is that tool's own answer, not an unknown-tool error.
    output = follow_up[-1]
    assert output["role"] == "tool" and output["content"].startswith("invalid agent id"), output
