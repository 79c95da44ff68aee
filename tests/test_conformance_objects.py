"""Conformance of non-streamed Response objects on the translated (Chat Completions) path.

Every Response object is validated against the ``openai`` SDK's ``Response`` and
the Open Responses ``ResponseResource`` (``tests/conformance.py``); the Chat
Completions request each scenario sends is checked through the
``create_chat_with_retries`` mock.
"""

from __future__ import annotations

import pytest

from conformance import (Backend, assert_openai_error, chat_completion, chat_usage, check_response, create,
                         file_data_url, input_items, retrieve, sdk_item, spec_errors, tool_call)

MODEL = "qwen3:8b"

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather of a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False},
                "strict": True}
TIME_TOOL = {"type": "function", "name": "get_time", "description": "Local time of a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": False},
             "strict": False}
ANSWER_FORMAT = {"type": "json_schema", "name": "answer", "description": "A short answer.",
                 "schema": {"type": "object", "properties": {"answer": {"type": "string"}},
                            "required": ["answer"], "additionalProperties": False},
                 "strict": True}


def _assistant_messages(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["role"] == "assistant"]


# ── the Response object ────────────────────────────────────────────────────────

@pytest.mark.parametrize("store", [True, False])
async def test_minimal_request_gives_every_field_with_api_defaults(client, store):
    with Backend(chat_completion("Hello there.")):
        resp = await create(client, {"model": MODEL, "input": "hi", "store": store})
    check_response(resp)
    assert resp["id"].startswith("resp_") and resp["status"] == "completed"
    assert resp["tools"] == [] and resp["tool_choice"] == "auto" and resp["truncation"] == "disabled"
    assert resp["text"] == {"format": {"type": "text"}}
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        assert isinstance(resp[key], (int, float)) and not isinstance(resp[key], bool), key
    assert resp["temperature"] == 1 and resp["top_p"] == 1
    assert resp["presence_penalty"] == 0 and resp["frequency_penalty"] == 0
    assert resp["top_logprobs"] == 0
    assert resp["store"] is store and resp["background"] is False
    assert isinstance(resp["service_tier"], str) and resp["service_tier"]
    assert isinstance(resp["completed_at"], int) and resp["completed_at"] >= resp["created_at"]
    assert resp["metadata"] == {} and resp["parallel_tool_calls"] is True
    for key in ("error", "incomplete_details", "instructions", "previous_response_id", "max_output_tokens",
                "max_tool_calls", "user", "safety_identifier", "prompt_cache_key"):
        assert resp[key] is None, key
    assert resp["reasoning"] == {"effort": None, "summary": None}
    assert resp["usage"] == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
                             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
    [message] = resp["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Hello there.", "annotations": [],
                                   "logprobs": []}]
    assert resp["output_text"] == "Hello there."
    if store:
        assert await retrieve(client, resp["id"]) == resp
    else:
        assert (await client.get(f"/v1/responses/{resp['id']}")).status_code == 404


