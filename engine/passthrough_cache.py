"""The LLM cache on OpenAI's passed-through routes: ``/v1/chat/completions`` and ``/v1/completions``.

NOMYO Router's opt-in (``engine.route_cache``): a request body with ``"nomyo": {"cache": true}``
(and ``cache_enabled``) is answered from the cache when it holds an answer for the same route,
model, messages (or prompt), answer-changing options and tenant. Only whole
answers that finished are kept: a plain answer as the endpoint gave it, a stream as the answer
its chunks add up to (:class:`StreamAssembler`). A hit is served in the form the request asked
for: the whole answer, or for ``stream: true`` a short stream of the same chunks a model would
send (:func:`replay`), with the usage chunk when ``stream_options.include_usage`` asks for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator

import orjson

from engine import route_cache
from engine.route_cache import Lookup

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["CACHED_ROUTES", "Lookup", "lookup", "replay", "StreamAssembler"]

#: Routes (under ``/v1``) whose answers may be cached: NOMYO Router's cached OpenAI routes.
CACHED_ROUTES = frozenset({"chat/completions", "completions"})
#: Body fields that are not part of what the model answers to (or are the key's own parts).
_NOT_OPTIONS = frozenset({"model", "messages", "prompt", "stream", "stream_options", "nomyo", "user", "metadata",
                          "store"})


async def lookup(gateway: Gateway, path: str, body: dict, model: str, owner: str | None) -> Lookup:
    """Ask the cache for ``body`` of ``/v1/<path>`` (see :func:`engine.route_cache.lookup`);
    ``model`` is the gateway's name of the model (aliases resolved)."""
    prompt = [{"role": "user", "content": body.get("prompt")}]
    return await route_cache.lookup(gateway, f"/v1/{path}", body, model, owner,
                                    messages=body.get("messages") if path == "chat/completions" else prompt,
                                    skip=_NOT_OPTIONS, finished=_finished, cached=path in CACHED_ROUTES)


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
