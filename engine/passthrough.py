"""OpenAI's own routes beside the Responses API, passed through on the same routing.

``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` go to an endpoint of
the model asked, chosen as a turn's is (loaded first, least busy; the same usage slots and
``max_concurrent_connections``, shared by replicas; failover while endpoints cannot be
reached), with the request body as the client sent it but for ``model`` (the name the
endpoint knows it by; ``model_aliases`` apply). The answer comes back as the endpoint gave
it; a stream is relayed chunk by chunk in OpenAI's SSE form and its slot is held until it
ends or the client leaves (which closes the upstream stream). Every endpoint kind speaks
these routes: Ollama and llama.cpp's server in their OpenAI-compatible API, vLLM, OpenAI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

import orjson

from backends import BackendUnavailable
from chat_client import ChatStream, ConnectFailed
from errors import APIError
from logs import note
from metrics import BACKEND_ERRORS

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["ROUTES", "Forwarded", "forward"]

log = logging.getLogger("nomyo_router.passthrough")

#: Route path under ``/v1`` -> the list every answer of it has (``choices``, ``data``), and
#: whether it may stream.
ROUTES = {"chat/completions": ("choices", True), "completions": ("choices", True), "embeddings": ("data", False)}


@dataclass
class Forwarded:
    """The endpoint's answer: ``body`` (a dict), or ``stream`` (SSE bytes to relay, which gives
    the slot back when it ends or is closed)."""

    body: dict | None = None
    stream: AsyncIterator[bytes] | None = None


def _model_of(body: dict, path: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, f"POST /v1/{path} needs 'model': the name of a model an endpoint serves.",
                       param="model", code="missing_required_parameter")
    return model


async def forward(gateway: Gateway, path: str, body: dict) -> Forwarded:
    """Send ``body`` to ``/v1/<path>`` of an endpoint serving its ``model`` (see the module).

    Raises APIError: 400 without a ``model`` (or ``stream`` where the route has none), 404 for
    a model no endpoint serves, 429 every endpoint busy, 502/504 backend faults, or the
    endpoint's own error status and message. The slot is given back before any of them leaves.
    """
    expect, streams = ROUTES[path]
    asked = _model_of(body, path)
    stream = body.get("stream") is True
    if stream and not streams:
        raise APIError(400, f"POST /v1/{path} does not stream.", param="stream", code="invalid_value")
    registry, calls = gateway.registry, gateway.calls
    model = gateway.settings.model_aliases.get(asked, asked)
    note(model=asked)
    excluded: set[str] = set()
    while True:
        endpoint, name = await calls.choose_endpoint(registry, model, excluded)
        note(endpoint=endpoint, upstream_model=name)
        client = registry.forwarder(endpoint)
        try:
            answer = await client.post(orjson.dumps({**body, "model": name}), stream=stream, path=path,
                                       expect=expect)
        except ConnectFailed as exc:
            await calls.decrement_usage(registry, endpoint, name)
            BACKEND_ERRORS.labels(endpoint, "unavailable").inc()
            registry.mark_unreachable(endpoint, exc.detail)
            excluded.add(endpoint)
            if not registry.candidates(model, excluded):
                raise BackendUnavailable(client.base_url, exc.detail) from exc
            continue
        except BaseException as exc:
            await calls.decrement_usage(registry, endpoint, name)
            if isinstance(exc, APIError):
                BACKEND_ERRORS.labels(endpoint, str(exc.status)).inc()
            raise
        if isinstance(answer, ChatStream):
            return Forwarded(stream=_relay(answer, lambda: calls.decrement_usage(registry, endpoint, name)))
        await calls.decrement_usage(registry, endpoint, name)
        return Forwarded(body=answer)


async def _relay(upstream: ChatStream, release) -> AsyncIterator[bytes]:
    """The upstream stream's chunks as SSE frames, then ``data: [DONE]``; a stream that breaks
    ends with an ``error`` frame, as OpenAI's do. Closes the upstream and gives the slot back
    however it ends."""
    try:
        try:
            async for batch in upstream.batches():
                yield b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in batch)
        except APIError as exc:
            log.warning("a passed-through stream broke: %s", exc.message)
            yield b"data: " + orjson.dumps({"error": {"message": exc.message, "type": exc.type,
                                                      "code": exc.code}}) + b"\n\n"
            return
        yield b"data: [DONE]\n\n"
    finally:
        await upstream.aclose()
        await release()