async def test_request_settings_are_echoed_and_mapped_to_chat(client):
    body = {"model": MODEL, "input": "Weather in Paris?", "instructions": "Be brief.",
            "metadata": {"team": "qa", "run": "7"}, "temperature": 0.25, "top_p": 0.5,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "max_output_tokens": 64, "max_tool_calls": 3,
            "top_logprobs": 2, "tool_choice": "required", "tools": [WEATHER_TOOL, TIME_TOOL],
            "parallel_tool_calls": False, "text": {"format": ANSWER_FORMAT},
            "reasoning": {"effort": "low", "summary": "auto"}, "user": "user-1", "safety_identifier": "sid-1",
            "prompt_cache_key": "pck-1"}
    answer = chat_completion(None, tool_calls=[tool_call("call_w1", "get_weather", '{"city":"Paris"}')],
                             finish_reason="tool_calls")
    with Backend(answer) as backend:
        resp = await create(client, body)
    check_response(resp)
    for key in ("instructions", "metadata", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                "max_output_tokens", "max_tool_calls", "top_logprobs", "tool_choice", "tools",
                "parallel_tool_calls", "text", "reasoning", "user", "safety_identifier", "prompt_cache_key"):
        assert resp[key] == body[key], key
    assert await retrieve(client, resp["id"]) == resp

    [params] = backend.chat_params
    assert params["model"] == backend.model
    assert params["messages"] == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Weather in Paris?"}]
    assert params["max_tokens"] == 64
    assert (params["temperature"], params["top_p"]) == (0.25, 0.5)
    assert (params["presence_penalty"], params["frequency_penalty"]) == (0.5, -0.5)
    assert params["tool_choice"] == "required" and params["parallel_tool_calls"] is False
    assert params["tools"] == [
        {"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")}}
        for t in (WEATHER_TOOL, TIME_TOOL)]
    assert params["response_format"] == {"type": "json_schema", "json_schema": {
        k: ANSWER_FORMAT[k] for k in ("name", "description", "schema", "strict")}}
    assert params["reasoning_effort"] == "low"
    assert "stream" not in params


async def test_minimal_function_tool_is_echoed_complete(client):
    tool = {"type": "function", "name": "ping", "parameters": {"type": "object", "properties": {}}}
    with Backend(chat_completion("pong")):
        resp = await create(client, {"model": MODEL, "input": "ping?", "tools": [tool]})
    [echoed] = resp["tools"]
    assert (echoed["type"], echoed["name"], echoed["parameters"]) == ("function", "ping", tool["parameters"])
    assert echoed.get("description", "<missing>") is None and isinstance(echoed.get("strict"), bool)
    check_response(resp)


async def test_minimal_json_schema_format_is_echoed_complete(client):
    fmt = {"type": "json_schema", "name": "answer", "schema": ANSWER_FORMAT["schema"]}
    with Backend(chat_completion('{"answer":"4"}')) as backend:
        resp = await create(client, {"model": MODEL, "input": "2+2?", "text": {"format": fmt}})
    assert backend.chat_params[0]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": fmt["schema"]}}
    echoed = resp["text"]["format"]
    assert {k: echoed[k] for k in ("type", "name", "schema")} == fmt
    assert echoed.get("description", "<missing>") is None and isinstance(echoed.get("strict"), bool)
    check_response(resp)


async def test_json_object_format_maps_to_response_format(client):
    with Backend(chat_completion('{"ok": true}')) as backend:
        resp = await create(client, {"model": MODEL, "input": "JSON please",
                                     "text": {"format": {"type": "json_object"}}})
    check_response(resp)
    assert resp["text"] == {"format": {"type": "json_object"}}
    assert backend.chat_params[0]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("cached, reasoning, want_cached, want_reasoning", [
    (4, 3, 4, 3),
    (None, None, 0, 0),
])
async def test_usage_details_come_from_the_backend_breakdown(client, cached, reasoning, want_cached,
                                                             want_reasoning):
    usage = chat_usage(20, 9, cached=cached, reasoning=reasoning)
    with Backend(chat_completion("ok", usage=usage)):
        resp = await create(client, {"model": MODEL, "input": "hi"})
    check_response(resp)
    assert resp["usage"]["input_tokens"] == 20 and resp["usage"]["output_tokens"] == 9
    assert resp["usage"]["total_tokens"] == 29
    assert resp["usage"]["input_tokens_details"]["cached_tokens"] == want_cached
    assert resp["usage"]["output_tokens_details"]["reasoning_tokens"] == want_reasoning


