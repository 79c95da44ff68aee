"""A fast fake OpenAI-compatible backend for the benchmark (raw asyncio HTTP/1.1).

Run as ``python -m bench.backend --port 0``; it prints ``READY <port>`` on
stdout once it listens. Routes:

* ``GET /v1/models``: the models :data:`MODELS` in OpenAI's list shape.
* ``POST /v1/chat/completions``: answers at once. The reply has ``max_tokens``
  (or ``max_completion_tokens``) words, default ``--tokens``. Non-streamed: one
  JSON completion with ``usage``. Streamed: a role chunk, one chunk per word, a
  ``finish_reason`` chunk, a usage chunk when ``stream_options.include_usage``,
  then ``data: [DONE]``. The model ``bench-paced`` spaces the word chunks by
  ``--pace-ms`` milliseconds; ``bench`` sends the whole stream in one write.
  A request that offers ``tools`` is answered with one call of the first tool
  (arguments ``{}``, ``finish_reason: "tool_calls"``), the way an agent loop runs.
* ``GET /bench/stats``: counters (``chat_requests``, ``connections`` accepted,
  ``unused_connections`` closed without a request, ``streams_active``,
  ``streams_peak``); ``POST /bench/reset`` zeroes them.

Only what the benchmark needs of HTTP/1.1 is implemented: keep-alive,
``Content-Length`` request bodies, chunked streamed replies.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import orjson

#: The model names served; ``bench-paced`` streams with pacing.
MODELS = ("bench", "bench-paced")
PACED_MODEL = "bench-paced"
WORD = "lorem"

_JSON_HEAD = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
             b"transfer-encoding: chunked\r\n%s\r\n")
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required"}
_MAX_HEAD = 64 * 1024


class Stats:
    """Counters shared by every connection of one backend process."""

    def __init__(self) -> None:
        self.chat_requests = 0
        self.connections = 0
        self.unused_connections = 0
        self.streams_active = 0
        self.streams_peak = 0

    def as_dict(self) -> dict:
        """The counters as a JSON-ready dict."""
        return {"chat_requests": self.chat_requests, "connections": self.connections,
                "unused_connections": self.unused_connections, "streams_active": self.streams_active, "streams_peak": self.streams_peak}


def _chunk(payload: bytes) -> bytes:
    """One HTTP chunk of ``payload`` (chunked transfer encoding)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _prompt_tokens(messages: list) -> int:
    """A rough token count of the prompt: characters of text content / 4, at least 1."""
    chars = 0
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return max(1, chars // 4)


class BackendProtocol(asyncio.Protocol):
    """One client connection: parses requests in order, answers each before the next."""

    def __init__(self, stats: Stats, tokens: int, pace: float):
        self.stats = stats
        self.tokens = tokens
        self.pace = pace
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False          # a paced stream is being written
        self.close_after = False
        self.counter = 0           # chat completions answered on this connection
        self.served = 0            # requests of any route answered on this connection

    # connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.counter and not self.served:
            self.stats.unused_connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        """Answer every complete request in the buffer (stops while a paced stream runs)."""
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.transport.close()
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            path = rest.partition(b" ")[0]
            length = 0
            keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    length = -1
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
            if length < 0:
                self._json(411, {"error": {"message": "chunked request bodies are not supported"}})
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            self.close_after = not keep_alive
            self._handle(method, path, body)
            if self.close_after and not self.busy and self.transport is not None:
                self.transport.close()

    # routes ---------------------------------------------------------------------
    def _json(self, status: int, data: dict) -> None:
        body = orjson.dumps(data)
        extra = b"connection: close\r\n" if self.close_after else b""
        self.transport.write(_JSON_HEAD % (status, _REASONS.get(status, b"Error"), len(body), extra) + body)

    def _handle(self, method: bytes, path: bytes, body: bytes) -> None:
        self.served += 1
        path = path.partition(b"?")[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            self._chat(body)
        elif method == b"GET" and path == b"/v1/models":
            now = int(time.time())
            self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": now, "owned_by": "bench"} for m in MODELS]})
        elif method == b"GET" and path == b"/bench/stats":
            self._json(200, self.stats.as_dict())
        elif method == b"POST" and path == b"/bench/reset":
            self.stats.chat_requests = self.stats.connections = self.stats.unused_connections = 0
            self.stats.streams_peak = self.stats.streams_active
            self._json(200, self.stats.as_dict())
        else:
            self._json(404, {"error": {"message": f"no route {method.decode()} {path.decode()}"}})

    def _chat(self, body: bytes) -> None:
        try:
            req = orjson.loads(body)
            messages = req["messages"]
            model = req["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._json(400, {"error": {"message": "the body needs 'model' and 'messages'",
                                       "type": "invalid_request_error"}})
            return
        if model not in MODELS:
            self._json(404, {"error": {"message": f"model {model!r} not found"}})
            return
        self.stats.chat_requests += 1
        self.counter += 1
        tokens = req.get("max_tokens") or req.get("max_completion_tokens") or self.tokens
        tokens = max(1, int(tokens))
        usage = {"prompt_tokens": _prompt_tokens(messages), "completion_tokens": tokens,
                 "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + tokens
        cid = f"chatcmpl-bench{id(self):x}{self.counter}"
        created = int(time.time())
        tools = req.get("tools")
        if isinstance(tools, list) and tools:
            name = ((tools[0] or {}).get("function") or {}).get("name") or "tool"
            self._tool_call(cid, created, model, name, bool(req.get("stream")), usage)
            return
        if not req.get("stream"):
            text = " ".join([WORD] * tokens)
            self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}],
                             "usage": usage})
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self._stream(cid, created, model, tokens, usage if include_usage else None,
                     self.pace if model == PACED_MODEL else 0.0)

    def _tool_call(self, cid: str, created: int, model: str, name: str, stream: bool, usage: dict) -> None:
        """One call of ``name``, whole or as a stream (its arguments in one chunk)."""
        call = {"id": f"call_{cid[-12:]}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        if not stream:
            self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                                  "tool_calls": [call]},
                                          "finish_reason": "tool_calls"}], "usage": usage})
            return
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        frames = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                      {"index": 0, **call}]}, "finish_reason": None}]},
                  {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
                  {**head, "choices": [], "usage": usage}]
        body = b"".join(_chunk(b"data: " + orjson.dumps(frame) + b"\n\n") for frame in frames)
        extra = b"connection: close\r\n" if self.close_after else b""
        self.transport.write(_SSE_HEAD % extra + body + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    # streaming ------------------------------------------------------------------
    def _stream(self, cid: str, created: int, model: str, tokens: int, usage: dict | None,
                pace: float) -> None:
        head = orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": model})[:-1]
        role = _chunk(b"data: " + head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                      b'"finish_reason":null}]}\n\n')
        word = _chunk(b"data: " + head + b',"choices":[{"index":0,"delta":{"content":"' + WORD.encode()
                      + b' "},"finish_reason":null}]}\n\n')
        tail = _chunk(b"data: " + head + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
        if usage is not None:
            tail += _chunk(b"data: " + head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
        tail += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        extra = b"connection: close\r\n" if self.close_after else b""
        stats = self.stats
        stats.streams_active += 1
        stats.streams_peak = max(stats.streams_peak, stats.streams_active)
        if pace <= 0 or tokens == 1:
            self.transport.write(_SSE_HEAD % extra + role + word * tokens + tail)
            stats.streams_active -= 1
            return
        self.busy = True
        self.transport.write(_SSE_HEAD % extra + role + word)
        loop = asyncio.get_running_loop()
        state = {"left": tokens - 1}

        def tick() -> None:
            transport = self.transport
            if transport is None or transport.is_closing():
                stats.streams_active -= 1
                return
            state["left"] -= 1
            if state["left"] > 0:
                transport.write(word)
                loop.call_later(pace, tick)
                return
            transport.write(word + tail)
            stats.streams_active -= 1
            self.busy = False
            if self.close_after:
                transport.close()
            elif self.buf:
                self._drain()

        loop.call_later(pace, tick)


async def serve(host: str, port: int, tokens: int, pace_ms: float, ready=None) -> None:
    """Listen on ``host:port`` (0: any free port) until cancelled or SIGTERM.

    ``ready(port)`` is called once listening. ``tokens``: default words per
    reply; ``pace_ms``: milliseconds between word chunks of ``bench-paced``.
    """
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(lambda: BackendProtocol(stats, tokens, pace_ms / 1000.0),
                                      host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready(bound)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m bench.backend [--host H] [--port P] [--tokens N] [--pace-ms M]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=16, help="words per reply without max_tokens")
    parser.add_argument("--pace-ms", type=float, default=50.0, help="ms between chunks of bench-paced")
    args = parser.parse_args(argv)
    def ready(port: int) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    run(serve(args.host, args.port, args.tokens, args.pace_ms, ready))


def run(coro) -> object:
    """Run ``coro`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    main()
