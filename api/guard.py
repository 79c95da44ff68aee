"""What every HTTP request (and WebSocket upgrade) passes before a route sees it: the ``Host`` allowlist, the
``Origin`` check and CORS, router-key authentication (and the admin key), the JSON-only rule
for bodies, and the body size limit. Also gives every request its id (``X-Request-Id``, on
every answer), counts it for the metrics and logs its summary line.

A pure ASGI middleware (no per-request objects beyond what the checks need). The checks
follow what a browser can do to a gateway on a developer's machine: a page on another origin
may send "simple" requests (``text/plain`` POSTs, no preflight) and may reach the gateway
through a DNS name of its own (rebinding); both are refused here, before any route runs.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.middleware.cors import CORSMiddleware

import logs
from config import Settings
from errors import APIError, error_body
from metrics import REQUEST_SECONDS, REQUESTS, route_family

__all__ = ["GatewayMiddleware", "PUBLIC_PATHS", "ADMIN_PATHS"]

#: Paths answered without authentication (the liveness probe).
PUBLIC_PATHS = frozenset({"/health/live"})
#: Paths that show the whole gateway (endpoints, every tenant's activity): the admin key only,
#: once ``admin_api_key`` is set.
ADMIN_PATHS = frozenset({"/health", "/api/usage", "/v1/usage", "/metrics",
                         # the dashboard and what it reads
                         "/", "/dashboard", "/api/usage-stream", "/api/config", "/api/ps_details",
                         # token statistics and the cache, every tenant's
                         "/api/token_counts", "/api/stats", "/api/aggregate_time_series_days",
                         "/api/cache/stats", "/api/cache/invalidate",
                         # model management, on every Ollama endpoint
                         "/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create"})
#: Host names that always mean this machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def _presented_key(scope: dict) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    query = scope.get("query_string") or b""
    if b"api_key=" in query:
        values = parse_qs(query.decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


def _host_name(host: str) -> str:
    """``host`` of a ``Host`` header without its port, IPv6 brackets removed, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(scope: dict, settings: Settings) -> bool:
    """Whether the request's ``Host`` is one the gateway answers to (``allowed_hosts``; unset:
    any with a router key, else loopback names and the address the connection reached)."""
    allowed = settings.allowed_hosts
    if allowed is None and settings.key_owners:
        return True
    if allowed is not None and "*" in allowed:
        return True
    host = _header(scope, b"host")
    if host is None:  # HTTP/1.0 without Host: nothing a browser sends
        return True
    name = _host_name(host)
    if allowed is not None:
        return name in {_host_name(h) for h in allowed}
    server = scope.get("server")
    return name in LOOPBACK_HOSTS or (server is not None and name == str(server[0]).lower())


def origin_allowed(origin: str, scope: dict, settings: Settings) -> bool:
    """Whether a browser page of ``origin`` may call: one of ``cors_allowed_origins``, or the
    gateway's own origin (same ``Host``)."""
    allowed = settings.cors_allowed_origins
    if "*" in allowed or origin in allowed:
        return True
    host = _header(scope, b"host")
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _has_body(scope: dict) -> bool:
    length = _header(scope, b"content-length")
    return (length is not None and length.strip() not in ("", "0")) or _header(scope, b"transfer-encoding") is not None


