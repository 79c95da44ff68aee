"""A replica on a shared store (PostgreSQL), in process: what it does when it loses its lease,
when the store goes away, and how a cancel finds a response no replica runs."""

from __future__ import annotations

import asyncio


import router
from db_postgres import PostgresStore
from engine.eventlog import closing_events
from tests.reliability.helpers import assert_openai_error


async def _wait(check, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("not within the time allowed")


async def test_a_replica_that_lost_its_lease_stores_nothing_more_of_its_jobs(gateway_factory, ollama, postgres_url):
    """Another replica took this one for dead and failed its running job: when this one notices
    (its next heartbeat), it ends the job without writing over the other's verdict."""
    ollama.first_byte_delay = 5.0
    async with gateway_factory(endpoints=[ollama.url], store_url=postgres_url, replica_lease=1) as http:
        gateway = router.app.state.gateway
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "hi", "background": True})
        assert reply.status_code == 200
        response_id = reply.json()["id"]
        await _wait(lambda: _in_progress(gateway, response_id))
        other = await PostgresStore(postgres_url, "replica-b").open()
        try:
            async def taken_over():
                await other.pool.execute("UPDATE replicas SET seen_at = clock_timestamp() - interval '1 hour'"
                                         " WHERE id = $1", gateway.store.replica)
                return (await other.take_over(1, closing_events)).failed
            assert response_id in await _wait(taken_over)
        finally:
            await other.close()
        await _wait(lambda: _no_jobs(gateway))            # ended at its next heartbeat, before its answer
        assert ollama.requests_total == 1
        row = await gateway.store.get_response(response_id)
        assert row["status"] == "failed" and "stopped before it finished" in row["response"]["error"]["message"]


async def _in_progress(gateway, response_id):
    row = await gateway.store.get_response(response_id)
    return row is not None and row["status"] == "in_progress"


async def _no_jobs(gateway):
    return not gateway.jobs.jobs


async def test_a_cancel_no_live_replica_can_take_is_stored_by_the_one_asked(gateway_factory, ollama, postgres_url):
    """The replica that ran the job is gone (its lease ran out, nobody swept yet): the cancel is
    stored by the replica asked, at once, and answered."""
    async with gateway_factory(endpoints=[ollama.url], store_url=postgres_url) as http:
        gateway = router.app.state.gateway
        await gateway.store.store_response(
            "resp_elsewhere", previous_response_id=None, model="tiny", status="queued", created_at=1,
            input_messages=[], response={"id": "resp_elsewhere", "object": "response", "status": "queued",
                                         "output": [], "model": "tiny", "created_at": 1},
            request={"model": "tiny", "input": "hi"}, background=True)
        await gateway.store.pool.execute("UPDATE responses SET replica = 'replica-dead' WHERE id = 'resp_elsewhere'")
        reply = await http.post("/v1/responses/resp_elsewhere/cancel")
        assert reply.status_code == 200 and reply.json()["status"] == "cancelled"
        assert (await gateway.store.get_response("resp_elsewhere"))["status"] == "cancelled"


async def test_a_store_that_goes_away_is_a_503_and_comes_back(gateway_factory, ollama, postgres_url):
    """PostgreSQL unreachable mid-run (a proxy in front of it is closed): requests get 503
    ``store_unavailable``, the process stays up, and serves again once the store is back."""
    proxy = await _Proxy.start("127.0.0.1", 5432)
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with gateway_factory(endpoints=[ollama.url], store_url=url) as http:
            made = await http.post("/v1/responses", json={"model": "tiny", "input": "one"})
            assert made.status_code == 200
            await proxy.cut()
            down = await http.get(f"/v1/responses/{made.json()['id']}")
            assert_openai_error(down, 503, "store_unavailable")
            await proxy.resume()
            again = await _wait(lambda: _answers(http, made.json()["id"]))
            assert again.json()["status"] == "completed"
    finally:
        await proxy.close()


async def _answers(http, response_id):
    reply = await http.get(f"/v1/responses/{response_id}")
    return reply if reply.status_code == 200 else None


class _Proxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones for a while."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.open = True
        self.pipes: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, host: str, port: int) -> "_Proxy":
        proxy = cls(host, port)
        proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.port = proxy.server.sockets[0].getsockname()[1]
        return proxy

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.pipes.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        self.open = False
        for pipe in list(self.pipes):
            pipe.close()
        self.pipes.clear()

    async def resume(self) -> None:
        self.open = True

    async def close(self) -> None:
        await self.cut()
        self.server.close()