# ── reasoning ──────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_backend_reasoning_becomes_an_item_and_is_replayed(client, field):
    with Backend(chat_completion("It is 4.", **{field: "2 plus 2 makes 4."}),
                 chat_completion("It is 6.")) as backend:
        first = await create(client, {"model": MODEL, "input": "2+2?"})
        second = await create(client, {"model": MODEL, "input": "3+3?", "previous_response_id": first["id"]})
    for resp in (first, second):
        check_response(resp)
    reasoning_item, message = first["output"]
    assert reasoning_item["type"] == "reasoning" and reasoning_item["status"] == "completed"
    assert reasoning_item["id"] and reasoning_item["summary"] == []
    assert reasoning_item["content"] == [{"type": "reasoning_text", "text": "2 plus 2 makes 4."}]
    assert message["type"] == "message" and first["output_text"] == "It is 4."
    assert second["previous_response_id"] == first["id"]

    messages = backend.chat_params[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "2+2?" and messages[2]["content"] == "3+3?"
    assistant = messages[1]
    assert assistant["content"] == "It is 4."
    assert (assistant.get("reasoning_content") or assistant.get("reasoning")) == "2 plus 2 makes 4."


# ── tools ──────────────────────────────────────────────────────────────────────

async def test_several_tool_calls_become_function_call_items_and_feed_back(client):
    calls = [tool_call("call_paris", "get_weather", '{"city":"Paris"}'),
             tool_call("call_rome", "get_weather", '{"city":"Rome"}'),
             {"type": "function", "function": {"name": "get_time", "arguments": '{"city":"Oslo"}'}}]
    with Backend(chat_completion(None, tool_calls=calls, finish_reason="tool_calls"),
                 chat_completion("Sunny, rainy, 10:00.")) as backend:
        first = await create(client, {"model": MODEL, "input": "Weather?", "tools": [WEATHER_TOOL, TIME_TOOL]})
        check_response(first)
        items = first["output"]
        assert [i["type"] for i in items] == ["function_call"] * 3
        assert [(i["name"], i["arguments"]) for i in items] == [
            ("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Rome"}'), ("get_time", '{"city":"Oslo"}')]
        assert [i["call_id"] for i in items[:2]] == ["call_paris", "call_rome"]
        assert len({i["call_id"] for i in items}) == 3 and all(i["call_id"] for i in items)
        assert len({i["id"] for i in items}) == 3
        assert all(i["status"] == "completed" for i in items)
        assert first["output_text"] == ""

        outputs = [{"type": "function_call_output", "call_id": i["call_id"], "output": out}
                   for i, out in zip(items, ("sunny", "rainy", "10:00"))]
        second = await create(client, {"model": MODEL, "input": outputs, "previous_response_id": first["id"],
                                       "tools": [WEATHER_TOOL, TIME_TOOL]})
    check_response(second)
    messages = backend.chat_params[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in messages[1]["tool_calls"]] == \
        [(i["call_id"], i["name"], i["arguments"]) for i in items]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == \
        [(o["call_id"], o["output"]) for o in outputs]

    listed = await input_items(client, second["id"], order="asc")
    assert [(i["type"], i["call_id"], i["output"]) for i in listed] == \
        [("function_call_output", o["call_id"], o["output"]) for o in outputs]


_CHOICES = {
    "none": ("none", None),
    "auto": ("auto", ("auto", ["get_weather", "get_time"])),
    "required": ("required", ("required", ["get_weather", "get_time"])),
    "function": ({"type": "function", "name": "get_time"},
                 ({"type": "function", "function": {"name": "get_time"}}, ["get_weather", "get_time"])),
    "allowed_tools": ({"type": "allowed_tools", "mode": "required",
                       "tools": [{"type": "function", "name": "get_time"}]},
                      ("required", ["get_time"])),
}


@pytest.mark.parametrize("name", list(_CHOICES))
async def test_tool_choice_maps_to_chat_completions(client, name):
    choice, expected = _CHOICES[name]
    with Backend(chat_completion("Noon.")) as backend:
        resp = await create(client, {"model": MODEL, "input": "Time in Oslo?", "tools": [WEATHER_TOOL, TIME_TOOL],
                                     "tool_choice": choice})
    check_response(resp)
    assert resp["tool_choice"] == choice and resp["tools"] == [WEATHER_TOOL, TIME_TOOL]
    [params] = backend.chat_params
    if expected is None:
        assert params.get("tool_choice", "none") == "none"
        assert not params.get("tools") or params.get("tool_choice") == "none"
    else:
        chat_choice, names = expected
        assert params["tool_choice"] == chat_choice
        assert [t["function"]["name"] for t in params["tools"]] == names


@pytest.mark.parametrize("parallel", [True, False])
async def test_parallel_tool_calls_is_sent_and_echoed(client, parallel):
    with Backend(chat_completion("ok")) as backend:
        resp = await create(client, {"model": MODEL, "input": "hi", "tools": [WEATHER_TOOL],
                                     "parallel_tool_calls": parallel})
    check_response(resp)
    assert resp["parallel_tool_calls"] is parallel
    assert backend.chat_params[0]["parallel_tool_calls"] is parallel


HOSTED_TOOLS = [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"},
    {"type": "web_search_2025_08_26"},
    {"type": "web_search_preview_2025_03_11"},
    {"type": "tool_search"},
    {"type": "programmatic_tool_calling"},
]


def test_every_hosted_tool_type_is_covered():
    from requests.params import HOSTED_TOOL_TYPES
    assert {t["type"] for t in HOSTED_TOOLS} == HOSTED_TOOL_TYPES


@pytest.mark.parametrize("tool", HOSTED_TOOLS, ids=lambda t: t["type"])
async def test_hosted_tools_are_dropped_by_default_and_echoed(client, tool):
    with Backend(chat_completion("ok")) as backend:
        r = await client.post("/v1/responses", json={"model": MODEL, "input": "search",
                                                     "tools": [WEATHER_TOOL, tool]})
    assert r.status_code == 200, r.text
    resp = r.json()
    # The SDK types every tool; the Open Responses schema knows function tools only.
    check_response(resp, spec=False)
    check_response({**resp, "tools": [t for t in resp["tools"] if t["type"] == "function"]})
    sent = backend.chat_params[0]["tools"]
    assert [t["function"]["name"] for t in sent] == ["get_weather"]          # only what the backend can run
    assert [t["type"] for t in resp["tools"]] == ["function", tool["type"]]   # the Response echoes both
    assert resp["tools"][1] == tool


async def test_a_dropped_hosted_tool_is_logged_once_per_type(client, caplog):
    import engine.upstream
    engine.upstream._warned_dropped.discard("image_generation")
    with caplog.at_level("WARNING", logger="nomyo_router.upstream"):
        with Backend(chat_completion("ok"), chat_completion("ok")):
            for _ in range(2):
                r = await client.post("/v1/responses", json={"model": MODEL, "input": "draw",
                                                             "tools": [{"type": "image_generation"}]})
                assert r.status_code == 200, r.text
    assert [r.getMessage() for r in caplog.records].count(
        "hosted tool 'image_generation' is not offered to Chat Completions backends (hosted_tools: drop); "
        "requests with it go on without it") == 1


async def test_hosted_tools_rejected_by_policy(gateway_factory):
    async with gateway_factory(hosted_tools={"web_search": "drop", "default": "reject"}) as http:
        with Backend(chat_completion("ok"), chat_completion("ok")) as backend:
            for tool in HOSTED_TOOLS:
                r = await http.post("/v1/responses", json={"model": MODEL, "input": "search",
                                                           "tools": [WEATHER_TOOL, tool]})
                if tool["type"] == "web_search":
                    assert r.status_code == 200, r.text
                    continue
                error = assert_openai_error(r, 400)
                assert error["param"] == "tools[1].type" and error["code"] == "unsupported_tool", (tool, error)
                assert tool["type"] in error["message"]
    assert backend.chat.call_count == 1


async def test_tool_choice_forcing_a_dropped_hosted_tool_is_400(client):
    with Backend(chat_completion("never")) as backend:
        r = await client.post("/v1/responses", json={"model": MODEL, "input": "search",
                                                     "tools": [{"type": "web_search_preview"}],
                                                     "tool_choice": {"type": "web_search_preview"}})
    error = assert_openai_error(r, 400)
    assert error["param"] == "tool_choice" and "web_search_preview" in error["message"]
    assert backend.chat.call_count == 0


async def test_hosted_tools_pass_through_to_a_native_endpoint(client):
    from test_conformance_native import message, upstream_response
    with Backend(upstream_response([message("Found it.")]), native=True, model="gpt-5-mini") as backend:
        r = await client.post("/v1/responses", json={"model": "gpt-5-mini", "input": "search",
                                                     "tools": HOSTED_TOOLS})
    assert r.status_code == 200, r.text
    check_response(r.json(), spec=False)
    assert backend.native_params[0]["tools"] == HOSTED_TOOLS


# ── output controls ────────────────────────────────────────────────────────────

async def test_length_finish_makes_an_incomplete_response(client):
    with Backend(chat_completion("The answer is", finish_reason="length")) as backend:
        resp = await create(client, {"model": MODEL, "input": "Explain.", "max_output_tokens": 3})
    check_response(resp)
    assert backend.chat_params[0]["max_tokens"] == 3
    assert resp["status"] == "incomplete"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["max_output_tokens"] == 3 and resp["error"] is None
    assert resp["output_text"] == "The answer is"
    stored = await retrieve(client, resp["id"])
    assert stored["status"] == "incomplete" and stored == resp


async def test_length_finish_marks_the_cut_item_incomplete(client):
    with Backend(chat_completion("The answer is", reasoning_content="Think.", finish_reason="length")):
        resp = await create(client, {"model": MODEL, "input": "Explain.", "max_output_tokens": 3})
    check_response(resp)
    assert [(i["type"], i["status"]) for i in resp["output"]] == [("reasoning", "completed"),
                                                                 ("message", "incomplete")]


# ── input ──────────────────────────────────────────────────────────────────────

async def test_item_references_are_resolved_from_the_store(client):
    with Backend(chat_completion("Paris is in France."), chat_completion("Yes.")) as backend:
        first = await create(client, {"model": MODEL, "input": "Where is Paris?"})
        [user_item] = await input_items(client, first["id"])
        answer_id = first["output"][0]["id"]
        second = await create(client, {"model": MODEL, "input": [
            {"type": "item_reference", "id": user_item["id"]},
            {"type": "item_reference", "id": answer_id},
            {"role": "user", "content": "Sure?"}]})
    check_response(second)
    assert second["previous_response_id"] is None
    assert backend.chat_params[1]["messages"] == [{"role": "user", "content": "Where is Paris?"},
                                                  {"role": "assistant", "content": "Paris is in France."},
                                                  {"role": "user", "content": "Sure?"}]
    listed = await input_items(client, second["id"], order="asc")
    assert [i["id"] for i in listed[:2]] == [user_item["id"], answer_id]
    assert listed[1]["content"] == first["output"][0]["content"]


async def test_unknown_item_reference_is_an_error(client):
    with Backend() as backend:
        r = await client.post("/v1/responses", json={"model": MODEL, "input": [
            {"type": "item_reference", "id": "msg_doesnotexist"}]})
    assert 400 <= r.status_code < 500
    assert_openai_error(r, r.status_code)
    assert backend.chat.call_count == 0


PNG_DATA_URL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
                "hKmMIQAAAABJRU5ErkJggg==")


async def test_input_images_by_url_and_data_url(client):
    content = [{"type": "input_text", "text": "Compare these."},
               {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
               {"type": "input_image", "image_url": PNG_DATA_URL, "detail": "auto"}]
    with Backend(chat_completion("Same.")) as backend:
        resp = await create(client, {"model": MODEL, "input": [{"role": "user", "content": content}]})
    check_response(resp)
    [message] = backend.chat_params[0]["messages"]
    assert message["role"] == "user"
    assert message["content"] == [{"type": "text", "text": "Compare these."},
                                  {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                                      "detail": "low"}},
                                  {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}]
    [item] = await input_items(client, resp["id"])
    assert [p["type"] for p in item["content"]] == ["input_text", "input_image", "input_image"]


async def test_input_image_without_detail_is_listed_with_its_default(client):
    content = [{"type": "input_text", "text": "What is this?"},
               {"type": "input_image", "image_url": "https://example.com/a.png"}]
    with Backend(chat_completion("A pixel.")):
        resp = await create(client, {"model": MODEL, "input": [{"role": "user", "content": content}]})
    r = await client.get(f"/v1/responses/{resp['id']}/input_items")
    [item] = r.json()["data"]
    assert item["content"][1].get("detail") == "auto"
    sdk_item(item)


async def test_input_file_with_inline_text_is_sent_as_text(client):
    content = [{"type": "input_text", "text": "Summarize the file."},
               {"type": "input_file", "filename": "notes.txt",
                "file_data": file_data_url("Line one.\nLine two, with ünïcode.")}]
    with Backend(chat_completion("Two lines.")) as backend:
        resp = await create(client, {"model": MODEL, "input": [{"role": "user", "content": content}]})
    check_response(resp)
    [message] = backend.chat_params[0]["messages"]
    if isinstance(message["content"], str):
        joined = message["content"]
    else:
        assert all(p["type"] == "text" for p in message["content"]), message["content"]
        joined = "\n".join(p["text"] for p in message["content"])
    assert "Summarize the file." in joined
    assert "notes.txt" in joined and "Line one.\nLine two, with ünïcode." in joined


async def test_input_file_of_a_binary_type_is_rejected(client):
    content = [{"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}]
    with Backend() as backend:
        r = await client.post("/v1/responses", json={"model": MODEL, "input": [{"role": "user", "content": content}]})
    assert_openai_error(r, 400)
    assert backend.chat.call_count == 0


METADATA_CASES = [
    ({f"k{i}": "v" for i in range(16)}, True),
    ({f"k{i}": "v" for i in range(17)}, False),
    ({"k" * 64: "v"}, True),
    ({"k" * 65: "v"}, False),
    ({"k": "v" * 512}, True),
    ({"k": "v" * 513}, False),
    ({"k": 1}, False),
]


async def test_metadata_limits(client):
    accepted = sum(ok for _, ok in METADATA_CASES)
    with Backend(*[chat_completion("ok") for _ in range(accepted)]) as backend:
        for metadata, ok in METADATA_CASES:
            r = await client.post("/v1/responses", json={"model": MODEL, "input": "hi", "metadata": metadata})
            if ok:
                assert r.status_code == 200, (metadata, r.text)
                resp = r.json()
                check_response(resp)
                assert resp["metadata"] == metadata
            else:
                error = assert_openai_error(r, 400)
                assert error["param"] == "metadata", (metadata, error)
    assert backend.chat.call_count == accepted


async def test_refusal_becomes_a_refusal_part(client):
    answer = chat_completion(None)
    answer["choices"][0]["message"]["refusal"] = "I can't help with that."
    with Backend(answer):
        resp = await create(client, {"model": MODEL, "input": "Something bad."})
    check_response(resp)
    [item] = resp["output"]
    assert item["type"] == "message" and item["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
    assert resp["output_text"] == ""


def test_the_spec_validator_rejects_what_it_should():
    good = {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}",
            "status": "completed"}
    assert spec_errors("FunctionCall", good) == []
    assert spec_errors("FunctionCall", {**good, "status": "done"})
    assert any("call_id" in e for e in spec_errors("FunctionCall", {k: v for k, v in good.items() if k != "call_id"}))
    assert spec_errors("ItemField", {**good, "type": "nonsense"})
