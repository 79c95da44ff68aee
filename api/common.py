"""What every route module shares: the gateway of a request, its tenant, JSON in and out, ``include``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from store import Store
from engine.gateway import Gateway
from engine.turn import bad_input
from errors import APIError
from requests.include import check_include
from requests.responses import InvalidInput

__all__ = ["json_response", "gateway_of", "store_of", "owner_of", "parse_json", "include_of", "check_page"]


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as an ``application/json`` response (orjson)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


def store_of(request: Request) -> Store:
    return request.app.state.gateway.store


def owner_of(request: Request) -> str | None:
    """The tenant tag the guard gave the request (None without authentication)."""
    return getattr(request.state, "owner", None)


async def parse_json(request: Request) -> Any:
    """The request body parsed; APIError 400 ``invalid_json`` when it is not JSON, or nested past
    what can be written back (orjson's 254 levels)."""
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    try:
        orjson.dumps(data)
    except orjson.JSONEncodeError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None
    return data


def include_of(request: Request) -> frozenset[str]:
    """The ``include`` query values (``include=a&include=b``, or ``include[]=`` as the SDKs send
    them). Raises APIError 400 for a value the API does not know."""
    values = request.query_params.getlist("include") + request.query_params.getlist("include[]")
    try:
        return check_include(values)
    except InvalidInput as exc:
        raise bad_input(exc) from None


def check_page(limit: int, order: str) -> None:
    """A list route's ``limit`` (1..100) and ``order`` (``asc``|``desc``); APIError 400 naming the one at fault."""
    if not 1 <= limit <= 100:
        raise APIError(400, "'limit' must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise APIError(400, "'order' must be 'asc' or 'desc'.", param="order")
