"""Responses create parameters -> Chat Completions request parameters (pure).

Tools, ``tool_choice``, ``text.format``, output limits and sampling options, as
OpenAI's Responses and Chat Completions APIs name them.
"""

from __future__ import annotations

from typing import Any, Callable

from requests.common import InvalidInput
from requests.tools import ToolMap, chat_name

__all__ = ["HOSTED_TOOL_TYPES", "HostedPolicy", "tool_map", "tools_responses_to_chat", "dropped_hosted_tools",
           "tool_choice_to_chat", "text_format_to_response_format", "chat_request_params"]

#: Tool types OpenAI runs on its own side (``openai.types.responses.Tool``): a Chat
#: Completions backend cannot run them.
HOSTED_TOOL_TYPES = frozenset({
    "file_search", "web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11",
    "mcp", "code_interpreter", "programmatic_tool_calling", "image_generation", "tool_search"})

#: ``tool type -> "drop" | "reject"``: what to do with a hosted tool on a Chat backend.
HostedPolicy = Callable[[str], str]


def _reject_all(tool_type: str) -> str:
    return "reject"


def dropped_hosted_tools(tools: list[dict] | None, hosted_policy: HostedPolicy) -> list[str]:
    """The hosted tool types of ``tools`` that ``hosted_policy`` drops, in order, once each."""
    out: list[str] = []
    for tool in tools or ():
        ttype = tool.get("type") if isinstance(tool, dict) else None
        if ttype in HOSTED_TOOL_TYPES and ttype not in out and hosted_policy(ttype) == "drop":
            out.append(ttype)
    return out


def tool_map(tools: list[dict] | None, hosted_policy: HostedPolicy | None = None) -> ToolMap:
    """The :class:`requests.tools.ToolMap` of a request's ``tools`` for a Chat backend.

    A hosted tool type (:data:`HOSTED_TOOL_TYPES`) is left out when
    ``hosted_policy(type)`` says ``"drop"``; otherwise (and by default) it raises
    :class:`InvalidInput` naming it, as does any tool a Chat model cannot take.
    """
    policy = hosted_policy or _reject_all

    def skip(ttype: Any, i: int) -> bool:
        if ttype not in HOSTED_TOOL_TYPES:
            return False
        if policy(ttype) == "drop":
            return True
        raise InvalidInput(f"Hosted tool {ttype!r} cannot run on this model's backend (it speaks Chat "
                           "Completions); the gateway's 'hosted_tools' setting can leave such tools out.",
                           f"tools[{i}].type", "unsupported_tool")
    return ToolMap(tools, skip)


def tools_responses_to_chat(tools: list[dict] | None, hosted_policy: HostedPolicy | None = None) -> list[dict]:
    """Translate Responses tools to Chat Completions tools (see :func:`tool_map`).

    ``{"type": "function", "name", "description", "parameters", "strict"}`` ->
    ``{"type": "function", "function": {...}}``; namespaces, custom tools and the
    client-run built-ins as ``requests.tools`` offers them.
    """
    return tool_map(tools, hosted_policy).chat_tools()


#: ``tool_choice`` types that name a built-in, and the Chat function offered for it.
_BUILTIN_CHOICES = {"local_shell": "local_shell", "shell": "shell", "apply_patch": "apply_patch",
                    "computer": "computer", "computer_use_preview": "computer"}


def _chat_name_of(choice: dict, where: str) -> str:
    """The Chat function name a named tool (function, custom or built-in) was offered under."""
    kind = choice.get("type")
    if kind in ("function", "custom"):
        if not isinstance(choice.get("name"), str):
            raise InvalidInput(f"A {kind} tool_choice needs a string 'name'.", f"{where}.name")
        return chat_name(choice["name"], choice.get("namespace"))
    if kind in _BUILTIN_CHOICES:
        return _BUILTIN_CHOICES[kind]
    if kind in HOSTED_TOOL_TYPES:
        raise InvalidInput(f"tool_choice forces the hosted tool {kind!r}, which this model's backend (Chat "
                           "Completions) cannot run.", where)
    raise InvalidInput(f"tool_choice type {kind!r} is not supported by this model's backend.", where)


def tool_choice_to_chat(tool_choice: Any, chat_tools: list[dict]) -> tuple[Any, list[dict]]:
    """Translate Responses ``tool_choice`` to ``(chat tool_choice, chat tools)``.

    ``"none"``/``"auto"``/``"required"`` pass as they are; a named function,
    custom tool or built-in (``{"type": "function", "name"}``, ``{"type":
    "custom", "name"}``, ``{"type": "shell"}`` ...) forces the Chat function it
    was offered as; ``{"type": "allowed_tools", "mode", "tools"}`` narrows the tool
    list to those named and uses ``mode``. None means unset. A hosted tool or
    ``mcp`` cannot be forced on a Chat backend: :class:`InvalidInput`.
    """
    if tool_choice is None or isinstance(tool_choice, str):
        if tool_choice not in (None, "none", "auto", "required"):
            raise InvalidInput(f"Invalid tool_choice {tool_choice!r}.", "tool_choice")
        return tool_choice, chat_tools
    if tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("tools")
        if not isinstance(allowed, list) or not all(isinstance(t, dict) for t in allowed):
            raise InvalidInput("allowed_tools 'tools' must be a list of tool objects.", "tool_choice.tools")
        if tool_choice.get("mode", "auto") not in ("auto", "required"):
            raise InvalidInput("allowed_tools 'mode' must be 'auto' or 'required'.", "tool_choice.mode")
        names = {_chat_name_of(t, f"tool_choice.tools[{i}]") for i, t in enumerate(allowed)}
        return tool_choice.get("mode", "auto"), [t for t in chat_tools if t["function"]["name"] in names]
    return {"type": "function", "function": {"name": _chat_name_of(tool_choice, "tool_choice")}}, chat_tools


