"""Every tool type of ``openai.types.responses.Tool`` on a Chat Completions backend: what the model is
offered, the item and events a call comes back as, and how those items go back into Chat history."""

from __future__ import annotations

import typing

import orjson
import pytest
from openai.types.responses import Tool

from conformance import (Backend, assert_openai_error, chat_completion, chat_usage, check_event, check_response,
                         check_stream, chunk, create_stream, tool_call)
from requests.params import HOSTED_TOOL_TYPES
from requests.tools import BUILTIN_TOOL_TYPES, chat_name

MODEL = "qwen3-coder:30b"

EXEC = {"type": "function", "name": "exec_command", "description": "Run a command.",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
        "strict": False}
SPAWN = {"type": "function", "name": "spawn_agent", "description": "Start a sub-agent.",
         "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}, "strict": False}
GRAMMAR = 'start: "*** Begin Patch" LF body "*** End Patch"'
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
              "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}}
NOTE_TOOL = {"type": "custom", "name": "note", "description": "Write a note."}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [SPAWN, NOTE_TOOL]}
BUILTINS = [{"type": "local_shell"}, {"type": "shell"}, {"type": "apply_patch"},
            {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"}]


SPEC_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _spec_projection(obj: dict) -> dict:
    """The part of a Response the Open Responses schema types: it knows function tools, the
    message, function call and reasoning items, and the string and function tool_choice forms."""
    choice = obj["tool_choice"]
    if isinstance(choice, dict) and choice.get("type") != "function":
        choice = "auto"
    return {**obj, "tools": [t for t in obj["tools"] if t["type"] == "function"], "tool_choice": choice,
            "output": [i for i in obj["output"] if i["type"] in SPEC_ITEM_TYPES]}


async def create(client, body: dict) -> dict:
    """``POST /v1/responses``: the Response checked against the SDK types, and against the Open
    Responses schema (which knows function tools only) with its other tools left out."""
    reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text[:2000]
    resp = reply.json()
    check_response(resp, spec=False)
    check_response(_spec_projection(resp))
    return resp


def check_tool_stream(events: list[dict]):
    """:func:`check_stream` against the SDK; every snapshot and spec-typed event against the schema."""
    summary = check_stream(events, spec=False)
    for event in events:
        if "response" in event:
            check_response(_spec_projection(event["response"]))
        elif event.get("item", {}).get("type", "message") in SPEC_ITEM_TYPES and \
                not event["type"].startswith("response.custom_tool_call_input"):
            check_event(event)
    return summary


def _sdk_tool_types() -> set[str]:
    members = typing.get_args(typing.get_args(Tool)[0])
    return {t for m in members for t in typing.get_args(m.model_fields["type"].annotation)}


def test_every_sdk_tool_type_is_translated_or_governed_by_the_hosted_policy():
    translated = {"function", "custom", "namespace"} | BUILTIN_TOOL_TYPES
    assert _sdk_tool_types() == translated | HOSTED_TOOL_TYPES
    assert not translated & HOSTED_TOOL_TYPES


# ── what the model is offered ─────────────────────────────────────────────────

async def test_every_client_tool_is_offered_as_a_function(client):
    tools = [EXEC, AGENTS, PATCH_TOOL, *[t for t in BUILTINS if t["type"] != "apply_patch"]]
    with Backend(chat_completion("ok")) as backend:
        resp = await create(client, {"model": MODEL, "input": "go", "tools": tools})
    offered = {t["function"]["name"]: t["function"] for t in backend.chat_params[0]["tools"]}
    assert list(offered) == ["exec_command", "multi_agent_v1__spawn_agent", "multi_agent_v1__note", "apply_patch",
                             "local_shell", "shell", "computer"]
    assert offered["exec_command"]["parameters"] == EXEC["parameters"]
    assert offered["multi_agent_v1__spawn_agent"]["parameters"] == SPAWN["parameters"]
    custom = offered["multi_agent_v1__note"]["parameters"]
    assert custom["required"] == ["input"] and custom["properties"]["input"]["type"] == "string"
    assert offered["local_shell"]["parameters"]["required"] == ["command"]
    assert offered["shell"]["parameters"]["required"] == ["commands"]
    assert offered["computer"]["parameters"]["required"] == ["action"]
    assert [t["type"] for t in resp["tools"]] == [t["type"] for t in tools]


async def test_a_custom_tool_and_the_apply_patch_builtin_may_not_share_a_name(client):
    with Backend(chat_completion("never")) as backend:
        reply = await client.post("/v1/responses", json={"model": MODEL, "input": "go",
                                                         "tools": [PATCH_TOOL, {"type": "apply_patch"}]})
    error = assert_openai_error(reply, 400)
    assert error["param"] == "tools[1]" and "apply_patch" in error["message"]
    assert backend.chat.call_count == 0


async def test_a_grammar_is_given_to_the_model_as_text(client):
    with Backend(chat_completion("ok")) as backend:
        await create(client, {"model": MODEL, "input": "go", "tools": [PATCH_TOOL]})
    description = backend.chat_params[0]["tools"][0]["function"]["description"]
    assert description.startswith("Edit files with a patch.") and GRAMMAR in description and "lark" in description


def test_chat_names_follow_chat_rules_and_are_stable():
    assert chat_name("spawn_agent", "multi_agent_v1") == "multi_agent_v1__spawn_agent"
    odd = chat_name("read.file", "fs tools")
    assert odd == chat_name("read.file", "fs tools") and odd.startswith("fs_tools__read_file_")
    long = chat_name("x" * 80)
    assert len(long) <= 64 and long != chat_name("x" * 81)


# ── calls coming back ─────────────────────────────────────────────────────────

CALLS = [
    ("multi_agent_v1__spawn_agent", '{"task": "lint"}',
     {"type": "function_call", "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": '{"task": "lint"}',
      "status": "completed"}),
    ("multi_agent_v1__note", '{"input": "remember this"}',
     {"type": "custom_tool_call", "name": "note", "namespace": "multi_agent_v1", "input": "remember this"}),
    ("apply_patch", '{"input": "*** Begin Patch\\n*** End Patch"}',
     {"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch\n*** End Patch"}),
    ("local_shell", '{"command": ["ls", "-la"], "working_directory": "/tmp"}',
     {"type": "local_shell_call", "status": "completed",
      "action": {"type": "exec", "command": ["ls", "-la"], "env": {}, "timeout_ms": None,
                 "working_directory": "/tmp", "user": None}}),
    ("shell", '{"commands": ["pwd", "ls"], "timeout_ms": 5000}',
     {"type": "shell_call", "status": "completed",
      "action": {"commands": ["pwd", "ls"], "timeout_ms": 5000, "max_output_length": None}}),
    ("computer", '{"action": {"type": "click", "x": 10, "y": 20, "button": "left"}}',
     {"type": "computer_call", "status": "completed", "pending_safety_checks": [],
      "action": {"type": "click", "x": 10, "y": 20, "button": "left"}}),
]
TOOLS_FOR_CALLS = [AGENTS, PATCH_TOOL, {"type": "local_shell"}, {"type": "shell"}, BUILTINS[3]]


def _strip(item: dict) -> dict:
    return {k: v for k, v in item.items() if k not in ("id", "call_id")}


@pytest.mark.parametrize("name,arguments,expected", CALLS, ids=[c[0] for c in CALLS])
async def test_a_call_comes_back_as_the_tools_own_item(client, name, arguments, expected):
    with Backend(chat_completion(None, tool_calls=[tool_call("call_1", name, arguments)],
                                 finish_reason="tool_calls")):
        resp = await create(client, {"model": MODEL, "input": "go", "tools": TOOLS_FOR_CALLS})
    item = resp["output"][0]
    assert _strip(item) == expected and item["call_id"] == "call_1"


async def test_the_apply_patch_builtin_call_is_an_apply_patch_call(client):
    arguments = '{"type": "update_file", "path": "a.py", "diff": "@@\\n-x\\n+y"}'
    with Backend(chat_completion(None, tool_calls=[tool_call("call_9", "apply_patch", arguments)])):
        resp = await create(client, {"model": MODEL, "input": "go", "tools": [{"type": "apply_patch"}]})
    assert _strip(resp["output"][0]) == {"type": "apply_patch_call", "status": "completed",
                                         "operation": {"type": "update_file", "path": "a.py", "diff": "@@\n-x\n+y"}}


def _call_chunks(name: str, arguments: str) -> list[dict]:
    cut = len(arguments) // 2
    return [chunk(role="assistant", content=""),
            chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": name, "arguments": arguments[:cut]}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": arguments[cut:]}}]),
            chunk(finish_reason="tool_calls"), chunk(empty_choices=True, usage=chat_usage())]


