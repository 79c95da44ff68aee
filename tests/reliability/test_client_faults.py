"""Client faults against the gateway under real uvicorn: a client leaving a stream
cancels the upstream request at once, gives the slot back and leaves the stored
response ``cancelled``/``incomplete``; a background job outlives its followers."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import (nested_lists, poll_status, read_events, store_rows, usage, wait_for,
                                       wait_idle)

LONG = {"model": "tiny", "input": "[long]", "max_output_tokens": 100, "stream": True}


@pytest.fixture(scope="module")
def _live(tmp_path_factory):
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        proc = GatewayProcess(tmp_path_factory.mktemp("client-faults"), endpoints=[server.url],
                              max_concurrent_connections=32).start()
        try:
            yield proc, server
        finally:
            proc.stop()


@pytest.fixture
def live(_live):
    """``(gateway process, backend server)`` with the backend's knobs and counters reset."""
    proc, server = _live
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    server.chunk_delay = server.first_byte_delay = 0.0
    server.fail_status = server.fail_count = server.drop_after_chunks = None
    server.reset()
    return proc, server


async def _open_and_leave(http: httpx.AsyncClient, body: dict, events: int) -> list[dict]:
    async with http.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200
        return await read_events(reply, limit=events)


@pytest.mark.parametrize("store", [True, False])
async def test_disconnect_mid_stream_cancels_the_upstream(live, store):
    proc, server = live
    server.chunk_delay = 0.1                       # the whole stream would take about 10 s
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        started = time.monotonic()
        events = await _open_and_leave(http, {**LONG, "store": store}, 7)
        left = time.monotonic()
        rid = events[0]["response"]["id"]
        seen = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert seen
        await wait_for(lambda: _backend_released(server, 1), timeout=2)
        await wait_idle(http, server, timeout=2)
        assert time.monotonic() - left < 2 and time.monotonic() - started < 5
        assert server.requests_total == 1
        reply = await http.get(f"/v1/responses/{rid}")
        if not store:
            assert reply.status_code == 404
            return
        stored = reply.json()
        assert stored["status"] in ("cancelled", "incomplete")
        text = stored["output"][0]["content"][0]["text"]
        assert text.startswith(seen) and len(text.split()) < 100
        assert stored["output"][0]["status"] == "incomplete"
        assert store_rows(proc.workdir / "store.db")[rid][0] == stored["status"]


async def _backend_released(server: OllamaTestServer, disconnects: int) -> bool:
    return server.disconnects >= disconnects and server.in_flight == 0


async def test_many_concurrent_disconnects_all_clean_up(live):
    proc, server = live
    server.chunk_delay = 0.05
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=proc.url, timeout=10,
                                 limits=httpx.Limits(max_connections=50)) as http:
        results = await asyncio.gather(*(
            _open_and_leave(http, {**LONG, "store": i % 2 == 0, "input": f"[long] {i}"}, rng.randint(3, 12))
            for i in range(16)))
        ids = [events[0]["response"]["id"] for events in results]
        await wait_for(lambda: _backend_released(server, 16), timeout=3)
        await wait_idle(http, server, timeout=3)
        assert server.requests_total == 16 and server.peak_in_flight >= 8
        rows = store_rows(proc.workdir / "store.db")
        for i, rid in enumerate(ids):
            if i % 2 == 0:
                assert rows[rid][0] in ("cancelled", "incomplete"), rows[rid][0]
            else:
                assert rid not in rows


async def test_background_stream_outlives_a_follower_that_leaves(live):
    proc, server = live
    server.chunk_delay = 0.03
    body = {"model": "tiny", "input": "[long]", "max_output_tokens": 30, "stream": True, "background": True}
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        events = await _open_and_leave(http, body, 6)
        rid = events[0]["response"]["id"]
        assert (await usage(http))["background_jobs"] == 1
        done = await poll_status(http, rid, timeout=5)
        assert done["status"] == "incomplete" and len(done["output_text"].split()) == 30   # the token budget
        assert server.disconnects == 0
        async with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true", "starting_after": 3}) as r:
            replay = await read_events(r)
        assert replay[0]["sequence_number"] == 4 and replay[-1]["type"] == "response.incomplete"
        await wait_idle(http, server)


async def test_a_follower_of_a_running_job_can_leave_and_another_can_join(live):
    proc, server = live
    server.chunk_delay = 0.03
    body = {"model": "tiny", "input": "[long]", "max_output_tokens": 40, "stream": True, "background": True}
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        rid = (await _open_and_leave(http, body, 5))[0]["response"]["id"]
        await _open_and_leave_get(http, rid, 3)
        async with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
            full = await read_events(r)
        assert [e["sequence_number"] for e in full] == list(range(len(full)))
        assert full[-1]["type"] == "response.incomplete"
        await wait_idle(http, server)


async def _open_and_leave_get(http, rid: str, events: int) -> None:
    async with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as reply:
        assert reply.status_code == 200
        await read_events(reply, limit=events)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_leaving_before_the_first_byte_frees_its_slot_and_leaves_nothing_behind(live, stream):
    """The backend would answer only after 8 s: the gateway notices the client leave, cancels the
    upstream call and gives the slot back long before the backend would have answered; no row is
    left running, and the next request is served."""
    proc, server = live
    server.first_byte_delay = 8.0
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": stream},
                            timeout=0.5)

        async def released():
            return (await usage(http))["in_flight"] == 0
        await wait_for(released, timeout=6)              # the backend's answer is still seconds away
        rows = store_rows(proc.workdir / "store.db")     # nothing, or what ended: the client never got an id
        assert all(status not in ("queued", "in_progress") for status, _ in rows.values())
        server.first_byte_delay = 0.0
        again = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        assert again.status_code == 200 and again.json()["output_text"] == DEFAULT_TEXT


async def test_deeply_nested_bodies_do_not_hurt_the_process(live):
    proc, server = live
    bodies = [nested_lists(100_000), b'{"model":"tiny","input":' + nested_lists(100_000) + b"}",
              b'{"model":"tiny","input":"x","extra":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"]
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
        for raw in bodies * 3:
            reply = await http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
            assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"
        assert proc.proc.poll() is None
        assert (await http.get("/health/live")).status_code == 200
        ok = await http.post("/v1/responses", json={"model": "tiny", "input": "still there?"})
        assert ok.status_code == 200 and ok.json()["output_text"] == DEFAULT_TEXT
        assert server.requests_total == 1
