"""Background responses (``background: true``): jobs run in this process.

A job's response row is stored ``queued`` before its id is returned, moves to
``in_progress`` when the job starts and ends ``completed``, ``incomplete``,
``failed`` or ``cancelled``. A streamed job publishes its events to followers
(the creating request and ``GET ...?stream=true``) and stores them when done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from api.runs import (Turn, Upstream, completion_to_response, event_batches, interrupted,
                      make_translator, native_result_to_response)
from db import ResponseStore
from errors import APIError
from requests.stream import ChatStreamTranslator

log = logging.getLogger("nomyo_router.jobs")

OpenUpstream = Callable[[Turn], Awaitable[Upstream]]


class Job:
    """One running background response and the events it has published."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self.events: list[dict] = []
        self.done = False
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def publish(self, events: list[dict]) -> None:
        """Append events and wake every follower."""
        self.events.extend(events)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def finish(self) -> None:
        """Mark the job done and wake every follower."""
        self.done = True
        self.publish([])

    async def follow(self, after: int = -1) -> AsyncIterator[list[dict]]:
        """Yield batches of events with ``sequence_number > after`` until the job is done."""
        index = after + 1
        while True:
            changed = self._changed
            if index < len(self.events):
                batch = self.events[index:]
                index = len(self.events)
                yield batch
                continue
            if self.done:
                return
            await changed.wait()


class JobManager:
    """Starts, tracks and cancels background jobs."""

    def __init__(self, store: ResponseStore, open_upstream: OpenUpstream):
        self.store = store
        self.open_upstream = open_upstream
        self.jobs: dict[str, Job] = {}
        self._shutting_down = False

    def start(self, turn: Turn) -> Job:
        """Run ``turn`` in the background. Its row must already be stored ``queued``."""
        job = Job(turn)
        if turn.stream:
            queued = turn.response("queued", completed_at=None)
            job.publish([{"type": "response.created", "response": queued, "sequence_number": 0},
                         {"type": "response.queued", "response": queued, "sequence_number": 1}])
        job.task = asyncio.create_task(self._run(job), name=f"background {turn.id}")
        self.jobs[turn.id] = job
        return job

    async def _run(self, job: Job) -> None:
        turn = job.turn
        upstream: Upstream | None = None
        translator = None
        final: dict | None = None
        try:
            await self.store.update_response(turn.id, turn.response("in_progress", completed_at=None))
            upstream = await self.open_upstream(turn)
            if turn.stream:
                translator = make_translator(turn, upstream.native, len(job.events))
                async for batch in event_batches(upstream, translator, resumed=True):
                    job.publish(batch)
                final = translator.final
            elif upstream.native:
                final = native_result_to_response(turn, upstream.result)
            else:
                final = completion_to_response(turn, upstream.result)
        except asyncio.CancelledError:
            if self._shutting_down:
                final = turn.response("failed", completed_at=None, error={
                    "code": "server_error", "message": "The gateway shut down before this response finished."})
            elif translator is not None:
                final = interrupted(translator)
            else:
                final = turn.response("cancelled", completed_at=None)
            if turn.stream:
                job.publish([{"type": "response.failed", "response": final,
                              "sequence_number": len(job.events)}])
        except Exception as exc:
            if not isinstance(exc, APIError):
                log.exception("background response %s failed", turn.id)
                exc = APIError(500, f"Internal error: {type(exc).__name__}.")
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            failer = translator or ChatStreamTranslator(turn.response("in_progress", completed_at=None),
                                                        len(job.events))
            events = failer.fail(exc.message, code)
            final = failer.final
            if turn.stream:
                job.publish(events)
        finally:
            try:
                if upstream is not None:
                    await upstream.close()
                if final is not None:
                    await self.store.update_response(turn.id, final)
                    if turn.stream:
                        await self.store.append_events(turn.id, job.events)
            finally:
                job.finish()
                self.jobs.pop(turn.id, None)

    async def cancel(self, response_id: str) -> bool:
        """Cancel a running job and wait until its final state is stored.
        Returns False when no job of that id runs here."""
        job = self.jobs.get(response_id)
        if job is None or job.task is None:
            return False
        job.task.cancel()
        await asyncio.wait([job.task])
        return True

    async def wait(self, response_id: str) -> None:
        """Wait until the job of ``response_id`` (if any) has finished."""
        job = self.jobs.get(response_id)
        if job is not None and job.task is not None:
            await asyncio.wait([job.task])

    async def shutdown(self) -> None:
        """Stop every job; their responses are stored as failed."""
        self._shutting_down = True
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