class GatewayMiddleware:
    """The checks every request passes (see the module docstring), in this order: ``Host``
    (400 ``host_not_allowed``), ``Origin`` (403 ``origin_not_allowed``; allowed CORS preflights
    are answered here), the admin key on :data:`ADMIN_PATHS` once any key is configured (401,
    403 ``admin_key_required``), a tenant's or router key elsewhere (401 ``missing_api_key`` or
    ``invalid_api_key``, as OpenAI answers a wrong key),
    the size limit (413), a POST body that is not JSON (415 ``unsupported_media_type``), and a
    body that takes longer than ``body_timeout`` (408 ``request_timeout``).
    The owner tag goes in ``scope["state"]["owner"]``."""

    def __init__(self, app: Any):
        self.app = app
        self._cors: tuple[Settings, Any] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            return await self._socket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = route_family(scope["path"])
        status = 500
        request_id = _request_id(scope)
        info, token = logs.begin(request_id)
        first_byte: float | None = None

        async def measured_send(message: dict) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                if first_byte is None and message.get("body"):
                    first_byte = time.perf_counter()
                    if message.get("more_body"):  # a stream: how long its first byte took
                        info["ttfb_ms"] = round((first_byte - started) * 1000, 2)
                if not message.get("more_body"):
                    REQUESTS.labels(route, str(status)).inc()
                    REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
                    logs.RECENT_REQUESTS.add(info, scope["method"], scope["path"], status, started)
                    if scope["app"].state.gateway.settings.log_requests:
                        logs.request_line(info, scope["method"], scope["path"], status, started)
            await send(message)

        try:
            await self._guarded(scope, receive, measured_send)
        finally:
            logs.end(token)

    def _with_cors(self, settings: Settings) -> Any:
        """The app behind CORS for ``settings`` (made again when the settings change)."""
        if not settings.cors_allowed_origins:
            return self.app
        if self._cors is None or self._cors[0] is not settings:
            self._cors = (settings, CORSMiddleware(self.app, allow_origins=settings.cors_allowed_origins,
                                                   allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"],
                                                   expose_headers=["x-request-id"], max_age=600))
        return self._cors[1]

    def _refusal(self, scope: dict, settings: Settings) -> APIError | None:
        """The first check ``scope`` fails (``Host``, ``Origin``, keys), or None; the owner tag of
        the key presented goes in ``scope["state"]["owner"]``. HTTP and WebSocket alike."""
        if scope["path"] not in PUBLIC_PATHS and not host_allowed(scope, settings):
            return APIError(400, f"This gateway does not answer to the Host '{_header(scope, b'host')}'; add it "
                                 "to allowed_hosts.", code="host_not_allowed")
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(origin, scope, settings):
            return APIError(403, f"Requests from the web origin '{origin}' are not allowed; add it to "
                                 "cors_allowed_origins.", code="origin_not_allowed")
        path = scope["path"]
        owner = None
        if path in ADMIN_PATHS and (settings.admin_api_key is not None or settings.key_owners):
            refusal = _admin_refusal(scope, settings)
            if refusal is not None:
                return refusal
        elif settings.key_owners and path not in PUBLIC_PATHS:
            presented = _presented_key(scope)
            if presented is None:
                return _missing_key()
            for key, key_owner in settings.key_owners.items():  # every key compared: time does not tell which
                if hmac.compare_digest(presented.encode(), key.encode()):
                    owner = key_owner
            if owner is None:
                return APIError(401, "Incorrect API key provided.", code="invalid_api_key")
            logs.note(tenant=owner[7:] if owner.startswith("tenant:") else owner[:8])
        scope.setdefault("state", {})["owner"] = owner
        return None

    async def _socket(self, scope: dict, receive: Any, send: Any) -> None:
        """A WebSocket upgrade: the same checks as HTTP, refused with the HTTP answer (the ASGI
        denial response, where the server has it) before the socket is accepted."""
        refusal = self._refusal(scope, scope["app"].state.gateway.settings)
        if refusal is None:
            return await self.app(scope, receive, send)
        if (await receive())["type"] != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await _reply(send, refusal, "websocket.http.response")
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.message[:120]})

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        settings: Settings = scope["app"].state.gateway.settings
        origin = _header(scope, b"origin")
        app = self._with_cors(settings)
        if origin is not None and scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") \
                and host_allowed(scope, settings) and origin_allowed(origin, scope, settings):
            return await app(scope, receive, send)  # a CORS preflight: answered without a key
        refusal = self._refusal(scope, settings)
        if refusal is not None:
            return await _reply(send, refusal)

        limit = settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _reply(send, _too_large(limit))
        if scope["method"] == "POST":
            content_type = _header(scope, b"content-type")
            if content_type is not None:
                refused = not _is_json(content_type) and not _curl_form(scope, content_type, origin)
            else:
                refused = _has_body(scope)
            if refused:
                return await _reply(send, APIError(415, "Request bodies must be JSON: send 'Content-Type: "
                                                        "application/json'.", code="unsupported_media_type"))

        received = 0
        body_deadline: float | None = None
        body_done = False

        async def limited_receive():
            nonlocal received, body_deadline, body_done
            if body_done:  # what follows the body is the disconnect: no bound
                return await receive()
            loop = asyncio.get_running_loop()
            if body_deadline is None:
                body_deadline = loop.time() + settings.body_timeout
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise APIError(408, f"The request body did not arrive within {settings.body_timeout:g} s.",
                               code="request_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise APIError(413, _too_large(limit).message, code="request_too_large")
                body_done = not message.get("more_body")
            else:
                body_done = True
            return message

        await app(scope, limited_receive, send)


def _curl_form(scope: dict, content_type: str, origin: str | None) -> bool:
    """Whether a POST is ``curl -d`` to an Ollama route: ``application/x-www-form-urlencoded``
    (curl's default; Ollama's documentation sends its JSON so) on ``/api/...`` from no web page
    (no ``Origin``: browsers send one on every POST, so a page's form post is still refused). Its
    body is read as JSON like any other."""
    media = content_type.partition(";")[0].strip().lower()
    return origin is None and media == "application/x-www-form-urlencoded" and scope["path"].startswith("/api/")


def _request_id(scope: dict) -> str:
    """The client's ``X-Request-Id`` when it is a plausible id (at most 128 characters of
    letters, digits and ``-_.:``), else a new one."""
    given = _header(scope, b"x-request-id")
    if given and len(given) <= 128 and all(c.isalnum() or c in "-_.:" for c in given) and given.isascii():
        return given
    return "req_" + secrets.token_hex(12)


def _missing_key() -> APIError:
    return APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")


def _admin_refusal(scope: dict, settings: Settings) -> APIError | None:
    """None when the request carries ``admin_api_key``; else 401 for no key or a key nobody
    has, 403 ``admin_key_required`` for a tenant's key (or while no admin key is configured)."""
    presented = _presented_key(scope)
    if presented is None:
        return _missing_key()
    admin = settings.admin_api_key
    if admin is not None and hmac.compare_digest(presented.encode(), admin.encode()):
        return None
    tenant = False
    for key in settings.key_owners:  # every key compared: time does not tell which
        if hmac.compare_digest(presented.encode(), key.encode()):
            tenant = True
    if not tenant and admin is not None:
        return APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    why = "" if admin is not None else " (none is configured: set admin_api_key)"
    return APIError(403, f"{scope['path']} needs the admin key{why}; tenant keys cannot read it.",
                    code="admin_key_required")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


async def _reply(send: Any, exc: APIError, kind: str = "http.response") -> None:
    """``exc`` as the whole JSON answer (``kind``: ``websocket.http.response`` refuses an upgrade)."""
    body = orjson.dumps(error_body(exc.message, exc.type, exc.param, exc.code))
    await send({"type": f"{kind}.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": f"{kind}.body", "body": body})
