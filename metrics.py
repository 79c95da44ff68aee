"""Prometheus metrics of the gateway (``GET /metrics``).

Request counts and durations are recorded by the HTTP middleware per route
family; backend errors and cache lookups where they happen; requests in flight
per endpoint are read from the registry when scraped, so the hot path pays
nothing for them.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

__all__ = ["REGISTRY", "REQUESTS", "REQUEST_SECONDS", "BACKEND_ERRORS", "CACHE_LOOKUPS", "ERRORS", "TURNS",
           "TURN_SECONDS", "FIRST_TOKEN_SECONDS", "TOKENS", "QUEUE_SECONDS", "BACKGROUND_FINISHED", "route_family",
           "watch_gateway"]

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("nomyo_router_requests", "HTTP requests answered, by route family and status code.",
                   ["route", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("nomyo_router_request_seconds",
                            "Time from request start to the last byte of the answer, by route family.",
                            ["route"], registry=REGISTRY,
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
BACKEND_ERRORS = Counter("nomyo_router_backend_errors", "Failed upstream calls, by endpoint and kind.",
                         ["endpoint", "kind"], registry=REGISTRY)
CACHE_LOOKUPS = Counter("nomyo_router_cache_lookups", "Response cache lookups, by result (hit or miss).",
                        ["result"], registry=REGISTRY)
ERRORS = Counter("nomyo_router_errors", "Error answers, by route family, status and error code.",
                 ["route", "status", "code"], registry=REGISTRY)

_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
TURNS = Counter("nomyo_router_turns", "Responses run against a backend, by endpoint, model and final status.",
                ["endpoint", "model", "status"], registry=REGISTRY)
TURN_SECONDS = Histogram("nomyo_router_turn_seconds", "Time from a turn's start to its final state, by endpoint "
                         "and model.", ["endpoint", "model"], registry=REGISTRY, buckets=_TURN_BUCKETS)
FIRST_TOKEN_SECONDS = Histogram("nomyo_router_time_to_first_token_seconds", "Time from a streamed turn's start "
                                "to its backend's first chunk, by endpoint and model.", ["endpoint", "model"],
                                registry=REGISTRY, buckets=_TURN_BUCKETS)
TOKENS = Counter("nomyo_router_tokens", "Tokens the backends reported, by endpoint, model and kind (input, output).",
                 ["endpoint", "model", "kind"], registry=REGISTRY)
QUEUE_SECONDS = Histogram("nomyo_router_queue_wait_seconds", "Time a request waited for a backend slot, by model "
                          "asked.", ["model"], registry=REGISTRY,
                          buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BACKGROUND_FINISHED = Counter("nomyo_router_background_jobs_finished", "Background responses ended, by final "
                              "status.", ["status"], registry=REGISTRY)

_FAMILIES = frozenset({
    "/v1/responses", "/v1/responses/input_tokens", "/v1/responses/compact", "/v1/conversations", "/v1/models",
    "/health", "/api/usage", "/v1/usage", "/metrics",
    # OpenAI's routes passed through, and Ollama's
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/rerank",
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/tags", "/api/ps",
    "/api/ps_details", "/api/version", "/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create",
    # token statistics, the cache, the dashboard
    "/api/token_counts", "/api/stats", "/api/aggregate_time_series_days", "/api/cache/stats",
    "/api/cache/invalidate", "/", "/dashboard", "/api/usage-stream", "/api/config"})


def route_family(path: str) -> str:
    """A bounded label for ``path``: ids are replaced by ``{id}``, unknown paths are ``other``."""
    if path in _FAMILIES or path == "/health/live":
        return path
    if path.startswith("/v1/conversations/"):
        _, _, tail = path[len("/v1/conversations/"):].partition("/")
        return "/v1/conversations/{id}" + ("/items/{id}" if "/" in tail else "/items" if tail == "items" else "")
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path.startswith("/v1/responses/"):
        rest = path[len("/v1/responses/"):]
        _, _, tail = rest.partition("/")
        return "/v1/responses/{id}" + (f"/{tail}" if tail in ("cancel", "input_items") else "")
    return "other"


class _Gauges:
    """The gauges read from the running gateway when scraped: ``read()`` gives
    ``{"in_flight": {(endpoint, model): n}, "queued": {model: n}, "background": {status: n}}``."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self.read()
        in_flight = GaugeMetricFamily("nomyo_router_in_flight", "Backend slots in use, by endpoint and model.",
                                      labels=["endpoint", "model"])
        for (endpoint, model), count in now.get("in_flight", {}).items():
            in_flight.add_metric([endpoint, model], count)
        queued = GaugeMetricFamily("nomyo_router_queued", "Requests waiting for a backend slot, by model asked.",
                                   labels=["model"])
        for model, count in now.get("queued", {}).items():
            queued.add_metric([model], count)
        background = GaugeMetricFamily("nomyo_router_background_jobs", "Background responses now, by status "
                                       "(queued: waiting for a slot; in_progress).", labels=["status"])
        for status, count in now.get("background", {}).items():
            background.add_metric([status], count)
        yield from (in_flight, queued, background)


_gauges: _Gauges | None = None


def watch_gateway(read: Callable[[], dict]) -> None:
    """Report ``read()`` (see :class:`_Gauges`) as the gauges from now on."""
    global _gauges
    if _gauges is None:
        _gauges = _Gauges(read)
        REGISTRY.register(_gauges)
    else:
        _gauges.read = read
