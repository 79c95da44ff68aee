"""Tests of the Ollama-protocol test server, driven over real sockets with httpx and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from .ollama_server import DEFAULT_TEXT, LONG_CAP, THINK_TEXT, OllamaTestServer

pytestmark = pytest.mark.e2e

USER_HI = [{"role": "user", "content": "hi there"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")


@pytest.fixture(scope="module")
def running():
    """One server for the module, started on a free port."""
    with OllamaTestServer(["tiny:latest", "other:7b"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture
def server(running):
    """The module's server with knobs and counters reset for each test."""
    running.chunk_delay = running.first_byte_delay = 0.0
    running.fail_status = running.fail_count = running.drop_after_chunks = None
    running.models, running.loaded = ["tiny:latest", "other:7b"], ["tiny:latest"]
    _wait_for(lambda: running.in_flight == 0)
    running.reset()
    return running


@pytest.fixture
def http(server):
    """A synchronous httpx client bound to the server."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(server):
    """An openai SDK client pointed at the server's OpenAI-compatible layer, without retries."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", max_retries=0, timeout=10) as client:
        yield client


def _wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def _sse_events(raw: str) -> list[str]:
    """Split an SSE body into its ``data:`` payloads, checking the framing on the way."""
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def _stream_chunks(sdk, **kwargs) -> list:
    return list(sdk.chat.completions.create(model="tiny:latest", stream=True, **kwargs))


# Native and listing endpoints


def test_version(http):
    response = http.get("/api/version")
    assert response.status_code == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+", response.json()["version"])


def test_tags_lists_every_model_with_details(http):
    models = http.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["tiny:latest", "other:7b"]
    for entry in models:
        assert entry["model"] == entry["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
        assert isinstance(entry["size"], int) and entry["size"] > 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", entry["modified_at"])
        assert {"format", "family", "families", "parameter_size", "quantization_level"} <= set(entry["details"])
    assert models[1]["details"]["parameter_size"] == "7B"


def test_ps_reports_only_loaded_models(http, server):
    models = http.get("/api/ps").json()["models"]
    assert [m["name"] for m in models] == ["tiny:latest"]
    assert {"name", "model", "size", "digest", "details", "expires_at", "size_vram"} <= set(models[0])
    server.loaded = []
    assert http.get("/api/ps").json() == {"models": []}


def test_model_lists_follow_runtime_changes(http, server):
    server.models = ["fresh:latest"]
    assert [m["name"] for m in http.get("/api/tags").json()["models"]] == ["fresh:latest"]
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["fresh:latest"]


def test_v1_models_openai_list(http, sdk):
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0] == {"id": "tiny:latest", "object": "model", "created": body["data"][0]["created"],
                               "owned_by": "library"}
    assert isinstance(body["data"][0]["created"], int)
    assert [m.id for m in sdk.models.list()] == ["tiny:latest", "other:7b"]
    assert sdk.models.retrieve("tiny:latest").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("missing:latest")


# OpenAI-compatible chat: scripted replies


def test_default_reply_non_stream(sdk):
    response = sdk.chat.completions.create(model="tiny:latest", messages=USER_HI)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.system_fingerprint == "fp_ollama"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == DEFAULT_TEXT == "Hello from the Ollama test server."
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == 2
    assert response.usage.completion_tokens == 6
    assert response.usage.total_tokens == 8


def test_model_name_without_tag_resolves_to_latest(sdk):
    response = sdk.chat.completions.create(model="tiny", messages=USER_HI)
    assert response.choices[0].message.content == DEFAULT_TEXT
    assert response.model == "tiny"


def test_default_reply_stream(sdk):
    chunks = _stream_chunks(sdk, messages=USER_HI)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == DEFAULT_TEXT
    assert pieces == ["Hello", " from", " the", " Ollama", " test", " server."]
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_stream_framing_and_usage_chunk(http):
    body = {"model": "tiny:latest", "messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = _sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks[:-1])
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks[:-1])


def test_think_non_stream_uses_reasoning_field(http):
    body = {"model": "tiny:latest", "messages": [{"role": "user", "content": "ponder [think]"}]}
    message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["reasoning"] == THINK_TEXT == "Thinking it over."
    assert message["content"] == DEFAULT_TEXT
    assert "reasoning_content" not in message


def test_think_stream_reasoning_deltas_come_first(sdk):
    chunks = _stream_chunks(sdk, messages=[{"role": "user", "content": "ponder [think]"}],
                            stream_options={"include_usage": True})
    kinds, reasoning, content = [], "", ""
    for chunk in chunks[:-1]:
        delta = chunk.choices[0].delta.model_dump()
        if delta.get("reasoning"):
            kinds.append("r")
            reasoning += delta["reasoning"]
        if delta.get("content"):
            kinds.append("c")
            content += delta["content"]
    assert reasoning == THINK_TEXT and content == DEFAULT_TEXT
    assert kinds == ["r"] * 3 + ["c"] * 6
    assert chunks[-1].usage.completion_tokens == 9


