"""Workloads: the Responses request sent to the gateway, its Chat Completions twin sent
to the backend directly, and how each reply is checked.

Every workload is a pair of fixed request bodies, so a round repeats identical
requests. The twin is the body the gateway itself sends upstream for that
Responses request (same messages, ``max_tokens``, streaming options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson

from bench.client import JSON, SSE_CHAT, SSE_RESPONSES, Reply

PROMPT = "Hello, benchmark. Please answer briefly."
NEXT_PROMPT = "Continue, please."

Check = Callable[[Reply], "str | None"]


@dataclass
class Workload:
    """One workload.

    ``key``: stable name in the report; ``label``: table text; ``tokens``:
    words per reply (= stream chunks); ``gateway_body``/``direct_body``: JSON
    request bodies (bytes); ``requests``: requests per latency round (None: the
    default size); ``cache``: answers are expected from the gateway's cache
    (the backend must not be called); ``depth``: chain depth, for chain workloads.
    """

    key: str
    label: str
    stream: bool
    tokens: int
    gateway_body: bytes
    direct_body: bytes
    requests: int | None = None
    cache: bool = False
    depth: int | None = None
    store: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def gateway_mode(self) -> int:
        """Reply mode of the gateway request (:mod:`bench.client` constants)."""
        return SSE_RESPONSES if self.stream else JSON

    @property
    def direct_mode(self) -> int:
        """Reply mode of the direct request."""
        return SSE_CHAT if self.stream else JSON

    def gateway_check(self) -> Check:
        """The check of a gateway reply for this workload."""
        return check_responses_stream(self.tokens) if self.stream else check_response_json

    def direct_check(self) -> Check:
        """The check of a direct reply for this workload."""
        return check_chat_stream(self.tokens) if self.stream else check_chat_json


def responses_body(model: str, *, input: str = PROMPT, stream: bool = False, store: bool = False,
                   tokens: int = 16, previous: str | None = None, cache: bool = False) -> bytes:
    """A ``POST /v1/responses`` body (bytes); ``tokens`` is sent as ``max_output_tokens``."""
    body: dict = {"model": model, "input": input, "store": store, "max_output_tokens": tokens}
    if stream:
        body["stream"] = True
    if previous:
        body["previous_response_id"] = previous
    if cache:
        body["nomyo"] = {"cache": True}
    return orjson.dumps(body)


def chat_body(model: str, messages: list[dict], *, stream: bool = False, tokens: int = 16) -> bytes:
    """The Chat Completions body the gateway sends for the equivalent Responses request."""
    body: dict = {"model": model, "messages": messages, "max_tokens": tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def basic_workloads(model: str, nonstream_tokens: int, stream_chunks: tuple[int, int],
                    long_stream_requests: int | None) -> list[Workload]:
    """Non-streamed ``store: false`` and ``store: true``, streamed with the short and the
    long chunk count (``stream_chunks``), and a cache hit (``nomyo.cache``, ``store: false``)."""
    user = [{"role": "user", "content": PROMPT}]
    short, long = stream_chunks
    return [
        Workload("nonstream_store_false", "non-stream, store:false", False, nonstream_tokens,
                 responses_body(model, store=False, tokens=nonstream_tokens),
                 chat_body(model, user, tokens=nonstream_tokens)),
        Workload("nonstream_store_true", "non-stream, store:true", False, nonstream_tokens,
                 responses_body(model, store=True, tokens=nonstream_tokens),
                 chat_body(model, user, tokens=nonstream_tokens), store=True),
        Workload(f"stream_{short}", f"stream, {short} chunks", True, short,
                 responses_body(model, stream=True, store=False, tokens=short),
                 chat_body(model, user, stream=True, tokens=short)),
        Workload(f"stream_{long}", f"stream, {long} chunks", True, long,
                 responses_body(model, stream=True, store=False, tokens=long),
                 chat_body(model, user, stream=True, tokens=long), requests=long_stream_requests),
        Workload("cache_hit", "cache hit (nomyo.cache)", False, nonstream_tokens,
                 responses_body(model, store=False, tokens=nonstream_tokens, cache=True),
                 chat_body(model, user, tokens=nonstream_tokens), cache=True),
    ]


def chain_turn_prompt(turn: int) -> str:
    """The user input of turn ``turn`` (1-based) while a chain is built."""
    return f"Turn {turn}: tell me a little more."


def chain_workload(model: str, depth: int, chain: list[tuple[str, str]], tokens: int) -> Workload:
    """Requests continuing from the ``depth``-th response of ``chain`` (``store: false``).

    ``chain``: ``(response id, its output text)`` per turn, oldest first. The
    direct twin carries the whole conversation as messages.
    """
    previous_id = chain[depth - 1][0]
    messages: list[dict] = []
    for turn, (_, text) in enumerate(chain[:depth], start=1):
        messages.append({"role": "user", "content": chain_turn_prompt(turn)})
        messages.append({"role": "assistant", "content": text})
    messages.append({"role": "user", "content": NEXT_PROMPT})
    return Workload(f"chain_depth_{depth}", f"chain, depth {depth}", False, tokens,
                    responses_body(model, input=NEXT_PROMPT, store=False, tokens=tokens, previous=previous_id),
                    chat_body(model, messages, tokens=tokens), depth=depth)


# ── checks: None when the reply is a success, else what went wrong ─────────────

def _transport_or_status(reply: Reply) -> str | None:
    if reply.error is not None:
        return reply.error
    if reply.status != 200:
        return f"HTTP {reply.status}: {bytes(reply.body[:300]).decode(errors='replace')}"
    return None


def check_response_json(reply: Reply) -> str | None:
    """A non-streamed Response: 200, ``status: completed``, some output."""
    problem = _transport_or_status(reply)
    if problem:
        return problem
    try:
        obj = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return "the reply is not JSON"
    if obj.get("status") != "completed":
        return f"response status {obj.get('status')!r}: {obj.get('error') or obj.get('incomplete_details')}"
    if not obj.get("output"):
        return "the response has no output"
    return None


def check_chat_json(reply: Reply) -> str | None:
    """A non-streamed Chat Completion: 200, a message with content."""
    problem = _transport_or_status(reply)
    if problem:
        return problem
    try:
        obj = orjson.loads(reply.body)
        content = obj["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "the reply is not a chat completion"
    return None if content else "the completion has no content"


def check_responses_stream(chunks: int) -> Check:
    """A Responses event stream: 200, ``chunks`` text deltas, ending with ``response.completed``."""
    def check(reply: Reply) -> str | None:
        problem = _transport_or_status(reply)
        if problem:
            return problem
        if reply.terminal != "response.completed":
            detail = bytes(reply.error_event or b"").decode(errors="replace")[:300]
            return f"stream ended with {reply.terminal or 'no terminal event'} {detail}".strip()
        if reply.deltas != chunks:
            return f"expected {chunks} output_text deltas, got {reply.deltas}"
        return None
    return check


def check_chat_stream(chunks: int) -> Check:
    """A Chat Completions stream: 200, ``chunks`` content chunks, a usage chunk, ``[DONE]``."""
    def check(reply: Reply) -> str | None:
        problem = _transport_or_status(reply)
        if problem:
            return problem
        if reply.terminal != "[DONE]":
            return "stream ended without [DONE]"
        if reply.deltas != chunks:
            return f"expected {chunks} content chunks, got {reply.deltas}"
        if not reply.usage_seen:
            return "no usage chunk"
        return None
    return check
