"""Durability: the gateway killed (SIGKILL) or stopped while background jobs and streams
run, then restarted on the same store: every response retrievable and valid, the
unfinished ones ``failed``, the finished ones unchanged, the SQLite file intact."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import httpx
import orjson
import pytest
from openai.types.responses import Response

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import IDLE, TERMINAL_EVENTS, poll_status, read_events, sse, store_rows, usage



def integrity(db: Path) -> str:
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def copy_store(db: Path, to: Path) -> Path:
    """Copy the store with its WAL files as a killed process left them."""
    to.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", to / f"store.db{suffix}")
    return to / "store.db"


@pytest.fixture
def backends():
    """``tiny`` answers at once, ``drip`` streams slowly, ``stall`` never answers in time."""
    servers = {"tiny": OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]),
               "drip": OllamaTestServer(models=["drip:latest"], loaded=["drip:latest"], chunk_delay=0.2),
               "stall": OllamaTestServer(models=["stall:latest"], loaded=["stall:latest"], first_byte_delay=20)}
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


async def _finished_work(http: httpx.AsyncClient) -> list[str]:
    """Responses that complete before the crash: plain, streamed, background, a chain."""
    ids = []
    for i in range(3):
        ids.append((await http.post("/v1/responses", json={"model": "tiny", "input": f"done {i}"})).json()["id"])
    for i in range(2):
        events = sse((await http.post("/v1/responses", json={"model": "tiny", "input": f"s{i}",
                                                             "stream": True})).text)
        ids.append(events[0]["response"]["id"])
    for stream in (False, True):
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": "bg", "background": True,
                                                       "stream": stream})
        rid = sse(reply.text)[0]["response"]["id"] if stream else reply.json()["id"]
        await poll_status(http, rid)
        ids.append(rid)
    chained = await http.post("/v1/responses", json={"model": "tiny", "input": "next", "previous_response_id": ids[0]})
    ids.append(chained.json()["id"])
    return ids


async def _open_stream(http: httpx.AsyncClient, body: dict, ready: asyncio.Queue) -> None:
    """Hold a streamed create open (reading it) until the connection dies."""
    try:
        async with http.stream("POST", "/v1/responses", json=body) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    event = orjson.loads(line[6:])
                    if event["sequence_number"] == 0:
                        await ready.put(event["response"]["id"])
    except httpx.HTTPError:
        pass


async def test_sigkill_mid_run_then_restart(tmp_path, backends):
    settings = dict(endpoints=[s.url for s in backends.values()], max_concurrent_connections=32)
    proc = GatewayProcess(tmp_path, **settings).start()
    db = tmp_path / "store.db"
    holders: list[asyncio.Task] = []
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            finished = await _finished_work(http)
            before = {rid: (await http.get(f"/v1/responses/{rid}")).json() for rid in finished}
            items_before = {rid: (await http.get(f"/v1/responses/{rid}/input_items")).json() for rid in finished}
            assert all(obj["status"] == "completed" for obj in before.values())

            running = []
            for i in range(3):       # background, the backend has not answered yet
                reply = await http.post("/v1/responses", json={"model": "stall", "input": f"bg {i}",
                                                               "background": True})
                running.append(reply.json()["id"])
            for i in range(3):       # background streams, part way through
                async with http.stream("POST", "/v1/responses", json={
                        "model": "drip", "input": f"[long] {i}", "max_output_tokens": 200, "stream": True,
                        "background": True}) as reply:
                    running.append((await read_events(reply, limit=5))[0]["response"]["id"])
            ready: asyncio.Queue = asyncio.Queue()
            for i in range(2):       # foreground streams a client is still reading
                holders.append(asyncio.create_task(_open_stream(http, {
                    "model": "drip", "input": f"[long] fg {i}", "max_output_tokens": 200, "stream": True}, ready)))
            running += [await asyncio.wait_for(ready.get(), 5) for _ in range(2)]
            cancelled = (await http.post("/v1/responses", json={"model": "stall", "input": "c",
                                                                 "background": True})).json()["id"]
            await poll_status(http, cancelled, until=("in_progress",))
            assert (await http.post(f"/v1/responses/{cancelled}/cancel")).json()["status"] == "cancelled"
            for rid in running:
                await poll_status(http, rid, until=("in_progress",))
            await asyncio.sleep(0.5)                 # the streams move on
            assert (await usage(http))["background_jobs"] == 6

            proc.kill()
            await asyncio.gather(*holders)
    finally:
        proc.kill()
    assert integrity(copy_store(db, tmp_path / "as-killed")) == "ok"
    left = store_rows(tmp_path / "as-killed" / "store.db")
    assert sum(status == "in_progress" for status, _ in left.values()) == len(running)

    restarted = GatewayProcess(tmp_path, **settings).start()
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as http:
            rows = store_rows(db)
            assert set(rows) == set(finished) | set(running) | {cancelled}
            assert not [rid for rid, (status, _) in rows.items() if status in ("queued", "in_progress")]
            for rid in rows:
                reply = await http.get(f"/v1/responses/{rid}")
                assert reply.status_code == 200
                obj = orjson.loads(reply.content)
                Response.model_validate(obj)
                assert obj["id"] == rid
                if rid in before:
                    assert obj == before[rid]
                    assert (await http.get(f"/v1/responses/{rid}/input_items")).json() == items_before[rid]
                elif rid == cancelled:
                    assert obj["status"] == "cancelled"
                else:
                    assert obj["status"] == "failed" and obj["error"]["code"] == "server_error", obj
                    assert obj["completed_at"] is None
                events = sse((await http.get(f"/v1/responses/{rid}", params={"stream": "true"})).text)
                assert [e["sequence_number"] for e in events] == list(range(len(events)))
                assert events[-1]["type"] in TERMINAL_EVENTS
                assert events[-1]["response"]["status"] == obj["status"]
            assert await usage(http) == IDLE
            # a chain goes on from a finished turn and from a failed one
            backends["tiny"].reset()
            for previous in (finished[-1], running[0]):
                reply = await http.post("/v1/responses", json={"model": "tiny", "input": "after restart",
                                                               "previous_response_id": previous})
                assert reply.status_code == 200 and reply.json()["output_text"] == DEFAULT_TEXT
            sent = backends["tiny"].requests[0]["messages"]
            assert [m["content"] for m in sent] == ["done 0", DEFAULT_TEXT, "next", DEFAULT_TEXT, "after restart"]
            assert backends["tiny"].requests[1]["messages"] == [{"role": "user", "content": "bg 0"},
                                                                {"role": "user", "content": "after restart"}]
    finally:
        restarted.stop()
    assert integrity(db) == "ok"


async def test_graceful_stop_mid_run_fails_the_jobs(tmp_path, backends):
    settings = dict(endpoints=[s.url for s in backends.values()], max_concurrent_connections=32)
    proc = GatewayProcess(tmp_path, **settings).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as http:
            ids = [(await http.post("/v1/responses", json={"model": "stall", "input": f"bg {i}",
                                                           "background": True})).json()["id"] for i in range(3)]
            for rid in ids:
                await poll_status(http, rid, until=("in_progress",))
    finally:
        proc.stop()
    assert proc.proc.returncode in (0, -15)           # uvicorn re-raises SIGTERM after a clean shutdown
    rows = store_rows(tmp_path / "store.db")
    for rid in ids:
        status, obj = rows[rid]
        assert status == "failed" and obj["status"] == "failed"
        assert "shut down" in obj["error"]["message"]
    assert integrity(tmp_path / "store.db") == "ok"
