"""The HTTP client of one OpenAI-compatible endpoint's ``POST /v1/chat/completions``.

One pooled ``aiohttp`` session per endpoint for the life of the process
(keep-alive, a bounded pool, connect and read timeouts). A request body goes
out as the bytes the caller serialized; a whole answer comes back as a plain
dict, a stream as a :class:`ChatStream` of chunk dicts. Failures are mapped to
the gateway's errors in one place: :class:`ConnectFailed` (nothing was
answered: the caller may retry or fail over), :class:`errors.BackendTimeout`,
the upstream's own status and message as :class:`errors.APIError`, and
:class:`errors.BackendStreamError` for a stream that broke after it started.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson

from errors import APIError, BackendStreamError, BackendTimeout

__all__ = ["ChatClient", "ChatStream", "LineStream", "ConnectFailed", "upstream_error"]

#: Seconds an idle upstream connection is kept: under the 5 s after which uvicorn,
#: llama.cpp's server and many others close idle connections, so a pooled
#: connection is not reused just as the server closes it.
KEEPALIVE_EXPIRY = 4.0


class ConnectFailed(Exception):
    """The request got no answer: the connection failed or was closed before any byte came back."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def upstream_error(status: int, body: Any, fallback: str) -> APIError:
    """The gateway's error for an upstream error answer: its status (502 when it is not
    an error status), and the ``message``, ``type`` and ``code`` of its OpenAI-shaped
    ``body`` (a parsed dict, or a string), else ``fallback`` as the message."""
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        message, code, kind = err.get("message"), err.get("code"), err.get("type")
    else:
        message, code, kind = (err if isinstance(err, str) and err else None), None, None
    return APIError(status if 400 <= status < 600 else 502, str(message or fallback),
                    code=None if code is None else str(code), type=kind or None)


