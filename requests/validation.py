"""Validation of Responses create bodies (``POST /v1/responses``) with pydantic.

Types follow ``openai.types.responses.ResponseCreateParams``; ranges follow
OpenAI's documented limits (metadata: 16 keys, key <= 64 characters, value <=
512 characters). Unknown top-level fields are kept for native pass-through.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from requests.responses import InvalidInput

__all__ = ["CreateResponseBody", "InputTokensBody", "ConversationCreateBody", "ConversationUpdateBody",
           "ConversationItemsBody", "CompactBody", "validate_create_body", "validate_compact_body",
           "validate_input_tokens_body", "validate_body",
           "conversation_id", "METADATA_MAX_KEYS"]

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512


def _check_metadata(cls: type, value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's metadata limits (a pydantic field validator)."""
    if value is None:
        return value
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata may have at most {METADATA_MAX_KEYS} keys")
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"metadata keys may have at most {METADATA_MAX_KEY_CHARS} characters")
        if len(item) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(f"metadata values may have at most {METADATA_MAX_VALUE_CHARS} characters")
    return value


class CreateResponseBody(BaseModel):
    """The create body. Strict types: a string is never taken for a number or a bool."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    store: bool | None = None
    stream: bool | None = None
    background: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    client_metadata: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | None = None
    nomyo: dict[str, Any] | None = None

    _metadata_limits = field_validator("metadata")(_check_metadata)

    @field_validator("text")
    @classmethod
    def _text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        fmt = (value or {}).get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
                raise ValueError("text.format.type must be 'text', 'json_object' or 'json_schema'")
            if fmt["type"] == "json_schema" and (not isinstance(fmt.get("name"), str)
                                                 or not isinstance(fmt.get("schema"), dict)):
                raise ValueError("a json_schema format needs a string 'name' and an object 'schema'")
        return value


#: Create fields of ``openai.types.responses.ResponseCreateParams`` the gateway does not act on yet:
#: a request with one is refused (400 naming it), never served as if it were absent.
NOT_YET_SUPPORTED = ("prompt", "access_programs", "background_options",
                     "image", "moderation")


def _param(loc: tuple) -> str:
    """The top-level field of a pydantic error location, with the list indices after it."""
    out = str(loc[0]) if loc else ""
    for part in loc[1:]:
        if isinstance(part, int):
            out += f"[{part}]"
    return out


def validate_create_body(data: Any, max_input_items: int | None = None) -> dict:
    """Check a parsed create body; return it (the same dict) when valid.

    Raises :class:`InvalidInput` naming the first offending field, for a body
    that is not an object, a field the gateway does not know (``unknown_parameter``)
    or does not act on yet (:data:`NOT_YET_SUPPORTED`), a wrong type or range,
    metadata past its limits, a ``background`` request without ``store``, or more
    than ``max_input_items`` input items.
    """
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    for name in NOT_YET_SUPPORTED:
        if data.get(name) is not None:
            raise InvalidInput(f"'{name}' is not supported by this gateway yet.", name, "unsupported_parameter")
    _validate(CreateResponseBody, data)
    if data.get("background") and data.get("store") is False:
        raise InvalidInput("Background responses need 'store': true (the default).", "background")
    if data.get("background") and any(isinstance(t, dict) and t.get("type") == "mcp" and
                                       (t.get("headers") or t.get("authorization")) for t in data.get("tools") or ()):
        raise InvalidInput("A background response is stored with its request: it cannot carry an mcp tool's "
                           "'headers' or 'authorization'.", "background")
    _check_item_count(data, max_input_items)
    _check_conversation(data)
    _check_context_management(data.get("context_management"))
    return data


def conversation_id(body: dict) -> str | None:
    """The id of a body's ``conversation`` (a string or ``{"id": ...}``), or None."""
    value = body.get("conversation")
    return value.get("id") if isinstance(value, dict) else value


