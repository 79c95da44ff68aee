"""HTTP routes of OpenAI's API beside the Responses API: ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` (passed through, ``engine.passthrough``) and
``/v1/models/{model}``.

Parse, call, shape the reply; a client that leaves while the endpoint thinks cancels the
call (and its slot), a streamed one closes the upstream stream.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.common import gateway_of, json_response, owner_of, parse_json
from api.responses import _unless_client_leaves
from api.sse import EventStreamResponse
from engine.passthrough import forward
from errors import APIError

router = APIRouter()


async def _pass(request: Request, path: str) -> Response:
    body = await parse_json(request)
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    forwarded = await _unless_client_leaves(request, forward(gateway_of(request), path, body, owner_of(request)))
    if forwarded.stream is not None:
        return EventStreamResponse(forwarded.stream, on_close=forwarded.on_close)
    return json_response(forwarded.body)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI ``POST /v1/chat/completions``, passed through to an endpoint of the model."""
    return await _pass(request, "chat/completions")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI ``POST /v1/completions`` (legacy text completions), passed through."""
    return await _pass(request, "completions")


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    """OpenAI ``POST /v1/embeddings``, passed through to an endpoint of the model."""
    return await _pass(request, "embeddings")


@router.post("/v1/rerank")
@router.post("/rerank")
async def rerank(request: Request) -> Response:
    """``POST /v1/rerank`` (also ``/rerank``): documents ranked against a ``query`` by a reranker
    model (llama.cpp's server, vLLM; Jina's and Cohere's shape), passed through."""
    return await _pass(request, "rerank")


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response:
    """OpenAI ``GET /v1/models/{model}``: a model a reachable endpoint serves (or an alias of
    one, or an Ollama name without its implied ``:latest``), else 404 ``model_not_found``."""
    gateway = gateway_of(request)
    if model not in gateway.registry.models() and not gateway.registry.candidates(
            gateway.settings.model_aliases.get(model, model)):
        raise APIError(404, f"The model '{model}' does not exist or is not served by any endpoint.",
                       param="model", code="model_not_found")
    return json_response({"id": model, "object": "model", "created": int(time.time()), "owned_by": "nomyo-router"})