def _normalize_usage(data: dict) -> dict:
    """Usage with the ``*_tokens_details`` keys present (null when the backend gives none),
    as the ``openai`` SDK types them."""
    usage = data.get("usage")
    if usage:
        usage.setdefault("prompt_tokens_details", None)
        usage.setdefault("completion_tokens_details", None)
    return data


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class ChatStream:
    """An open Chat Completions stream: its chunks as plain dicts.

    :meth:`batches` yields the chunks each network read brought, as one list (so a
    follower can write them at once); iterating the stream itself yields them one
    by one. Either raises :class:`errors.BackendStreamError` when the stream
    breaks, carries an error, has a line past ``max_line_bytes``, or ends without ``[DONE]``. :meth:`aclose` releases
    the connection (back to the pool once the stream was read to its end); call
    it whatever happens.
    """

    def __init__(self, response: aiohttp.ClientResponse, max_line_bytes: int = 64 * 1024 * 1024):
        self._response = response
        self._max_line = max_line_bytes
        self._closed = False

    def __aiter__(self) -> AsyncIterator[dict]:
        return self._one_by_one()

    async def _one_by_one(self) -> AsyncIterator[dict]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Lists of chunk dicts, one per network read that completed at least one line."""
        content = self._response.content
        pending = b""
        try:
            while True:
                data = await content.readany()
                if not data:
                    raise BackendStreamError("the stream ended before it was complete")
                *lines, pending = (pending + data).split(b"\n")
                if len(pending) > self._max_line:
                    raise BackendStreamError(f"a stream line is longer than {self._max_line} bytes")
                batch: list[dict] = []
                for line in lines:
                    chunk = _parse_line(line)
                    if chunk is _DONE:
                        self._finish_after_done()
                        if batch:
                            yield batch
                        return
                    if chunk is not None:
                        batch.append(chunk)
                if batch:
                    yield batch
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            await self.aclose()
            raise BackendStreamError(_cause(exc)) from exc
        except BackendStreamError:
            await self.aclose()
            raise

    def _finish_after_done(self) -> None:
        """The answer is complete: nothing after ``[DONE]`` may hold or fail it. The
        connection goes back to the pool once its body has ended; a body still open is
        drained in the background for at most :data:`DRAIN_SECONDS`, then closed."""
        self._closed = True
        if self._response.content.at_eof():
            self._response.release()
            return
        task = asyncio.ensure_future(_drain(self._response))
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)

    async def aclose(self) -> None:
        """Close the upstream response (idempotent); a stream not read to its end closes its connection."""
        if not self._closed:
            self._closed = True
            self._response.close()


class LineStream:
    """An open NDJSON stream, as Ollama's native routes send them: one JSON object a line,
    until the body ends (there is no end marker).

    :meth:`batches` yields the objects each network read completed, as one list; a line
    carrying ``error`` is yielded as it came (the caller decides what it means). Raises
    :class:`errors.BackendStreamError` when the connection breaks, a line is not a JSON
    object or is longer than ``max_line_bytes``. :meth:`aclose` releases the connection (back
    to the pool once the body was read to its end); call it whatever happens.
    """

    def __init__(self, response: aiohttp.ClientResponse, max_line_bytes: int = 64 * 1024 * 1024):
        self._response = response
        self._max_line = max_line_bytes
        self._closed = False

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Lists of the JSON objects of the lines each network read completed."""
        content = self._response.content
        pending = b""
        try:
            while True:
                data = await content.readany()
                *lines, pending = (pending + data).split(b"\n") if data else (pending, b"")
                if len(pending) > self._max_line:
                    raise BackendStreamError(f"a stream line is longer than {self._max_line} bytes")
                batch = [_object_of(line) for line in lines if line.strip()]
                if batch:
                    yield batch
                if not data:
                    self._closed = True
                    self._response.release()
                    return
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            await self.aclose()
            raise BackendStreamError(_cause(exc)) from exc
        except BackendStreamError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the upstream response (idempotent); a stream not read to its end closes its connection."""
        if not self._closed:
            self._closed = True
            self._response.close()


def _object_of(line: bytes) -> dict:
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise BackendStreamError("a stream line is not a JSON object")
    return value


_DONE: Any = object()
#: Seconds a stream's body may stay open after ``[DONE]`` before its connection is dropped.
DRAIN_SECONDS = 2.0
_DRAINS: set[asyncio.Task] = set()


async def _drain(response: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await response.read()
        response.release()
    except asyncio.CancelledError:
        response.close()
        raise
    except Exception:  # a body that broke or stayed open after the answer: drop its connection
        response.close()


def _parse_line(line: bytes) -> dict | None:
    """The chunk of one SSE line, :data:`_DONE` for ``data: [DONE]``, None for other lines.
    Raises BackendStreamError for an ``error:`` line or an error payload."""
    if not line.startswith(b"data:"):
        if line.startswith(b"error:"):
            raise BackendStreamError(line[6:].strip().decode(errors="replace"))
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    chunk = orjson.loads(data)
    if "error" in chunk and "choices" not in chunk:
        err = chunk["error"]
        raise BackendStreamError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
    return _normalize_usage(chunk) if "usage" in chunk else chunk


class ChatClient:
    """The pooled Chat Completions client of one endpoint.

    ``base_url`` is the OpenAI-compatible base (ending in ``/v1``); ``api_key``
    is sent as a bearer token when set. ``connect_timeout`` bounds connecting,
    ``read_timeout`` each wait for upstream bytes (seconds); a whole answer may
    have ``max_answer_bytes`` at most (502 past it). At most ``max_connections`` connections, ``keepalive`` of them kept idle for
    :data:`KEEPALIVE_EXPIRY` seconds. The session is made on first use, inside
    the running event loop.
    """

    def __init__(self, base_url: str, api_key: str | None, *, connect_timeout: float, read_timeout: float,
                 max_connections: int, max_answer_bytes: int = 64 * 1024 * 1024):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                         keepalive_timeout=KEEPALIVE_EXPIRY, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, raise_for_status=False,
                                              auto_decompress=True)
        return self._session

    async def post(self, body: bytes, *, stream: bool, path: str = "chat/completions",
                   expect: str = "choices") -> dict | ChatStream:
        """Send one Chat Completions request ``body`` (JSON bytes), or one of another route of the
        same API (``path`` under the base: ``completions``, ``embeddings``; its answer must have
        the list ``expect``).

        Returns the answer as a dict (usage normalized), or the open
        :class:`ChatStream` with ``stream``. Raises :class:`ConnectFailed`,
        :class:`errors.BackendTimeout`, or the upstream's error status as
        :class:`errors.APIError` (see :func:`upstream_error`).
        """
        url = self.url if path == "chat/completions" else f"{self.base_url}/{path}"
        response = await self._send("POST", url, body)
        if stream:
            return ChatStream(response, self._max_answer_bytes)
        data = await self._json_object(response)
        if not isinstance(data.get(expect), list):
            err = data.get("error")
            detail = err.get("message") if isinstance(err, dict) else err
            raise self._bad(f"it answered 200 with an error: {detail}" if err else f"the answer has no {expect}")
        return _normalize_usage(data) if "usage" in data else data

    async def send_native(self, method: str, url: str, body: bytes | None, *, stream: bool) -> dict | LineStream:
        """Send one request to a route of the endpoint outside its OpenAI-compatible base
        (Ollama's own ``/api/...``; ``url`` is absolute), with the pool, timeouts and bounds of
        :meth:`post`.

        Returns the answer's JSON object (``{}`` for an empty body, as ``/api/delete`` and
        ``/api/copy`` answer), or the open :class:`LineStream` with ``stream``. Raises
        :class:`ConnectFailed`, :class:`errors.BackendTimeout`, the upstream's error status as
        :class:`errors.APIError` (Ollama's ``{"error": "..."}`` message kept), or 502 for an
        answer that is not a JSON object.
        """
        response = await self._send(method, url, body)
        if stream:
            return LineStream(response, self._max_answer_bytes)
        return await self._json_object(response, empty={})

    async def _send(self, method: str, url: str, body: bytes | None) -> aiohttp.ClientResponse:
        """Open the answer of one request, its status checked (see :meth:`post` for what it raises)."""
        session = self._session or self._open_session()
        try:
            response = await session.request(method, url, data=body, headers=self.headers)
        except TimeoutError as exc:
            raise BackendTimeout(str(exc) or "the backend did not answer in time") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise ConnectFailed(_cause(exc)) from exc
        if response.status >= 400:
            await self._raise_for_status(response)
        return response

    async def _json_object(self, response: aiohttp.ClientResponse, empty: dict | None = None) -> dict:
        """The whole answer as a JSON object (``empty`` for an empty body, when given); the
        response is released. Raises BackendTimeout, or a 502 for an answer that broke off or is
        not a JSON object."""
        try:
            raw = await self._read_bounded(response)
        except TimeoutError as exc:
            response.close()
            raise BackendTimeout(str(exc) or "the backend did not finish its answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            response.close()
            raise self._bad(f"the answer broke off ({_cause(exc)})") from exc
        finally:
            response.release()
        if empty is not None and not raw.strip():
            return empty
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._bad("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad("the answer is not a JSON object")
        return data

    async def _read_bounded(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            response.close()
            raise self._bad(f"the answer is larger than max_upstream_bytes ({limit} bytes)")
        parts, size = [], 0
        async for part in response.content.iter_chunked(1 << 16):
            size += len(part)
            if size > limit:
                response.close()
                raise self._bad(f"the answer is larger than max_upstream_bytes ({limit} bytes)")
            parts.append(part)
        return b"".join(parts)

    def _bad(self, detail: str) -> APIError:
        """A 502 for an answer that cannot be used (never cached, never retried)."""
        return APIError(502, f"The backend {self.base_url} answered badly: {detail}.", code="bad_upstream_response")

    async def _raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        try:
            raw = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            raw = b""
        finally:
            response.release()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace").strip()[:500]
        raise upstream_error(response.status, body, f"HTTP {response.status} {response.reason or ''}".strip())

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            await asyncio.sleep(0)  # let the connector's transports close
