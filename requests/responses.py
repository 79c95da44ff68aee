"""Responses API <-> Chat Completions translation (pure: dicts in, dicts out).

Follows OpenAI's Responses API as the ``openai`` SDK types it
(``openai.types.responses``) and the Open Responses schema, which requires every
field of a Response to be present. Request parameters (tools, tool_choice,
text.format, sampling) are mapped in ``requests.params``; the streaming state
machine lives in ``requests.stream``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from requests.common import InvalidInput, new_id
from requests.files import part_text
from requests.mcp import MCP_ITEM_TYPES, normalize_mcp_item, redacted
from requests.params import tools_responses_to_chat
from requests.tools import CALL_ITEM_TYPES, OUTPUT_ITEM_TYPES, ToolMap, call_to_chat, output_to_chat

__all__ = [
    "InvalidInput",
    "new_id",
    "normalize_input_items",
    "responses_input_to_messages",
    "messages_to_responses_input",
    "chat_message_to_output_items",
    "normalize_output_item",
    "stored_items_view",
    "usage_chat_to_responses",
    "complete_usage",
    "tools_responses_to_chat",
    "output_text_of",
    "build_response_object",
]

# ── input items ────────────────────────────────────────────────────────────────

def _text_part(part_type: str, text: str) -> dict:
    if part_type == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": part_type, "text": text}


def _normalize_content(content: Any, role: str, param: str) -> list[dict]:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [_text_part(text_type, content)]
    if not isinstance(content, list):
        raise InvalidInput("Message content must be a string or a list of content parts.", param)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise InvalidInput("A content part must be an object with a 'type'.", f"{param}[{j}]")
        ptype = part["type"]
        where = f"{param}[{j}]"
        if ptype in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            _require_str(part, "text", where)
            parts.append({**part, "type": text_type} if ptype == "text" else part)
        elif ptype == "refusal":
            _require_str(part, "refusal", where)
            parts.append(part)
        elif ptype == "input_image":
            for key in ("image_url", "file_id"):
                _require_str(part, key, where, optional=True)
            if part.get("detail") not in (None, "auto", "low", "high"):
                raise InvalidInput("input_image 'detail' must be 'auto', 'low' or 'high'.", f"{where}.detail")
            parts.append({**part, "detail": part.get("detail") or "auto"})
        elif ptype == "input_file":
            for key in ("file_data", "file_url", "file_id", "filename"):
                _require_str(part, key, where, optional=True)
            parts.append(part)
        else:
            raise InvalidInput(f"Unsupported content part type '{ptype}'.", f"{where}.type")
    return parts


def _require_str(part: dict, key: str, where: str, optional: bool = False) -> None:
    value = part.get(key)
    if not isinstance(value, str) and not (optional and value is None):
        raise InvalidInput(f"'{key}' must be a string.", f"{where}.{key}")


def _text_parts(value: Any, where: str) -> list[dict]:
    """A list of ``{"type", "text"}`` parts (reasoning summaries and contents), checked."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("Must be a list of text parts.", where)
    for j, part in enumerate(value):
        if not isinstance(part, dict):
            raise InvalidInput("A text part must be an object.", f"{where}[{j}]")
        _require_str(part, "text", f"{where}[{j}]")
    return value


