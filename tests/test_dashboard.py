"""The dashboard over the app, in front of the scripted Ollama-protocol server: its page (a strict
Content-Security-Policy, nothing loaded from another host), the admin key on its routes,
``/api/config`` in NOMYO Router's shape, and ``/api/usage-stream``: a snapshot at once, then one
for every change (a finished request, a slot taken and given back), ended by the client leaving
and by the gateway stopping."""

from __future__ import annotations

import asyncio
import re
import time
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

import logs
import router
from api.dashboard import snapshot
from tests.e2e.ollama_server import OLLAMA_VERSION
from tests.e2e.processes import free_port
from tests.reliability.helpers import assert_openai_error, wait_for

ADMIN = "admin-key-5be1c0d94f2a"
TENANT = "tenant-key-9a7e3c51d06b"
GIVE_UP = 30.0


@pytest.fixture
async def gw(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], max_concurrent_connections=2) as http:
        yield http


class OpenStream:
    """A GET of the app driven at the ASGI level, its body read as it is sent (httpx's ASGI
    transport returns only once the whole body is there, and this one never ends by itself).
    Leaving the ``async with`` disconnects, as a browser closing the page does."""

    def __init__(self, path: str, **query: str):
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                      "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                      "query_string": urlencode(query).encode(), "root_path": "",
                      "headers": [(b"host", b"gateway"), (b"accept", b"text/event-stream")],
                      "client": ("127.0.0.1", 50000), "server": ("gateway", 80)}
        self.messages: asyncio.Queue = asyncio.Queue()
        self.gone = asyncio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.ended = False
        self._buffer = b""
        self._asked = False
        self.task: asyncio.Task | None = None

    async def _receive(self) -> dict:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        await self.messages.put(message)

    async def __aenter__(self) -> "OpenStream":
        self.task = asyncio.ensure_future(router.app(self.scope, self._receive, self._send))
        start = await asyncio.wait_for(self.messages.get(), GIVE_UP)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, GIVE_UP)      # the app ends the stream once the client left

    async def event(self) -> dict | None:
        """The next SSE event as ``{"event", "data", "retry"?}`` (``data`` parsed), or None once the body ended."""
        while b"\n\n" not in self._buffer:
            if self.ended:
                return None
            message = await asyncio.wait_for(self.messages.get(), GIVE_UP)
            self._buffer += message.get("body", b"")
            self.ended = not message.get("more_body", False)
        frame, self._buffer = self._buffer.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in frame.decode().splitlines())
        return {**fields, "data": orjson.loads(fields["data"])}

    async def snapshot_where(self, check: Any) -> dict:
        """Read snapshots until one satisfies ``check``; return it."""
        while True:
            event = await self.event()
            assert event is not None, "the stream ended"
            if check(event["data"]):
                return event["data"]


def _row(snap: dict, request_id: str) -> dict | None:
    return next((r for r in snap["requests"] if r["request_id"] == request_id), None)


# ── the page ─────────────────────────────────────────────────────────────────
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_page_has_a_strict_csp_and_loads_nothing_from_elsewhere(gw):
    nonces = set()
    for path in ("/", "/dashboard"):
        reply = await gw.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        csp = reply.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        nonce = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{20,})'", directives["script-src"]).group(1)
        assert directives["style-src"] == f"'nonce-{nonce}'"                  # no 'unsafe-inline' anywhere
        assert "unsafe" not in csp and reply.headers["referrer-policy"] == "no-referrer"
        nonces.add(nonce)
        html = reply.text
        assert not re.search(r"https?://", html, re.I), "the page names another host"
        parser = _Tags()
        parser.feed(html)
        for tag, attrs in parser.tags:
            if tag in ("script", "style"):
                assert attrs.get("nonce") == nonce and "src" not in attrs, (tag, attrs)
            for name in ("src", "href", "action"):
                value = attrs.get(name)
                assert value is None or value.startswith(("/", "data:")), (tag, attrs)   # this origin only
        assert "__NONCE__" not in html
        viewport = [a for t, a in parser.tags if t == "meta" and a.get("name") == "viewport"]
        assert viewport and "width=device-width" in viewport[0]["content"]      # readable on a phone
    assert len(nonces) == 2                                                    # a new nonce per answer


