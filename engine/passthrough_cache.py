"""The LLM cache on OpenAI's passed-through routes: ``/v1/chat/completions`` and ``/v1/completions``.

NOMYO Router's opt-in: a request body with ``"nomyo": {"cache": true}`` (and ``cache_enabled``)
is answered from the cache when it holds an answer for the same route, model, messages (or
prompt), answer-changing options and tenant; ``nomyo`` itself never goes upstream. Only whole
answers that finished are kept: a plain answer as the endpoint gave it, a stream as the answer
its chunks add up to (:class:`StreamAssembler`). A hit is served in the form the request asked
for: the whole answer, or for ``stream: true`` a short stream of the same chunks a model would
send (:func:`replay`), with the usage chunk when ``stream_options.include_usage`` asks for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import orjson

from errors import APIError

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["CACHED_ROUTES", "nomyo_options", "Lookup", "lookup", "replay", "StreamAssembler"]

#: Routes (under ``/v1``) whose answers may be cached: NOMYO Router's cached OpenAI routes.
CACHED_ROUTES = frozenset({"chat/completions", "completions"})
#: Body fields that are not part of what the model answers to (or are the key's own parts).
_NOT_OPTIONS = frozenset({"model", "messages", "prompt", "stream", "stream_options", "nomyo", "user", "metadata",
                          "store"})


def nomyo_options(body: dict, path: str) -> bool:
    """Whether ``body`` asks for the cache: its ``nomyo`` field, which must be ``{"cache": bool}``.

    Raises APIError 400 (``param="nomyo"``) for anything else in it, or for a cache asked on
    a route that has none (``/v1/embeddings``)."""
    extra = body.get("nomyo")
    if extra is None:
        return False
    if not isinstance(extra, dict) or set(extra) - {"cache"} or not isinstance(extra.get("cache", False), bool):
        raise APIError(400, "'nomyo' takes one field, 'cache': true or false.", param="nomyo", code="invalid_value")
    wanted = extra.get("cache", False)
    if wanted and path not in CACHED_ROUTES:
        raise APIError(400, f"POST /v1/{path} has no cache; 'nomyo.cache' is for chat and text completions.",
                       param="nomyo.cache", code="invalid_value")
    return wanted


class Lookup:
    """One request's place in the cache: ``hit`` (the cached answer, a dict) or None, ``asked``
    (the cache was looked in), and :meth:`keep` to store the answer of a miss."""

    def __init__(self, hit: dict | None, write: Callable[[dict], Awaitable[None]] | None):
        self.hit = hit
        self._write = write
        self.asked = hit is not None or write is not None

    async def keep(self, answer: dict) -> None:
        """Store ``answer`` (a whole completion) unless this was a hit or the answer did not finish."""
        if self._write is not None and _finished(answer):
            await self._write(answer)


async def lookup(gateway: Gateway, path: str, body: dict, model: str, owner: str | None) -> Lookup:
    """Ask the cache for ``body`` (see the module); ``model`` is the gateway's name of the model
    (aliases resolved). Without a cache, or a request that does not ask, nothing is looked up
    or stored (``nomyo`` is checked all the same)."""
    cache = gateway.cache
    if not nomyo_options(body, path) or cache is None:
        return Lookup(None, None)
    messages = body.get("messages") if path == "chat/completions" else [{"role": "user", "content": body.get("prompt")}]
    options = {key: value for key, value in body.items() if key not in _NOT_OPTIONS}
    if owner is not None:
        options["owner"] = owner
    route = f"/v1/{path}"
    found = await cache.get_chat(route, model, messages, options)
    if found is not None:
        return Lookup(orjson.loads(found), None)

    async def write(answer: dict) -> None:
        await cache.set_chat(route, model, messages, orjson.dumps(answer), options)
    return Lookup(None, write)


def _finished(answer: dict) -> bool:
    choices = answer.get("choices")
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _sse(chunk: dict) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def replay(path: str, answer: dict, body: dict) -> AsyncIterator[bytes]:
    """A cached whole ``answer`` as the SSE stream a streamed request of ``body`` gets: per
    choice its content (or text) in one chunk, then its ``finish_reason``; the usage chunk if
    asked; ``data: [DONE]``."""
    base = {"id": answer.get("id"), "created": int(time.time()), "model": answer.get("model"),
            "object": "chat.completion.chunk" if path == "chat/completions" else "text_completion"}
    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        if path == "chat/completions":
            message = choice.get("message") or {}
            delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
            yield _sse({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
        else:
            yield _sse({**base, "choices": [{"index": index, "text": choice.get("text", ""), "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": index, "text": "", "finish_reason": choice.get("finish_reason")}]})
    if (body.get("stream_options") or {}).get("include_usage") and answer.get("usage"):
        yield _sse({**base, "choices": [], "usage": answer["usage"]})
    yield b"data: [DONE]\n\n"


class StreamAssembler:
    """The whole answer a Chat Completions (or text completions) stream adds up to: each
    choice's role, content (or text), tool calls (merged by their ``index``) and
    ``finish_reason``, and the usage of the last chunk that has one. Feed it every chunk."""

    def __init__(self, path: str):
        self.path = path
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        """Take one chunk (a parsed SSE ``data`` object)."""
        if not self.head:
            self.head = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            into = self.choices.setdefault(index, {"index": index, "text": [], "calls": {}, "role": "assistant",
                                                   "finish_reason": None})
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
            if self.path != "chat/completions":
                into["text"].append(choice.get("text") or "")
                continue
            delta = choice.get("delta") or {}
            into["role"] = delta.get("role") or into["role"]
            into["text"].append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                merged = into["calls"].setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                                         "function": {"name": "", "arguments": ""}})
                merged["id"] = call.get("id") or merged["id"]
                function = call.get("function") or {}
                merged["function"]["name"] += function.get("name") or ""
                merged["function"]["arguments"] += function.get("arguments") or ""

    def answer(self) -> dict:
        """The assembled whole answer, shaped as the route's plain answer."""
        choices = []
        for index in sorted(self.choices):
            part = self.choices[index]
            text = "".join(part["text"])
            if self.path == "chat/completions":
                message: dict = {"role": part["role"], "content": text or None}
                if part["calls"]:
                    message["tool_calls"] = [part["calls"][i] for i in sorted(part["calls"])]
                choices.append({"index": index, "message": message, "finish_reason": part["finish_reason"]})
            else:
                choices.append({"index": index, "text": text, "finish_reason": part["finish_reason"]})
        kind = "chat.completion" if self.path == "chat/completions" else "text_completion"
        return {**self.head, "object": kind, "choices": choices, **({"usage": self.usage} if self.usage else {})}
