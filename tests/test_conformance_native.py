"""Conformance on the native path (an upstream OpenAI Responses API).

The fake upstream answers with OpenAI's wire shapes, handed to the gateway in
two forms: ``sdk`` (the ``openai`` SDK's pydantic objects, as the real client
returns them) and ``wire`` (objects whose ``model_dump()`` is exactly the wire
JSON). Every Response object and event the gateway produces is validated against
the SDK types and the Open Responses schema, and every stream against the
lifecycle (``tests/conformance.py``).
"""

from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

import router
from conformance import (Backend, check_event, check_response, check_stream, create, create_stream, parse_sse,
                         retrieve, sdk_client_for, sdk_final_as_dict)

MODEL = "gpt-5-mini"
UPSTREAM_MODEL = "gpt-5-mini-2025-08-07"
UPSTREAM_ID = "resp_upstream0000000000000000000000000000000000000000"

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather of a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False},
                "strict": True}

_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


class Wire:
    """An upstream object whose ``model_dump()`` is exactly its wire JSON."""

    def __init__(self, data: dict):
        self.data = data

    def model_dump(self, **_: Any) -> dict:
        return self.data


def as_form(form: str, data: dict, *, event: bool) -> Any:
    if form == "wire":
        return Wire(data)
    return _EVENTS.validate_python(data) if event else Response.model_validate(data)


# ── OpenAI wire shapes ─────────────────────────────────────────────────────────

