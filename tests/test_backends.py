"""backends.py over real sockets: discovery, routing, usage slots, clients, calls and faults."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import backends
from backends import BackendStreamError, BackendUnavailable, Endpoint, Registry, create_chat_with_retries
from chat_client import ChatClient
from config import Settings
from errors import APIError
from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer


@pytest.fixture
def ollama():
    with OllamaTestServer(models=["tiny:latest", "other:7b"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture
def ollama_b():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _registry(*urls: str, **settings) -> Registry:
    registry = Registry(Settings(endpoints=list(urls), **settings))
    await registry.refresh_all()
    return registry


async def test_discovery_reads_tags_and_ps(ollama):
    registry = await _registry(ollama.url)
    ep = registry.endpoints[ollama.url]
    assert ep.kind == "ollama" and ep.base_url == f"{ollama.url}/v1"
    assert ep.models == {"tiny:latest", "other:7b"}
    assert ep.loaded == {"tiny:latest"}
    assert ep.reachable is True
    assert registry.models() == ["other:7b", "tiny:latest"]
    await registry.close()


async def test_discovery_of_openai_compatible_endpoint(ollama):
    registry = await _registry(f"{ollama.url}/v1")
    ep = registry.endpoints[f"{ollama.url}/v1"]
    assert ep.kind == "openai"
    assert "tiny:latest" in ep.models and ep.loaded == ep.models
    await registry.close()


async def test_unreachable_endpoint_is_marked_down():
    url = f"http://127.0.0.1:{_free_port()}"
    registry = await _registry(url, connect_timeout=1)
    assert registry.endpoints[url].reachable is False
    assert "Connect" in registry.endpoints[url].last_error
    await registry.close()


def test_latest_tag_matching():
    ollama = Endpoint(url="http://o:11434", kind="ollama", base_url="http://o:11434/v1", native=False,
                      models={"llama3:latest", "qwen:7b"})
    vllm = Endpoint(url="http://v/v1", kind="openai", base_url="http://v/v1", native=False, models={"llama3"})
    assert ollama.name_for("llama3") == "llama3:latest"
    assert ollama.name_for("qwen") is None
    assert ollama.name_for("qwen:7b") == "qwen:7b"
    assert vllm.name_for("llama3:latest") == "llama3"
    assert vllm.name_for("llama3") == "llama3"


async def test_choose_unknown_model_is_404(ollama):
    registry = await _registry(ollama.url)
    with pytest.raises(APIError) as info:
        await registry.choose("missing-model")
    assert info.value.status == 404 and info.value.code == "model_not_found" and info.value.param == "model"
    await registry.close()


async def test_choose_prefers_loaded_then_least_busy(ollama, ollama_b):
    ollama.loaded = []
    registry = await _registry(ollama.url, ollama_b.url, max_concurrent_connections=4)
    # b has the model loaded: preferred while it has slots, even when busier
    assert await registry.choose("tiny") == (ollama_b.url, "tiny:latest")
    assert await registry.choose("tiny") == (ollama_b.url, "tiny:latest")
    ollama.loaded = ["tiny:latest"]
    await registry.refresh_all()
    # both loaded now: the least busy wins
    assert await registry.choose("tiny") == (ollama.url, "tiny:latest")
    assert registry.usage == {(ollama_b.url, "tiny:latest"): 2, (ollama.url, "tiny:latest"): 1}
    await registry.close()


async def test_max_concurrent_connections_queues_then_times_out(ollama):
    registry = await _registry(ollama.url, max_concurrent_connections=1, queue_timeout=5)
    first = await registry.choose("tiny")
    waiter = asyncio.create_task(registry.choose("tiny"))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # the only slot is taken
    await registry.release(*first)
    assert await asyncio.wait_for(waiter, 2) == first
    assert registry.usage == {first: 1}
    registry.settings.queue_timeout = 0.05
    with pytest.raises(APIError) as info:
        await registry.choose("tiny")
    assert info.value.status == 429
    await registry.release(*first)
    assert registry.usage == {}
    await registry.close()


async def test_release_never_goes_negative(ollama):
    registry = await _registry(ollama.url)
    await registry.release(ollama.url, "tiny:latest")
    assert registry.usage == {}
    await registry.close()


async def test_one_pooled_client_per_endpoint(ollama, ollama_b):
    registry = Registry(Settings(endpoints=[ollama.url, ollama_b.url]))
    client = backends._make_openai_client(registry, ollama.url)
    assert client is backends._make_openai_client(registry, ollama.url)
    assert client is not backends._make_openai_client(registry, ollama_b.url)
    assert str(client.base_url).rstrip("/") == f"{ollama.url}/v1"
    await registry.close()


def test_native_endpoints():
    registry = Registry(Settings(endpoints=["https://api.openai.com/v1", "http://o:11434",
                                                          "http://vllm:8000/v1"],
                                               native_responses_endpoints=["http://vllm:8000/v1"]))
    assert backends.is_ext_openai_endpoint(registry, "https://api.openai.com/v1")
    assert backends.is_ext_openai_endpoint(registry, "http://vllm:8000/v1")
    assert not backends.is_ext_openai_endpoint(registry, "http://o:11434")
    assert not backends.is_ext_openai_endpoint(registry, "http://unknown")
    assert registry.endpoints["http://o:11434"].kind == "ollama"


async def test_chat_non_stream(ollama):
    registry = await _registry(ollama.url)
    completion = await create_chat_with_retries(
        registry.client(ollama.url), {"model": "tiny:latest", "messages": [{"role": "user", "content": "hi"}]})
    assert completion["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert completion["usage"]["completion_tokens"] > 0
    assert "prompt_tokens_details" in completion["usage"]  # shaped as the SDK types it
    await registry.close()


async def test_chat_stream_yields_plain_chunks(ollama):
    registry = await _registry(ollama.url)
    stream = await create_chat_with_retries(
        registry.client(ollama.url), {"model": "tiny:latest", "stream": True,
                                      "stream_options": {"include_usage": True},
                                      "messages": [{"role": "user", "content": "hi"}]})
    chunks = [chunk async for chunk in stream]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_TEXT
    assert chunks[-1]["usage"]["prompt_tokens"] > 0
    await registry.close()


async def test_upstream_status_is_passed_on(ollama):
    ollama.fail_status = 429
    registry = await _registry(ollama.url)
    with pytest.raises(APIError) as info:
        await create_chat_with_retries(registry.client(ollama.url),
                                       {"model": "tiny:latest", "messages": [{"role": "user", "content": "x"}]})
    assert info.value.status == 429
    assert "scripted failure" in info.value.message
    await registry.close()


async def test_stream_dropped_mid_way_raises(ollama):
    ollama.drop_after_chunks = 2
    registry = await _registry(ollama.url)
    stream = await create_chat_with_retries(
        registry.client(ollama.url), {"model": "tiny:latest", "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]})
    received = []
    with pytest.raises(BackendStreamError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    await registry.close()


async def test_connection_refused_is_backend_unavailable():
    url = f"http://127.0.0.1:{_free_port()}"
    registry = Registry(Settings(endpoints=[url], connect_timeout=1))
    with pytest.raises(BackendUnavailable) as info:
        await create_chat_with_retries(registry.client(url),
                                       {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert info.value.status == 502 and info.value.code == "backend_unavailable"
    assert "ClientConnectorError" in info.value.message  # the cause is named
    await registry.close()


@asynccontextmanager
async def serving(routes: dict):
    """An aiohttp server on 127.0.0.1 with ``routes`` (``{("POST", path): handler}``); yields its base URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def chat_server(handler, read_timeout: float = 10):
    """A Chat Completions server whose ``handler(request)`` answers ``POST /v1/chat/completions``;
    yields a :class:`ChatClient` of it."""
    async with serving({("POST", "/v1/chat/completions"): handler}) as url:
        client = ChatClient(f"{url}/v1", "k", connect_timeout=2, read_timeout=read_timeout, max_connections=4)
        try:
            yield client
        finally:
            await client.close()


