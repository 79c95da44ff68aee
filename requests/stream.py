"""Streaming: Chat Completions chunks -> Responses stream events, and SSE framing.

Event names, fields and order follow ``openai.types.responses.ResponseStreamEvent``:
``response.created`` -> ``response.in_progress`` -> per output item
``output_item.added`` -> its content events -> ``output_item.done`` -> exactly one
terminal ``response.completed`` | ``response.incomplete`` | ``response.failed``.
``sequence_number`` counts up by one from the first event.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import orjson
from pydantic import BaseModel

from requests.responses import new_id, output_text_of, usage_chat_to_responses

__all__ = ["ChatStreamTranslator", "response_to_events", "sse_frame", "plain", "error_event", "TERMINAL_EVENTS"]

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_PRIMITIVES = (str, int, float, bool, type(None))


def plain(obj: Any) -> Any:
    """Return ``obj`` as plain dicts and lists.

    Dicts are returned as they are (assumed plain already); pydantic models
    (the ``openai`` SDK's objects) as the JSON data they were made from (fields
    never set are left out, not null); other objects with a ``model_dump`` via
    it; other objects via their attributes, recursively.
    """
    if isinstance(obj, dict) or isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_unset=True)
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump()
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def sse_frame(event: dict) -> bytes:
    """Encode one event as an SSE frame whose ``event:`` line equals its ``type``."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _TextKind:
    """How one kind of streamed text (answer, refusal, reasoning) is itemized and evented."""

    def __init__(self, item_type: str, prefix: str, event: str, field: str, part):
        self.item_type, self.prefix, self.event, self.field, self.part = item_type, prefix, event, field, part

    def item(self, item_id: str, status: str, text: str | None) -> dict:
        content = [] if text is None else [self.part(text)]
        if self.item_type == "message":
            return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}
        return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


_KINDS = {
    "message": _TextKind("message", "msg", "response.output_text", "text", _text_part),
    "refusal": _TextKind("message", "msg", "response.refusal", "refusal",
                         lambda text: {"type": "refusal", "refusal": text}),
    "reasoning": _TextKind("reasoning", "rs", "response.reasoning_text", "text",
                           lambda text: {"type": "reasoning_text", "text": text}),
}


def error_event(message: str, code: str = "server_error") -> dict:
    """An ``error`` stream event: flat fields as the ``openai`` SDK types it, and the
    nested ``error`` payload the Open Responses schema requires."""
    return {"type": "error", "code": code, "message": message, "param": None,
            "error": {"type": "server_error", "code": code, "message": message, "param": None}}


