"""The Responses stream event vocabulary: shapes, builders, one sequence stamper, SSE framing.

Every event the gateway emits is built here, unstamped, and given its
``sequence_number`` by one :class:`Sequencer` per stream. Names and fields
follow ``openai.types.responses.ResponseStreamEvent``; the Open Responses schema
adds the nested ``error`` payload of the ``error`` event. Per output item the
order is ``output_item.added`` -> its content events -> ``output_item.done``;
:func:`closing_events` and :func:`replay_item` encode that order once for the
chat translator, the native translator and the replay of stored responses.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypedDict

import orjson

__all__ = [
    "Event", "ResponseEvent", "OutputItemEvent", "ContentPartEvent", "TextDeltaEvent", "TextDoneEvent",
    "ArgumentsDeltaEvent", "ArgumentsDoneEvent", "ErrorEvent", "MessageItem", "ReasoningItem",
    "FunctionCallItem", "StreamTranslator", "Sequencer", "TERMINAL_TYPES", "response_event", "item_added",
    "item_done", "part_added", "part_done", "text_delta", "text_done", "arguments_delta", "arguments_done",
    "summary_part_added", "summary_part_done", "summary_text_delta", "summary_text_done",
    "custom_input_delta", "custom_input_done", "error_event", "opened", "closing_events", "replay_item",
    "sse_frame",
]

#: The event types that end a stream; exactly one of them ends every stream.
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})

ResponseEventType = Literal["response.created", "response.queued", "response.in_progress", "response.completed",
                            "response.incomplete", "response.failed"]


# ── shapes ─────────────────────────────────────────────────────────────────────

class MessageItem(TypedDict):
    """An assistant ``message`` output item (``ResponseOutputMessage``)."""
    id: str
    type: Literal["message"]
    status: str
    role: Literal["assistant"]
    content: list[dict]


class ReasoningItem(TypedDict):
    """A ``reasoning`` output item (``ResponseReasoningItem``)."""
    id: str
    type: Literal["reasoning"]
    status: str
    summary: list[dict]
    content: list[dict]


class FunctionCallItem(TypedDict):
    """A ``function_call`` output item (``ResponseFunctionToolCall``)."""
    id: str
    type: Literal["function_call"]
    status: str
    call_id: str
    name: str
    arguments: str


class Event(TypedDict, total=False):
    """Every event: its ``type``, and the ``sequence_number`` the stream's :class:`Sequencer` gives it."""
    type: str
    sequence_number: int


class ResponseEvent(Event):
    """``response.created`` / ``queued`` / ``in_progress`` / ``completed`` / ``incomplete`` / ``failed``."""
    response: dict


class OutputItemEvent(Event):
    """``response.output_item.added`` / ``.done``."""
    output_index: int
    item: dict


class ContentPartEvent(Event):
    """``response.content_part.added`` / ``.done``."""
    item_id: str
    output_index: int
    content_index: int
    part: dict


class TextDeltaEvent(Event, total=False):
    """``response.output_text.delta`` (with ``logprobs``), ``response.refusal.delta``,
    ``response.reasoning_text.delta``."""
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list


class TextDoneEvent(Event, total=False):
    """``response.output_text.done`` / ``reasoning_text.done`` (``text``) and ``refusal.done`` (``refusal``)."""
    item_id: str
    output_index: int
    content_index: int
    text: str
    refusal: str
    logprobs: list


class ArgumentsDeltaEvent(Event):
    """``response.function_call_arguments.delta``."""
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(Event):
    """``response.function_call_arguments.done`` (``name`` too, as OpenAI sends it)."""
    item_id: str
    output_index: int
    name: str | None
    arguments: str


class ErrorEvent(Event):
    """``error``: the SDK's flat fields and the Open Responses schema's nested ``error``."""
    code: str
    message: str
    param: None
    error: dict


class StreamTranslator(Protocol):
    """What turns one upstream stream into this gateway's events (``requests.stream``
    for Chat Completions chunks, ``requests.native`` for upstream Responses events).

    The runner calls :meth:`opening` once, :meth:`feed` per upstream chunk (a plain
    dict), then exactly one of :meth:`finish` (the upstream ended) or :meth:`fail`.
    Each returns the events to send, stamped, in order. ``final`` is the terminal
    Response object once one was emitted; :meth:`snapshot` is the Response object
    as far as the stream got (open items included as incomplete where known).
    """

    items: list[dict]
    final: dict | None

    def opening(self, resumed: bool = False) -> list[Event]: ...
    def feed(self, chunk: dict) -> list[Event]: ...
    def finish(self) -> list[Event]: ...
    def fail(self, message: str, code: str = "server_error") -> list[Event]: ...
    def snapshot(self, status: str, **fields: Any) -> dict: ...


# ── the stamper ────────────────────────────────────────────────────────────────

