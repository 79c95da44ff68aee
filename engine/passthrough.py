"""OpenAI's own routes beside the Responses API, passed through on the same routing.

``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and ``/v1/rerank`` (llama.cpp's
and vLLM's, Jina's and Cohere's shape; never on an Ollama endpoint, which has none) go to an
endpoint of the model asked, chosen as a turn's is (loaded first, least busy; the same usage slots and
``max_concurrent_connections``, shared by replicas; failover while endpoints cannot be
reached), with the request body as the client sent it but for ``model`` (the name the
endpoint knows it by; ``model_aliases`` apply). The answer comes back as the endpoint gave
it; a stream is relayed chunk by chunk in OpenAI's SSE form and its slot is held until it
ends or the client leaves (which closes the upstream stream). Every endpoint kind speaks
the first three: Ollama and llama.cpp's server in their OpenAI-compatible API, vLLM, OpenAI.

Each answer's usage is counted in the token statistics (``gateway.token_stats``) and the
request log; a stream is asked for its usage chunk (``stream_options.include_usage``) even
when the client did not ask, and that chunk is then kept from the client. Chat and text
completions may be answered from the LLM cache (``engine.passthrough_cache``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import orjson

from backends import BackendUnavailable
from chat_client import ChatStream, ConnectFailed
from engine.held_stream import HeldStream
from engine.passthrough_cache import Lookup, StreamAssembler, lookup, replay
from errors import APIError
from logs import note
from metrics import BACKEND_ERRORS

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["ROUTES", "Forwarded", "forward", "model_of"]

log = logging.getLogger("nomyo_router.passthrough")

#: Route path under ``/v1`` -> the list every answer of it has (``choices``, ``data``), and
#: whether it may stream.
ROUTES = {"chat/completions": ("choices", True), "completions": ("choices", True), "embeddings": ("data", False),
          "rerank": ("results", False)}
#: Routes Ollama's endpoints do not have: only the other endpoints of a model are asked.
NOT_ON_OLLAMA = frozenset({"rerank"})


@dataclass
class Forwarded:
    """The endpoint's answer: ``body`` (a dict), or ``stream`` (SSE bytes to relay, which gives
    the slot back when it ends or is closed) and ``on_close``, which the response runs when it
    closes (it gives the slot back if the stream never started)."""

    body: dict | None = None
    stream: AsyncIterator[bytes] | None = None
    on_close: Callable[[], Awaitable[None]] | None = None


def model_of(body: dict, route: str) -> str:
    """The ``model`` a request body of ``route`` (``"POST /v1/embeddings"``) names. Raises
    APIError 400 ``missing_required_parameter`` when it names none."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, f"{route} needs 'model': the name of a model an endpoint serves.",
                       param="model", code="missing_required_parameter")
    return model


async def forward(gateway: Gateway, path: str, body: dict, owner: str | None = None) -> Forwarded:
    """Send ``body`` to ``/v1/<path>`` of an endpoint serving its ``model`` (see the module);
    ``owner`` is the tenant's tag (the cache keeps tenants apart).

    Raises APIError: 400 without a ``model`` (or ``stream`` where the route has none, or a bad
    ``nomyo``), 404 for a model no endpoint serves, 429 every endpoint busy, 502/504 backend
    faults, or the endpoint's own error status and message. The slot is given back before any
    of them leaves.
    """
    expect, streams = ROUTES[path]
    asked = model_of(body, f"POST /v1/{path}")
    stream = body.get("stream") is True
    if stream and not streams:
        raise APIError(400, f"POST /v1/{path} does not stream.", param="stream", code="invalid_value")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise APIError(400, "'stream_options' must be an object, and is only for 'stream': true.",
                       param="stream_options", code="invalid_value")
    note(model=asked)
    model = gateway.settings.model_aliases.get(asked, asked)
    cached = await lookup(gateway, path, body, model, owner)
    if cached.hit is not None:
        note(cache="hit")
        return Forwarded(stream=replay(path, cached.hit, body)) if stream else Forwarded(body=cached.hit)
    if cached.asked:
        note(cache="miss")
    body = {key: value for key, value in body.items() if key != "nomyo"}
    hide_usage = stream and not (body.get("stream_options") or {}).get("include_usage")
    if hide_usage:
        body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    registry, calls = gateway.registry, gateway.calls
    excluded: set[str] = set()
    if path in NOT_ON_OLLAMA:
        excluded = {url for url, ep in registry.endpoints.items() if ep.kind == "ollama"}
        if not registry.candidates(model, excluded) and registry.candidates(model):
            raise APIError(501, f"POST /v1/{path}: the model '{asked}' is served by Ollama endpoints only, and Ollama "
                                f"has no {path}; serve it from llama.cpp's server (--reranking) or vLLM.",
                           param="model", code="not_ollama_endpoint")
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
            held = HeldStream(gateway, answer, endpoint, name)
            return Forwarded(stream=_relay(gateway, held, path, cached, hide_usage), on_close=held.release)
        await calls.decrement_usage(registry, endpoint, name)
        _count(gateway, endpoint, name, answer.get("usage"))
        await cached.keep(answer)
        return Forwarded(body=answer)


def _count(gateway: Gateway, endpoint: str, model: str, usage: object) -> None:
    """Count an answer's ``usage`` (OpenAI's ``prompt_tokens``/``completion_tokens``)."""
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    note(input_tokens=prompt, output_tokens=completion)
    gateway.token_stats.record(endpoint, model, prompt, completion)


async def _relay(gateway: Gateway, held: HeldStream, path: str, cached: Lookup,
                 hide_usage: bool) -> AsyncIterator[bytes]:
    """The upstream stream's chunks as SSE frames, then ``data: [DONE]``; a stream that breaks
    ends with an ``error`` frame, as OpenAI's do. The usage chunk is counted (and kept back
    with ``hide_usage``); a stream that finished gives its slot back, then is offered to the
    cache (assembled only when the cache is to keep it). Closes the upstream and gives the slot back however it ends."""
    assembled = StreamAssembler(path) if cached.keeping else None
    usage = None
    try:
        try:
            async for batch in held.upstream.batches():
                for chunk in batch:
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if assembled is not None:
                        assembled.add(chunk)
                if hide_usage:
                    batch = [chunk for chunk in batch if chunk.get("choices") or not chunk.get("usage")]
                if batch:
                    yield b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in batch)
        except APIError as exc:
            log.warning("a passed-through stream broke: %s", exc.message)
            yield b"data: " + orjson.dumps({"error": {"message": exc.message, "type": exc.type,
                                                      "code": exc.code}}) + b"\n\n"
            return
        _count(gateway, held.endpoint, held.model, usage)
        await held.release()
        if assembled is not None:
            await cached.keep(assembled.answer())
        yield b"data: [DONE]\n\n"
    finally:
        await held.release()
