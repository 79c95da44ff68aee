"""Three real gateway processes on one PostgreSQL store and one Redis, in front of scripted
Ollama-protocol servers: any replica serves, follows, resumes or cancels any response.

Requests go round-robin, each turn of a chain to another replica than the turn before;
one replica is killed (SIGKILL) in the middle of a background stream, and the others
fail what it ran and run what it left queued.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest

from tests.conftest import POSTGRES, REDIS, _run_sql
from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import TERMINAL_EVENTS, read_events

#: Slots per endpoint-model pair, for the three replicas together.
LIMIT = 6
#: The replicas' lease in these tests (the default is 5 s): a dead one is taken over within LEASE * 1.2 s.
LEASE = 2.0
CHAINS, TURNS = 200, 5


@pytest.fixture(scope="module")
def fast():
    with OllamaTestServer(models=["tiny:latest"], loaded=["tiny:latest"]) as server:
        yield server


@pytest.fixture(scope="module")
def slow():
    """Streams a word each 50 ms: long enough to follow, cancel and kill in the middle."""
    with OllamaTestServer(models=["slow:latest"], loaded=["slow:latest"], chunk_delay=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, fast, slow):
    """Three replicas sharing a fresh schema of the test PostgreSQL and the test Redis."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_run_sql(f"CREATE SCHEMA {schema}"))
    settings = {"store_url": f"{POSTGRES}?search_path={schema}", "redis_url": REDIS, "replica_lease": LEASE,
                "endpoints": [fast.url, slow.url], "max_concurrent_connections": LIMIT,
                "cache_enabled": True, "cache_backend": "redis", "queue_timeout": 120}
    procs = [GatewayProcess(tmp_path_factory.mktemp(f"replica{n}"), request_log=True, **settings) for n in range(3)]
    try:
        for proc in procs:
            proc.start(timeout=60)
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        asyncio.run(_run_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def _client(proc: GatewayProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proc.url, timeout=120, limits=httpx.Limits(max_connections=300))


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [])


