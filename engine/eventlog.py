"""The durable event log of background streams: written as produced, read by any replica.

A background stream's events are stored as its run produces them, in small batches
(:class:`EventLog`: one write at a time, each taking what came meanwhile), so a
follower that is not in the producing process (another replica, or this one after a
restart) reads them from the store: :func:`follow_stored` replays what is there after
``starting_after`` and follows the rest, woken by the store's notifications where it
has them (PostgreSQL ``LISTEN/NOTIFY``, ``engine.cluster``) and by polling where it
has not. A producer that died leaves its events up to its death; whoever fails its
response appends ``error`` + ``response.failed`` (:func:`closing_events`), so a
follower sees the stream end as it would have.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager
from typing import Any, AsyncIterator, Callable

from db import ACTIVE
from requests.events import TERMINAL_TYPES, Event, Sequencer, error_event, response_event
from requests.stream import response_to_events

__all__ = ["EventLog", "follow_stored", "closing_events"]

log = logging.getLogger("nomyo_router.events")

#: Seconds between tries of a write the store refused.
RETRY_SECONDS = 0.2
#: Tries a closing log gives a refused write.
CLOSING_TRIES = 5
#: Seconds a follower waits between looks at the store when nothing wakes it.
POLL_SECONDS = 1.0
#: Looks a follower takes, after the response ended, for its terminal event to reach the log
#: (the run stores its final state just before it sends that event).
_TERMINAL_LOOKS = 3


def closing_events(failed: dict, last: int) -> list[Event]:
    """``error`` + ``response.failed`` for the ``failed`` Response object, numbered after ``last``."""
    error = failed.get("error") or {}
    return Sequencer(last + 1).all([error_event(error.get("message") or "The response failed.",
                                                error.get("code") or "server_error"),
                                    response_event("response.failed", failed)])


class EventLog:
    """Writes one response's events to ``store`` as they come, then hands them on to
    ``deliver`` (the followers in this process): whoever follows a stream, here or on
    another replica, sees only events that are stored, so a replay after the producer
    died holds every event any follower saw.

    :meth:`add` never waits. One write runs at a time; what arrives meanwhile goes in the
    next, so batches are small when events are few and grow under load. A write the store
    refuses is tried again (after :data:`RETRY_SECONDS`) with what came since; the events
    stay in order. :meth:`close` writes what is left and waits for it.
    """

    def __init__(self, store: Any, response_id: str, deliver: Callable[[list[Event]], None]):
        self.store, self.response_id, self.deliver = store, response_id, deliver
        self._pending: list[Event] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._write_forever(), name=f"event log {response_id}")

    def add(self, events: list[Event]) -> None:
        """Queue ``events`` (stamped, in order) to be written, then delivered."""
        if events:
            self._pending.extend(events)
            self._ready.set()

    def detach(self) -> None:
        """Store nothing more (the response is another replica's now): what is queued and what
        comes is delivered unstored."""
        self.store = None

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch = self._pending[:]
            if not batch:
                if self._closing:
                    return
                continue
            try:
                if self.store is not None:
                    await self.store.append_events(self.response_id, batch)
            except Exception as exc:
                failures += 1
                log.warning("events of response %s could not be stored (try %d): %s: %s", self.response_id,
                            failures, type(exc).__name__, exc)
                if not (self._closing and failures >= CLOSING_TRIES):
                    await asyncio.sleep(RETRY_SECONDS)
                    self._ready.set()
                    continue
                log.error("response %s: %d event(s) were sent to its followers without being stored",
                          self.response_id, len(batch))
            failures = 0
            del self._pending[:len(batch)]
            self.deliver(batch)
            if self._pending or self._closing:
                self._ready.set()

    async def close(self) -> None:
        """Write (and deliver) what is left, then stop; a store that keeps refusing is given
        :data:`CLOSING_TRIES` tries, then the events go to the followers unstored."""
        self._closing = True
        self._ready.set()
        await self._task


async def follow_stored(store: Any, response_id: str, after: int = -1,
                        waiter: Callable[[str], AbstractContextManager[asyncio.Event]] | None = None
                        ) -> AsyncIterator[list[Event]]:
    """Yield batches of a response's events with ``sequence_number > after`` from the store until
    its terminal event. ``waiter(response_id)`` (a context manager giving an ``asyncio.Event``
    that is set when the response's events or state change) saves polling.

    A response that ended without events in the log (not streamed, or cancelled where no run
    held it) is replayed from its Response object (``requests.stream.response_to_events``);
    one whose log stops short of a terminal event (its writer died after its final state
    was stored) ends with the terminal event made from that object. Ends at once for a
    response not found.
    """
    looks = 0
    while True:
        with waiter(response_id) if waiter is not None else _no_wake() as changed:
            events = await store.get_events(response_id, after)
            if events:
                after, looks = events[-1]["sequence_number"], 0
                yield events
                if events[-1]["type"] in TERMINAL_TYPES:
                    return
                continue
            row = await store.get_response(response_id)
            if row is None:
                return
            if row["status"] not in ACTIVE:
                looks += 1
                ending = await _ending(store, row, after, looks)
                if ending is not None:
                    if ending:
                        yield ending
                    return
            try:
                await asyncio.wait_for(changed.wait(), POLL_SECONDS if looks == 0 else RETRY_SECONDS)
            except TimeoutError:
                pass


async def _ending(store: Any, row: dict, after: int, looks: int) -> list[Event] | None:
    """What a follower still gets of a response that ended: its whole replay (no log), nothing
    (it has seen the terminal event), its terminal event (the log stops short, after a few
    looks), or None (look again: events came meanwhile, or the terminal one may yet)."""
    response = row["response"]
    seen = await store.get_events(row["id"], max(after - 1, -1))
    if not seen:
        if response is None:
            return []
        return [e for e in response_to_events(response, queued=row["background"]) if e["sequence_number"] > after]
    if seen[-1]["sequence_number"] > after:
        return None  # stored since the follower last looked: the loop reads them
    if seen[-1]["type"] in TERMINAL_TYPES:
        return []
    if looks < _TERMINAL_LOOKS or response is None:
        return None if response is not None else []
    terminal = list(response_to_events(response, queued=row["background"]))[-1]
    return [{**terminal, "sequence_number": seen[-1]["sequence_number"] + 1}]


class _no_wake(AbstractContextManager):
    """A wake-up that never comes (followers poll)."""

    def __enter__(self) -> asyncio.Event:
        return asyncio.Event()

    def __exit__(self, *exc: Any) -> None:
        return None
