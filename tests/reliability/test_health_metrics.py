"""Readiness per endpoint (``/health``) and the Prometheus counters (``/metrics``)."""

from __future__ import annotations

import router
from tests.e2e.ollama_server import OllamaTestServer
from tests.e2e.processes import free_port
from tests.reliability.helpers import metric

REQUESTS = "nomyo_router_requests_total"


async def test_health_is_200_while_one_endpoint_is_reachable(app_factory, ollama):
    dead = f"http://127.0.0.1:{free_port()}"
    async with app_factory(endpoints=[dead, ollama.url], connect_timeout=1) as http:
        reply = await http.get("/health")
        assert reply.status_code == 200
        body = reply.json()
        assert body["status"] == "ok" and body["store"] == {"ok": True, "error": None, "writes_retrying": 0, "shared": False, "replica": None}
        by_url = {ep["url"]: ep for ep in body["endpoints"]}
        assert set(by_url) == {dead, ollama.url}
        assert by_url[ollama.url] == {"url": ollama.url, "kind": "ollama", "reachable": True,
                                      "models": ["tiny:latest"], "error": None}
        assert by_url[dead]["reachable"] is False and by_url[dead]["models"] == []
        assert isinstance(by_url[dead]["error"], str) and by_url[dead]["error"]


async def test_health_is_503_with_detail_when_no_endpoint_is_reachable(app_factory):
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/v1"]
    async with app_factory(endpoints=dead, connect_timeout=1) as http:
        reply = await http.get("/health")
        assert reply.status_code == 503
        body = reply.json()
        assert body["status"] == "unavailable" and body["store"]["ok"] is True
        assert [ep["url"] for ep in body["endpoints"]] == dead
        assert [ep["kind"] for ep in body["endpoints"]] == ["ollama", "openai"]
        for ep in body["endpoints"]:
            assert ep["reachable"] is False and ep["error"]
        assert (await http.get("/health/live")).status_code == 200


async def test_health_is_503_without_endpoints(app_factory):
    async with app_factory(endpoints=[]) as http:
        reply = await http.get("/health")
        assert reply.status_code == 503 and reply.json()["endpoints"] == []


async def test_health_recovers_when_the_backend_comes_back(app_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with app_factory(endpoints=[url], connect_timeout=1) as http:
        assert (await http.get("/health")).status_code == 503
        unreachable = await http.post("/v1/responses", json={"model": "tiny", "input": "x"})
        assert unreachable.status_code == 502                  # nothing to ask: not "no such model"
        with OllamaTestServer(models=["tiny:latest"], port=port):
            reply = await http.get("/health")
            assert reply.status_code == 200 and reply.json()["endpoints"][0]["reachable"] is True
            assert (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).status_code == 200
        assert (await http.get("/health")).status_code == 503


async def test_health_is_503_when_the_store_fails(app_factory, ollama, monkeypatch):
    async with app_factory(endpoints=[ollama.url]) as http:
        async def broken():
            raise OSError("disk gone")
        monkeypatch.setattr(router.app.state.gateway.store, "check", broken)
        reply = await http.get("/health")
        assert reply.status_code == 503
        assert reply.json()["store"] == {"ok": False, "error": "OSError: disk gone", "writes_retrying": 0,
                                         "shared": False, "replica": None}
        assert reply.json()["endpoints"][0]["reachable"] is True


async def _metrics(http) -> str:
    reply = await http.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return reply.text


async def test_metrics_count_requests_by_route_and_status(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=4) as http:
        before = await _metrics(http)
        ids = [(await http.post("/v1/responses", json={"model": "tiny", "input": f"{i}"})).json()["id"]
               for i in range(3)]
        await http.post("/v1/responses", json={"model": "tiny", "input": "s", "stream": True})
        for _ in range(2):
            await http.post("/v1/responses", json={"model": "tiny", "input": 5})
        for rid in ids:
            await http.get(f"/v1/responses/{rid}")
        await http.get("/v1/responses/resp_nope")
        await http.get("/v1/responses/resp_nope/input_items")
        await http.get("/no/such/path")
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        await http.post("/api/chat", json=chat)
        await http.post("/v1/chat/completions", json=chat)
        await http.get("/v1/models/tiny:latest")
        after = await _metrics(http)

        def delta(**labels):
            return metric(after, REQUESTS, **labels) - metric(before, REQUESTS, **labels)
        assert delta(route="/v1/responses", status="200") == 4
        assert delta(route="/v1/responses", status="400") == 2
        assert delta(route="/v1/responses/{id}", status="200") == 3
        assert delta(route="/v1/responses/{id}", status="404") == 1
        assert delta(route="/v1/responses/{id}/input_items", status="404") == 1
        assert delta(route="other", status="404") == 1
        assert delta(route="/api/chat", status="200") == delta(route="/v1/chat/completions", status="200") == 1
        assert delta(route="/v1/models/{id}", status="200") == 1
        count = "nomyo_router_request_seconds_count"
        assert metric(after, count, route="/v1/responses") - metric(before, count, route="/v1/responses") == 6
        assert "resp_" not in after and "/no/such/path" not in after      # bounded labels


async def test_metrics_count_backend_errors(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], request_timeout=0.3) as http:
        before = await _metrics(http)
        ollama.fail_status = 500
        for _ in range(2):
            assert (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).status_code == 500
        ollama.fail_status = 429
        assert (await http.post("/v1/responses", json={"model": "tiny", "input": "x", "stream": True})).status_code == 429
        ollama.fail_status, ollama.first_byte_delay = None, 1.0
        assert (await http.post("/v1/responses", json={"model": "tiny", "input": "x"})).status_code == 504
        after = await _metrics(http)

        def delta(kind):
            name = "nomyo_router_backend_errors_total"
            return metric(after, name, endpoint=ollama.url, kind=kind) - metric(before, name, endpoint=ollama.url,
                                                                                kind=kind)
        assert (delta("500"), delta("429"), delta("504")) == (2, 1, 1)


