"""OpenAI's ``mcp`` tool run by the gateway for a Chat backend: a real MCP server and the scripted
Ollama-protocol server on 127.0.0.1. The scripted model calls the first tool it is offered with
``{"city": "Paris"}`` and answers ``The tool said: <output>`` once a tool result comes back.
Objects and events are checked strictly with the SDK's types; the Open Responses schema has no MCP
items or ``mcp`` tool, so it is not applied to them."""

from __future__ import annotations

import pytest

import router
from tests.conformance import assert_openai_error, check_response, check_stream, parse_sse
from tests.e2e.ollama_server import TOOL_RESULT_PREFIX
from tests.mcp_server import McpTestServer


@pytest.fixture(scope="module")
def mcp_server():
    with McpTestServer() as server:
        yield server


@pytest.fixture
async def gw(gateway_factory, ollama, mcp_server):
    async with gateway_factory(endpoints=[ollama.url], mcp_allowed_servers=[f"http://127.0.0.1:{mcp_server.port}/"],
                               mcp_timeout=5) as http:
        yield http


def mcp_tool(server, **fields) -> dict:
    return {"type": "mcp", "server_label": "demo", "server_url": server.url, "require_approval": "never", **fields}


async def create(http, **body) -> dict:
    reply = await http.post("/v1/responses", json={"model": "tiny", **body})
    assert reply.status_code == 200, reply.text
    check_response(reply.json(), spec=False)
    return reply.json()


async def test_a_turn_lists_the_tools_calls_one_and_answers(gw, ollama, mcp_server):
    before, seen = len(mcp_server.calls), len(mcp_server.headers)
    answer = await create(gw, input="weather?", tools=[mcp_tool(mcp_server, headers={"X-Key": "secret-1"})])
    sessions = {h["mcp-session-id"] for h in mcp_server.headers[seen:] if "mcp-session-id" in h}
    assert len(sessions) == 1                                          # one MCP session for the whole turn
    kinds = [item["type"] for item in answer["output"]]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, message = answer["output"]
    assert {tool["name"] for tool in listed["tools"]} == {"weather", "broken", "slow"}
    assert call["name"] == "weather" and call["output"] == "Sunny in Paris" and call["error"] is None
    assert answer["output_text"] == TOOL_RESULT_PREFIX + "Sunny in Paris"
    assert mcp_server.calls[before:] == [("weather", {"city": "Paris"})]
    assert any(h.get("x-key") == "secret-1" for h in mcp_server.headers)
    assert len(ollama.requests) == 2 and answer["usage"]["output_tokens"] > 0      # two model calls, summed
    counted = router.app.state.gateway.token_stats.totals[(ollama.url, "tiny:latest")]
    assert counted == [answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]]   # each call once
    # the secret is neither echoed nor stored
    assert "headers" not in answer["tools"][0] and "secret-1" not in str(answer)
    stored = (await gw.get(f"/v1/responses/{answer['id']}")).json()
    assert "secret-1" not in str(stored)
    # the next turn reuses the listed tools instead of listing again
    again = await create(gw, input="and now?", previous_response_id=answer["id"], tools=[mcp_tool(mcp_server)])
    assert [item["type"] for item in again["output"]] == ["mcp_call", "message"]


async def test_a_streamed_turn_sends_the_mcp_events(gw, mcp_server):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "weather?", "stream": True,
                                                 "tools": [mcp_tool(mcp_server)]})
    events = parse_sse(reply.text)
    summary = check_stream(events, spec=False)
    types = summary.types
    for kind in ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                 "response.mcp_call.in_progress", "response.mcp_call_arguments.done", "response.mcp_call.completed"):
        assert kind in types, kind
    assert [item["type"] for item in summary.response["output"]] == ["mcp_list_tools", "mcp_call", "message"]


async def test_a_call_that_fails_on_the_server_is_an_mcp_call_with_an_error(gw, mcp_server):
    answer = await create(gw, input="try it", tools=[mcp_tool(mcp_server, allowed_tools=["broken"])])
    call = next(item for item in answer["output"] if item["type"] == "mcp_call")
    assert call["name"] == "broken" and call["output"] is None and call["status"] == "failed"
    assert call["error"]["type"] == "mcp_tool_execution_error"
    assert answer["output_text"].startswith(TOOL_RESULT_PREFIX + "Error:")


