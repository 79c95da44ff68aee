"""Backend faults: refused connections fail over (else 502), timeouts are 504, broken
streams end in ``error`` + ``response.failed``, upstream statuses are passed on; every
fault leaves nothing in flight."""

from __future__ import annotations

import asyncio
import time

import pytest

import router

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.reliability.helpers import (IDLE, assert_openai_error, metric, poll_status, sse, usage, wait_for,

                                       wait_idle)


@pytest.fixture
def pair():
    """Two Ollama-protocol servers serving the same model."""
    a = OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]).start()
    b = OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


async def _create(http, **body):
    return await http.post("/v1/responses", json={"model": "tiny", "input": "hi", **body})


async def test_refused_connection_fails_over_to_another_endpoint(app_factory, pair):
    a, b = pair
    async with app_factory(endpoints=[a.url, b.url], max_concurrent_connections=4, connect_timeout=1) as http:
        dead = router.app.state.gateway.registry.endpoints[a.url]
        assert dead.reachable and router.app.state.gateway.registry.endpoints[b.url].reachable
        a.stop()
        errors_before = metric((await http.get("/metrics")).text, "nomyo_router_backend_errors_total",
                               endpoint=a.url, kind="unavailable")
        served = 0
        for mode in ("plain", "stream", "background", "background-stream"):
            dead.reachable = True                    # as if discovery had not noticed yet: ranks first
            body = {"stream": "stream" in mode, "background": "background" in mode}
            reply = await _create(http, **body)
            assert reply.status_code == 200, (mode, reply.text)
            if mode == "plain":
                assert reply.json()["output_text"] == DEFAULT_TEXT
            elif mode == "background":
                done = await poll_status(http, reply.json()["id"])
                assert done["status"] == "completed" and done["output_text"] == DEFAULT_TEXT, mode
            else:
                events = sse(reply.text)
                assert events[-1]["type"] == "response.completed", mode
                assert events[-1]["response"]["output_text"] == DEFAULT_TEXT
            served += 1
            assert b.requests_total == served
            assert dead.reachable is False
        errors_after = metric((await http.get("/metrics")).text, "nomyo_router_backend_errors_total",
                              endpoint=a.url, kind="unavailable")
        assert errors_after - errors_before == 4
        await wait_idle(http, b)


