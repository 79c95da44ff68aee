"""The store stays consistent with what clients did while responses were running:
deleted means deleted, and a follower is never told a running response failed."""

from __future__ import annotations

import asyncio
import sqlite3


import router

from tests.reliability.helpers import TERMINAL_EVENTS, poll_status, sse, store_rows, usage, wait_for, wait_idle

SLOW = {"model": "tiny", "input": "[long]", "max_output_tokens": 30, "stream": True}


async def _running_row(db) -> str:
    async def first_row():
        rows = store_rows(db) if db.exists() else {}
        return next(iter(rows), None)
    return await wait_for(first_row, 5)


async def test_a_response_deleted_while_it_streams_stays_deleted(app_factory, ollama, tmp_path):
    ollama.chunk_delay = 0.05
    async with app_factory(endpoints=[ollama.url]) as http:
        creating = asyncio.create_task(http.post("/v1/responses", json=SLOW))
        rid = await _running_row(tmp_path / "store.db")
        assert (await http.delete(f"/v1/responses/{rid}")).json()["deleted"] is True
        assert (await http.get(f"/v1/responses/{rid}")).status_code == 404
        events = sse((await creating).text)
        assert events[-1]["type"] in TERMINAL_EVENTS
        await wait_idle(http, ollama)
        assert (await http.get(f"/v1/responses/{rid}")).status_code == 404
        assert rid not in store_rows(tmp_path / "store.db")


async def test_a_background_response_deleted_while_it_runs_stays_deleted(app_factory, ollama, tmp_path):
    ollama.chunk_delay = 0.05
    ollama.first_byte_delay = 1.0  # a whole (non-streamed) answer takes a while too: it is deleted while it runs
    async with app_factory(endpoints=[ollama.url]) as http:
        for stream in (True, False):
            body = {**SLOW, "stream": stream, "background": True}
            creating = asyncio.create_task(http.post("/v1/responses", json=body))
            if stream:
                rid = await wait_for(lambda: _job_id(http), 5)
            else:
                rid = (await creating).json()["id"]
            await poll_status(http, rid, until=("in_progress",))
            assert (await http.delete(f"/v1/responses/{rid}")).json()["deleted"] is True
            await creating
            await wait_idle(http, ollama)
            assert (await http.get(f"/v1/responses/{rid}")).status_code == 404
            assert rid not in store_rows(tmp_path / "store.db")
        con = sqlite3.connect(tmp_path / "store.db")
        assert con.execute("SELECT COUNT(*) FROM response_events").fetchone()[0] == 0
        con.close()


async def _job_id(http):
    if (await usage(http))["background_jobs"]:
        return next(iter(router.app.state.gateway.jobs.jobs), None)
    return None


async def test_following_a_running_foreground_stream_never_reports_a_false_failure(app_factory, ollama, tmp_path):
    ollama.chunk_delay = 0.05
    async with app_factory(endpoints=[ollama.url]) as http:
        creating = asyncio.create_task(http.post("/v1/responses", json=SLOW))
        rid = await _running_row(tmp_path / "store.db")
        reply = await http.get(f"/v1/responses/{rid}", params={"stream": "true"})
        if reply.status_code == 200:
            events = sse(reply.text)
            final = events[-1]
            if final["type"] == "response.failed":
                assert final["response"]["status"] in ("failed", "cancelled"), final["response"]["status"]
            assert final["type"] != "response.completed" or final["response"]["status"] == "completed"
        else:
            assert 400 <= reply.status_code < 500
        assert sse((await creating).text)[-1]["type"] == "response.incomplete"
