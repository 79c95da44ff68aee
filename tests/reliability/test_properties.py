"""Property tests of the pure translation code in ``requests/``: Responses input to
Chat messages, the Chat -> Responses -> Chat round trip, and the stream translator."""

from __future__ import annotations

import string

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from requests.responses import (build_response_object, messages_to_responses_input, normalize_input_items,
                                responses_input_to_messages)
from requests.events import TERMINAL_TYPES, Sequencer
from requests.stream import ChatStreamTranslator, response_to_events

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=30)
call_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=20)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
arguments = st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1) | st.text(max_size=5), max_size=3).map(
    lambda d: orjson.dumps(d).decode())
image_urls = st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo=",
                              "http://127.0.0.1/x.jpg"])
details = st.sampled_from([None, "auto", "low", "high"])


def _image_part(url: str, detail: str | None) -> dict:
    return {"type": "input_image", "image_url": url, **({"detail": detail} if detail else {})}


parts = st.one_of(
    texts.map(lambda t: {"type": "input_text", "text": t}),
    texts.map(lambda t: {"type": "output_text", "text": t}),
    st.builds(_image_part, image_urls, details),
)
roles = st.sampled_from(["user", "assistant", "system", "developer"])


@st.composite
def message_items(draw) -> dict:
    role = draw(roles)
    content = draw(st.one_of(texts, st.lists(parts, min_size=1, max_size=4)))
    item = {"role": role, "content": content}
    if draw(st.booleans()):
        item["type"] = "message"
    return item


@st.composite
def call_pairs(draw) -> list[dict]:
    cid = draw(call_ids)
    call = {"type": "function_call", "call_id": cid, "name": draw(names), "arguments": draw(arguments)}
    output = draw(st.one_of(texts, st.lists(texts.map(lambda t: {"type": "input_text", "text": t}), max_size=3)))
    return [call, {"type": "function_call_output", "call_id": cid, "output": output}]


@st.composite
def reasoning_items(draw) -> list[dict]:
    item = {"type": "reasoning",
            "summary": draw(st.lists(texts.map(lambda t: {"type": "summary_text", "text": t}), max_size=2))}
    if draw(st.booleans()):
        item["content"] = draw(st.lists(texts.map(lambda t: {"type": "reasoning_text", "text": t}),
                                        min_size=1, max_size=2))
    if draw(st.booleans()):
        item["encrypted_content"] = draw(st.text(alphabet=string.ascii_letters, max_size=20))
    return [item]


responses_inputs = st.one_of(
    texts,
    st.lists(st.one_of(message_items().map(lambda m: [m]), call_pairs(), reasoning_items()), max_size=8).map(
        lambda groups: [item for group in groups for item in group]),
)


def _chat_parts(content) -> list[tuple]:
    """Content of a Chat message as ``[("text", t) | ("image", url)]``, text runs joined."""
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)]
    out: list[tuple] = []
    for part in content:
        if part["type"] == "text":
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + part["text"])
            else:
                out.append(("text", part["text"]))
        else:
            out.append(("image", part["image_url"]["url"]))
    return out


def _item_parts(content) -> list[tuple]:
    if isinstance(content, str):
        return [("text", content)]
    return _chat_parts([{"type": "text", "text": p["text"]} if "text" in p
                        else {"type": "image_url", "image_url": {"url": p["image_url"]}} for p in content])


@SETTINGS
@given(responses_inputs, st.none() | texts)
def test_any_valid_input_translates(input, instructions):
    messages = responses_input_to_messages(input, instructions)
    assert messages == responses_input_to_messages(normalize_input_items(input), instructions)
    orjson.dumps(messages)
    assert {m["role"] for m in messages} <= {"system", "user", "assistant", "tool"}
    if instructions:
        assert messages[0] == {"role": "system", "content": instructions}
        messages = messages[1:]
    if isinstance(input, str):
        assert messages == [{"role": "user", "content": input}]
        return
    calls = [i for i in input if i.get("type") == "function_call"]
    outputs = [i for i in input if i.get("type") == "function_call_output"]
    sent_calls = [c for m in messages for c in m.get("tool_calls") or ()]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in sent_calls] == \
        [(c["call_id"], c["name"], c["arguments"]) for c in calls]
    tools = [m for m in messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tools] == [o["call_id"] for o in outputs]
    for m, o in zip(tools, outputs):
        assert m["content"] == (o["output"] if isinstance(o["output"], str)
                                else "".join(p["text"] for p in o["output"]))
    from_items = [m for m in messages if m["role"] != "tool" and m["content"] is not None]
    items = [i for i in input if i.get("type", "message") == "message" and "role" in i]
    assert len(from_items) == len(items)
    for m, item in zip(from_items, items):
        assert m["role"] == ("system" if item["role"] == "developer" else item["role"])
        assert _chat_parts(m["content"]) == _item_parts(item["content"])


