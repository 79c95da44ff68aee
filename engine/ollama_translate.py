"""Ollama's native API in terms of OpenAI's, for endpoints that speak only OpenAI's API
(llama.cpp's ``llama-server``, vLLM, other OpenAI-compatible servers).

Pure: dicts in, dicts out, no I/O. ``/api/chat`` becomes ``/v1/chat/completions``,
``/api/generate`` ``/v1/completions``, ``/api/embed`` and ``/api/embeddings``
``/v1/embeddings``; the answers (whole, or stream chunk by chunk: :class:`StreamLines`)
come back in Ollama's shapes (``model``, ``created_at``, ``message`` or ``response``,
``done``, ``done_reason``, ``prompt_eval_count``, ``eval_count``, durations in ns as far as
the endpoint tells them: llama.cpp's ``timings``).

Only faithful mappings are made. A field or option that has none is refused with
:class:`Untranslatable` (400, naming it), never dropped:

* ``options``: ``temperature``, ``top_p``, ``seed``, ``stop``, ``num_predict`` (as
  ``max_tokens``; -1, Ollama's "no limit", is the endpoint's own default),
  ``frequency_penalty``, ``presence_penalty`` everywhere; on llama.cpp's server also the
  sampling parameters it takes under the same name and meaning (``top_k``, ``min_p``,
  ``typical_p``, ``repeat_penalty``, ``repeat_last_n``, ``mirostat``, ``mirostat_tau``,
  ``mirostat_eta``; ``num_keep`` as ``n_keep``). Any other (``num_ctx``...) is refused.
* ``format``: ``"json"`` is ``response_format`` ``json_object``, a JSON schema is
  ``json_schema`` (strict, as Ollama enforces it).
* ``think``: ``"low"``/``"medium"``/``"high"`` is ``reasoning_effort``; ``true``/``false`` is
  ``chat_template_kwargs.enable_thinking``, which llama.cpp's server and vLLM pass to the
  model's chat template. The model's reasoning comes back as ``message.thinking``.
* ``/api/generate`` has no chat template on the way (OpenAI's completions take the prompt as
  it is, as Ollama's ``raw: true``; an explicit ``raw: false``, which asks for the template, is
  refused; left out, the prompt goes as it is and the endpoint applies no template), while ``system``,
  ``template``, ``context``, ``images``, ``think``, ``format`` and ``logprobs`` have no
  counterpart there and are refused (an empty value is taken as absent); ``suffix`` goes to
  OpenAI-compatible servers, but not to llama.cpp's, whose completions have none.
* ``/api/embed``: ``truncate: false`` is what these servers do (an input past the context is an
  error); ``truncate: true`` has no counterpart. Vectors come back as the endpoint made them.
* ``keep_alive`` is accepted and has no effect: it only tunes how long Ollama keeps a model in
  memory, which these servers decide by their own configuration; it never changes an answer.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Any

import orjson

from errors import APIError

__all__ = ["Untranslatable", "chat_request", "chat_answer", "generate_request", "generate_answer",
           "embed_request", "embed_answer", "embeddings_request", "embeddings_answer", "StreamLines",
           "created_at", "TRANSLATED_PATHS"]

#: Ollama route -> the OpenAI route (under ``/v1``) it is translated to, and the list its answers have.
TRANSLATED_PATHS = {"chat": ("chat/completions", "choices"), "generate": ("completions", "choices"),
                    "embed": ("embeddings", "data"), "embeddings": ("embeddings", "data")}

_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
            "num_predict": "max_tokens", "frequency_penalty": "frequency_penalty",
            "presence_penalty": "presence_penalty"}
#: llama.cpp's server's own sampling parameters of the same meaning as Ollama's options.
_LLAMA_OPTIONS = {"top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p", "repeat_penalty": "repeat_penalty",
                  "repeat_last_n": "repeat_last_n", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau",
                  "mirostat_eta": "mirostat_eta", "num_keep": "n_keep"}
_INT_OPTIONS = frozenset({"seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_keep"})
_CHAT_FIELDS = frozenset({"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think",
                          "logprobs", "top_logprobs"})
_GENERATE_FIELDS = frozenset({"model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format",
                              "images", "options", "keep_alive", "think", "logprobs", "top_logprobs"})
_NOT_FOR_COMPLETIONS = ("system", "template", "context", "images", "think", "format", "logprobs", "top_logprobs")
_MESSAGE_FIELDS = frozenset({"role", "content", "images", "thinking", "tool_calls", "tool_name", "tool_call_id"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_EFFORTS = frozenset({"low", "medium", "high"})
_IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
#: OpenAI finish reasons Ollama says otherwise (it ends a turn of tool calls with ``stop``).
_DONE_REASONS = {"tool_calls": "stop", "function_call": "stop"}


class Untranslatable(APIError):
    """A 400 for an Ollama request (field ``param``) that an OpenAI-compatible endpoint cannot be asked faithfully."""

    def __init__(self, param: str, message: str):
        super().__init__(400, message, param=param, code="unsupported_parameter")


def created_at() -> str:
    """Now as Ollama writes ``created_at``: RFC 3339 in UTC with microseconds and ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _only(body: dict, known: frozenset[str], route: str) -> None:
    for field in body:
        if field not in known:
            raise Untranslatable(field, f"'{field}' is not a field of Ollama's POST /api/{route} that an "
                                        "OpenAI-compatible endpoint can be given.")


