"""The native path: requests to and answers from an upstream Responses API (OpenAI).

The gateway keeps all state itself, so upstream calls are stateless
(``store: false``, the whole chain sent as ``input``) and upstream ids are
replaced by the gateway's own.
"""

from __future__ import annotations

from typing import Any

from requests.events import (TERMINAL_TYPES, Event, Sequencer, closing_events, error_event,
                             response_event)
from requests.common import SEALED_PREFIX
from requests.responses import build_response_object, complete_usage, normalize_output_item

__all__ = ["native_request", "native_compact_request", "native_input", "native_to_response", "NativeStreamTranslator"]

#: Create fields sent to an upstream Responses API as they came: an allowlist, so nothing a
#: client sends can become an option of the upstream call itself (headers, query, timeout, body).
NATIVE_FIELDS = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
                 "max_output_tokens", "max_tool_calls", "top_logprobs", "metadata", "text", "reasoning", "user",
                 "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
                 "service_tier", "truncation", "include", "context_management")
#: Accepted create fields that the SDK's ``responses.create`` does not name: sent in the body.
NATIVE_BODY_FIELDS = ("client_metadata", "presence_penalty", "frequency_penalty")


def native_input(items: list[dict]) -> list[dict]:
    """Make stored items fit a stateless upstream call.

    Item ids are dropped (the upstream never stored them); reasoning items are
    kept only with ``encrypted_content`` (the only form a stateless call accepts).
    """
    out = []
    for item in items:
        kind = item.get("type")
        if kind == "reasoning":
            blob = item.get("encrypted_content")
            if blob and not blob.startswith(SEALED_PREFIX):  # the gateway's own blobs mean nothing upstream
                out.append({k: v for k, v in item.items() if k != "status"})
            continue
        if kind == "message":
            out.append({"type": "message", "role": item["role"], "content": item["content"]})
        elif kind in ("function_call", "function_call_output"):
            out.append({k: v for k, v in item.items() if k not in ("id", "status")})
        else:
            out.append(item)
    return out


def native_request(body: dict, items: list[dict], model: str, *, stream: bool) -> dict:
    """The upstream ``responses.create`` keyword arguments for ``body``.

    Only :data:`NATIVE_FIELDS` pass (and :data:`NATIVE_BODY_FIELDS` in
    ``extra_body``); ``model`` is the endpoint's, ``input`` the whole chain plus
    this turn's input (``items``); always ``store=False``, never ``background``.
    """
    params = {k: body[k] for k in NATIVE_FIELDS if body.get(k) is not None}
    extra = {k: body[k] for k in NATIVE_BODY_FIELDS if body.get(k) is not None}
    if extra:
        params["extra_body"] = extra
    params.update(model=model, input=native_input(items), store=False)
    if stream:
        params["stream"] = True
    return params


#: Compact fields an upstream Responses API takes as they came.
NATIVE_COMPACT_FIELDS = ("instructions", "prompt_cache_key", "prompt_cache_retention")


def native_compact_request(body: dict, items: list[dict], model: str) -> dict:
    """The upstream ``responses.compact`` keyword arguments: ``model`` the endpoint's, ``input`` the
    whole context (``items``), :data:`NATIVE_COMPACT_FIELDS` as sent."""
    params = {k: body[k] for k in NATIVE_COMPACT_FIELDS if body.get(k) is not None}
    params.update(model=model, input=native_input(items))
    return params


def native_to_response(upstream: dict, *, response_id: str, request: dict, created_at: int,
                       previous_response_id: str | None, store: bool, background: bool,
                       model: str | None = None) -> dict:
    """An upstream Response object re-issued under the gateway's ``response_id``.

    Output, usage, status and errors come from upstream; the echoed settings from
    the gateway's own request; missing required fields are filled. ``model``, when
    given (an aliased model), replaces the upstream's model name.
    """
    status = upstream.get("status") or "completed"
    return build_response_object(
        response_id=response_id, model=model or upstream.get("model") or request.get("model", ""),
        output_items=upstream.get("output") or [], status=status, request=request,
        created_at=created_at, completed_at=upstream.get("completed_at"),
        usage=complete_usage(upstream.get("usage")), previous_response_id=previous_response_id,
        error=upstream.get("error"), incomplete_details=upstream.get("incomplete_details"),
        store=store, background=background)