async def test_metrics_count_cache_hits_and_misses(app_factory, ollama):
    async with app_factory(endpoints=[ollama.url], cache_enabled=True) as http:
        before = await _metrics(http)
        body = {"model": "tiny", "input": "cache me", "nomyo": {"cache": True}}
        for _ in range(3):
            assert (await http.post("/v1/responses", json=body)).status_code == 200
        await http.post("/v1/responses", json={**body, "stream": True})                 # a hit, streamed
        await http.post("/v1/responses", json={"model": "tiny", "input": "cache me"})   # not opted in
        await http.post("/v1/responses", json={**body, "input": "other"})              # another key
        after = await _metrics(http)
        name = "nomyo_router_cache_lookups_total"
        hits = metric(after, name, result="hit") - metric(before, name, result="hit")
        misses = metric(after, name, result="miss") - metric(before, name, result="miss")
        assert (hits, misses) == (3, 2)
        assert ollama.requests_total == 3


async def test_a_store_that_cannot_be_written_is_503_and_not_ready(app_factory, ollama):
    """Another writer holds the store's write lock: creates answer 503 store_unavailable (nothing
    is told finished), and /health says the store is not ready, while reads still work."""
    import sqlite3
    async with app_factory(endpoints=[ollama.url]) as http:
        ok = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        assert ok.status_code == 200
        store = router.app.state.gateway.store
        await store.conn.execute("PRAGMA busy_timeout=200")
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            refused = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
            health = await http.get("/health")
            read = await http.get(f"/v1/responses/{ok.json()['id']}")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable", refused.text[:300]
        assert health.status_code == 503 and health.json()["store"]["ok"] is False
        assert read.status_code == 200
        assert (await http.get("/health")).status_code == 200


async def test_reads_do_not_wait_behind_a_write_that_waits_for_the_store(app_factory, ollama):
    """A write waits up to busy_timeout for a lock held elsewhere; a retrieve meanwhile is
    answered from the store's read connection, not queued behind that write."""
    import asyncio
    import sqlite3
    async with app_factory(endpoints=[ollama.url]) as http:
        ok = await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})
        store = router.app.state.gateway.store
        await store.conn.execute("PRAGMA busy_timeout=4000")
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            before = ollama.requests_total
            waiting = asyncio.create_task(http.post("/v1/responses", json={"model": "tiny", "input": "hi"}))
            while ollama.requests_total == before:      # the answer is in: its write is what waits now
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            read = await http.get(f"/v1/responses/{ok.json()['id']}")
            assert read.status_code == 200 and not waiting.done()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await waiting).status_code == 200      # the lock came back within busy_timeout


