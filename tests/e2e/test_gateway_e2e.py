"""The gateway end to end: a real llama-server (tiny scripted model) and Ollama-protocol
servers behind uvicorn, driven by the real OpenAI Python SDK."""

from __future__ import annotations

import concurrent.futures
import json
import time

import openai
import pytest
from openai.types.responses import Response

from tests.e2e.conftest import LLAMA_MODEL
from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess

HELLO = "Hello from the tiny model."
THINKING = "Let me think about it."
TOOL_ANSWER = "The weather tool has answered."
WEATHER = [{"type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]


def _wire(response: Response) -> dict:
    """A response as plain data, without the SDK's client-side additions (``parsed``)."""
    data = response.model_dump(mode="json", exclude={"output_text"})
    for item in data["output"]:
        item.pop("parsed_arguments", None)
        for part in item.get("content") or ():
            part.pop("parsed", None)
    return data


def _same(a: Response, b: Response) -> None:
    """Two Response objects agree on everything the store keeps."""
    assert _wire(a) == _wire(b)


def test_plain_text(oai):
    r = oai.responses.create(model=LLAMA_MODEL, input="hi")
    assert r.status == "completed" and r.output_text == HELLO
    assert r.usage.output_tokens == 6 and r.usage.input_tokens > 0
    Response.model_validate(r.model_dump())
    _same(oai.responses.retrieve(r.id), r)


def test_reasoning_item(oai):
    r = oai.responses.create(model=LLAMA_MODEL, input="[think] hi")
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == THINKING
    assert r.output_text == HELLO


def test_tool_call_round_trip(oai):
    first = oai.responses.create(model=LLAMA_MODEL, input="weather in Paris?", tools=WEATHER)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = oai.responses.create(model=LLAMA_MODEL, previous_response_id=first.id, tools=WEATHER,
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": '{"sky": "clear"}'}])
    assert second.output_text == TOOL_ANSWER
    assert second.previous_response_id == first.id


def test_length_limit_is_incomplete(oai):
    r = oai.responses.create(model=LLAMA_MODEL, input="[long]", max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16 and r.output_text.startswith("la la")


@pytest.mark.parametrize("text, tools", [("hi", None), ("[think] hi", None), ("weather?", WEATHER)])
def test_stream_helper_rebuilds_the_stored_response(oai, text, tools):
    kwargs = {"tools": tools} if tools else {}
    with oai.responses.stream(model=LLAMA_MODEL, input=text, **kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    _same(oai.responses.retrieve(final.id), final)
    if tools:
        assert final.output[-1].type == "function_call" and final.output[-1].name == "get_weather"
    else:
        assert final.output_text == HELLO


def test_stream_of_an_incomplete_response(oai):
    with oai.responses.stream(model=LLAMA_MODEL, input="[long]", max_output_tokens=8) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    stored = oai.responses.retrieve(events[-1].response.id)
    assert stored.status == "incomplete"
    assert stored.output[0].content[0].text == events[-1].response.output[0].content[0].text


def test_retrieve_delete_and_input_items(oai):
    r = oai.responses.create(model=LLAMA_MODEL, input=[{"role": "user", "content": "one"},
                                                        {"role": "user", "content": "two"}])
    items = oai.responses.input_items.list(r.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["one", "two"]
    deleted = oai.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_background_then_poll(oai):
    r = oai.responses.create(model=LLAMA_MODEL, input="hi", background=True)
    assert r.status == "queued"
    for _ in range(200):
        r = oai.responses.retrieve(r.id)
        if r.status not in ("queued", "in_progress"):
            break
        time.sleep(0.02)
    assert r.status == "completed" and r.output_text == HELLO


def test_background_cancel(oai, slow_ollama):
    r = oai.responses.create(model="slow", input="hi", background=True, stream=False)
    time.sleep(0.3)
    cancelled = oai.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert oai.responses.retrieve(r.id).status == "cancelled"


def test_structured_output_request_reaches_the_backend(oai, ollama):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    r = oai.responses.create(model="tiny", input="hi", text={"format": {
        "type": "json_schema", "name": "reply", "schema": schema, "strict": True}})
    assert r.output_text == DEFAULT_TEXT
    assert r.text.format.type == "json_schema"
    assert ollama.requests[-1]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "reply", "schema": schema, "strict": True}}


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.create(model="no-such-model", input="hi")
    assert info.value.body["code"] == "model_not_found"


def test_routing_across_two_backends(tmp_path):
    """Least-busy routing and max_concurrent_connections over real sockets, then one
    backend stopped mid-run: requests go to the other."""
    with OllamaTestServer(models=["shared:latest"], loaded=["shared:latest"], first_byte_delay=0.3) as a, \
            OllamaTestServer(models=["shared:latest"], loaded=["shared:latest"], first_byte_delay=0.3) as b:
        proc = GatewayProcess(tmp_path, endpoints=[a.url, b.url], max_concurrent_connections=2).start()
        try:
            client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0, timeout=30)

            def ask(n: int) -> str:
                return client.responses.create(model="shared", input=f"q{n}", stream=False).output_text

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(ask, range(6)))
            assert answers == [DEFAULT_TEXT] * 6
            assert a.peak_in_flight == 2 and b.peak_in_flight == 2   # spread, never past the limit
            assert a.requests_total + b.requests_total == 6

            a.stop()
            before = b.requests_total
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(ask, range(3)))
            assert answers == [DEFAULT_TEXT] * 3
            assert b.requests_total - before == 3
            client.close()
        finally:
            proc.stop()
