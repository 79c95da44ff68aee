"""Every client-run tool type on the Chat Completions path, both ways (pure).

A Chat model knows only functions. :class:`ToolMap` offers each tool of a
request as one: ``function`` as it is; the tools of a ``namespace`` under a
combined name; ``custom`` (freeform text or a grammar) as a function of one
string argument ``input``; the client-executed built-ins ``local_shell``,
``shell``, ``apply_patch`` and ``computer``/``computer_use_preview`` with the
argument schemas below. A call that comes back is turned into the item OpenAI
sends for that tool (``function_call`` with ``namespace``, ``custom_tool_call``,
``local_shell_call``, ``shell_call``, ``apply_patch_call``, ``computer_call``);
:func:`call_to_chat` and :func:`output_to_chat` turn those items and their
``*_output`` items back into Chat history. A grammar is given to the model as
text in the tool's description: it is not enforced.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from requests.common import InvalidInput, new_id

__all__ = ["ToolSpec", "ToolMap", "chat_name", "call_to_chat", "output_to_chat", "CALL_ITEM_TYPES",
           "OUTPUT_ITEM_TYPES", "BUILTIN_TOOL_TYPES"]

_CHAT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_STRINGS = {"type": "array", "items": {"type": "string"}}
#: The built-ins a client executes: Chat name, description, argument schema.
_BUILTINS: dict[str, tuple[str, str, dict]] = {
    "local_shell": ("local_shell", "Run one command on the user's machine; its output comes back.", {
        "type": "object", "required": ["command"], "properties": {
            "command": {**_STRINGS, "description": "The program and its arguments, one string each."},
            "working_directory": {"type": "string"}, "timeout_ms": {"type": "integer"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}}}}),
    "shell": ("shell", "Run shell commands on the user's machine; their output comes back.", {
        "type": "object", "required": ["commands"], "properties": {
            "commands": {**_STRINGS, "description": "Shell command lines, run in order."},
            "timeout_ms": {"type": "integer"}, "max_output_length": {"type": "integer"}}}),
    "apply_patch": ("apply_patch", "Create, update or delete one file of the user's workspace. For "
                    "create_file and update_file, 'diff' is the change in the V4A diff format.", {
        "type": "object", "required": ["type", "path"], "properties": {
            "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
            "path": {"type": "string"}, "diff": {"type": "string"}}}),
    "computer": ("computer", "Act on the user's screen: click, type, scroll, take a screenshot and more.", {
        "type": "object", "required": ["action"], "properties": {"action": {
            "type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "enum": ["click", "double_click", "drag", "keypress", "move",
                                                    "screenshot", "scroll", "type", "wait"]},
                "x": {"type": "integer"}, "y": {"type": "integer"}, "button": {"type": "string"},
                "keys": _STRINGS, "text": {"type": "string"}, "scroll_x": {"type": "integer"},
                "scroll_y": {"type": "integer"},
                "path": {"type": "array", "items": {"type": "object", "properties": {
                    "x": {"type": "integer"}, "y": {"type": "integer"}}}}}}}}),
}
_BUILTINS["computer_use_preview"] = _BUILTINS["computer"]

#: Tool types a client executes that this module offers to Chat models.
BUILTIN_TOOL_TYPES = frozenset(_BUILTINS)
#: Call items and their output items, by type.
CALL_ITEM_TYPES = frozenset({"function_call", "custom_tool_call", "local_shell_call", "shell_call",
                             "apply_patch_call", "computer_call"})
OUTPUT_ITEM_TYPES = frozenset({"function_call_output", "custom_tool_call_output", "local_shell_call_output",
                               "shell_call_output", "apply_patch_call_output", "computer_call_output"})


def chat_name(name: str, namespace: str | None = None) -> str:
    """The Chat function name of tool ``name`` (in ``namespace``): ``namespace__name`` when that fits
    Chat's rule (``^[A-Za-z0-9_-]{1,64}$``), else a cleaned prefix plus 8 hex digits of its hash,
    the same every time, so a name in a history maps back without the request's tools."""
    full = f"{namespace}__{name}" if namespace else name
    if _CHAT_NAME.match(full):
        return full
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", full)[:55]
    return f"{clean}_{hashlib.sha256(full.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class ToolSpec:
    """One offered tool: its ``kind`` (the Responses tool type, ``computer`` for both computer
    types), its own ``name`` and ``namespace``, and the Chat function offered for it."""

    kind: str
    name: str
    namespace: str | None
    function: dict


