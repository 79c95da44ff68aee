"""Compaction over a Chat backend (the Ollama-protocol server on a real socket): ``/v1/responses/compact``,
``compaction`` items read back as their summary, and ``context_management`` on create."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.responses import CompactedResponse, ResponseCompactionItem, ResponseInputMessageItem

import router
from engine.turn import SUMMARY_HEADING, SUMMARY_PROMPT
from tests.conformance import assert_openai_error, assert_spec, check_response, check_stream, parse_sse
from tests.e2e.ollama_server import DEFAULT_TEXT

HISTORY = [
    {"role": "user", "content": "I am planning a trip to Lisbon."},
    {"role": "assistant", "content": "Lisbon is lovely in spring."},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Lisbon\"}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 22 C"},
    {"role": "user", "content": "Book nothing yet."},
]


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        yield http


def check_compacted(body: dict) -> None:
    """Strictly as the spec's ``CompactResource``; as the SDK's ``CompactedResponse``, whose ``output``
    union has no user message (OpenAI's own answers carry them), each item as its own SDK type."""
    assert_spec("CompactResource", body)
    CompactedResponse.model_validate({**body, "output": []}, strict=True)
    for item in body["output"]:
        kind = ResponseCompactionItem if item["type"] == "compaction" else ResponseInputMessageItem
        kind.model_validate(item, strict=True)


def contents(messages: list[dict]) -> list:
    return [m.get("content") for m in messages]


async def test_compact_keeps_the_user_messages_and_seals_the_summary(gw, ollama):
    reply = await gw.post("/v1/responses/compact", json={"model": "tiny", "input": HISTORY})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    check_compacted(body)
    assert body["object"] == "response.compaction"
    kinds = [(item["type"], item.get("role")) for item in body["output"]]
    assert kinds == [("message", "user"), ("message", "user"), ("compaction", None)]
    compaction = body["output"][-1]
    assert compaction["id"].startswith("cmp_") and DEFAULT_TEXT not in compaction["encrypted_content"]
    asked = ollama.requests[-1]["messages"]
    assert asked[-1] == {"role": "user", "content": SUMMARY_PROMPT}
    assert ollama.requests[-1]["max_tokens"] == 2048                 # compaction_max_tokens
    assert asked[0]["content"] == "I am planning a trip to Lisbon." and len(asked) == 5
    assert body["usage"]["output_tokens"] > 0

    # the compacted window goes back as input: the model gets the summary, then what follows it
    follow = await gw.post("/v1/responses", json={"model": "tiny", "input": [*body["output"],
                                                                             {"role": "user", "content": "Go on."}]})
    assert follow.status_code == 200, follow.text
    assert contents(ollama.requests[-1]["messages"]) == [
        "I am planning a trip to Lisbon.", "Book nothing yet.", SUMMARY_HEADING + DEFAULT_TEXT, "Go on."]


async def test_the_sdk_compacts_a_stored_chain(gw, ollama):
    first = await gw.post("/v1/responses", json={"model": "tiny", "input": "Remember the number 7."})
    client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="none", max_retries=0, http_client=httpx.AsyncClient(
        transport=httpx.ASGITransport(app=router.app), base_url="http://gateway"))
    compacted = await client.responses.compact(model="tiny", previous_response_id=first.json()["id"],
                                               input="And the letter Q.")
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert contents(ollama.requests[-1]["messages"])[:3] == ["Remember the number 7.", DEFAULT_TEXT,
                                                             "And the letter Q."]


@pytest.mark.parametrize("blob", ["not-ours-at-all", None])
async def test_a_compaction_item_the_gateway_cannot_open_is_a_400(gw, blob):
    if blob is None:  # one of ours, altered
        made = (await gw.post("/v1/responses/compact", json={"model": "tiny", "input": "hello"})).json()
        sealed = made["output"][-1]["encrypted_content"]
        blob = sealed[:-8] + ("A" * 8 if not sealed.endswith("A" * 8) else "B" * 8)
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": [
        {"type": "compaction", "encrypted_content": blob}, {"role": "user", "content": "x"}]})
    assert assert_openai_error(reply, 400)["code"] == "invalid_encrypted_content"


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "tiny", "stream": True}, "stream"),
    ({"model": "tiny", "previous_response_id": "resp_nowhere"}, "previous_response_id"),
    ({"model": "tiny", "input": [{"type": "compaction"}]}, "input[0].encrypted_content"),
])
async def test_bad_compact_requests(gw, body, param):
    reply = await gw.post("/v1/responses/compact", json=body)
    assert reply.status_code in (400, 404)
    assert assert_openai_error(reply, reply.status_code)["param"] == param


