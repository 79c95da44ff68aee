"""HTTP routes of Ollama's API, served on the gateway's own routing: ``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings`` (``engine.ollama_api``), ``/api/show``,
``/api/tags``, ``/api/ps``, ``/api/ps_details``, ``/api/version`` and model management
(``/api/pull``, ``/api/push``, ``/api/delete``, ``/api/copy``, ``/api/create``:
``engine.ollama_models``), so Ollama clients work unchanged against the gateway.

Parse, call, shape the reply. Streams go out as NDJSON (``application/x-ndjson``); a client
that leaves while the endpoint thinks cancels the call (and its slot), a streamed one closes
the upstream stream.

Errors leave these routes in Ollama's shape, ``{"error": "message"}`` with the right status,
not the gateway's OpenAI shape: Ollama's clients read ``error`` as the message (the official
Python client raises ``ResponseError(body["error"])``; given OpenAI's object there, its message
would be a dict's text and its ``error`` attribute not a string). The key check before any
route runs (``api.guard``) still answers in OpenAI's shape, whose ``error.message`` those
clients show as part of the object.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from api.common import gateway_of, json_response, owner_of, parse_json
from api.sse import ClosingStreamResponse
from api.responses import _unless_client_leaves
from engine import ollama_models
from engine.ollama_api import Answer, serve
from errors import APIError
from logs import note
from metrics import ERRORS, route_family

__all__ = ["router", "NDJSONResponse", "ollama_error"]


def ollama_error(exc: APIError) -> Response:
    """``exc`` as Ollama answers errors: ``{"error": "message"}`` with its status."""
    return json_response({"error": exc.message}, exc.status)


class OllamaRoute(APIRoute):
    """A route whose :class:`errors.APIError` answers in Ollama's shape (see the module),
    counted and logged as the app's handler does."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as exc:
                note(error=exc.code or exc.message)
                ERRORS.labels(route_family(request.url.path), str(exc.status), exc.code or "none").inc()
                reply = ollama_error(exc)
                if exc.status == 408:  # a body that stopped arriving leaves the connection mid-request
                    reply.headers["connection"] = "close"
                return reply
        return handle


router = APIRouter(route_class=OllamaRoute)


class NDJSONResponse(ClosingStreamResponse):
    """An ``application/x-ndjson`` :class:`api.sse.ClosingStreamResponse`: its body is closed, and
    ``on_close`` run, however it ends, so the upstream stream is closed and its slot given back."""

    media_type = "application/x-ndjson"


def _no_query(request: Request, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a query parameter the route does not take (``api_key`` is the guard's)."""
    for name in request.query_params:
        if name != "api_key" and name not in allowed:
            raise APIError(400, f"Unknown query parameter '{name}'.", param=name, code="unknown_parameter")


async def _body(request: Request) -> dict:
    body = await parse_json(request)
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _reply(answer: Answer) -> Response:
    if answer.stream is not None:
        return NDJSONResponse(answer.stream, answer.on_close)
    return json_response(answer.body, answer.status)


async def _generation(request: Request, route: str) -> Response:
    _no_query(request)
    body = await _body(request)
    work = serve(gateway_of(request), route, body, owner_of(request))
    return _reply(await _unless_client_leaves(request, work))


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """Ollama ``POST /api/chat``: a chat turn (streamed unless ``stream: false``)."""
    return await _generation(request, "chat")


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    """Ollama ``POST /api/generate``: a completion of ``prompt`` (streamed unless ``stream: false``)."""
    return await _generation(request, "generate")


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    """Ollama ``POST /api/embed``: embeddings of ``input`` (a string or a list of them)."""
    return await _generation(request, "embed")


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    """Ollama's legacy ``POST /api/embeddings``: the embedding of one ``prompt``."""
    return await _generation(request, "embeddings")


@router.post("/api/show")
async def show(request: Request) -> Response:
    """Ollama ``POST /api/show``: a model's details, from an Ollama endpoint serving it."""
    _no_query(request)
    body = await _body(request)
    return json_response(await _unless_client_leaves(request, ollama_models.show(gateway_of(request), body)))


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    """Ollama ``GET /api/tags``: every model the gateway's endpoints serve."""
    _no_query(request)
    return json_response(await ollama_models.tags(gateway_of(request)))


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    """Ollama ``GET /api/ps``: the models loaded now, over every endpoint."""
    _no_query(request)
    return json_response(await ollama_models.ps(gateway_of(request)))


@router.get("/api/ps_details")
async def ps_details(request: Request) -> Response:
    """NOMYO Router's ``GET /api/ps_details``: each endpoint's loaded models, each with its ``endpoint``."""
    _no_query(request)
    return json_response(await ollama_models.ps(gateway_of(request), details=True))


@router.get("/api/version")
async def version(request: Request) -> Response:
    """Ollama ``GET /api/version``: the lowest version of the gateway's Ollama endpoints."""
    _no_query(request)
    return json_response(await ollama_models.version(gateway_of(request)))


async def _manage(request: Request, operation: str) -> Response:
    _no_query(request, ("endpoint",))
    body = await _body(request)
    work = ollama_models.manage(gateway_of(request), operation, body, request.query_params.get("endpoint"))
    return _reply(await _unless_client_leaves(request, work))


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    """Ollama ``POST /api/pull`` on every Ollama endpoint (or ``?endpoint=`` one)."""
    return await _manage(request, "pull")


@router.post("/api/push")
async def push(request: Request) -> Response:
    """Ollama ``POST /api/push`` from every Ollama endpoint (or ``?endpoint=`` one)."""
    return await _manage(request, "push")


@router.post("/api/create")
async def create(request: Request) -> Response:
    """Ollama ``POST /api/create`` on every Ollama endpoint (or ``?endpoint=`` one)."""
    return await _manage(request, "create")


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    """Ollama ``DELETE /api/delete`` on every Ollama endpoint (or ``?endpoint=`` one)."""
    return await _manage(request, "delete")


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    """Ollama ``POST /api/copy`` on every Ollama endpoint (or ``?endpoint=`` one)."""
    return await _manage(request, "copy")