def _check_conversation(data: dict) -> None:
    value = data.get("conversation")
    if value is None:
        return
    if isinstance(value, dict) and (set(value) != {"id"} or not isinstance(value["id"], str)):
        raise InvalidInput("'conversation' must be a conversation id or an object with just an 'id'.", "conversation")
    if not conversation_id(data):
        raise InvalidInput("'conversation' must name a conversation.", "conversation")
    if data.get("previous_response_id") is not None:
        raise InvalidInput("'previous_response_id' and 'conversation' cannot be used together.", "conversation",
                           "mutually_exclusive_parameters")


def _check_context_management(entries: list[dict] | None) -> None:
    for i, entry in enumerate(entries or ()):
        where = f"context_management[{i}]"
        if entry.get("type") != "compaction":
            raise InvalidInput("The one context_management type is 'compaction'.", f"{where}.type")
        unknown = set(entry) - {"type", "compact_threshold"}
        if unknown:
            raise InvalidInput(f"Unknown parameter: '{where}.{sorted(unknown)[0]}'.", f"{where}.{sorted(unknown)[0]}",
                               "unknown_parameter")
        threshold = entry.get("compact_threshold")
        if threshold is not None and (type(threshold) is not int or threshold < 1):
            raise InvalidInput("'compact_threshold' must be a positive integer (tokens).",
                               f"{where}.compact_threshold")


def _validate(model: type[BaseModel], data: dict) -> None:
    """``data`` checked against ``model``; the first error as :class:`InvalidInput` naming its field."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            raise InvalidInput(f"Unknown parameter: '{param}'.", param, "unknown_parameter") from None
        raise InvalidInput(f"Invalid value for '{param}': {err['msg']}.", param) from None


def _check_item_count(data: dict, max_input_items: int | None) -> None:
    items = data.get("input")
    if max_input_items is not None and isinstance(items, list) and len(items) > max_input_items:
        raise InvalidInput(f"'input' may have at most {max_input_items} items.", "input")


class InputTokensBody(BaseModel):
    """The body of ``POST /v1/responses/input_tokens`` (``openai.types.responses.InputTokenCountParams``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    personality: str | None = None
    conversation: str | dict[str, Any] | None = None


def validate_input_tokens_body(data: Any, max_input_items: int | None = None) -> dict:
    """Check a parsed input-token-count body; return it. Raises :class:`InvalidInput` as
    :func:`validate_create_body` does."""
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    _validate(InputTokensBody, data)
    _check_item_count(data, max_input_items)
    _check_conversation(data)
    return data


class CompactBody(BaseModel):
    """The body of ``POST /v1/responses/compact`` (``openai.types.responses.ResponseCompactParams``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None


def validate_compact_body(data: Any, max_input_items: int | None = None) -> dict:
    """Check a parsed compact body; return it. Raises :class:`InvalidInput` as
    :func:`validate_create_body` does."""
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    _validate(CompactBody, data)
    _check_item_count(data, max_input_items)
    return data


#: At most this many items go into a conversation in one request (OpenAI's limit).
CONVERSATION_ITEMS_PER_REQUEST = 20


class ConversationCreateBody(BaseModel):
    """``POST /v1/conversations`` (``openai.types.conversations.ConversationCreateParams``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[dict[str, Any]] | None = Field(None, max_length=CONVERSATION_ITEMS_PER_REQUEST)
    metadata: dict[str, str] | None = None

    _metadata_limits = field_validator("metadata")(_check_metadata)


class ConversationUpdateBody(BaseModel):
    """``POST /v1/conversations/{id}`` (``ConversationUpdateParams``: ``metadata`` is required)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    metadata: dict[str, str] | None

    _metadata_limits = field_validator("metadata")(_check_metadata)


class ConversationItemsBody(BaseModel):
    """``POST /v1/conversations/{id}/items`` (``ItemCreateParams``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[dict[str, Any]] = Field(min_length=1, max_length=CONVERSATION_ITEMS_PER_REQUEST)


def validate_body(model: type[BaseModel], data: Any) -> dict:
    """Check a parsed body against ``model`` (one of the Conversations bodies); return it.
    Raises :class:`InvalidInput` naming the first offending field."""
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    _validate(model, data)
    return data