async def test_allowed_tools_limits_what_the_model_is_offered(gw, ollama, mcp_server):
    await create(gw, input="weather?", tools=[mcp_tool(mcp_server, allowed_tools={"tool_names": ["weather"]})])
    offered = [t["function"]["name"] for t in ollama.requests[0]["tools"]]
    assert offered == ["mcp__demo__weather"]


async def test_max_tool_calls_stops_the_loop(gw, ollama, mcp_server):
    answer = await create(gw, input="weather?", max_tool_calls=1, tools=[mcp_tool(mcp_server)])
    assert [item["type"] for item in answer["output"]].count("mcp_call") == 1
    assert "tools" not in ollama.requests[-1] or not ollama.requests[-1]["tools"]


async def test_an_approval_round_trip_runs_the_call_exactly_once(gw, mcp_server):
    tools = [mcp_tool(mcp_server, require_approval="always")]
    asked = await create(gw, input="weather?", tools=tools)
    assert [item["type"] for item in asked["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    request = asked["output"][-1]
    assert request["name"] == "weather" and request["arguments"] == '{"city":"Paris"}'
    before = len(mcp_server.calls)
    approval = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    done = await create(gw, input=[approval], previous_response_id=asked["id"], tools=tools)
    assert [item["type"] for item in done["output"]] == ["mcp_call", "message"]
    assert done["output"][0]["approval_request_id"] == request["id"]
    assert len(mcp_server.calls) == before + 1
    replayed = await create(gw, input=[approval], previous_response_id=asked["id"], tools=tools)
    assert "mcp_call" not in [item["type"] for item in replayed["output"]]
    assert len(mcp_server.calls) == before + 1                         # not run twice


async def test_a_refused_approval_runs_nothing_and_the_model_is_told(gw, ollama, mcp_server):
    tools = [mcp_tool(mcp_server, require_approval={"never": {"tool_names": ["broken"]}})]
    asked = await create(gw, input="weather?", tools=tools)
    request = asked["output"][-1]
    assert request["type"] == "mcp_approval_request"
    before = len(mcp_server.calls)
    refused = await create(gw, previous_response_id=asked["id"], tools=tools, input=[
        {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False}])
    assert len(mcp_server.calls) == before and "mcp_call" not in [i["type"] for i in refused["output"]]
    assert "did not approve" in str(ollama.requests[-1]["messages"])
    unknown = await gw.post("/v1/responses", json={"model": "tiny", "tools": tools, "input": [
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_nowhere", "approve": True}]})
    assert assert_openai_error(unknown, 400)["code"] == "approval_request_not_found"


async def test_a_server_not_on_the_allowlist_is_a_400(gw, mcp_server):
    for url in ("http://127.0.0.1:9/mcp", "http://localhost:%d/mcp" % mcp_server.port):
        reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x", "tools": [
            {"type": "mcp", "server_label": "other", "server_url": url, "require_approval": "never"}]})
        error = assert_openai_error(reply, 400)
        assert error["code"] == "mcp_server_not_allowed" and error["param"] == "tools[0].server_url"


async def test_no_allowlist_means_no_server(gateway_factory, ollama, mcp_server):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x", "tools": [mcp_tool(mcp_server)]})
        assert assert_openai_error(reply, 400)["code"] == "mcp_server_not_allowed"
    assert ollama.requests == []


async def test_a_server_that_hangs_fails_the_response_cleanly(gateway_factory, ollama, mcp_server):
    async with gateway_factory(endpoints=[ollama.url], mcp_allowed_servers=[f"http://127.0.0.1:{mcp_server.port}/"],
                               mcp_timeout=1) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x", "tools": [
            mcp_tool(mcp_server, allowed_tools=["slow"])]})
        error = assert_openai_error(reply, 504)
        assert error["code"] == "mcp_server_timeout"
        usage = (await http.get("/api/usage")).json()
        assert not usage.get("usage"), usage                           # no slot left taken
        ok = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        assert ok.status_code == 200


