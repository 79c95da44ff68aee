"""Run the gateway: ``python serve.py [--host HOST] [--port PORT] [--config FILE]``;
``python serve.py --check-config`` validates the configuration and prints it, secrets masked.

uvicorn serving ``router:app`` with the connection bounds of the configuration:

- ``header_timeout``: a connection must finish a request's headers this many seconds after
  it opened, or after the first byte of its next request; otherwise it is closed (slowloris).
  uvicorn itself has no such bound: its keep-alive timer stops at the first byte of a request.
- ``max_connections``: open connections; one past it is closed at once (and uvicorn's
  ``limit_concurrency`` answers 503 to requests past it).
- ``keep_alive_timeout``: how long an idle connection is kept. Longer than the HTTP
  clients' own pool expiry (httpx and the OpenAI SDKs: 5 s), so a client never sends on a
  connection the gateway is closing at that moment.

The body bound (``body_timeout``) is the request guard's (``api.guard``), so it holds under a
plain ``uvicorn router:app`` too.

Signals (:class:`GatewayServer`): SIGTERM or SIGINT stops accepting and gives running
responses ``shutdown_grace`` seconds before they are ended with ``response.failed``; a second
one ends them at once. SIGHUP reloads the configuration.

Exit status: 2 when the configuration cannot be used, 3 when start-up fails (a store, cache
or key file that cannot be opened), with one line on stderr naming the file or key; after a
stop by signal the process ends by that signal, as uvicorn does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Iterator

import uvicorn
import yaml
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from config import ConfigError, Settings, load_settings, masked

__all__ = ["bounded_protocol", "uvicorn_config", "GatewayServer", "main"]

log = logging.getLogger("nomyo_router.serve")


def bounded_protocol(base: type[asyncio.Protocol], header_timeout: float, max_connections: int) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` (h11 or httptools) that closes a
    connection whose request headers are not complete ``header_timeout`` seconds after it
    opened or after the request's first byte, and refuses connections past ``max_connections``."""

    class Bounded(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers():
                if self._header_timer is None:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timer runs until the next request's first byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{base.__name__}"
    return Bounded


class _StartupFailureInOneLine(logging.Filter):
    """uvicorn logs a failed start-up as the whole traceback; when the gateway stopped it on
    purpose (``SystemExit("nomyo-router: ...")``, the file or key named), that one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback") and "SystemExit: nomyo-router: " in message:
            record.msg, record.args = message.rsplit("SystemExit: ", 1)[1].strip(), ()
        return True


def uvicorn_config(settings: Settings, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration that serves ``router:app`` under ``settings``' connection bounds."""
    return uvicorn.Config("router:app", host=host, port=port,
                          http=bounded_protocol(AutoHTTPProtocol, settings.header_timeout, settings.max_connections),
                          # uvicorn answers 503 once connections reach its limit: each of ours is served
                          limit_concurrency=settings.max_connections + 1,
                          timeout_keep_alive=settings.keep_alive_timeout,
                          ws="websockets-sansio", ws_max_size=settings.max_body_bytes,
                          ws_ping_interval=settings.websocket_ping_interval,
                          ws_ping_timeout=settings.websocket_ping_timeout,
                          # the grace, then the runs end themselves: a little more for their last events
                          timeout_graceful_shutdown=settings.shutdown_grace + 5, **options)


def _gateway() -> Any:
    """The running app's gateway (None before start-up finished)."""
    import router
    return getattr(router.app.state, "gateway", None)


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's lifecycle: on SIGTERM (or SIGINT) it stops accepting,
    gives running turns ``shutdown_grace`` seconds, then ends them (``Gateway.stop_runs``) so
    every stream (a WebSocket's too, before the socket is closed) gets its ``response.failed``;
    on SIGHUP it reloads the configuration (a bad one is logged and the old one kept)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
                yield
                return
            loop = asyncio.get_running_loop()
            self._loop = loop
            previous = signal.signal(signal.SIGHUP, lambda *_: loop.call_soon_threadsafe(self._reload_soon))
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """A second SIGTERM/SIGINT ends the running turns at once (each still gets its
        ``response.failed``) instead of waiting out the grace."""
        if self.should_exit and getattr(self, "_loop", None) is not None:
            self._loop.call_soon_threadsafe(self._stop_runs_now)
        super().handle_exit(sig, frame)

    def _stop_runs_now(self) -> None:
        gateway = _gateway()
        if gateway is not None:
            log.warning("shutdown: stopping %d running response(s) now", gateway.stop_runs())

    def _reload_soon(self) -> None:
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        gateway = _gateway()
        if gateway is None:
            return
        try:
            settings = load_settings()
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        await gateway.reload(settings)

    async def shutdown(self, sockets: Any = None) -> None:
        gateway = _gateway()
        stopper = None
        if gateway is not None:
            async def stop_after_grace() -> None:
                await asyncio.sleep(gateway.settings.shutdown_grace)
                stopped = gateway.stop_runs()
                if stopped:
                    log.warning("shutdown: %d response(s) still running after %gs were stopped and stored "
                                "as failed", stopped, gateway.settings.shutdown_grace)
            if gateway.runs:
                log.info("shutdown: waiting up to %gs for %d running response(s)", gateway.settings.shutdown_grace,
                         len(gateway.runs))
            stopper = asyncio.get_running_loop().create_task(stop_after_grace())
        try:
            if gateway is not None and gateway.sockets:
                for server in self.servers:  # no new connections while the sockets drain
                    server.close()
                await gateway.close_sockets(gateway.settings.shutdown_grace + 5)
            await super().shutdown(sockets)
        finally:
            if stopper is not None:
                stopper.cancel()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, check the configuration, serve until stopped."""
    parser = argparse.ArgumentParser(prog="serve.py", description="Run the NOMYO Router gateway.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12434, help="port to listen on (default 12434)")
    parser.add_argument("--config", help="the config file (else NOMYO_ROUTER_CONFIG_PATH, else ./config.yaml)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it (secrets masked) and exit")
    parser.add_argument("--no-access-log", action="store_true",
                        help="no summary line per request (log_requests: false)")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["NOMYO_ROUTER_CONFIG_PATH"] = args.config
    if args.no_access_log:
        os.environ["NOMYO_ROUTER_LOG_REQUESTS"] = "false"
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"nomyo-router: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(yaml.safe_dump(masked(settings), sort_keys=True), end="")
        return 0
    # The gateway logs each request itself (with its id, models and tokens): uvicorn's line would repeat it.
    config = uvicorn_config(settings, args.host, args.port, access_log=False)
    server = GatewayServer(config)
    logging.getLogger("uvicorn.error").addFilter(_StartupFailureInOneLine())
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