def _number(value: Any, integer: bool) -> bool:
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _options(options: Any, kind: str, into: dict) -> None:
    """Ollama ``options`` as Chat/Completions fields (see the module), added to ``into``."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise Untranslatable("options", "'options' must be an object.")
    table = {**_OPTIONS, **(_LLAMA_OPTIONS if kind == "llama_server" else {})}
    for name, value in options.items():
        param = f"options.{name}"
        if name not in table:
            where = "llama.cpp's server" if kind == "llama_server" else "an OpenAI-compatible endpoint"
            raise Untranslatable(param, f"The Ollama option '{param}' has no counterpart on {where}; leave it "
                                        "out or use a model served by Ollama.")
        if value is None:
            continue
        if name == "stop":
            if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))):
                raise Untranslatable(param, "'options.stop' must be a string or a list of strings.")
        elif not _number(value, name in _INT_OPTIONS):
            kind_of = "an integer" if name in _INT_OPTIONS else "a number"
            raise Untranslatable(param, f"'{param}' must be {kind_of}.")
        if name == "num_predict":
            if value == -1:
                continue
            if value < 1:
                raise Untranslatable(param, "'options.num_predict' must be a positive number of tokens, or -1 "
                                            "(no limit); -2 (fill the context) has no counterpart.")
        into[table[name]] = value


def _no_options(body: dict, route: str) -> None:
    """Embeddings take no sampling options: any is refused, by name."""
    options = body.get("options")
    if options is None or options == {}:
        return
    name = next(iter(options)) if isinstance(options, dict) else None
    param = f"options.{name}" if name else "options"
    raise Untranslatable(param, f"'{param}': Ollama's /api/{route} options have no counterpart on an "
                                "OpenAI-compatible endpoint's embeddings; leave them out.")


def _keep_alive(body: dict) -> None:
    value = body.get("keep_alive")
    if value is not None and not (_number(value, False) or isinstance(value, str)):
        raise Untranslatable("keep_alive", "'keep_alive' must be a duration string ('5m') or a number of seconds.")


def _format(value: Any) -> dict | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value, "strict": True}}
    raise Untranslatable("format", "'format' must be \"json\" or a JSON schema object.")


def _think(value: Any, into: dict) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        into["chat_template_kwargs"] = {"enable_thinking": value}
    elif value in _EFFORTS:
        into["reasoning_effort"] = value
    else:
        raise Untranslatable("think", "'think' must be true, false, \"low\", \"medium\" or \"high\".")


def _image_url(image: Any, param: str) -> dict:
    """An Ollama image (base64, or a data URL) as a Chat ``image_url`` part."""
    if not isinstance(image, str) or not image:
        raise Untranslatable(param, f"'{param}' must be a base64-encoded image.")
    if image.startswith("data:image/"):
        return {"type": "image_url", "image_url": {"url": image}}
    try:
        head = base64.b64decode(image[:16] + "=" * (-len(image[:16]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Untranslatable(param, f"'{param}' is not base64.") from None
    mime = next((m for magic, m in _IMAGE_TYPES if head.startswith(magic)), None)
    if mime is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise Untranslatable(param, f"'{param}' is not a PNG, JPEG, GIF or WebP image.")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _tool_calls(calls: Any, where: str, index: int, open_calls: list[tuple[str, str]]) -> list[dict]:
    """An assistant's Ollama ``tool_calls`` (arguments as objects) as Chat's (as JSON strings, with ids)."""
    if not isinstance(calls, list):
        raise Untranslatable(f"{where}.tool_calls", f"'{where}.tool_calls' must be a list.")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        param = f"{where}.tool_calls[{j}]"
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Untranslatable(param, f"'{param}' needs a 'function' with a 'name'.")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, (dict, str)):
            raise Untranslatable(f"{param}.function.arguments", f"'{param}.function.arguments' must be an object.")
        if call.get("id") is not None and (not isinstance(call["id"], str) or not call["id"]):
            raise Untranslatable(f"{param}.id", f"'{param}.id' must be a non-empty string (or left out).")
        call_id = call.get("id") or f"call_{index}_{j}"   # Ollama's calls have none: Chat's need one
        open_calls.append((call_id, function["name"]))
        out.append({"id": call_id, "type": "function", "function": {
            "name": function["name"],
            "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()}})
    return out


def _answered_call(message: dict, where: str, open_calls: list[tuple[str, str]]) -> str:
    """The id of the tool call a ``tool`` message answers: its ``tool_call_id``, else the first
    call not yet answered of its ``tool_name`` (else the first not yet answered)."""
    given = message.get("tool_call_id")
    if isinstance(given, str) and given:
        open_calls[:] = [c for c in open_calls if c[0] != given]
        return given
    name = message.get("tool_name")
    match = next((c for c in open_calls if c[1] == name), None) or (open_calls[0] if open_calls else None)
    if match is None:
        raise Untranslatable(f"{where}.tool_call_id", f"'{where}.tool_call_id' is needed: the tool result answers "
                                                       "no tool call of an earlier assistant message (by id or "
                                                       "'tool_name').")
    open_calls.remove(match)
    return match[0]


def _message(message: Any, i: int, open_calls: list[tuple[str, str]]) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise Untranslatable(where, f"'{where}' must be an object.")
    for field in message:
        if field not in _MESSAGE_FIELDS:
            raise Untranslatable(f"{where}.{field}", f"'{where}.{field}' is not a field of an Ollama message.")
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES:
        raise Untranslatable(f"{where}.role", f"'{where}.role' must be system, user, assistant or tool.")
    if content is not None and not isinstance(content, str):
        raise Untranslatable(f"{where}.content", f"'{where}.content' must be a string.")
    out: dict = {"role": role, "content": content or ""}
    if message.get("images"):
        if role != "user" or not isinstance(message["images"], list):
            raise Untranslatable(f"{where}.images", f"'{where}.images': images go in a list on a user message.")
        out["content"] = ([{"type": "text", "text": content}] if content else []) + [
            _image_url(image, f"{where}.images[{j}]") for j, image in enumerate(message["images"])]
    if message.get("thinking"):
        if role != "assistant" or not isinstance(message["thinking"], str):
            raise Untranslatable(f"{where}.thinking", f"'{where}.thinking' must be an assistant message's string.")
        out["reasoning_content"] = message["thinking"]
    if message.get("tool_calls"):
        if role != "assistant":
            raise Untranslatable(f"{where}.tool_calls", f"'{where}.tool_calls': tool calls belong to assistant "
                                                         "messages.")
        out["tool_calls"] = _tool_calls(message["tool_calls"], where, i, open_calls)
        out["content"] = content or None
    if role == "tool":
        out["tool_call_id"] = _answered_call(message, where, open_calls)
    elif message.get("tool_name") is not None or message.get("tool_call_id") is not None:
        field = "tool_name" if message.get("tool_name") is not None else "tool_call_id"
        raise Untranslatable(f"{where}.{field}", f"'{where}.{field}' belongs to tool messages.")
    return out


def chat_request(body: dict, kind: str) -> dict:
    """An Ollama ``/api/chat`` body (without ``nomyo``) as a Chat Completions body for an
    endpoint of ``kind`` (``openai`` | ``llama_server``), without ``model`` and ``stream``.
    Raises :class:`Untranslatable`."""
    _only(body, _CHAT_FIELDS, "chat")
    _keep_alive(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Untranslatable("messages", "'messages' must be a list of messages.")
    open_calls: list[tuple[str, str]] = []
    out: dict = {"messages": [_message(m, i, open_calls) for i, m in enumerate(messages)]}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise Untranslatable("tools", "'tools' must be a list of tool objects.")
        out["tools"] = [{"type": "function", **tool} for tool in tools]
    response_format = _format(body.get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    _options(body.get("options"), kind, out)
    _think(body.get("think"), out)
    if body.get("logprobs") is not None:
        if not isinstance(body["logprobs"], bool):
            raise Untranslatable("logprobs", "'logprobs' must be true or false.")
        out["logprobs"] = body["logprobs"]
    if body.get("top_logprobs") is not None:
        if not _number(body["top_logprobs"], True) or not 0 <= body["top_logprobs"] <= 20:
            raise Untranslatable("top_logprobs", "'top_logprobs' must be an integer from 0 to 20.")
        out["top_logprobs"] = body["top_logprobs"]
        out["logprobs"] = True
    return out


def generate_request(body: dict, kind: str) -> dict:
    """An Ollama ``/api/generate`` body as a (text) Completions body (see the module for what
    is refused), without ``model`` and ``stream``. Raises :class:`Untranslatable`."""
    _only(body, _GENERATE_FIELDS, "generate")
    _keep_alive(body)
    for field in _NOT_FOR_COMPLETIONS:
        if body.get(field) not in (None, "", [], {}, False):
            hint = " Send it to /api/chat as a system message." if field == "system" else ""
            raise Untranslatable(field, f"'{field}' of /api/generate has no counterpart in an OpenAI-compatible "
                                        f"endpoint's completions, which take the prompt as it is.{hint}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise Untranslatable("prompt", "'prompt' must be a string.")
    if body.get("raw") is not None and not isinstance(body["raw"], bool):
        raise Untranslatable("raw", "'raw' must be true or false.")
    if body.get("raw") is False:
        raise Untranslatable("raw", "'raw': false asks for the model's prompt template, which an OpenAI-compatible "
                                    "endpoint's completions do not apply (the prompt goes as it is); send the prompt "
                                    "to /api/chat as a user message for a templated one.")
    out: dict = {"prompt": prompt}
    suffix = body.get("suffix")
    if suffix not in (None, ""):
        if kind == "llama_server" or not isinstance(suffix, str):
            raise Untranslatable("suffix", "'suffix' must be a string, and llama.cpp's server's completions take "
                                           "none (its /infill is not Ollama's API).")
        out["suffix"] = suffix
    _options(body.get("options"), kind, out)
    return out


def embed_request(body: dict) -> dict:
    """An Ollama ``/api/embed`` body as an Embeddings body, without ``model``. Raises :class:`Untranslatable`."""
    _only(body, frozenset({"model", "input", "truncate", "options", "keep_alive", "dimensions"}), "embed")
    _keep_alive(body)
    given = body.get("input")
    if not (isinstance(given, str) or (isinstance(given, list) and given and all(isinstance(s, str) for s in given))):
        raise Untranslatable("input", "'input' must be a string or a non-empty list of strings.")
    if body.get("truncate") is True:
        raise Untranslatable("truncate", "'truncate': true has no counterpart on OpenAI-compatible endpoints, which "
                                         "refuse an input longer than the model's context; send 'truncate: false' "
                                         "or shorter inputs.")
    _no_options(body, "embed")
    out: dict = {"input": given}
    if body.get("dimensions") is not None:
        if not _number(body["dimensions"], True) or body["dimensions"] < 1:
            raise Untranslatable("dimensions", "'dimensions' must be a positive integer.")
        out["dimensions"] = body["dimensions"]
    return out


def embeddings_request(body: dict) -> dict:
    """A legacy Ollama ``/api/embeddings`` body (one ``prompt``) as an Embeddings body. Raises :class:`Untranslatable`."""
    _only(body, frozenset({"model", "prompt", "options", "keep_alive"}), "embeddings")
    _keep_alive(body)
    if not isinstance(body.get("prompt"), str):
        raise Untranslatable("prompt", "'prompt' must be a string.")
    _no_options(body, "embeddings")
    return {"input": body["prompt"]}


def _stats(usage: Any, timings: Any, elapsed_ns: int) -> dict:
    """Ollama's counts and durations (ns) from OpenAI's ``usage`` and llama.cpp's ``timings``."""
    out: dict = {"total_duration": elapsed_ns}
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            out["eval_count"] = usage["completion_tokens"]
    if isinstance(timings, dict):
        for source, target in (("prompt_ms", "prompt_eval_duration"), ("predicted_ms", "eval_duration")):
            if _number(timings.get(source), False):
                out[target] = round(timings[source] * 1_000_000)
    return out


