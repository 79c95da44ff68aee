"""The response cache's management routes, NOMYO Router's: ``GET /api/cache/stats`` and
``POST /api/cache/invalidate``. Both show or change every tenant's cache, so they need the
admin key once any key is configured (``api.guard.ADMIN_PATHS``)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from cache import CacheUnavailable
from errors import APIError

router = APIRouter()


def _json(data: dict) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.get("/api/cache/stats")
async def cache_stats(request: Request) -> Response:
    """``{"enabled": false}`` when ``cache_enabled`` is off; else ``{"enabled": true, ...}``
    with the cache's counters and settings (``cache.LLMCache.stats``: ``hits``, ``misses``,
    ``hit_rate``, ``semantic_hits``, ``semantic``, ``similarity_threshold``,
    ``history_weight``, ``backend``, ``entries``, ``max_entries``, ``ttl``), as NOMYO Router
    answers with a few more fields. Counters are this process's since it started or since the
    last invalidate."""
    cache = request.app.state.gateway.cache
    if cache is None:
        return _json({"enabled": False})
    return _json({"enabled": True, **await cache.stats()})


@router.post("/api/cache/invalidate")
async def cache_invalidate(request: Request) -> Response:
    """Drop every cached answer and zero the counters: ``{"enabled": true, "cleared": true,
    "entries_removed": n}`` (``n`` null when the store could not count them). The body, if
    any, must be empty or ``{}``.

    Errors: 409 ``cache_disabled`` when ``cache_enabled`` is off (there is nothing to clear;
    NOMYO Router answers ``{"enabled": false, "cleared": false}`` with a 200), 400 for a body
    with fields, 503 ``cache_unavailable`` when the cache's Redis cannot be reached."""
    body = await request.body()
    if body.strip():
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise APIError(400, "The body of POST /api/cache/invalidate must be empty or {}.") from None
        if fields != {}:
            names = ", ".join(map(repr, fields)) if isinstance(fields, dict) else repr(fields)
            raise APIError(400, f"POST /api/cache/invalidate takes no fields; got {names}.",
                           param=next(iter(fields), None) if isinstance(fields, dict) else None)
    cache = request.app.state.gateway.cache
    if cache is None:
        raise APIError(409, "The response cache is off (cache_enabled: false): there is nothing to invalidate.",
                       param="cache_enabled", code="cache_disabled")
    try:
        removed = await cache.invalidate()
    except CacheUnavailable as exc:
        raise APIError(503, f"{exc}.", code="cache_unavailable") from None
    return _json({"enabled": True, "cleared": True, "entries_removed": removed})
