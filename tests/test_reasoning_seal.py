"""Reasoning carried by the client in ``encrypted_content``: sealed when asked for, opened when it comes
back, refused when altered or foreign, and kept under one key across restarts."""

from __future__ import annotations

import pytest

import router
from conformance import (Backend, assert_openai_error, chat_completion, check_response, check_stream, create,
                         create_stream)
from reasoning_seal import PREFIX, ReasoningSeal, SealError, load_or_create_key
from test_conformance_native import message, upstream_response
from test_conformance_stream import reasoning_then_text

MODEL = "qwen3:8b"
STATELESS = {"model": MODEL, "store": False, "include": ["reasoning.encrypted_content"]}


def _without_clear_text(items: list[dict]) -> list[dict]:
    """The output items as a client that keeps only what it must sends them back."""
    return [{k: v for k, v in item.items() if k != "content"} if item["type"] == "reasoning" else item
            for item in items]


async def test_reasoning_is_sealed_and_comes_back_to_the_model(client):
    with Backend(chat_completion("Four.", reasoning_content="Two plus two is four."),
                 chat_completion("Five.")) as backend:
        first = await create(client, {**STATELESS, "input": "2+2?"})
        reasoning = first["output"][0]
        assert reasoning["encrypted_content"].startswith(PREFIX)
        assert "Two plus two" not in reasoning["encrypted_content"]
        history = [{"type": "message", "role": "user", "content": "2+2?"}, *_without_clear_text(first["output"]),
                   {"type": "message", "role": "user", "content": "and 2+3?"}]
        await create(client, {**STATELESS, "input": history})
    assistant = [m for m in backend.chat_params[1]["messages"] if m["role"] == "assistant"]
    assert assistant == [{"role": "assistant", "content": "Four.", "reasoning_content": "Two plus two is four."}]


async def test_streamed_reasoning_is_sealed(client):
    with Backend(reasoning_then_text("reasoning_content")):
        events = await create_stream(client, {**STATELESS, "input": "2+2?"})
    summary = check_stream(events)
    sealed = summary.items[0]["encrypted_content"]
    assert router.app.state.gateway.seal.open(sealed) == [{"type": "reasoning_text", "text": "Two and two make four."}]


async def test_reasoning_is_not_sealed_unless_asked(client):
    with Backend(chat_completion("Four.", reasoning_content="Because.")):
        obj = await create(client, {"model": MODEL, "input": "2+2?"})
    assert "encrypted_content" not in obj["output"][0]


async def test_an_altered_blob_is_400(client):
    with Backend(chat_completion("Four.", reasoning_content="Two plus two is four.")) as backend:
        first = await create(client, {**STATELESS, "input": "2+2?"})
        blob = first["output"][0]["encrypted_content"]
        tampered = blob[:-6] + ("AAAA" if blob[-6:-2] != "AAAA" else "BBBB") + blob[-2:]
        item = {"type": "reasoning", "summary": [], "encrypted_content": tampered}
        reply = await client.post("/v1/responses", json={**STATELESS, "input": [item]})
    error = assert_openai_error(reply, 400)
    assert (error["param"], error["code"]) == ("input[0].encrypted_content", "invalid_encrypted_content")
    assert backend.chat.call_count == 1


async def test_a_foreign_blob_is_400_on_a_chat_backend_and_passes_to_a_native_one(client):
    foreign = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAABo-openai-made-this"}
    with Backend(chat_completion("never")) as backend:
        reply = await client.post("/v1/responses", json={**STATELESS, "input": [foreign]})
    assert assert_openai_error(reply, 400)["param"] == "input[0].encrypted_content"
    assert backend.chat.call_count == 0
    with Backend(upstream_response([message("Hi.")]), native=True, model="gpt-5-mini") as native:
        obj = await create(client, {**STATELESS, "model": "gpt-5-mini", "input": [foreign]})
    check_response(obj)
    [sent] = native.native_params[0]["input"]
    assert {k: v for k, v in sent.items() if k != "id"} == foreign


async def test_the_gateways_own_blob_is_not_sent_to_a_native_endpoint(client):
    sealed = {"type": "reasoning", "summary": [],
              "encrypted_content": router.app.state.gateway.seal.seal({"content": []})}
    with Backend(upstream_response([message("Hi.")]), native=True, model="gpt-5-mini") as native:
        await create(client, {**STATELESS, "model": "gpt-5-mini", "input": [sealed, {"role": "user", "content": "x"}]})
    assert [i["type"] for i in native.native_params[0]["input"]] == ["message"]


def test_the_key_is_kept_beside_the_store_and_a_configured_one_wins(tmp_path):
    store = str(tmp_path / "store.db")
    made = load_or_create_key(None, store)
    assert load_or_create_key(None, store) == made and len(made) == 32
    assert oct((tmp_path / "store.db.reasoning-key").stat().st_mode & 0o777) == "0o600"
    configured = load_or_create_key("a shared secret", store)
    assert configured != made and configured == load_or_create_key("a shared secret", "elsewhere")
    blob = ReasoningSeal(made).seal({"content": [{"type": "reasoning_text", "text": "x"}]})
    assert ReasoningSeal(made).open(blob) == [{"type": "reasoning_text", "text": "x"}]
    with pytest.raises(SealError):
        ReasoningSeal(configured).open(blob)


async def test_a_resent_history_maps_to_the_same_chat_history_as_the_stored_chain(client):
    from conformance import tool_call
    calls = [tool_call("call_1", "get_weather", '{"city": "Paris"}')]
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    with Backend(chat_completion("Let me look.", reasoning_content="A tool will tell.", tool_calls=calls,
                                 finish_reason="tool_calls"),
                 chat_completion("Sunny."), chat_completion("Sunny.")) as backend:
        first = await create(client, {"model": MODEL, "input": "Weather in Paris?", "tools": tools,
                                      "include": ["reasoning.encrypted_content"]})
        result = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
        await create(client, {"model": MODEL, "input": [result], "previous_response_id": first["id"], "tools": tools})
        resent = [{"type": "message", "role": "user", "content": "Weather in Paris?"},
                  *_without_clear_text(first["output"]), result]
        await create(client, {**STATELESS, "input": resent, "tools": tools})
    chained, stateless = backend.chat_params[1]["messages"], backend.chat_params[2]["messages"]
    assert stateless == chained
    assert chained[1]["reasoning_content"] == "A tool will tell." and chained[1]["tool_calls"][0]["id"] == "call_1"
