"""Health, usage and metrics routes: ``/health/live``, ``/health``, ``/api/usage``
(``/v1/usage``), ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from metrics import REGISTRY

router = APIRouter()


def _json(data: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


@router.get("/health/live")
async def live() -> Response:
    """Liveness: the process answers. Needs no API key."""
    return _json({"status": "ok"})


@router.get("/health")
async def health(request: Request) -> Response:
    """Readiness: checks the store and asks every endpoint for its models now.

    200 when the store answers and at least one endpoint is reachable, else 503;
    the body gives the detail per endpoint, and the store's (``shared``: PostgreSQL, with
    ``replica``: this process's name among the replicas).
    """
    gateway = request.app.state.gateway
    registry = gateway.registry
    store_ok, store_error = True, None
    try:
        await asyncio.wait_for(gateway.store.check(), 5)
    except Exception as exc:
        store_ok, store_error = False, f"{type(exc).__name__}: {exc}"
    await registry.refresh_all()
    endpoints = [{"url": ep.url, "kind": ep.kind, "reachable": bool(ep.reachable),
                  "models": sorted(ep.models), "error": ep.last_error}
                 for ep in registry.endpoints.values()]
    ok = store_ok and any(ep["reachable"] for ep in endpoints)
    return _json({"status": "ok" if ok else "unavailable",
                  "store": {"ok": store_ok, "error": store_error, "writes_retrying": len(gateway.retrying),
                            "shared": gateway.store.shared, "replica": gateway.store.replica},
                  "endpoints": endpoints},
                 200 if ok else 503)


@router.get("/api/usage")
@router.get("/v1/usage")
async def usage(request: Request) -> Response:
    """Requests in flight per endpoint and model (usage slots taken now), requests waiting
    for a slot per model, and background jobs; and NOMYO Router's own two maps,
    ``usage_counts`` (``{endpoint: {model: in flight}}``) and ``token_usage_counts``
    (``{endpoint: {model: tokens}}``, prompt and completion, counted by this process)."""
    gateway = request.app.state.gateway
    rows = [{"endpoint": endpoint, "model": model, "in_flight": count}
            for (endpoint, model), count in sorted(gateway.registry.usage.items())]
    queued = [{"model": model, "queued": count} for model, count in sorted(gateway.registry.queued.items())]
    return _json({"in_flight": sum(r["in_flight"] for r in rows), "usage": rows,
                  "queued": sum(q["queued"] for q in queued), "queue": queued,
                  "background_jobs": len(gateway.jobs.jobs), **usage_maps(gateway)})


def usage_maps(gateway: Any) -> dict:
    """NOMYO Router's two usage maps: ``usage_counts`` (``{endpoint: {model: requests in
    flight}}``) and ``token_usage_counts`` (``{endpoint: {model: prompt + completion tokens}}``
    this process counted)."""
    usage_counts: dict[str, dict[str, int]] = {}
    for (endpoint, model), count in sorted(gateway.registry.usage.items()):
        usage_counts.setdefault(endpoint, {})[model] = count
    token_usage_counts: dict[str, dict[str, int]] = {}
    for (endpoint, model), (prompt, completion) in sorted(gateway.token_stats.totals.items()):
        token_usage_counts.setdefault(endpoint, {})[model] = prompt + completion
    return {"usage_counts": usage_counts, "token_usage_counts": token_usage_counts}


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