def normalize_input_items(input: str | list | None) -> list[dict]:
    """Turn a request's ``input`` into stored input items, each with ``id`` and ``type``.

    A string becomes one user message; an EasyInputMessage (``role`` without
    ``type``) becomes a ``message`` item with content parts. Items that carry an
    ``id`` keep it. ``item_reference`` items are kept for the caller to resolve.
    Raises :class:`InvalidInput` for anything the Responses API would reject.
    """
    if input is None:
        return []
    if isinstance(input, str):
        return [{"type": "message", "id": new_id("msg"), "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": input}]}]
    if not isinstance(input, list):
        raise InvalidInput("'input' must be a string or a list of items.", "input")
    items = []
    for i, raw in enumerate(input):
        param = f"input[{i}]"
        if not isinstance(raw, dict):
            raise InvalidInput("Each input item must be an object.", param)
        item_type = raw.get("type") or ("message" if "role" in raw else None)
        if item_type == "message":
            role = raw.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidInput(f"Invalid message role {role!r}.", f"{param}.role")
            items.append({"type": "message", "id": raw.get("id") or new_id("msg"), "role": role,
                          "status": raw.get("status") or "completed",
                          "content": _normalize_content(raw.get("content"), role, f"{param}.content")})
        elif item_type == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(raw.get(key), str):
                    raise InvalidInput(f"function_call needs a string '{key}'.", f"{param}.{key}")
            call = {"type": "function_call", "id": raw.get("id") or new_id("fc"),
                    "call_id": raw["call_id"], "name": raw["name"],
                    "arguments": raw["arguments"], "status": raw.get("status") or "completed"}
            if raw.get("namespace") is not None:
                _require_str(raw, "namespace", param)
                call["namespace"] = raw["namespace"]
            items.append(call)
        elif item_type == "function_call_output":
            if not isinstance(raw.get("call_id"), str):
                raise InvalidInput("function_call_output needs a string 'call_id'.", f"{param}.call_id")
            output = raw.get("output")
            if isinstance(output, list):
                output = _normalize_content(output, "user", f"{param}.output")
            elif not isinstance(output, str):
                raise InvalidInput("function_call_output needs an 'output'.", f"{param}.output")
            items.append({"type": "function_call_output", "id": raw.get("id") or new_id("fco"),
                          "call_id": raw["call_id"], "output": output,
                          "status": raw.get("status") or "completed"})
        elif item_type == "reasoning":
            _text_parts(raw.get("content"), f"{param}.content")
            items.append({"type": "reasoning", "id": raw.get("id") or new_id("rs"),
                          "summary": _text_parts(raw.get("summary"), f"{param}.summary"),
                          **{k: raw[k] for k in ("content", "encrypted_content") if raw.get(k) is not None}})
        elif item_type == "item_reference":
            if not isinstance(raw.get("id"), str):
                raise InvalidInput("item_reference needs a string 'id'.", f"{param}.id")
            items.append({"type": "item_reference", "id": raw["id"]})
        elif item_type in MCP_ITEM_TYPES:
            items.append(normalize_mcp_item(raw, param))
        elif item_type == "compaction":
            _require_str(raw, "encrypted_content", param)
            items.append({"type": "compaction", "id": raw.get("id") or new_id("cmp"),
                          "encrypted_content": raw["encrypted_content"]})
        elif item_type in _TOOL_ITEM_FIELDS:
            items.append(_normalize_tool_item(raw, item_type, param))
        else:
            raise InvalidInput(f"Unsupported input item type {item_type!r}.", f"{param}.type")
    return items


#: Per tool call and output item type (other than function calls): its string fields that must be
#: present, the field holding its payload, and the id prefix of items that come without one.
_TOOL_ITEM_FIELDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "custom_tool_call": (("call_id", "name", "input"), "input", "ctc"),
    "custom_tool_call_output": (("call_id",), "output", "ctco"),
    "local_shell_call": (("call_id",), "action", "lsh"),
    "local_shell_call_output": (("id", "output"), "output", "lsho"),
    "shell_call": (("call_id",), "action", "sh"),
    "shell_call_output": (("call_id",), "output", "sho"),
    "apply_patch_call": (("call_id",), "operation", "apc"),
    "apply_patch_call_output": (("call_id",), "status", "apco"),
    "computer_call": (("call_id",), "action", "cu"),
    "computer_call_output": (("call_id",), "output", "cuo"),
}