def _arguments(text: Any) -> dict:
    if isinstance(text, dict):
        return text
    try:
        value = orjson.loads(text) if isinstance(text, str) and text.strip() else {}
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise APIError(502, f"The backend's tool call arguments are not a JSON object: {str(text)[:200]!r}.",
                       code="bad_upstream_response")
    return value


def _ollama_calls(calls: list[dict]) -> list[dict]:
    return [{**({"id": c["id"]} if c.get("id") else {}), "function": {
        "index": i, "name": (c.get("function") or {}).get("name", ""),
        "arguments": _arguments((c.get("function") or {}).get("arguments"))}} for i, c in enumerate(calls)]


def _logprobs(choice: dict) -> list[dict] | None:
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if not isinstance(content, list):
        return None
    return [{"token": e.get("token"), "logprob": e.get("logprob"),
             **({"top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob")}
                                  for t in e["top_logprobs"]]} if e.get("top_logprobs") else {})}
            for e in content if isinstance(e, dict)]


def _first_choice(answer: dict) -> dict:
    choices = answer.get("choices")
    if not choices or not isinstance(choices[0], dict):
        raise APIError(502, "The backend's answer has no choice.", code="bad_upstream_response")
    return choices[0]


def _thinking_of(part: dict) -> str:
    value = part.get("reasoning_content") or part.get("reasoning")
    return value if isinstance(value, str) else ""


