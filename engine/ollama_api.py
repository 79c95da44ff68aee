"""Ollama's generation routes (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``) served on the gateway's own routing.

An endpoint serving the ``model`` asked is chosen as a turn's is (``model_aliases``; loaded
first, least busy; the same usage slots and ``max_concurrent_connections`` as
``/v1/responses`` and the OpenAI routes; failover while endpoints cannot be reached). An
Ollama endpoint gets the request natively (``<url>/api/<route>``), the body as the client sent
it but for ``model`` (the endpoint's name for it) and ``nomyo``; its answer comes back as it
gave it. Other endpoints (llama.cpp's server, OpenAI-compatible) get it translated
(``engine.ollama_translate``) where a faithful mapping exists; a request that cannot be
translated goes to the model's Ollama endpoints only, and is a 400 naming the field when
there are none.

Ollama streams ``/api/chat`` and ``/api/generate`` unless ``stream`` is ``false``; a stream
is relayed as NDJSON object by object, holds its slot until it ends or the client leaves
(which closes the upstream stream), and ends with an Ollama-style ``{"error": "..."}`` line
when it breaks. A request with an empty prompt (or no messages) only loads the model on
Ollama; elsewhere it is answered at once with ``done_reason: "load"``. Every answer's counts go
to the token statistics and the request log. ``"nomyo": {"cache": true}`` (and
``cache_enabled``) answers chat and generate from the LLM cache: the route, the model, the
messages (or prompt), every field that changes the answer and the tenant make the key; only
whole answers that finished (``done``) are kept, a stream as the answer its objects add up to;
a streamed request gets a hit as NDJSON (its content object, then its ``done`` object).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import orjson

from backends import BackendUnavailable, Endpoint
from chat_client import ChatStream, ConnectFailed, LineStream
from engine import ollama_translate as translate
from engine import route_cache
from engine.held_stream import HeldStream
from engine.passthrough import model_of
from engine.route_cache import Lookup
from errors import APIError
from logs import note
from metrics import BACKEND_ERRORS

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["GENERATION_ROUTES", "Answer", "serve", "ndjson", "Assembled"]

log = logging.getLogger("nomyo_router.ollama")

#: Ollama's generation routes -> whether they stream when ``stream`` is absent.
GENERATION_ROUTES = {"chat": True, "generate": True, "embed": False, "embeddings": False}

_REQUESTS: dict[str, Callable[[dict, str], dict]] = {
    "chat": translate.chat_request, "generate": translate.generate_request,
    "embed": lambda body, kind: translate.embed_request(body),
    "embeddings": lambda body, kind: translate.embeddings_request(body)}
_ANSWERS: dict[str, Callable[[dict, str, int], dict]] = {
    "chat": translate.chat_answer, "generate": translate.generate_answer, "embed": translate.embed_answer,
    "embeddings": lambda answer, model, elapsed: translate.embeddings_answer(answer)}


@dataclass
class Answer:
    """What a route answers: ``body`` (a JSON object, with HTTP ``status``), or ``stream``
    (NDJSON bytes; it gives its slot back when it ends or is closed) and ``on_close``."""

    body: dict | None = None
    stream: AsyncIterator[bytes] | None = None
    status: int = 200
    #: What the response runs when it closes: gives the slot back if the stream never started.
    on_close: Callable[[], Awaitable[None]] | None = None


def ndjson(lines: list[dict]) -> bytes:
    """``lines`` as NDJSON: one JSON object a line."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _streams(body: dict, route: str) -> bool:
    stream = body.get("stream")
    if stream is None:
        return GENERATION_ROUTES[route]
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false.", param="stream", code="invalid_value")
    if stream and not GENERATION_ROUTES[route]:
        raise APIError(400, f"POST /api/{route} does not stream.", param="stream", code="invalid_value")
    return stream


def _only_loads(route: str, body: dict) -> bool:
    """Whether the request only asks Ollama to load the model (an empty prompt, no messages)."""
    if route == "chat":
        return body.get("messages") in (None, [])
    if route == "generate":
        return body.get("prompt") in (None, "")
    return route == "embeddings" and body.get("prompt") == ""