def _normalize_tool_item(raw: dict, item_type: str, param: str) -> dict:
    """A client-run tool's call or output item, checked for what Chat history needs, kept as sent."""
    required, payload, prefix = _TOOL_ITEM_FIELDS[item_type]
    for key in required:
        _require_str(raw, key, param)
    if raw.get(payload) is None:
        raise InvalidInput(f"{item_type} needs '{payload}'.", f"{param}.{payload}")
    if item_type in ("custom_tool_call_output",) and not isinstance(raw[payload], (str, list)):
        raise InvalidInput(f"{item_type} 'output' must be a string or a list of content parts.",
                           f"{param}.output")
    if item_type in ("local_shell_call", "shell_call", "apply_patch_call", "computer_call", "computer_call_output") \
            and not isinstance(raw[payload], dict):
        raise InvalidInput(f"{item_type} '{payload}' must be an object.", f"{param}.{payload}")
    item = {**raw, "type": item_type}
    item.setdefault("id", new_id(prefix))
    return item


# ── Responses input -> Chat Completions messages ───────────────────────────────

def _chat_part(part: dict) -> dict | None:
    ptype = part["type"]
    if ptype in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
        return {"type": "text", "text": part["text"]}
    if ptype == "refusal":
        return {"type": "text", "text": part.get("refusal", "")}
    if ptype == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidInput("This model's endpoint speaks Chat Completions, which takes an input_image "
                               "only by 'image_url' (a URL or data URL), not by 'file_id'.", "input")
        image = {"url": url}
        if part.get("detail") and part["detail"] != "auto":
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if ptype == "input_file":
        return {"type": "text", "text": part_text(part, "input", {})}
    raise InvalidInput(f"Unsupported content part type '{ptype}'.", "input")


def _chat_content(content: Any, role: str) -> Any:
    if isinstance(content, str):
        return content
    parts = [p for p in (_chat_part(p) for p in content) if p is not None]
    if all(p["type"] == "text" for p in parts) and (len(parts) == 1 or role != "user"):
        return "".join(p["text"] for p in parts) if role != "user" else parts[0]["text"]
    return parts


def _tool_output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return "".join(p.get("text", "") for p in output if isinstance(p, dict))


