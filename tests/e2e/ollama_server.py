"""A scripted server speaking Ollama's wire protocol, for end-to-end tests.

Native endpoints (``/api/version``, ``/api/tags``, ``/api/ps``, NDJSON ``/api/chat`` and
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/show``, and model management:
``/api/pull``, ``/api/push``, ``/api/create``, ``/api/delete``, ``/api/copy``) and the
OpenAI-compatible layer (``/v1/models``, ``/v1/chat/completions`` as JSON or SSE,
``/v1/completions``, ``/v1/embeddings``, and ``/v1/rerank`` as llama.cpp's server has it) answer with deterministic replies (see ``_Reply``),
under fault-injection knobs and request counters (see ``OllamaTestServer``). One word is one token.

Standalone: ``python tests/e2e/ollama_server.py --port 11434 --models tiny:latest``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import re
import socket
import string
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

DEFAULT_TEXT = "Hello from the Ollama test server."
THINK_TEXT = "Thinking it over."
TOOL_ARGUMENTS = {"city": "Paris"}
#: Arguments for tools the script knows by name (Codex's), instead of :data:`TOOL_ARGUMENTS`.
CODEX_COMMAND = "echo nomyo-codex-e2e"
TOOL_ARGUMENTS_BY_NAME = {"exec_command": {"cmd": CODEX_COMMAND},
                          "multi_agent_v1__wait_agent": {"targets": ["agent-that-does-not-exist"]}}
TOOL_RESULT_PREFIX = "The tool said: "
LONG_CAP = 1000
OLLAMA_VERSION = "0.11.4"
_LONG_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet")
_MODIFIED_AT = datetime(2025, 1, 15, 12, 0, 0, 123456, tzinfo=timezone.utc)
_ID_ALPHABET = string.ascii_lowercase + string.digits


class _StreamAborted(Exception):
    """Raised inside a streaming response so uvicorn drops the connection."""


def _hide_scripted_aborts(record: logging.LogRecord) -> bool:
    """Logging filter that suppresses uvicorn's report of a deliberate abort."""
    return not (record.exc_info and isinstance(record.exc_info[1], _StreamAborted))


logging.getLogger("uvicorn.error").addFilter(_hide_scripted_aborts)


def _pieces(text: str) -> list[str]:
    """Split ``text`` into word pieces (leading whitespace attached) that join back to it."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or ([text] if text else [])


def _text_of(content: Any) -> str:
    """Return the text of a message ``content`` given as a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _go_time(moment: datetime) -> str:
    """Format a timestamp like Go's RFC3339Nano: trailing zeros trimmed, ``Z`` for UTC."""
    text = moment.isoformat(timespec="microseconds")
    stamp, offset = text[:26].rstrip("0").rstrip("."), text[26:]
    return stamp + ("Z" if offset in ("", "+00:00") else offset)


def _field(body: dict, outer: str, inner: str) -> Any:
    """Return ``body[outer][inner]`` when ``body[outer]`` is an object, else ``None``."""
    value = body.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _json(data: Any, status: int = 200) -> Response:
    """Serialise ``data`` with orjson into an ``application/json`` response."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _openai_error(status: int, message: str, etype: str = "api_error") -> Response:
    """Build an error in the OpenAI layer's shape ``{"error": {message, type, param, code}}``."""
    return _json({"error": {"message": message, "type": etype, "param": None, "code": None}}, status)


def _arguments_for(tool: str) -> dict:
    return dict(TOOL_ARGUMENTS_BY_NAME.get(tool, TOOL_ARGUMENTS))