def _loaded(route: str, model: str) -> dict:
    """Ollama's answer to a request that only loads ``model`` (the endpoint has it loaded)."""
    if route == "embeddings":
        return {"embedding": []}
    last = {"message": {"role": "assistant", "content": ""}} if route == "chat" else {"response": ""}
    return {"model": model, "created_at": translate.created_at(), **last, "done": True, "done_reason": "load"}


# ── the LLM cache ──────────────────────────────────────────────────────────────

#: Body fields that are not among what changes the answer (or are the key's own parts).
_NOT_OPTIONS = frozenset({"model", "messages", "prompt", "stream", "keep_alive", "nomyo"})


def _finished(whole: dict) -> bool:
    """Whether an Ollama answer may be cached: it finished (``done``) and was not a load."""
    return whole.get("done") is True and whole.get("done_reason") != "load"


async def lookup(gateway: Gateway, route: str, body: dict, model: str, owner: str | None) -> Lookup:
    """Ask the cache for ``body`` of ``/api/<route>`` (see :func:`engine.route_cache.lookup`;
    ``model``: aliases resolved); a hit gets a fresh ``created_at``."""
    prompt = [{"role": "user", "content": body.get("prompt")}]
    found = await route_cache.lookup(gateway, f"/api/{route}", body, model, owner,
                                     messages=body.get("messages") if route == "chat" else prompt,
                                     skip=_NOT_OPTIONS, finished=_finished, cached=route in ("chat", "generate"))
    if found.hit is not None:
        found.hit["created_at"] = translate.created_at()
    return found


async def replay(route: str, whole: dict) -> AsyncIterator[bytes]:
    """A cached whole answer as the stream a streamed request gets: its content object, then its ``done`` object."""
    done = {**whole, "done": True}
    if route == "chat":
        first = {"model": whole.get("model"), "created_at": whole.get("created_at"), "message": whole.get("message"),
                 "done": False}
        done["message"] = {"role": "assistant", "content": ""}
    else:
        first = {"model": whole.get("model"), "created_at": whole.get("created_at"),
                 "response": whole.get("response", ""), "done": False}
        done["response"] = ""
    yield ndjson([first, done])


class Assembled:
    """The whole answer Ollama stream objects of ``route`` (``chat``, ``generate``) add up to:
    feed each to :meth:`add`; ``final`` is the ``done`` object, ``error`` an error line's message."""

    def __init__(self, route: str):
        self.route = route
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[dict] = []
        self.logprobs: list[dict] = []
        self.final: dict | None = None
        self.error: Any = None

    def add(self, line: dict) -> None:
        """Take one stream object."""
        if "error" in line:
            self.error = line["error"]
            return
        part = (line.get("message") or {}) if self.route == "chat" else line
        text = part.get("content") if self.route == "chat" else part.get("response")
        self.text.append(text if isinstance(text, str) else "")
        if isinstance(part.get("thinking"), str):
            self.thinking.append(part["thinking"])
        if isinstance(part.get("tool_calls"), list):
            self.calls.extend(part["tool_calls"])
        if isinstance(line.get("logprobs"), list):
            self.logprobs.extend(line["logprobs"])
        if line.get("done") is True:
            self.final = line

    def answer(self) -> dict | None:
        """The whole answer (the ``done`` object with the text gathered), or None before it or after an error."""
        if self.final is None or self.error is not None:
            return None
        whole = dict(self.final)
        gathered: dict = {"content" if self.route == "chat" else "response": "".join(self.text)}
        if self.thinking:
            gathered["thinking"] = "".join(self.thinking)
        if self.calls:
            gathered["tool_calls"] = self.calls
        if self.route == "chat":
            whole["message"] = {"role": "assistant", **gathered}
        else:
            whole.update(gathered)
        if self.logprobs:
            whole["logprobs"] = self.logprobs
        return whole


