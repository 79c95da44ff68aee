"""Conformance of streamed responses on the translated (Chat Completions) path.

Every event is validated against the SDK's ``ResponseStreamEvent`` union and the
Open Responses ``*StreamingEvent`` schema of its type, and every stream against
the lifecycle (``tests/conformance.py::check_stream``). The SDK's own stream
helper (``client.responses.stream``) rebuilds the response from the events.
"""

from __future__ import annotations

import copy

import openai
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import router
from cache import MemoryCache
from requests.responses import build_response_object, new_id
from requests.stream import ChatStreamTranslator, response_to_events
from conformance import (Backend, chat_completion, chat_usage, check_event, check_response, check_stream, chunk,
                         create, create_stream, parse_sse, retrieve, sdk_client_for, sdk_final_as_dict,
                         text_chunks)

MODEL = "llama3.2:3b"

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather of a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": False}


def call_delta(index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    delta = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        delta["id"] = call_id
        delta["type"] = "function"
    if name:
        delta["function"]["name"] = name
    return delta


def reasoning_then_text(field: str) -> list[dict]:
    return [chunk(role="assistant", **{field: "Two and two"}), chunk(**{field: " make four."}),
            chunk(content="It is "), chunk(content="4."), chunk(finish_reason="stop"),
            chunk(empty_choices=True, usage=chat_usage(12, 30, reasoning=20))]


def two_tool_calls(second_index: int = 1) -> list[dict]:
    return [chunk(role="assistant", tool_calls=[call_delta(0, call_id="call_paris", name="get_weather",
                                                           arguments='{"city":')]),
            chunk(tool_calls=[call_delta(0, arguments=' "Paris"}')]),
            chunk(tool_calls=[call_delta(second_index, call_id="call_rome", name="get_weather",
                                         arguments='{"city": "Rome"}')]),
            chunk(finish_reason="tool_calls"),
            chunk(empty_choices=True, usage=chat_usage())]


@pytest.fixture
async def sdk(client):
    """An ``openai.AsyncOpenAI`` talking to the app (its lifespan run by ``client``)."""
    oa = sdk_client_for(router.app)
    yield oa
    await oa.close()


# ── lifecycle ──────────────────────────────────────────────────────────────────

async def test_text_stream(client):
    with Backend(text_chunks("Hel", "lo ", "world."), model="backend-model") as backend:
        events = await create_stream(client, {"model": MODEL, "input": "hi", "metadata": {"k": "v"},
                                              "temperature": 0.5})
    summary = check_stream(events)
    assert summary.types == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"] + ["response.output_text.delta"] * 3 + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    final = summary.response
    assert final["output_text"] == "Hello world." and summary.texts == {0: "Hello world."}
    assert final["metadata"] == {"k": "v"} and final["temperature"] == 0.5
    for e in summary.events[:2]:
        assert {k: v for k, v in e["response"].items() if k not in ("status", "output", "usage", "completed_at",
                                                                    "output_text")} == \
            {k: v for k, v in final.items() if k not in ("status", "output", "usage", "completed_at",
                                                         "output_text")}
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["output_tokens"] == 7
    params = backend.chat_params[0]
    assert params["stream"] is True and params["stream_options"] == {"include_usage": True}
    assert await retrieve(client, final["id"]) == final


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_stream_is_an_item_before_the_message(client, field):
    with Backend(reasoning_then_text(field), text_chunks("Six.")) as backend:
        events = await create_stream(client, {"model": MODEL, "input": "2+2?"})
        summary = check_stream(events)
        first = summary.response
        events = await create_stream(client, {"model": MODEL, "input": "3+3?", "previous_response_id": first["id"]})
    check_stream(events)
    assert [i["type"] for i in summary.items] == ["reasoning", "message"]
    reasoning = summary.items[0]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Two and two make four."}]
    assert reasoning["status"] == "completed" and reasoning["summary"] == []
    deltas = summary.of_type("response.reasoning_text.delta")
    assert [d["delta"] for d in deltas] == ["Two and two", " make four."]
    assert all(d["output_index"] == 0 and d["item_id"] == reasoning["id"] for d in deltas)
    [done] = summary.of_type("response.reasoning_text.done")
    assert done["text"] == "Two and two make four."
    assert summary.texts == {1: "It is 4."} and first["output_text"] == "It is 4."
    assert first["usage"]["output_tokens_details"]["reasoning_tokens"] == 20

    assistant = [m for m in backend.chat_params[1]["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and assistant[0]["content"] == "It is 4."
    assert (assistant[0].get("reasoning_content") or assistant[0].get("reasoning")) == "Two and two make four."


async def test_a_reasoning_summary_asked_for_is_the_reasoning_text(client):
    """Chat backends give no separate summary: asked for one, the reasoning text is streamed as
    the summary too, and the stored and replayed response carry it."""
    from conformance import parse_sse
    with Backend(reasoning_then_text("reasoning_content"), chat_completion("4.", reasoning_content="Sum it.")):
        events = await create_stream(client, {"model": MODEL, "input": "2+2?", "reasoning": {"summary": "auto"}})
        whole = await create(client, {"model": MODEL, "input": "2+2?", "reasoning": {"summary": "detailed"}})
        replay = parse_sse((await client.get(f"/v1/responses/{whole['id']}", params={"stream": "true"})).content)
    summary = check_stream(events)
    reasoning = summary.items[0]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Two and two make four."}]
    assert [d["delta"] for d in summary.of_type("response.reasoning_summary_text.delta")] == \
        ["Two and two", " make four."]
    assert [e["type"] for e in events if "summary_part" in e["type"]] == [
        "response.reasoning_summary_part.added", "response.reasoning_summary_part.done"]
    assert summary.response["reasoning"]["summary"] == "auto"
    assert whole["output"][0]["summary"] == [{"type": "summary_text", "text": "Sum it."}]
    assert check_stream(replay).items == whole["output"]


@pytest.mark.parametrize("second_index", [1, 0], ids=["indexed", "all-index-0"])
async def test_several_tool_calls_stream_as_separate_items(client, second_index):
    with Backend(two_tool_calls(second_index)):
        events = await create_stream(client, {"model": MODEL, "input": "Weather?", "tools": [WEATHER_TOOL]})
    summary = check_stream(events)
    calls = summary.items
    assert [(c["type"], c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        ("function_call", "call_paris", "get_weather", '{"city": "Paris"}'),
        ("function_call", "call_rome", "get_weather", '{"city": "Rome"}')]
    assert len({c["id"] for c in calls}) == 2
    dones = summary.of_type("response.function_call_arguments.done")
    assert [(d["output_index"], d["name"], d["arguments"]) for d in dones] == [
        (0, "get_weather", '{"city": "Paris"}'), (1, "get_weather", '{"city": "Rome"}')]
    added = summary.of_type("response.output_item.added")
    assert [a["item"]["call_id"] for a in added] == ["call_paris", "call_rome"]
    assert summary.response["output_text"] == ""


async def test_text_then_tool_call_in_one_turn(client):
    chunks = [chunk(role="assistant", content="Let me check."),
              chunk(tool_calls=[call_delta(0, call_id="call_1", name="get_weather", arguments='{"city":"Oslo"}')]),
              chunk(finish_reason="tool_calls"), chunk(empty_choices=True, usage=chat_usage())]
    with Backend(chunks):
        events = await create_stream(client, {"model": MODEL, "input": "Weather in Oslo?", "tools": [WEATHER_TOOL]})
    summary = check_stream(events)
    assert [i["type"] for i in summary.items] == ["message", "function_call"]
    assert summary.response["output_text"] == "Let me check."


async def test_length_finish_ends_with_response_incomplete(client):
    with Backend(text_chunks("The answer", " is", finish_reason="length")) as backend:
        events = await create_stream(client, {"model": MODEL, "input": "Explain.", "max_output_tokens": 2})
    summary = check_stream(events)
    assert backend.chat_params[0]["max_tokens"] == 2
    final = summary.response
    assert summary.terminal["type"] == "response.incomplete" and final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["status"] for i in summary.items] == ["incomplete"]
    assert final["max_output_tokens"] == 2
    assert await retrieve(client, final["id"]) == final


# ── failures ───────────────────────────────────────────────────────────────────

def _breaking_stream() -> list:
    return [chunk(role="assistant", content="Partial "), chunk(content="answer"),
            ConnectionResetError("backend went away")]


def _check_failed_stream(events: list[dict]) -> None:
    summary = check_stream(events, spec_exempt=("error",))
    assert summary.types[-2:] == ["error", "response.failed"]
    error_event = summary.events[-2]
    assert error_event["message"]
    final = summary.response
    assert final["status"] == "failed" and final["error"]["message"] and final["error"]["code"]
    assert final["completed_at"] is None


@pytest.mark.parametrize("chunks", [_breaking_stream, lambda: [RuntimeError("no first chunk")]],
                         ids=["after-chunks", "before-any-chunk"])
async def test_backend_failure_mid_stream_ends_with_error_then_failed(client, chunks):
    with Backend(chunks()):
        events = await create_stream(client, {"model": MODEL, "input": "hi"})
    _check_failed_stream(events)
    final = events[-1]["response"]
    stored = await retrieve(client, final["id"])
    check_response(stored)
    assert stored["status"] == "failed" and stored["error"] == final["error"]
    assert stored["output"] == final["output"]


async def test_failed_stream_keeps_the_partial_item_incomplete(client):
    with Backend(_breaking_stream()):
        events = await create_stream(client, {"model": MODEL, "input": "hi"})
    summary = check_stream(events, spec_exempt=("error",))
    assert [(i["type"], i["status"]) for i in summary.items] == [("message", "incomplete")]
    assert summary.texts == {0: "Partial answer"}


async def test_error_event_matches_the_open_responses_schema(client):
    with Backend(_breaking_stream()):
        events = await create_stream(client, {"model": MODEL, "input": "hi"})
    [error_event] = [e for e in events if e["type"] == "error"]
    check_event(error_event)
    assert error_event["error"]["message"] == error_event["message"]


# ── background streams and resumption ──────────────────────────────────────────

async def test_background_stream_is_queued_and_resumable(client):
    with Backend(reasoning_then_text("reasoning_content")):
        events = await create_stream(client, {"model": MODEL, "input": "2+2?", "background": True})
    summary = check_stream(events, queued=True)
    final = summary.response
    assert final["background"] is True and final["status"] == "completed"
    assert [i["type"] for i in summary.items] == ["reasoning", "message"]
    stored = await retrieve(client, final["id"])
    assert stored == final

    r = await client.get(f"/v1/responses/{final['id']}", params={"stream": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert parse_sse(r.content) == events
    for after in (0, 2, 5, len(events) - 3, len(events) - 2):
        r = await client.get(f"/v1/responses/{final['id']}", params={"stream": "true", "starting_after": after})
        assert r.status_code == 200
        replayed = parse_sse(r.content)
        assert replayed == events[after + 1:], after
        for e in replayed:
            check_event(e)


async def test_background_request_without_stream_can_be_streamed_later(client):
    with Backend(chat_completion("Done in the background.")):
        queued = await create(client, {"model": MODEL, "input": "hi", "background": True})
        check_response(queued)
        assert queued["status"] == "queued" and queued["background"] is True and queued["completed_at"] is None
        await router.app.state.gateway.jobs.wait(queued["id"])
    stored = await retrieve(client, queued["id"])
    check_response(stored)
    assert stored["status"] == "completed" and stored["output_text"] == "Done in the background."
    r = await client.get(f"/v1/responses/{queued['id']}", params={"stream": "true"})
    summary = check_stream(parse_sse(r.content), queued=True)
    assert summary.response == stored


async def test_stored_response_replays_as_a_valid_stream(client):
    with Backend(reasoning_then_text("reasoning"), two_tool_calls(), text_chunks("Cut", finish_reason="length")):
        first = check_stream(await create_stream(client, {"model": MODEL, "input": "a"})).response
        second = check_stream(await create_stream(client, {"model": MODEL, "input": "b",
                                                           "tools": [WEATHER_TOOL]})).response
        third = check_stream(await create_stream(client, {"model": MODEL, "input": "c"})).response
    for original in (first, second, third):
        r = await client.get(f"/v1/responses/{original['id']}", params={"stream": "true"})
        summary = check_stream(parse_sse(r.content))
        assert summary.response == original
        assert summary.items == original["output"]


# ── other sources of responses: the cache, refusals ───────────────────────────

async def test_cached_answers_are_conformant_objects_and_streams(client):
    body = {"model": MODEL, "input": "2+2?", "temperature": 0, "nomyo": {"cache": True}}
    with Backend(reasoning_then_text("reasoning_content"), cache=MemoryCache(ttl=60, max_entries=8)) as backend:
        original = check_stream(await create_stream(client, body)).response
        hit = await create(client, body)
        hit_stream = check_stream(await create_stream(client, body)).response
    assert backend.chat.call_count == 1
    for resp in (hit, hit_stream):
        check_response(resp)
        assert resp["id"] != original["id"] and resp["status"] == "completed"
        assert [(i["type"], i.get("content")) for i in resp["output"]] == \
            [(i["type"], i.get("content")) for i in original["output"]]
        assert not {i["id"] for i in resp["output"]} & {i["id"] for i in original["output"]}
        assert resp["output_text"] == original["output_text"] == "It is 4."
        assert await retrieve(client, resp["id"]) == resp


async def test_stored_refusal_replays_with_refusal_events(client):
    answer = chat_completion(None)
    answer["choices"][0]["message"]["refusal"] = "I can't help with that."
    with Backend(answer):
        resp = await create(client, {"model": MODEL, "input": "Something bad."})
    r = await client.get(f"/v1/responses/{resp['id']}", params={"stream": "true"})
    summary = check_stream(parse_sse(r.content))
    assert summary.response == resp
    [done] = summary.of_type("response.refusal.done")
    assert done["refusal"] == "I can't help with that."


async def test_streamed_refusal_becomes_a_refusal_part(client):
    chunks = [chunk(role="assistant"), {**chunk(), "choices": [{"index": 0, "delta": {"refusal": "I can't "},
                                                                "finish_reason": None}]},
              {**chunk(), "choices": [{"index": 0, "delta": {"refusal": "help."}, "finish_reason": None}]},
              chunk(finish_reason="stop"), chunk(empty_choices=True, usage=chat_usage())]
    with Backend(chunks):
        events = await create_stream(client, {"model": MODEL, "input": "Something bad."})
    summary = check_stream(events)
    assert [i["content"] for i in summary.items] == [[{"type": "refusal", "refusal": "I can't help."}]]
    assert [e["delta"] for e in summary.of_type("response.refusal.delta")] == ["I can't ", "help."]


# ── the openai SDK's stream helper ─────────────────────────────────────────────

async def test_sdk_stream_helper_rebuilds_the_stored_response(client, sdk):
    chunks = reasoning_then_text("reasoning_content")[:-2] + two_tool_calls()[0:3] + [
        chunk(finish_reason="tool_calls"), chunk(empty_choices=True, usage=chat_usage())]
    seen = []
    with Backend(chunks):
        async with sdk.responses.stream(model=MODEL, input="2+2, and the weather?", tools=[WEATHER_TOOL]) as stream:
            async for event in stream:
                seen.append(event.type)
            final = await stream.get_final_response()
    stored = await retrieve(client, final.id)
    check_response(stored)
    assert sdk_final_as_dict(final) == stored
    assert final.output_text == "It is 4."
    assert [i.type for i in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert seen[0] == "response.created" and seen[-1] == "response.completed"


async def test_sdk_stream_helper_sees_a_failure(client, sdk):
    """The SDK either raises ``openai.APIError`` at the ``error`` event (as it does for
    OpenAI's own stream errors) or yields ``error`` then ``response.failed``; it
    never takes the stream for inconsistent, nor for completed."""
    seen: list[str] = []
    raised = None
    with Backend(_breaking_stream()):
        try:
            async with sdk.responses.stream(model=MODEL, input="hi") as stream:
                async for event in stream:
                    seen.append(event.type)
        except openai.APIError as exc:
            raised = exc
    assert "response.completed" not in seen and "response.output_text.delta" in seen
    if raised is None:
        assert seen[-2:] == ["error", "response.failed"], seen
    else:
        assert "response.failed" not in seen and raised.message


# ── any well-formed chunk stream (the translator and the replay synthesizer) ───

_pieces = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=5), min_size=1, max_size=4)
_segments = st.lists(st.one_of(
    st.tuples(st.just("reasoning"), st.sampled_from(["reasoning_content", "reasoning"]), _pieces),
    st.tuples(st.just("content"), st.just("content"), _pieces),
    st.tuples(st.just("call"), st.from_regex(r"[a-z_]{1,10}", fullmatch=True), _pieces),
), max_size=6)


def _chunks_and_expected(segments: list, all_index_0: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """The chunks for ``segments`` and the ``(item type, text or arguments)`` they should give."""
    chunks: list[dict] = []
    expected: list[list] = []
    calls = 0
    for kind, key, pieces in segments:
        if kind == "call":
            index = 0 if all_index_0 else calls
            chunks.append(chunk(tool_calls=[call_delta(index, call_id=f"call_{calls}", name=key,
                                                       arguments=pieces[0])]))
            chunks += [chunk(tool_calls=[call_delta(index, arguments=p)]) for p in pieces[1:]]
            expected.append(["function_call", "".join(pieces)])
            calls += 1
            continue
        text = "".join(pieces)
        chunks += [chunk(**{key: p}) for p in pieces]
        if not text:
            continue
        item_type = "message" if kind == "content" else "reasoning"
        if expected and expected[-1][0] == item_type:
            expected[-1][1] += text
        else:
            expected.append([item_type, text])
    return chunks, [tuple(e) for e in expected]


def _item_text(item: dict) -> str:
    if item["type"] == "function_call":
        return item["arguments"]
    return "".join(p["text"] for p in item["content"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=_segments, all_index_0=st.booleans(),
       ending=st.sampled_from(["stop", "tool_calls", "length", None, "fail"]))
def test_any_chunk_stream_translates_to_a_conformant_stream(segments, all_index_0, ending):
    chunks, expected = _chunks_and_expected(segments, all_index_0)
    opening = build_response_object(response_id=new_id("resp"), model=MODEL, output_items=[],
                                    status="in_progress", request={"model": MODEL})
    translator = ChatStreamTranslator(opening)
    events = translator.opening()
    for c in chunks + ([chunk(finish_reason=ending)] if ending not in (None, "fail") else []):
        events += translator.feed(c)
    events += translator.feed(chunk(empty_choices=True, usage=chat_usage()))
    events += translator.fail("The backend stream failed.") if ending == "fail" else translator.finish()

    summary = check_stream(events, spec_exempt=("error",))
    assert [(i["type"], _item_text(i)) for i in summary.items] == expected
    cut = ending in ("length", "fail")
    assert [i["status"] for i in summary.items] == \
        ["completed"] * (len(expected) - 1) + (["incomplete" if cut else "completed"] if expected else [])
    assert summary.terminal["type"] == {"fail": "response.failed", "length": "response.incomplete"}.get(
        ending, "response.completed")
    calls = [i for i in summary.items if i["type"] == "function_call"]
    assert len({c["call_id"] for c in calls}) == len(calls)
    assert translator.final == summary.response

    replay = check_stream(list(response_to_events(summary.response)), spec_exempt=("error",))
    assert replay.response == summary.response and replay.items == summary.items


# ── the checks themselves catch broken streams ─────────────────────────────────

def _good_stream() -> list[dict]:
    translator = ChatStreamTranslator(build_response_object(
        response_id=new_id("resp"), model=MODEL, output_items=[], status="in_progress", request={"model": MODEL}))
    events = translator.opening()
    for c in reasoning_then_text("reasoning_content") + two_tool_calls()[:3]:
        events += translator.feed(c)
    return events + translator.finish()


def _renumber(events: list[dict]) -> list[dict]:
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


def _index(events: list[dict], event_type: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(events) if e["type"] == event_type][nth]


def _mutations() -> dict:
    def drop_delta(ev):
        del ev[_index(ev, "response.output_text.delta")]
        return _renumber(ev)

    def wrong_done_text(ev):
        ev[_index(ev, "response.output_text.done")]["text"] += "!"
        return ev

    def swap_part_and_item_done(ev):
        i, j = _index(ev, "response.content_part.done", 1), _index(ev, "response.output_item.done", 1)
        ev[i], ev[j] = ev[j], ev[i]
        return _renumber(ev)

    def terminal_output_differs(ev):
        ev[-1]["response"] = {**ev[-1]["response"], "output": ev[-1]["response"]["output"][:-1]}
        return ev

    def two_terminals(ev):
        return _renumber(ev + [dict(ev[-1])])

    def sequence_gap(ev):
        ev[-1]["sequence_number"] += 1
        return ev

    def unknown_type(ev):
        ev[3] = {**ev[3], "type": "response.output_text.appended"}
        return ev

    def response_without_tools(ev):
        ev[0]["response"] = {k: v for k, v in ev[0]["response"].items() if k != "tools"}
        return ev

    def null_temperature(ev):
        ev[-1]["response"] = {**ev[-1]["response"], "temperature": None}
        return ev

    def item_id_changes(ev):
        i = _index(ev, "response.output_text.delta")
        ev[i] = {**ev[i], "item_id": "msg_other"}
        return ev

    def duplicate_output_index(ev):
        i = _index(ev, "response.output_item.added", 1)
        ev[i] = {**ev[i], "output_index": 0}
        return ev

    def arguments_done_without_name(ev):
        i = _index(ev, "response.function_call_arguments.done")
        ev[i] = {k: v for k, v in ev[i].items() if k != "name"}
        return ev

    return {f.__name__: f for f in (drop_delta, wrong_done_text, swap_part_and_item_done, terminal_output_differs,
                                    two_terminals, sequence_gap, unknown_type, response_without_tools,
                                    null_temperature, item_id_changes, duplicate_output_index,
                                    arguments_done_without_name)}


def test_check_stream_accepts_the_unbroken_stream():
    check_stream(_good_stream())


@pytest.mark.parametrize("mutation", list(_mutations()))
def test_check_stream_rejects_a_broken_stream(mutation):
    events = _mutations()[mutation](copy.deepcopy(_good_stream()))
    with pytest.raises((AssertionError, pydantic.ValidationError)):
        check_stream(events)


def test_parse_sse_rejects_an_event_line_that_differs_from_the_type():
    with pytest.raises(AssertionError):
        parse_sse(b'event: response.completed\ndata: {"type": "response.failed"}\n\n')
