"""What one request may load of its ``previous_response_id`` chain: ``max_chain_items`` and
``max_chain_bytes``, with ``truncation: "disabled"`` (a 400) and ``"auto"`` (the oldest turns
left out), and ``item_reference`` through the item index."""

from __future__ import annotations

from conformance import Backend, assert_openai_error, chat_completion, create, tool_call

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


async def _chain(http, turns: int, **extra) -> str:
    """Store ``turns`` chained turns ("q0" ... answered "a0" ...); the last one's id. Each is sent
    with ``truncation: "auto"``: what a turn was sent does not change what is stored."""
    previous = None
    with Backend(*(chat_completion(f"a{n}") for n in range(turns))):
        for n in range(turns):
            body = {"model": "m", "input": f"q{n}", "truncation": "auto", **extra}
            if previous:
                body["previous_response_id"] = previous
            previous = (await create(http, body))["id"]
    return previous


def _texts(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if isinstance(m.get("content"), str)]


async def test_a_chain_past_max_chain_items_is_a_400_that_names_truncation(gateway_factory):
    async with gateway_factory(max_chain_items=8) as http:
        last = await _chain(http, 6)                      # 12 items before the next turn
        with Backend(chat_completion("never")) as backend:
            reply = await http.post("/v1/responses", json={"model": "m", "input": "next",
                                                           "previous_response_id": last})
        error = assert_openai_error(reply, 400)
        assert error["code"] == "context_length_exceeded" and error["param"] == "previous_response_id"
        assert "truncation" in error["message"] and "8 items" in error["message"]
        assert backend.chat.call_count == 0


async def test_truncation_auto_leaves_out_the_oldest_turns(gateway_factory):
    async with gateway_factory(max_chain_items=8) as http:
        last = await _chain(http, 6)
        with Backend(chat_completion("fine")) as backend:
            obj = await create(http, {"model": "m", "input": "next", "previous_response_id": last,
                                      "truncation": "auto"})
        assert obj["output_text"] == "fine" and obj["truncation"] == "auto"
        assert _texts(backend.chat_params[0]["messages"]) == ["q2", "a2", "q3", "a3", "q4", "a4", "q5", "a5", "next"]


async def test_a_chain_within_its_bounds_is_sent_whole(gateway_factory):
    async with gateway_factory(max_chain_items=12) as http:
        last = await _chain(http, 6)
        with Backend(chat_completion("whole")) as backend:
            await create(http, {"model": "m", "input": "next", "previous_response_id": last})
        assert _texts(backend.chat_params[0]["messages"])[:2] == ["q0", "a0"]


async def test_max_chain_bytes_bounds_a_chain_of_few_large_turns(gateway_factory):
    async with gateway_factory(max_chain_bytes=4096) as http:
        with Backend(chat_completion("big"), chat_completion("small")):
            first = await create(http, {"model": "m", "input": "x" * 10_000})
            second = await create(http, {"model": "m", "input": "q", "previous_response_id": first["id"],
                                         "truncation": "auto"})
        body = {"model": "m", "input": "next", "previous_response_id": second["id"]}
        with Backend() as backend:
            assert_openai_error(await http.post("/v1/responses", json=body), 400)
        with Backend(chat_completion("ok")) as backend:
            await create(http, {**body, "truncation": "auto"})
        assert _texts(backend.chat_params[0]["messages"]) == ["q", "small", "next"]


async def test_truncation_never_sends_a_tool_output_without_its_call(gateway_factory):
    async with gateway_factory(max_chain_items=3) as http:
        with Backend(chat_completion(None, tool_calls=[tool_call("call_1", "get_weather", "{}")]),
                     chat_completion("It is sunny.")):
            first = await create(http, {"model": "m", "input": "weather?", "tools": TOOLS})
            second = await create(http, {"model": "m", "previous_response_id": first["id"], "tools": TOOLS,
                                         "input": [{"type": "function_call_output", "call_id": "call_1",
                                                    "output": "sunny"}]})
        with Backend(chat_completion("bye")) as backend:
            await create(http, {"model": "m", "input": [{"type": "message", "role": "user", "content": "thanks"}]
                                * 2, "previous_response_id": second["id"], "truncation": "auto"})
        messages = backend.chat_params[0]["messages"]
        assert [m["role"] for m in messages] == ["assistant", "user", "user"]  # the output's call was cut off
        assert messages[0]["content"] == "It is sunny."


async def test_item_reference_finds_items_of_any_stored_turn(client):
    with Backend(chat_completion("first answer"), chat_completion("second answer"), chat_completion("ok")) as backend:
        first = await create(client, {"model": "m", "input": "first question"})
        await create(client, {"model": "m", "input": "unrelated"})
        answer_id = first["output"][0]["id"]
        await create(client, {"model": "m", "input": [{"type": "item_reference", "id": answer_id},
                                                      {"type": "message", "role": "user", "content": "go on"}]})
    assert _texts(backend.chat_params[2]["messages"]) == ["first answer", "go on"]
    reply = await client.post("/v1/responses", json={"model": "m", "input": [{"type": "item_reference",
                                                                             "id": "msg_unknown"}]})
    assert assert_openai_error(reply, 404)["code"] == "item_not_found"