def test_long_respects_max_tokens(sdk):
    messages = [{"role": "user", "content": "go on [long]"}]
    response = sdk.chat.completions.create(model="tiny:latest", messages=messages, max_tokens=7)
    assert len(response.choices[0].message.content.split()) == 7
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 7
    chunks = _stream_chunks(sdk, messages=messages, max_tokens=5)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 5 and text == response.choices[0].message.content.rsplit(" ", 2)[0]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_long_without_max_tokens_stops_at_cap(sdk):
    response = sdk.chat.completions.create(model="tiny:latest", messages=[{"role": "user", "content": "[long]"}])
    assert len(response.choices[0].message.content.split()) == LONG_CAP
    assert response.choices[0].finish_reason == "length"


def test_max_tokens_truncates_default_reply(sdk):
    response = sdk.chat.completions.create(model="tiny:latest", messages=USER_HI, max_tokens=3)
    assert response.choices[0].message.content == "Hello from the"
    assert response.choices[0].finish_reason == "length"


def test_tool_call_non_stream(sdk):
    response = sdk.chat.completions.create(model="tiny:latest", messages=USER_HI, tools=[WEATHER, TIME])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ""
    [call] = choice.message.tool_calls
    assert CALL_ID.match(call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_call_stream_whole_call_in_one_chunk(sdk):
    chunks = _stream_chunks(sdk, messages=USER_HI, tools=[TIME, WEATHER])
    with_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(with_calls) == 1
    [call] = with_calls[0].choices[0].delta.tool_calls
    assert call.index == 0 and CALL_ID.match(call.id) and call.type == "function"
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)


@pytest.mark.parametrize("tools, names", [([WEATHER, TIME], ["get_weather", "get_time"]),
                                          ([WEATHER], ["get_weather", "get_weather"])])
def test_two_tool_calls_in_one_turn(sdk, tools, names):
    messages = [{"role": "user", "content": "both please [two]"}]
    calls = sdk.chat.completions.create(model="tiny:latest", messages=messages, tools=tools).choices[0].message.tool_calls
    assert [c.function.name for c in calls] == names
    assert len({c.id for c in calls}) == 2
    chunks = _stream_chunks(sdk, messages=messages, tools=tools)
    [streamed] = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert [c.index for c in streamed] == [0, 1]
    assert [c.function.name for c in streamed] == names
    assert streamed[0].id != streamed[1].id


def test_tool_result_is_echoed(sdk):
    messages = [*USER_HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abcdefgh", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_abcdefgh", "content": "18C and sunny"}]
    response = sdk.chat.completions.create(model="tiny:latest", messages=messages, tools=[WEATHER])
    assert response.choices[0].message.content == "The tool said: 18C and sunny"
    assert response.choices[0].finish_reason == "stop"
    chunks = _stream_chunks(sdk, messages=messages, tools=[WEATHER])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The tool said: 18C and sunny"


# Errors


def test_unknown_model_is_404_with_openai_error_body(http, sdk):
    response = http.post("/v1/chat/completions", json={"model": "ghost:latest", "messages": USER_HI})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": 'model "ghost:latest" not found, try pulling it first',
                                         "type": "api_error", "param": None, "code": None}}
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="ghost", messages=USER_HI)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"model": "tiny:latest", "messages": []}',
                                     b'{"model": "tiny:latest", "messages": [{"role": "user", "content": null}]}',
                                     b'{"model": "tiny:latest", "messages": "hi"}'])
def test_malformed_bodies_are_400(http, content):
    response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# Fault knobs


@pytest.mark.parametrize("status, error", [(429, openai.RateLimitError), (500, openai.InternalServerError),
                                           (503, openai.InternalServerError)])
def test_fail_status(http, sdk, server, status, error):
    server.fail_status = status
    response = http.post("/v1/chat/completions", json={"model": "tiny:latest", "messages": USER_HI})
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(error) as caught:
        sdk.chat.completions.create(model="tiny:latest", messages=USER_HI, stream=True)
    assert caught.value.status_code == status
    native = http.post("/api/chat", json={"model": "tiny:latest", "messages": USER_HI})
    assert native.status_code == status and isinstance(native.json()["error"], str)
    assert server.failures_sent == 3


def test_fail_count_heals_after_n_failures(sdk, server):
    server.fail_status, server.fail_count = 500, 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="tiny:latest", messages=USER_HI)
    assert sdk.chat.completions.create(model="tiny:latest", messages=USER_HI).choices[0].message.content == DEFAULT_TEXT
    assert server.requests_total == 3