# ── Chat -> Responses -> Chat ───────────────────────────────────────────────────

user_contents = st.one_of(
    texts,
    st.lists(st.one_of(texts.map(lambda t: {"type": "text", "text": t}),
                       image_urls.map(lambda u: {"type": "image_url", "image_url": {"url": u}})),
             min_size=1, max_size=4),
)


@st.composite
def chat_conversations(draw) -> list[dict]:
    messages: list[dict] = []
    if draw(st.booleans()):     # an empty system text means "no instructions" and is dropped
        messages.append({"role": "system", "content": draw(st.text(min_size=1, max_size=30))})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(user_contents)})
        if draw(st.booleans()):
            cids = draw(st.lists(call_ids, min_size=1, max_size=3, unique=True))
            calls = [{"id": cid, "type": "function", "function": {"name": draw(names), "arguments": draw(arguments)}}
                     for cid in cids]
            messages.append({"role": "assistant", "content": draw(st.none() | texts), "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": cid, "content": draw(texts)} for cid in cids]
        if draw(st.booleans()) or messages[-1]["role"] == "tool":
            messages.append({"role": "assistant", "content": draw(texts)})
    return messages


def _shape(message: dict) -> tuple:
    calls = tuple((c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or ())
    return message["role"], _chat_parts(message.get("content")), calls, message.get("tool_call_id")


@SETTINGS
@given(chat_conversations())
def test_chat_round_trip_keeps_content_roles_and_call_ids(messages):
    instructions, items = messages_to_responses_input(messages)
    back = responses_input_to_messages(items, instructions)
    assert [_shape(m) for m in back] == [_shape(m) for m in messages]
    stored = normalize_input_items(items)                         # as the gateway stores them
    assert responses_input_to_messages(stored, instructions) == back


@SETTINGS
@given(st.lists(image_urls, min_size=1, max_size=3), st.sampled_from(["low", "high"]))
def test_chat_round_trip_keeps_image_detail(urls, detail):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u, "detail": detail}}
                                             for u in urls]}]
    instructions, items = messages_to_responses_input(messages)
    assert responses_input_to_messages(items, instructions) == messages



# ── the stream translator ─────────────────────────────────────────────────────

usages = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10_000), "completion_tokens": st.integers(0, 10_000)},
    optional={"total_tokens": st.integers(0, 20_000),
              "prompt_tokens_details": st.none() | st.fixed_dictionaries({"cached_tokens": st.integers(0, 99)}),
              "completion_tokens_details": st.none() | st.fixed_dictionaries(
                  {"reasoning_tokens": st.integers(0, 99)})})
tool_call_deltas = st.fixed_dictionaries(
    {"index": st.integers(0, 2)},
    optional={"id": st.sampled_from(["call_a", "call_b", "call_c"]) | call_ids, "type": st.just("function"),
              "function": st.fixed_dictionaries({}, optional={"name": st.sampled_from(["f", "g"]) | names,
                                                              "arguments": texts})})
deltas = st.fixed_dictionaries({}, optional={
    "role": st.just("assistant"), "content": st.none() | texts, "reasoning": texts, "reasoning_content": texts,
    "tool_calls": st.lists(tool_call_deltas, max_size=2)})
finish_reasons = st.none() | st.sampled_from(["stop", "length", "tool_calls", "content_filter"])
chunks = st.one_of(
    st.builds(lambda d, f: {"choices": [{"index": 0, "delta": d, "finish_reason": f}]}, deltas, finish_reasons),
    usages.map(lambda u: {"choices": [], "usage": u}),
    st.builds(lambda d, u: {"choices": [{"index": 0, "delta": d, "finish_reason": "stop"}], "usage": u},
              deltas, usages),
)


