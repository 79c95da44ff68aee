"""Soak: 200 concurrent chained conversations, 5 turns each, mixed plain, streamed and
background turns, over the gateway under uvicorn. No lost turn, no cross-talk between
conversations, no error."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import Counter

import httpx
import orjson

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import read_events, store_rows, wait_idle

CONVERSATIONS = 200
TURNS = 5
MODES = ("plain", "stream", "background", "background-stream")
TURN_TEXT = re.compile(r"^(conv\d{3}-[0-9a-f]{8}) turn (\d)$")


class Soak:
    """Counts of the soak run."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors: list[str] = []
        self.modes: Counter = Counter()


async def _turn(http: httpx.AsyncClient, soak: Soak, token: str, n: int, previous: str | None, mode: str) -> str:
    body = {"model": "tiny", "input": f"{token} turn {n}", "stream": "stream" in mode,
            "background": mode.startswith("background")}
    if previous:
        body["previous_response_id"] = previous
    soak.modes[mode] += 1
    soak.requests += 1
    if body["stream"]:
        async with http.stream("POST", "/v1/responses", json=body) as reply:
            if reply.status_code != 200:
                raise AssertionError(f"{token} turn {n} {mode}: {reply.status_code} {(await reply.aread())[:200]}")
            events = await read_events(reply)
        if [e["sequence_number"] for e in events] != list(range(len(events))):
            raise AssertionError(f"{token} turn {n} {mode}: sequence numbers {events}")
        final = events[-1]["response"]
    else:
        reply = await http.post("/v1/responses", json=body)
        if reply.status_code != 200:
            raise AssertionError(f"{token} turn {n} {mode}: {reply.status_code} {reply.text[:200]}")
        final = reply.json()
    rid = final["id"]
    if body["background"]:
        deadline = time.monotonic() + 30
        while final["status"] in ("queued", "in_progress") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            soak.requests += 1
            final = (await http.get(f"/v1/responses/{rid}")).json()
    if final["status"] != "completed" or final["output_text"] != DEFAULT_TEXT:
        raise AssertionError(f"{token} turn {n} {mode}: {final['status']} {final.get('error')}")
    if final["previous_response_id"] != previous:
        raise AssertionError(f"{token} turn {n}: chained to {final['previous_response_id']}, not {previous}")
    return rid


async def _conversation(http: httpx.AsyncClient, soak: Soak, i: int, rng: random.Random) -> tuple[str, list[str]]:
    token = f"conv{i:03d}-{uuid.uuid4().hex[:8]}"
    modes = [rng.choice(MODES) for _ in range(TURNS)]
    ids: list[str] = []
    for n in range(1, TURNS + 1):
        try:
            ids.append(await _turn(http, soak, token, n, ids[-1] if ids else None, modes[n - 1]))
        except Exception as exc:
            soak.errors.append(f"{type(exc).__name__}: {exc}"[:400])
            break
    return token, ids


async def test_soak_chained_conversations(tmp_path):
    # Each answer waits 50 ms at the backend, so the conversations overlap there
    # however fast or loaded the machine is.
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"], first_byte_delay=0.05) as server:
        proc = GatewayProcess(tmp_path, endpoints=[server.url], max_concurrent_connections=512).start()
        soak = Soak()
        rng = random.Random(5)
        try:
            started = time.monotonic()
            # The pool the OpenAI SDK makes (1000 connections, 100 kept idle for httpx's 5 s): the
            # gateway keeps idle connections longer (keep_alive_timeout), so a reused one is never
            # one it is closing at that moment.
            async with httpx.AsyncClient(base_url=proc.url, timeout=60,
                                         limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100)
                                         ) as http:
                results = await asyncio.gather(*(_conversation(http, soak, i, rng) for i in range(CONVERSATIONS)))
                elapsed = time.monotonic() - started
                await wait_idle(http, server, timeout=10)
            rows = store_rows(tmp_path / "store.db")
        finally:
            proc.stop()
        received = list(server.requests)

    print(f"\nRELIABILITY-FIGURES soak: conversations={CONVERSATIONS} turns={CONVERSATIONS * TURNS} "
          f"http_requests={soak.requests} errors={len(soak.errors)} modes={dict(soak.modes)} "
          f"backend_requests={len(received)} peak_backend_in_flight={server.peak_in_flight} "
          f"elapsed={elapsed:.1f}s")
    assert not soak.errors, soak.errors[:5]
    assert all(len(ids) == TURNS for _, ids in results)
    assert len({rid for _, ids in results for rid in ids}) == CONVERSATIONS * TURNS
    assert all(rows[rid][0] == "completed" for _, ids in results for rid in ids)

    tokens = {token for token, _ in results}
    seen: Counter = Counter()
    for body in received:
        messages = body["messages"]
        match = TURN_TEXT.match(messages[-1]["content"])
        assert match, messages[-1]
        token, n = match.group(1), int(match.group(2))
        assert token in tokens
        seen[(token, n)] += 1
        # the whole history of this conversation and nothing of any other
        expected = []
        for k in range(1, n + 1):
            expected.append({"role": "user", "content": f"{token} turn {k}"})
            if k < n:
                expected.append({"role": "assistant", "content": DEFAULT_TEXT})
        assert messages == expected, orjson.dumps(messages)[:600]
    assert set(seen) == {(token, n) for token in tokens for n in range(1, TURNS + 1)}
    assert set(seen.values()) == {1}                  # every turn reached the backend exactly once
    assert server.peak_in_flight >= 20                # the conversations really ran side by side
