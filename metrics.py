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

__all__ = ["REGISTRY", "REQUESTS", "REQUEST_SECONDS", "BACKEND_ERRORS", "CACHE_LOOKUPS", "route_family",
           "watch_in_flight"]

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

_FAMILIES = ("/v1/responses", "/v1/models", "/health", "/api/usage", "/v1/usage", "/metrics")


def route_family(path: str) -> str:
    """A bounded label for ``path``: ids are replaced by ``{id}``, unknown paths are ``other``."""
    if path.startswith("/v1/responses/"):
        rest = path[len("/v1/responses/"):]
        _, _, tail = rest.partition("/")
        return "/v1/responses/{id}" + (f"/{tail}" if tail in ("cancel", "input_items") else "")
    if path in _FAMILIES or path == "/health/live":
        return path
    return "other"


class _InFlight:
    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("nomyo_router_in_flight", "Upstream requests in flight, by endpoint and model.",
                                  labels=["endpoint", "model"])
        for (endpoint, model), count in self.read().items():
            gauge.add_metric([endpoint, model], count)
        yield gauge


_in_flight: _InFlight | None = None


def watch_in_flight(read: Callable[[], dict]) -> None:
    """Report ``read()`` (``{(endpoint, model): count}``) as the in-flight gauge from now on."""
    global _in_flight
    if _in_flight is None:
        _in_flight = _InFlight(read)
        REGISTRY.register(_in_flight)
    else:
        _in_flight.read = read