def test_drop_after_chunks_aborts_sdk_stream(sdk, server):
    server.drop_after_chunks = 2
    received = []
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in sdk.chat.completions.create(model="tiny:latest", messages=USER_HI, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["Hello", " from"]
    _wait_for(lambda: server.in_flight == 0)


def test_drop_after_chunks_is_an_unclean_close(http, server):
    server.drop_after_chunks = 3
    raw = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "tiny:latest", "messages": USER_HI, "stream": True}) as response:
            for part in response.iter_raw():
                raw += part
    assert raw.count(b"data: ") == 3 and b"[DONE]" not in raw
    server.drop_after_chunks = 100
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "tiny:latest", "messages": USER_HI, "stream": True}) as response:
        assert response.read().endswith(b"data: [DONE]\n\n")


def test_chunk_delay_and_first_byte_delay(http, server):
    body = {"model": "tiny:latest", "messages": USER_HI, "stream": True}
    server.first_byte_delay = 0.2
    started = time.monotonic()
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        headers_at = time.monotonic() - started
        response.read()
    assert headers_at >= 0.2
    server.first_byte_delay, server.chunk_delay = 0.0, 0.05
    started = time.monotonic()
    arrivals = []
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8  # six words, the finishing chunk, [DONE]
    assert arrivals[-1] - arrivals[0] >= 0.05 * 7 * 0.9  # seven gaps between eight frames
    assert arrivals[0] < 0.15  # no delay before the first chunk


# Counters


def test_counters_and_recorded_bodies(http, sdk, server):
    sdk.chat.completions.create(model="tiny:latest", messages=USER_HI, temperature=0.5)
    http.post("/api/chat", json={"model": "tiny:latest", "messages": USER_HI, "stream": False})
    assert server.requests_total == 2
    assert server.requests[0]["messages"] == USER_HI and server.requests[0]["temperature"] == 0.5
    assert server.requests[1]["stream"] is False
    stats = http.get("/_test/stats").json()
    assert stats["requests_total"] == 2 and stats["in_flight"] == 0 and stats["peak_in_flight"] == 1
    assert stats["requests"] == server.requests
    http.get("/api/tags")
    assert server.requests_total == 2  # only chat requests are counted


def test_in_flight_while_streaming(http, server):
    server.chunk_delay = 0.05
    body = {"model": "tiny:latest", "messages": USER_HI, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        assert server.in_flight == 1
        assert http.get("/_test/stats").json()["in_flight"] == 1
        for _ in lines:
            pass
    _wait_for(lambda: server.in_flight == 0)


def test_client_disconnect_is_noticed(http, server):
    server.chunk_delay = 0.05
    body = {"model": "tiny:latest", "messages": [{"role": "user", "content": "[long]"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())
    _wait_for(lambda: server.disconnects == 1 and server.in_flight == 0)


async def test_peak_in_flight_with_concurrent_requests(server):
    server.first_byte_delay = 0.2
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        replies = await asyncio.gather(*[client.chat.completions.create(model="tiny:latest", messages=USER_HI)
                                         for _ in range(4)])
    assert [r.choices[0].message.content for r in replies] == [DEFAULT_TEXT] * 4
    assert server.peak_in_flight == 4 and server.requests_total == 4
    _wait_for(lambda: server.in_flight == 0)


# Native /api/chat


def test_native_chat_stream_ndjson(http):
    body = {"model": "tiny:latest", "messages": [{"role": "user", "content": "hm [think]"}]}
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(not line["done"] for line in lines[:-1])
    assert "".join(line["message"].get("thinking", "") for line in lines) == THINK_TEXT
    assert "".join(line["message"]["content"] for line in lines) == DEFAULT_TEXT
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 2 and final["eval_count"] == 9


def test_native_chat_non_stream_tools_and_budget(http):
    body = {"model": "tiny", "messages": USER_HI, "stream": False, "tools": [WEATHER]}
    reply = http.post("/api/chat", json=body).json()
    [call] = reply["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"] == {"city": "Paris"}
    body = {"model": "tiny:latest", "messages": USER_HI, "stream": False, "options": {"num_predict": 2}}
    reply = http.post("/api/chat", json=body).json()
    assert reply["message"]["content"] == "Hello from" and reply["done_reason"] == "length"


def test_native_unknown_model(http):
    response = http.post("/api/chat", json={"model": "ghost", "messages": USER_HI})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "ghost" not found, try pulling it first'}


# Lifecycle


def test_sync_context_manager_starts_and_stops():
    with OllamaTestServer(["a:latest"]) as server:
        url = server.url
        assert httpx.get(url + "/api/tags").json()["models"][0]["name"] == "a:latest"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/version", timeout=1)


async def test_async_context_manager_and_knobs_at_construction():
    async with OllamaTestServer(["b:latest"], fail_status=429) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post("/v1/chat/completions", json={"model": "b", "messages": USER_HI})
    assert response.status_code == 429


def test_runs_as_a_script():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("ollama_server.py")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--models", "x:latest,y:3b"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                names = [m["name"] for m in httpx.get(f"http://127.0.0.1:{port}/api/tags").json()["models"]]
                break
            except httpx.ConnectError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert names == ["x:latest", "y:3b"]
    finally:
        process.terminate()
        process.wait(5)
