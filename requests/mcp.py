"""OpenAI's ``mcp`` tool on a Chat backend: its items, filters and names (pure: dicts in, dicts out).

The items follow ``openai.types.responses``: ``mcp_list_tools`` (a server's tools),
``mcp_call`` (one call: ``arguments`` as JSON text, ``output`` or ``error``),
``mcp_approval_request`` (a call waiting for the client's ``mcp_approval_response``).
A Chat model is offered each allowed tool as a function named :func:`function_name`;
earlier ``mcp_call`` items reach it as that function's call and output
(:func:`as_function_items`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from requests.common import InvalidInput, new_id

__all__ = ["MCP_ITEM_TYPES", "mcp_servers", "function_name", "allowed", "needs_approval", "redacted",
           "list_tools_item", "call_item", "approval_request_item", "call_id_for_approval", "as_function_items",
           "normalize_mcp_item"]

MCP_ITEM_TYPES = frozenset({"mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response"})
#: What an ``mcp`` tool sends its server and is never echoed or stored in clear.
SECRET_FIELDS = ("headers", "authorization")
_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def mcp_servers(tools: list[dict] | None) -> list[dict]:
    """The ``mcp`` tools of a create body's ``tools``."""
    return [tool for tool in tools or () if isinstance(tool, dict) and tool.get("type") == "mcp"]


def function_name(label: str, tool: str) -> str:
    """The Chat function a server's tool is offered as: ``mcp__<label>__<tool>`` (at most 64 characters
    of letters, digits, ``_`` and ``-``, as Chat function names must be)."""
    return _NAME.sub("_", f"mcp__{label}__{tool}")[:64]


def _names(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [name for name in value if isinstance(name, str)]
    if isinstance(value, dict) and isinstance(value.get("tool_names"), list):
        return [name for name in value["tool_names"] if isinstance(name, str)]
    return None


def allowed(server: dict, tool: dict) -> bool:
    """Whether ``allowed_tools`` (a list of names, or ``{"tool_names", "read_only"}``) lets ``tool``
    (an ``mcp_list_tools`` entry) be offered; unset: every tool."""
    rule = server.get("allowed_tools")
    if rule is None:
        return True
    names = _names(rule)
    if names is not None and tool["name"] not in names:
        return False
    if isinstance(rule, dict) and rule.get("read_only"):
        return bool((tool.get("annotations") or {}).get("readOnlyHint"))
    return True


def needs_approval(server: dict, tool_name: str) -> bool:
    """Whether a call of ``tool_name`` waits for the client (``require_approval``: ``"always"``, the
    API's default, ``"never"``, or ``{"always": {"tool_names"}, "never": {"tool_names"}}``)."""
    rule = server.get("require_approval", "always")
    if rule in (None, "always"):
        return True
    if rule == "never":
        return False
    if isinstance(rule, dict):  # only tools named under "never" run without approval
        return tool_name not in (_names(rule.get("never")) or ())
    return True


def redacted(tools: list[dict] | None) -> list[dict] | None:
    """``tools`` with each ``mcp`` tool's ``headers`` and ``authorization`` left out (as OpenAI's stored
    Response shows them: not at all)."""
    if not tools or not mcp_servers(tools):
        return tools
    return [{k: v for k, v in tool.items() if k not in SECRET_FIELDS} if tool.get("type") == "mcp" else tool
            for tool in tools]


def list_tools_item(label: str, tools: list[dict], error: str | None = None) -> dict:
    return {"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": label, "tools": tools, "error": error}


def call_id_for_approval(approval_request_id: str) -> str:
    """The id of the ``mcp_call`` an approval runs: one per approval request, so a replayed approval
    finds the call it already made."""
    return "mcp_" + hashlib.sha256(approval_request_id.encode()).hexdigest()[:48]


def call_item(label: str, name: str, arguments: str, output: str | None, error: dict | None,
              approval_request_id: str | None = None) -> dict:
    item_id = call_id_for_approval(approval_request_id) if approval_request_id else new_id("mcp")
    return {"id": item_id, "type": "mcp_call", "server_label": label, "name": name, "arguments": arguments,
            "output": output, "error": error, "status": "failed" if error else "completed",
            "approval_request_id": approval_request_id}


def approval_request_item(label: str, name: str, arguments: str) -> dict:
    return {"id": new_id("mcpr"), "type": "mcp_approval_request", "server_label": label, "name": name,
            "arguments": arguments}


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    if error.get("type") == "mcp_tool_execution_error":
        content = error.get("content")
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(error.get("message") or error)


def as_function_items(items: list[dict]) -> list[dict]:
    """``items`` as a Chat model reads them: each ``mcp_call`` as a call of its function and that call's
    output (its error, said so); list, approval request and approval response items left out."""
    out: list[dict] = []
    for item in items:
        kind = item.get("type")
        if kind not in MCP_ITEM_TYPES:
            out.append(item)
        elif kind == "mcp_call":
            result = item.get("output") if item.get("error") is None else f"Error: {_error_text(item['error'])}"
            out.append({"type": "function_call", "id": item["id"], "call_id": item["id"], "status": "completed",
                        "name": function_name(item["server_label"], item["name"]), "arguments": item["arguments"]})
            out.append({"type": "function_call_output", "id": item["id"] + "_out", "call_id": item["id"],
                        "output": result or "", "status": "completed"})
    return out


def normalize_mcp_item(raw: dict, param: str) -> dict:
    """An MCP item a client sends back as input, checked for what the gateway reads of it."""
    kind = raw["type"]
    required = {"mcp_list_tools": ("server_label",), "mcp_call": ("server_label", "name", "arguments"),
                "mcp_approval_request": ("id", "server_label", "name", "arguments"),
                "mcp_approval_response": ("approval_request_id",)}[kind]
    for key in required:
        if not isinstance(raw.get(key), str):
            raise InvalidInput(f"{kind} needs a string '{key}'.", f"{param}.{key}")
    if kind == "mcp_approval_response" and not isinstance(raw.get("approve"), bool):
        raise InvalidInput("mcp_approval_response needs a boolean 'approve'.", f"{param}.approve")
    if kind == "mcp_list_tools" and not isinstance(raw.get("tools"), list):
        raise InvalidInput("mcp_list_tools needs a list of 'tools'.", f"{param}.tools")
    prefix = {"mcp_list_tools": "mcpl", "mcp_call": "mcp", "mcp_approval_request": "mcpr",
              "mcp_approval_response": "mcpa"}[kind]
    return {**raw, "id": raw.get("id") or new_id(prefix)}