class _Reply:
    """A scripted assistant turn: reasoning and content pieces, tool calls, finish reason, usage.

    * last message is a ``tool`` result -> ``The tool said: <its content>``;
    * tools offered and last message from the user -> a call to the first tool with
      ``{"city": "Paris"}`` (``[two]``: the first two tools, or the only one twice; Codex's
      ``exec_command`` gets a ``cmd``; ``[agent]`` calls Codex's namespaced ``wait_agent``);
    * ``[long]`` in the last user message -> words up to the budget (else 1000), ``length``;
    * otherwise ``Hello from the Ollama test server.``;
    * ``[think]`` in the last user message adds the reasoning ``Thinking it over.`` first.

    A token budget shorter than reasoning plus content truncates it with ``length``.
    """

    def __init__(self, messages: list[dict], tools: Any, budget: int | None) -> None:
        last = messages[-1]
        role = last.get("role")
        user_text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        self.reasoning = _pieces(THINK_TEXT) if "[think]" in user_text else []
        self.calls: list[str] = []
        self.content: list[str] = []
        self.finish = "stop"
        names = [t["function"]["name"] for t in (tools if isinstance(tools, list) else []) if isinstance(t, dict)
                 and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
        if role == "tool":
            self.content = _pieces(TOOL_RESULT_PREFIX + _text_of(last.get("content")))
        elif names and role == "user" and "[agent]" in user_text and "multi_agent_v1__wait_agent" in names:
            self.calls = ["multi_agent_v1__wait_agent"]
        elif names and role == "user":
            self.calls = (names[:2] if len(names) > 1 else names * 2) if "[two]" in user_text else names[:1]
        elif role == "user" and "[long]" in user_text:
            count = LONG_CAP if budget is None else budget
            self.content = [("" if i == 0 else " ") + _LONG_WORDS[i % len(_LONG_WORDS)] for i in range(count)]
            self.finish = "length"
        else:
            self.content = _pieces(DEFAULT_TEXT)
        if budget is not None and len(self.reasoning) + len(self.content) > budget:
            self.reasoning = self.reasoning[:budget]
            self.content = self.content[: budget - len(self.reasoning)]
            self.finish = "length"
        self.prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in messages)
        self.completion_tokens = len(self.reasoning) + len(self.content) + len(self.calls)

    def usage(self) -> dict:
        """Return the OpenAI-layer usage object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def call_ids(self, rng: random.Random) -> list[str]:
        """Draw one distinct ``call_xxxxxxxx`` identifier per tool call."""
        ids: set[str] = set()
        while len(ids) < len(self.calls):
            ids.add("call_" + "".join(rng.choices(_ID_ALPHABET, k=8)))
        return sorted(ids)


class _Stream:
    """ASGI response writing pre-encoded frames under the server's delay and drop knobs."""

    def __init__(self, server: OllamaTestServer, frames: list[bytes], media_type: str) -> None:
        self.server, self.frames, self.media_type = server, frames, media_type

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Send the frames one by one; stop on client disconnect, abort when told to."""
        server, gone = self.server, asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")]})
            for index, frame in enumerate(self.frames):
                if server.drop_after_chunks is not None and index >= server.drop_after_chunks:
                    raise _StreamAborted(f"scripted abort after {index} chunks")
                if index and server.chunk_delay:
                    await asyncio.sleep(server.chunk_delay)
                if gone.is_set():
                    server.disconnects += 1
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            server._leave()


def embedding_of(text: str, dimensions: int = 8) -> list[float]:
    """A stand-in embedding of ``text``: ``dimensions`` numbers in [0, 1) from its SHA-256."""
    digest = hashlib.sha256(text.encode()).digest()
    return [digest[n] / 256 for n in range(dimensions)]


def _model_entry(name: str) -> dict:
    """Describe one model the way ``/api/tags`` does, derived deterministically from its name."""
    tag = name.rsplit(":", 1)[-1]
    size_label = tag.upper() if re.fullmatch(r"\d+(\.\d+)?[bm]", tag) else "1B"
    return {"name": name, "model": name, "modified_at": _go_time(_MODIFIED_AT),
            "size": 100_000_000 + len(name) * 1_000_003, "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": size_label, "quantization_level": "Q4_K_M"}}


class OllamaTestServer:
    """An Ollama-protocol server on 127.0.0.1 running uvicorn in a background thread.

    Knobs (constructor arguments, also plain attributes changeable while running):
    ``chunk_delay`` seconds between stream chunks, ``first_byte_delay`` seconds before
    the response starts, ``fail_status`` HTTP status for chat requests (with
    ``fail_count`` limiting how many requests fail; ``None`` means all),
    ``drop_after_chunks`` abort a stream's connection after that many chunks.

    Counters: ``requests_total`` (chat and generate requests received), ``in_flight``,
    ``peak_in_flight``, ``disconnects`` (streams abandoned by the client) and
    ``requests`` (parsed request bodies of the model routes, in order of arrival), ``managed``
    (model management bodies, each with its ``op``), ``failures_sent``;
    ``stats()`` and ``GET /_test/stats`` report them, ``reset()`` zeroes them.
    Use ``start()``/``stop()``, or the instance as a (sync or async) context manager.
    """

    def __init__(self, models: list[str] | tuple[str, ...] = ("tiny:latest",), loaded: list[str] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, chunk_delay: float = 0.0, first_byte_delay: float = 0.0,
                 fail_status: int | None = None, fail_count: int | None = None,
                 drop_after_chunks: int | None = None, version: str = OLLAMA_VERSION) -> None:
        self.models = list(models)
        self.loaded = list(loaded or [])
        self.host, self.port, self.version = host, port, version
        self.chunk_delay, self.first_byte_delay = chunk_delay, first_byte_delay
        self.fail_status, self.fail_count, self.drop_after_chunks = fail_status, fail_count, drop_after_chunks
        self.rng = random.Random()
        #: Model names whose ``/api/pull`` fails (after its first progress object, as Ollama's do).
        self.unpullable: set[str] = set()
        self.reset()
        self.app = self._build_app()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Zero the counters, forget recorded requests and restart the ``fail_count`` tally."""
        self.requests_total = self.in_flight = self.peak_in_flight = self.disconnects = 0
        self.failures_sent = 0
        self.requests: list[dict] = []
        self.managed: list[dict] = []

    def stats(self) -> dict:
        """Return the counters and recorded request bodies as a JSON-ready dict."""
        return {"requests_total": self.requests_total, "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight, "disconnects": self.disconnects,
                "failures_sent": self.failures_sent, "requests": list(self.requests), "managed": list(self.managed)}

    def _leave(self) -> None:
        self.in_flight -= 1

    def _resolve(self, name: Any) -> str | None:
        """Map a requested model name to a served one, adding ``:latest`` like Ollama does."""
        if not isinstance(name, str) or not name:
            return None
        full = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
        return full if full in self.models else None

    async def _chat(self, request: Request, native: bool, generate: bool = False) -> Response | _Stream:
        """Shared handler of ``/v1/chat/completions``, ``/api/chat`` and (``generate``) ``/api/generate``,
        whose ``prompt`` is the one user message (an empty one only "loads" the model)."""
        self.requests_total, self.in_flight, handed_off = self.requests_total + 1, self.in_flight + 1, False
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

        def error(status: int, message: str, etype: str = "api_error") -> Response:
            return _json({"error": message}, status) if native else _openai_error(status, message, etype)

        try:
            raw = await request.body()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return error(400, f"invalid request body: {exc}", "invalid_request_error")
            if not isinstance(body, dict):
                return error(400, "invalid request body: expected a JSON object", "invalid_request_error")
            self.requests.append(body)
            if self.first_byte_delay:
                await asyncio.sleep(self.first_byte_delay)
            if self.fail_status is not None and (self.fail_count is None or self.failures_sent < self.fail_count):
                self.failures_sent += 1
                return error(self.fail_status, f"scripted failure with status {self.fail_status}")
            if generate:
                prompt, stream = body.get("prompt"), body.get("stream")
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else []
                if self._resolve(body.get("model")) is None:
                    return error(404, f'model "{body.get("model")}" not found, try pulling it first')
                if not messages:
                    return _json({"model": body["model"], "created_at": _go_time(datetime.now(timezone.utc)),
                                  "response": "", "done": True, "done_reason": "load"})
            else:
                messages, stream = body.get("messages"), body.get("stream")
            if (messages is not None and not isinstance(messages, list)) or stream not in (None, True, False):
                return error(400, "invalid request body: wrong field types", "invalid_request_error")
            if not messages:
                return error(400, "[] is too short - 'messages'", "invalid_request_error")
            for message in messages:
                if not isinstance(message, dict) or not (native or message.get("tool_calls")
                                                         or isinstance(message.get("content"), (str, list))):
                    return error(400, "invalid message format", "invalid_request_error")
            model = body.get("model")
            if not model:
                return error(400, "model is required")
            if self._resolve(model) is None:
                return error(404, f'model "{model}" not found, try pulling it first')
            budget = _field(body, "options", "num_predict") if native else body.get("max_tokens")
            budget = budget if isinstance(budget, int) and budget >= 0 else None
            reply = _Reply(messages, body.get("tools"), budget)
            stream = native if stream is None else stream
            if native:
                calls = self._native_calls(reply) if reply.calls else None
                if not stream:
                    return _json(self._native_line(model, "".join(reply.content), "".join(reply.reasoning),
                                                   calls, done=reply, generate=generate))
                lines = [self._native_line(model, thinking=p, generate=generate) for p in reply.reasoning]
                lines += [self._native_line(model, p, generate=generate) for p in reply.content]
                lines += [self._native_line(model, calls=calls)] if calls else []
                lines.append(self._native_line(model, done=reply, generate=generate))
                handed_off = True
                return _Stream(self, [orjson.dumps(line) + b"\n" for line in lines], "application/x-ndjson")
            if not stream:
                return _json(self._openai_whole(reply, model))
            include_usage = _field(body, "stream_options", "include_usage") is True
            handed_off = True
            return _Stream(self, self._openai_frames(reply, model, include_usage), "text/event-stream")
        finally:
            if not handed_off:
                self._leave()

    def _openai_calls(self, reply: _Reply) -> list[dict]:
        ids = reply.call_ids(self.rng)
        return [{"id": ids[i], "index": i, "type": "function",
                 "function": {"name": name, "arguments": orjson.dumps(_arguments_for(name)).decode()}}
                for i, name in enumerate(reply.calls)]

    def _openai_whole(self, reply: _Reply, model: str) -> dict:
        """Build a non-streaming ``chat.completion`` object."""
        message: dict = {"role": "assistant", "content": "".join(reply.content)}
        if reply.reasoning:
            message["reasoning"] = "".join(reply.reasoning)
        if reply.calls:
            message["tool_calls"] = self._openai_calls(reply)
        return {"id": f"chatcmpl-{self.rng.randrange(999)}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if reply.calls else reply.finish}],
                "usage": reply.usage()}

    def _openai_frames(self, reply: _Reply, model: str, include_usage: bool) -> list[bytes]:
        """Build the SSE frames of a streamed ``chat.completion.chunk`` sequence."""
        base = {"id": f"chatcmpl-{self.rng.randrange(999)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model, "system_fingerprint": "fp_ollama"}

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**base, "choices": [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": finish}]}

        chunks = [chunk({"content": "", "reasoning": p}) for p in reply.reasoning]
        chunks += [chunk({"content": p}) for p in reply.content]
        if reply.calls:
            chunks.append(chunk({"content": "", "tool_calls": self._openai_calls(reply)}))
        chunks.append(chunk({"content": ""}, "tool_calls" if reply.calls else reply.finish))
        if include_usage:
            chunks.append({**base, "choices": [], "usage": reply.usage()})
        return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]

    def _native_calls(self, reply: _Reply) -> list[dict]:
        ids = reply.call_ids(self.rng)
        return [{"id": ids[i], "function": {"index": i, "name": name, "arguments": _arguments_for(name)}}
                for i, name in enumerate(reply.calls)]

    def _native_line(self, model: str, content: str = "", thinking: str = "", calls: list[dict] | None = None,
                     done: _Reply | None = None, generate: bool = False) -> dict:
        """Build one ``/api/chat`` (``generate``: ``/api/generate``) object; ``done`` makes it the
        final one carrying the metrics (and, for generate, a ``context``)."""
        message: dict = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        line = {"model": model, "created_at": _go_time(datetime.now(timezone.utc)), "message": message,
                "done": done is not None}
        if generate:
            del line["message"]
            line |= {"response": content, **({"thinking": thinking} if thinking else {})}
            if done is not None:
                line["context"] = [1, 2, 3]
        if done is not None:
            line |= {"done_reason": done.finish, "total_duration": 1_000_000, "load_duration": 100_000,
                     "prompt_eval_count": done.prompt_tokens, "prompt_eval_duration": 200_000,
                     "eval_count": done.completion_tokens, "eval_duration": 700_000}
        return line

    def _build_app(self) -> Starlette:
        """Create the Starlette application bound to this server's state."""
        def reply_with(produce: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                return _json(produce())
            return endpoint

        def openai_model(name: str) -> dict:
            owner = name.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in name else "library"
            return {"id": name, "object": "model", "created": int(_MODIFIED_AT.timestamp()), "owned_by": owner}

        def ps() -> dict:
            expires = _go_time(datetime.now(timezone.utc) + timedelta(minutes=5))
            return {"models": [{k: e[k] for k in ("name", "model", "size", "digest", "details")}
                               | {"expires_at": expires, "size_vram": e["size"], "context_length": 4096}
                               for e in map(_model_entry, self.loaded)]}

        async def root(request: Request) -> Response:
            return PlainTextResponse("Ollama is running")

        async def get_model(request: Request) -> Response:
            name = request.path_params["model"]
            if self._resolve(name) is None:
                return _openai_error(404, f'model "{name}" not found, try pulling it first')
            return _json(openai_model(name))

        async def openai_chat(request: Request) -> Response | _Stream:
            return await self._chat(request, native=False)

        async def openai_embeddings(request: Request) -> Response:
            body = orjson.loads(await request.body())
            self.requests.append(body)
            if self._resolve(body.get("model")) is None:
                return _openai_error(404, f'model "{body.get("model")}" not found, try pulling it first')
            texts = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
            return _json({"object": "list", "model": body["model"], "usage": {"prompt_tokens": len(texts),
                                                                              "total_tokens": len(texts)},
                          "data": [{"object": "embedding", "index": n, "embedding": embedding_of(str(text))}
                                   for n, text in enumerate(texts)]})

        async def openai_rerank(request: Request) -> Response:
            """llama.cpp's and vLLM's ``/v1/rerank`` (Ollama has none): a document's score is the
            share of the query's words it contains."""
            body = orjson.loads(await request.body())
            self.requests.append(body)
            if self._resolve(body.get("model")) is None:
                return _openai_error(404, f'model "{body.get("model")}" not found')
            words = set(str(body.get("query", "")).lower().split())
            scores = [len(words & set(str(doc).lower().split())) / max(1, len(words)) for doc in body["documents"]]
            ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:body.get("top_n") or len(scores)]
            return _json({"model": body["model"], "usage": {"prompt_tokens": len(words), "total_tokens": len(words)},
                          "results": [{"index": i, "relevance_score": scores[i]} for i in ranked]})

        async def openai_completions(request: Request) -> Response | _Stream:
            body = orjson.loads(await request.body())
            self.requests.append(body)
            if self._resolve(body.get("model")) is None:
                return _openai_error(404, f'model "{body.get("model")}" not found, try pulling it first')
            base = {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": body["model"]}
            pieces = _pieces(DEFAULT_TEXT)
            if not body.get("stream"):
                return _json({**base, "choices": [{"index": 0, "text": DEFAULT_TEXT, "finish_reason": "stop",
                                                   "logprobs": None}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1 + len(pieces)}})
            self.in_flight += 1
            frames = [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "text": p, "finish_reason": None}]})
                      + b"\n\n" for p in pieces]
            frames.append(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
                          + b"\n\n")
            if _field(body, "stream_options", "include_usage") is True:
                frames.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": {
                    "prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1 + len(pieces)}}) + b"\n\n")
            frames.append(b"data: [DONE]\n\n")
            return _Stream(self, frames, "text/event-stream")

        async def native_chat(request: Request) -> Response | _Stream:
            return await self._chat(request, native=True)

        async def native_generate(request: Request) -> Response | _Stream:
            return await self._chat(request, native=True, generate=True)

        return Starlette(routes=[
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/api/version", reply_with(lambda: {"version": self.version})),
            Route("/api/tags", reply_with(lambda: {"models": list(map(_model_entry, self.models))})),
            Route("/api/ps", reply_with(ps)),
            Route("/api/chat", native_chat, methods=["POST"]),
            Route("/api/generate", native_generate, methods=["POST"]),
            *self._model_routes(),
            Route("/v1/models", reply_with(lambda: {"object": "list", "data": list(map(openai_model, self.models))})),
            Route("/v1/models/{model:path}", get_model),
            Route("/v1/chat/completions", openai_chat, methods=["POST"]),
            Route("/v1/completions", openai_completions, methods=["POST"]),
            Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
            Route("/v1/rerank", openai_rerank, methods=["POST"]),
            Route("/_test/stats", reply_with(self.stats)),
        ])

    def _model_routes(self) -> list[Route]:
        """Ollama's embeddings, ``/api/show`` and model management routes (pull, push, create,
        delete, copy change ``models``; each body is recorded in ``managed`` with its ``op``)."""
        def missing(name: Any) -> Response:
            return _json({"error": f"model '{name}' not found"}, 404)

        async def read(request: Request) -> dict:
            self.requests.append(body := orjson.loads(await request.body() or b"{}"))
            return body

        async def embed(request: Request) -> Response:
            if self._resolve((body := await read(request)).get("model")) is None:
                return missing(body.get("model"))
            texts = body.get("input") if isinstance(body.get("input"), list) else [body.get("input")]
            return _json({"model": body["model"], "embeddings": [embedding_of(str(t)) for t in texts],
                          "total_duration": 1_000_000, "prompt_eval_count": sum(len(str(t).split()) for t in texts)})

        async def embeddings(request: Request) -> Response:
            if self._resolve((body := await read(request)).get("model")) is None:
                return missing(body.get("model"))
            return _json({"embedding": embedding_of(str(body.get("prompt"))) if body.get("prompt") else []})

        async def show(request: Request) -> Response:
            if (name := self._resolve((body := await read(request)).get("model"))) is None:
                return missing(body.get("model"))
            entry = _model_entry(name)
            return _json({"modelfile": f"FROM {name}\n", "parameters": "temperature 0.7", "template": "{{ .Prompt }}",
                          "details": entry["details"], "model_info": {"general.architecture": "llama"},
                          "capabilities": ["completion", "tools"], "modified_at": entry["modified_at"]})

        def progress(steps: list[dict], stream: Any) -> Response | _Stream:
            if stream is False:
                return _json(steps[-1], 500 if "error" in steps[-1] else 200)
            self.in_flight += 1
            return _Stream(self, [orjson.dumps(step) + b"\n" for step in steps], "application/x-ndjson")

        def add(name: str) -> None:
            self.models = [*dict.fromkeys([*self.models, name if ":" in name else name + ":latest"])]

        def manage(op: str) -> Any:
            async def endpoint(request: Request) -> Response | _Stream:
                body = orjson.loads(await request.body() or b"{}")
                self.managed.append({"op": op, **body})
                name, wanted = self._resolve(body.get("model") or body.get("source")), body.get("model") or ""
                if op == "pull":
                    full = wanted if ":" in wanted else wanted + ":latest"
                    if full in self.unpullable:
                        return progress([{"status": "pulling manifest"},
                                         {"error": "pull model manifest: file does not exist"}], body.get("stream"))
                    add(full)
                    digest = "sha256:" + hashlib.sha256(full.encode()).hexdigest()
                    return progress([{"status": "pulling manifest"}, *({"status": f"pulling {digest[7:19]}", "digest":
                                     digest, "total": 100, "completed": done} for done in (0, 50, 100)),
                                     {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                                     {"status": "success"}], body.get("stream"))
                if op == "create" and (name or self._resolve(body.get("from"))):
                    add(wanted)
                    return progress([{"status": "using existing layer"}, {"status": "writing manifest"},
                                     {"status": "success"}], body.get("stream"))
                if name is None:
                    return missing(body.get("model") or body.get("source") or body.get("from"))
                if op == "push":
                    return progress([{"status": "retrieving manifest"}, {"status": "pushing manifest"},
                                     {"status": "success"}], body.get("stream"))
                if op == "delete":
                    self.models.remove(name)
                    self.loaded = [m for m in self.loaded if m != name]
                else:
                    add(body.get("destination") or "")
                return Response(status_code=200)
            return endpoint

        return [Route("/api/embed", embed, methods=["POST"]), Route("/api/embeddings", embeddings, methods=["POST"]),
                Route("/api/show", show, methods=["POST"]), Route("/api/delete", manage("delete"), methods=["DELETE"]),
                *(Route(f"/api/{op}", manage(op), methods=["POST"]) for op in ("pull", "push", "create", "copy"))]

    def start(self, timeout: float = 10.0) -> OllamaTestServer:
        """Bind the port (a free one when ``port`` is 0) and serve in a daemon thread."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", loop="asyncio",
                                timeout_graceful_shutdown=1)
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"ollama-test-server-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Ollama test server failed to start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut uvicorn down and wait for the thread to end."""
        if self._thread is None or self._uvicorn is None:
            return
        self._uvicorn.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._uvicorn.force_exit = True
            self._thread.join(timeout)
        self._thread = self._uvicorn = None

    def __enter__(self) -> OllamaTestServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> OllamaTestServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground from the command line until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", nargs="+", default=["tiny:latest"], help="names, space or comma separated")
    parser.add_argument("--loaded", nargs="*", default=[], help="models reported by /api/ps")
    for knob, kind in (("--chunk-delay", float), ("--first-byte-delay", float), ("--fail-status", int),
                       ("--fail-count", int), ("--drop-after-chunks", int)):
        parser.add_argument(knob, type=kind)
    args = parser.parse_args(argv)
    names = [[n for item in given for n in item.split(",") if n] for given in (args.models, args.loaded)]
    server = OllamaTestServer(*names, host=args.host, port=args.port, chunk_delay=args.chunk_delay or 0.0,
                              first_byte_delay=args.first_byte_delay or 0.0, fail_status=args.fail_status,
                              fail_count=args.fail_count, drop_after_chunks=args.drop_after_chunks).start()
    print(f"Ollama test server listening on {server.url}", flush=True)
    try:
        while server._thread is not None and server._thread.is_alive():
            server._thread.join(0.5)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