def text_format_to_response_format(text: dict | None) -> dict | None:
    """Translate Responses ``text.format`` to Chat Completions ``response_format``.

    ``json_schema`` (flat: name, schema, strict, description) -> nested
    ``{"type": "json_schema", "json_schema": {...}}``; ``json_object`` passes;
    ``text`` or nothing -> None.
    """
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidInput(f"Unsupported text.format type {fmt.get('type')!r}.", "text.format.type")


_SAMPLING_KEYS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
#: ``include`` values a Chat Completions backend can serve.
CHAT_INCLUDES = frozenset({"reasoning.encrypted_content", "message.output_text.logprobs"})


def chat_request_params(body: dict, messages: list[dict], model: str, *, stream: bool,
                        hosted_policy: HostedPolicy | None = None) -> dict:
    """Build the Chat Completions request for a Responses create ``body``.

    Maps ``max_output_tokens`` -> ``max_tokens``, sampling options, tools (hosted
    ones by ``hosted_policy``, see :func:`tools_responses_to_chat`), ``tool_choice``,
    ``parallel_tool_calls`` (only with tools), ``text.format`` ->
    ``response_format``, ``top_logprobs`` (or ``include`` of
    ``message.output_text.logprobs``) -> ``logprobs``/``top_logprobs`` and
    ``reasoning.effort`` -> ``reasoning_effort``; ``include`` values a Chat backend
    cannot serve are refused.
    Streaming asks for a final usage chunk. Raises :class:`InvalidInput`.
    """
    params: dict[str, Any] = {"model": model, "messages": messages}
    tools = tools_responses_to_chat(body.get("tools"), hosted_policy)
    tool_choice, tools = tool_choice_to_chat(body.get("tool_choice"), tools)
    if tools and tool_choice != "none":
        params["tools"] = tools
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
        if body.get("parallel_tool_calls") is not None:
            params["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        params["max_tokens"] = body["max_output_tokens"]
    for key in _SAMPLING_KEYS:
        if body.get(key) is not None:
            params[key] = body[key]
    response_format = text_format_to_response_format(body.get("text"))
    if response_format is not None:
        params["response_format"] = response_format
    include = body.get("include") or ()
    for i, value in enumerate(include):
        if value not in CHAT_INCLUDES:
            raise InvalidInput(f"include {value!r} cannot apply on this model's backend (Chat Completions); it "
                               f"can take {', '.join(sorted(CHAT_INCLUDES))}.", f"include[{i}]")
    if body.get("top_logprobs") or "message.output_text.logprobs" in include:
        params["logprobs"] = True
        if body.get("top_logprobs"):
            params["top_logprobs"] = body["top_logprobs"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        params["reasoning_effort"] = effort
    if stream:
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
    return params


# ── what a backend refused for this model ─────────────────────────────────────

#: How backends say a model takes no tools (Ollama, llama.cpp, vLLM wordings), lower case.
_TOOLS_REJECTED = ("does not support tools", "tools are not supported", "tool use is not supported",
                   "does not support function")
#: ... and no images.
_IMAGES_REJECTED = ("does not support image", "image input is not supported", "images are not supported",
                    "does not support vision", "multimodal")


def _strip_images(messages: list[dict]) -> list[dict]:
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts = [p for p in content if p.get("type") != "image_url"]
            content = parts[0]["text"] if len(parts) == 1 and parts[0].get("type") == "text" else parts
            msg = {**msg, "content": content}
        out.append(msg)
    return out


def _has_images(messages: list[dict]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def without_refused_input(params: dict, status: int, message: str) -> tuple[dict, str] | None:
    """The Chat request ``params`` less what the backend's error (``status``, ``message``) says
    the model cannot take (tools: 400; images: 400 or 500, as llama.cpp answers), and what was
    left out (``"tools"`` or ``"images"``); None when the error is about something else."""
    lowered = message.lower()
    if status == 400 and params.get("tools") and any(s in lowered for s in _TOOLS_REJECTED):
        return {k: v for k, v in params.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")}, "tools"
    if status in (400, 500) and _has_images(params["messages"]) and any(s in lowered for s in _IMAGES_REJECTED):
        return {**params, "messages": _strip_images(params["messages"])}, "images"
    return None