async def test_a_stream_whose_final_write_fails_is_failed_and_its_row_follows_once_the_store_can(ollama, tmp_path):
    """The row of a stream is in progress when the store starts refusing writes (another process
    holds its write lock): the client is told failed, never completed, and the row is failed
    too as soon as the store takes writes again."""
    import sqlite3

    import httpx
    import orjson

    from tests.e2e.processes import GatewayProcess
    from tests.reliability.helpers import store_rows, wait_for
    ollama.chunk_delay = 0.05
    proc = GatewayProcess(tmp_path, endpoints=[ollama.url]).start()
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            body = {"model": "tiny", "input": "[long]", "max_output_tokens": 40, "stream": True}
            events = []
            async with http.stream("POST", "/v1/responses", json=body) as reply:
                async for line in reply.aiter_lines():
                    if line.startswith("data: "):
                        events.append(orjson.loads(line[6:]))
                        if len(events) == 2:                    # in progress, and stored so
                            blocker.execute("BEGIN IMMEDIATE")  # the final write will be refused
            rid = events[0]["response"]["id"]
            assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
            assert "could not be stored" in events[-1]["response"]["error"]["message"]
            health = (await http.get("/health")).json()
            assert health["store"]["writes_retrying"] == 1
            assert store_rows(proc.workdir / "store.db")[rid][0] == "in_progress"
            blocker.execute("ROLLBACK")

            async def row_failed():
                return store_rows(proc.workdir / "store.db")[rid][0] == "failed"
            assert await wait_for(row_failed, timeout=20)
            stored = (await http.get(f"/v1/responses/{rid}")).json()
            assert stored["status"] == "failed" and "could not be stored" in stored["error"]["message"]

            async def retries_done():
                return (await http.get("/health")).json()["store"]["writes_retrying"] == 0
            assert await wait_for(retries_done, timeout=10)
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        proc.stop()


async def test_metrics_per_endpoint_and_model_and_the_queue(app_factory, ollama):
    """Turns by final status, latency and first-token histograms, tokens, queue wait and
    length, background jobs and error codes, with their names and labels, from real requests."""
    import asyncio
    ep = {"endpoint": ollama.url, "model": "tiny:latest"}
    async with app_factory(endpoints=[ollama.url], max_concurrent_connections=1) as http:
        before = await _metrics(http)
        done = (await http.post("/v1/responses", json={"model": "tiny", "input": "hi"})).json()
        await http.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True})
        await http.post("/v1/responses", json={"model": "tiny", "input": "[long]", "max_output_tokens": 5})
        await http.post("/v1/responses", json={"model": "nope", "input": "hi"})
        ollama.first_byte_delay = 0.5
        first = asyncio.create_task(http.post("/v1/responses", json={"model": "tiny", "input": "a"}))
        while not router.app.state.gateway.registry.usage.get((ollama.url, "tiny:latest")):
            await asyncio.sleep(0.01)
        second = asyncio.create_task(http.post("/v1/responses", json={"model": "tiny", "input": "b"}))
        while not router.app.state.gateway.registry.queued:
            await asyncio.sleep(0.01)
        waiting = (await http.get("/api/usage")).json()
        during = await _metrics(http)
        await asyncio.gather(first, second)
        ollama.first_byte_delay = 0
        job = (await http.post("/v1/responses", json={"model": "tiny", "input": "bg", "background": True})).json()
        from tests.reliability.helpers import poll_status
        await poll_status(http, job["id"])
        after = await _metrics(http)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    assert waiting["queued"] == 1 and waiting["queue"] == [{"model": "tiny", "queued": 1}]
    assert metric(during, "nomyo_router_queued", model="tiny") == 1
    assert metric(during, "nomyo_router_in_flight", **ep) == 1
    assert delta("nomyo_router_turns_total", **ep, status="completed") == 5
    assert delta("nomyo_router_turns_total", **ep, status="incomplete") == 1
    assert delta("nomyo_router_turn_seconds_count", **ep) == 6
    assert delta("nomyo_router_time_to_first_token_seconds_count", **ep) == 1       # the one stream
    assert delta("nomyo_router_tokens_total", **ep, kind="output") >= done["usage"]["output_tokens"] * 4
    assert delta("nomyo_router_tokens_total", **ep, kind="input") > 0
    assert delta("nomyo_router_queue_wait_seconds_count", model="tiny") == 6
    assert delta("nomyo_router_queue_wait_seconds_sum", model="tiny") > 0.05     # the second one waited
    assert delta("nomyo_router_errors_total", route="/v1/responses", status="404", code="model_not_found") == 1
    assert delta("nomyo_router_background_jobs_finished_total", status="completed") == 1
    assert "nomyo_router_background_jobs{" in after
