"""The agent-loop phase: one tool loop of ``turns`` turns, over a WebSocket and over HTTP/SSE.

Each loop starts with a user message and one function tool; the bench backend calls the
tool every turn, and every next turn sends only the tool's output with
``previous_response_id``: on the WebSocket with ``store: false`` (the socket keeps the last
response), over HTTP with ``store: true`` (the gateway reads the chain from its store), both
streamed. Loops of the two transports alternate. Measured per transport: the wall time of a
whole loop (ms; median and best of ``loops``) and the gateway's CPU per turn (ms; its process
CPU over all loops of that transport, divided by their turns).
"""

from __future__ import annotations

import statistics
import time

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.procs import cpu_seconds

__all__ = ["run_tool_loops"]

TOOL = {"type": "function", "name": "lookup", "description": "look a thing up",
        "parameters": {"type": "object", "properties": {}}}


def _call_of(response: dict) -> str:
    calls = [item for item in response.get("output") or [] if item.get("type") == "function_call"]
    if not calls:
        raise RuntimeError(f"the turn made no tool call: {str(response)[:300]}")
    return calls[0]["call_id"]


def _body(model: str, turn: int, previous: str | None, call_id: str | None, store: bool) -> dict:
    given = [{"role": "user", "content": "Find it, step by step."}] if turn == 0 else \
        [{"type": "function_call_output", "call_id": call_id, "output": f"step {turn} done"}]
    body = {"model": model, "input": given, "tools": [TOOL], "store": store, "max_output_tokens": 16}
    if previous:
        body["previous_response_id"] = previous
    return body


async def _socket_loop(url: str, model: str, turns: int, headers: dict) -> float:
    started = time.perf_counter()
    async with connect(url, max_size=None, additional_headers=headers) as ws:
        previous = call_id = None
        for turn in range(turns):
            await ws.send(orjson.dumps({"type": "response.create", **_body(model, turn, previous, call_id, False)}))
            while True:
                event = orjson.loads(await ws.recv())
                if event["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
                    break
            if event["type"] != "response.completed":
                raise RuntimeError(f"turn {turn} over the WebSocket ended with {str(event)[:300]}")
            previous, call_id = event["response"]["id"], _call_of(event["response"])
    return time.perf_counter() - started


async def _http_loop(http: httpx.AsyncClient, model: str, turns: int) -> float:
    started = time.perf_counter()
    previous = call_id = None
    for turn in range(turns):
        final = None
        async with http.stream("POST", "/v1/responses",
                               json={**_body(model, turn, previous, call_id, True), "stream": True}) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    event = orjson.loads(line[6:])
                    if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                        final = event
        if final is None or final["type"] != "response.completed":
            raise RuntimeError(f"turn {turn} over HTTP ended with {str(final)[:300]}")
        previous, call_id = final["response"]["id"], _call_of(final["response"])
    return time.perf_counter() - started


async def run_tool_loops(base_url: str, pid: int | None, model: str, *, api_key: str | None = None,
                         turns: int = 20, loops: int = 5) -> dict:
    """Run ``loops`` loops of ``turns`` turns per transport against the gateway at ``base_url``
    (``pid``: its process, for CPU; None: not measured; ``api_key``: its bearer key). Returns
    ``{"websocket": {...}, "http_sse": {...}, "turns", "loops", "wall_ratio"}``; each side has
    ``wall_ms`` (median, best), ``cpu_ms_per_turn`` and ``errors``."""
    socket_url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/responses"
    walls: dict[str, list[float]] = {"websocket": [], "http_sse": []}
    cpu = {"websocket": 0.0, "http_sse": 0.0}
    errors = {"websocket": 0, "http_sse": 0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, trust_env=False, headers=headers) as http:
        for round_ in range(loops + 1):  # the first loop of each warms up, unmeasured
            for side in ("websocket", "http_sse"):
                before = cpu_seconds(pid) if pid else 0.0
                try:
                    wall = await (_socket_loop(socket_url, model, turns, headers) if side == "websocket"
                                  else _http_loop(http, model, turns))
                except (RuntimeError, OSError, httpx.HTTPError, WebSocketException) as exc:
                    errors[side] += 1
                    print(f"tool loop over {side} failed: {exc}")
                    continue
                if round_ > 0:
                    walls[side].append(wall)
                    cpu[side] += (cpu_seconds(pid) - before) if pid else 0.0
    out: dict = {"turns": turns, "loops": loops}
    for side, values in walls.items():
        out[side] = {"wall_ms": {"median": statistics.median(values) * 1000 if values else None,
                                 "best": min(values) * 1000 if values else None},
                     "cpu_ms_per_turn": cpu[side] * 1000 / (len(values) * turns) if pid and values else None,
                     "errors": errors[side], "loops": len(values)}
    ws, http_side = out["websocket"]["wall_ms"]["median"], out["http_sse"]["wall_ms"]["median"]
    out["wall_ratio"] = ws / http_side if ws and http_side else None
    return out