def responses_input_to_messages(input: str | list | None, instructions: str | None = None) -> list[dict]:
    """Translate Responses ``input`` (string or items) to Chat Completions messages.

    ``instructions`` becomes a leading ``system`` message; ``developer`` messages
    become ``system``. Consecutive ``function_call`` items form one assistant
    message with ``tool_calls`` (joined onto a directly preceding assistant
    message); ``function_call_output`` becomes a ``tool`` message; a ``reasoning``
    item's text rides on the next assistant message as ``reasoning_content``.
    A single text part collapses to a plain string.
    Raises :class:`InvalidInput` for unsupported items or parts.
    """
    messages: list[dict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if input is None:
        return messages
    if isinstance(input, str):
        messages.append({"role": "user", "content": input})
        return messages
    pending_reasoning: list[str] = []
    for i, item in enumerate(input):
        if not isinstance(item, dict):
            raise InvalidInput("Each input item must be an object.", f"input[{i}]")
        item_type = item.get("type") or ("message" if "role" in item else None)
        if item_type == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            content = item.get("content")
            if content is None:
                raise InvalidInput("A message needs 'content'.", f"input[{i}].content")
            msg = {"role": role, "content": _chat_content(content, role)}
            if role == "assistant" and pending_reasoning:
                msg["reasoning_content"] = "".join(pending_reasoning)
                pending_reasoning = []
            messages.append(msg)
        elif item_type in CALL_ITEM_TYPES:
            call = call_to_chat(item)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and i > 0 \
                    and _is_assistant_output(input[i - 1]):
                last.setdefault("tool_calls", []).append(call)
            else:
                msg = {"role": "assistant", "content": None, "tool_calls": [call]}
                if pending_reasoning:
                    msg["reasoning_content"] = "".join(pending_reasoning)
                    pending_reasoning = []
                messages.append(msg)
        elif item_type in OUTPUT_ITEM_TYPES:
            messages.extend(output_to_chat(item))
        elif item_type == "reasoning":
            pending_reasoning.extend(
                p.get("text", "") for p in (item.get("content") or item.get("summary") or [])
                if isinstance(p, dict))
        elif item_type == "item_reference":
            raise InvalidInput(f"Item reference {item.get('id')!r} was not resolved.", f"input[{i}]")
        else:
            raise InvalidInput(f"Unsupported input item type {item_type!r}.", f"input[{i}].type")
    return messages


def _is_assistant_output(item: Any) -> bool:
    return isinstance(item, dict) and (
        item.get("type") in CALL_ITEM_TYPES
        or (item.get("type") in ("message", None) and item.get("role") == "assistant"))


def messages_to_responses_input(messages: Iterable[dict]) -> tuple[str | None, list[dict]]:
    """Translate Chat Completions messages to ``(instructions, input items)``.

    ``system``/``developer`` texts join (blank line between) into instructions;
    user and assistant messages become EasyInputMessage-style items with
    ``input_text``/``output_text`` parts; assistant ``tool_calls`` become
    ``function_call`` items and ``tool`` messages ``function_call_output`` items.
    """
    instructions: list[str] = []
    items: list[dict] = []
    for msg in messages:
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            instructions.append(content if isinstance(content, str) else
                                "".join(p.get("text", "") for p in content or []))
        elif role == "tool":
            items.append({"type": "function_call_output", "call_id": msg.get("tool_call_id"),
                          "output": content if isinstance(content, str) else _tool_output_text(content or [])})
        elif role in ("user", "assistant"):
            text_type = "output_text" if role == "assistant" else "input_text"
            parts: list[dict] = []
            if isinstance(content, str):
                parts.append({"type": text_type, "text": content})
            for p in content if isinstance(content, list) else []:
                if p.get("type") == "text":
                    parts.append({"type": text_type, "text": p.get("text", "")})
                elif p.get("type") == "image_url":
                    image = p["image_url"] if isinstance(p.get("image_url"), dict) else {"url": p.get("image_url")}
                    parts.append({"type": "input_image", "image_url": image.get("url"),
                                  "detail": image.get("detail") or "auto"})
            if parts:
                items.append({"role": role, "content": parts})
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                items.append({"type": "function_call", "call_id": call.get("id"),
                              "name": fn.get("name"), "arguments": fn.get("arguments") or ""})
    return ("\n\n".join(instructions) if instructions else None), items


# ── Chat Completions answer -> Responses output ────────────────────────────────

def chat_message_to_output_items(message: dict, tools: ToolMap | None = None, summary: bool = False,
                                 seal: Callable[[dict], str] | None = None, logprobs: Any = None) -> list[dict]:
    """Translate one assistant Chat Completions message to Responses output items.

    Order: a ``reasoning`` item (from llama.cpp/vLLM ``reasoning_content`` or
    Ollama ``reasoning``), then the ``message`` item with one ``output_text``
    part, then one item per tool call, each with its own ``call_id`` (one is
    made up when the backend gave none): a ``function_call``, or with ``tools``
    (the request's :class:`requests.tools.ToolMap`) the item of the tool called.
    With ``summary`` (the request asked for ``reasoning.summary``) the reasoning
    text is the reasoning item's summary too: Chat backends give no other.
    ``seal`` gives the reasoning item its ``encrypted_content``; ``logprobs`` (the
    choice's) go on the ``output_text`` part.
    """
    items: list[dict] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        items.append({"type": "reasoning", "id": new_id("rs"),
                      "summary": [{"type": "summary_text", "text": reasoning}] if summary else [],
                      "content": [{"type": "reasoning_text", "text": reasoning}],
                      "status": "completed"})
        if seal is not None:
            items[-1]["encrypted_content"] = seal(items[-1])
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content:
        items.append({"type": "message", "id": new_id("msg"), "status": "completed",
                      "role": "assistant",
                      "content": [{"type": "output_text", "text": content, "annotations": []}]})
        if logprobs:
            items[-1]["content"][0]["logprobs"] = logprobs_chat_to_responses(logprobs)
    refusal = message.get("refusal")
    if refusal:
        items.append({"type": "message", "id": new_id("msg"), "status": "completed",
                      "role": "assistant", "content": [{"type": "refusal", "refusal": refusal}]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        call_id = call.get("id") or new_id("call")
        if tools is not None:
            items.append(tools.call_item(fn.get("name") or "", fn.get("arguments") or "", call_id))
            continue
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call_id,
                      "name": fn.get("name") or "", "arguments": fn.get("arguments") or "",
                      "status": "completed"})
    return items


def normalize_output_item(item: dict, status: str = "completed") -> dict:
    """Return ``item`` with the fields strict clients require filled in.

    Adds ``id`` and ``status`` where missing and ``annotations``/``logprobs``
    lists to ``output_text`` parts (Open Responses ``OutputTextContent``).
    The input dict is not modified.
    """
    out = dict(item)
    kind = out.get("type")
    if "id" not in out or out["id"] is None:
        out["id"] = new_id({"message": "msg", "function_call": "fc", "reasoning": "rs"}.get(kind, "item"))
    if kind in ("message", "function_call", "reasoning") and not out.get("status"):
        out["status"] = status
    if kind == "message":
        out.setdefault("role", "assistant")
        out["content"] = [
            {**p, "annotations": p.get("annotations") or [], "logprobs": p.get("logprobs") or []}
            if p.get("type") == "output_text" else p
            for p in out.get("content") or []]
    elif kind == "reasoning":
        out.setdefault("summary", [])
    return out


def stored_items_view(items: list[dict]) -> list[dict]:
    """Stored items as a list endpoint gives them: assistant messages with every field their
    output type has (:func:`normalize_output_item`), the others as stored."""
    return [normalize_output_item(item) if item.get("type") == "message" and item.get("role") == "assistant"
            else item for item in items]


def logprobs_chat_to_responses(logprobs: Any) -> list[dict]:
    """Chat ``choice.logprobs`` (``{"content": [{token, logprob, bytes, top_logprobs}]}``) as the
    ``logprobs`` list of an ``output_text`` part (``openai.types.responses.response_output_text.Logprob``)."""
    entries = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    out = []
    for entry in entries or ():
        if not isinstance(entry, dict):
            continue
        out.append({"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0),
                    "bytes": entry.get("bytes") or [],
                    "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
                                      "bytes": t.get("bytes") or []}
                                     for t in entry.get("top_logprobs") or () if isinstance(t, dict)]})
    return out


