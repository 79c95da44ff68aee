"""Slow and idle clients over real sockets (``serve.py``): headers that never finish
(slowloris), a body that stops arriving, more connections than ``max_connections``, and the
idle keep-alive connection that a client pool reuses."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import assert_openai_error

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
MAX_CONNECTIONS = 20
#: Far longer than any bound above: a connection still open after it was not closed by one.
GIVE_UP = 20.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        proc = GatewayProcess(tmp_path_factory.mktemp("slow"), endpoints=[server.url],
                              header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                              max_connections=MAX_CONNECTIONS).start()
        try:
            yield proc
        finally:
            proc.stop()


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (fails after GIVE_UP s); a
    reset (the server closed with our bytes unread) counts as closed with nothing sent."""
    try:
        return await asyncio.wait_for(reader.read(), GIVE_UP)
    except ConnectionResetError:
        return b""


async def _open(proc: GatewayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proc.port)


async def test_headers_that_never_finish_are_cut_off(gateway):
    connections = [await _open(gateway) for _ in range(10)]
    for _reader, writer in connections:
        writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ...and never the blank line
        await writer.drain()
    trickler_reader, trickler = await _open(gateway)
    trickler.write(b"GET /v1/models HTTP/1.1\r\n")

    async def trickle():  # a byte every 0.2 s: each byte alone restarts no timer
        for byte in b"X-Slow: " + b"a" * 200:
            if trickler.is_closing():
                return
            trickler.write(bytes([byte]))
            await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    try:
        for reader, _writer in connections:
            assert await _closed_by_server(reader) == b""
        assert await _closed_by_server(trickler_reader) == b""
    finally:
        trickling.cancel()
        for _reader, writer in connections + [(None, trickler)]:
            writer.close()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.get("/v1/models")).status_code == 200


async def test_a_kept_alive_connection_whose_next_headers_stall_is_cut_off(gateway):
    reader, writer = await _open(gateway)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), GIVE_UP)
    assert first.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /health/live HTTP/1.1\r\n")                 # the next request starts, and stalls
    assert await _closed_by_server(reader) == b""
    writer.close()


async def test_a_body_that_stops_arriving_is_a_408(gateway):
    reader, writer = await _open(gateway)
    writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"model\": ")
    await writer.drain()
    answer = await _closed_by_server(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"request_timeout"' in answer


async def _kept_alive(proc: GatewayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has had its answer and stays open, idle (kept alive, no header timer)."""
    reader, writer = await _open(proc)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), GIVE_UP)
    return reader, writer


async def test_connections_past_max_connections_are_refused(gateway):
    started = time.monotonic()
    held = [await _kept_alive(gateway) for _ in range(MAX_CONNECTIONS)]
    try:
        extra_reader, extra = await _open(gateway)
        extra.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refused = await _closed_by_server(extra_reader)
        assert not refused.startswith(b"HTTP/1.1 200"), refused
        extra.close()
    finally:
        for _reader, writer in held:
            writer.close()
    # the held ones are closed: new clients get in
    deadline = started + GIVE_UP
    while True:
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as http:
                reply = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert reply.status_code == 200 and reply.json()["output_text"] == DEFAULT_TEXT


async def test_an_idle_connection_is_kept_longer_than_client_pools_keep_theirs(gateway):
    """A pool (httpx, the OpenAI SDKs) drops an idle connection after 5 s; the gateway keeps it
    for longer, so it never closes one at the moment a client reuses it."""
    reader, writer = await _open(gateway)
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            answer = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), GIVE_UP)
            assert answer.startswith(b"HTTP/1.1 200")
            await asyncio.sleep(6.0)  # idle past the pools' expiry, headers not started
    finally:
        writer.close()
