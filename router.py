"""NOMYO Router: an OpenAI Responses API gateway over Ollama, llama.cpp, vLLM and OpenAI.

The ASGI app (``uvicorn router:app``): start-up and shut-down (configuration,
response store, endpoint registry, cache, background jobs), the request guard
(``api.guard``: hosts, origins, keys, body rules), OpenAI-shaped error handlers,
and the API routers.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager

import preflight

preflight.ensure_own_requests_package()  # before anything that imports this project's `requests`

import orjson  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.responses import Response  # noqa: E402

from api import cache_routes, conversations, dashboard, health, openai_routes, responses, stats_routes, websocket  # noqa: E402
from api import ollama_routes  # noqa: E402
from api.guard import PUBLIC_PATHS, GatewayMiddleware  # noqa: E402,F401  (PUBLIC_PATHS: NOMYO Router's name)
from config import ConfigError, load_settings  # noqa: E402
from logs import configure_logging, note  # noqa: E402
from metrics import ERRORS, route_family  # noqa: E402
from store import STORE_ERRORS, Store, StoreInUse  # noqa: E402
from engine.gateway import Gateway, StartupError, open_gateway  # noqa: E402
from errors import APIError, error_body  # noqa: E402

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
db: Store | None = None


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Open the gateway (``app.state.gateway``), and close it all at shut-down."""
    global db
    try:
        settings = load_settings()
    except ConfigError as exc:
        log.critical("%s", exc)
        raise SystemExit(f"nomyo-router: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    # The backend functions turns run with are api.responses' names, read at call time.
    try:
        gateway: Gateway = await open_gateway(settings, calls=responses)
    except (StoreInUse, StartupError) as exc:
        log.critical("%s", exc)
        raise SystemExit(f"nomyo-router: {exc}") from None
    app.state.gateway = gateway
    db = gateway.store
    try:
        yield
    finally:
        db = None
        await gateway.close()


def error_response(exc: APIError, headers: dict | None = None) -> Response:
    """The HTTP response carrying ``exc`` in OpenAI's error shape."""
    return Response(orjson.dumps(error_body(exc.message, exc.type, exc.param, exc.code)),
                    status_code=exc.status, media_type="application/json", headers=headers)


app = FastAPI(title="NOMYO Router", version="0.1.0", lifespan=lifespan)
app.add_middleware(GatewayMiddleware)
app.include_router(responses.router)
app.include_router(conversations.router)
app.include_router(openai_routes.router)
app.include_router(ollama_routes.router)
app.include_router(websocket.router)
app.include_router(health.router)
app.include_router(cache_routes.router)
app.include_router(dashboard.router)
app.include_router(stats_routes.router)


@app.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> Response:
    note(error=exc.code or exc.message)
    ERRORS.labels(route_family(request.url.path), str(exc.status), exc.code or "none").inc()
    # A body that stopped arriving leaves the connection mid-request: close it.
    return error_response(exc, headers={"connection": "close"} if exc.status == 408 else None)


@app.exception_handler(responses.ClientGone)
async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the status is for the access log


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("the store failed on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return error_response(APIError(503, f"The response store is unavailable: {exc}.", code="store_unavailable",
                                   type="server_error"))


for _error in STORE_ERRORS:
    app.add_exception_handler(_error, _store_error)


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
