"""Workloads: the request sent to the gateway, its Chat Completions twin sent to the
backend directly, and how each reply is checked.

Every workload is a pair of fixed request bodies, so a round repeats identical
requests. The twin is the body the gateway itself sends upstream for that request
(same messages, ``max_tokens``, streaming options). Two groups (:data:`GROUPS`):

* ``responses``: ``POST /v1/responses`` (plain, stored, streamed, cached, chained);
* ``passthrough``: the routes the gateway passes to an endpoint. ``POST /v1/chat/completions``
  goes upstream as the client sent it (the gateway routes it, holds a slot, counts its usage
  and relays the answer), so its twin is the same body; ``POST /api/chat`` (Ollama's route)
  is translated for the OpenAI-compatible bench backend into ``/v1/chat/completions`` and its
  answer back into Ollama's objects (NDJSON when streamed), so its twin is the translated body
  (``options.num_predict`` as ``max_tokens``, ``stream`` and, streamed, ``stream_options``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson

from bench.client import JSON, NDJSON, SSE_CHAT, SSE_RESPONSES, Reply

PROMPT = "Hello, benchmark. Please answer briefly."
NEXT_PROMPT = "Continue, please."

Check = Callable[[Reply], "str | None"]

#: The gateway routes a workload may send to.
RESPONSES, CHAT, OLLAMA_CHAT = "/v1/responses", "/v1/chat/completions", "/api/chat"
#: Workload groups (``python -m bench --group``): which route each measures.
GROUPS = {"responses": "POST /v1/responses: plain, stored, streamed, cached and chained requests "
                       "(and the phases built on them: tool loops, held streams, RSS flatness, PostgreSQL)",
          "passthrough": "POST /v1/chat/completions passed through and Ollama's POST /api/chat translated, "
                         "plain and streamed"}


@dataclass
class Workload:
    """One workload.

    ``key``: stable name in the report; ``label``: table text; ``tokens``:
    words per reply (= stream chunks); ``gateway_body``/``direct_body``: JSON
    request bodies (bytes); ``requests``: requests per latency round (None: the
    default size); ``cache``: answers are expected from the gateway's cache
    (the backend must not be called); ``depth``: chain depth, for chain workloads;
    ``route``: the gateway path (:data:`RESPONSES`, :data:`CHAT` or :data:`OLLAMA_CHAT`);
    ``group``: its key in :data:`GROUPS`.
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
    route: str = RESPONSES
    group: str = "responses"

    @property
    def gateway_mode(self) -> int:
        """Reply mode of the gateway request (:mod:`bench.client` constants)."""
        if not self.stream:
            return JSON
        return {RESPONSES: SSE_RESPONSES, CHAT: SSE_CHAT, OLLAMA_CHAT: NDJSON}[self.route]

    @property
    def direct_mode(self) -> int:
        """Reply mode of the direct request."""
        return SSE_CHAT if self.stream else JSON

    def gateway_check(self) -> Check:
        """The check of a gateway reply for this workload."""
        if self.route == CHAT:
            return self.direct_check()
        if self.route == OLLAMA_CHAT:
            return check_ollama_stream(self.tokens) if self.stream else check_ollama_json(self.tokens)
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


def passthrough_workloads(model: str, nonstream_tokens: int, stream_chunks: tuple[int, int],
                          long_stream_requests: int | None) -> list[Workload]:
    """The ``passthrough`` group: ``POST /v1/chat/completions`` and ``POST /api/chat``, each
    non-streamed and streamed with the short and the long chunk count (``stream_chunks``).

    Chat Completions bodies are sent to the gateway and to the backend alike (streamed ones ask
    for the usage chunk, so the gateway adds nothing to them). ``/api/chat`` bodies carry the
    reply length as ``options.num_predict``; their twins are what the gateway's translation
    sends upstream (``engine.ollama_translate.chat_request``, then ``model`` and ``stream``)."""
    user = [{"role": "user", "content": PROMPT}]
    short, long = stream_chunks
    out = [Workload("chat_nonstream", "chat/completions, non-stream", False, nonstream_tokens,
                    chat_body(model, user, tokens=nonstream_tokens), chat_body(model, user, tokens=nonstream_tokens),
                    route=CHAT, group="passthrough")]
    for chunks, requests in ((short, None), (long, long_stream_requests)):
        body = chat_body(model, user, stream=True, tokens=chunks)
        out.append(Workload(f"chat_stream_{chunks}", f"chat/completions, stream, {chunks} chunks", True, chunks,
                            body, body, requests=requests, route=CHAT, group="passthrough"))
    out.append(Workload("ollama_chat_nonstream", "/api/chat, non-stream", False, nonstream_tokens,
                        ollama_chat_body(model, user, stream=False, tokens=nonstream_tokens),
                        translated_chat_body(model, user, stream=False, tokens=nonstream_tokens),
                        route=OLLAMA_CHAT, group="passthrough"))
    for chunks, requests in ((short, None), (long, long_stream_requests)):
        out.append(Workload(f"ollama_chat_stream_{chunks}", f"/api/chat, stream, {chunks} chunks", True, chunks,
                            ollama_chat_body(model, user, stream=True, tokens=chunks),
                            translated_chat_body(model, user, stream=True, tokens=chunks), requests=requests,
                            route=OLLAMA_CHAT, group="passthrough"))
    return out