async def test_chains_keep_their_whole_history_whichever_replica_serves_each_turn(replicas, fast):
    """200 concurrent 5-turn chains, every turn on another replica than the turn before: no
    error, and each fifth turn reaches the backend with exactly its own four turns before it."""
    fast.reset()
    tag = uuid.uuid4().hex[:8]
    clients = [_client(proc) for proc in replicas]

    async def chain(n: int) -> None:
        previous = None
        for turn in range(TURNS):
            http = clients[(n + turn) % 3]
            body = {"model": "tiny", "input": f"{tag} chain {n} turn {turn}"}
            if previous:
                body["previous_response_id"] = previous
            reply = await http.post("/v1/responses", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "completed"
            previous = reply.json()["id"]

    try:
        await asyncio.gather(*(chain(n) for n in range(CHAINS)))
    finally:
        for http in clients:
            await http.aclose()
    assert fast.requests_total == CHAINS * TURNS
    assert fast.peak_in_flight <= LIMIT
    last_turns = {}
    for body in fast.requests:
        last = _text(body["messages"][-1]["content"])
        if last.endswith(f"turn {TURNS - 1}"):
            last_turns[last] = body["messages"]
    assert len(last_turns) == CHAINS
    for n in range(CHAINS):
        messages = last_turns[f"{tag} chain {n} turn {TURNS - 1}"]
        expected = []
        for turn in range(TURNS):
            expected.append(("user", f"{tag} chain {n} turn {turn}"))
            if turn < TURNS - 1:
                expected.append(("assistant", DEFAULT_TEXT))
        assert [(m["role"], _text(m.get("content"))) for m in messages] == expected


async def test_the_backend_never_sees_more_than_the_limit_from_all_replicas_together(replicas, slow):
    """30 streamed requests spread over the replicas, each holding its slot for a while: the
    backend has at most LIMIT at once (and reaches it: the slots are shared, not per replica)."""
    slow.reset()
    clients = [_client(proc) for proc in replicas]

    async def one(n: int) -> None:
        body = {"model": "slow", "input": "[long] hold the slot", "max_output_tokens": 10, "stream": True}
        async with clients[n % 3].stream("POST", "/v1/responses", json=body) as reply:
            assert reply.status_code == 200
            events = await read_events(reply)
        assert events[-1]["type"] in TERMINAL_EVENTS

    try:
        await asyncio.gather(*(one(n) for n in range(30)))
    finally:
        for http in clients:
            await http.aclose()
    assert slow.requests_total == 30
    assert slow.peak_in_flight == LIMIT


async def test_an_answer_cached_by_one_replica_is_a_hit_on_another(replicas, fast):
    body = {"model": "tiny", "input": f"cache me {uuid.uuid4().hex}", "nomyo": {"cache": True}}
    async with _client(replicas[0]) as a, _client(replicas[1]) as b:
        first = await a.post("/v1/responses", json=body)
        assert first.status_code == 200 and first.json()["status"] == "completed"
        asked = fast.requests_total
        second = await b.post("/v1/responses", json=body)
    assert second.status_code == 200
    assert second.json()["output_text"] == first.json()["output_text"] == DEFAULT_TEXT
    assert second.json()["id"] != first.json()["id"]
    assert fast.requests_total == asked                 # B answered from the cache A filled


async def _start_background_stream(http: httpx.AsyncClient, events_wanted: int) -> tuple[str, list[dict], object]:
    """POST a background stream; return its id, its first events, and the open stream (to close)."""
    body = {"model": "slow", "input": "[long] tell me a long story", "max_output_tokens": 400,
            "background": True, "stream": True}
    context = http.stream("POST", "/v1/responses", json=body)
    reply = await context.__aenter__()
    assert reply.status_code == 200
    lines = reply.aiter_lines()
    events: list[dict] = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(orjson.loads(line[6:]))
            if len(events) >= events_wanted:
                break
    return events[0]["response"]["id"], events, context


async def _follow(http: httpx.AsyncClient, response_id: str, after: int | None = None) -> list[dict]:
    params = {"stream": "true"} if after is None else {"stream": "true", "starting_after": str(after)}
    async with http.stream("GET", f"/v1/responses/{response_id}", params=params) as reply:
        assert reply.status_code == 200, await reply.aread()
        return await read_events(reply)


async def _one_event_after(http: httpx.AsyncClient, response_id: str, after: int) -> dict:
    """The first stored event past sequence number ``after`` (waits for it to be produced)."""
    params = {"stream": "true", "starting_after": str(after)}
    async with http.stream("GET", f"/v1/responses/{response_id}", params=params) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                return orjson.loads(line[6:])
    raise AssertionError(f"the stream of {response_id} ended without an event past {after}")


async def test_a_stream_started_on_a_followed_from_b_is_cancelled_from_c(replicas, slow):
    """The cancel reaches the replica that runs the stream, which stops the upstream call; C
    answers the final state, and the follower on B sees the stream end so."""
    a, b, c = (_client(proc) for proc in replicas)
    try:
        disconnects = slow.disconnects
        response_id, first, stream = await _start_background_stream(a, 5)
        follower = asyncio.create_task(_follow(b, response_id))
        await asyncio.sleep(0.5)
        cancelled = await c.post(f"/v1/responses/{response_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        followed = await asyncio.wait_for(follower, 60)
        await stream.__aexit__(None, None, None)
        assert followed[0]["sequence_number"] == 0 and followed[-1]["type"] in TERMINAL_EVENTS
        assert followed[-1]["response"]["status"] == "cancelled"
        assert [e["sequence_number"] for e in followed] == list(range(len(followed)))
        assert followed[:5] == first
        for _ in range(100):                              # the owner closed its upstream stream
            if slow.disconnects > disconnects:
                break
            await asyncio.sleep(0.1)
        assert slow.disconnects > disconnects
        assert (await b.get(f"/v1/responses/{response_id}")).json()["status"] == "cancelled"
    finally:
        for http in (a, b, c):
            await http.aclose()


async def test_a_replica_killed_mid_stream_is_taken_over(replicas, slow):
    """A is killed (SIGKILL) in the middle of a background stream that B follows, with more
    background responses queued behind full slots: B's follower gets ``error`` +
    ``response.failed`` once A's lease runs out, a resume from B with ``starting_after``
    replays every event A produced, and A's queued responses are run by the survivors."""
    a, b = _client(replicas[0]), _client(replicas[1])
    try:
        response_id, first, stream = await _start_background_stream(a, 8)
        slow.first_byte_delay = 5.0       # the calls below hold their slots: running on A when it dies
        queued = []
        for _ in range(LIMIT):  # the stream holds one slot: these take the rest and queue one more on A
            reply = await a.post("/v1/responses", json={"model": "slow", "input": "[long] wait", "background": True,
                                                        "max_output_tokens": 40})
            assert reply.status_code == 200 and reply.json()["status"] == "queued"
            queued.append(reply.json()["id"])
        follower = asyncio.create_task(_follow(b, response_id))
        for _ in range(600):
            if slow.in_flight == LIMIT:
                break
            await asyncio.sleep(0.05)
        assert slow.in_flight == LIMIT
        # A has produced (and stored) more than the events its client read: they must survive it
        assert (await asyncio.wait_for(_one_event_after(b, response_id, len(first) - 1), 60))["sequence_number"] \
            == len(first)
        killed_at = time.monotonic()
        replicas[0].kill()
        followed = await asyncio.wait_for(follower, 60)
        taken_over_in = time.monotonic() - killed_at
        print(f"the follower saw response.failed {taken_over_in:.2f} s after the kill (lease {LEASE} s)")
        assert [e["type"] for e in followed[-2:]] == ["error", "response.failed"]
        assert followed[-1]["response"]["status"] == "failed"
        assert followed[:8] == first
        produced = followed[:-2]
        assert len(produced) > 8
        assert [e["sequence_number"] for e in followed] == list(range(len(followed)))
        replay = await _follow(b, response_id, after=3)
        assert replay == followed[4:]
        assert (await b.get(f"/v1/responses/{response_id}")).json()["status"] == "failed"
        statuses = []
        for rid in queued:
            for _ in range(600):
                status = (await b.get(f"/v1/responses/{rid}")).json()["status"]
                if status not in ("queued", "in_progress"):
                    break
                await asyncio.sleep(0.1)
            statuses.append(status)
        # those running on A failed with it; the one still queued ran on a survivor (cut at 40 tokens)
        assert sorted(statuses) == ["failed"] * (LIMIT - 1) + ["incomplete"], statuses
        try:
            await stream.__aexit__(None, None, None)
        except httpx.HTTPError:
            pass
    finally:
        slow.first_byte_delay = 0.0
        await a.aclose()
        await b.aclose()
        replicas[0].start(timeout=60)
