"""A client that leaves before llama-server's first byte: the gateway cancels the upstream
call (its connection to llama-server is closed), its own slot is given back at once (the next
client is served, not answered 429), and a streamed generation stops in llama-server. A whole
(non-streamed) generation is llama-server's to stop: this build notices the closed connection
only when it finishes, so for it the test asserts what the gateway does."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

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


def _connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` on 127.0.0.1 (``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        if remote_port == port and state == "01" and inode in inodes:
            count += 1
    return count


async def _busy_slots(llama_url: str) -> int:
    """How many of llama-server's slots are generating (its ``/slots`` monitor)."""
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.get(f"{llama_url}/slots")
    assert reply.status_code == 200, reply.text
    return sum(1 for slot in reply.json() if slot["is_processing"])


@pytest.mark.parametrize("stream", [False, True])
async def test_leaving_before_the_first_byte_stops_llama_server(one_slot_gateway, llama, stream):
    body = {"model": LLAMA_MODEL, "input": "[long]", "stream": stream}   # it never ends by itself
    idle = time.monotonic() + 300  # a whole generation left by an earlier client ends in llama-server's time
    while await _busy_slots(llama.url) > 0:
        assert time.monotonic() < idle, "llama-server never became idle"
        await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=one_slot_gateway.url, timeout=GIVE_UP) as http:
        leaving = asyncio.create_task(http.post("/v1/responses", json=body))
        deadline = time.monotonic() + GIVE_UP
        while await _busy_slots(llama.url) == 0:
            assert time.monotonic() < deadline, "llama-server never started generating"
            await asyncio.sleep(0.05)                     # llama-server is generating now
        port = int(llama.url.rsplit(":", 1)[1])
        calling = _connections_to(one_slot_gateway.proc.pid, port)
        if not stream:
            assert not leaving.done()                     # a whole answer: no byte has come yet
        leaving.cancel()                                  # the client closes its connection
        with pytest.raises(asyncio.CancelledError):
            await leaving

        deadline = time.monotonic() + GIVE_UP  # a budget of its own: a loaded machine may have spent the first
        while _connections_to(one_slot_gateway.proc.pid, port) >= calling:
            assert time.monotonic() < deadline, "the gateway kept its call to llama-server open"
            await asyncio.sleep(0.05)
        while (await http.get("/api/usage")).json().get("usage"):
            assert time.monotonic() < deadline, "the gateway kept the slot of the client that left"
            await asyncio.sleep(0.05)
        if stream:
            while await _busy_slots(llama.url) > 0:
                assert time.monotonic() < deadline, "llama-server kept generating for the client that left"
                await asyncio.sleep(0.05)
        # the one slot is free: the next client is served (once llama-server has finished, if it had not)
        reply = await http.post("/v1/responses", json={"model": LLAMA_MODEL, "input": "hi"}, timeout=300)
        assert reply.status_code == 200, reply.text              # the gateway's one slot is free again
        assert reply.json()["output_text"] == "Hello from the tiny model."
