"""The Responses API over a WebSocket: the gateway under uvicorn, a real WebSocket client (the
``websockets`` library, and the OpenAI SDK's ``client.responses.connect()``), the scripted
Ollama-protocol server behind. Every server event is validated strictly (SDK types, the Open
Responses schemas); a turn's events as one stream with ``check_stream``."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai.types.responses import (ResponseSteerAcceptedEvent, ResponseSteerFailedEvent,
                                    ResponseSteerPendingEvent)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conformance import assert_spec, check_event, check_stream
from tests.e2e.ollama_server import DEFAULT_TEXT, TOOL_RESULT_PREFIX, OllamaTestServer
from tests.e2e.processes import GatewayProcess

MODEL = "tiny"
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
_STEER_TYPES = {"response.steer.accepted": ResponseSteerAcceptedEvent,
                "response.steer.failed": ResponseSteerFailedEvent,
                "response.steer.pending": ResponseSteerPendingEvent}
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


@pytest.fixture(scope="module")
def backend():
    with OllamaTestServer(models=["tiny:latest", "slow:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, backend):
    proc = GatewayProcess(tmp_path_factory.mktemp("ws"), endpoints=[backend.url], max_concurrent_connections=4,
                          tenants={"a": {"keys": ["key-a"]}, "b": {"keys": ["key-b"]}},
                          admin_api_key="key-admin").start()
    yield proc
    proc.stop()


def ws_url(proc: GatewayProcess) -> str:
    return proc.url.replace("http://", "ws://") + "/v1/responses"


class Socket:
    """A raw client: sends client events, reads server events and checks each strictly."""

    def __init__(self, ws):
        self.ws = ws
        self.seen: list[dict] = []

    async def send(self, **event) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout: float = 30) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if event["type"] == "error" and "status" in event:
            assert_spec("WebSocketErrorEvent", event)
        elif event["type"] in _STEER_TYPES:
            if (event.get("error") or {}).get("code") == "invalid_input":  # the input sent back is what failed
                event = {**event, "steer": {**event["steer"], "input": "x"}}
            _STEER_TYPES[event["type"]].model_validate(event, strict=True)
        else:
            check_event(event)
        self.seen.append(event)
        return event

    async def turn(self, **body) -> list[dict]:
        """One ``response.create`` and its events up to the terminal one (or a WebSocket error)."""
        await self.send(type="response.create", **body)
        return await self.until_terminal()

    async def until_terminal(self) -> list[dict]:
        events = []
        while True:
            event = await self.recv()
            events.append(event)
            if event["type"] in _TERMINAL or (event["type"] == "error" and "status" in event):
                return events


def stream_of(events: list[dict]) -> list[dict]:
    """A turn's own events, checked as one stream. Steer events share its sequence numbers (all of
    them count up by one from 0); they are left out, and the rest numbered again, for ``check_stream``."""
    own = [e for e in events if e["type"] not in _STEER_TYPES and not (e["type"] == "error" and "status" in e)]
    numbered = [e for e in events if "sequence_number" in e]
    assert [e["sequence_number"] for e in numbered] == list(range(len(numbered)))
    check_stream([{**e, "sequence_number": n} for n, e in enumerate(own)])
    return own


def headers(key: str = "key-a") -> dict:
    return {"Authorization": f"Bearer {key}"}


async def test_a_plain_turn_streams_the_sse_events(gateway):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        events = stream_of(await Socket(ws).turn(model=MODEL, input="hi"))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output_text"] == DEFAULT_TEXT
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    stored = httpx.get(f"{gateway.url}/v1/responses/{events[-1]['response']['id']}", headers=headers()).json()
    assert stored["status"] == "completed"


async def test_the_sdk_runs_ten_tool_turns_on_one_socket_with_store_false(gateway, backend):
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="key-a", max_retries=0)
    async with client.responses.connect() as conn:
        previous, sent_before = None, None
        for turn in range(10):
            if turn % 2 == 0:
                given = [{"role": "user", "content": f"weather, please ({turn})"}]
            else:
                given = [{"type": "function_call_output", "call_id": call_id, "output": f"sunny {turn}"}]
            await conn.response.create(model=MODEL, input=given, tools=TOOLS, store=False,
                                       **({"previous_response_id": previous} if previous else {}))
            async for event in conn:
                if event.type in _TERMINAL or event.type == "error":
                    break
            assert event.type == "response.completed", event
            response = event.response
            previous = response.id
            if turn % 2 == 0:
                call_id = response.output[0].call_id
                assert response.output[0].type == "function_call"
            else:
                assert response.output_text == TOOL_RESULT_PREFIX + f"sunny {turn}"
            sent = len(backend.requests[-1]["messages"])
            assert sent_before is None or sent > sent_before   # the whole history reached the model
            sent_before = sent
    # store: false: none of them is retrievable, and a new socket cannot continue the last
    assert httpx.get(f"{gateway.url}/v1/responses/{previous}", headers=headers()).status_code == 404
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        [error] = await Socket(ws).turn(model=MODEL, input="more", previous_response_id=previous, store=False)
    assert error["status"] == 404 and error["error"]["code"] == "previous_response_not_found"


async def test_a_stored_response_continues_on_a_new_socket_for_its_tenant_only(gateway, backend):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        first = (await Socket(ws).turn(model=MODEL, input="remember 7"))[-1]["response"]
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        events = stream_of(await Socket(ws).turn(model=MODEL, input="what was it?", previous_response_id=first["id"]))
    assert events[-1]["response"]["previous_response_id"] == first["id"]
    assert [m["content"] for m in backend.requests[-1]["messages"]] == ["remember 7", DEFAULT_TEXT, "what was it?"]
    async with connect(ws_url(gateway), additional_headers=headers("key-b")) as ws:
        [error] = await Socket(ws).turn(model=MODEL, input="x", previous_response_id=first["id"])
    assert error["error"]["code"] == "previous_response_not_found"


async def test_the_upgrade_needs_a_key(gateway):
    for sent in ({}, headers("wrong")):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(gateway), additional_headers=sent):
                pass
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as foreign:
        async with connect(ws_url(gateway), additional_headers=headers(), origin="http://evil.example"):
            pass
    assert foreign.value.response.status_code == 403


@pytest.mark.parametrize("event, status, code", [
    ({"type": "response.create", "model": MODEL, "input": "x", "background": True}, 400, None),
    ({"type": "response.create", "model": MODEL, "input": "x", "stream": False}, 400, None),
    ({"type": "response.create", "model": MODEL, "input": "x", "stream_id": "lane"}, 400, "unsupported_parameter"),
    ({"type": "response.create", "model": MODEL, "input": "x", "temperature": "hot"}, 400, None),
    ({"type": "response.create", "model": "no-such-model", "input": "x"}, 404, "model_not_found"),
    ({"type": "response.cancel"}, 400, None),
    ("not json", 400, "invalid_json"),
])
async def test_bad_client_events_are_error_events_and_the_socket_goes_on(gateway, event, status, code):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        socket = Socket(ws)
        await ws.send(event if isinstance(event, str) else json.dumps(event))
        error = await socket.recv()
        assert error["type"] == "error" and error["status"] == status
        assert code is None or error["error"]["code"] == code
        events = stream_of(await socket.turn(model=MODEL, input="still here?"))
        assert events[-1]["type"] == "response.completed"


async def test_one_response_at_a_time_on_a_socket(gateway, backend):
    backend.chunk_delay = 0.05
    try:
        async with connect(ws_url(gateway), additional_headers=headers()) as ws:
            socket = Socket(ws)
            await socket.send(type="response.create", model=MODEL, input="first")
            await socket.send(type="response.create", model=MODEL, input="second")
            events = await socket.until_terminal()
            if events[-1]["type"] == "error":  # the refusal, then the first response to its end
                events += await socket.until_terminal()
            refused = [e for e in events if e["type"] == "error" and "status" in e]
            assert len(refused) == 1 and refused[0]["error"]["code"] == "response_already_in_flight"
            own = stream_of([e for e in events if e not in refused])
            assert own[-1]["response"]["output_text"] == DEFAULT_TEXT
            later = stream_of(await socket.turn(model=MODEL, input="third", previous_response_id=own[-1]["response"]["id"]))
            assert later[-1]["type"] == "response.completed"
    finally:
        backend.chunk_delay = 0.0


async def test_a_failed_continuation_evicts_the_cached_response(gateway, backend):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        socket = Socket(ws)
        first = (await socket.turn(model=MODEL, input="one", store=False))[-1]["response"]
        backend.fail_status, backend.fail_count = 400, 1
        try:
            failed = await socket.turn(model=MODEL, input="two", store=False, previous_response_id=first["id"])
        finally:
            backend.fail_status = None
        assert failed[-1]["type"] == "error" and failed[-1]["status"] == 400
        [gone] = await socket.turn(model=MODEL, input="three", store=False, previous_response_id=first["id"])
        assert gone["error"]["code"] == "previous_response_not_found"


async def test_leaving_mid_turn_cancels_it_and_frees_its_slot(gateway, backend):
    backend.chunk_delay = 0.1
    disconnects = backend.disconnects
    try:
        async with connect(ws_url(gateway), additional_headers=headers()) as ws:
            socket = Socket(ws)
            await socket.send(type="response.create", model=MODEL, input="[long] go on")
            while (event := await socket.recv())["type"] != "response.output_text.delta":
                pass
            response_id = socket.seen[0]["response"]["id"]
    finally:
        backend.chunk_delay = 0.0
    for _ in range(600):
        usage = httpx.get(f"{gateway.url}/api/usage", headers=headers("key-admin")).json()
        stored = httpx.get(f"{gateway.url}/v1/responses/{response_id}", headers=headers()).json()
        # the upstream's close reaches the backend a moment after the cancelled state is stored
        if not usage.get("usage") and stored["status"] not in ("queued", "in_progress") \
                and backend.disconnects > disconnects:
            break
        await asyncio.sleep(0.05)
    assert stored["status"] == "cancelled" and not usage.get("usage"), (usage, stored["status"])
    assert backend.disconnects > disconnects


async def test_a_socket_past_its_age_is_told_and_closed(tmp_path, backend):
    proc = GatewayProcess(tmp_path, endpoints=[backend.url], websocket_max_age=3).start()
    try:
        async with connect(ws_url(proc)) as ws:
            socket = Socket(ws)
            assert (await socket.turn(model=MODEL, input="quick"))[-1]["type"] == "response.completed"
            error = await socket.recv(timeout=10)
            assert error["error"]["code"] == "websocket_connection_limit_reached" and error["status"] == 400
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
    finally:
        proc.stop()


# ── steering ──────────────────────────────────────────────────────────────────

async def test_a_steer_ends_a_long_answer_and_a_successor_takes_the_input(gateway, backend):
    backend.chunk_delay = 0.05
    try:
        async with connect(ws_url(gateway), additional_headers=headers()) as ws:
            socket = Socket(ws)
            await socket.send(type="response.create", model=MODEL, input="[long] tell me everything", store=False)
            while (event := await socket.recv())["type"] != "response.output_text.delta":
                pass
            target = socket.seen[0]["response"]["id"]
            await socket.send(type="response.steer", previous_response_id=target, input="Stop. Just say hi.")
            await socket.until_terminal()
            first = list(socket.seen)
            successor = await socket.until_terminal()
    finally:
        backend.chunk_delay = 0.0
    accepted = [e for e in first if e["type"] == "response.steer.accepted"]
    assert len(accepted) == 1 and accepted[0]["steer"]["previous_response_id"] == target
    steered = stream_of(first)[-1]
    assert steered["type"] == "response.incomplete"
    assert steered["response"]["incomplete_details"] == {"reason": "steered"}
    assert steered["response"]["output"][-1]["status"] == "incomplete"
    own = stream_of(successor)
    assert own[0]["response"]["previous_response_id"] == target and own[-1]["type"] == "response.completed"
    asked = backend.requests[-1]["messages"]
    assert asked[0]["content"] == "[long] tell me everything" and asked[-1] == {"role": "user",
                                                                                 "content": "Stop. Just say hi."}
    assert asked[1]["role"] == "assistant" and asked[1]["content"]                  # the part said before the steer


async def test_a_steer_during_a_tool_call_waits_for_its_output(gateway, backend):
    backend.chunk_delay = 0.5  # the steer arrives while the call is out and its finish is not (a loaded machine too)
    try:
        async with connect(ws_url(gateway), additional_headers=headers()) as ws:
            socket = Socket(ws)
            await socket.send(type="response.create", model=MODEL, input="weather?", tools=TOOLS, store=False)
            await socket.recv()
            target = socket.seen[0]["response"]["id"]
            await socket.send(type="response.steer", previous_response_id=target, input="In Celsius, please.")
            await socket.until_terminal()
            events = list(socket.seen)
            pending = await socket.recv()
            call = stream_of(events)[-1]["response"]["output"][0]
            assert stream_of(events)[-1]["type"] == "response.completed" and call["type"] == "function_call"
            assert pending["type"] == "response.steer.pending" and pending["reason"] == "waiting_for_required_input"
            assert pending["required_input"] == [{"type": "function_call_output", "call_id": call["call_id"],
                                                  "name": "get_weather"}]
            backend.chunk_delay = 0.0
            done = stream_of(await socket.turn(model=MODEL, tools=TOOLS, store=False, previous_response_id=target,
                                               input=[{"type": "function_call_output", "call_id": call["call_id"],
                                                       "output": "sunny"}]))
            assert done[-1]["type"] == "response.completed"
            asked = backend.requests[-1]["messages"]
            assert {"role": "user", "content": "In Celsius, please."} in asked       # the queued input went first
    finally:
        backend.chunk_delay = 0.0


@pytest.mark.parametrize("steer, code", [
    ({"previous_response_id": "resp_elsewhere", "input": "x"}, "response_not_found"),
    ({"input": [{"role": "assistant", "content": "x"}]}, "invalid_input"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "invalid_input"),
    ({"input": "x", "stream_id": "lane"}, "invalid_input"),
])
async def test_steers_that_cannot_be_taken(gateway, backend, steer, code):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        socket = Socket(ws)
        done = (await socket.turn(model=MODEL, input="hi"))[-1]["response"]
        await socket.send(type="response.steer", previous_response_id=done["id"], input="too late")
        failed = await socket.recv()
        assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == "response_already_completed"
        await socket.send(type="response.steer", **{"previous_response_id": done["id"], **steer})
        failed = await socket.recv()
        assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == code


async def test_the_sdk_steers_and_reconnects(gateway, backend):
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="key-a", max_retries=0)
    backend.chunk_delay = 0.05
    try:
        async with client.responses.connect() as conn:
            await conn.response.create(model=MODEL, input="[long] a long story", store=False)
            kinds = []
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.output_text.delta" and "response.steer.accepted" not in kinds \
                        and kinds.count("response.output_text.delta") == 1:
                    await conn.response.steer(input="Enough, thanks.", previous_response_id=steered_id)
                if event.type == "response.created" and kinds.count("response.created") == 1:
                    steered_id = event.response.id
                if event.type == "response.completed":
                    break
            assert "response.steer.accepted" in kinds and "response.incomplete" in kinds
            assert kinds.count("response.created") == 2                 # the successor's is the commit point
            last = event.response
            assert last.previous_response_id == steered_id and last.output_text == DEFAULT_TEXT
            await conn.response.create(model=MODEL, input="and stored?", store=True)
            async for event in conn:
                if event.type == "response.completed":
                    break
            stored_id = event.response.id
    finally:
        backend.chunk_delay = 0.0
    async with client.responses.connect() as conn:                      # a new socket
        await conn.response.create(model=MODEL, input="go on", previous_response_id=last.id, store=False)
        async for event in conn:
            if event.type in ("error", "response.completed"):
                break
        assert event.type == "error" and event.error.code == "previous_response_not_found"
        await conn.response.create(model=MODEL, input="go on", previous_response_id=stored_id)
        async for event in conn:
            if event.type in ("error", "response.completed"):
                break
        assert event.type == "response.completed"


async def test_a_client_that_stops_answering_pings_is_closed(tmp_path, backend):
    import base64
    import os
    proc = GatewayProcess(tmp_path, endpoints=[backend.url], websocket_ping_interval=0.3,
                          websocket_ping_timeout=0.3).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{proc.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        opcodes = []
        while True:  # never answer: the pings go unanswered
            frame = await asyncio.wait_for(reader.read(2), 10)
            if len(frame) < 2:
                break
            opcodes.append(frame[0] & 0x0F)
            await reader.readexactly(frame[1] & 0x7F)
            if opcodes[-1] == 0x8:
                break
        assert 0x9 in opcodes, opcodes                                   # pinged
        assert opcodes[-1] == 0x8 or not frame, opcodes                  # then closed
        writer.close()
    finally:
        proc.stop()


async def test_compaction_on_the_socket_and_a_new_chain_after_it(gateway, backend):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        socket = Socket(ws)
        first = (await socket.turn(model=MODEL, input="I plan a trip to Lisbon.", store=False))[-1]["response"]
        # server-side compaction on a continuation from the socket's memory
        events = stream_of(await socket.turn(model=MODEL, input="Book nothing yet.", store=False,
                                             previous_response_id=first["id"],
                                             context_management=[{"type": "compaction", "compact_threshold": 1}]))
        assert [e["type"] for e in events[2:5]] == ["response.output_item.added", "response.compaction.compacting",
                                                    "response.output_item.done"]
        compacted = events[-1]["response"]
        assert [item["type"] for item in compacted["output"]] == ["compaction", "message"]
        # the standalone compaction, then a new chain on the same socket from its window
        window = httpx.post(f"{gateway.url}/v1/responses/compact", headers=headers(), timeout=30,
                            json={"model": MODEL, "input": [*[{"role": "user", "content": "I plan a trip."}],
                                                            *compacted["output"]]}).json()
        fresh = stream_of(await socket.turn(model=MODEL, store=False,
                                            input=[*window["output"], {"role": "user", "content": "Go on."}]))
        assert fresh[-1]["type"] == "response.completed" and fresh[-1]["response"]["previous_response_id"] is None
        assert backend.requests[-1]["messages"][-1] == {"role": "user", "content": "Go on."}


async def test_a_turn_sent_the_moment_the_last_one_ends_is_taken(gateway):
    """The session is ready for the next turn before the terminal event goes out: a client that
    answers it at once is neither refused nor sent to the store for a ``store: false`` continuation."""
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        previous = None
        for turn in range(30):
            body = {"type": "response.create", "model": MODEL, "input": f"turn {turn}", "store": False}
            if previous:
                body["previous_response_id"] = previous
            await ws.send(json.dumps(body))
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] not in _TERMINAL + ("error",):
                pass
            assert event["type"] == "response.completed", event
            previous = event["response"]["id"]


async def test_a_warm_up_makes_a_response_without_the_model(gateway, backend):
    async with connect(ws_url(gateway), additional_headers=headers()) as ws:
        socket = Socket(ws)
        asked = len(backend.requests)
        warm = stream_of(await socket.turn(model=MODEL, store=False, generate=False,
                                           input=[{"role": "developer", "content": "Answer in one word."}]))
        assert [e["type"] for e in warm] == ["response.created", "response.in_progress", "response.completed"]
        assert warm[-1]["response"]["output"] == [] and len(backend.requests) == asked
        real = stream_of(await socket.turn(model=MODEL, input="hi", store=False,
                                           previous_response_id=warm[-1]["response"]["id"]))
        assert real[-1]["type"] == "response.completed"
        assert backend.requests[-1]["messages"] == [{"role": "system", "content": "Answer in one word."},
                                                    {"role": "user", "content": "hi"}]
        [refused] = await socket.turn(model=MODEL, input="x", generate="no")
        assert refused["error"]["param"] == "generate"