def chat_answer(answer: dict, model: str, elapsed_ns: int) -> dict:
    """A whole Chat Completion as Ollama's whole ``/api/chat`` answer for ``model`` (the name
    the client asked); ``elapsed_ns`` is its ``total_duration``."""
    choice = _first_choice(answer)
    source = choice.get("message") or {}
    message: dict = {"role": "assistant", "content": source.get("content") or ""}
    if _thinking_of(source):
        message["thinking"] = _thinking_of(source)
    if source.get("tool_calls"):
        message["tool_calls"] = _ollama_calls(source["tool_calls"])
    out = {"model": model, "created_at": created_at(), "message": message, "done": True,
           "done_reason": _DONE_REASONS.get(choice.get("finish_reason"), choice.get("finish_reason") or "stop"),
           **_stats(answer.get("usage"), answer.get("timings"), elapsed_ns)}
    logprobs = _logprobs(choice)
    if logprobs is not None:
        out["logprobs"] = logprobs
    return out


def generate_answer(answer: dict, model: str, elapsed_ns: int) -> dict:
    """A whole text Completion as Ollama's whole ``/api/generate`` answer for ``model``."""
    choice = _first_choice(answer)
    return {"model": model, "created_at": created_at(), "response": choice.get("text") or "", "done": True,
            "done_reason": choice.get("finish_reason") or "stop",
            **_stats(answer.get("usage"), answer.get("timings"), elapsed_ns)}