# ── generation ─────────────────────────────────────────────────────────────────

@dataclass
class _Plan:
    """How the request goes: the translated bodies by endpoint kind, the endpoints it may not
    go to, or ``answer`` at once."""

    bodies: dict[str, dict]
    excluded: set[str]
    answer: dict | None = None


async def _plan(gateway: Gateway, route: str, body: dict, asked: str, model: str) -> _Plan:
    """Translate ``body`` for each kind of OpenAI-compatible endpoint serving ``model``; an
    untranslatable one sends the request to the other endpoints only (raised when none is left)."""
    candidates = await gateway.registry.find(model)
    bodies: dict[str, dict] = {}
    excluded: set[str] = set()
    others = {ep.kind for ep, _ in candidates if ep.kind != "ollama"}
    if _only_loads(route, body) and others:
        if len(others) == len({ep.kind for ep, _ in candidates}):
            return _Plan({}, set(), _loaded(route, asked))
        return _Plan({}, {ep.url for ep, _ in candidates if ep.kind != "ollama"})
    refused: APIError | None = None
    for kind in sorted(others):
        try:
            bodies[kind] = _REQUESTS[route](body, kind)
        except translate.Untranslatable as exc:
            refused = refused or exc
            excluded |= {ep.url for ep, _ in candidates if ep.kind == kind}
    if refused is not None and len(excluded) == len(candidates):
        raise refused
    return _Plan(bodies, excluded)


async def serve(gateway: Gateway, route: str, body: dict, owner: str | None = None) -> Answer:
    """Answer Ollama's ``POST /api/<route>`` (a generation route) with ``body`` (see the module);
    ``owner`` is the tenant's tag (the cache keeps tenants apart).

    Raises APIError: 400 for a missing ``model``, a bad ``stream`` or ``nomyo``, or a field no
    endpoint of the model can take; 404 a model no endpoint serves; 429 every endpoint busy;
    502/504 backend faults, or the endpoint's own status and message. The slot is given back
    before any of them leaves.
    """
    asked = model_of(body, f"POST /api/{route}")
    stream = _streams(body, route)
    note(model=asked)
    model = gateway.settings.model_aliases.get(asked, asked)
    if model.startswith("moe-") and model not in gateway.registry.models():
        raise APIError(501, f"'{asked}': NOMYO Router's moe- models (several answers of one model, critiqued, "
                            f"the best one chosen) are not served here; ask for '{model[4:]}' itself.",
                       param="model", code="moe_not_supported")
    cached = await lookup(gateway, route, body, model, owner)
    if cached.hit is not None:
        note(cache="hit")
        return Answer(stream=replay(route, cached.hit)) if stream else Answer(body=cached.hit)
    if cached.asked:
        note(cache="miss")
    body = {key: value for key, value in body.items() if key != "nomyo"}
    plan = await _plan(gateway, route, body, asked, model)
    if plan.answer is not None:
        return Answer(stream=_once(plan.answer)) if stream else Answer(body=plan.answer)
    registry, calls = gateway.registry, gateway.calls
    excluded = set(plan.excluded)
    while True:
        endpoint, name = await calls.choose_endpoint(registry, model, excluded)
        note(endpoint=endpoint, upstream_model=name)
        ep = registry.endpoints.get(endpoint)
        if ep is None:  # removed by a reload since it was chosen
            await calls.decrement_usage(registry, endpoint, name)
            excluded.add(endpoint)
            continue
        started = time.monotonic_ns()
        try:
            translated = None if ep.kind == "ollama" else plan.bodies.get(ep.kind) or _REQUESTS[route](body, ep.kind)
            answer = await _send(gateway, ep, route, body, translated, name, stream)
        except ConnectFailed as exc:
            await calls.decrement_usage(registry, endpoint, name)
            BACKEND_ERRORS.labels(endpoint, "unavailable").inc()
            registry.mark_unreachable(endpoint, exc.detail)
            excluded.add(endpoint)
            if not registry.candidates(model, excluded):
                raise BackendUnavailable(endpoint, exc.detail) from exc
            continue
        except BaseException as exc:
            await calls.decrement_usage(registry, endpoint, name)
            if isinstance(exc, APIError):
                BACKEND_ERRORS.labels(endpoint, str(exc.status)).inc()
            raise
        native = ep.kind == "ollama"
        if isinstance(answer, (ChatStream, LineStream)):
            lines = _NativeLines() if native else translate.StreamLines(route, asked)
            held = HeldStream(gateway, answer, endpoint, name)
            return Answer(stream=_relay(gateway, held, route, lines, started, cached), on_close=held.release)
        await calls.decrement_usage(registry, endpoint, name)
        whole = answer if native else _ANSWERS[route](answer, asked, time.monotonic_ns() - started)
        _count(gateway, endpoint, name, whole, None if native else answer.get("usage"))
        if whole.get("done") is True:
            await cached.keep(whole)
        return Answer(body=whole)


