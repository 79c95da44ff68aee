"""An upstream stream relayed to a client, and the usage slot it holds: given back exactly once.

A relayed stream's slot must come back however the relay ends: read to its end, broken, closed
by a client that left, or never started at all (the client left before the first byte, so the
relaying generator never ran and its ``finally`` never will). The relay calls
:meth:`HeldStream.release` when it ends, and the HTTP response calls it again when it closes
(``on_close``); only the first call does anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["HeldStream"]


class HeldStream:
    """``upstream`` (an open stream with ``aclose()``) and the slot of ``(endpoint, model)`` it holds."""

    def __init__(self, gateway: Gateway, upstream: Any, endpoint: str, model: str):
        self.gateway, self.upstream, self.endpoint, self.model = gateway, upstream, endpoint, model
        self.released = False

    async def release(self) -> None:
        """Close the upstream stream and give the slot back; later calls do nothing."""
        if self.released:
            return
        self.released = True
        try:
            await self.upstream.aclose()
        finally:
            await self.gateway.calls.decrement_usage(self.gateway.registry, self.endpoint, self.model)
