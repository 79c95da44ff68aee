"""Every create field is acted on or refused by name: unknown fields, fields not built yet, ``include``
values a Chat backend cannot serve; ``top_logprobs`` reaches the backend and its logprobs come back."""

from __future__ import annotations

import pytest

from conformance import (Backend, assert_openai_error, chat_completion, check_stream, chunk, chat_usage, create,
                         create_stream)
from requests.validation import NOT_YET_SUPPORTED

MODEL = "qwen3:8b"
CHAT_LOGPROBS = {"content": [
    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Hey", "logprob": -2.5, "bytes": None}]}]}
LOGPROB = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Hey", "logprob": -2.5, "bytes": []}]}


@pytest.mark.parametrize("name", NOT_YET_SUPPORTED)
async def test_fields_not_built_yet_are_refused_by_name(client, name):
    with Backend() as backend:
        reply = await client.post("/v1/responses", json={"model": MODEL, "input": "x", name: {"id": "x"}})
    error = assert_openai_error(reply, 400)
    assert (error["param"], error["code"]) == (name, "unsupported_parameter")
    assert backend.chat.call_count == 0


async def test_an_unknown_field_is_refused_by_name(client):
    reply = await client.post("/v1/responses", json={"model": MODEL, "input": "x", "temprature": 0.2})
    error = assert_openai_error(reply, 400)
    assert (error["param"], error["code"]) == ("temprature", "unknown_parameter")


async def test_fields_openai_accepts_without_acting_are_accepted(client):
    with Backend(chat_completion("ok")):
        await create(client, {"model": MODEL, "input": "x", "client_metadata": {"session": "1"},
                              "prompt_cache_retention": "24h", "prompt_cache_key": "k"})


@pytest.mark.parametrize("value", ["file_search_call.results", "web_search_call.action.sources",
                                   "code_interpreter_call.outputs", "message.input_image.image_url"])
async def test_an_include_a_chat_backend_cannot_serve_is_refused(client, value):
    with Backend() as backend:
        reply = await client.post("/v1/responses", json={"model": MODEL, "input": "x",
                                                         "include": ["reasoning.encrypted_content", value]})
    error = assert_openai_error(reply, 400)
    assert error["param"] == "include[1]" and value in error["message"]
    assert backend.chat.call_count == 0


async def test_top_logprobs_reach_the_backend_and_come_back(client):
    completion = chat_completion("Hi")
    completion["choices"][0]["logprobs"] = CHAT_LOGPROBS
    with Backend(completion) as backend:
        obj = await create(client, {"model": MODEL, "input": "x", "top_logprobs": 2,
                                    "include": ["message.output_text.logprobs"]})
    assert backend.chat_params[0]["logprobs"] is True and backend.chat_params[0]["top_logprobs"] == 2
    assert obj["output"][0]["content"][0]["logprobs"] == [LOGPROB] and obj["top_logprobs"] == 2


async def test_streamed_logprobs_ride_on_their_deltas(client):
    first = chunk(content="Hi")
    first["choices"][0]["logprobs"] = CHAT_LOGPROBS
    chunks = [chunk(role="assistant", content=""), first, chunk(content="!"), chunk(finish_reason="stop"),
              chunk(empty_choices=True, usage=chat_usage())]
    with Backend(chunks) as backend:
        events = await create_stream(client, {"model": MODEL, "input": "x",
                                              "include": ["message.output_text.logprobs"]})
    summary = check_stream(events)
    assert backend.chat_params[0]["logprobs"] is True and "top_logprobs" not in backend.chat_params[0]
    assert [d["logprobs"] for d in summary.of_type("response.output_text.delta")] == [[LOGPROB], []]
    [done] = summary.of_type("response.output_text.done")
    assert done["logprobs"] == [LOGPROB] and summary.items[0]["content"][0]["logprobs"] == [LOGPROB]


@pytest.mark.parametrize("field", ["extra_headers", "extra_query", "extra_body", "timeout"])
async def test_upstream_call_options_cannot_come_from_a_client(client, field):
    with Backend(native=True, model="gpt-5-mini") as backend:
        reply = await client.post("/v1/responses", json={"model": "gpt-5-mini", "input": "x", field: {"a": "1"}})
    assert assert_openai_error(reply, 400)["param"] == field
    assert backend.openai.responses.create.call_count == 0
