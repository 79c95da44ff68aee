"""Conformance checks for Response objects and stream events, and fake backends.

Two authorities are checked, in this order:

1. the ``openai`` SDK's pydantic types (``openai.types.responses.Response``, the
   ``ResponseStreamEvent`` union, ``ResponseItem``), validated strictly with
   ``model_validate(..., strict=True)`` / ``TypeAdapter(...).validate_python``;
2. the Open Responses OpenAPI document (``shared/spec/openresponses-openapi.json`` beside the repository),
   with ``jsonschema`` (Draft 2020-12, which OpenAPI 3.1 schemas are) resolving
   ``#/components/schemas/...`` references inside that document: a Response
   object against ``ResponseResource``, an event against the ``*StreamingEvent``
   schema whose ``type`` enum names it.

:func:`check_stream` checks the event lifecycle (order, sequence numbers,
indexes, item ids, full texts, terminal output) on top of the per-event checks.

The fakes (:class:`Backend` and the chat/chunk builders) stand in for the
backend helpers that ``api.responses`` looks up per request
(``choose_endpoint``, ``create_chat_with_retries``, ...); the request helpers
(:func:`create`, :func:`retrieve`, :func:`input_items`) check what they get
back; :func:`sdk_client_for` points the ``openai`` SDK at the app in process.
"""

from __future__ import annotations

import base64
import copy
import json
import typing
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Iterable
from unittest.mock import AsyncMock, MagicMock, patch

import orjson
import pydantic
from jsonschema import Draft202012Validator
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

#: The Open Responses schema: in the ``shared/`` folder beside the repository (as CI lays it out).
SPEC_PATH = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "spec" / "openresponses-openapi.json",
                              Path("/work/shared/spec/openresponses-openapi.json")) if p.exists()),
                 Path("/work/shared/spec/openresponses-openapi.json"))
SPEC_URI = "urn:openresponses:spec"

TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")
LIFECYCLE_TYPES = ("response.created", "response.queued", "response.in_progress") + TERMINAL_TYPES

#: OpenAI's event names whose Open Responses schema carries another ``type`` name
#: (the guide: where they differ, the wire follows OpenAI). The event is checked
#: against that schema with its ``type`` swapped for the schema's.
SPEC_EVENT_ALIASES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}


# ── the Open Responses schema ──────────────────────────────────────────────────

def _spec_errata(spec: dict) -> dict:
    """Corrections of defects in the spec document, each one named here.

    ``JsonSchemaResponseFormat.schema`` is typed ``{"type": "null"}`` although its
    meaning (and ``CreateResponse``'s own text format) is a JSON Schema object; a
    Response echoing a ``json_schema`` format could never validate. It is read as
    "an object".
    """
    spec = copy.deepcopy(spec)
    fmt = spec["components"]["schemas"]["JsonSchemaResponseFormat"]["properties"]
    if fmt.get("schema") == {"type": "null"}:
        fmt["schema"] = {"type": "object"}
    return spec


@lru_cache(maxsize=1)
def _spec() -> dict:
    return _spec_errata(json.loads(SPEC_PATH.read_text()))