@pytest.mark.parametrize("name,arguments,expected", CALLS, ids=[c[0] for c in CALLS])
async def test_a_streamed_call_has_the_events_openai_sends(client, name, arguments, expected):
    with Backend(_call_chunks(name, arguments)):
        events = await create_stream(client, {"model": MODEL, "input": "go", "tools": TOOLS_FOR_CALLS})
    summary = check_tool_stream(events)
    assert [_strip(i) for i in summary.items] == [expected]
    body = [e["type"] for e in events[2:-1]]
    if expected["type"] == "function_call":
        assert body == ["response.output_item.added", "response.function_call_arguments.delta",
                        "response.function_call_arguments.delta", "response.function_call_arguments.done",
                        "response.output_item.done"]
        assert events[2]["item"]["namespace"] == "multi_agent_v1"
    elif expected["type"] == "custom_tool_call":
        assert body == ["response.output_item.added", "response.custom_tool_call_input.delta",
                        "response.custom_tool_call_input.done", "response.output_item.done"]
        assert events[4]["input"] == expected["input"]
    else:
        assert body == ["response.output_item.added", "response.output_item.done"]
        assert events[2]["item"]["status"] == "in_progress"


# ── history ───────────────────────────────────────────────────────────────────

HISTORY = [
    {"type": "message", "role": "user", "content": "go"},
    {"type": "function_call", "call_id": "c1", "name": "spawn_agent", "namespace": "multi_agent_v1",
     "arguments": '{"task": "lint"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "agent started"},
    {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
    {"type": "custom_tool_call_output", "call_id": "c2", "output": "patched"},
    {"type": "local_shell_call", "id": "lsh_1", "call_id": "c3", "status": "completed",
     "action": {"type": "exec", "command": ["ls"], "env": {}}},
    {"type": "local_shell_call_output", "id": "c3", "output": "a.py"},
    {"type": "shell_call", "call_id": "c4", "status": "completed", "action": {"commands": ["pwd"]}},
    {"type": "shell_call_output", "call_id": "c4", "output": [
        {"stdout": "/work", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]},
    {"type": "apply_patch_call", "call_id": "c5", "status": "completed",
     "operation": {"type": "delete_file", "path": "old.py"}},
    {"type": "apply_patch_call_output", "call_id": "c5", "status": "completed", "output": "deleted"},
    {"type": "computer_call", "call_id": "c6", "status": "completed", "pending_safety_checks": [],
     "action": {"type": "screenshot"}},
    {"type": "computer_call_output", "call_id": "c6",
     "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,iVBORw0KGgo="}},
]


async def test_call_items_and_their_outputs_become_chat_history(client):
    with Backend(chat_completion("done")) as backend:
        await create(client, {"model": MODEL, "input": HISTORY, "tools": TOOLS_FOR_CALLS})
    messages = backend.chat_params[0]["messages"]
    calls = [(m["tool_calls"][0]["id"], m["tool_calls"][0]["function"]["name"],
              orjson.loads(m["tool_calls"][0]["function"]["arguments"])) for m in messages if m.get("tool_calls")]
    assert calls == [("c1", "multi_agent_v1__spawn_agent", {"task": "lint"}),
                     ("c2", "apply_patch", {"input": "*** Begin Patch"}),
                     ("c3", "local_shell", {"command": ["ls"], "env": {}}),
                     ("c4", "shell", {"commands": ["pwd"]}),
                     ("c5", "apply_patch", {"type": "delete_file", "path": "old.py"}),
                     ("c6", "computer", {"action": {"type": "screenshot"}})]
    outputs = [(m["tool_call_id"], m["content"]) for m in messages if m["role"] == "tool"]
    assert outputs == [("c1", "agent started"), ("c2", "patched"), ("c3", "a.py"), ("c4", "/work\nexit code 0"),
                       ("c5", "completed: deleted"), ("c6", "Screenshot taken; it follows.")]
    assert messages[-1] == {"role": "user", "content": [{"type": "image_url",
                                                         "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}


async def test_a_call_item_without_its_required_fields_is_400(client):
    with Backend() as backend:
        reply = await client.post("/v1/responses", json={"model": MODEL, "input": [
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch"}]})
    assert assert_openai_error(reply, 400)["param"] == "input[0].input"
    assert backend.chat.call_count == 0


# ── tool_choice ───────────────────────────────────────────────────────────────

@pytest.mark.parametrize("choice,expected", [
    ({"type": "custom", "name": "apply_patch"}, {"type": "function", "function": {"name": "apply_patch"}}),
    ({"type": "shell"}, {"type": "function", "function": {"name": "shell"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "apply_patch"},
                                                             {"type": "local_shell"}]}, "required"),
])
async def test_tool_choice_names_tools_as_they_were_offered(client, choice, expected):
    with Backend(chat_completion("ok")) as backend:
        await create(client, {"model": MODEL, "input": "go", "tools": TOOLS_FOR_CALLS, "tool_choice": choice})
    params = backend.chat_params[0]
    assert params["tool_choice"] == expected
    if choice["type"] == "allowed_tools":
        assert [t["function"]["name"] for t in params["tools"]] == ["apply_patch", "local_shell"]


async def test_tool_choice_forcing_mcp_is_400(client):
    with Backend() as backend:
        reply = await client.post("/v1/responses", json={"model": MODEL, "input": "go", "tools": [EXEC],
                                                         "tool_choice": {"type": "mcp", "server_label": "x"}})
    assert assert_openai_error(reply, 400)["param"] == "tool_choice"
    assert backend.chat.call_count == 0


async def test_stored_tool_calls_replay_and_chain(client):
    from conformance import parse_sse
    first_calls = [tool_call("call_a", "multi_agent_v1__note", '{"input": "n1"}'),
                   tool_call("call_b", "shell", '{"commands": ["ls"]}')]
    with Backend(chat_completion(None, tool_calls=first_calls, finish_reason="tool_calls"),
                 chat_completion("All done.")) as backend:
        first = await create(client, {"model": MODEL, "input": "go", "tools": TOOLS_FOR_CALLS})
        replay = parse_sse((await client.get(f"/v1/responses/{first['id']}", params={"stream": "true"})).content)
        assert check_tool_stream(replay).items == first["output"]
        outputs = [{"type": "custom_tool_call_output", "call_id": "call_a", "output": "noted"},
                   {"type": "shell_call_output", "call_id": "call_b", "output": [
                       {"stdout": "a.py", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]}]
        second = await create(client, {"model": MODEL, "input": outputs, "previous_response_id": first["id"],
                                       "tools": TOOLS_FOR_CALLS})
    assert second["output_text"] == "All done."
    history = backend.chat_params[1]["messages"]
    assert [c["function"]["name"] for c in history[1]["tool_calls"]] == ["multi_agent_v1__note", "shell"]
    assert [(m["tool_call_id"], m["content"]) for m in history[2:]] == [("call_a", "noted"),
                                                                       ("call_b", "a.py\nexit code 0")]
