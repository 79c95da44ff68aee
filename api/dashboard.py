"""The dashboard: its page (``GET /``, ``GET /dashboard``), the live snapshots it shows
(``GET /api/usage-stream``, server-sent events) and the configured endpoints with their
reachability (``GET /api/config``, NOMYO Router's shape).

All of them are admin routes (``api.guard.ADMIN_PATHS``). The page is one file
(``dashboard_page.html``) with its script and style inline, allowed by a nonce made per answer
under a strict ``Content-Security-Policy``; it loads nothing from anywhere but the gateway. A
browser's ``EventSource`` cannot send headers, so the page passes the key it was opened with
(``/?api_key=...``) on to the stream.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

import logs
from api.health import usage_maps
from backends import Endpoint

__all__ = ["router", "snapshot", "UsageStream", "PAGE_PATH", "POLL_SECONDS", "HEARTBEAT_SECONDS"]

router = APIRouter()

#: The page, with ``__NONCE__`` where each answer's nonce goes.
PAGE_PATH = Path(__file__).with_name("dashboard_page.html")
_PAGE = PAGE_PATH.read_text(encoding="utf-8")

#: How often an open stream looks for a change that no finished request announces (a slot taken,
#: an endpoint gone), and how soon it notices that its client left or the gateway is stopping.
POLL_SECONDS = 0.5
#: Longest time between two snapshots on a stream, changes or not.
HEARTBEAT_SECONDS = 5.0
#: Seconds at least between two snapshots: a busy gateway's requests are sent together, not one by one.
MIN_FRAME_SECONDS = 0.25
#: How long the browser waits before it reconnects a stream that ended (the SSE ``retry:`` field), ms.
RETRY_MS = 3000
#: Recent requests and background jobs a snapshot lists at most.
RECENT_IN_SNAPSHOT = 50
JOBS_IN_SNAPSHOT = 50


def _csp(nonce: str) -> str:
    return ("default-src 'self'; "
            f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'")


@router.get("/")
@router.get("/dashboard")
async def page() -> Response:
    """The dashboard page (HTML). Its inline script and style carry a nonce made for this answer;
    the ``Content-Security-Policy`` allows them and nothing else but the gateway itself
    (``default-src 'self'``, no framing, no referrer sent on)."""
    nonce = secrets.token_urlsafe(18)
    return Response(_PAGE.replace("__NONCE__", nonce), media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": _csp(nonce), "Referrer-Policy": "no-referrer",
                             "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                             "Cache-Control": "no-store"})


# ── snapshots ────────────────────────────────────────────────────────────────
def _endpoint(ep: Endpoint) -> dict:
    return {"url": ep.url, "kind": ep.kind, "reachable": ep.reachable, "error": ep.last_error,
            "models": sorted(ep.models), "loaded": sorted(ep.loaded)}


def _jobs(gateway: Any) -> dict:
    items = []
    counts = {"queued": 0, "in_progress": 0}
    for job in list(gateway.jobs.jobs.values()):
        status = "in_progress" if job.run.slot_taken else "queued"
        counts[status] += 1
        if len(items) < JOBS_IN_SNAPSHOT:
            items.append({"id": job.turn.id, "model": job.turn.model, "status": status,
                          "created_at": job.turn.created_at})
    return {**counts, "items": items}


def _cache(gateway: Any) -> dict | None:
    cache = gateway.cache
    if cache is None:
        return None
    hits, misses = cache.hits, cache.misses
    return {"backend": gateway.settings.cache_backend, "hits": hits, "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None}


def snapshot(gateway: Any, recent: logs.RecentRequests = logs.RECENT_REQUESTS) -> dict:
    """What the dashboard shows now, as a JSON-ready dict:

    - ``time``: Unix seconds; ``max_concurrent_connections``: the slots of each endpoint-model pair;
    - ``endpoints``: ``[{url, kind, reachable (bool or None before the first discovery), error,
      models, loaded}]`` as discovery last saw them (``loaded``: in memory, Ollama's ``/api/ps``;
      every served model for the other kinds);
    - ``slots``: ``[{endpoint, model, in_use}]``, the pairs with requests in flight on this process;
      ``queued``: ``[{model, queued}]``, requests waiting for a slot, by the model asked;
    - ``requests``: the newest finished requests first (:class:`logs.RecentRequests` summaries);
    - ``jobs``: background responses, ``{queued, in_progress, items: [{id, model, status, created_at}]}``;
    - ``cache``: ``{backend, hits, misses, hit_rate (0..1, None before any lookup)}``, None when off;
    - ``tokens``: ``[{endpoint, model, input_tokens, output_tokens}]`` since start-up;
    - ``usage_counts``, ``token_usage_counts``: NOMYO Router's own maps (:func:`api.health.usage_maps`),
      as its usage stream sent them.
    """
    registry = gateway.registry
    return {
        "time": round(time.time(), 3),
        "max_concurrent_connections": gateway.settings.max_concurrent_connections,
        "endpoints": [_endpoint(ep) for ep in list(registry.endpoints.values())],
        "slots": [{"endpoint": endpoint, "model": model, "in_use": count}
                  for (endpoint, model), count in sorted(registry.usage.items())],
        "queued": [{"model": model, "queued": count} for model, count in sorted(registry.queued.items())],
        "requests": recent.latest(RECENT_IN_SNAPSHOT),
        "jobs": _jobs(gateway),
        "cache": _cache(gateway),
        "tokens": [{"endpoint": endpoint, "model": model, "input_tokens": counts[0], "output_tokens": counts[1]}
                   for (endpoint, model), counts in sorted(gateway.token_stats.totals.items())],
        **usage_maps(gateway),
    }


# ── the stream ───────────────────────────────────────────────────────────────
class UsageStream(Response):
    """``text/event-stream`` of unnamed events (each ``data`` one :func:`snapshot`, which also has
    NOMYO Router's ``usage_counts`` and ``token_usage_counts``, so a client of its stream reads it
    with ``onmessage`` as before): one at once,
    then one whenever the snapshot changed (a request finished: at once, but at most one every
    :data:`MIN_FRAME_SECONDS`; anything else: within :data:`POLL_SECONDS`), and at least every
    :data:`HEARTBEAT_SECONDS`.

    It ends when its client leaves (noticed within :data:`POLL_SECONDS`) and when the gateway stops:
    the stream is one of the gateway's long-lived connections (``Gateway.sockets``), which the server
    drains (:meth:`drain`) before it waits for connections to close, so an open dashboard never
    holds a shutdown up.
    """

    def __init__(self, gateway: Any):  # no body, so no Content-Length: Response.__init__ is not for it
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]
        self.gateway = gateway
        self.stopping = False
        self.ended = asyncio.Event()

    async def drain(self) -> None:
        """The gateway is stopping: end the stream (within :data:`POLL_SECONDS`) and return once it has."""
        self.stopping = True
        await self.ended.wait()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        sockets = self.gateway.sockets
        sockets.add(self)
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._run(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the connection went away under the write
        finally:
            self.stopping = True
            watcher.cancel()
            sockets.discard(self)
            self.ended.set()

    async def _watch(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stopping = True

    async def _run(self, send: Any) -> None:
        loop = asyncio.get_running_loop()
        recent = logs.RECENT_REQUESTS
        prefix = f"retry: {RETRY_MS}\n".encode()
        last: bytes | None = None
        sent_at = 0.0
        while not self.stopping:
            seen = recent.last_seq
            snap = snapshot(self.gateway, recent)
            moment = snap.pop("time")
            fingerprint = orjson.dumps(snap)
            if fingerprint != last or loop.time() - sent_at >= HEARTBEAT_SECONDS:
                frame = orjson.dumps({"time": moment, **snap})
                await send({"type": "http.response.body", "body": prefix + b"data: " + frame + b"\n\n",
                            "more_body": True})
                prefix, last, sent_at = b"", fingerprint, loop.time()
                await asyncio.sleep(MIN_FRAME_SECONDS)
            await recent.wait(seen, POLL_SECONDS)


@router.get("/api/usage-stream")
async def usage_stream(request: Request) -> Response:
    """Server-sent events of the dashboard's snapshots (see :class:`UsageStream`)."""
    return UsageStream(request.app.state.gateway)