_TEXT_DELTAS = {"response.output_text.delta": ("output_text", "text"),
                "response.refusal.delta": ("refusal", "refusal"),
                "response.reasoning_text.delta": ("reasoning_text", "text")}


class NativeStreamTranslator:
    """Re-issue an upstream Responses event stream under the gateway's ids
    (a :class:`requests.events.StreamTranslator`).

    Every ``response`` snapshot is rebuilt with :func:`native_to_response`;
    items are normalized like the gateway's own; ``sequence_number`` is given
    anew by ``seq``. ``final`` holds the terminal Response once seen. Items still
    open when the stream breaks are closed by :meth:`fail`.
    """

    def __init__(self, *, response_id: str, request: dict, created_at: int,
                 previous_response_id: str | None, store: bool, background: bool,
                 model: str | None = None, seq: Sequencer | None = None):
        self._meta = dict(response_id=response_id, request=request, created_at=created_at,
                          previous_response_id=previous_response_id, store=store, background=background,
                          model=model)
        self.seq = seq or Sequencer()
        self.items: list[dict] = []
        self.final: dict | None = None
        self._skip: tuple[str, ...] = ()
        self._open: dict[int, dict] = {}   # output_index -> {"item", "parts": {index: part}}

    def opening(self, resumed: bool = False) -> list[Event]:
        """Nothing: the upstream sends its own opening events. ``resumed`` (a background
        stream that has sent its own ``created``/``queued``) drops the upstream's."""
        self._skip = ("response.created", "response.queued") if resumed else ()
        return []

    def feed(self, event: dict) -> list[Event]:
        """Translate one upstream event (a plain dict)."""
        kind = event.get("type")
        if kind in self._skip:
            return []
        event = dict(event)
        if isinstance(event.get("response"), dict):
            event["response"] = native_to_response(event["response"], **self._meta)
            if kind in TERMINAL_TYPES:
                self.final = event["response"]
        elif kind == "response.output_item.added":
            event["item"] = normalize_output_item(event["item"], "in_progress")
            self._open[event["output_index"]] = {"item": event["item"], "parts": {}}
        elif kind == "response.output_item.done":
            event["item"] = normalize_output_item(event["item"])
            self._open.pop(event.get("output_index"), None)
            self.items.append(event["item"])
        else:
            self._track(kind, event)
        return [self.seq(event)]

    def _track(self, kind: str, event: dict) -> None:
        """Remember the content of open items, to close them if the stream breaks."""
        entry = self._open.get(event.get("output_index"))
        if entry is None:
            return
        if kind == "response.content_part.added":
            entry["parts"][event.get("content_index", 0)] = dict(event["part"])
        elif kind in _TEXT_DELTAS:
            part_type, field = _TEXT_DELTAS[kind]
            part = entry["parts"].setdefault(event.get("content_index", 0), {"type": part_type, field: ""})
            part[field] = part.get(field, "") + event.get("delta", "")
        elif kind == "response.function_call_arguments.delta":
            item = entry["item"]
            entry["item"] = {**item, "arguments": item.get("arguments", "") + event.get("delta", "")}

    def _close_open_items(self) -> list[Event]:
        events: list[Event] = []
        for index in sorted(self._open):
            entry = self._open[index]
            item = entry["item"]
            if entry["parts"]:
                item = {**item, "content": [entry["parts"][i] for i in sorted(entry["parts"])]}
            item = normalize_output_item({**item, "status": "incomplete"})
            events.extend(self.seq.all(closing_events(index, item)))
            self.items.append(item)
        self._open.clear()
        return events

    def snapshot(self, status: str, **fields: Any) -> dict:
        """The Response object with the items finished so far."""
        upstream = {"status": status, "output": self.items, **fields}
        return native_to_response(upstream, **self._meta)

    def finish(self) -> list[Event]:
        """The upstream ended: nothing more when it sent its terminal event, else a failure."""
        if self.final is not None:
            return []
        return self.fail("The backend stream ended without a terminal event.")

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        """Close open items as incomplete, then ``error`` and ``response.failed``."""
        events = self._close_open_items()
        self.final = self.snapshot("failed", error={"code": code, "message": message})
        return events + [self.seq(error_event(message, code)),
                         self.seq(response_event("response.failed", self.final))]
