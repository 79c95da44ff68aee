"""The gateway's MCP client (the ``mcp`` SDK): a remote server's tools, listed and called, only where allowed.

A server is reached only when its URL starts with one of ``mcp_allowed_servers`` (default:
none); a name that resolves to a loopback, private, link-local or reserved address is refused
unless the prefix that allows it names that address itself. Streamable HTTP, or SSE for a URL
that ends in ``/sse``; one session per server and turn (:class:`McpSessions`), each list and
call within ``mcp_timeout`` seconds. The
``headers`` (or ``authorization``, sent as a bearer token) of the ``mcp`` tool go to that server
only. A call's text output is cut at ``mcp_max_output_bytes``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from engine.files import inward_address
from errors import APIError
from requests.common import InvalidInput

__all__ = ["check_server", "McpSessions"]

log = logging.getLogger("nomyo_router.mcp")


async def check_server(server: dict, allowed: list[str], where: str) -> None:
    """Refuse (:class:`InvalidInput`, ``mcp_server_not_allowed``) a server the operator has not allowed."""
    url = server.get("server_url")
    if not isinstance(url, str) or not isinstance(server.get("server_label"), str):
        raise InvalidInput("An mcp tool needs a string 'server_label' and 'server_url' (connectors are not "
                           "available here).", where)
    prefix = next((p for p in allowed if url.startswith(p)), None)
    parts = urlsplit(url)
    if prefix is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"The gateway connects only to MCP servers in mcp_allowed_servers; '{url}' is not "
                           "one of them.", f"{where}.server_url", "mcp_server_not_allowed")
    listed = urlsplit(prefix).hostname
    try:
        ipaddress.ip_address(parts.hostname)
        return  # an address the operator's prefix names
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise APIError(502, f"The MCP server host '{parts.hostname}' could not be resolved: {exc}.",
                       code="mcp_server_unavailable", type="server_error") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if inward_address(address) and listed != str(address):
            raise InvalidInput(f"The MCP server '{parts.hostname}' resolves to {address}, an inward address that "
                               "mcp_allowed_servers does not name.", f"{where}.server_url", "mcp_server_not_allowed")


def _headers(server: dict) -> dict[str, str]:
    headers = {k: v for k, v in (server.get("headers") or {}).items() if isinstance(k, str) and isinstance(v, str)}
    if isinstance(server.get("authorization"), str):
        headers["Authorization"] = f"Bearer {server['authorization']}"
    return headers


@asynccontextmanager
async def _session(server: dict, timeout: float) -> AsyncIterator[ClientSession]:
    url, headers = server["server_url"], _headers(server)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout, trust_env=False, follow_redirects=False) as http:
        transport = sse_client(url, headers=headers, timeout=timeout) if url.rstrip("/").endswith("/sse") \
            else streamable_http_client(url, http_client=http)
        async with transport as streams:
            async with ClientSession(streams[0], streams[1], read_timeout_seconds=timeout) as session:
                await session.initialize()
                yield session


def _unavailable(server: dict, exc: BaseException, timeout: float) -> APIError:
    if isinstance(exc, TimeoutError):
        return APIError(504, f"The MCP server '{server['server_label']}' did not answer within mcp_timeout "
                             f"({timeout:g} s).", code="mcp_server_timeout", type="server_error")
    return APIError(502, f"The MCP server '{server['server_label']}' could not be reached: "
                         f"{type(exc).__name__}: {exc}.", code="mcp_server_unavailable", type="server_error")


def _text_of(content: list[Any]) -> str:
    return "".join(getattr(part, "text", "") or "" for part in content)


class McpSessions:
    """The MCP sessions of one turn: one per server, opened at its first use, all closed by
    :meth:`aclose` (in the task that opened them, as the SDK's transports require). Every list and
    call has ``timeout`` seconds, connecting included; call outputs are cut at ``max_bytes``."""

    def __init__(self, timeout: float, max_bytes: int):
        self.timeout, self.max_bytes = timeout, max_bytes
        self._stack = AsyncExitStack()
        self._open: dict[str, ClientSession] = {}

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        except Exception:  # a server gone: nothing left to close cleanly
            log.debug("closing MCP sessions failed", exc_info=True)

    async def _session(self, server: dict) -> ClientSession:
        label = server["server_label"]
        if label not in self._open:
            self._open[label] = await self._stack.enter_async_context(_session(server, self.timeout))
        return self._open[label]

    async def list_tools(self, server: dict) -> list[dict]:
        """The server's tools as ``mcp_list_tools`` entries (``name``, ``description``,
        ``input_schema``, ``annotations``). Raises APIError 502 ``mcp_server_unavailable`` or 504
        ``mcp_server_timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                listed = await (await self._session(server)).list_tools()
        except Exception as exc:
            raise _unavailable(server, exc, self.timeout) from None
        out = []
        for tool in listed.tools:
            annotations = tool.annotations.model_dump(exclude_none=True, by_alias=True) if tool.annotations else None
            out.append({"name": tool.name, "description": tool.description, "input_schema": tool.input_schema,
                        "annotations": annotations})
        return out

    async def call_tool(self, server: dict, name: str, arguments: str) -> tuple[str | None, dict | None]:
        """Run ``name`` with ``arguments`` (JSON text): ``(output, None)``, or ``(None, error)`` with an
        ``McpToolCallError`` (the tool's own failure, or arguments that are not a JSON object).
        Raises APIError 502/504 when the server cannot be reached in time."""
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return None, {"type": "mcp_protocol_error", "code": -32602, "message": f"arguments are not JSON: {exc}"}
        if not isinstance(parsed, dict):
            return None, {"type": "mcp_protocol_error", "code": -32602, "message": "arguments must be a JSON object"}
        try:
            async with asyncio.timeout(self.timeout):
                result = await (await self._session(server)).call_tool(name, parsed)
        except Exception as exc:
            raise _unavailable(server, exc, self.timeout) from None
        text = _text_of(getattr(result, "content", None) or [])
        if getattr(result, "is_error", False):
            return None, {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}
        raw = text.encode()
        if len(raw) > self.max_bytes:
            text = raw[:self.max_bytes].decode(errors="ignore") \
                + f"\n[output cut at mcp_max_output_bytes ({self.max_bytes} bytes)]"
        return text, None