def _function_spec(tool: dict, where: str, namespace: str | None) -> ToolSpec:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("A function tool needs a 'name'.", f"{where}.name")
    if not isinstance(tool.get("parameters"), (dict, type(None))):
        raise InvalidInput("A function tool's 'parameters' must be a JSON schema object.", f"{where}.parameters")
    fn = {"name": chat_name(name, namespace)}
    if tool.get("description") is not None:
        fn["description"] = tool["description"]
    fn["parameters"] = tool["parameters"] if tool.get("parameters") is not None else \
        {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        fn["strict"] = tool["strict"]
    return ToolSpec("function", name, namespace, fn)


def _custom_spec(tool: dict, where: str, namespace: str | None) -> ToolSpec:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("A custom tool needs a 'name'.", f"{where}.name")
    fmt = tool.get("format") or {"type": "text"}
    description = tool.get("description") or ""
    if fmt.get("type") == "grammar":
        if not isinstance(fmt.get("definition"), str) or fmt.get("syntax") not in ("lark", "regex"):
            raise InvalidInput("A grammar format needs 'syntax' ('lark' or 'regex') and a string 'definition'.",
                               f"{where}.format")
        description += (f"\n\nThe input must be text that this {fmt['syntax']} grammar accepts:\n"
                        f"{fmt['definition']}")
    elif fmt.get("type") != "text":
        raise InvalidInput(f"Unsupported custom tool format {fmt.get('type')!r}.", f"{where}.format.type")
    fn = {"name": chat_name(name, namespace), "description": description.strip() or f"The {name} tool.",
          "parameters": {"type": "object", "required": ["input"], "additionalProperties": False,
                         "properties": {"input": {"type": "string", "description": "The tool's whole input."}}}}
    return ToolSpec("custom", name, namespace, fn)


class ToolMap:
    """The client-run tools of one request as Chat functions, and the way back.

    ``tools`` is the request's ``tools``; ``skip`` says which tool types to leave
    out (hosted ones, decided by the caller). Raises :class:`InvalidInput` naming
    ``tools[i]`` for a malformed tool, a type no Chat model can take, or two tools
    with one Chat name.
    """

    def __init__(self, tools: list[dict] | None, skip: Callable[[str, int], bool] = lambda t, i: False):
        self.specs: dict[str, ToolSpec] = {}
        for i, tool in enumerate(tools or ()):
            ttype = tool.get("type") if isinstance(tool, dict) else None
            where = f"tools[{i}]"
            if skip(ttype, i):
                continue
            if ttype == "function":
                self._add(_function_spec(tool, where, None), where)
            elif ttype == "custom":
                self._add(_custom_spec(tool, where, None), where)
            elif ttype == "namespace":
                self._add_namespace(tool, where)
            elif ttype in _BUILTINS:
                fn_name, description, parameters = _BUILTINS[ttype]
                kind = "computer" if ttype.startswith("computer") else ttype
                self._add(ToolSpec(kind, fn_name, None, {"name": fn_name, "description": description,
                                                         "parameters": parameters}), where)
            else:
                raise InvalidInput(f"Tool type {ttype!r} is not supported by this model's backend.",
                                   f"{where}.type", "unsupported_tool")

    def _add_namespace(self, tool: dict, where: str) -> None:
        namespace = tool.get("name")
        if not isinstance(namespace, str) or not namespace:
            raise InvalidInput("A namespace tool needs a 'name'.", f"{where}.name")
        inner = tool.get("tools")
        if not isinstance(inner, list):
            raise InvalidInput("A namespace tool needs a list of 'tools'.", f"{where}.tools")
        for j, member in enumerate(inner):
            at = f"{where}.tools[{j}]"
            kind = member.get("type") if isinstance(member, dict) else None
            if kind == "function":
                self._add(_function_spec(member, at, namespace), at)
            elif kind == "custom":
                self._add(_custom_spec(member, at, namespace), at)
            else:
                raise InvalidInput(f"A namespace holds function and custom tools, not {kind!r}.", f"{at}.type")

    def _add(self, spec: ToolSpec, where: str) -> None:
        name = spec.function["name"]
        if name in self.specs:
            raise InvalidInput(f"Two tools would reach the model under one name, {name!r}.", where)
        self.specs[name] = spec

    def chat_tools(self) -> list[dict]:
        """The Chat Completions ``tools``."""
        return [{"type": "function", "function": spec.function} for spec in self.specs.values()]

    def spec(self, name: str) -> ToolSpec | None:
        """The tool a Chat call of function ``name`` is for (None: not one offered)."""
        return self.specs.get(name)

    def call_item(self, name: str, arguments: str, call_id: str, status: str = "completed",
                  item_id: str | None = None) -> dict:
        """The Responses item of a Chat call of function ``name`` with ``arguments`` (JSON text):
        what OpenAI sends for that tool, with ``item_id`` (a new one when None). Arguments that
        do not parse are kept as well as the item type allows (a custom tool's raw text as its
        ``input``)."""
        spec = self.specs.get(name)
        if spec is None or spec.kind == "function":
            item = {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id,
                    "name": spec.name if spec else name, "arguments": arguments, "status": status}
            if spec is not None and spec.namespace:
                item["namespace"] = spec.namespace
            return item
        item = _BUILDERS[spec.kind](spec, _arguments(arguments), arguments, call_id, status)
        if item_id is not None:
            item["id"] = item_id
        return item

    def new_item_id(self, name: str) -> str:
        """A new id for the item a call of function ``name`` becomes (its type's prefix)."""
        spec = self.specs.get(name)
        return new_id(_ID_PREFIXES.get(spec.kind if spec else "function", "fc"))

    def deferred(self, name: str) -> bool:
        """Whether a call of function ``name`` becomes an item other than ``function_call`` (its
        item is made whole when the call has ended: it has no argument deltas of its own)."""
        spec = self.specs.get(name)
        return spec is not None and spec.kind != "function"


def _arguments(text: str) -> dict:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _custom_item(spec: ToolSpec, args: dict, raw: str, call_id: str, status: str) -> dict:
    text = args.get("input") if isinstance(args.get("input"), str) else raw
    item = {"type": "custom_tool_call", "id": new_id("ctc"), "call_id": call_id, "name": spec.name, "input": text}
    if spec.namespace:
        item["namespace"] = spec.namespace
    return item


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else ([value] if isinstance(value, str) else [])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _local_shell_item(spec: ToolSpec, args: dict, raw: str, call_id: str, status: str) -> dict:
    env = args.get("env") if isinstance(args.get("env"), dict) else {}
    action = {"type": "exec", "command": _strings(args.get("command")),
              "env": {str(k): str(v) for k, v in env.items()}, "timeout_ms": _int(args.get("timeout_ms")),
              "working_directory": args.get("working_directory") if isinstance(args.get("working_directory"),
                                                                               str) else None, "user": None}
    return {"type": "local_shell_call", "id": new_id("lsh"), "call_id": call_id, "status": status,
            "action": action}


def _shell_item(spec: ToolSpec, args: dict, raw: str, call_id: str, status: str) -> dict:
    action = {"commands": _strings(args.get("commands")), "timeout_ms": _int(args.get("timeout_ms")),
              "max_output_length": _int(args.get("max_output_length"))}
    return {"type": "shell_call", "id": new_id("sh"), "call_id": call_id, "status": status, "action": action}


def _apply_patch_item(spec: ToolSpec, args: dict, raw: str, call_id: str, status: str) -> dict:
    kind = args.get("type") if args.get("type") in ("create_file", "update_file", "delete_file") else "update_file"
    operation = {"type": kind, "path": str(args.get("path") or "")}
    if kind != "delete_file":
        operation["diff"] = str(args.get("diff") or "")
    return {"type": "apply_patch_call", "id": new_id("apc"), "call_id": call_id,
            "status": "completed" if status == "completed" else "in_progress", "operation": operation}


def _computer_item(spec: ToolSpec, args: dict, raw: str, call_id: str, status: str) -> dict:
    action = args.get("action") if isinstance(args.get("action"), dict) else {"type": "screenshot"}
    return {"type": "computer_call", "id": new_id("cu"), "call_id": call_id, "status": status,
            "action": action, "pending_safety_checks": []}


_ID_PREFIXES = {"function": "fc", "custom": "ctc", "local_shell": "lsh", "shell": "sh", "apply_patch": "apc",
                "computer": "cu"}

_BUILDERS = {"custom": _custom_item, "local_shell": _local_shell_item, "shell": _shell_item,
             "apply_patch": _apply_patch_item, "computer": _computer_item}


# ── history: call items and their outputs -> Chat ──────────────────────────────

def _drop_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def call_to_chat(item: dict) -> dict:
    """The Chat ``tool_calls`` entry of a call item (any of :data:`CALL_ITEM_TYPES`)."""
    kind = item["type"]
    if kind == "function_call":
        name, arguments = chat_name(item["name"], item.get("namespace")), item["arguments"]
    elif kind == "custom_tool_call":
        name = chat_name(item["name"], item.get("namespace"))
        arguments = orjson.dumps({"input": item.get("input", "")}).decode()
    elif kind == "local_shell_call":
        action = item.get("action") or {}
        name = "local_shell"
        arguments = orjson.dumps(_drop_none({k: action.get(k) for k in
                                             ("command", "working_directory", "timeout_ms", "env")})).decode()
    elif kind == "shell_call":
        action = item.get("action") or {}
        name = "shell"
        arguments = orjson.dumps(_drop_none({k: action.get(k) for k in
                                             ("commands", "timeout_ms", "max_output_length")})).decode()
    elif kind == "apply_patch_call":
        name, arguments = "apply_patch", orjson.dumps(item.get("operation") or {}).decode()
    else:
        name, arguments = "computer", orjson.dumps({"action": item.get("action") or {}}).decode()
    return {"id": item["call_id"], "type": "function", "function": {"name": name, "arguments": arguments}}


def _text_of(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p.get("text", "") for p in output if isinstance(p, dict))
    return "" if output is None else orjson.dumps(output).decode()


def _shell_output_text(output: Any) -> str:
    parts = []
    for entry in output if isinstance(output, list) else ():
        if not isinstance(entry, dict):
            continue
        outcome = entry.get("outcome") or {}
        ending = (f"exit code {outcome.get('exit_code')}" if outcome.get("type") == "exit"
                  else "timed out" if outcome.get("type") == "timeout" else "")
        parts.append("\n".join(p for p in (entry.get("stdout") or "", entry.get("stderr") or "", ending) if p))
    return "\n\n".join(parts)


def output_to_chat(item: dict) -> list[dict]:
    """The Chat messages of an output item (any of :data:`OUTPUT_ITEM_TYPES`): one ``tool``
    message, and for a computer screenshot a ``user`` message with the image after it."""
    kind = item["type"]
    call_id = item["id"] if kind == "local_shell_call_output" else item["call_id"]
    if kind == "shell_call_output":
        text = _shell_output_text(item.get("output"))
    elif kind == "apply_patch_call_output":
        text = f"{item.get('status', 'completed')}" + (f": {item['output']}" if item.get("output") else "")
    elif kind == "computer_call_output":
        shot = item.get("output") or {}
        message = {"role": "tool", "tool_call_id": call_id, "content": "Screenshot taken; it follows."}
        if isinstance(shot.get("image_url"), str):
            return [message, {"role": "user", "content": [{"type": "image_url",
                                                           "image_url": {"url": shot["image_url"]}}]}]
        return [{**message, "content": "Screenshot taken (by file id, which this backend cannot read)."}]
    else:
        text = _text_of(item.get("output"))
    return [{"role": "tool", "tool_call_id": call_id, "content": text}]