async def test_no_reachable_endpoint_is_502(app_factory, pair):
    a, b = pair
    async with app_factory(endpoints=[a.url, b.url], max_concurrent_connections=4, connect_timeout=1) as http:
        a.stop()
        b.stop()
        for body in ({}, {"stream": True}):
            started = time.monotonic()
            reply = await _create(http, **body)
            assert_openai_error(reply, 502, "backend_unavailable")
            assert time.monotonic() - started < 5
        queued = (await _create(http, background=True)).json()
        failed = await poll_status(http, queued["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert "unavailable" in failed["error"]["message"] or "reachable" in failed["error"]["message"]
        stored = sse((await http.get(f"/v1/responses/{queued['id']}", params={"stream": "true"})).text)
        assert stored[-1]["type"] == "response.failed"
        assert (await usage(http)) == IDLE


async def test_upstream_timeout_is_504(app_factory, ollama):
    ollama.first_byte_delay = 2
    async with app_factory(endpoints=[ollama.url], request_timeout=0.5, max_concurrent_connections=4) as http:
        for body in ({}, {"stream": True}, {"stream": True, "store": False}):
            started = time.monotonic()
            reply = await _create(http, **body)
            assert_openai_error(reply, 504, "upstream_timeout")
            assert time.monotonic() - started < 1.8, body
            assert (await usage(http))["in_flight"] == 0
        queued = (await _create(http, background=True)).json()
        failed = await poll_status(http, queued["id"], timeout=5)
        assert failed["status"] == "failed" and "timeout" in failed["error"]["message"].lower()
        await wait_idle(http, ollama, timeout=5)


async def test_stalled_stream_times_out_with_a_failed_event(app_factory, ollama):
    ollama.chunk_delay = 2
    async with app_factory(endpoints=[ollama.url], request_timeout=0.5, max_concurrent_connections=4) as http:
        started = time.monotonic()
        events = sse((await _create(http, stream=True)).text)
        assert time.monotonic() - started < 1.8
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        stored = (await http.get(f"/v1/responses/{events[0]['response']['id']}")).json()
        assert stored["status"] == "failed" and stored["output"] == events[-1]["response"]["output"]
        assert all(item["status"] == "incomplete" for item in stored["output"])
        await wait_idle(http, ollama, timeout=5)


@pytest.mark.parametrize("drop_after", [0, 1, 3])
async def test_background_stream_dropped_mid_way_fails_and_replays(app_factory, ollama, drop_after):
    ollama.drop_after_chunks = drop_after
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4) as http:
        events = sse((await _create(http, stream=True, background=True)).text)
        assert [e["type"] for e in events[:2]] == ["response.created", "response.queued"]
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert sum(e["type"] in ("response.completed", "response.failed", "response.incomplete")
                   for e in events) == 1
        rid = events[0]["response"]["id"]
        stored = (await http.get(f"/v1/responses/{rid}")).json()
        assert stored["status"] == "failed" and stored["error"]["code"] == "server_error"
        assert stored["output"] == events[-1]["response"]["output"]
        done_items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        assert stored["output"] == done_items
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert DEFAULT_TEXT.startswith(text) and text != DEFAULT_TEXT
        replay = sse((await http.get(f"/v1/responses/{rid}", params={"stream": "true"})).text)
        assert replay == events
        await wait_idle(http, ollama)


async def test_foreground_stream_dropped_before_any_chunk_fails(app_factory, ollama):
    ollama.drop_after_chunks = 0
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4) as http:
        for store in (True, False):
            events = sse((await _create(http, stream=True, store=store)).text)
            assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error",
                                                   "response.failed"]
            stored = await http.get(f"/v1/responses/{events[0]['response']['id']}")
            if store:
                assert stored.json()["status"] == "failed" and stored.json()["output"] == []
            else:
                assert stored.status_code == 404
        plain = await _create(http)                           # a whole answer is not a stream: unaffected
        assert plain.status_code == 200 and plain.json()["status"] == "completed"
        await wait_idle(http, ollama)


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
async def test_upstream_status_is_passed_on(app_factory, ollama, status):
    ollama.fail_status = status
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4) as http:
        for body in ({}, {"stream": True}, {"store": False}):
            reply = await _create(http, **body)
            error = assert_openai_error(reply, status)
            assert f"scripted failure with status {status}" in error["message"]
        queued = (await _create(http, background=True)).json()
        failed = await poll_status(http, queued["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == ("rate_limit_exceeded" if status == 429 else "server_error")
        assert f"status {status}" in failed["error"]["message"]
        assert ollama.requests_total == 4                      # no retries of a status error
        assert router.app.state.gateway.registry.endpoints[ollama.url].reachable is True
        await wait_idle(http, ollama)


async def test_a_transient_upstream_error_does_not_stick(app_factory, ollama):
    ollama.fail_status, ollama.fail_count = 500, 1
    async with app_factory(endpoints=[ollama.url]) as http:
        assert_openai_error(await _create(http), 500)
        ok = await _create(http)
        assert ok.status_code == 200 and ok.json()["output_text"] == DEFAULT_TEXT


async def test_upstream_timeout_frees_the_slot_for_queued_requests(app_factory, ollama):
    ollama.first_byte_delay = 1.0
    async with app_factory(endpoints=[ollama.url], request_timeout=0.3, max_concurrent_connections=1,
                           queue_timeout=10) as http:
        started = time.monotonic()
        replies = await asyncio.gather(*(_create(http) for _ in range(4)))
        assert [r.status_code for r in replies] == [504] * 4
        assert time.monotonic() - started < 3                 # four timeouts one after the other
        await wait_for(lambda: _idle(http), 5)


async def _idle(http):
    return (await usage(http))["in_flight"] == 0
