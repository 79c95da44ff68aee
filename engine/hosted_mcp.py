"""OpenAI's hosted ``mcp`` tool run by the gateway for a Chat backend: the loop of one response.

1. Each server's tools: the chain's last ``mcp_list_tools`` item for that server label when there
   is one (as OpenAI reuses it), else listed now (an ``mcp_list_tools`` output item).
2. The ``mcp_approval_response`` items of this turn's input: an approved request runs its call
   (an ``mcp_call`` whose id comes from the request's, so an approval replayed later finds the
   call it made and runs nothing); a refused one runs nothing and the model is told so.
3. The model is asked with its function tools and the servers' allowed tools (as functions); each
   MCP call it makes runs at once (``mcp_call``) or, where ``require_approval`` says so, ends the
   response with an ``mcp_approval_request``; results go back to the model, until it answers, calls
   a function of the client's, or ``max_tool_calls`` MCP calls have run (then it is asked once more
   without them). Usage sums every model call.

The whole response is made here; :class:`engine.runner.TurnRun` records it and streams its items.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from engine.mcp import McpSessions, check_server
from engine.turn import Turn
from engine.upstream import Completion, open_upstream
from errors import APIError
from requests.common import plain
from requests.mcp import (approval_request_item, call_id_for_approval, call_item, function_name, list_tools_item,
                          mcp_servers, needs_approval)
from requests.mcp import allowed as tool_allowed
from requests.responses import chat_message_to_output_items, usage_chat_to_responses
from requests.stream import INCOMPLETE_REASONS

if TYPE_CHECKING:
    from engine.runner import TurnRun

__all__ = ["uses_hosted_mcp", "check_servers", "run_hosted_mcp"]

_REFUSED = "The user did not approve this call; it was not made."


def uses_hosted_mcp(turn: Turn) -> bool:
    return bool(mcp_servers(turn.body.get("tools")))


async def check_servers(turn: Turn, allowed: list[str]) -> None:
    """Refuse the turn (400) when one of its ``mcp`` servers is not allowed by the operator."""
    for i, tool in enumerate(turn.body.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            await check_server(tool, allowed, f"tools[{i}]")


def _add_usage(total: dict, usage: dict | None) -> None:
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        total[key] += (usage or {}).get(key) or 0
    for group, key in (("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens")):
        total[group][key] += ((usage or {}).get(group) or {}).get(key) or 0


def _offered(servers: list[dict], listed: dict[str, list[dict]]) -> dict[str, tuple[dict, dict]]:
    """Function name -> (server, tool) of every allowed tool."""
    return {function_name(server["server_label"], tool["name"]): (server, tool)
            for server in servers for tool in listed.get(server["server_label"], ()) if tool_allowed(server, tool)}


def _turn_with(turn: Turn, offered: dict[str, tuple[dict, dict]], extra: list[dict]) -> Turn:
    """``turn`` asked again: its function tools and ``offered`` as functions, ``extra`` items after its input."""
    functions = [{"type": "function", "name": name, "description": tool.get("description") or "",
                  "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
                 for name, (_, tool) in offered.items()]
    tools = [t for t in turn.body.get("tools") or () if not (isinstance(t, dict) and t.get("type") == "mcp")]
    body = {**turn.body, "tools": (tools + functions) or None, "stream": False}
    if not body["tools"]:
        body.pop("tool_choice", None)
    # not the conversation: only the turn itself ends on it
    return dataclasses.replace(turn, body=body, input_items=turn.input_items + extra, conversation_id=None)


async def _ask(run: TurnRun, turn: Turn) -> dict:
    upstream = await open_upstream(turn, run.gateway.calls, run.gateway.registry, run._slot)
    try:
        if not isinstance(upstream.result, Completion):
            raise TypeError(f"a streamed upstream answer ({type(upstream.result).__name__}) for an MCP turn")
        usage = upstream.result.data.get("usage") or {}
        run.gateway.token_stats.record(upstream.endpoint, upstream.model, usage.get("prompt_tokens"),
                                       usage.get("completion_tokens"))
        return upstream.result.data
    finally:
        await upstream.close()


async def run_hosted_mcp(run: TurnRun) -> dict:
    """The whole Response of ``run``'s turn (see the module docstring), over one MCP session per
    server. Raises APIError: 400 for an approval response to no request of the chain, 502/504 for a
    server that fails or hangs, and what the model calls raise."""
    settings = run.gateway.settings
    sessions = McpSessions(settings.mcp_timeout, settings.mcp_max_output_bytes)
    try:
        return await _loop(run, sessions)
    finally:
        await sessions.aclose()


async def _loop(run: TurnRun, sessions: McpSessions) -> dict:
    turn = run.turn
    servers = mcp_servers(turn.body.get("tools"))
    by_label = {server["server_label"]: server for server in servers}
    context = turn.context_items
    output: list[dict] = []
    listed: dict[str, list[dict]] = {}
    for server in servers:
        label = server["server_label"]
        prior = next((item for item in reversed(context) if item["type"] == "mcp_list_tools"
                      and item.get("server_label") == label and not item.get("error")), None)
        if prior is not None:
            listed[label] = prior["tools"]
        else:
            listed[label] = await sessions.list_tools(server)
            output.append(list_tools_item(label, listed[label]))

    extra: list[dict] = []  # what the model reads after the input: output items, refusals
    requests = {item["id"]: item for item in context if item["type"] == "mcp_approval_request"}
    made = {item["id"] for item in context if item["type"] == "mcp_call"}
    for answer in (item for item in turn.input_items if item["type"] == "mcp_approval_response"):
        request = requests.get(answer["approval_request_id"])
        if request is None:
            raise APIError(400, f"No mcp_approval_request with id '{answer['approval_request_id']}' in this "
                                "conversation.", param="input", code="approval_request_not_found")
        call_id = call_id_for_approval(request["id"])
        if call_id in made or await run.gateway.store.find_items([call_id], turn.owner):
            continue  # a replayed approval: its call ran already
        made.add(call_id)
        server = by_label.get(request["server_label"])
        if answer["approve"] and server is None:
            raise APIError(400, f"The approved call is for the MCP server '{request['server_label']}', which is not "
                                "among this request's tools.", param="tools", code="mcp_server_not_in_tools")
        if answer["approve"]:
            result = await sessions.call_tool(server, request["name"], request["arguments"])
            item = call_item(request["server_label"], request["name"], request["arguments"], *result,
                             approval_request_id=request["id"])
            output.append(item)
        else:
            extra += [{"type": "function_call", "id": call_id, "call_id": call_id, "status": "completed",
                       "name": function_name(request["server_label"], request["name"]),
                       "arguments": request["arguments"]},
                      {"type": "function_call_output", "id": call_id + "_out", "call_id": call_id,
                       "output": _REFUSED, "status": "completed"}]

    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}
    limit = turn.body.get("max_tool_calls")
    calls = 0
    while True:
        offered = _offered(servers, listed) if limit is None or calls < limit else {}
        asked = _turn_with(turn, offered, extra + output)
        completion = await _ask(run, asked)
        _add_usage(usage, usage_chat_to_responses(plain(completion.get("usage"))))
        choice = plain((completion.get("choices") or [{}])[0])
        items = chat_message_to_output_items(plain(choice.get("message") or {}), asked.tool_map, turn.wants_summary,
                                             run._seal(), plain(choice.get("logprobs")))
        ours = [item for item in items if item["type"] == "function_call" and item["name"] in offered]
        theirs = [item for item in items if item not in ours]
        reason = INCOMPLETE_REASONS.get(choice.get("finish_reason") or "")
        if not ours or reason:
            output += theirs
            if reason:
                return turn.response("incomplete", output, usage=usage, incomplete_details={"reason": reason})
            return turn.response("completed", output, usage=usage)
        output += [item for item in theirs if item["type"] in ("message", "reasoning")]
        waiting = False
        for call in ours:
            server, tool = offered[call["name"]]
            if needs_approval(server, tool["name"]):
                output.append(approval_request_item(server["server_label"], tool["name"], call["arguments"]))
                waiting = True
                continue
            result = await sessions.call_tool(server, tool["name"], call["arguments"])
            output.append(call_item(server["server_label"], tool["name"], call["arguments"], *result))
            calls += 1
        client_calls = [item for item in theirs if item["type"] not in ("message", "reasoning")]
        if waiting or client_calls:  # the client has something to do before the model goes on
            return turn.response("completed", output + client_calls, usage=usage)

