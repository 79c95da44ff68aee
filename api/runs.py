"""Running one turn of ``POST /v1/responses`` once the upstream has answered.

A :class:`Turn` is the validated request with its resolved history; an
:class:`Upstream` is the answer of the endpoint chosen for it, holding the
endpoint's usage slot until :meth:`Upstream.close`. This module turns upstream
answers into Response objects or event batches and keeps the store current.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse

from db import ResponseStore
from errors import APIError
from requests.native import NativeStreamTranslator, native_to_response
from requests.responses import (build_response_object, chat_message_to_output_items,
                                responses_input_to_messages, usage_chat_to_responses)
from requests.stream import ChatStreamTranslator, plain, sse_frame

log = logging.getLogger("nomyo_router.runs")

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class Turn:
    """One create request: its body, owner, this turn's input items and the chain before it."""

    id: str
    body: dict
    owner: str | None
    input_items: list[dict]
    history: list[dict] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> str:
        return self.body["model"]

    @property
    def store(self) -> bool:
        return self.body.get("store") is not False

    @property
    def background(self) -> bool:
        return bool(self.body.get("background"))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def previous_response_id(self) -> str | None:
        return self.body.get("previous_response_id")

    @cached_property
    def messages(self) -> list[dict]:
        """The Chat Completions messages of the whole chain plus this turn."""
        return responses_input_to_messages(self.history + self.input_items, self.body.get("instructions"))

    def response(self, status: str, output_items: list[dict] | None = None, **fields: Any) -> dict:
        """This turn's Response object with ``status`` and ``output_items``."""
        return build_response_object(response_id=self.id, model=self.model, output_items=output_items or [],
                                     status=status, request=self.body, created_at=self.created_at,
                                     previous_response_id=self.previous_response_id, **fields)

    def native_meta(self) -> dict:
        """Keyword arguments that re-issue upstream Response objects as this turn's."""
        return dict(response_id=self.id, request=self.body, created_at=self.created_at,
                    previous_response_id=self.previous_response_id, store=self.store,
                    background=self.background)


@dataclass
class Upstream:
    """An endpoint's answer (a completion, a chunk stream, or a native result) and its slot."""

    endpoint: str
    model: str
    native: bool
    result: Any
    release: Callable[[str, str], Awaitable[None]]
    _closed: bool = False

    async def close(self) -> None:
        """Close an open upstream stream and give the usage slot back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self.result, "aclose", None) or getattr(self.result, "close", None)
            if aclose is not None and not isinstance(self.result, dict):
                outcome = aclose()
                if hasattr(outcome, "__await__"):
                    await outcome
        except Exception:  # closing a broken stream must not hide the real outcome
            log.debug("closing the upstream stream failed", exc_info=True)
        finally:
            await self.release(self.endpoint, self.model)


async def save(store: ResponseStore, turn: Turn, response: dict) -> None:
    """Write the turn's row with ``response`` (one statement)."""
    await store.store_response(turn.id, previous_response_id=turn.previous_response_id, model=turn.model,
                               status=response["status"], created_at=turn.created_at,
                               input_messages=turn.input_items, response=response, owner=turn.owner,
                               request=turn.body if turn.background else None, background=turn.background)


def completion_to_response(turn: Turn, completion: Any) -> dict:
    """The Response object for a non-streamed Chat Completions answer."""
    completion = plain(completion)
    choice = plain((completion.get("choices") or [{}])[0])
    items = chat_message_to_output_items(plain(choice.get("message") or {}))
    usage = usage_chat_to_responses(plain(completion.get("usage")))
    reason = _INCOMPLETE_REASONS.get(choice.get("finish_reason") or "")
    if reason:
        if items:  # the item the limit cut short
            items[-1] = {**items[-1], "status": "incomplete"}
        return turn.response("incomplete", items, usage=usage, incomplete_details={"reason": reason})
    return turn.response("completed", items, usage=usage)


def native_result_to_response(turn: Turn, result: Any) -> dict:
    """The Response object for a non-streamed native (OpenAI) answer."""
    return native_to_response(plain(result), **turn.native_meta())


def make_translator(turn: Turn, native: bool, first_sequence_number: int = 0
                    ) -> ChatStreamTranslator | NativeStreamTranslator:
    """The stream translator for this turn's path; a background stream continues
    after its own opening events (``first_sequence_number`` > 0)."""
    if native:
        return NativeStreamTranslator(**turn.native_meta(), first_sequence_number=first_sequence_number,
                                      skip_created=first_sequence_number > 0)
    return ChatStreamTranslator(turn.response("in_progress", completed_at=None), first_sequence_number)


def _failure_code(exc: APIError) -> str:
    return "rate_limit_exceeded" if exc.status == 429 else "server_error"


async def event_batches(upstream: Upstream, translator: Any, *, resumed: bool = False) -> AsyncIterator[list[dict]]:
    """Yield lists of events for an upstream stream, ending with exactly one terminal event.

    ``resumed``: the opening ``response.created`` was already sent (background).
    A broken or failing upstream ends the stream with ``error`` and
    ``response.failed``. Cancellation propagates.
    """
    if not upstream.native:
        yield [translator.in_progress()] if resumed else translator.start()
    try:
        async for chunk in upstream.result:
            events = translator.feed(plain(chunk))
            if events:
                yield events
    except APIError as exc:
        yield translator.fail(exc.message, _failure_code(exc))
        return
    except Exception as exc:
        log.exception("upstream stream failed")
        yield translator.fail(f"The backend stream failed: {type(exc).__name__}.")
        return
    if not upstream.native:
        yield translator.finish()
    elif translator.final is None:
        yield translator.fail("The backend stream ended without a terminal event.")


def interrupted(translator: Any) -> dict:
    """The Response object of a stream that stopped before its terminal event."""
    return translator.final or translator.snapshot("cancelled", completed_at=None)


class EventStreamResponse(StreamingResponse):
    """An SSE response that always closes its event generator and then runs
    ``on_close`` (shielded from cancellation), even when the client left before
    the first byte and the generator never started."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]] | None = None):
        super().__init__(content, media_type="text/event-stream",
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


class ForegroundStream:
    """A streamed (not background) turn: its SSE bytes, and the cleanup that must
    run however the stream ends (last event, upstream failure, client gone):
    close the upstream, give the usage slot back and, with ``store``, write the
    final state (``cancelled`` when the client left early). The response runs
    the cleanup after the body, even when the body never started."""

    def __init__(self, store: ResponseStore, turn: Turn, upstream: Upstream,
                 on_final: Callable[[dict], Awaitable[None]] | None = None):
        self.store, self.turn, self.upstream, self.on_final = store, turn, upstream, on_final
        self.translator = make_translator(turn, upstream.native)

    async def body(self) -> AsyncIterator[bytes]:
        """The SSE frames, one write per batch of events."""
        async for batch in event_batches(self.upstream, self.translator):
            yield b"".join([sse_frame(e) for e in batch])

    async def finish(self) -> None:
        """The cleanup."""
        await self.upstream.close()
        final = interrupted(self.translator)
        if self.turn.store:  # an update, so a response deleted meanwhile stays deleted
            await self.store.update_response(self.turn.id, final, only_if_active=True)
        if self.on_final is not None and final["status"] == "completed":
            await self.on_final(final)

    def response(self) -> EventStreamResponse:
        """The HTTP response streaming this turn."""
        return EventStreamResponse(self.body(), on_close=self.finish)