async def test_context_management_compacts_past_the_threshold(gw, ollama):
    first = (await gw.post("/v1/responses", json={"model": "tiny", "input": "I am planning a trip to Lisbon."})).json()
    management = [{"type": "compaction", "compact_threshold": 5}]
    second = await gw.post("/v1/responses", json={"model": "tiny", "input": "Book nothing yet.",
                                                  "previous_response_id": first["id"],
                                                  "context_management": management})
    assert second.status_code == 200, second.text
    body = second.json()
    check_response(body)
    assert [item["type"] for item in body["output"]] == ["compaction", "message"]
    summarize, answer = ollama.requests[-2]["messages"], ollama.requests[-1]["messages"]
    assert ollama.requests[-2]["max_tokens"] == 2048
    assert contents(summarize) == ["I am planning a trip to Lisbon.", DEFAULT_TEXT, SUMMARY_PROMPT]
    assert contents(answer) == ["I am planning a trip to Lisbon.", SUMMARY_HEADING + DEFAULT_TEXT,
                                "Book nothing yet."]

    # later turns read the chain through its compaction: user messages, the summary, what came after
    third = await gw.post("/v1/responses", json={"model": "tiny", "input": "Thanks.",
                                                 "previous_response_id": body["id"]})
    assert third.status_code == 200
    assert contents(ollama.requests[-1]["messages"]) == [
        "I am planning a trip to Lisbon.", "Book nothing yet.", SUMMARY_HEADING + DEFAULT_TEXT, DEFAULT_TEXT,
        "Thanks."]


async def test_context_management_below_the_threshold_changes_nothing(gw, ollama):
    first = (await gw.post("/v1/responses", json={"model": "tiny", "input": "hi"})).json()
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "again", "previous_response_id": first["id"],
                                                 "context_management": [{"type": "compaction",
                                                                         "compact_threshold": 100000}]})
    assert [item["type"] for item in reply.json()["output"]] == ["message"]
    assert len(ollama.requests) == 2


async def test_a_streamed_turn_sends_its_compaction_item_first(gw, ollama):
    first = (await gw.post("/v1/responses", json={"model": "tiny", "input": "one"})).json()
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "two", "stream": True,
                                                 "previous_response_id": first["id"],
                                                 "context_management": [{"type": "compaction",
                                                                         "compact_threshold": 1}]})
    events = parse_sse(reply.text)
    summary = check_stream(events)
    added = summary.of_type("response.output_item.added")
    assert added[0]["item"]["type"] == "compaction" and added[0]["output_index"] == 0
    final = summary.response
    assert [item["type"] for item in final["output"]] == ["compaction", "message"]
    stored = (await gw.get(f"/v1/responses/{final['id']}")).json()
    assert stored["output"] == final["output"]


@pytest.mark.parametrize("management, param", [
    ([{"type": "truncate"}], "context_management[0].type"),
    ([{"type": "compaction", "compact_threshold": 0}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "compact_threshold": "5"}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "when": 1}], "context_management[0].when"),
])
async def test_bad_context_management_is_a_400(gw, management, param):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x", "context_management": management})
    assert assert_openai_error(reply, 400)["param"] == param


async def test_a_conversation_is_compacted_like_a_chain(gw, ollama):
    made = (await gw.post("/v1/conversations", json={"items": [{"role": "user", "content": "start"}]})).json()
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "next", "conversation": made["id"],
                                                 "context_management": [{"type": "compaction",
                                                                         "compact_threshold": 1}]})
    assert [i["type"] for i in reply.json()["output"]] == ["compaction", "message"]
    listed = (await gw.get(f"/v1/conversations/{made['id']}/items", params={"order": "asc"})).json()
    assert [i["type"] for i in listed["data"]] == ["message", "message", "compaction", "message"]
    await gw.post("/v1/responses", json={"model": "tiny", "input": "last", "conversation": made["id"]})
    assert contents(ollama.requests[-1]["messages"]) == [
        "start", "next", SUMMARY_HEADING + DEFAULT_TEXT, DEFAULT_TEXT, "last"]
