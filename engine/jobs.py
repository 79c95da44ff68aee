"""Background responses (``background: true``): turns run by a task of this process.

A job's row is stored ``queued`` before its id is returned, moves to
``in_progress`` when the turn has a backend slot, and ends as its :class:`TurnRun` settles
(``completed``, ``incomplete``, ``failed`` or ``cancelled``). A streamed job
publishes its events to followers in this process (the creating request and ``GET
...?stream=true``) and writes them to the store as it goes (``engine.eventlog``), for
followers anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator

from engine.eventlog import EventLog
from engine.runner import TurnRun, save
from engine.turn import Turn, prepare_turn
from errors import APIError
from requests.events import Event, Sequencer, response_event

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = ["Job", "JobManager"]

log = logging.getLogger("nomyo_router.jobs")


class Job:
    """One running background response (``queued``: its Response object as first stored)
    and the events it has published."""

    def __init__(self, run: TurnRun, queued: dict, store: Any = None):
        self.run = run
        self.turn = run.turn
        self.queued = queued
        self.events: list[Event] = []
        self.done = False
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        #: Where a streamed job's events are stored, as they come, before its followers get them.
        self.log = EventLog(store, run.turn.id, self._deliver) if store is not None else None

    def publish(self, events: list[Event]) -> None:
        """Send events to every follower (once stored, when the job has a log)."""
        if self.log is not None:
            self.log.add(events)
        else:
            self._deliver(events)

    def _deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def finish(self) -> None:
        """Mark the job done and wake every follower."""
        self.done = True
        self._deliver([])

    async def follow(self, after: int = -1) -> AsyncIterator[list[Event]]:
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
    """Starts, tracks and cancels the background jobs of one gateway."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.jobs: dict[str, Job] = {}

    async def submit(self, turn: Turn) -> Job:
        """Store ``turn`` as ``queued`` and run it in the background. Raises APIError 429
        ``too_many_background_jobs`` when ``max_background_jobs`` are queued or running."""
        limit = self.gateway.settings.max_background_jobs
        if len(self.jobs) >= limit:
            raise APIError(429, f"{limit} background responses are queued or running already; retry later.",
                           code="too_many_background_jobs", type="rate_limit_error")
        queued = turn.response("queued", completed_at=None)
        await save(self.gateway, turn, queued)
        return self._start(turn, queued)

    async def resume_queued(self, rows: list[dict] | None = None) -> int:
        """Run the background responses a stopped gateway left ``queued`` (they never reached
        a backend), or the store rows ``rows`` (adopted from a replica that died). One that
        cannot be prepared again (its chain was deleted, say) is stored failed with the reason.
        Returns how many were resumed. Run at start-up, and by ``engine.cluster``."""
        gateway, resumed = self.gateway, 0
        for row in await gateway.store.queued_background() if rows is None else rows:
            if row["id"] in self.jobs:
                continue
            try:
                turn = await prepare_turn(gateway.store, row["request"], row["owner"], gateway.settings.model_aliases,
                                          gateway.seal, gateway.chain_bounds, files=gateway.files,
                                          response_id=row["id"])
            except APIError as exc:
                failed = {**(row["response"] or {}), "status": "failed", "completed_at": None,
                          "error": {"code": "server_error", "message": f"Could not be resumed: {exc.message}"}}
                await gateway.store.update_response(row["id"], failed, only_if_active=True)
                continue
            turn.created_at = row["created_at"]
            self._start(turn, row["response"] or turn.response("queued", completed_at=None))
            resumed += 1
        return resumed

    def _start(self, turn: Turn, queued: dict) -> Job:
        """Run ``turn`` (its row stored ``queued``) in a task of its own."""
        seq = Sequencer()
        run = TurnRun(self.gateway, turn, seq=seq, resumed=True)
        run.row_written = True
        job = Job(run, queued, self.gateway.store if turn.stream else None)
        if turn.stream:
            job.publish(seq.all([response_event("response.created", queued),
                                 response_event("response.queued", queued)]))
        job.task = asyncio.create_task(self._run(job), name=f"background {turn.id}")
        self.jobs[turn.id] = job
        return job

    async def _run(self, job: Job) -> None:
        run, turn, store = job.run, job.turn, self.gateway.store

        async def in_progress() -> None:
            await store.update_response(turn.id, turn.response("in_progress", completed_at=None))
        run.on_slot = in_progress
        try:
            if turn.stream:
                async for batch in run.events():
                    job.publish(batch)
            else:
                await run.answer()
        except asyncio.CancelledError as exc:
            closing = await run.settle(exc)
            if turn.stream:
                job.publish(closing)
        except Exception as exc:  # recorded as failed by the run
            closing = await run.settle(exc)
            if turn.stream:
                job.publish(closing)
        finally:
            try:
                if job.log is not None:
                    await job.log.close()
            finally:
                job.finish()
                self.jobs.pop(turn.id, None)

    async def cancel(self, response_id: str) -> bool:
        """Cancel a running job and wait until its final state is stored (one whose run has ended
        already is only waited for: its last events are still being written). Returns False
        when no job of that id runs here."""
        job = self.jobs.get(response_id)
        if job is None or job.task is None:
            return False
        if not job.run.settled:
            job.task.cancel()
        await asyncio.wait([job.task])
        return True

    async def wait(self, response_id: str) -> None:
        """Wait until the job of ``response_id`` (if any) has finished."""
        job = self.jobs.get(response_id)
        if job is not None and job.task is not None:
            await asyncio.wait([job.task])

    def abandon(self) -> int:
        """End every job without storing anything (this replica lost its lease: another one failed
        or adopted them); their streams' followers here get ``error`` + ``response.failed``, which
        go to no log. Returns how many."""
        jobs = [job for job in self.jobs.values() if job.task is not None]
        for job in jobs:
            if job.log is not None:
                job.log.detach()
            job.run.stop(job.task, abandon=True)
        return len(jobs)

    async def shutdown(self) -> None:
        """Stop every job: a running one is stored failed, one still waiting for a backend
        slot is stored ``queued`` again (:meth:`resume_queued` runs it at the next start)."""
        tasks = []
        for job in self.jobs.values():
            if job.task is not None:
                job.run.stop(job.task)
                tasks.append(job.task)
        if tasks:
            await asyncio.wait(tasks)
