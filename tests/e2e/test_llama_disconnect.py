"""A client that leaves before llama-server's first byte: the gateway cancels the upstream
call, llama-server stops generating and frees its slot, and the gateway's own slot is given
back at once (the next client is served, not answered 429)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import LLAMA_MODEL
from tests.e2e.processes import GatewayProcess

#: Far longer than cancelling takes; the endless generation would hold its slot past it.
GIVE_UP = 30.0


@pytest.fixture(scope="module")
def one_slot_gateway(llama, tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("llama-disconnect"), llama_server_endpoints=[f"{llama.url}/v1"],
                          max_concurrent_connections=1, queue_timeout=0).start()
    yield proc
    proc.stop()


async def _busy_slots(llama_url: str) -> int:
    """How many of llama-server's slots are generating (its ``/slots`` monitor)."""
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{llama_url}/slots")
    assert reply.status_code == 200, reply.text
    return sum(1 for slot in reply.json() if slot["is_processing"])


@pytest.mark.parametrize("stream", [False, True])
async def test_leaving_before_the_first_byte_stops_llama_server(one_slot_gateway, llama, stream):
    body = {"model": LLAMA_MODEL, "input": "[long]", "stream": stream}   # it never ends by itself
    async with httpx.AsyncClient(base_url=one_slot_gateway.url, timeout=GIVE_UP) as http:
        leaving = asyncio.create_task(http.post("/v1/responses", json=body))
        deadline = time.monotonic() + GIVE_UP
        while await _busy_slots(llama.url) == 0:
            assert time.monotonic() < deadline, "llama-server never started generating"
            await asyncio.sleep(0.05)                     # llama-server is generating now
        if not stream:
            assert not leaving.done()                     # a whole answer: no byte has come yet
        leaving.cancel()                                  # the client closes its connection
        with pytest.raises(asyncio.CancelledError):
            await leaving

        deadline = time.monotonic() + GIVE_UP  # a budget of its own: a loaded machine may have spent the first
        while await _busy_slots(llama.url) > 0:
            assert time.monotonic() < deadline, "llama-server kept generating for the client that left"
            await asyncio.sleep(0.05)
        reply = await http.post("/v1/responses", json={"model": LLAMA_MODEL, "input": "hi"})
        assert reply.status_code == 200, reply.text              # the gateway's one slot is free again
        assert reply.json()["output_text"] == "Hello from the tiny model."
