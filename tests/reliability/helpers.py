"""Helpers of the reliability tests: SSE parsing, polling, store inspection, metrics."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

TERMINAL = ("completed", "failed", "cancelled", "incomplete")
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
ERROR_KEYS = {"message", "type", "param", "code"}


#: ``/api/usage`` of a gateway with nothing running or waiting.
IDLE = {"in_flight": 0, "usage": [], "queued": 0, "queue": [], "background_jobs": 0, "usage_counts": {}}


def sse(text: str) -> list[dict]:
    """Parse a whole SSE body into event dicts; each ``event:`` line must equal the ``type``."""
    events = []
    for frame in text.strip().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        event = orjson.loads(lines["data"])
        assert lines["event"] == event["type"], frame
        events.append(event)
    return events


async def read_events(response: httpx.Response, limit: int | None = None) -> list[dict]:
    """Events of a streamed httpx response; stops after ``limit`` events when given."""
    events: list[dict] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(orjson.loads(line[6:]))
            if limit is not None and len(events) >= limit:
                break
    return events


def assert_openai_error(reply: httpx.Response, status: int, code: str | None = ...) -> dict:
    """Check ``reply`` is an OpenAI-shaped error with ``status`` (and ``code``); return the error."""
    assert reply.status_code == status, (reply.status_code, reply.text[:500])
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not ...:
        assert error["code"] == code, error
    return error


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Await ``check()`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def poll_status(http: httpx.AsyncClient, rid: str, until=TERMINAL, timeout: float = 10.0,
                      **kwargs) -> dict:
    """GET the response until its status is in ``until``; return it."""
    async def check():
        reply = await http.get(f"/v1/responses/{rid}", **kwargs)
        assert reply.status_code == 200, reply.text
        obj = reply.json()
        return obj if obj["status"] in until else None
    return await wait_for(check, timeout, 0.03)


async def usage(http: httpx.AsyncClient, headers: dict | None = None, path: str = "/api/usage") -> dict:
    """``GET /api/usage`` (or ``path``) as a dict, less ``token_usage_counts`` (tokens served so
    far, not load)."""
    reply = await http.get(path, headers=headers)
    assert reply.status_code == 200, reply.text
    return {key: value for key, value in reply.json().items() if key != "token_usage_counts"}


async def wait_idle(http: httpx.AsyncClient, *servers: Any, timeout: float = 5.0,
                    headers: dict | None = None) -> None:
    """Wait until the gateway has nothing in flight, no background job, and every
    backend server has no request in flight."""
    async def idle():
        now = await usage(http, headers)
        return (now["in_flight"] == 0 and now["usage"] == [] and now["background_jobs"] == 0
                and all(s.in_flight == 0 for s in servers))
    await wait_for(idle, timeout, 0.05)


def store_rows(db_path: Path | str) -> dict[str, tuple[str, Any]]:
    """``{id: (status column, Response object)}`` of every stored response, read directly."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT id, status, response FROM responses").fetchall()
    finally:
        con.close()
    return {rid: (status, orjson.loads(text) if text else None) for rid, status, text in rows}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels`` in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def nested_lists(depth: int, leaf: bytes = b'"x"') -> bytes:
    """JSON text of ``depth`` nested lists around ``leaf``."""
    return b"[" * depth + leaf + b"]" * depth