def ollama_chat_body(model: str, messages: list[dict], *, stream: bool, tokens: int) -> bytes:
    """An Ollama ``POST /api/chat`` body: ``tokens`` as ``options.num_predict``."""
    return orjson.dumps({"model": model, "messages": messages, "stream": stream,
                         "options": {"num_predict": tokens}})


def translated_chat_body(model: str, messages: list[dict], *, stream: bool, tokens: int) -> bytes:
    """The Chat Completions body the gateway sends an OpenAI-compatible endpoint for
    :func:`ollama_chat_body` (same fields, in the same order)."""
    body: dict = {"messages": messages, "max_tokens": tokens, "model": model, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def workload_keys(chain_depths: tuple[int, ...], stream_chunks: tuple[int, int],
                  groups: tuple[str, ...]) -> list[str]:
    """Every workload key of ``groups`` for these sizes (chains included), in run order."""
    keys: list[str] = []
    if "responses" in groups:
        keys += [w.key for w in basic_workloads("m", 1, stream_chunks, None)]
        keys += [f"chain_depth_{d}" for d in chain_depths]
    if "passthrough" in groups:
        keys += [w.key for w in passthrough_workloads("m", 1, stream_chunks, None)]
    return keys


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
    """A non-streamed Chat Completion: 200, ``object: "chat.completion"``, an assistant
    message with content, and ``usage``."""
    problem = _transport_or_status(reply)
    if problem:
        return problem
    try:
        obj = orjson.loads(reply.body)
        message = obj["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "the reply is not a chat completion"
    if obj.get("object") != "chat.completion":
        return f"the reply's object is {obj.get('object')!r}, not 'chat.completion'"
    if not isinstance(message, dict) or message.get("role") != "assistant" or not message.get("content"):
        return "the completion has no assistant content"
    if not isinstance(obj.get("usage"), dict):
        return "the completion has no usage"
    return None


def check_ollama_json(tokens: int) -> Check:
    """A whole Ollama ``/api/chat`` answer: 200, ``done: true`` with ``done_reason: "stop"``,
    an assistant message with content, and ``eval_count`` = ``tokens`` (the usage counted)."""
    def check(reply: Reply) -> str | None:
        problem = _transport_or_status(reply)
        if problem:
            return problem
        try:
            obj = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return "the reply is not JSON"
        return _ollama_final(obj, tokens, whole=True)
    return check


def _ollama_final(obj: object, tokens: int, whole: bool) -> str | None:
    """What is wrong with Ollama's ``done`` object ``obj`` (None: nothing); ``whole``: it is a
    non-streamed answer, which carries the whole message."""
    if not isinstance(obj, dict) or obj.get("done") is not True:
        return f"the answer is not an Ollama done object: {orjson.dumps(obj)[:300].decode(errors='replace')}"
    message = obj.get("message")
    if not isinstance(message, dict) or message.get("role") != "assistant" or (whole and not message.get("content")):
        return "the done object has no assistant message" + (" with content" if whole else "")
    if obj.get("done_reason") != "stop":
        return f"done_reason {obj.get('done_reason')!r}, not 'stop'"
    if obj.get("eval_count") != tokens:
        return f"eval_count {obj.get('eval_count')!r}, expected {tokens}"
    return None


def check_ollama_stream(chunks: int) -> Check:
    """Ollama's NDJSON stream of ``/api/chat``: 200, ``chunks`` message objects with content
    (``done: false``), then one ``done: true`` object (see :func:`check_ollama_json`, without
    content) and nothing after it; no ``error`` object."""
    def check(reply: Reply) -> str | None:
        problem = _transport_or_status(reply)
        if problem:
            return problem
        if reply.bad:
            detail = bytes(reply.error_event or b"").decode(errors="replace")[:300]
            return f"{reply.bad} line(s) not Ollama chat objects (or after the done object): {detail}"
        if reply.terminal != "done":
            return "stream ended without a done: true object"
        if reply.deltas != chunks:
            return f"expected {chunks} message objects with content, got {reply.deltas}"
        return _ollama_final(reply.final, chunks, whole=False)
    return check


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
    """A Chat Completions stream: 200, ``chat.completion.chunk`` frames only (no ``error``
    frame), ``chunks`` of them with content, a usage chunk, ending with ``[DONE]``."""
    def check(reply: Reply) -> str | None:
        problem = _transport_or_status(reply)
        if problem:
            return problem
        if reply.bad:
            detail = bytes(reply.error_event or b"").decode(errors="replace")[:300]
            return f"{reply.bad} frame(s) not chat.completion.chunk (or after [DONE]): {detail}"
        if reply.terminal != "[DONE]":
            return "stream ended without [DONE]"
        if reply.deltas != chunks:
            return f"expected {chunks} content chunks, got {reply.deltas}"
        if not reply.usage_seen:
            return "no usage chunk"
        return None
    return check