def message(text: str, *, item_id: str = "msg_up1", status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


def function_call(call_id: str, arguments: str, *, item_id: str, name: str = "get_weather") -> dict:
    return {"id": item_id, "type": "function_call", "status": "completed", "arguments": arguments,
            "call_id": call_id, "name": name}


def reasoning(text: str | None = None, *, item_id: str = "rs_up1", status: str | None = "completed") -> dict:
    item = {"id": item_id, "type": "reasoning", "summary": []}
    if text is not None:
        item["content"] = [{"type": "reasoning_text", "text": text}]
    if status is not None:
        item["status"] = status
    return item


def upstream_response(output: list[dict], *, status: str = "completed", incomplete_details: dict | None = None,
                      error: dict | None = None) -> dict:
    """An OpenAI Response object as the API sends it for a ``store: false`` call."""
    done = status == "completed"
    return {"id": UPSTREAM_ID, "object": "response", "created_at": 1760000000, "status": status,
            "background": False, "completed_at": 1760000003 if done else None, "error": error,
            "incomplete_details": incomplete_details, "instructions": None, "max_output_tokens": None,
            "max_tool_calls": None, "model": UPSTREAM_MODEL, "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "prompt_cache_key": None, "reasoning": {"effort": "medium", "summary": None},
            "safety_identifier": None, "service_tier": "default", "store": False, "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
            "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": None if status == "in_progress" else {
                "input_tokens": 31, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                "output_tokens": 25,
                "output_tokens_details": {"reasoning_tokens": 10}, "total_tokens": 56},
            "user": None, "metadata": {}}


def _split(text: str) -> list[str]:
    cut = max(1, len(text) // 2)
    return [text[:cut], text[cut:]] if len(text) > 1 else [text]


def _opened(item: dict) -> dict:
    out = dict(item)
    if "status" in item:
        out["status"] = "in_progress"
    if item["type"] == "message":
        out["content"] = []
    elif item["type"] == "reasoning" and "content" in item:
        out["content"] = []
    elif item["type"] == "function_call":
        out["arguments"] = ""
    return out


def upstream_events(final: dict, *, end: str | None = "terminal") -> list[dict]:
    """The event stream OpenAI sends for ``final``: opening snapshots, each item's
    events, then the terminal event (``end="terminal"``), or nothing more (``None``)."""
    events: list[dict] = []

    def ev(data: dict) -> None:
        data["sequence_number"] = len(events)
        events.append(data)

    opening = {**final, "status": "in_progress", "output": [], "usage": None, "completed_at": None,
               "incomplete_details": None, "error": None}
    ev({"type": "response.created", "response": opening})
    ev({"type": "response.in_progress", "response": opening})
    for index, item in enumerate(final["output"]):
        item_id = item["id"]
        ev({"type": "response.output_item.added", "output_index": index, "item": _opened(item)})
        if item["type"] == "function_call":
            for piece in _split(item["arguments"]):
                ev({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": index,
                    "delta": piece})
            ev({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": index,
                "name": item["name"], "arguments": item["arguments"]})
        for ci, part in enumerate(item.get("content") or ()):
            empty = {**part, "text": ""}
            ev({"type": "response.content_part.added", "item_id": item_id, "output_index": index,
                "content_index": ci, "part": empty})
            kind = "output_text" if part["type"] == "output_text" else "reasoning_text"
            extra = {"logprobs": []} if kind == "output_text" else {}
            for piece in _split(part["text"]):
                ev({"type": f"response.{kind}.delta", "item_id": item_id, "output_index": index,
                    "content_index": ci, "delta": piece, **extra})
            ev({"type": f"response.{kind}.done", "item_id": item_id, "output_index": index, "content_index": ci,
                "text": part["text"], **extra})
            ev({"type": "response.content_part.done", "item_id": item_id, "output_index": index,
                "content_index": ci, "part": part})
        ev({"type": "response.output_item.done", "output_index": index, "item": item})
    if end == "terminal":
        ev({"type": {"completed": "response.completed", "incomplete": "response.incomplete",
                     "failed": "response.failed"}[final["status"]], "response": final})
    return events


def stream_of(form: str, events: list[dict], error: BaseException | None = None) -> list:
    out: list[Any] = [as_form(form, e, event=True) for e in events]
    return out + [error] if error is not None else out


FORMS = ["wire", "sdk"]


def rich_output() -> list[dict]:
    return [reasoning("The user wants weather."), message("Checking Paris and Rome."),
            function_call("call_up_paris", '{"city":"Paris"}', item_id="fc_up1"),
            function_call("call_up_rome", '{"city":"Rome"}', item_id="fc_up2")]


@pytest.fixture
async def sdk(client):
    oa = sdk_client_for(router.app)
    yield oa
    await oa.close()


# ── not streamed ───────────────────────────────────────────────────────────────

@pytest.mark.parametrize("form", FORMS)
async def test_native_response_is_reissued_complete(client, form):
    body = {"model": MODEL, "input": "Weather in Paris and Rome?", "instructions": "Be brief.",
            "tools": [WEATHER_TOOL], "tool_choice": "auto", "metadata": {"case": "native"}, "temperature": 0.7,
            "max_output_tokens": 500, "reasoning": {"effort": "low", "summary": "auto"}, "user": "u-1"}
    upstream = upstream_response(rich_output())
    with Backend(as_form(form, upstream, event=False), native=True) as backend:
        resp = await create(client, body)
    check_response(resp)
    assert resp["id"].startswith("resp_") and resp["id"] != UPSTREAM_ID
    assert resp["store"] is True and resp["background"] is False and resp["status"] == "completed"
    for key in ("instructions", "tools", "tool_choice", "metadata", "temperature", "max_output_tokens",
                "reasoning", "user"):
        assert resp[key] == body[key], key
    assert resp["output"] == upstream["output"]
    assert resp["usage"] == upstream["usage"]
    assert resp["output_text"] == "Checking Paris and Rome."
    assert await retrieve(client, resp["id"]) == resp
    [params] = backend.native_params
    assert params["store"] is False and params["model"] == backend.model
    assert "previous_response_id" not in params and "stream" not in params and "background" not in params
    assert params["tools"] == [WEATHER_TOOL] and params["metadata"] == {"case": "native"}


async def test_native_chain_is_sent_statelessly_with_its_history(client):
    first_output = [reasoning(None, status=None), message("Paris is in France.")]
    with Backend(Wire(upstream_response(first_output)), Wire(upstream_response([message("Yes.", item_id="msg_up2")])),
                 native=True) as backend:
        first = await create(client, {"model": MODEL, "input": "Where is Paris?"})
        second = await create(client, {"model": MODEL, "input": "Sure?", "previous_response_id": first["id"]})
    for resp in (first, second):
        check_response(resp)
    assert second["previous_response_id"] == first["id"]
    params = backend.native_params[1]
    assert params["store"] is False and "previous_response_id" not in params
    texts = [(i.get("role"), "".join(p["text"] for p in i["content"])) for i in params["input"]]
    assert texts == [("user", "Where is Paris?"), ("assistant", "Paris is in France."), ("user", "Sure?")]
    assert all("id" not in i for i in params["input"])


async def test_native_incomplete_response(client):
    upstream = upstream_response([message("Cut sho", status="incomplete")], status="incomplete",
                                 incomplete_details={"reason": "max_output_tokens"})
    with Backend(Wire(upstream), native=True):
        resp = await create(client, {"model": MODEL, "input": "Long story.", "max_output_tokens": 16})
    check_response(resp)
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["output"][0]["status"] == "incomplete"


# ── streamed ───────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("form", FORMS)
async def test_native_stream_is_reissued_under_the_gateway_id(client, form):
    upstream = upstream_response(rich_output())
    with Backend(stream_of(form, upstream_events(upstream)), native=True) as backend:
        events = await create_stream(client, {"model": MODEL, "input": "Weather?", "tools": [WEATHER_TOOL],
                                              "metadata": {"case": "stream"}})
    summary = check_stream(events)
    final = summary.response
    assert final["id"] != UPSTREAM_ID and final["store"] is True and final["metadata"] == {"case": "stream"}
    assert summary.items == upstream["output"]
    assert [d["name"] for d in summary.of_type("response.function_call_arguments.done")] == ["get_weather"] * 2
    assert final["usage"] == upstream["usage"]
    assert await retrieve(client, final["id"]) == final
    assert backend.native_params[0]["stream"] is True and backend.native_params[0]["store"] is False


async def test_native_stream_items_always_carry_status(client):
    upstream = upstream_response([reasoning(None, status=None), message("Hi.")])
    with Backend(stream_of("wire", upstream_events(upstream)), native=True):
        events = await create_stream(client, {"model": MODEL, "input": "hi"})
    summary = check_stream(events)
    assert summary.items[0]["status"] == "completed"


async def test_native_stream_incomplete(client):
    upstream = upstream_response([message("Cut sho", status="incomplete")], status="incomplete",
                                 incomplete_details={"reason": "max_output_tokens"})
    with Backend(stream_of("wire", upstream_events(upstream)), native=True):
        events = await create_stream(client, {"model": MODEL, "input": "Long story.", "max_output_tokens": 16})
    summary = check_stream(events)
    assert summary.terminal["type"] == "response.incomplete"
    assert summary.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (await retrieve(client, summary.response["id"]))["status"] == "incomplete"


async def test_native_upstream_failure_event(client):
    upstream = upstream_response([], status="failed", error={"code": "server_error", "message": "Upstream broke."})
    with Backend(stream_of("wire", upstream_events(upstream)), native=True):
        events = await create_stream(client, {"model": MODEL, "input": "hi"})
    summary = check_stream(events)
    assert summary.response["error"] == {"code": "server_error", "message": "Upstream broke."}
    stored = await retrieve(client, summary.response["id"])
    assert stored["status"] == "failed" and stored["error"] == summary.response["error"]


def _check_failed(events: list[dict]) -> dict:
    summary = check_stream(events, spec_exempt=("error",))
    assert summary.types[-2:] == ["error", "response.failed"]
    assert summary.response["status"] == "failed" and summary.response["error"]["message"]
    return summary.response


def _two_messages_cut(after_events: int) -> list[dict]:
    upstream = upstream_response([message("Half of it."), message("Never finished.", item_id="msg_up2")])
    return upstream_events(upstream, end=None)[:after_events]


#: Upstream events up to and including the first item's ``output_item.done``.
_FIRST_ITEM_DONE = 9


@pytest.mark.parametrize("broken", ["raises", "no-terminal"])
async def test_native_stream_that_breaks_ends_with_error_then_failed(client, broken):
    error = ConnectionResetError("upstream went away") if broken == "raises" else None
    with Backend(stream_of("wire", _two_messages_cut(_FIRST_ITEM_DONE), error), native=True):
        got = await create_stream(client, {"model": MODEL, "input": "hi"})
    final = _check_failed(got)
    assert [i["id"] for i in final["output"]] == ["msg_up1"]
    stored = await retrieve(client, final["id"])
    check_response(stored)
    assert stored["status"] == "failed" and stored["error"] == final["error"]


@pytest.mark.parametrize("broken", ["raises", "no-terminal"])
async def test_native_stream_broken_inside_an_item_closes_it(client, broken):
    error = ConnectionResetError("upstream went away") if broken == "raises" else None
    with Backend(stream_of("wire", _two_messages_cut(_FIRST_ITEM_DONE + 3), error), native=True):
        got = await create_stream(client, {"model": MODEL, "input": "hi"})
    final = _check_failed(got)
    assert [(i["id"], i["status"]) for i in final["output"]] == [("msg_up1", "completed"), ("msg_up2", "incomplete")]


async def test_native_background_stream_is_queued_and_resumable(client):
    upstream = upstream_response(rich_output())
    with Backend(stream_of("wire", upstream_events(upstream)), native=True):
        events = await create_stream(client, {"model": MODEL, "input": "Weather?", "background": True,
                                              "tools": [WEATHER_TOOL]})
    summary = check_stream(events, queued=True)
    final = summary.response
    assert final["background"] is True and final["id"] != UPSTREAM_ID
    assert await retrieve(client, final["id"]) == final
    for after in (1, 4, len(events) - 2):
        r = await client.get(f"/v1/responses/{final['id']}", params={"stream": "true", "starting_after": after})
        replayed = parse_sse(r.content)
        assert replayed == events[after + 1:]
        for e in replayed:
            check_event(e)


async def test_sdk_stream_helper_over_the_native_path(client, sdk):
    upstream = upstream_response(rich_output())
    with Backend(stream_of("wire", upstream_events(upstream)), native=True):
        async with sdk.responses.stream(model=MODEL, input="Weather?", tools=[WEATHER_TOOL]) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
    stored = await retrieve(client, final.id)
    check_response(stored)
    assert sdk_final_as_dict(final) == stored
    assert final.id != UPSTREAM_ID and final.output_text == "Checking Paris and Rome."


async def test_native_conversation_turns_send_the_conversation_as_input(client):
    conversation = (await client.post("/v1/conversations", json={"items": [
        {"role": "user", "content": "Earlier."}]})).json()
    with Backend(upstream_response([message("Now.")]), native=True) as backend:
        resp = await create(client, {"model": MODEL, "input": "Later.", "conversation": conversation["id"],
                                     "context_management": [{"type": "compaction", "compact_threshold": 5000}]})
    assert resp["conversation"] == {"id": conversation["id"]}
    [params] = backend.native_params
    assert "conversation" not in params and params["store"] is False
    assert params["context_management"] == [{"type": "compaction", "compact_threshold": 5000}]
    texts = [(i["role"], i["content"][0]["text"]) for i in params["input"]]
    assert texts == [("user", "Earlier."), ("user", "Later.")]
    listed = (await client.get(f"/v1/conversations/{conversation['id']}/items", params={"order": "asc"})).json()
    assert [item["id"] for item in listed["data"]][-1] == resp["output"][0]["id"]


async def test_native_compact_is_forwarded_and_its_items_pass_through(client):
    upstream = {"id": "resp_upstream_cmp", "object": "response.compaction", "created_at": 1760000000,
                "output": [{"id": "msg_u", "type": "message", "role": "user", "status": "completed",
                            "content": [{"type": "input_text", "text": "Earlier."}]},
                           {"id": "cmp_u", "type": "compaction", "encrypted_content": "gAAAA-openai-blob"}],
                "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
    with Backend(native=True) as backend:
        backend.openai.responses.compact = AsyncMock(return_value=upstream)
        reply = await client.post("/v1/responses/compact", json={"model": MODEL, "input": "Earlier.",
                                                                 "instructions": "Be brief."})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["output"] == upstream["output"] and body["id"].startswith("resp_")
        [call] = backend.openai.responses.compact.call_args_list
        assert call.kwargs["instructions"] == "Be brief." and call.kwargs["input"][0]["role"] == "user"
        # the upstream's compaction item goes back upstream as it came
        backend.push(upstream_response([message("Fine.")]))
        await create(client, {"model": MODEL, "input": [*upstream["output"], {"role": "user", "content": "Go on."}]})
        assert backend.native_params[-1]["input"][1] == {"id": "cmp_u", "type": "compaction",
                                                         "encrypted_content": "gAAAA-openai-blob"}