def usage_chat_to_responses(usage: dict | None) -> dict | None:
    """Map Chat Completions usage to Responses usage.

    ``prompt_tokens`` -> ``input_tokens``, ``completion_tokens`` ->
    ``output_tokens``, their sum -> ``total_tokens``. When the backend reports a
    breakdown (the ``prompt_tokens_details``/``completion_tokens_details`` keys,
    even as null) the ``input_tokens_details``/``output_tokens_details`` objects
    are filled from it, zero where it gives no figure. None stays None.
    """
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    out = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    if "prompt_tokens_details" in usage or "completion_tokens_details" in usage:
        pdet = usage.get("prompt_tokens_details") or {}
        cdet = usage.get("completion_tokens_details") or {}
        out["input_tokens_details"] = {"cached_tokens": int(pdet.get("cached_tokens") or 0),
                                       "cache_write_tokens": 0}
        out["output_tokens_details"] = {"reasoning_tokens": int(cdet.get("reasoning_tokens") or 0)}
    return out


def complete_usage(usage: dict | None) -> dict | None:
    """Responses ``usage`` with every detail field the SDK requires, zero where
    missing (for upstream Responses APIs that leave some out). None stays None."""
    if usage is None:
        return None
    indet = usage.get("input_tokens_details") or {}
    outdet = usage.get("output_tokens_details") or {}
    return {**usage,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, **indet},
            "output_tokens_details": {"reasoning_tokens": 0, **outdet}}


