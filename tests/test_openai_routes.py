"""OpenAI's routes beside the Responses API (``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/models/{id}``), passed through on the same routing, driven by the
``openai`` SDK over the app, in front of the scripted Ollama-protocol server."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance import sdk_client_for
from tests.e2e.ollama_server import DEFAULT_TEXT, embedding_of
from tests.reliability.helpers import assert_openai_error

import router


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], max_concurrent_connections=1,
                               model_aliases={"gpt-4o-mini": "tiny"}) as http:
        yield http


async def test_chat_completions_through_the_sdk(gw, ollama):
    client = sdk_client_for(router.app)
    completion = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                      temperature=0.2)
    assert completion.choices[0].message.content == DEFAULT_TEXT
    sent = ollama.requests[-1]
    assert sent["model"] == "tiny:latest" and sent["temperature"] == 0.2   # as sent, but the endpoint's name
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_streamed_chat_completion_is_relayed_chunk_by_chunk(gw):
    client = sdk_client_for(router.app)
    stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_through_the_sdk(gw, ollama):
    client = sdk_client_for(router.app)
    made = await client.embeddings.create(model="tiny", input=["one", "two"])
    assert [d.embedding for d in made.data] == [embedding_of("one"), embedding_of("two")]
    assert ollama.requests[-1]["input"] == ["one", "two"]


async def test_text_completions_plain_and_streamed(gw):
    client = sdk_client_for(router.app)
    plain = await client.completions.create(model="tiny", prompt="hi")
    assert plain.choices[0].text == DEFAULT_TEXT
    stream = await client.completions.create(model="tiny", prompt="hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == DEFAULT_TEXT


async def test_models_by_id(gw):
    assert (await gw.get("/v1/models/tiny:latest")).json()["id"] == "tiny:latest"
    assert (await gw.get("/v1/models/gpt-4o-mini")).status_code == 200          # an alias of a served model
    assert (await gw.get("/v1/models/tiny")).json()["id"] == "tiny"             # Ollama's implied :latest
    assert_openai_error(await gw.get("/v1/models/nope"), 404, "model_not_found")


async def test_bad_requests_are_named(gw):
    assert_openai_error(await gw.post("/v1/chat/completions", json={"messages": []}), 400,
                        "missing_required_parameter")
    assert_openai_error(await gw.post("/v1/embeddings", json={"model": "tiny", "input": "x", "stream": True}), 400,
                        "invalid_value")
    assert_openai_error(await gw.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}), 404, "model_not_found")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    for extra in ({"stream": True, "stream_options": "yes"}, {"stream": True, "stream_options": ["include_usage"]},
                  {"stream_options": {"include_usage": True}}):
        assert_openai_error(await gw.post("/v1/chat/completions", json={**chat, **extra}), 400, "invalid_value")
    assert_openai_error(await gw.post("/v1/chat/completions", content=b"[1]",
                                      headers={"Content-Type": "application/json"}), 400, "invalid_json")


async def test_chat_completions_and_responses_share_the_model_slots(gw, ollama):
    """With max_concurrent_connections 1, a /v1/chat/completions call and a /v1/responses turn
    for the same model never reach the backend together: one waits for the other's slot."""
    ollama.first_byte_delay = 0.3
    chat = gw.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "a"}]})
    turn = gw.post("/v1/responses", json={"model": "tiny", "input": "b"})
    answers = await asyncio.gather(chat, turn, gw.post("/v1/embeddings", json={"model": "tiny", "input": "c"}))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert ollama.requests_total == 2 and ollama.peak_in_flight == 1
    assert router.app.state.gateway.registry.usage == {}                  # every slot given back


async def test_a_router_key_is_asked_for(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], router_api_key="sekrit") as http:
        refused = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
        assert refused.status_code == 401
        served = await http.post("/v1/chat/completions", headers={"Authorization": "Bearer sekrit"},
                                 json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT


async def test_usage_is_counted_per_endpoint_and_model(gw, ollama):
    """A plain and a streamed chat completion are both counted under the endpoint and the
    name it knows the model by; the stream is asked for its usage chunk, which the client,
    who did not ask for it, never sees."""
    stats = router.app.state.gateway.token_stats
    client = sdk_client_for(router.app)
    plain = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(model="tiny", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    chunks = [chunk async for chunk in stream]
    assert ollama.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)                       # no usage-only chunk relayed
    counted = stats.totals[(ollama.url, "tiny:latest")]
    assert counted == [2 * plain.usage.prompt_tokens, 2 * plain.usage.completion_tokens]


async def test_a_stream_that_asks_for_usage_gets_it(gw):
    client = sdk_client_for(router.app)
    stream = await client.chat.completions.create(model="tiny", stream=True, stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "hi"}])
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.fixture
async def cached(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True,
                               tenants={"a": {"keys": ["key-a"]}, "b": {"keys": ["key-b"]}}) as http:
        yield http


def _chat(text: str = "hi", **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], "nomyo": {"cache": True}, **extra}


async def test_the_cache_answers_a_repeated_chat_completion(cached, ollama):
    key = {"Authorization": "Bearer key-a"}
    first = await cached.post("/v1/chat/completions", json=_chat(), headers=key)
    second = await cached.post("/v1/chat/completions", json=_chat(), headers=key)
    assert first.status_code == second.status_code == 200
    assert second.json()["choices"] == first.json()["choices"]
    assert ollama.requests_total == 1 and "nomyo" not in ollama.requests[0]
    other_text = await cached.post("/v1/chat/completions", json=_chat("other"), headers=key)
    other_options = await cached.post("/v1/chat/completions", json=_chat(temperature=0.5), headers=key)
    uncached = await cached.post("/v1/chat/completions", json={**_chat(), "nomyo": {"cache": False}}, headers=key)
    assert [a.status_code for a in (other_text, other_options, uncached)] == [200, 200, 200]
    assert ollama.requests_total == 4