def _in_progress() -> dict:
    return build_response_object(response_id="resp_test", model="m", output_items=[], status="in_progress",
                                  completed_at=None)


@SETTINGS
@given(st.lists(chunks, max_size=25), st.sampled_from(["finish", "fail"]), st.integers(0, 5), st.booleans())
def test_stream_translator_events_are_consistent(chunk_list, ending, first, resumed):
    translator = ChatStreamTranslator(_in_progress(), Sequencer(first))
    events = translator.opening(resumed)
    for chunk in chunk_list:
        events += translator.feed(chunk)
    events += translator.finish() if ending == "finish" else translator.fail("backend broke", "server_error")
    for event in events:
        orjson.dumps(event)

    assert [e["sequence_number"] for e in events] == list(range(first, first + len(events)))
    terminal = [i for i, e in enumerate(events) if e["type"] in TERMINAL_TYPES]
    assert terminal == [len(events) - 1]
    final = events[-1]["response"]
    assert final == translator.final
    if ending == "fail":
        assert events[-2]["type"] == "error" and events[-1]["type"] == "response.failed"
        assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    else:
        last_reason = None
        for chunk in chunk_list:
            for choice in chunk["choices"]:
                last_reason = choice["finish_reason"] or last_reason
        incomplete = last_reason in ("length", "content_filter")
        assert events[-1]["type"] == ("response.incomplete" if incomplete else "response.completed")
        assert final["status"] == ("incomplete" if incomplete else "completed")

    added = [e for e in events if e["type"] == "response.output_item.added"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert final["output"] == [e["item"] for e in done]
    assert [e["output_index"] for e in added] == [e["output_index"] for e in done] == list(range(len(done)))
    assert [e["item"]["id"] for e in added] == [e["item"]["id"] for e in done]
    for item in final["output"]:
        mine = [e for e in events if e.get("item_id") == item["id"]]
        if item["type"] == "message":
            text = "".join(e["delta"] for e in mine if e["type"] == "response.output_text.delta")
            assert item["content"][0]["text"] == text and text
        elif item["type"] == "reasoning":
            text = "".join(e["delta"] for e in mine if e["type"] == "response.reasoning_text.delta")
            assert item["content"][0]["text"] == text and text
        else:
            args = "".join(e["delta"] for e in mine if e["type"] == "response.function_call_arguments.delta")
            assert item["arguments"] == args
            assert [e["arguments"] for e in mine if e["type"] == "response.function_call_arguments.done"] == [args]
    assert final["output_text"] == "".join(i["content"][0]["text"] for i in final["output"] if i["type"] == "message")
    usage_chunks = [c["usage"] for c in chunk_list if c.get("usage")]
    if usage_chunks:
        assert final["usage"]["input_tokens"] == usage_chunks[-1]["prompt_tokens"]
        assert final["usage"]["output_tokens"] == usage_chunks[-1]["completion_tokens"]
    else:
        assert final["usage"] is None


# ── replaying a finished response ─────────────────────────────────────────────

output_items = st.one_of(
    texts.map(lambda t: {"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": t, "annotations": []}]}),
    texts.map(lambda t: {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": t}]}),
    texts.map(lambda t: {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": t}]}),
    st.builds(lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": a},
              call_ids, names, arguments),
)


@SETTINGS
@given(st.lists(output_items, max_size=5), st.sampled_from(["completed", "incomplete", "failed", "cancelled"]),
       st.booleans())
def test_replayed_events_rebuild_the_response(items, status, queued):
    error = {"code": "server_error", "message": "x"} if status == "failed" else None
    response = build_response_object(response_id="resp_test", model="m", output_items=items, status=status,
                                     error=error)
    events = list(response_to_events(response, queued=queued))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created",
                                              "response.queued" if queued else "response.in_progress"]
    terminal = [i for i, e in enumerate(events) if e["type"] in TERMINAL_TYPES]
    assert terminal == [len(events) - 1] and events[-1]["response"] == response
    expected = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
    assert events[-1]["type"] == expected
    assert (events[-2]["type"] == "error") == (status == "failed")
    assert [e["item"] for e in events if e["type"] == "response.output_item.done"] == response["output"]
