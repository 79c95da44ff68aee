"""A real MCP server on 127.0.0.1 for the tests (the ``mcp`` SDK's ``MCPServer``, streamable HTTP, under
uvicorn in a thread; or the SSE transport of older servers): ``weather(city)``, ``broken()`` (always fails), ``slow()`` (sleeps 30 s). ``calls``
records each tool run and ``headers`` the headers of each request."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn
from mcp.server.mcpserver import MCPServer


class McpTestServer:
    def __init__(self, transport: str = "streamable-http") -> None:
        self.transport = transport
        self.calls: list[tuple[str, dict]] = []
        self.headers: list[dict] = []
        server = MCPServer("test-tools")
        calls = self.calls

        @server.tool()
        def weather(city: str) -> str:
            """The weather of a city."""
            calls.append(("weather", {"city": city}))
            return f"Sunny in {city}"

        @server.tool()
        def broken() -> str:
            """A tool that always fails."""
            calls.append(("broken", {}))
            raise ValueError("the tool broke")

        @server.tool()
        async def slow() -> str:
            """A tool that takes its time."""
            calls.append(("slow", {}))
            await asyncio.sleep(30)
            return "late"

        app = server.sse_app() if transport == "sse" else server.streamable_http_app()
        headers = self.headers

        async def recording(scope, receive, send):
            if scope["type"] == "http":
                headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(recording, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="on"))
        self._lifespan_app = app
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{'sse' if self.transport == 'sse' else 'mcp'}"

    def __enter__(self) -> "McpTestServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the MCP test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)