def _vectors(answer: dict) -> list[list[float]]:
    data = sorted((d for d in answer.get("data") or [] if isinstance(d, dict)), key=lambda d: d.get("index", 0))
    vectors = [d.get("embedding") for d in data]
    if not vectors or not all(isinstance(v, list) for v in vectors):
        raise APIError(502, "The backend's embeddings answer has no vectors.", code="bad_upstream_response")
    return vectors


def embed_answer(answer: dict, model: str, elapsed_ns: int) -> dict:
    """An Embeddings answer as Ollama's ``/api/embed`` answer (``embeddings``, ``prompt_eval_count``)."""
    out = {"model": model, "embeddings": _vectors(answer), "total_duration": elapsed_ns}
    prompt = (answer.get("usage") or {}).get("prompt_tokens") if isinstance(answer.get("usage"), dict) else None
    if isinstance(prompt, int):
        out["prompt_eval_count"] = prompt
    return out


def embeddings_answer(answer: dict) -> dict:
    """An Embeddings answer as Ollama's legacy ``/api/embeddings`` answer (one ``embedding``)."""
    return {"embedding": _vectors(answer)[0]}


class StreamLines:
    """A Chat Completions (``route="chat"``) or text Completions (``"generate"``) stream as
    Ollama's NDJSON objects: :meth:`feed` each chunk, take the objects it gives; :meth:`finish`
    gives the last ones when the stream has ended (the tool calls, gathered from their pieces,
    and the ``done`` object with the counts of the usage chunk and llama.cpp's timings)."""

    def __init__(self, route: str, model: str):
        self.route, self.model = route, model
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.timings: dict | None = None
        self._calls: dict[int, dict] = {}

    def _line(self, **fields: Any) -> dict:
        return {"model": self.model, "created_at": created_at(), **fields}

    def feed(self, chunk: dict) -> list[dict]:
        """The Ollama objects of one parsed chunk (none for a chunk without text)."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        logprobs = _logprobs(choice)
        extra = {"logprobs": logprobs} if logprobs else {}
        if self.route == "generate":
            text = choice.get("text") or ""
            return [self._line(response=text, done=False, **extra)] if text or extra else []
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or []:
            merged = self._calls.setdefault(call.get("index", len(self._calls)),
                                            {"id": None, "function": {"name": "", "arguments": ""}})
            merged["id"] = call.get("id") or merged["id"]
            function = call.get("function") or {}
            merged["function"]["name"] += function.get("name") or ""
            merged["function"]["arguments"] += function.get("arguments") or ""
        message: dict = {"role": "assistant", "content": delta.get("content") or ""}
        if _thinking_of(delta):
            message["thinking"] = _thinking_of(delta)
        if not (message["content"] or "thinking" in message or extra):
            return []
        return [self._line(message=message, done=False, **extra)]

    def finish(self, elapsed_ns: int) -> list[dict]:
        """The last objects: the gathered tool calls (if any), then the ``done`` object."""
        lines = []
        if self._calls:
            calls = [self._calls[i] for i in sorted(self._calls)]
            lines.append(self._line(message={"role": "assistant", "content": "", "tool_calls": _ollama_calls(calls)},
                                    done=False))
        reason = _DONE_REASONS.get(self.finish_reason, self.finish_reason or "stop")
        last = {"response": ""} if self.route == "generate" else {"message": {"role": "assistant", "content": ""}}
        lines.append(self._line(**last, done=True, done_reason=reason, **_stats(self.usage, self.timings, elapsed_ns)))
        return lines