@lru_cache(maxsize=1)
def _registry() -> Registry:
    resource = Resource.from_contents(_spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@lru_cache(maxsize=None)
def spec_validator(schema_name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<schema_name>`` of the spec."""
    if schema_name not in _spec()["components"]["schemas"]:
        raise KeyError(f"the spec has no schema {schema_name!r}")
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"},
                                registry=_registry())


@lru_cache(maxsize=1)
def spec_event_schemas() -> dict[str, str]:
    """``event type -> schema name`` for every ``*StreamingEvent`` schema of the spec."""
    out = {}
    for name, schema in _spec()["components"]["schemas"].items():
        if name.endswith("StreamingEvent"):
            for event_type in schema.get("properties", {}).get("type", {}).get("enum", ()):
                out[event_type] = name
    return out


def spec_errors(schema_name: str, instance: Any) -> list[str]:
    """Every violation of ``schema_name`` by ``instance``, as ``path: message`` strings."""
    errors = sorted(spec_validator(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def assert_spec(schema_name: str, instance: Any) -> None:
    """Raise AssertionError listing every violation of the spec's ``schema_name``."""
    errors = spec_errors(schema_name, instance)
    assert not errors, f"{schema_name} violations:\n  " + "\n  ".join(errors)


# ── the SDK's types ────────────────────────────────────────────────────────────

_EVENT_ADAPTER = pydantic.TypeAdapter(ResponseStreamEvent)
_ITEM_ADAPTER = pydantic.TypeAdapter(ResponseItem)


def _union_members(annotated: Any) -> tuple:
    union = typing.get_args(annotated)[0] if typing.get_origin(annotated) is typing.Annotated else annotated
    return typing.get_args(union)


@lru_cache(maxsize=1)
def sdk_event_classes() -> dict[str, type]:
    """``event type -> SDK model class`` for every member of ``ResponseStreamEvent``."""
    out = {}
    for cls in _union_members(ResponseStreamEvent):
        literal = cls.model_fields["type"].annotation
        for value in typing.get_args(literal):
            out[value] = cls
    return out


def sdk_response(obj: dict) -> Response:
    """``obj`` validated (strictly) as the SDK's ``Response``."""
    return Response.model_validate(obj, strict=True)


def sdk_event(event: dict) -> Any:
    """``event`` validated as its SDK model (strictly) and as the ``ResponseStreamEvent`` union."""
    cls = sdk_event_classes().get(event.get("type"))
    assert cls is not None, f"the SDK knows no event type {event.get('type')!r}"
    model = cls.model_validate(event, strict=True)
    union_model = _EVENT_ADAPTER.validate_python(event)
    assert type(union_model) is cls, (type(union_model), cls)
    return model


def sdk_item(item: dict) -> Any:
    """``item`` validated as the SDK's ``ResponseItem`` union (an input_items entry)."""
    return _ITEM_ADAPTER.validate_python(item)


# ── whole-object checks ────────────────────────────────────────────────────────

#: Output item types whose SDK type has no ``status``.
_WITHOUT_STATUS = ("custom_tool_call", "compaction", "mcp_list_tools", "mcp_approval_request")
#: Events inside an item of each type, beyond the part and delta events of messages and calls.
_ITEM_EVENTS = {"compaction": ("response.compaction.compacting",),
                "mcp_list_tools": ("response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                                   "response.mcp_list_tools.failed"),
                "mcp_call": ("response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                             "response.mcp_call_arguments.done", "response.mcp_call.completed",
                             "response.mcp_call.failed")}


def check_items(output: list[dict]) -> None:
    """Every output item has an ``id`` and a ``status`` (but ``custom_tool_call`` and ``compaction``,
    whose SDK types have none); every ``output_text`` part has ``annotations`` and ``logprobs`` lists."""
    for n, item in enumerate(output):
        assert isinstance(item.get("id"), str) and item["id"], f"output[{n}] has no id: {item}"
        if item.get("type") not in _WITHOUT_STATUS:
            assert item.get("status") in ("in_progress", "completed", "incomplete") \
                or (item.get("type") == "mcp_call" and item.get("status") == "failed"), \
                f"output[{n}] has no valid status: {item}"
        for part in item.get("content") or () if item.get("type") == "message" else ():
            if part.get("type") == "output_text":
                assert isinstance(part.get("annotations"), list), f"output[{n}] part lacks annotations: {part}"
                assert isinstance(part.get("logprobs"), list), f"output[{n}] part lacks logprobs: {part}"


def check_response(obj: dict, *, spec: bool = True) -> Response:
    """Validate a Response object against the SDK and (``spec``) the Open Responses
    ``ResponseResource``; also :func:`check_items`. Returns the SDK model."""
    model = sdk_response(obj)
    assert obj.get("object") == "response"
    check_items(obj["output"])
    if spec:
        assert_spec("ResponseResource", obj)
    return model


def check_event(event: dict, *, spec: bool = True) -> Any:
    """Validate one stream event against the SDK's union and (``spec``) the Open
    Responses ``*StreamingEvent`` schema of its type (through :data:`SPEC_EVENT_ALIASES`).
    A ``response`` snapshot inside is checked with :func:`check_response`."""
    model = sdk_event(event)
    spec_type = SPEC_EVENT_ALIASES.get(event["type"], event["type"])
    schema = spec_event_schemas().get(spec_type) if spec else None
    if isinstance(event.get("response"), dict):
        # the event schemas that carry a response validate it as ResponseResource themselves
        check_response(event["response"], spec=spec and schema is None)
    if schema is not None:
        assert_spec(schema, {**event, "type": spec_type})
    return model


# ── SSE ────────────────────────────────────────────────────────────────────────

def parse_sse(body: bytes | str) -> list[dict]:
    """The events of an SSE body. Asserts each frame has one ``event:`` line equal
    to its data's ``type`` and one ``data:`` line of JSON."""
    text = body.decode() if isinstance(body, bytes) else body
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        names = [line[len("event: "):] for line in frame.splitlines() if line.startswith("event: ")]
        datas = [line[len("data: "):] for line in frame.splitlines() if line.startswith("data: ")]
        assert len(names) == 1 and len(datas) == 1, f"malformed SSE frame: {frame!r}"
        data = orjson.loads(datas[0])
        assert names[0] == data.get("type"), f"event line {names[0]!r} != type {data.get('type')!r}"
        events.append(data)
    return events


# ── the lifecycle ──────────────────────────────────────────────────────────────

@dataclass
class _OpenItem:
    index: int
    item: dict
    parts: list[dict] = field(default_factory=list)     # {"type", "text", "text_done", "done"}
    arguments: str = ""
    arguments_done: bool = False
    summary: list[dict] = field(default_factory=list)   # {"text", "text_done", "done"}


@dataclass
class StreamSummary:
    """What :func:`check_stream` learnt: the finished items, the terminal event, the
    text deltas per output index."""

    events: list[dict]
    items: list[dict]
    terminal: dict
    texts: dict[int, str]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def response(self) -> dict:
        return self.terminal["response"]

    def of_type(self, event_type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == event_type]


def _part_text_key(part_type: str) -> str:
    return "refusal" if part_type == "refusal" else "text"


def check_stream(events: list[dict], *, spec: bool = True, queued: bool = False,
                 spec_exempt: tuple[str, ...] = ()) -> StreamSummary:
    """Check every event (:func:`check_event`) and the lifecycle of the whole stream.

    ``response.created`` (``response.queued`` when ``queued``) ``response.in_progress``,
    then per item ``output_item.added`` -> its content events -> ``output_item.done``
    with output indexes from 0 and one stable ``item_id``, then exactly one
    terminal event, last, preceded by an ``error`` event when it is
    ``response.failed`` for an error. ``sequence_number`` counts up by one from 0.
    Done events carry the full text; the terminal ``response.output`` equals the
    ``output_item.done`` items. Events whose type is in ``spec_exempt`` are
    checked against the SDK only.
    """
    assert events, "no events"
    for event in events:
        check_event(event, spec=spec and event["type"] not in spec_exempt)
    seqs = [e["sequence_number"] for e in events]
    assert seqs == list(range(len(events))), seqs
    types = [e["type"] for e in events]

    terminal_positions = [i for i, t in enumerate(types) if t in TERMINAL_TYPES]
    assert len(terminal_positions) == 1, f"terminal events: {[types[i] for i in terminal_positions]}"
    assert terminal_positions[0] == len(events) - 1, f"events after the terminal one: {types}"
    terminal = events[-1]
    for i, t in enumerate(types):
        if t == "error":
            assert i == len(events) - 2 and types[-1] == "response.failed", f"misplaced error event: {types}"

    expected = ["response.created"] + (["response.queued"] if queued else []) + ["response.in_progress"]
    assert types[:len(expected)] == expected, f"opening {types[:len(expected)]} != {expected}"
    assert events[0]["response"]["status"] == ("queued" if queued else "in_progress")
    for e in events[:len(expected)]:
        assert e["response"]["output"] == [], "an opening snapshot already has output"
        assert e["response"]["completed_at"] is None
    assert events[len(expected) - 1]["response"]["status"] == "in_progress"
    body_start = len(expected)
    ids = {e["response"]["id"] for e in events if e["type"] in LIFECYCLE_TYPES}
    assert len(ids) == 1, f"the response id changed within the stream: {ids}"
    for e in events[body_start:-1]:
        assert e["type"] not in ("response.created", "response.queued", "response.in_progress"), types

    done_items: list[dict] = []
    texts: dict[int, str] = {}
    open_item: _OpenItem | None = None
    next_index = 0
    for e in events[body_start:-1]:
        t = e["type"]
        if t == "error":
            continue
        if t == "response.output_item.added":
            assert open_item is None, f"item {e['output_index']} added while {open_item.index} is open"
            assert e["output_index"] == next_index, f"output_index {e['output_index']} != {next_index}"
            item = e["item"]
            assert item.get("status") == "in_progress" or item.get("type") in _WITHOUT_STATUS, \
                f"added item not in_progress: {item}"
            assert isinstance(item.get("id"), str) and item["id"]
            if item["type"] in ("message", "reasoning"):
                assert item.get("content") in ([], None), f"added item already has content: {item}"
            if item["type"] == "function_call":
                assert item["arguments"] == "", item
            open_item = _OpenItem(index=e["output_index"], item=item)
            continue
        assert open_item is not None, f"{t} outside an output item"
        assert e["output_index"] == open_item.index, f"{t}: output_index {e['output_index']} != {open_item.index}"
        kind = open_item.item["type"]
        if t != "response.output_item.done":
            assert e["item_id"] == open_item.item["id"], f"{t}: item_id {e['item_id']} != {open_item.item['id']}"
        if t == "response.content_part.added":
            assert kind in ("message", "reasoning"), f"content part on a {kind} item"
            assert all(p["done"] for p in open_item.parts), "a part was added before the last one was done"
            assert e["content_index"] == len(open_item.parts)
            part = e["part"]
            key = _part_text_key(part["type"])
            assert part[key] == "", f"part added with text: {part}"
            if kind == "reasoning":
                assert part["type"] == "reasoning_text", part
            else:
                assert part["type"] in ("output_text", "refusal"), part
            open_item.parts.append({"type": part["type"], "text": "", "done": False, "text_done": False,
                                    "logprobs": []})
        elif t in ("response.output_text.delta", "response.reasoning_text.delta", "response.refusal.delta"):
            want = {"response.output_text.delta": "output_text", "response.reasoning_text.delta": "reasoning_text",
                    "response.refusal.delta": "refusal"}[t]
            assert e["content_index"] == len(open_item.parts) - 1, f"{t} for a part not open"
            part = open_item.parts[-1]
            assert part["type"] == want and not part["text_done"], f"{t} into {part}"
            part["text"] += e["delta"]
            part["logprobs"] += e.get("logprobs") or []
        elif t in ("response.output_text.done", "response.reasoning_text.done", "response.refusal.done"):
            want = {"response.output_text.done": "output_text", "response.reasoning_text.done": "reasoning_text",
                    "response.refusal.done": "refusal"}[t]
            assert e["content_index"] == len(open_item.parts) - 1
            part = open_item.parts[-1]
            assert part["type"] == want and not part["text_done"], f"{t} for {part}"
            full = e["refusal"] if want == "refusal" else e["text"]
            assert full == part["text"], f"{t} text {full!r} != the deltas {part['text']!r}"
            part["text_done"] = True
        elif t == "response.content_part.done":
            assert e["content_index"] == len(open_item.parts) - 1
            part = open_item.parts[-1]
            assert part["text_done"], f"content_part.done before the {part['type']} done event"
            assert e["part"]["type"] == part["type"]
            assert e["part"][_part_text_key(part["type"])] == part["text"], "content_part.done lacks the full text"
            if part["type"] == "output_text":
                assert e["part"].get("annotations") == [] and e["part"].get("logprobs") == part["logprobs"], \
                    f"content_part.done logprobs differ from the deltas': {e['part']}"
            part["done"] = True
        elif t == "response.function_call_arguments.delta":
            assert kind == "function_call" and not open_item.arguments_done, f"{t} on {open_item.item}"
            open_item.arguments += e["delta"]
        elif t == "response.function_call_arguments.done":
            assert kind == "function_call" and not open_item.arguments_done
            assert e["arguments"] == open_item.arguments, "function_call_arguments.done lacks the full arguments"
            assert e.get("name") == open_item.item["name"] or (not open_item.item["name"] and e.get("name")), \
                f"function_call_arguments.done name {e.get('name')!r}"
            open_item.arguments_done = True
        elif t == "response.reasoning_summary_part.added":
            assert kind == "reasoning" and all(p["done"] for p in open_item.summary), f"{t} on {open_item.item}"
            assert e["summary_index"] == len(open_item.summary) and e["part"] == {"type": "summary_text", "text": ""}
            open_item.summary.append({"text": "", "text_done": False, "done": False})
        elif t == "response.reasoning_summary_text.delta":
            assert kind == "reasoning" and e["summary_index"] == len(open_item.summary) - 1, t
            assert not open_item.summary[-1]["text_done"], f"{t} after its done event"
            open_item.summary[-1]["text"] += e["delta"]
        elif t == "response.reasoning_summary_text.done":
            assert kind == "reasoning" and e["summary_index"] == len(open_item.summary) - 1, t
            assert e["text"] == open_item.summary[-1]["text"], "reasoning_summary_text.done lacks the full text"
            open_item.summary[-1]["text_done"] = True
        elif t == "response.reasoning_summary_part.done":
            assert kind == "reasoning" and e["summary_index"] == len(open_item.summary) - 1, t
            assert open_item.summary[-1]["text_done"] and e["part"]["text"] == open_item.summary[-1]["text"]
            open_item.summary[-1]["done"] = True
        elif t == "response.custom_tool_call_input.delta":
            assert kind == "custom_tool_call" and not open_item.arguments_done, f"{t} on {open_item.item}"
            open_item.arguments += e["delta"]
        elif t == "response.custom_tool_call_input.done":
            assert kind == "custom_tool_call" and not open_item.arguments_done
            assert e["input"] == open_item.arguments, "custom_tool_call_input.done lacks the full input"
            open_item.arguments_done = True
        elif t == "response.output_item.done":
            item = e["item"]
            assert item["id"] == open_item.item["id"] and item["type"] == kind, "the item changed identity"
            assert item.get("status") in ("completed", "incomplete", "failed" if kind == "mcp_call" else "") \
                or kind in _WITHOUT_STATUS, \
                f"done item without a final status: {item}"
            if kind in ("message", "reasoning"):
                assert all(p["done"] for p in open_item.parts), "output_item.done with a part still open"
                content = item.get("content") or []
                assert [(p["type"], p[_part_text_key(p["type"])]) for p in content] == \
                    [(p["type"], p["text"]) for p in open_item.parts], "the done item differs from its deltas"
                if kind == "message":
                    texts[open_item.index] = "".join(p["text"] for p in open_item.parts
                                                     if p["type"] == "output_text")
                else:
                    assert all(p["done"] for p in open_item.summary), "output_item.done with a summary part open"
                    assert [p["text"] for p in item.get("summary") or []] == \
                        [p["text"] for p in open_item.summary], "the done item's summary differs from its deltas"
            elif kind == "function_call":
                assert open_item.arguments_done, "output_item.done before function_call_arguments.done"
                assert item["arguments"] == open_item.arguments
                assert item["call_id"] == open_item.item["call_id"]
                assert item["name"], "a function_call without a name"
            elif kind == "custom_tool_call":
                assert open_item.arguments_done, "output_item.done before custom_tool_call_input.done"
                assert item["input"] == open_item.arguments and item["call_id"] == open_item.item["call_id"]
            done_items.append(item)
            open_item = None
            next_index += 1
        elif t in _ITEM_EVENTS.get(kind, ()):
            assert e["item_id"] == open_item.item["id"] and e["output_index"] == open_item.index, e
        else:
            raise AssertionError(f"unexpected event {t} inside an item")
    assert open_item is None, f"the stream ended with item {open_item.index} open"

    # response.failed is also the one terminal event that can carry a cancelled response
    allowed = {"response.completed": ("completed",), "response.incomplete": ("incomplete",),
               "response.failed": ("failed", "cancelled")}[terminal["type"]]
    final = terminal["response"]
    status = final["status"]
    assert status in allowed, f"{terminal['type']} carries status {status!r}"
    assert final["output"] == done_items, "the terminal output differs from the streamed items"
    if status == "completed":
        assert isinstance(final["completed_at"], int)
        assert final["error"] is None and final["incomplete_details"] is None
    if status == "incomplete":
        assert final["incomplete_details"] and final["incomplete_details"]["reason"]
    if status == "failed":
        assert final["error"] and final["error"]["message"]
    return StreamSummary(events=events, items=done_items, terminal=terminal, texts=texts)


# ── fake backends ──────────────────────────────────────────────────────────────

def chat_usage(prompt: int = 11, completion: int = 7, *, cached: int | None = 0,
               reasoning: int | None = 0, details: bool = True) -> dict:
    """A Chat Completions ``usage`` as the SDK/backends give it (detail keys present,
    values possibly null)."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if details:
        usage["prompt_tokens_details"] = None if cached is None else {"cached_tokens": cached, "audio_tokens": 0}
        usage["completion_tokens_details"] = None if reasoning is None else {
            "reasoning_tokens": reasoning, "audio_tokens": 0, "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0}
    return usage


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_completion(content: str | None = "Hello there.", *, reasoning_content: str | None = None,
                    reasoning: str | None = None, tool_calls: list[dict] | None = None,
                    finish_reason: str = "stop", usage: dict | None = None) -> dict:
    """A non-streamed Chat Completions answer (a plain dict, as ``model_dump()`` gives)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "backend-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage if usage is not None else chat_usage()}


def chunk(*, content: str | None = None, reasoning_content: str | None = None, reasoning: str | None = None,
          tool_calls: list[dict] | None = None, finish_reason: str | None = None,
          usage: dict | None = None, role: str | None = None, empty_choices: bool = False) -> dict:
    """One Chat Completions stream chunk (a plain dict)."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning_content is not None:
        delta["reasoning_content"] = reasoning_content
    if reasoning is not None:
        delta["reasoning"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    choices = [] if empty_choices else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "backend-model", "choices": choices, "usage": usage}


def text_chunks(*pieces: str, finish_reason: str = "stop", usage: dict | None = None) -> list[dict]:
    """Chunks streaming ``pieces`` as content, then the finish chunk, then a usage chunk."""
    out = [chunk(role="assistant", content="")]
    out += [chunk(content=p) for p in pieces]
    out.append(chunk(finish_reason=finish_reason))
    out.append(chunk(empty_choices=True, usage=usage if usage is not None else chat_usage()))
    return out


async def aiter_chunks(chunks: Iterable[Any], *, error: BaseException | None = None) -> AsyncIterator[Any]:
    """Yield ``chunks``; then raise ``error`` when given (a stream breaking mid-way)."""
    for c in chunks:
        yield c
    if error is not None:
        raise error


def file_data_url(text: str, mime: str = "text/plain") -> str:
    return f"data:{mime};base64,{base64.b64encode(text.encode()).decode()}"


class Backend:
    """Patches the backend helpers of ``api.responses`` for a block of requests.

    ``native=False``: a Chat Completions backend; ``chat`` (the
    ``create_chat_with_retries`` mock) returns ``results`` in turn, each a completion
    dict or a list of chunk dicts (sent as an async iterator; an exception
    instance as the list's last element is raised after the chunks before it).
    ``native=True``: an OpenAI endpoint; ``openai.responses.create`` returns
    ``results`` in turn, each a Response object or a list of stream events.
    ``cache`` is what ``get_llm_cache()`` returns (None: caching off).
    """

    def __init__(self, *results: Any, native: bool = False, model: str = "backend-model", cache: Any = None):
        self.native = native
        self.cache = cache
        self.results = list(results)
        self.model = model
        self.chat = AsyncMock(side_effect=self._next_result)
        self.openai = MagicMock(name="openai-client")
        self.openai.responses.create = AsyncMock(side_effect=self._next_result)
        self.decrement = AsyncMock()
        endpoint = "https://api.openai.com/v1" if native else "http://llama:8080"
        self.choose_endpoint = AsyncMock(return_value=(endpoint, model))
        self._stack = ExitStack()

    def _next_result(self, *args: Any, **kwargs: Any) -> Any:
        assert self.results, "the backend was asked more often than the test planned"
        result = self.results.pop(0)
        if isinstance(result, list):
            if result and isinstance(result[-1], BaseException):
                return aiter_chunks(result[:-1], error=result[-1])
            return aiter_chunks(result)
        return result

    def push(self, *results: Any) -> None:
        self.results.extend(results)

    def __enter__(self) -> "Backend":
        import api.responses as api_responses
        for name, value in (
                ("choose_endpoint", self.choose_endpoint),
                ("decrement_usage", self.decrement),
                ("is_ext_openai_endpoint", MagicMock(return_value=self.native)),
                ("_make_openai_client", MagicMock(return_value=self.openai)),
                ("get_llm_cache", MagicMock(return_value=self.cache)),
                ("create_chat_with_retries", self.chat)):
            self._stack.enter_context(patch.object(api_responses, name, value))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    # what the backend was sent
    @property
    def chat_params(self) -> list[dict]:
        """The Chat Completions request of every call, in order."""
        return [c.args[1] for c in self.chat.call_args_list]

    @property
    def native_params(self) -> list[dict]:
        """The ``responses.create`` keyword arguments of every call, in order."""
        return [c.kwargs for c in self.openai.responses.create.call_args_list]


# ── requests to the gateway ────────────────────────────────────────────────────

async def create(client: Any, body: dict, status: int = 200) -> dict:
    """``POST /v1/responses`` (not streamed); asserts the status; returns the JSON
    body, checked with :func:`check_response` when it is a Response."""
    r = await client.post("/v1/responses", json=body)
    assert r.status_code == status, (r.status_code, r.text[:2000])
    data = r.json()
    if r.status_code == 200:
        check_response(data)
    return data


async def create_stream(client: Any, body: dict) -> list[dict]:
    """``POST /v1/responses`` with ``stream: true``; returns the parsed events."""
    r = await client.post("/v1/responses", json={**body, "stream": True})
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.content)


async def retrieve(client: Any, response_id: str) -> dict:
    """``GET /v1/responses/{id}``; asserts 200; the Response checked with :func:`check_response`."""
    r = await client.get(f"/v1/responses/{response_id}")
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    data = r.json()
    check_response(data)
    return data


async def input_items(client: Any, response_id: str, **params: Any) -> list[dict]:
    """``GET /v1/responses/{id}/input_items`` (``params`` as query); checks the list
    shape and every item as the SDK's ``ResponseItem``; returns the items."""
    r = await client.get(f"/v1/responses/{response_id}/input_items", params=params)
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    page = r.json()
    assert page["object"] == "list" and isinstance(page["has_more"], bool)
    data = page["data"]
    assert page["first_id"] == (data[0]["id"] if data else None)
    assert page["last_id"] == (data[-1]["id"] if data else None)
    for item in data:
        sdk_item(item)
    return data


def assert_openai_error(r: Any, status: int) -> dict:
    """Assert an OpenAI-shaped error reply of ``status``; return its ``error`` object."""
    assert r.status_code == status, (r.status_code, r.text[:2000])
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    return error


# ── the openai SDK as the client ───────────────────────────────────────────────

def sdk_client_for(app: Any, api_key: str = "test-key") -> Any:
    """An ``openai.AsyncOpenAI`` whose requests go to ``app`` in process, with ``api_key``."""
    import httpx
    import openai
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=api_key, http_client=http, max_retries=0)


def _strip_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_parsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [_strip_parsed(v) for v in value]
    return value


def sdk_final_as_dict(final: Any) -> dict:
    """The SDK stream helper's final (parsed) response as the wire dict it was built
    from: the helper's ``parsed``/``parsed_arguments`` additions removed."""
    return _strip_parsed(final.to_dict())