class ChatStreamTranslator:
    """Turn a Chat Completions chunk stream into Responses stream events.

    ``response`` is the in-progress Response object (``status: "in_progress"``,
    empty ``output``) whose other fields every snapshot repeats. Call
    :meth:`start` once, :meth:`feed` per chunk (a plain dict), then exactly one of
    :meth:`finish` or :meth:`fail`. Each returns the events to send, in order.
    ``items`` holds the finished output items; :meth:`snapshot` gives the
    Response object at any point.
    """

    def __init__(self, response: dict, first_sequence_number: int = 0):
        self.response = response
        self.seq = first_sequence_number
        self.items: list[dict] = []
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self._kind: str | None = None       # "message" | "reasoning" | "function_call" | None
        self._item_id = ""
        self._chunks: list[str] = []
        self._call: dict | None = None
        self._tool_index: Any = None
        self.final: dict | None = None

    # events ----------------------------------------------------------------
    def _ev(self, event: dict) -> dict:
        event["sequence_number"] = self.seq
        self.seq += 1
        return event

    def start(self) -> list[dict]:
        """Events opening the stream: ``response.created`` then ``response.in_progress``."""
        return [self._ev({"type": "response.created", "response": self.response}), self.in_progress()]

    def in_progress(self) -> dict:
        """The ``response.in_progress`` event (alone, for a background stream whose
        ``created``/``queued`` events were sent before the backend was reached)."""
        self.response = {**self.response, "status": "in_progress"}
        return self._ev({"type": "response.in_progress", "response": self.response})

    def feed(self, chunk: dict) -> list[dict]:
        """Translate one chunk (``choices[0].delta`` and optional ``usage``)."""
        events: list[dict] = []
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self._add_text("reasoning", reasoning, events)
            content = delta.get("content")
            if content:
                self._add_text("message", content, events)
            refusal = delta.get("refusal")
            if refusal:
                self._add_text("refusal", refusal, events)
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(call, events)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add_text(self, kind: str, text: str, events: list) -> None:
        if self._kind != kind:
            self._close(events, "completed")
            self._open_text_item(kind, events)
        self._chunks.append(text)
        event = {"type": _KINDS[kind].event + ".delta", "item_id": self._item_id, "output_index": len(self.items),
                 "content_index": 0, "delta": text}
        if kind == "message":
            event["logprobs"] = []
        events.append(self._ev(event))

    def _open_text_item(self, kind: str, events: list) -> None:
        spec = _KINDS[kind]
        self._kind = kind
        self._chunks = []
        self._item_id = new_id(spec.prefix)
        index = len(self.items)
        events.append(self._ev({"type": "response.output_item.added", "output_index": index,
                                "item": spec.item(self._item_id, "in_progress", None)}))
        events.append(self._ev({"type": "response.content_part.added", "item_id": self._item_id,
                                "output_index": index, "content_index": 0, "part": spec.part("")}))

    def _add_tool_call(self, call: dict, events: list) -> None:
        fn = call.get("function") or {}
        index = call.get("index", 0)
        if self._kind != "function_call" or index != self._tool_index or self._is_new_call(call):
            self._close(events, "completed")
            self._kind = "function_call"
            self._tool_index = index
            self._item_id = new_id("fc")
            self._chunks = []
            self._call = {"id": self._item_id, "type": "function_call", "status": "in_progress",
                          "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "",
                          "arguments": ""}
            events.append(self._ev({"type": "response.output_item.added", "output_index": len(self.items),
                                    "item": dict(self._call)}))
        elif fn.get("name") and not self._call["name"]:
            self._call["name"] = fn["name"]
        args = fn.get("arguments")
        if args:
            self._chunks.append(args)
            events.append(self._ev({"type": "response.function_call_arguments.delta",
                                    "item_id": self._item_id, "output_index": len(self.items),
                                    "delta": args}))

    def _is_new_call(self, call: dict) -> bool:
        """A call with its own id and name under the index of the open one (some
        backends number every call 0) starts a new item."""
        call_id, name = call.get("id"), (call.get("function") or {}).get("name")
        return bool(call_id and name and call_id != self._call["call_id"])

    def _close(self, events: list, status: str) -> None:
        """Emit the closing events of the open item and move it to ``items``."""
        kind = self._kind
        if kind is None:
            return
        index = len(self.items)
        text = "".join(self._chunks)
        item_id = self._item_id
        if kind == "function_call":
            item = {**self._call, "arguments": text, "status": status}
            events.append(self._ev({"type": "response.function_call_arguments.done", "item_id": item_id,
                                    "output_index": index, "name": item["name"], "arguments": text}))
        else:
            spec = _KINDS[kind]
            part, item = spec.part(text), spec.item(item_id, status, text)
            done = {"type": spec.event + ".done", "item_id": item_id, "output_index": index, "content_index": 0,
                    spec.field: text}
            if kind == "message":
                done["logprobs"] = []
            events.append(self._ev(done))
            events.append(self._ev({"type": "response.content_part.done", "item_id": item_id,
                                    "output_index": index, "content_index": 0, "part": part}))
        events.append(self._ev({"type": "response.output_item.done", "output_index": index, "item": item}))
        self.items.append(item)
        self._kind = None
        self._call = None
        self._tool_index = None

    # terminal ----------------------------------------------------------------
    def snapshot(self, status: str, **fields: Any) -> dict:
        """The Response object with the items so far; an open item is included as incomplete."""
        items = list(self.items)
        if self._kind is not None:
            text = "".join(self._chunks)
            if self._kind == "function_call":
                items.append({**self._call, "arguments": text, "status": "incomplete"})
            else:
                items.append(_KINDS[self._kind].item(self._item_id, "incomplete", text))
        return {**self.response, "status": status, "output": items,
                "usage": usage_chat_to_responses(self.usage), "output_text": output_text_of(items),
                **fields}

    def finish(self) -> list[dict]:
        """Close the open item and emit ``response.completed`` or ``response.incomplete``."""
        events: list[dict] = []
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(self.finish_reason or "")
        self._close(events, "incomplete" if reason else "completed")
        if reason:
            final = self.snapshot("incomplete", incomplete_details={"reason": reason}, completed_at=None)
            self.final = final
            events.append(self._ev({"type": "response.incomplete", "response": final}))
        else:
            final = self.snapshot("completed", completed_at=int(time.time()))
            self.final = final
            events.append(self._ev({"type": "response.completed", "response": final}))
        return events

    def fail(self, message: str, code: str = "server_error") -> list[dict]:
        """Close the open item as incomplete, then emit ``error`` and ``response.failed``."""
        events: list[dict] = []
        self._close(events, "incomplete")
        events.append(self._ev(error_event(message, code)))
        final = self.snapshot("failed", error={"code": code, "message": message}, completed_at=None)
        self.final = final
        events.append(self._ev({"type": "response.failed", "response": final}))
        return events