# ── configured endpoints ─────────────────────────────────────────────────────
async def _check(registry: Any, url: str, timeout: float) -> dict:
    """Ask the endpoint ``url`` now whether it answers: Ollama its ``/api/version``, the others
    their ``/v1/models``. ``{url, status: "ok", version?}`` or ``{url, status: "error", detail}``."""
    ep = registry.endpoints.get(url)
    if ep is None:  # configured, not (yet) in the registry: a reload under way
        return {"url": url, "status": "error", "detail": "not in the endpoint registry yet"}
    target = f"{ep.url}/api/version" if ep.kind == "ollama" else f"{ep.base_url}/models"
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    try:
        async with asyncio.timeout(timeout):
            reply = await registry.http.get(target, headers=headers)
        if reply.status_code != 200:
            return {"url": url, "status": "error", "detail": f"{target} answered HTTP {reply.status_code}"}
        data = orjson.loads(reply.content)
    except TimeoutError:
        return {"url": url, "status": "error", "detail": f"{target}: no answer within {timeout:g} s"}
    except Exception as exc:  # any failure only reports the endpoint down
        return {"url": url, "status": "error", "detail": f"{target}: {type(exc).__name__}: {exc}"}
    version = data.get("version") if isinstance(data, dict) and ep.kind == "ollama" else None
    return {"url": url, "status": "ok", **({"version": version} if isinstance(version, str) else {})}


@router.get("/api/config")
async def config(request: Request) -> Response:
    """The configured endpoints, each asked now (concurrently, each within ``connect_timeout``)
    whether it answers, in NOMYO Router's shape: ``{"endpoints": [{url, status: "ok"|"error",
    version? (Ollama's), detail? (why not)}], "llama_server_endpoints": [...],
    "require_router_api_key": bool}``."""
    gateway = request.app.state.gateway
    settings, registry = gateway.settings, gateway.registry
    urls = [*settings.endpoints, *settings.llama_server_endpoints]
    checks = await asyncio.gather(*(_check(registry, url, settings.connect_timeout) for url in urls))
    split = len(settings.endpoints)
    body = {"endpoints": list(checks[:split]), "llama_server_endpoints": list(checks[split:]),
            "require_router_api_key": bool(settings.key_owners)}
    return Response(orjson.dumps(body), media_type="application/json")
