"""The gateway's lifecycle as a service manager drives it, real processes throughout: SIGTERM
during an endless stream from a real llama-server ends that stream with ``response.failed``
after ``shutdown_grace`` and the process exits; SIGHUP takes a new key list without dropping
a request in flight, and keeps the old configuration when the new one is bad."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson
import pytest
import yaml

from tests.e2e.conftest import LLAMA_MODEL
from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import store_rows

GIVE_UP = 30.0


async def _events_until_closed(reply: httpx.Response, started: asyncio.Event, count: int = 3) -> list[dict]:
    events = []
    async for line in reply.aiter_lines():
        if line.startswith("data: "):
            events.append(orjson.loads(line[6:]))
            if len(events) == count:
                started.set()
    return events


async def test_sigterm_ends_an_endless_stream_with_response_failed_and_exits(llama, tmp_path):
    proc = GatewayProcess(tmp_path, llama_server_endpoints=[f"{llama.url}/v1"], shutdown_grace=1).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=GIVE_UP) as http:
            started = asyncio.Event()
            body = {"model": LLAMA_MODEL, "input": "[long]", "stream": True}      # it never ends by itself
            async with http.stream("POST", "/v1/responses", json=body) as reply:
                reading = asyncio.create_task(_events_until_closed(reply, started))
                await asyncio.wait_for(started.wait(), GIVE_UP)
                proc.proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                events = await asyncio.wait_for(reading, GIVE_UP)
                ended = time.monotonic() - sent
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        failed = events[-1]["response"]
        assert failed["status"] == "failed" and "shut down" in failed["error"]["message"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        proc.proc.wait(GIVE_UP)                                       # and the process is gone
        assert store_rows(tmp_path / "store.db")[failed["id"]][0] == "failed"
        assert ended >= 0.9        # the grace was given (a lower bound only: no upper time is asserted)
    finally:
        proc.kill()


@pytest.fixture
def backend():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


async def test_sighup_takes_a_new_key_list_without_dropping_a_request(backend, tmp_path):
    proc = GatewayProcess(tmp_path, request_log=True, endpoints=[backend.url],
                          **{"nomyo-router-api-key": ["key-old"]}).start()
    old, new = {"Authorization": "Bearer key-old"}, {"Authorization": "Bearer key-new"}
    try:
        backend.chunk_delay = 0.05
        async with httpx.AsyncClient(base_url=proc.url, timeout=GIVE_UP) as http:
            started = asyncio.Event()
            body = {"model": "tiny", "input": "[long]", "max_output_tokens": 40, "stream": True}
            async with http.stream("POST", "/v1/responses", json=body, headers=old) as reply:
                reading = asyncio.create_task(_events_until_closed(reply, started))
                await asyncio.wait_for(started.wait(), GIVE_UP)
                proc.settings["nomyo-router-api-key"] = ["key-new"]
                proc.config.write_text(yaml.safe_dump(proc.settings))
                proc.proc.send_signal(signal.SIGHUP)
                events = await asyncio.wait_for(reading, GIVE_UP)
            assert events[-1]["type"] == "response.incomplete"      # the request in flight ran to its end
            deadline = time.monotonic() + GIVE_UP
            while (await http.get("/v1/models", headers=new)).status_code != 200:
                assert time.monotonic() < deadline, "the new key never took effect"
                await asyncio.sleep(0.05)
            assert (await http.get("/v1/models", headers=old)).status_code == 401

            proc.config.write_text("nomyo-router-api-key: []\nno_such_key: 1\n")     # a bad config
            proc.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + GIVE_UP
            while "reload refused" not in proc.log.read_text():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert (await http.get("/v1/models", headers=new)).status_code == 200   # the old one stays
            assert proc.proc.poll() is None
    finally:
        proc.stop()


async def test_a_background_response_still_queued_at_shutdown_runs_at_the_next_start(backend, tmp_path):
    """The one running is stored failed; the one waiting for the only slot stays queued and the
    next process on the same store runs it to its end."""
    from tests.reliability.helpers import poll_status
    settings = {"endpoints": [backend.url], "max_concurrent_connections": 1, "shutdown_grace": 0.5}
    proc = GatewayProcess(tmp_path, **settings).start()
    backend.first_byte_delay = 5.0                     # the first job holds the only slot a while
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=GIVE_UP) as http:
            body = {"model": "tiny", "input": "[long]", "max_output_tokens": 200, "background": True}
            running = (await http.post("/v1/responses", json=body)).json()["id"]
            await poll_status(http, running, until=("in_progress",))
            waiting = (await http.post("/v1/responses", json={**body, "max_output_tokens": 3})).json()["id"]
            deadline = time.monotonic() + GIVE_UP
            while (await http.get("/api/usage")).json()["queued"] != 1:      # it waits for the only slot
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        proc.proc.send_signal(signal.SIGTERM)
        proc.proc.wait(GIVE_UP)
        rows = store_rows(tmp_path / "store.db")
        assert rows[running][0] == "failed" and rows[waiting][0] == "queued"
    finally:
        proc.kill()
    backend.first_byte_delay = 0
    again = GatewayProcess(tmp_path, **settings)
    again.port = proc.port
    again.start()
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=GIVE_UP) as http:
            done = await poll_status(http, waiting, timeout=GIVE_UP)
            assert done["status"] == "incomplete" and done["output_text"]     # it ran, to its 3 tokens
            assert (await http.get(f"/v1/responses/{running}")).json()["status"] == "failed"
        assert "resumed 1 background response(s)" in again.log.read_text()
    finally:
        again.stop()


async def test_sigterm_ends_a_websocket_turn_with_response_failed_and_exits(backend, tmp_path):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    backend.chunk_delay = 0.1
    proc = GatewayProcess(tmp_path, endpoints=[backend.url], shutdown_grace=1).start()
    try:
        async with connect(proc.url.replace("http://", "ws://") + "/v1/responses") as ws:
            await ws.send(orjson.dumps({"type": "response.create", "model": "tiny", "input": "[long] go"}).decode())
            events = []
            while not events or events[-1]["type"] != "response.output_text.delta":
                events.append(orjson.loads(await asyncio.wait_for(ws.recv(), GIVE_UP)))
            proc.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    events.append(orjson.loads(await asyncio.wait_for(ws.recv(), GIVE_UP)))
            except ConnectionClosed:
                pass
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        proc.proc.wait(GIVE_UP)
        assert store_rows(tmp_path / "store.db")[events[-1]["response"]["id"]][0] == "failed"
    finally:
        backend.chunk_delay = 0.0
        proc.kill()
