"""Server-sent events: the HTTP form of a run's event batches.

:class:`EventStreamResponse` streams SSE frames and runs its ``on_close``
(shielded from cancellation) however the stream ends, even when the client
left before the first byte and the body never started.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import anyio
from starlette.responses import StreamingResponse

from requests.events import Event, sse_frame

__all__ = ["ClosingStreamResponse", "EventStreamResponse", "sse_of_batches", "sse_of_events"]


async def sse_of_batches(batches: AsyncIterator[list[Event]]) -> AsyncIterator[bytes]:
    """One write per batch of events; closes ``batches`` when it stops early."""
    try:
        async for batch in batches:
            yield b"".join([sse_frame(event) for event in batch])
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


async def sse_of_events(events: Iterable[Event]) -> AsyncIterator[bytes]:
    """The frames of events already made (a replay), one write each."""
    for event in events:
        yield sse_frame(event)


class ClosingStreamResponse(StreamingResponse):
    """A streamed response of ``media_type`` that always closes its body and then runs
    ``on_close`` (shielded from cancellation), however it ends: also when the client left
    before the first byte, so the body never started."""

    media_type = "application/octet-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[Any]] | None = None):
        super().__init__(content, media_type=self.media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                if self.on_close is not None:
                    await self.on_close()


class EventStreamResponse(ClosingStreamResponse):
    """A ``text/event-stream`` :class:`ClosingStreamResponse`."""

    media_type = "text/event-stream"