def response_to_events(response: dict, *, queued: bool = False) -> Iterator[dict]:
    """Synthesize the complete, valid event sequence of a finished Response object.

    Used to serve a cached or stored response as a stream: the items' content
    arrives as one delta each. The terminal event matches ``response["status"]``
    (``completed``, ``incomplete``, or ``failed`` after an ``error`` event;
    ``cancelled`` ends with ``response.failed`` too, the one terminal event that
    can carry it, without an ``error``).
    """
    seq = 0

    def ev(event: dict) -> dict:
        nonlocal seq
        event["sequence_number"] = seq
        seq += 1
        return event

    opening = {**response, "status": "queued" if queued else "in_progress", "output": [],
               "usage": None, "completed_at": None, "error": None, "incomplete_details": None,
               "output_text": ""}
    yield ev({"type": "response.created", "response": opening})
    if queued:
        yield ev({"type": "response.queued", "response": opening})
    yield ev({"type": "response.in_progress", "response": {**opening, "status": "in_progress"}})
    for index, item in enumerate(response["output"]):
        kind, item_id = item.get("type"), item.get("id")
        yield ev({"type": "response.output_item.added", "output_index": index,
                  "item": _opened(item)})
        if kind == "message":
            for ci, part in enumerate(item.get("content") or ()):
                empty = {**part, "text": ""} if part.get("type") == "output_text" else {**part, "refusal": ""}
                yield ev({"type": "response.content_part.added", "item_id": item_id, "output_index": index,
                          "content_index": ci, "part": empty})
                if part.get("type") == "output_text":
                    text = part.get("text", "")
                    yield ev({"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                              "content_index": ci, "delta": text, "logprobs": []})
                    yield ev({"type": "response.output_text.done", "item_id": item_id, "output_index": index,
                              "content_index": ci, "text": text, "logprobs": []})
                else:
                    refusal = part.get("refusal", "")
                    yield ev({"type": "response.refusal.delta", "item_id": item_id, "output_index": index,
                              "content_index": ci, "delta": refusal})
                    yield ev({"type": "response.refusal.done", "item_id": item_id, "output_index": index,
                              "content_index": ci, "refusal": refusal})
                yield ev({"type": "response.content_part.done", "item_id": item_id, "output_index": index,
                          "content_index": ci, "part": part})
        elif kind == "reasoning":
            for ci, part in enumerate(item.get("content") or ()):
                text = part.get("text", "")
                yield ev({"type": "response.content_part.added", "item_id": item_id, "output_index": index,
                          "content_index": ci, "part": {"type": "reasoning_text", "text": ""}})
                yield ev({"type": "response.reasoning_text.delta", "item_id": item_id, "output_index": index,
                          "content_index": ci, "delta": text})
                yield ev({"type": "response.reasoning_text.done", "item_id": item_id, "output_index": index,
                          "content_index": ci, "text": text})
                yield ev({"type": "response.content_part.done", "item_id": item_id, "output_index": index,
                          "content_index": ci, "part": part})
        elif kind == "function_call":
            yield ev({"type": "response.function_call_arguments.delta", "item_id": item_id,
                      "output_index": index, "delta": item.get("arguments", "")})
            yield ev({"type": "response.function_call_arguments.done", "item_id": item_id,
                      "output_index": index, "name": item.get("name"), "arguments": item.get("arguments", "")})
        yield ev({"type": "response.output_item.done", "output_index": index, "item": item})
    status = response.get("status")
    if status == "completed":
        yield ev({"type": "response.completed", "response": response})
    elif status == "incomplete":
        yield ev({"type": "response.incomplete", "response": response})
    else:
        error = response.get("error")
        if error:
            yield ev(error_event(error.get("message", ""), error.get("code") or "server_error"))
        yield ev({"type": "response.failed", "response": response})


def _opened(item: dict) -> dict:
    """The ``output_item.added`` form of a finished item: in progress, no content yet."""
    kind = item.get("type")
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "reasoning":
        return {**item, "status": "in_progress", "content": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    return item
