"""No leaks: ``/api/usage`` reports what is in flight, and after any mix of requests,
faults and disconnects every counter returns to zero and no stored response is left
``queued``/``in_progress``."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from tests.e2e.ollama_server import DEFAULT_TEXT, OllamaTestServer
from tests.e2e.processes import GatewayProcess
from tests.reliability.helpers import (IDLE, TERMINAL, metric, nested_lists, read_events,
                                       store_rows, usage, wait_for, wait_idle)
from tests.reliability.test_limits import BAD_BODIES



async def test_usage_reports_requests_in_flight(app_factory, ollama):
    ollama.first_byte_delay = 0.5
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4) as http:
        assert await usage(http) == IDLE
        plain = asyncio.create_task(http.post("/v1/responses", json={"model": "tiny", "input": "a"}))
        stream = asyncio.create_task(http.post("/v1/responses", json={"model": "tiny", "input": "b",
                                                                      "stream": True}))
        queued = (await http.post("/v1/responses", json={"model": "tiny", "input": "c",
                                                         "background": True})).json()

        async def three_in_flight():
            now = await usage(http)
            return now if now["in_flight"] == 3 else None
        now = await wait_for(three_in_flight, 2)
        assert now["usage"] == [{"endpoint": ollama.url, "model": "tiny:latest", "in_flight": 3}]
        assert now["background_jobs"] == 1 and ollama.in_flight == 3
        assert await usage(http, path="/v1/usage") == now
        gauge = metric((await http.get("/metrics")).text, "nomyo_router_in_flight",
                       endpoint=ollama.url, model="tiny:latest")
        assert gauge == 3
        assert (await plain).status_code == 200 and (await stream).status_code == 200
        await wait_idle(http, ollama)
        done = (await http.get(f"/v1/responses/{queued['id']}")).json()
        assert done["status"] == "completed"
        assert metric((await http.get("/metrics")).text, "nomyo_router_in_flight",
                      endpoint=ollama.url, model="tiny:latest") == 0


DEEP_TOOLS = {"model": "tiny", "input": "x", "tools": [
    {"type": "function", "name": "f", "parameters": {"type": "object", "x": orjson.loads(nested_lists(300))}}]}


async def test_a_create_failing_after_the_upstream_opened_gives_the_slot_back(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=1, queue_timeout=1) as http:
        reply = await http.post("/v1/responses", json={**DEEP_TOOLS, "stream": True})
        assert reply.status_code >= 400
        assert (await usage(http))["in_flight"] == 0
        after = await http.post("/v1/responses", json={"model": "tiny", "input": "next"})
        assert after.status_code == 200, after.text


async def test_concurrent_deletes_all_succeed(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=8) as http:
        ids = [(await http.post("/v1/responses", json={"model": "tiny", "input": f"d{i}"})).json()["id"]
               for i in range(30)]
        replies = await asyncio.gather(*(http.delete(f"/v1/responses/{rid}") for rid in ids))
        assert [r.status_code for r in replies] == [200] * len(ids), [r.text for r in replies if r.status_code != 200][:3]
        assert [(await http.get(f"/v1/responses/{rid}")).status_code for rid in ids] == [404] * len(ids)


async def test_writes_during_concurrent_deletes_are_kept(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=16) as http:
        ids = [(await http.post("/v1/responses", json={"model": "tiny", "input": f"d{i}"})).json()["id"]
               for i in range(20)]

        async def delete_serially():
            for rid in ids:
                await http.delete(f"/v1/responses/{rid}")
        creates = [http.post("/v1/responses", json={"model": "tiny", "input": f"n{i}"}) for i in range(40)]
        results = await asyncio.gather(delete_serially(), *creates)
        new_ids = [r.json()["id"] for r in results[1:]]
        for rid in new_ids:
            got = await http.get(f"/v1/responses/{rid}")
            assert got.status_code == 200 and got.json()["status"] == "completed"


# ── a thousand randomised requests with faults ────────────────────────────────

FAULT_MODELS = {
    "tiny": {},                                   # healthy
    "e500": {"fail_status": 500},
    "e429": {"fail_status": 429},
    "drop": {"drop_after_chunks": 2},
    "stall": {"first_byte_delay": 1.0},          # past request_timeout: 504
    "drip": {"chunk_delay": 0.02},               # slow streams to leave or cancel
}
REQUEST_TIMEOUT = 0.5
KINDS = {  # kind: weight
    "plain": 14, "stream": 14, "background": 7, "background-stream": 7, "bad-body": 8, "unknown-model": 4,
    "e500": 5, "e429": 5, "drop": 6, "stall": 4, "disconnect": 8, "cancel": 5, "stall-disconnect": 3,
    "retrieve": 5, "delete": 5,
}


SEED = 20240601


@dataclass
class Mix:
    """State shared by the randomised requests: pools of ids, counts and mismatches."""
    chainable: list[str] = field(default_factory=list)
    deletable: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    http_requests: int = 0
    problems: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)


def _sequence_ok(events: list[dict]) -> bool:
    return ([e["sequence_number"] for e in events] == list(range(len(events)))
            and sum(e["type"] in ("response.completed", "response.failed", "response.incomplete")
                    for e in events) == 1)


async def _poll(http: httpx.AsyncClient, mix: Mix, rid: str) -> dict:
    deadline = time.monotonic() + 15
    while True:
        mix.http_requests += 1
        obj = (await http.get(f"/v1/responses/{rid}")).json()
        if obj["status"] in TERMINAL or time.monotonic() > deadline:
            return obj
        await asyncio.sleep(0.05)


async def _stream(http: httpx.AsyncClient, mix: Mix, body: dict, limit: int | None = None):
    mix.http_requests += 1
    async with http.stream("POST", "/v1/responses", json=body) as reply:
        if reply.status_code != 200:
            await reply.aread()
            return reply, []
        return reply, await read_events(reply, limit)


async def _one(http: httpx.AsyncClient, mix: Mix, n: int) -> None:
    rng = random.Random(SEED * 100_000 + n)     # each request's plan is fixed whatever the interleaving
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    mix.kinds[kind] += 1
    store = rng.random() < 0.75
    body: dict = {"model": "tiny", "input": f"request {n}", "store": store}
    if store and mix.chainable and rng.random() < 0.4:
        body["previous_response_id"] = rng.choice(mix.chainable)
    tag = f"#{n} {kind} {body}"

    if kind == "plain":
        mix.http_requests += 1
        reply = await http.post("/v1/responses", json=body)
        obj = reply.json()
        mix.expect(reply.status_code == 200 and obj["output_text"] == DEFAULT_TEXT, f"{tag}: {reply.text[:200]}")
        if reply.status_code == 200 and store:
            (mix.chainable if rng.random() < 0.7 else mix.deletable).append(obj["id"])
    elif kind == "stream":
        reply, events = await _stream(http, mix, {**body, "stream": True})
        ok = reply.status_code == 200 and events and events[-1]["type"] == "response.completed"
        mix.expect(bool(ok) and _sequence_ok(events), f"{tag}: {reply.status_code} {events[-1:]}")
        if ok and store:
            mix.chainable.append(events[0]["response"]["id"])
    elif kind in ("background", "background-stream"):
        body["store"] = True
        if kind == "background":
            mix.http_requests += 1
            reply = await http.post("/v1/responses", json={**body, "background": True})
            rid = reply.json()["id"]
        else:
            reply, events = await _stream(http, mix, {**body, "background": True, "stream": True})
            mix.expect(bool(events) and events[-1]["type"] == "response.completed" and _sequence_ok(events),
                       f"{tag}: {events[-1:]}")
            rid = events[0]["response"]["id"] if events else None
        if rid:
            done = await _poll(http, mix, rid)
            mix.expect(done["status"] == "completed" and done["output_text"] == DEFAULT_TEXT, f"{tag}: {done['status']}")
            mix.chainable.append(rid)
    elif kind == "bad-body":
        mix.http_requests += 1
        reply = await http.post("/v1/responses", content=rng.choice(BAD_BODIES),
                                headers={"content-type": "application/json"})
        mix.expect(reply.status_code == 400, f"{tag}: {reply.status_code}")
    elif kind == "unknown-model":
        mix.http_requests += 1
        reply = await http.post("/v1/responses", json={**body, "model": f"nope-{n}"})
        mix.expect(reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found", f"{tag}")
    elif kind in ("e500", "e429", "stall"):
        body["model"] = kind
        status = {"e500": 500, "e429": 429, "stall": 504}[kind]
        mode = rng.choice(["plain", "stream", "background"])
        if mode == "background":
            body["store"] = True
            mix.http_requests += 1
            rid = (await http.post("/v1/responses", json={**body, "background": True})).json()["id"]
            done = await _poll(http, mix, rid)
            mix.expect(done["status"] == "failed" and done["error"]["code"] in ("server_error", "rate_limit_exceeded"),
                       f"{tag} background: {done['status']}")
        else:
            mix.http_requests += 1
            reply = await http.post("/v1/responses", json={**body, "stream": mode == "stream"})
            mix.expect(reply.status_code == status, f"{tag} {mode}: {reply.status_code}")
    elif kind == "drop":
        body["model"] = "drop"
        if rng.random() < 0.5:
            body["store"] = True
            body["background"] = True
        reply, events = await _stream(http, mix, {**body, "stream": True})
        ok = events and [e["type"] for e in events[-2:]] == ["error", "response.failed"] and _sequence_ok(events)
        mix.expect(bool(ok), f"{tag}: {reply.status_code} {[e['type'] for e in events[-3:]]}")
    elif kind == "disconnect":
        reply, events = await _stream(http, mix, {**body, "model": "drip", "input": f"[long] {n}",
                                                  "max_output_tokens": 40, "stream": True}, rng.randint(1, 8))
        mix.expect(reply.status_code == 200 and bool(events), f"{tag}: {reply.status_code}")
    elif kind == "cancel":
        reply, events = await _stream(http, mix, {**body, "store": True, "model": "drip", "background": True,
                                                  "input": f"[long] {n}", "max_output_tokens": 40,
                                                  "stream": True}, 2)
        rid = events[0]["response"]["id"]
        await asyncio.sleep(rng.random() * 0.3)
        mix.http_requests += 1
        cancelled = await http.post(f"/v1/responses/{rid}/cancel")
        mix.expect(cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelled", "incomplete"),
                   f"{tag}: {cancelled.status_code} {cancelled.text[:120]}")
        done = await _poll(http, mix, rid)
        mix.expect(done["status"] in ("cancelled", "incomplete"), f"{tag}: after cancel {done['status']}")
    elif kind == "stall-disconnect":
        mix.http_requests += 1
        try:
            reply = await http.post("/v1/responses", json={**body, "model": "stall", "stream": rng.random() < 0.5},
                                    timeout=0.2)
            # A loaded machine may run the gateway's request_timeout (0.5 s) out before this
            # client's 0.2 s: then its 504 is the answer; anything else is a finding.
            mix.expect(reply.status_code == 504, f"{tag}: answered {reply.status_code} before the client gave up")
        except httpx.TimeoutException:
            pass
    elif kind == "retrieve":
        if mix.chainable:
            rid = rng.choice(mix.chainable)
            mix.http_requests += 2
            got = await http.get(f"/v1/responses/{rid}")
            items = await http.get(f"/v1/responses/{rid}/input_items")
            mix.expect(got.status_code == 200 and got.json()["status"] == "completed" and items.status_code == 200,
                       f"{tag}: {got.status_code} {items.status_code}")
    elif kind == "delete":
        if mix.deletable:
            rid = mix.deletable.pop(rng.randrange(len(mix.deletable)))
            mix.http_requests += 2
            deleted = await http.delete(f"/v1/responses/{rid}")
            gone = await http.get(f"/v1/responses/{rid}")
            mix.expect(deleted.status_code == 200 and gone.status_code == 404, f"{tag}: {deleted.status_code}")


@pytest.fixture
def fault_backends():
    """One Ollama-protocol server per entry of FAULT_MODELS, serving that model with those knobs."""
    servers = {}
    try:
        for model, knobs in FAULT_MODELS.items():
            servers[model] = OllamaTestServer(models=[f"{model}:latest"], loaded=[f"{model}:latest"], **knobs).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


async def test_a_thousand_randomised_requests_leave_nothing_behind(tmp_path, fault_backends):
    servers = fault_backends
    proc = GatewayProcess(tmp_path, endpoints=[s.url for s in servers.values()], max_concurrent_connections=64,
                          request_timeout=REQUEST_TIMEOUT).start()
    started = time.monotonic()
    mix = Mix()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=20,
                                     limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)) as http:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(1000):
                queue.put_nowait(n)

            async def worker():
                while not queue.empty():
                    n = queue.get_nowait()
                    try:
                        await _one(http, mix, n)
                    except Exception as exc:         # a transport error is a finding too
                        mix.problems.append(f"#{n}: {type(exc).__name__}: {exc}")
            await asyncio.gather(*(worker() for _ in range(40)))
            elapsed = time.monotonic() - started
            await wait_idle(http, *servers.values(), timeout=10)
            assert (await http.get("/health")).status_code == 200
            rows = store_rows(tmp_path / "store.db")
        assert proc.proc.poll() is None
    finally:
        proc.stop()
    stuck = {rid: status for rid, (status, _) in rows.items() if status in ("queued", "in_progress")}
    assert not stuck, stuck
    assert all(obj is None or obj["status"] == status for status, obj in rows.values())
    faults = sum(mix.kinds[k] for k in ("e500", "e429", "drop", "stall", "disconnect", "cancel", "stall-disconnect"))
    print(f"\nRELIABILITY-FIGURES randomised: kinds={dict(mix.kinds)} faults={faults} "
          f"http_requests={mix.http_requests} problems={len(mix.problems)} rows={len(rows)} "
          f"elapsed={elapsed:.1f}s backend_requests={ {m: s.requests_total for m, s in servers.items()} }")
    assert not mix.problems, mix.problems[:10]
    assert sum(mix.kinds.values()) == 1000 and faults > 300
    assert elapsed < 60
