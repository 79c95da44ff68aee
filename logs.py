"""The gateway's logging: the standard library's, configured once at start-up.

Every line carries the id of the request it belongs to (``X-Request-Id``), read from a
context variable that the request guard sets, so lines logged deep in the engine (and
in background jobs, which copy the context of the request that created them) name it too.
Each request ends with one summary line (:func:`request_line`): route, status, latency,
time to first byte, tenant, model asked and model/endpoint used, tokens, cache, error.

Formats: ``text`` (one human line) or ``json`` (one JSON object per line, for collectors).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["configure_logging", "RequestInfo", "begin", "end", "note", "request_line", "REQUEST_LOG"]

#: The logger of the per-request summary lines.
REQUEST_LOG = logging.getLogger("nomyo_router.request")

#: Fields of a request summary in the order the text format prints them.
_TEXT_FIELDS = ("tenant", "model", "upstream_model", "endpoint", "response_id", "response_status", "input_tokens",
                "output_tokens", "cache", "ttfb_ms", "error")


class RequestInfo(dict):
    """What is known of the request being served: ``request_id`` and whatever the engine
    notes (:func:`note`) on the way; one per HTTP request."""


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("nomyo_request", default=None)


def begin(request_id: str) -> tuple[RequestInfo, contextvars.Token]:
    """Start the context of a request; give the token back to :func:`end`."""
    info = RequestInfo(request_id=request_id)
    return info, _current.set(info)


def end(token: contextvars.Token) -> None:
    """End the context :func:`begin` started."""
    _current.reset(token)


def note(**fields: Any) -> None:
    """Add ``fields`` to the current request's summary (nothing outside a request)."""
    info = _current.get()
    if info is not None:
        info.update(fields)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        info = _current.get()
        record.request_id = info["request_id"] if info is not None else "-"
        return True


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                                "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the ``nomyo_router`` loggers to stderr at ``level`` in ``fmt`` (``text`` or ``json``),
    replacing what an earlier call set up. uvicorn's own loggers are left as uvicorn set them."""
    root = logging.getLogger("nomyo_router")
    for handler in list(root.handlers):
        if getattr(handler, "nomyo_router", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.nomyo_router = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


#: Paths probed every few seconds by orchestrators: their lines are debug, not info.
_PROBES = frozenset({"/health/live"})


def request_line(info: RequestInfo, method: str, route: str, status: int, started: float) -> None:
    """Log the summary line of a finished request (``started``: its ``perf_counter`` start)."""
    level = logging.DEBUG if route in _PROBES and status == 200 else logging.INFO
    if not REQUEST_LOG.isEnabledFor(level):
        return
    fields = {"method": method, "route": route, "status": status,
              "latency_ms": round((time.perf_counter() - started) * 1000, 2),
              **{k: v for k, v in info.items() if k != "request_id" and v is not None}}
    text = " ".join(f"{key}={fields[key]}" for key in _TEXT_FIELDS if key in fields)
    REQUEST_LOG.log(level, "%s %s %s %.2fms%s", method, route, status, fields["latency_ms"],
                    f" {text}" if text else "", extra={"fields": fields})