class Sequencer:
    """Gives the events of one stream their ``sequence_number``, counting up by one
    from ``first`` (a background stream continues after the events it published
    before its backend was reached)."""

    __slots__ = ("next",)

    def __init__(self, first: int = 0):
        self.next = first

    def __call__(self, event: Event) -> Event:
        """Stamp ``event`` in place and return it."""
        event["sequence_number"] = self.next
        self.next += 1
        return event

    def all(self, events: list[Event]) -> list[Event]:
        """Stamp every event of ``events``, in order; returns the same list."""
        for event in events:
            event["sequence_number"] = self.next
            self.next += 1
        return events


# ── builders (unstamped) ───────────────────────────────────────────────────────

def response_event(kind: ResponseEventType, response: dict) -> ResponseEvent:
    """A lifecycle event carrying a Response object snapshot."""
    return {"type": kind, "response": response}


def item_added(output_index: int, item: dict) -> OutputItemEvent:
    return {"type": "response.output_item.added", "output_index": output_index, "item": item}


def item_done(output_index: int, item: dict) -> OutputItemEvent:
    return {"type": "response.output_item.done", "output_index": output_index, "item": item}


def part_added(item_id: str, output_index: int, content_index: int, part: dict) -> ContentPartEvent:
    return {"type": "response.content_part.added", "item_id": item_id, "output_index": output_index,
            "content_index": content_index, "part": part}


def part_done(item_id: str, output_index: int, content_index: int, part: dict) -> ContentPartEvent:
    return {"type": "response.content_part.done", "item_id": item_id, "output_index": output_index,
            "content_index": content_index, "part": part}


#: Per streamable content part type: the event family and the field its text is in.
_TEXT_PARTS: dict[str, tuple[str, str]] = {
    "output_text": ("response.output_text", "text"),
    "refusal": ("response.refusal", "refusal"),
    "reasoning_text": ("response.reasoning_text", "text"),
}


def text_delta(part_type: str, item_id: str, output_index: int, content_index: int, delta: str,
               logprobs: list | None = None) -> TextDeltaEvent:
    """The delta event of a ``part_type`` part (``output_text``, ``refusal``, ``reasoning_text``);
    an ``output_text`` delta carries the ``logprobs`` of its tokens (none: empty)."""
    event: TextDeltaEvent = {"type": _TEXT_PARTS[part_type][0] + ".delta", "item_id": item_id,
                             "output_index": output_index, "content_index": content_index, "delta": delta}
    if part_type == "output_text":
        event["logprobs"] = logprobs or []
    return event


def text_done(part_type: str, item_id: str, output_index: int, content_index: int, text: str,
              logprobs: list | None = None) -> TextDoneEvent:
    """The done event of a ``part_type`` part with its whole ``text`` (and an ``output_text``
    part's ``logprobs``)."""
    family, field = _TEXT_PARTS[part_type]
    event: TextDoneEvent = {"type": family + ".done", "item_id": item_id, "output_index": output_index,
                            "content_index": content_index, field: text}  # type: ignore[misc]
    if part_type == "output_text":
        event["logprobs"] = logprobs or []
    return event


def arguments_delta(item_id: str, output_index: int, delta: str) -> ArgumentsDeltaEvent:
    return {"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": output_index,
            "delta": delta}


def arguments_done(item_id: str, output_index: int, name: str | None, arguments: str) -> ArgumentsDoneEvent:
    return {"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": output_index,
            "name": name, "arguments": arguments}


def summary_part_added(item_id: str, output_index: int, summary_index: int) -> Event:
    """``response.reasoning_summary_part.added`` with an empty ``summary_text`` part."""
    return {"type": "response.reasoning_summary_part.added", "item_id": item_id, "output_index": output_index,
            "summary_index": summary_index, "part": {"type": "summary_text", "text": ""}}  # type: ignore


def summary_part_done(item_id: str, output_index: int, summary_index: int, text: str) -> Event:
    """``response.reasoning_summary_part.done`` with the whole part."""
    return {"type": "response.reasoning_summary_part.done", "item_id": item_id, "output_index": output_index,
            "summary_index": summary_index, "part": {"type": "summary_text", "text": text}}  # type: ignore


def summary_text_delta(item_id: str, output_index: int, summary_index: int, delta: str) -> Event:
    """``response.reasoning_summary_text.delta``."""
    return {"type": "response.reasoning_summary_text.delta", "item_id": item_id, "output_index": output_index,
            "summary_index": summary_index, "delta": delta}  # type: ignore


def summary_text_done(item_id: str, output_index: int, summary_index: int, text: str) -> Event:
    """``response.reasoning_summary_text.done`` with the whole ``text``."""
    return {"type": "response.reasoning_summary_text.done", "item_id": item_id, "output_index": output_index,
            "summary_index": summary_index, "text": text}  # type: ignore


def custom_input_delta(item_id: str, output_index: int, delta: str) -> Event:
    """``response.custom_tool_call_input.delta``."""
    return {"type": "response.custom_tool_call_input.delta", "item_id": item_id, "output_index": output_index,
            "delta": delta}  # type: ignore[typeddict-unknown-key]


