"""NOMYO Router: an OpenAI Responses API gateway over Ollama, llama.cpp, vLLM and OpenAI.

The ASGI app (``uvicorn router:app``): start-up and shut-down (configuration,
response store, endpoint registry, cache, background jobs), authentication and
request-size limits, OpenAI-shaped error handlers, and the API routers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import preflight

preflight.ensure_own_requests_package()  # before anything that imports this project's `requests`

import orjson  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.responses import Response  # noqa: E402

from api import health, responses  # noqa: E402
from config import ConfigError, load_settings  # noqa: E402
from db import ResponseStore, StoreInUse  # noqa: E402
from engine.gateway import Gateway, open_gateway  # noqa: E402
from errors import APIError, error_body  # noqa: E402
from metrics import REQUEST_SECONDS, REQUESTS, route_family  # noqa: E402

log = logging.getLogger("nomyo_router")

_API_KEY_IN_QUERY = re.compile(r"(?i)([?&]api_key=)[^&\s]*")


class RedactKeys(logging.Filter):
    """Masks a router key sent as ``?api_key=`` in the access log's request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "api_key=" in a.lower()
                                                   for a in record.args):
            record.args = tuple(_API_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


logging.getLogger("uvicorn.access").addFilter(RedactKeys())

#: The response store of the running app (set at start-up; NOMYO Router's name for it).
db: ResponseStore | None = None

#: Paths answered without authentication (the liveness probe).
PUBLIC_PATHS = frozenset({"/health/live"})


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Open the gateway (``app.state.gateway``), and close it all at shut-down."""
    global db
    try:
        settings = load_settings()
    except ConfigError as exc:
        log.critical("%s", exc)
        raise SystemExit(f"nomyo-router: {exc}") from None
    db_path = os.environ.get("NOMYO_ROUTER_DB_PATH") or settings.db_path
    # The backend functions turns run with are api.responses' names, read at call time.
    try:
        gateway: Gateway = await open_gateway(settings, db_path, calls=responses)
    except StoreInUse as exc:
        log.critical("%s", exc)
        raise SystemExit(f"nomyo-router: {exc}") from None
    app.state.gateway = gateway
    db = gateway.store
    try:
        yield
    finally:
        db = None
        await gateway.close()


def _owner_of(key: str) -> str:
    """An opaque tenant tag for an API key (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _presented_key(scope: dict) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    query = scope.get("query_string") or b""
    if b"api_key=" in query:
        values = parse_qs(query.decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


class GatewayMiddleware:
    """Pure ASGI middleware: router-key authentication (owner tag in ``request.state``)
    and the request body size limit (413)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = route_family(scope["path"])
        status = 500

        async def measured_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body"):
                REQUESTS.labels(route, str(status)).inc()
                REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            await send(message)

        await self._guarded(scope, receive, measured_send)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        settings = scope["app"].state.gateway.settings
        owner = None
        keys = settings.router_api_keys
        if keys and scope["path"] not in PUBLIC_PATHS:
            presented = _presented_key(scope)
            if presented is None:
                return await _reply(send, APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                                                   code="missing_api_key"))
            matched = None
            for key in keys:  # compare against every key: time does not depend on which matched
                if hmac.compare_digest(presented.encode(), key.encode()):
                    matched = key
            if matched is None:
                return await _reply(send, APIError(403, "Invalid API key.", code="invalid_api_key"))
            owner = _owner_of(matched)
        scope.setdefault("state", {})["owner"] = owner

        limit = settings.max_body_bytes
        for name, value in scope.get("headers") or ():
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await _reply(send, _too_large(limit))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise APIError(413, _too_large(limit).message, code="request_too_large")
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


async def _reply(send: Any, exc: APIError) -> None:
    body = orjson.dumps(error_body(exc.message, exc.type, exc.param, exc.code))
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def error_response(exc: APIError, headers: dict | None = None) -> Response:
    """The HTTP response carrying ``exc`` in OpenAI's error shape."""
    return Response(orjson.dumps(error_body(exc.message, exc.type, exc.param, exc.code)),
                    status_code=exc.status, media_type="application/json", headers=headers)


app = FastAPI(title="NOMYO Router", version="0.1.0", lifespan=lifespan)
app.add_middleware(GatewayMiddleware)
app.include_router(responses.router)
app.include_router(health.router)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc)


@app.exception_handler(responses.ClientGone)
async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the status is for the access log


@app.exception_handler(sqlite3.Error)
async def _store_error(request: Request, exc: sqlite3.Error) -> Response:
    log.error("the store failed on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return error_response(APIError(503, f"The response store is unavailable: {exc}.", code="store_unavailable",
                                   type="server_error"))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in err.get("loc", ())[1:]) or None
    return error_response(APIError(400, f"Invalid value for '{param}': {err['msg']}.", param=param))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return error_response(APIError(exc.status_code, message), headers=getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, f"Internal error: {type(exc).__name__}.", type="server_error"))