async def test_tenants_never_share_cached_answers(cached, ollama):
    await cached.post("/v1/chat/completions", json=_chat(), headers={"Authorization": "Bearer key-a"})
    await cached.post("/v1/chat/completions", json=_chat(), headers={"Authorization": "Bearer key-b"})
    assert ollama.requests_total == 2


async def test_a_streamed_answer_is_cached_and_replayed_as_a_stream(cached, ollama):
    key = {"Authorization": "Bearer key-a"}
    client = sdk_client_for(router.app, api_key="key-a")
    stream = await client.chat.completions.create(model="tiny", stream=True, extra_body={"nomyo": {"cache": True}},
                                                  messages=[{"role": "user", "content": "hi"}])
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == DEFAULT_TEXT
    plain = await cached.post("/v1/chat/completions", json=_chat(), headers=key)       # the stream's answer, whole
    assert plain.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT
    again = await client.chat.completions.create(model="tiny", stream=True, extra_body={"nomyo": {"cache": True}},
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hi"}])
    chunks = [c async for c in again]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0
    assert ollama.requests_total == 1


async def test_text_completions_are_cached_too(cached, ollama):
    key = {"Authorization": "Bearer key-a"}
    body = {"model": "tiny", "prompt": "hi", "nomyo": {"cache": True}}
    answers = [await cached.post("/v1/completions", json=body, headers=key) for _ in range(2)]
    assert answers[0].json()["choices"] == answers[1].json()["choices"]
    cache = router.app.state.gateway.cache
    assert (cache.hits, cache.misses) == (1, 1)


async def test_a_bad_nomyo_field_is_named(cached):
    key = {"Authorization": "Bearer key-a"}
    for nomyo in ({"cache": "yes"}, {"cache": True, "ttl": 5}, "cache"):
        assert_openai_error(await cached.post("/v1/chat/completions", json={**_chat(), "nomyo": nomyo}, headers=key),
                            400, "invalid_value")
    assert_openai_error(await cached.post("/v1/embeddings", json={"model": "tiny", "input": "x",
                                                                  "nomyo": {"cache": True}}, headers=key),
                        400, "invalid_value")


async def test_usage_shows_nomyo_routers_own_maps(gateway_factory, ollama):
    """``/api/usage`` has NOMYO Router's ``usage_counts`` (in flight now) and
    ``token_usage_counts`` (tokens served), per endpoint and model."""
    ollama.first_byte_delay = 2.0       # the call holds its slot while it is looked at, even on a loaded machine
    async with gateway_factory(endpoints=[ollama.url]) as http:
        call = asyncio.ensure_future(http.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}]}))
        for _ in range(200):
            during = (await http.get("/api/usage")).json()
            if during["usage_counts"]:
                break
            await asyncio.sleep(0.02)
        assert during["usage_counts"] == {ollama.url: {"tiny:latest": 1}}
        usage = (await call).json()["usage"]
        after = (await http.get("/api/usage")).json()
        assert after["usage_counts"] == {}
        assert after["token_usage_counts"] == {ollama.url: {"tiny:latest": usage["total_tokens"]}}


async def test_rerank_goes_to_an_openai_compatible_endpoint(gateway_factory, ollama):
    """``/v1/rerank`` (and ``/rerank``) is passed through to a server that has it (the scripted
    server's OpenAI-compatible layer, as llama.cpp's server or vLLM), its usage counted."""
    async with gateway_factory(endpoints=[f"{ollama.url}/v1"]) as http:
        body = {"model": "tiny:latest", "query": "capital of france",
                "documents": ["bread recipes", "paris is the capital of france", "the capital city"], "top_n": 2}
        for path in ("/v1/rerank", "/rerank"):
            reply = await http.post(path, json=body)
            assert reply.status_code == 200, reply.text
            assert [r["index"] for r in reply.json()["results"]] == [1, 2]
        assert ollama.requests[-1]["documents"] == body["documents"]
        totals = router.app.state.gateway.token_stats.totals
        assert totals[(f"{ollama.url}/v1", "tiny:latest")][0] == 2 * 3


async def test_rerank_of_a_model_only_ollama_serves_is_a_501(gw, ollama):
    reply = await gw.post("/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]})
    error = assert_openai_error(reply, 501, "not_ollama_endpoint")
    assert "Ollama" in error["message"] and ollama.requests == []


@pytest.mark.parametrize("route", ["openai", "ollama"])
async def test_a_stream_whose_answer_never_starts_gives_its_slot_back(gw, ollama, route):
    """A client gone before the first byte: the relaying generator never runs, and the response
    still closes the upstream stream and gives the slot back."""
    from api.ollama_routes import NDJSONResponse
    from api.sse import EventStreamResponse
    from engine.ollama_api import serve
    from engine.passthrough import forward

    gateway = router.app.state.gateway
    body = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if route == "openai":
        answer = await forward(gateway, "chat/completions", body)
        response = EventStreamResponse(answer.stream, on_close=answer.on_close)
    else:
        answer = await serve(gateway, "chat", body)
        response = NDJSONResponse(answer.stream, answer.on_close)
    assert gateway.registry.usage == {(ollama.url, "tiny:latest"): 1}

    async def send(message):
        raise OSError("the client is gone")

    async def receive():
        return {"type": "http.disconnect"}

    with pytest.raises(Exception):
        await response({"type": "http", "asgi": {"spec_version": "2.4"}, "method": "POST", "path": "/"}, receive, send)
    assert gateway.registry.usage == {}
