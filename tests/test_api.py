"""The Responses routes end to end over an Ollama-protocol server on real sockets."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

import router
from openai.types.responses import Response

from tests.e2e.ollama_server import DEFAULT_TEXT, THINK_TEXT
from tests.reliability.helpers import IDLE, usage

TOOLS = [{"type": "function", "name": "get_weather", "description": "weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], max_concurrent_connections=8) as http:
        yield http


def sse(text: str) -> list[dict]:
    """Parse an SSE body into event dicts, checking each ``event:`` line equals ``type``."""
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        event = orjson.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events


async def create(http, **body) -> dict:
    reply = await http.post("/v1/responses", json={"model": "tiny", **body})
    assert reply.status_code == 200, reply.text
    obj = reply.json()
    Response.model_validate(obj)
    return obj


async def test_plain_create_is_stored_and_retrievable(gw, ollama):
    obj = await create(gw, input="hi")
    assert obj["status"] == "completed" and obj["output_text"] == DEFAULT_TEXT
    assert obj["model"] == "tiny"
    assert obj["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert ollama.requests[-1]["model"] == "tiny:latest"
    got = await gw.get(f"/v1/responses/{obj['id']}")
    assert got.json() == obj


async def test_store_false_is_not_retrievable(gw):
    obj = await create(gw, input="hi", store=False)
    assert obj["store"] is False
    assert (await gw.get(f"/v1/responses/{obj['id']}")).status_code == 404


async def test_stream_over_real_backend(gw):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True})
    events = sse(reply.text)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == DEFAULT_TEXT
    stored = (await gw.get(f"/v1/responses/{events[0]['response']['id']}")).json()
    assert stored["output"] == events[-1]["response"]["output"]
    assert stored["status"] == "completed"


async def test_chain_replays_history(gw, ollama):
    first = await create(gw, input="first question", instructions="be nice")
    await create(gw, input="second question", previous_response_id=first["id"])
    sent = ollama.requests[-1]["messages"]
    assert sent == [{"role": "user", "content": "first question"},
                    {"role": "assistant", "content": DEFAULT_TEXT},
                    {"role": "user", "content": "second question"}]  # instructions are not carried over


async def test_tool_round_trip(gw, ollama):
    first = await create(gw, input="weather in Paris?", tools=TOOLS)
    call = first["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert orjson.loads(call["arguments"]) == {"city": "Paris"}
    second = await create(gw, previous_response_id=first["id"], tools=TOOLS,
                          input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}])
    assert second["output_text"] == "The tool said: sunny"
    sent = ollama.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["call_id"]
    assert sent[2] == {"role": "tool", "tool_call_id": call["call_id"], "content": "sunny"}


async def test_reasoning_item_comes_first(gw):
    obj = await create(gw, input="[think] hi")
    assert [i["type"] for i in obj["output"]] == ["reasoning", "message"]
    assert obj["output"][0]["content"] == [{"type": "reasoning_text", "text": THINK_TEXT}]


async def test_length_limit_is_incomplete(gw, ollama):
    obj = await create(gw, input="[long]", max_output_tokens=5)
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["max_output_tokens"] == 5
    assert ollama.requests[-1]["max_tokens"] == 5


@pytest.mark.parametrize("body, status, param", [
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "tiny", "input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"input": "x"}, 400, "model"),
    ({"model": "tiny", "input": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "input": "x", "temperature": 7}, 400, "temperature"),
    ({"model": "tiny", "input": 5}, 400, "input"),
    ({"model": "tiny", "input": [{"type": "mystery"}]}, 400, "input[0].type"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "no_such_tool"}]}, 400, "tools[0].type"),
    ({"model": "tiny", "input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"model": "tiny", "input": "x", "metadata": {"k" * 65: "v"}}, 400, "metadata"),
    ({"model": "tiny", "input": "x", "metadata": {"k": "v" * 513}}, 400, "metadata"),
    ({"model": "tiny", "input": "x", "background": True, "store": False}, 400, "background"),
    ({"model": "tiny", "input": [{"type": "item_reference", "id": "msg_nope"}]}, 404, "input"),
])
async def test_bad_requests_get_openai_errors(gw, ollama, body, status, param):
    reply = await gw.post("/v1/responses", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"] and set(error) == {"message", "type", "param", "code"}
    assert ollama.requests_total == 0


async def test_malformed_json_is_400(gw):
    reply = await gw.post("/v1/responses", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


async def test_upstream_error_is_passed_on(gw, ollama):
    ollama.fail_status = 429
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x"})
    assert reply.status_code == 429
    assert "scripted failure" in reply.json()["error"]["message"]
    assert (await gw.get("/api/usage")).json()["in_flight"] == 0


async def test_stream_dropped_mid_way_fails_cleanly(gw, ollama):
    ollama.drop_after_chunks = 3
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True})
    events = sse(reply.text)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "server_error"
    stored = (await gw.get(f"/v1/responses/{events[0]['response']['id']}")).json()
    assert stored["status"] == "failed"
    assert (await gw.get("/api/usage")).json()["in_flight"] == 0


async def test_failover_to_a_reachable_endpoint(gateway_factory, ollama):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    async with gateway_factory(endpoints=[ollama.url], llama_server_endpoints=[dead],
                               connect_timeout=1) as http:
        dead_ep = router.app.state.gateway.registry.endpoints[dead]
        dead_ep.models = dead_ep.loaded = {"tiny"}                 # as if it had answered discovery
        dead_ep.reachable = True
        router.app.state.gateway.registry.endpoints[ollama.url].loaded = set()       # so the dead one ranks first
        obj = await create(http, input="hi")
        assert obj["output_text"] == DEFAULT_TEXT
        assert router.app.state.gateway.registry.endpoints[dead].reachable is False


async def test_backend_down_is_502(gateway_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    async with gateway_factory(llama_server_endpoints=[dead], connect_timeout=1) as http:
        router.app.state.gateway.registry.endpoints[dead].models = {"tiny"}
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        assert reply.status_code == 502 and reply.json()["error"]["code"] == "backend_unavailable"


async def _poll(http, rid: str, until=("completed", "failed", "cancelled", "incomplete")) -> dict:
    for _ in range(200):
        obj = (await http.get(f"/v1/responses/{rid}")).json()
        if obj["status"] in until:
            return obj
        await asyncio.sleep(0.02)
    raise AssertionError(f"response {rid} stayed {obj['status']}")


async def test_background_runs_to_completion(gw):
    queued = await create(gw, input="hi", background=True)
    assert queued["status"] == "queued" and queued["background"] is True
    done = await _poll(gw, queued["id"])
    assert done["status"] == "completed" and done["output_text"] == DEFAULT_TEXT


async def test_background_cancel_stops_upstream(gw, ollama):
    ollama.first_byte_delay = 1.0
    rid = (await create(gw, input="hi", background=True))["id"]
    await _poll(gw, rid, until=("in_progress",))
    await asyncio.sleep(0.1)
    cancelled = (await gw.post(f"/v1/responses/{rid}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    assert (await gw.get(f"/v1/responses/{rid}")).json()["status"] == "cancelled"
    assert await usage(gw) == IDLE


async def test_cancel_of_foreground_response_is_400(gw):
    obj = await create(gw, input="hi")
    reply = await gw.post(f"/v1/responses/{obj['id']}/cancel")
    assert reply.status_code == 400


async def test_background_stream_and_resumption(gw):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "hi", "background": True,
                                                 "stream": True})
    events = sse(reply.text)
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    rid = events[0]["response"]["id"]
    replay = sse((await gw.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": 4})).text)
    assert replay == events[5:]


async def test_delete(gw):
    obj = await create(gw, input="hi")
    reply = await gw.delete(f"/v1/responses/{obj['id']}")
    assert reply.json() == {"id": obj["id"], "object": "response", "deleted": True}
    assert (await gw.get(f"/v1/responses/{obj['id']}")).status_code == 404
    assert (await gw.delete(f"/v1/responses/{obj['id']}")).status_code == 404


async def test_input_items_pagination(gw):
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    obj = await create(gw, input=items)
    page = (await gw.get(f"/v1/responses/{obj['id']}/input_items", params={"limit": 2})).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [i["content"][0]["text"] for i in page["data"]] == ["m4", "m3"]
    rest = (await gw.get(f"/v1/responses/{obj['id']}/input_items",
                         params={"order": "asc", "after": page["data"][0]["id"]})).json()
    assert rest["data"] == []  # m4 is the last in ascending order
    asc = (await gw.get(f"/v1/responses/{obj['id']}/input_items", params={"order": "asc"})).json()
    assert [i["content"][0]["text"] for i in asc["data"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert asc["first_id"] == asc["data"][0]["id"] and asc["has_more"] is False
    assert (await gw.get(f"/v1/responses/{obj['id']}/input_items", params={"limit": 0})).status_code == 400


async def test_item_reference_is_resolved(gw, ollama):
    first = await create(gw, input="remember me")
    ref = first["output"][0]["id"]
    await create(gw, input=[{"type": "item_reference", "id": ref}, {"role": "user", "content": "and?"}])
    assert ollama.requests[-1]["messages"][0] == {"role": "assistant", "content": DEFAULT_TEXT}


async def test_models_list(gw):
    listing = (await gw.get("/v1/models")).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny:latest"]


async def test_cache_hit_skips_backend(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True) as http:
        body = {"input": "cached?", "nomyo": {"cache": True}}
        first = await create(http, **body)
        second = await create(http, **body)
        assert ollama.requests_total == 1
        assert second["output_text"] == first["output_text"] and second["id"] != first["id"]
        await create(http, **body, temperature=0.5)   # an answer-changing option: a new key
        assert ollama.requests_total == 2
        await create(http, input="cached?")           # not opted in
        assert ollama.requests_total == 3


async def test_health_and_usage(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.get("/health")
        assert reply.status_code == 200 and reply.json()["endpoints"][0]["reachable"] is True
        ollama.stop()
        reply = await http.get("/health")
        assert reply.status_code == 503 and reply.json()["endpoints"][0]["reachable"] is False


async def test_auth_and_ownership(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], **{"nomyo-router-api-key": ["key-a", "key-b"]}) as http:
        assert (await http.get("/health/live")).status_code == 200
        missing = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        a = {"Authorization": "Bearer key-a"}
        obj = (await http.post("/v1/responses", json={"model": "tiny", "input": "hi"}, headers=a)).json()
        assert (await http.get(f"/v1/responses/{obj['id']}", headers=a)).status_code == 200
        assert (await http.get(f"/v1/responses/{obj['id']}", params={"api_key": "key-a"})).status_code == 200
        b = {"Authorization": "Bearer key-b"}
        for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items")]:
            reply = await http.request(method, f"/v1/responses/{obj['id']}{path}", headers=b)
            assert reply.status_code == 404, (method, path)
        chained = await http.post("/v1/responses", headers=b, json={
            "model": "tiny", "input": "x", "previous_response_id": obj["id"]})
        assert chained.status_code == 404


async def test_body_size_limit(gateway_factory):
    async with gateway_factory(max_body_bytes=2048) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x" * 5000})
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"


async def test_unknown_route_is_openai_shaped(gw):
    reply = await gw.get("/v1/nothing")
    assert reply.status_code == 404 and reply.json()["error"]["message"]


async def test_metrics(gw, ollama):
    await create(gw, input="hi")
    ollama.fail_status = 500
    await gw.post("/v1/responses", json={"model": "tiny", "input": "x"})
    text = (await gw.get("/metrics")).text
    assert 'nomyo_router_requests_total{route="/v1/responses",status="200"}' in text
    assert 'nomyo_router_requests_total{route="/v1/responses",status="500"}' in text
    assert f'nomyo_router_backend_errors_total{{endpoint="{ollama.url}",kind="500"}}' in text
    assert "nomyo_router_request_seconds_bucket" in text and "nomyo_router_in_flight" in text


async def test_an_upstream_responses_api_counts_input_tokens_itself(gateway_factory, ollama):
    """On a native endpoint the count is the upstream's own, asked with the chain and the
    Responses fields, never with the gateway's (store, background)."""
    from unittest.mock import AsyncMock, MagicMock, patch

    import api.responses as api_responses
    upstream = MagicMock()
    upstream.responses.input_tokens.count = AsyncMock(return_value={"object": "response.input_tokens",
                                                                    "input_tokens": 42})
    native = f"{ollama.url}/v1"
    async with gateway_factory(endpoints=[native], native_responses_endpoints=[native]) as gw:
        with patch.object(api_responses, "_make_openai_client", MagicMock(return_value=upstream)):
            reply = await gw.post("/v1/responses/input_tokens", json={
                "model": "tiny:latest", "input": "hi", "instructions": "Be brief.", "personality": "friendly"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"object": "response.input_tokens", "input_tokens": 42,
                            "nomyo": {"exact": True, "method": "upstream"}}
    sent = upstream.responses.input_tokens.count.call_args.kwargs
    assert sent["model"] == "tiny:latest" and sent["instructions"] == "Be brief."
    assert sent["personality"] == "friendly" and "store" not in sent
    assert sent["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