async def test_the_dashboard_routes_need_the_admin_key_once_one_is_set(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], admin_api_key=ADMIN,
                               **{"nomyo-router-api-key": TENANT}) as http:
        for path in ("/", "/dashboard", "/api/config", "/api/usage-stream"):
            assert_openai_error(await http.get(path), 401, "missing_api_key")
            assert_openai_error(await http.get(path, params={"api_key": "wrong-key"}), 401, "invalid_api_key")
            assert_openai_error(await http.get(path, headers={"Authorization": f"Bearer {TENANT}"}), 403,
                                "admin_key_required")
        for path in ("/", "/dashboard", "/api/config"):
            assert (await http.get(path, params={"api_key": ADMIN})).status_code == 200
            assert (await http.get(path, headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 200
        async with OpenStream("/api/usage-stream", api_key=ADMIN) as stream:      # as the page opens it
            assert stream.status == 200
            assert "endpoints" in (await stream.event())["data"]


# ── /api/config ──────────────────────────────────────────────────────────────
async def test_api_config_reports_each_endpoint_in_nomyo_routers_shape(gateway_factory, ollama):
    dead = f"http://127.0.0.1:{free_port()}"
    async with gateway_factory(endpoints=[ollama.url, dead], llama_server_endpoints=[f"{ollama.url}/v1"]) as http:
        reply = await http.get("/api/config")
        assert reply.status_code == 200
        body = reply.json()
        assert set(body) == {"endpoints", "llama_server_endpoints", "require_router_api_key"}
        up, down = body["endpoints"]
        assert up == {"url": ollama.url, "status": "ok", "version": OLLAMA_VERSION}
        assert set(down) == {"url", "status", "detail"} and (down["url"], down["status"]) == (dead, "error")
        assert "ConnectError" in down["detail"] and dead in down["detail"]
        assert body["llama_server_endpoints"] == [{"url": f"{ollama.url}/v1", "status": "ok"}]
        assert body["require_router_api_key"] is False
        ollama.stop()                                                          # asked now, not remembered
        later = (await http.get("/api/config")).json()
        assert later["endpoints"][0]["status"] == "error" and "detail" in later["endpoints"][0]
    async with gateway_factory(endpoints=[], llama_server_endpoints=[], admin_api_key=ADMIN,
                               **{"nomyo-router-api-key": TENANT}) as http:
        body = (await http.get("/api/config", params={"api_key": ADMIN})).json()
        assert body == {"endpoints": [], "llama_server_endpoints": [], "require_router_api_key": True}


# ── /api/usage-stream ────────────────────────────────────────────────────────
async def test_the_stream_starts_with_a_snapshot_of_the_endpoints_then_shows_a_finished_request(gw, ollama):
    async with OpenStream("/api/usage-stream") as stream:
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache" and "content-length" not in stream.headers
        first = await stream.event()
        assert "event" not in first and int(first["retry"]) > 0        # unnamed: onmessage reads it
        assert first["data"]["usage_counts"] == {} and "token_usage_counts" in first["data"]  # NOMYO Router's keys
        snap = first["data"]
        assert snap["endpoints"] == [{"url": ollama.url, "kind": "ollama", "reachable": True, "error": None,
                                      "models": ["tiny:latest"], "loaded": ["tiny:latest"]}]
        assert snap["max_concurrent_connections"] == 2 and snap["slots"] == [] and snap["queued"] == []
        assert snap["jobs"] == {"queued": 0, "in_progress": 0, "items": []} and snap["cache"] is None
        assert abs(snap["time"] - time.time()) < 3600

        reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "hi"},
                              headers={"X-Request-Id": "dashboard-test-1"})
        assert reply.status_code == 200
        later = await stream.snapshot_where(lambda s: _row(s, "dashboard-test-1"))
        row = _row(later, "dashboard-test-1")
        usage = reply.json()["usage"]
        assert (row["method"], row["route"], row["status"], row["model"]) == ("POST", "/v1/responses", 200, "tiny")
        assert (row["upstream_model"], row["endpoint"]) == ("tiny:latest", ollama.url)
        assert (row["input_tokens"], row["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
        assert row["latency_ms"] > 0 and later["requests"][0]["seq"] >= row["seq"]   # newest first
        assert {"endpoint": ollama.url, "model": "tiny:latest", "input_tokens": usage["input_tokens"],
                "output_tokens": usage["output_tokens"]} in later["tokens"]


async def test_the_stream_shows_a_slot_taken_and_given_back(gw, ollama):
    ollama.chunk_delay = 0.05
    async with OpenStream("/api/usage-stream") as stream:
        await stream.event()
        body = {"model": "tiny", "input": "[long]", "max_output_tokens": 60, "stream": True}
        running = asyncio.ensure_future(gw.post("/v1/responses", json=body, headers={"X-Request-Id": "held-1"}))
        busy = await stream.snapshot_where(lambda s: s["slots"])             # before the request finished
        assert busy["slots"] == [{"endpoint": ollama.url, "model": "tiny:latest", "in_use": 1}]
        assert _row(busy, "held-1") is None
        assert (await running).status_code == 200
        idle = await stream.snapshot_where(lambda s: not s["slots"])
        assert idle["slots"] == [] and idle["queued"] == []


async def test_without_changes_the_stream_still_sends_a_heartbeat_snapshot(gw):
    async with OpenStream("/api/usage-stream") as stream:
        first = (await stream.event())["data"]
        second = (await stream.event())["data"]                              # nothing happened meanwhile
        assert second["time"] > first["time"] and second["endpoints"] == first["endpoints"]


async def test_the_stream_ends_when_the_client_leaves_and_when_the_gateway_drains_it(gw):
    gateway = router.app.state.gateway
    before = logs.RECENT_REQUESTS.last_seq
    async with OpenStream("/api/usage-stream") as stream:
        await stream.event()
        held = [s for s in gateway.sockets if getattr(s, "drain", None)]
        assert len(held) == 1                                                 # the server drains it at shutdown
    assert stream.task.done() and not gateway.sockets                       # the client left: it ended
    assert [(r["route"], r["status"]) for r in logs.RECENT_REQUESTS.latest(50) if r["seq"] > before] == \
        [("/api/usage-stream", 200)]                                         # and counts as a finished request

    async with OpenStream("/api/usage-stream") as stream:
        await stream.event()
        (session,) = gateway.sockets
        await asyncio.wait_for(session.drain(), GIVE_UP)                   # what the stopping server does
        while await stream.event() is not None:                              # the body ends, properly closed
            pass
        assert stream.ended and stream.task.done() and not gateway.sockets


def async_true(check: Any) -> Any:
    async def run() -> bool:
        return check()
    return run


# ── snapshots of the cache and the background jobs ───────────────────────────
async def test_a_snapshot_counts_cache_hits_and_misses(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True) as http:
        gateway = router.app.state.gateway
        assert snapshot(gateway)["cache"] == {"backend": "memory", "hits": 0, "misses": 0, "hit_rate": None}
        body = {"model": "tiny", "input": "cache me", "nomyo": {"cache": True}}
        for _ in range(2):
            assert (await http.post("/v1/responses", json=body)).status_code == 200
        assert snapshot(gateway)["cache"] == {"backend": "memory", "hits": 1, "misses": 1, "hit_rate": 0.5}


async def test_a_snapshot_lists_background_jobs_until_they_end(gw, ollama):
    gateway = router.app.state.gateway
    ollama.first_byte_delay = 3.0       # the job runs past the snapshot below, even on a loaded machine
    reply = await gw.post("/v1/responses", json={"model": "tiny", "input": "hi", "background": True})
    assert reply.status_code == 200
    rid = reply.json()["id"]
    jobs = snapshot(gateway)["jobs"]
    assert jobs["queued"] + jobs["in_progress"] == 1
    (item,) = jobs["items"]
    assert (item["id"], item["model"]) == (rid, "tiny") and item["status"] in ("queued", "in_progress")
    ended = await wait_for(async_true(lambda: snapshot(gateway)["jobs"]["items"] == []), GIVE_UP, 0.05)
    assert ended


def test_recent_requests_keep_the_newest_within_their_bound():
    recent = logs.RecentRequests(size=3)
    for n in range(5):
        recent.add(logs.RequestInfo(request_id=f"r{n}", model="m"), "GET", "/x", 200, time.perf_counter())
    assert [e["request_id"] for e in recent.latest(10)] == ["r4", "r3", "r2"]
    assert recent.last_seq == 5 and recent.latest(1)[0]["seq"] == 5 and recent.latest(1)[0]["input_tokens"] is None


async def test_waiting_for_the_next_request_wakes_when_one_finishes():
    recent = logs.RecentRequests()
    assert await recent.wait(0, 0.01) is False                               # nothing came: the time ran out
    waiting = asyncio.ensure_future(recent.wait(recent.last_seq, GIVE_UP))
    await asyncio.sleep(0)
    recent.add(logs.RequestInfo(request_id="r"), "GET", "/", 200, time.perf_counter())
    assert await asyncio.wait_for(waiting, GIVE_UP) is True
    assert await recent.wait(0, GIVE_UP) is True                             # one newer is there already