# ── the Response object ────────────────────────────────────────────────────────

def output_text_of(output_items: Iterable[dict]) -> str:
    """Concatenate the ``output_text`` parts of all message items (the SDK's ``output_text``)."""
    return "".join(part.get("text", "")
                   for item in output_items if item.get("type") == "message"
                   for part in item.get("content") or () if part.get("type") == "output_text")


def _conversation_echo(conversation: Any) -> dict | None:
    """A create's ``conversation`` (an id or ``{"id"}``) as the Response's ``{"id"}``."""
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return {"id": conversation} if isinstance(conversation, str) else None


def build_response_object(*, response_id: str, model: str, output_items: list[dict],
                          status: str = "completed", request: dict | None = None,
                          created_at: int | None = None, completed_at: int | None = None,
                          usage: dict | None = None, previous_response_id: str | None = None,
                          error: dict | None = None, incomplete_details: dict | None = None,
                          store: bool | None = None, background: bool | None = None) -> dict:
    """Build a complete Response object (``object: "response"``).

    Every field Open Responses' ``ResponseResource`` requires is present, with
    the request's settings echoed from ``request`` (the create body) and the
    API's defaults elsewhere. ``output_items`` are normalized with
    :func:`normalize_output_item`; ``output_text`` is added as the SDK's
    convenience. Times are Unix seconds; ``completed_at`` defaults to now for a
    ``completed`` response.
    """
    req = request or {}
    now = int(time.time())
    created = now if created_at is None else int(created_at)
    if completed_at is None and status == "completed":
        completed_at = now
    elif completed_at is not None:
        completed_at = int(completed_at)
    item_status = "incomplete" if status == "incomplete" else "completed"
    output = [normalize_output_item(item, item_status) for item in output_items]
    reasoning = req.get("reasoning") or {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": req.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True) is not False,
        "previous_response_id": previous_response_id if previous_response_id is not None
        else req.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": req.get("store", True) is not False if store is None else store,
        "background": bool(req.get("background")) if background is None else background,
        "service_tier": req.get("service_tier") or "default",
        "temperature": _number(req.get("temperature"), 1.0),
        "top_p": _number(req.get("top_p"), 1.0),
        "presence_penalty": _number(req.get("presence_penalty"), 0.0),
        "frequency_penalty": _number(req.get("frequency_penalty"), 0.0),
        "top_logprobs": int(req.get("top_logprobs") or 0),
        "text": _text_echo(req.get("text")),
        "tool_choice": req.get("tool_choice") or "auto",
        "tools": [_tool_echo(tool) for tool in redacted(req.get("tools")) or ()],
        "truncation": req.get("truncation") or "disabled",
        "usage": usage,
        "user": req.get("user"),
        "metadata": req.get("metadata") or {},
        "safety_identifier": req.get("safety_identifier"),
        "prompt_cache_key": req.get("prompt_cache_key"),
        "conversation": _conversation_echo(req.get("conversation")),
        "output_text": output_text_of(output),
    }


def _number(value: Any, default: float) -> float:
    return default if value is None else value


def _tool_echo(tool: dict) -> dict:
    """A function tool as the Response repeats it: every FunctionTool field present
    (``strict`` defaults to true, as in the Responses API). Other tools as given."""
    if tool.get("type") != "function":
        return tool
    return {**tool, "description": tool.get("description"), "parameters": tool.get("parameters"),
            "strict": True if tool.get("strict") is None else tool["strict"]}


def _text_echo(text: dict | None) -> dict:
    """The ``text`` setting as the Response repeats it: a ``format`` always present,
    a json_schema format with every field (``strict`` defaults to false)."""
    out = {"format": {"type": "text"}, **(text or {})}
    fmt = out["format"]
    if fmt.get("type") == "json_schema":
        out["format"] = {**fmt, "description": fmt.get("description"), "strict": bool(fmt.get("strict", False))}
    return out