async def test_background_mcp_with_headers_is_refused(gw, mcp_server):
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "x", "background": True,
                                                 "tools": [mcp_tool(mcp_server, authorization="tok")]})
    assert assert_openai_error(reply, 400)["param"] == "background"


async def test_the_openai_sdk_runs_an_mcp_turn(gw, mcp_server):
    import httpx
    import openai

    import router
    client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="none", max_retries=0, http_client=httpx.AsyncClient(
        transport=httpx.ASGITransport(app=router.app), base_url="http://gateway"))
    response = await client.responses.create(model="tiny", input="weather?", tools=[mcp_tool(mcp_server)])
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[1].output == "Sunny in Paris"
    assert response.output_text == TOOL_RESULT_PREFIX + "Sunny in Paris"
    stream = await client.responses.create(model="tiny", input="weather?", tools=[mcp_tool(mcp_server)], stream=True)
    kinds = [event.type async for event in stream]
    assert "response.mcp_call.completed" in kinds and kinds[-1] == "response.completed"


async def test_approvals_with_the_whole_history_and_on_a_conversation(gw, mcp_server):
    tools = [mcp_tool(mcp_server, require_approval="always", allowed_tools=["weather"])]
    question = {"role": "user", "content": "weather?"}
    asked = await create(gw, input=[question], tools=tools, store=False)
    request = asked["output"][-1]
    before = len(mcp_server.calls)
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    done = await create(gw, input=[question, *asked["output"], answer], tools=tools, store=False)
    assert [item["type"] for item in done["output"]] == ["mcp_call", "message"]
    # the client resends the call it got: the same approval runs nothing again
    again = await create(gw, input=[question, *asked["output"], answer, *done["output"]], tools=tools, store=False)
    assert "mcp_call" not in [item["type"] for item in again["output"]]
    assert len(mcp_server.calls) == before + 1

    conversation = (await gw.post("/v1/conversations", json={})).json()["id"]
    asked = await create(gw, input="weather?", tools=tools, conversation=conversation)
    request = asked["output"][-1]
    done = await create(gw, tools=tools, conversation=conversation, input=[
        {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}])
    assert [item["type"] for item in done["output"]] == ["mcp_call", "message"]
    assert len(mcp_server.calls) == before + 2


async def test_the_clients_own_functions_still_go_back_to_it(gw, mcp_server):
    function = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    answer = await create(gw, input="[two] time and weather", tools=[function, mcp_tool(mcp_server,
                                                                                        allowed_tools=["weather"])])
    assert [item["type"] for item in answer["output"]] == ["mcp_list_tools", "mcp_call", "function_call"]
    assert answer["output"][2]["name"] == "get_time" and answer["output"][1]["output"] == "Sunny in Paris"


async def test_a_streamed_turn_whose_server_hangs_ends_with_response_failed(gateway_factory, ollama, mcp_server):
    async with gateway_factory(endpoints=[ollama.url], mcp_allowed_servers=[f"http://127.0.0.1:{mcp_server.port}/"],
                               mcp_timeout=1) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "x", "stream": True, "tools": [
            mcp_tool(mcp_server, allowed_tools=["slow"])]})
        events = parse_sse(reply.text)
        check_stream(events, spec=False)
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        failed = events[-1]["response"]
        stored = (await http.get(f"/v1/responses/{failed['id']}")).json()
        assert stored["status"] == "failed" and "mcp_timeout" in stored["error"]["message"]


async def test_an_older_server_over_sse(gateway_factory, ollama):
    with McpTestServer(transport="sse") as old:
        async with gateway_factory(endpoints=[ollama.url], mcp_allowed_servers=[f"http://127.0.0.1:{old.port}/"],
                                   mcp_timeout=5) as http:
            answer = await create(http, input="weather?", tools=[mcp_tool(old, allowed_tools=["weather"])])
    assert [item["type"] for item in answer["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    assert answer["output"][1]["output"] == "Sunny in Paris" and old.calls == [("weather", {"city": "Paris"})]