def custom_input_done(item_id: str, output_index: int, text: str) -> Event:
    """``response.custom_tool_call_input.done`` with the whole ``input``."""
    return {"type": "response.custom_tool_call_input.done", "item_id": item_id, "output_index": output_index,
            "input": text}  # type: ignore[typeddict-unknown-key]


def error_event(message: str, code: str = "server_error") -> ErrorEvent:
    """An ``error`` event: flat fields as the ``openai`` SDK types it, and the
    nested ``error`` payload the Open Responses schema requires."""
    return {"type": "error", "code": code, "message": message, "param": None,
            "error": {"type": "server_error", "code": code, "message": message, "param": None}}


# ── per item ───────────────────────────────────────────────────────────────────

def _part_text(part: dict) -> str:
    return part.get(_TEXT_PARTS[part["type"]][1], "") if part.get("type") in _TEXT_PARTS else ""


def closing_events(output_index: int, item: dict) -> list[Event]:
    """The events that close ``item`` (finished, or cut short as ``incomplete``):
    per content part its text ``.done`` and ``content_part.done``; for a function
    call ``function_call_arguments.done``; last ``output_item.done``."""
    item_id = item.get("id")
    events: list[Event] = []
    if item.get("type") == "function_call":
        events.append(arguments_done(item_id, output_index, item.get("name"), item.get("arguments", "")))
    elif item.get("type") == "custom_tool_call":
        events.append(custom_input_done(item_id, output_index, item.get("input", "")))
    else:
        for index, part in enumerate(item.get("content") or ()):
            if part.get("type") in _TEXT_PARTS:
                events.append(text_done(part["type"], item_id, output_index, index, _part_text(part),
                                        part.get("logprobs")))
            events.append(part_done(item_id, output_index, index, part))
        for index, part in enumerate(item.get("summary") or () if item.get("type") == "reasoning" else ()):
            events.append(summary_text_done(item_id, output_index, index, part.get("text", "")))
            events.append(summary_part_done(item_id, output_index, index, part.get("text", "")))
    events.append(item_done(output_index, item))
    return events


def opened(item: dict) -> dict:
    """The ``output_item.added`` form of a finished item: in progress, no content yet."""
    kind = item.get("type")
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "reasoning":
        return {**item, "status": "in_progress", "content": [], "summary": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    if kind == "custom_tool_call":
        return {**item, "input": ""}
    if kind == "mcp_call":
        return {**item, "status": "in_progress", "output": None, "error": None}
    if "status" in item:
        return {**item, "status": "in_progress"}
    return item


def _empty(part: dict) -> dict:
    if part.get("type") in _TEXT_PARTS:
        return {**part, _TEXT_PARTS[part["type"]][1]: ""}
    return part


def replay_item(output_index: int, item: dict) -> list[Event]:
    """The whole event sequence of a finished ``item``, its content as one delta per part."""
    item_id = item.get("id")
    events: list[Event] = [item_added(output_index, opened(item))]
    if item.get("type") == "function_call":
        events.append(arguments_delta(item_id, output_index, item.get("arguments", "")))
    elif item.get("type") == "custom_tool_call":
        events.append(custom_input_delta(item_id, output_index, item.get("input", "")))
    elif item.get("type") == "mcp_list_tools":
        done = "failed" if item.get("error") else "completed"
        events += [{"type": "response.mcp_list_tools.in_progress", "item_id": item_id, "output_index": output_index},
                   {"type": f"response.mcp_list_tools.{done}", "item_id": item_id, "output_index": output_index}]
    elif item.get("type") == "mcp_call":
        done = "failed" if item.get("error") else "completed"
        arguments = item.get("arguments", "")
        events += [{"type": "response.mcp_call.in_progress", "item_id": item_id, "output_index": output_index},
                   {"type": "response.mcp_call_arguments.delta", "item_id": item_id, "output_index": output_index,
                    "delta": arguments},
                   {"type": "response.mcp_call_arguments.done", "item_id": item_id, "output_index": output_index,
                    "arguments": arguments},
                   {"type": f"response.mcp_call.{done}", "item_id": item_id, "output_index": output_index}]
    elif item.get("type") == "compaction":  # its summary was sampled (the event carries none of it)
        events.append({"type": "response.compaction.compacting", "item_id": item_id, "output_index": output_index})
    elif item.get("type") in ("message", "reasoning"):
        for index, part in enumerate(item.get("content") or ()):
            events.append(part_added(item_id, output_index, index, _empty(part)))
            if part.get("type") in _TEXT_PARTS:
                events.append(text_delta(part["type"], item_id, output_index, index, _part_text(part),
                                         part.get("logprobs")))
        for index, part in enumerate(item.get("summary") or () if item.get("type") == "reasoning" else ()):
            events.append(summary_part_added(item_id, output_index, index))
            events.append(summary_text_delta(item_id, output_index, index, part.get("text", "")))
    return events + closing_events(output_index, item)


def sse_frame(event: Event) -> bytes:
    """Encode one event as an SSE frame whose ``event:`` line equals its ``type``."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
