"""A lean HTTP/1.1 keep-alive client for the load generator (asyncio protocol, no framework).

One :class:`Connection` carries one request at a time. Replies are parsed
incrementally (``Content-Length`` or chunked bodies); streamed bodies are split
into SSE frames as they arrive, and the arrival time of every content event is
recorded (``time.perf_counter()`` seconds at the moment its bytes were read).
Ollama's streams (NDJSON) are split into lines the same way. Stream frames of the
wrong shape are counted (``Reply.bad``), so a check can refuse the reply.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from urllib.parse import urlsplit

import orjson

#: Reply modes: a whole JSON body, a Responses event stream, a Chat Completions chunk stream,
#: Ollama's NDJSON stream (``/api/chat``).
JSON, SSE_RESPONSES, SSE_CHAT, NDJSON = 0, 1, 2, 3

_TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")
_DELTA = b"response.output_text.delta"
_CHUNK_OBJECT = b'"object":"chat.completion.chunk"'
_MAX_ERROR_BODY = 4096

_HEAD, _BODY, _CHUNKED, _TRAILER, _UNTIL_CLOSE, _DONE = range(6)


class Reply:
    """What one request got back.

    ``status``: HTTP status (0 when no reply came). ``t0``/``t_end``:
    perf_counter seconds when the request was written and when the reply ended.
    ``body``: the bytes of a JSON reply (or of any non-200 reply).
    ``content_times``: arrival times of content events (streams only).
    ``deltas``: how many content events. ``terminal``: the terminal event's name
    (``response.completed`` ...; ``[DONE]`` for Chat Completions; ``done`` for
    Ollama's ``done: true`` object, kept in ``final``), or None.
    ``usage_seen``: a Chat Completions usage chunk arrived. ``error``: a
    transport problem (timeout, connection closed), or None. ``bad``: stream
    frames (NDJSON lines) of the wrong shape: for Chat Completions any ``data:``
    frame that is not a ``chat.completion.chunk`` (an ``error`` frame) or comes after
    ``[DONE]``; for Ollama any line that is not a chat object, is an ``error``
    object, or comes after the ``done`` object. ``error_event``: the first of them
    (or a Responses ``error`` event).
    """

    __slots__ = ("mode", "status", "t0", "t_end", "body", "content_times", "deltas", "terminal",
                 "usage_seen", "error", "error_event", "bad", "final")

    def __init__(self, mode: int):
        self.mode = mode
        self.status = 0
        self.t0 = 0.0
        self.t_end = 0.0
        self.body = bytearray()
        self.content_times: list[float] = []
        self.deltas = 0
        self.terminal: str | None = None
        self.usage_seen = False
        self.error: str | None = None
        self.error_event: bytes | None = None
        self.bad = 0
        self.final: dict | None = None

    @property
    def latency(self) -> float:
        """Seconds from writing the request to the end of the reply."""
        return self.t_end - self.t0

    @property
    def ttft(self) -> float | None:
        """Seconds from writing the request to the first content event (streams), or None."""
        return self.content_times[0] - self.t0 if self.content_times else None


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection. Open with :meth:`open`; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.sse = bytearray()
        self.reply: Reply | None = None
        self.future: asyncio.Future | None = None
        self.state = _HEAD
        self.left = 0
        self.skip_crlf = False
        self.close_after = False
        self.on_first_content = None

    @classmethod
    async def open(cls, host: str, port: int, ssl: ssl_module.SSLContext | None = None,
                   timeout: float = 10.0) -> "Connection":
        """Connect to ``host:port`` (TLS with ``ssl``); raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(cls, host, port, ssl=ssl, server_hostname=host if ssl else None), timeout)
        return conn

    # asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.state == _UNTIL_CLOSE and self.reply is not None:
            self._finish(time.perf_counter())
        elif self.future is not None and not self.future.done():
            self.future.set_exception(ConnectionError(f"connection closed mid-reply ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.reply is None:
            return  # bytes nobody asked for: ignored, the next request will still parse cleanly
        self.buf += data
        self._parse(now)

    def eof_received(self) -> bool | None:
        return None

    # API ------------------------------------------------------------------------------
    async def send(self, request: bytes, mode: int, timeout: float, on_first_content=None) -> Reply:
        """Write ``request`` (complete HTTP/1.1 request bytes) and wait for the whole reply.

        ``mode`` is :data:`JSON`, :data:`SSE_RESPONSES` or :data:`SSE_CHAT`.
        Transport problems are returned in ``Reply.error``, never raised.
        ``on_first_content()`` is called when the first content event arrives.
        """
        reply = Reply(mode)
        if self.closed or self.transport is None:
            reply.error = "connection closed before the request"
            return reply
        loop = asyncio.get_running_loop()
        self.reply, self.future = reply, loop.create_future()
        self.state, self.left, self.skip_crlf, self.close_after = _HEAD, 0, False, False
        self.on_first_content = on_first_content
        self.sse.clear()
        future = self.future
        timer = loop.call_later(timeout, _expire, future, timeout)
        reply.t0 = time.perf_counter()
        self.transport.write(request)
        try:
            await future
        except (ConnectionError, TimeoutError) as exc:
            reply.error = str(exc) or type(exc).__name__
            reply.t_end = time.perf_counter()
            self.close()
        finally:
            timer.cancel()
            self.reply = self.future = None
        return reply

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # parsing ---------------------------------------------------------------------------
    def _parse(self, now: float) -> None:
        buf = self.buf
        if self.state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            parts = lines[0].split(b" ", 2)
            self.reply.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            length, chunked = None, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = value.strip().lower() == b"close"
            if chunked:
                self.state, self.left = _CHUNKED, 0
            elif length is not None:
                self.state, self.left = _BODY, length
                if length == 0:
                    return self._finish(now)
            else:
                self.state = _UNTIL_CLOSE
        if self.state == _BODY:
            take = min(len(buf), self.left)
            if take:
                self._feed(bytes(buf[:take]), now)
                del buf[:take]
                self.left -= take
            if self.left == 0:
                self._finish(now)
        elif self.state == _CHUNKED:
            self._parse_chunks(now)
        elif self.state == _UNTIL_CLOSE and buf:
            self._feed(bytes(buf), now)
            buf.clear()
        if self.state == _TRAILER:
            end = buf.find(b"\r\n")
            while end > 0:  # skip trailer fields up to the blank line
                del buf[:end + 2]
                end = buf.find(b"\r\n")
            if end == 0:
                del buf[:2]
                self._finish(now)

    def _parse_chunks(self, now: float) -> None:
        buf = self.buf
        while True:
            if self.left > 0:
                if not buf:
                    return
                take = min(len(buf), self.left)
                self._feed(bytes(buf[:take]), now)
                del buf[:take]
                self.left -= take
                if self.left:
                    return
                self.skip_crlf = True
            if self.skip_crlf:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.skip_crlf = False
            end = buf.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(buf[:end]).split(b";", 1)[0].strip() or b"0", 16)
            del buf[:end + 2]
            if size == 0:
                self.state = _TRAILER
                return
            self.left = size

    def _feed(self, data: bytes, now: float) -> None:
        reply = self.reply
        if reply.mode == JSON or reply.status != 200:
            if reply.mode == JSON or len(reply.body) < _MAX_ERROR_BODY:
                reply.body += data
            return
        sse = self.sse
        sse += data
        ndjson = reply.mode == NDJSON
        sep, step = (b"\n", 1) if ndjson else (b"\n\n", 2)
        pos = 0
        while True:
            end = sse.find(sep, pos)
            if end < 0:
                break
            if ndjson:
                if end > pos:
                    self._line(bytes(sse[pos:end]), now)
            else:
                self._frame(bytes(sse[pos:end]), now)
            pos = end + step
        if pos:
            del sse[:pos]

    def _line(self, line: bytes, now: float) -> None:
        """One NDJSON line of Ollama's ``/api/chat`` stream."""
        reply = self.reply
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or "error" in obj or reply.terminal is not None:
            return self._bad(line)
        done = obj.get("done")
        message = obj.get("message")
        if done is True:
            reply.terminal, reply.final = "done", obj
        elif done is False and isinstance(message, dict):
            if message.get("content"):
                self._content(reply, now)
        else:
            self._bad(line)

    def _bad(self, frame: bytes) -> None:
        reply = self.reply
        reply.bad += 1
        if reply.error_event is None:
            reply.error_event = frame[:_MAX_ERROR_BODY]

    def _frame(self, frame: bytes, now: float) -> None:
        reply = self.reply
        if reply.mode == SSE_RESPONSES:
            if not frame.startswith(b"event: "):
                return
            newline = frame.find(b"\n")
            kind = frame[7:newline] if newline > 0 else frame[7:]
            if kind == _DELTA:
                self._content(reply, now)
            elif kind in _TERMINAL:
                reply.terminal = kind.decode()
            elif kind == b"error":
                reply.error_event = frame[:_MAX_ERROR_BODY]
            return
        if not frame.startswith(b"data:"):
            return
        payload = frame[5:].strip()
        if reply.terminal is not None:
            return self._bad(frame)
        if payload == b"[DONE]":
            reply.terminal = "[DONE]"
            return
        if _CHUNK_OBJECT in payload:  # compact JSON (orjson's, the gateway's and the bench backend's)
            content = b'"content":"' in payload and b'"content":""' not in payload
            usage = b'"usage":{' in payload
        else:
            obj = _chunk_of(payload)
            if obj is None:
                return self._bad(frame)
            choices = obj.get("choices")
            delta = (choices[0].get("delta") if choices and isinstance(choices[0], dict) else None) or {}
            content = isinstance(delta, dict) and bool(delta.get("content"))
            usage = isinstance(obj.get("usage"), dict)
        if content:
            self._content(reply, now)
        if usage:
            reply.usage_seen = True

    def _content(self, reply: Reply, now: float) -> None:
        reply.deltas += 1
        reply.content_times.append(now)
        if reply.deltas == 1 and self.on_first_content is not None:
            self.on_first_content()

    def _finish(self, now: float) -> None:
        self.state = _DONE
        if self.reply is not None and self.reply.mode == NDJSON and self.sse.strip():
            self._line(bytes(self.sse), now)  # a last line without its newline
            self.sse.clear()
        if self.reply is not None:
            self.reply.t_end = now
        if self.close_after:
            self.close()
        if self.future is not None and not self.future.done():
            self.future.set_result(None)


def _chunk_of(payload: bytes) -> dict | None:
    """An SSE ``data:`` payload parsed, when it is a ``chat.completion.chunk`` object (else None);
    for JSON the compact byte tests of :meth:`Connection._frame` do not read."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.get("object") == "chat.completion.chunk" else None


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no complete reply within {timeout:g}s"))


class Target:
    """Where requests go: ``http(s)://host:port`` plus a path prefix, and optional bearer key."""

    def __init__(self, url: str, api_key: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl_module.create_default_context() if parts.scheme == "https" else None
        self.api_key = api_key
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"

    async def connect(self) -> Connection:
        """A new keep-alive connection to this target."""
        return await Connection.open(self.host, self.port, self.ssl)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The complete request bytes for ``method path`` with a JSON ``body`` (prefix applied)."""
        lines = [f"{method} {self.prefix}{path} HTTP/1.1", f"host: {self.host_header}",
                 "accept: */*", "user-agent: nomyo-bench"]
        if self.api_key:
            lines.append(f"authorization: Bearer {self.api_key}")
        if body is not None:
            lines += ["content-type: application/json", f"content-length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def fetch_json(target: Target, method: str, path: str, body: bytes | None = None,
                     timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection: ``(status, body bytes)``; status 0 on transport failure."""
    try:
        conn = await target.connect()
    except (OSError, TimeoutError) as exc:
        return 0, str(exc).encode()
    try:
        reply = await conn.send(target.request(method, path, body), JSON, timeout)
    finally:
        conn.close()
    return reply.status, bytes(reply.body) if reply.error is None else reply.error.encode()
