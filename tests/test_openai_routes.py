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
    assert_openai_error(await gw.get("/v1/models/nope"), 404, "model_not_found")


async def test_bad_requests_are_named(gw):
    assert_openai_error(await gw.post("/v1/chat/completions", json={"messages": []}), 400,
                        "missing_required_parameter")
    assert_openai_error(await gw.post("/v1/embeddings", json={"model": "tiny", "input": "x", "stream": True}), 400,
                        "invalid_value")
    assert_openai_error(await gw.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}), 404, "model_not_found")
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