async def _send(gateway: Gateway, ep: Endpoint, route: str, body: dict, translated: dict | None, name: str,
                stream: bool) -> Any:
    """One call: natively to an Ollama endpoint, else the translated body to its OpenAI route."""
    client = gateway.registry.forwarder(ep.url)
    if ep.kind == "ollama":
        return await client.send_native("POST", f"{ep.url}/api/{route}", orjson.dumps({**body, "model": name}),
                                        stream=stream)
    path, expect = translate.TRANSLATED_PATHS[route]
    params = {**translated, "model": name}
    if route in ("chat", "generate"):
        params["stream"] = stream
        if stream:
            params["stream_options"] = {"include_usage": True}
    return await client.post(orjson.dumps(params), stream=stream, path=path, expect=expect)


def _count(gateway: Gateway, endpoint: str, model: str, whole: dict, usage: Any = None) -> None:
    """Count an answer's tokens: Ollama's ``prompt_eval_count``/``eval_count``, else OpenAI's ``usage``."""
    prompt, completion = whole.get("prompt_eval_count"), whole.get("eval_count")
    if prompt is None and isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
    if prompt is None and completion is None:
        return
    note(input_tokens=prompt, output_tokens=completion)
    gateway.token_stats.record(endpoint, model, prompt, completion)


class _NativeLines:
    """An Ollama endpoint's own stream objects, relayed as they came."""

    @staticmethod
    def feed(chunk: dict) -> list[dict]:
        return [chunk]

    @staticmethod
    def finish(elapsed_ns: int) -> list[dict]:
        return []


async def _once(answer: dict) -> AsyncIterator[bytes]:
    yield ndjson([answer])


async def _relay(gateway: Gateway, held: HeldStream, route: str, lines: Any, started: int,
                 cached: Lookup) -> AsyncIterator[bytes]:
    """The upstream stream (``held``: a ChatStream or LineStream) as Ollama NDJSON. One that
    breaks, or ends before its ``done`` object, ends with an ``{"error": ...}`` line; the
    ``done`` object's counts are counted, and a stream that finished gives its slot back, then
    is offered to the cache. Closes the upstream and gives the slot back however it ends."""
    assembled = Assembled(route)
    try:
        try:
            async for batch in held.upstream.batches():
                out = [line for chunk in batch for line in lines.feed(chunk)]
                if out:
                    for line in out:
                        assembled.add(line)
                    yield ndjson(out)
            out = lines.finish(time.monotonic_ns() - started)
            for line in out:
                assembled.add(line)
        except APIError as exc:
            log.warning("an Ollama stream broke: %s", exc.message)
            yield ndjson([{"error": exc.message}])
            return
        if assembled.final is None and assembled.error is None:
            out.append({"error": "The backend's stream ended before its final (done) object."})
        await held.release()
        if assembled.final is not None:
            _count(gateway, held.endpoint, held.model, assembled.final)
            whole = assembled.answer()
            if whole is not None:
                await cached.keep(whole)
        if out:
            yield ndjson(out)
    finally:
        await held.release()
