"""This replica among others on a shared store (PostgreSQL): leases, take-over, cancel, wake-ups.

Every ``replica_lease / 5`` seconds a replica stamps its lease (``heartbeat``) and
sweeps: replicas whose lease ran out (``replica_lease`` seconds without a stamp: killed,
frozen, cut off) are taken over (``db_postgres.PostgresStore.take_over``): their running
responses are stored failed (a background stream's log gets ``error`` +
``response.failed``), their queued background responses run here, their conversations
are freed. A dead replica is so noticed within ``replica_lease`` plus one sweep
(``replica_lease * 1.2`` seconds); its ``max_concurrent_connections`` slots come back
on the same lease (``slots``).

Notifications (``LISTEN``) tie the replicas together: a cancel asked of any replica is
sent to all and the one running the response stops it (its upstream call closed, its
final state stored); a response's new events or final state wake its followers
everywhere (``engine.eventlog.follow_stored``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from db import ACTIVE
from db_postgres import CANCEL_CHANNEL, EVENTS_CHANNEL
from engine.eventlog import closing_events

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["Cluster"]

log = logging.getLogger("nomyo_router.cluster")

#: Seconds between looks at a response whose cancel was sent to the replica running it.
_CANCEL_POLL = 0.1


class Cluster:
    """The coordination of one replica (``gateway.store`` is shared). Start with :meth:`start`,
    stop with :meth:`close`."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.store = gateway.store
        self.lease = gateway.settings.replica_lease
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener = None
        self._task: asyncio.Task | None = None
        self._cancels: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen, take over replicas that died before this one started, then keep the lease.
        Raises the store's errors (the gateway does not start without its store)."""
        await self._listen()
        await self.sweep()
        self._task = asyncio.create_task(self._keep_lease(), name="replica lease")

    async def close(self) -> None:
        """Stop the lease and the listener (the store's ``close`` gives the lease back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._cancels):
            task.cancel()
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _listen(self) -> None:
        self._listener = await self.store.listen({EVENTS_CHANNEL: self._changed, CANCEL_CHANNEL: self._cancel_here})

    async def _keep_lease(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.lease / 5)
            try:
                if not await self.store.heartbeat():
                    ended = self.gateway.abandon_runs()
                    log.error("this replica's lease had run out (it was taken for dead): another replica failed "
                              "its running responses and runs its queued ones; %d turn(s) here ended without "
                              "storing anything more", ended)
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                    self._wake_all()  # what was sent while it was down is read from the store
                await self.sweep()
            except Exception as exc:  # the store is down now: tried again next beat
                if not failing:
                    log.warning("replica lease: the store does not answer (tried again every %g s): %s: %s",
                                self.lease / 5, type(exc).__name__, exc)
                failing = True
                continue
            if failing:
                log.info("replica lease: the store answers again")
            failing = False

    async def sweep(self) -> None:
        """Take over every replica whose lease ran out; run the queued responses adopted."""
        taken = await self.store.take_over(self.lease, closing_events)
        if taken.replicas or taken.failed or taken.adopted:
            log.warning("took over replica(s) %s: %d running response(s) failed, %d queued background "
                        "response(s) run here, %d conversation(s) freed", ", ".join(taken.replicas) or "(gone)",
                        len(taken.failed), len(taken.adopted), taken.freed)
        for response_id in taken.failed:
            self._changed(response_id)
        if taken.adopted:
            await self.gateway.jobs.resume_queued(taken.adopted)

    # ── wake-ups ──────────────────────────────────────────────────────────────
    @contextmanager
    def waiter(self, response_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``response_id``'s events or state change on any replica (while inside)."""
        changed = asyncio.Event()
        self._waiters.setdefault(response_id, set()).add(changed)
        try:
            yield changed
        finally:
            waiting = self._waiters.get(response_id)
            if waiting is not None:
                waiting.discard(changed)
                if not waiting:
                    del self._waiters[response_id]

    def _changed(self, response_id: str) -> None:
        for changed in self._waiters.get(response_id, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiting in self._waiters.values():
            for changed in waiting:
                changed.set()

    # ── cancel ────────────────────────────────────────────────────────────────
    def _cancel_here(self, response_id: str) -> None:
        """A cancel sent to every replica: this one stops the job if it runs it."""
        if response_id in self.gateway.jobs.jobs:
            task = asyncio.ensure_future(self.gateway.jobs.cancel(response_id))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    async def cancel(self, row: dict, timeout: float) -> bool:
        """Have the replica that runs ``row``'s response cancel it, and wait (up to ``timeout``
        seconds) until its final state is stored. False when no live replica runs it (the
        caller stores it cancelled itself) or it did not end in time."""
        response_id = row["id"]
        if not await self.store.replica_alive(row.get("replica"), self.lease):
            return False
        with self.waiter(response_id) as changed:
            await self.store.notify(CANCEL_CHANNEL, response_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                now = await self.store.get_response(response_id)
                if now is None or now["status"] not in ACTIVE:
                    return True
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), _CANCEL_POLL * 5)
                except TimeoutError:
                    pass
        return False
