"""Chat Completions chunks -> Responses stream events, and the replay of finished responses.

Event names, fields and order follow ``openai.types.responses.ResponseStreamEvent``:
``response.created`` -> ``response.in_progress`` -> per output item
``output_item.added`` -> its content events -> ``output_item.done`` -> exactly one
terminal ``response.completed`` | ``response.incomplete`` | ``response.failed``.
The events themselves are built in ``requests.events``.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, Callable, Iterator

from requests import events as ev
from requests.events import Event, Sequencer
from requests.responses import logprobs_chat_to_responses, new_id, output_text_of, usage_chat_to_responses
from requests.tools import ToolMap

__all__ = ["ChatStreamTranslator", "StreamState", "ProtocolError", "response_to_events", "INCOMPLETE_REASONS"]

#: Chat ``finish_reason`` values that make a response ``incomplete``, and the reason it then gives.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ProtocolError(ValueError):
    """A backend chunk that breaks the Chat Completions stream shapes."""


_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _check_chunk(chunk: Any) -> None:
    if not isinstance(chunk, dict):
        raise ProtocolError(f"a chunk is not an object: {chunk!r:.100}")
    usage = chunk.get("usage")
    if usage is not None and not (isinstance(usage, dict) and all(
            isinstance(usage.get(k, 0), int) and not isinstance(usage.get(k, 0), bool) for k in _USAGE_FIELDS)):
        raise ProtocolError(f"the usage is not token counts: {usage!r:.200}")
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ProtocolError("'choices' is not a list")
    for choice in choices or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if delta is None:
            continue
        if not isinstance(delta, dict):
            raise ProtocolError(f"a delta is not an object: {delta!r:.100}")
        for field in _TEXT_FIELDS:
            if delta.get(field) is not None and not isinstance(delta[field], str):
                raise ProtocolError(f"delta.{field} is not text: {delta[field]!r:.100}")
        calls = delta.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise ProtocolError("delta.tool_calls is not a list of objects")
        for call in calls or ():
            fn = call.get("function") or {}
            if not isinstance(fn, dict) or any(fn.get(k) is not None and not isinstance(fn[k], str)
                                               for k in ("name", "arguments")):
                raise ProtocolError(f"a tool call's function is malformed: {fn!r:.100}")


class StreamState(Enum):
    """What the chat translator has open: nothing, one text part of an item, or a function call."""

    IDLE = "idle"
    MESSAGE = "message"              # an assistant message with an ``output_text`` part
    REFUSAL = "refusal"              # an assistant message with a ``refusal`` part
    REASONING = "reasoning"          # a reasoning item with a ``reasoning_text`` part
    FUNCTION_CALL = "function_call"


#: Per text state: the item type, its id prefix, and its content part type.
_TEXT_STATES = {
    StreamState.MESSAGE: ("message", "msg", "output_text"),
    StreamState.REFUSAL: ("message", "msg", "refusal"),
    StreamState.REASONING: ("reasoning", "rs", "reasoning_text"),
}


def _part(part_type: str, text: str) -> dict:
    if part_type == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if part_type == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def _text_item(state: StreamState, item_id: str, status: str, text: str | None) -> dict:
    item_type, _, part_type = _TEXT_STATES[state]
    content = [] if text is None else [_part(part_type, text)]
    if item_type == "message":
        return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content}


class ChatStreamTranslator:
    """Turn a Chat Completions chunk stream into Responses stream events
    (a :class:`requests.events.StreamTranslator`).

    ``response`` is the in-progress Response object (``status: "in_progress"``,
    empty ``output``) whose other fields every snapshot repeats; ``seq`` stamps
    the events (a new :class:`Sequencer` from 0 when None); ``tools`` (the
    request's :class:`requests.tools.ToolMap`) says which item each tool call
    becomes; ``summary`` streams reasoning as the reasoning summary too; ``seal``
    gives reasoning items their ``encrypted_content``; ``leading`` are finished items
    that open the output (sent right after ``response.in_progress``). ``items`` holds
    the finished output items.
    """

    def __init__(self, response: dict, seq: Sequencer | None = None, tools: ToolMap | None = None,
                 summary: bool = False, seal: Callable[[dict], str] | None = None, leading: list[dict] = ()):
        self.response = response
        self.seq = seq or Sequencer()
        self.tools = tools
        self.summary = summary      # reasoning text is also streamed as the reasoning summary
        self.seal = seal            # gives reasoning items their encrypted_content
        self.items: list[dict] = []
        self._leading = list(leading)   # finished items that open the output (a compaction)
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.final: dict | None = None
        self._state = StreamState.IDLE
        self._item_id = ""
        self._chunks: list[str] = []
        self._logprobs: list[dict] = []     # of the open output_text part
        self._call: dict | None = None      # the open function call item (FUNCTION_CALL only)
        self._chat_name = ""                # the Chat function name of the open call
        self._deferred = False              # the open call becomes another item type when it ends
        self._tool_index: Any = None

    def opening(self, resumed: bool = False) -> list[Event]:
        """``response.created`` then ``response.in_progress``; ``resumed`` (a background
        stream whose ``created``/``queued`` were sent already): ``in_progress`` alone."""
        self.response = {**self.response, "status": "in_progress"}
        in_progress = ev.response_event("response.in_progress", self.response)
        events = [in_progress] if resumed else [ev.response_event("response.created", self.response), in_progress]
        for item in self._leading:
            events += ev.replay_item(len(self.items), item)
            self.items.append(item)
        return self.seq.all(events)

    def feed(self, chunk: dict) -> list[Event]:
        """Translate one chunk (``choices[0].delta`` and optional ``usage``).

        Raises :class:`ProtocolError` for a chunk that breaks the Chat Completions
        shapes (a number where text belongs, a token count that is not a number),
        before anything of it is taken: :meth:`fail` can still close the stream."""
        _check_chunk(chunk)
        events: list[Event] = []
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self._add_text(StreamState.REASONING, reasoning, events)
            content = delta.get("content")
            if content:
                self._add_text(StreamState.MESSAGE, content, events,
                               logprobs_chat_to_responses(choice["logprobs"]) if choice.get("logprobs") else None)
            refusal = delta.get("refusal")
            if refusal:
                self._add_text(StreamState.REFUSAL, refusal, events)
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(call, events)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add_text(self, state: StreamState, text: str, events: list, logprobs: list | None = None) -> None:
        part_type = _TEXT_STATES[state][2]
        if self._state is not state:
            self._close(events, "completed")
            self._open_text_item(state, events)
        self._chunks.append(text)
        if logprobs:
            self._logprobs.extend(logprobs)
        events.append(self.seq(ev.text_delta(part_type, self._item_id, len(self.items), 0, text, logprobs)))
        if self.summary and state is StreamState.REASONING:
            events.append(self.seq(ev.summary_text_delta(self._item_id, len(self.items), 0, text)))

    def _open_text_item(self, state: StreamState, events: list) -> None:
        _, prefix, part_type = _TEXT_STATES[state]
        self._state = state
        self._chunks = []
        self._logprobs = []
        self._item_id = new_id(prefix)
        index = len(self.items)
        events.append(self.seq(ev.item_added(index, _text_item(state, self._item_id, "in_progress", None))))
        events.append(self.seq(ev.part_added(self._item_id, index, 0, _part(part_type, ""))))
        if self.summary and state is StreamState.REASONING:
            events.append(self.seq(ev.summary_part_added(self._item_id, index, 0)))

    def _add_tool_call(self, call: dict, events: list) -> None:
        fn = call.get("function") or {}
        index = call.get("index", 0)
        if self._state is not StreamState.FUNCTION_CALL or index != self._tool_index or self._is_new_call(call):
            self._close(events, "completed")
            self._open_call(call, index, events)
        elif fn.get("name") and not self._call["name"]:
            self._call["name"] = self._chat_name = fn["name"]
        args = fn.get("arguments")
        if args:
            self._chunks.append(args)
            if not self._deferred:
                events.append(self.seq(ev.arguments_delta(self._item_id, len(self.items), args)))

    def _open_call(self, call: dict, index: Any, events: list) -> None:
        name = (call.get("function") or {}).get("name") or ""
        spec = self.tools.spec(name) if self.tools is not None else None
        self._state = StreamState.FUNCTION_CALL
        self._tool_index = index
        self._deferred = self.tools is not None and self.tools.deferred(name)
        self._item_id = self.tools.new_item_id(name) if self._deferred else new_id("fc")
        self._chunks = []
        self._chat_name = name
        self._call = {"id": self._item_id, "type": "function_call", "status": "in_progress",
                      "call_id": call.get("id") or new_id("call"), "name": spec.name if spec else name,
                      "arguments": ""}
        if spec is not None and spec.namespace:
            self._call["namespace"] = spec.namespace
        if not self._deferred:
            events.append(self.seq(ev.item_added(len(self.items), dict(self._call))))

    def _is_new_call(self, call: dict) -> bool:
        """A call with its own id and name under the index of the open one (some
        backends number every call 0) starts a new item."""
        call_id, name = call.get("id"), (call.get("function") or {}).get("name")
        return bool(call_id and name and call_id != self._call["call_id"])

    def _open_item(self, status: str) -> dict | None:
        """The open item as it stands, with ``status``; None when nothing is open."""
        if self._state is StreamState.IDLE:
            return None
        text = "".join(self._chunks)
        if self._state is StreamState.FUNCTION_CALL:
            if self._deferred:
                return self.tools.call_item(self._chat_name, text, self._call["call_id"], status, self._item_id)
            return {**self._call, "arguments": text, "status": status}
        item = _text_item(self._state, self._item_id, status, text)
        if self._state is StreamState.MESSAGE and self._logprobs:
            item["content"][0]["logprobs"] = list(self._logprobs)
        if self._state is StreamState.REASONING:
            if self.summary:
                item["summary"] = [{"type": "summary_text", "text": text}]
            if self.seal is not None:
                item["encrypted_content"] = self.seal(item)
        return item

    def _close(self, events: list, status: str) -> None:
        """Emit the closing events of the open item and move it to ``items``."""
        item = self._open_item(status)
        if item is None:
            return
        index = len(self.items)
        # A deferred call is whole only now: all of its events go out together.
        events.extend(self.seq.all(ev.replay_item(index, item) if self._state is StreamState.FUNCTION_CALL
                                   and self._deferred else ev.closing_events(index, item)))
        self.items.append(item)
        self._deferred = False
        self._state = StreamState.IDLE
        self._call = None
        self._tool_index = None

    def snapshot(self, status: str, **fields: Any) -> dict:
        """The Response object with the items so far; an open item is included as incomplete."""
        items = list(self.items)
        open_item = self._open_item("incomplete")
        if open_item is not None:
            items.append(open_item)
        return {**self.response, "status": status, "output": items,
                "usage": usage_chat_to_responses(self.usage), "output_text": output_text_of(items),
                **fields}

    def finish(self) -> list[Event]:
        """Close the open item and emit ``response.completed`` or ``response.incomplete``."""
        events: list[Event] = []
        reason = INCOMPLETE_REASONS.get(self.finish_reason or "")
        self._close(events, "incomplete" if reason else "completed")
        if reason:
            self.final = self.snapshot("incomplete", incomplete_details={"reason": reason}, completed_at=None)
            events.append(self.seq(ev.response_event("response.incomplete", self.final)))
        else:
            self.final = self.snapshot("completed", completed_at=int(time.time()))
            events.append(self.seq(ev.response_event("response.completed", self.final)))
        return events

    def can_stop(self) -> bool:
        """Whether the stream may end here for steering: not inside a tool call (a call cut short
        could not be run)."""
        return self._state is not StreamState.FUNCTION_CALL

    def steered(self) -> list[Event]:
        """End here for steering: close the open item as incomplete, then ``response.incomplete``
        with ``incomplete_details.reason: "steered"`` (as OpenAI ends a steered response)."""
        events: list[Event] = []
        self._close(events, "incomplete")
        self.final = self.snapshot("incomplete", incomplete_details={"reason": "steered"}, completed_at=None)
        events.append(self.seq(ev.response_event("response.incomplete", self.final)))
        return events

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        """Close the open item as incomplete, then emit ``error`` and ``response.failed``."""
        events: list[Event] = []
        self._close(events, "incomplete")
        self.final = self.snapshot("failed", error={"code": code, "message": message}, completed_at=None)
        events.append(self.seq(ev.error_event(message, code)))
        events.append(self.seq(ev.response_event("response.failed", self.final)))
        return events


def response_to_events(response: dict, *, queued: bool = False) -> Iterator[Event]:
    """Synthesize the complete, valid event sequence of a finished Response object.

    Used to serve a cached or stored response as a stream: the items' content
    arrives as one delta each. The terminal event matches ``response["status"]``
    (``completed``, ``incomplete``, or ``failed`` after an ``error`` event;
    ``cancelled`` ends with ``response.failed`` too, the one terminal event that
    can carry it, without an ``error``).
    """
    seq = Sequencer()
    opening = {**response, "status": "queued" if queued else "in_progress", "output": [],
               "usage": None, "completed_at": None, "error": None, "incomplete_details": None,
               "output_text": ""}
    yield seq(ev.response_event("response.created", opening))
    if queued:
        yield seq(ev.response_event("response.queued", opening))
    yield seq(ev.response_event("response.in_progress", {**opening, "status": "in_progress"}))
    for index, item in enumerate(response["output"]):
        yield from seq.all(ev.replay_item(index, item))
    status = response.get("status")
    if status in ("completed", "incomplete"):
        yield seq(ev.response_event(f"response.{status}", response))
        return
    error = response.get("error")
    if error:
        yield seq(ev.error_event(error.get("message", ""), error.get("code") or "server_error"))
    yield seq(ev.response_event("response.failed", response))
