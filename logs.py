"""The gateway's logging: the standard library's, configured once at start-up.

Every line carries the id of the request it belongs to (``X-Request-Id``), read from a
context variable that the request guard sets, so lines logged deep in the engine (and
in background jobs, which copy the context of the request that created them) name it too.
Each request ends with one summary line (:func:`request_line`): route, status, latency,
time to first byte, tenant, model asked and model/endpoint used, tokens, cache, error.

Formats: ``text`` (one human line) or ``json`` (one JSON object per line, for collectors).

Beside the log, :data:`RECENT_REQUESTS` keeps the summaries of the last requests this process
finished (whether or not ``log_requests`` is on) for the dashboard, which waits on it for the next.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections import deque
from typing import Any

import orjson

__all__ = ["configure_logging", "RequestInfo", "begin", "end", "note", "request_line", "REQUEST_LOG",
           "RecentRequests", "RECENT_REQUESTS"]

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


#: What a summary of :class:`RecentRequests` takes from the request's notes.
_RECENT_FIELDS = ("request_id", "tenant", "model", "upstream_model", "endpoint", "input_tokens", "output_tokens",
                  "cache", "error")


class RecentRequests:
    """The summaries of the last ``size`` finished requests, oldest first, and a way to wait for
    the next one (:meth:`wait`).

    Each summary is a dict: ``seq`` (1 for the first request ever added, counting up),
    ``time`` (Unix seconds, when it finished), ``method``, ``route`` (the path, no query),
    ``status``, ``latency_ms`` (start to last byte), and of the request's notes ``request_id``,
    ``tenant``, ``model`` (asked), ``upstream_model``, ``endpoint``, ``input_tokens``,
    ``output_tokens``, ``cache``, ``error`` (None when not noted). Adding costs one dict and
    wakes only the waiters there are; it is called on the event loop, never blocks.
    """

    def __init__(self, size: int = 200):
        self._entries: deque[dict] = deque(maxlen=size)
        self._waiters: set[asyncio.Future] = set()
        #: The ``seq`` of the newest summary (0: none yet).
        self.last_seq = 0

    def add(self, info: RequestInfo, method: str, route: str, status: int, started: float) -> None:
        """Keep the summary of a finished request (``started``: its ``perf_counter`` start) and
        wake everyone waiting for one. A liveness probe answered 200 is not kept: probed every
        few seconds, it would push the requests worth seeing out."""
        if route in _PROBES and status == 200:
            return
        self.last_seq += 1
        entry = {"seq": self.last_seq, "time": time.time(), "method": method, "route": route, "status": status,
                 "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        for key in _RECENT_FIELDS:
            entry[key] = info.get(key)
        self._entries.append(entry)
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                try:
                    waiter.set_result(None)
                except RuntimeError:  # its event loop is closed: nobody waits there any more
                    pass

    def latest(self, count: int) -> list[dict]:
        """The newest ``count`` summaries, newest first."""
        newest = []
        for entry in reversed(self._entries):
            if len(newest) >= count:
                break
            newest.append(entry)
        return newest

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until a summary newer than ``seq`` ``after`` is kept, at most ``timeout``
        seconds. True when one is (at once if it already was), False when the time ran out."""
        if self.last_seq > after:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            self._waiters.discard(waiter)
            waiter.cancel()
        return self.last_seq > after


#: The summaries of this process's last finished requests (fed by the request guard, ``api.guard``).
RECENT_REQUESTS = RecentRequests()