def scripted_server(handler):
    """A Chat Completions server on 127.0.0.1: ``handler(body) -> (status, json)`` answers each request;
    yields a :class:`ChatClient` of it."""
    async def chat(request: web.Request) -> web.Response:
        status, payload = handler(json.loads(await request.read()))
        return web.json_response(payload, status=status)
    return chat_server(chat)


async def test_other_upstream_4xx_is_not_retried():
    calls = []

    def handler(body):
        calls.append(1)
        return 400, {"error": {"message": "bad thing", "code": "bad", "type": "invalid"}}

    async with scripted_server(handler) as client:
        with pytest.raises(APIError) as info:
            await create_chat_with_retries(client, {"model": "x", "messages": []})
    assert (info.value.status, info.value.message, info.value.code) == (400, "bad thing", "bad")
    assert len(calls) == 1


async def test_a_stream_is_complete_at_done_even_when_its_body_stays_open():
    """Nothing after ``[DONE]`` holds or fails the answer: the body is left to a bounded drain."""
    held = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}
        await reply.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
        held.set()
        await asyncio.sleep(30)          # the body never ends
        return reply

    async with chat_server(chat, read_timeout=30) as client:
        stream = await create_chat_with_retries(client, {"model": "x", "messages": [], "stream": True})
        async with asyncio.timeout(5):
            chunks = [chunk async for chunk in stream]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hi"] and held.is_set()


@pytest.mark.parametrize("status,payload,detail", [
    (200, {"error": {"message": "model is loading"}}, "it answered 200 with an error: model is loading"),
    (200, {"id": "x", "object": "chat.completion"}, "the answer has no choices"),
    (200, [1, 2], "the answer is not a JSON object"),
])
async def test_an_unusable_answer_is_502_naming_the_backend(status, payload, detail):
    async with scripted_server(lambda body: (status, payload)) as client:
        with pytest.raises(APIError) as info:
            await create_chat_with_retries(client, {"model": "x", "messages": []})
    assert (info.value.status, info.value.code) == (502, "bad_upstream_response")
    assert client.base_url in info.value.message and detail in info.value.message


async def test_an_answer_past_max_upstream_bytes_is_502():
    big = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 5000}}]}
    async with scripted_server(lambda body: (200, big)) as client:
        client._max_answer_bytes = 2048
        with pytest.raises(APIError) as info:
            await create_chat_with_retries(client, {"model": "x", "messages": []})
    assert info.value.code == "bad_upstream_response" and "max_upstream_bytes" in info.value.message


async def test_odd_model_entries_from_discovery_are_skipped():
    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "good:latest"}, {"name": None}, {"model": 7}, "junk", {}]})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"models": [None]})

    async with serving({("GET", "/api/tags"): tags, ("GET", "/api/ps"): ps}) as url:
        registry = Registry(Settings(endpoints=[url]))
        try:
            await registry.refresh_all()
            assert registry.endpoints[url].reachable and registry.models() == ["good:latest"]
        finally:
            await registry.close()


def test_discovery_ttl_has_a_floor():
    with pytest.raises(ValueError):
        Settings(discovery_ttl=0.000001)


async def test_an_answer_cut_mid_body_is_not_generated_again():
    """Only a call that got no answer at all is retried: one whose body broke off is a 502, asked once."""
    calls = []

    async def chat(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        reply = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "500"})
        await reply.prepare(request)
        await reply.write(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hal')
        request.transport.close()
        return reply

    async with chat_server(chat, read_timeout=5) as client:
        with pytest.raises(APIError) as info:
            await create_chat_with_retries(client, {"model": "x", "messages": []})
    assert (info.value.status, info.value.code, len(calls)) == (502, "bad_upstream_response", 1)
