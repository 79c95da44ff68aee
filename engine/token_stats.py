"""Token statistics per endpoint and model, as NOMYO Router keeps them.

Every upstream answer that reports its usage is counted here with
:meth:`TokenStats.record` (prompt and completion tokens, by the endpoint URL and the
model name the endpoint knows). Counting is synchronous and never fails a request: it
adds to :attr:`TokenStats.totals` (this process, since start-up) and to a buffer of
counts per endpoint, model and minute. A background task (:meth:`TokenStats.start`,
started by the gateway) writes the buffer to the store about once a second
(``add_token_counts``: ``db_token_stats``), and :meth:`TokenStats.stop` writes it once
more at shut-down. A write the store refuses keeps its counts for the next one, with a
warning; :meth:`TokenStats.read` runs a store read with everything counted so far written
first, and gives what could not be written beside it, so a request's tokens show at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, TypeVar

from db_token_stats import MINUTE, TokenRow

__all__ = ["TokenStats", "FLUSH_INTERVAL"]

log = logging.getLogger("nomyo_router.token_stats")

#: Seconds between two writes of the buffer to the store.
FLUSH_INTERVAL = 1.0
#: Seconds between two warnings while the store keeps refusing the counts.
_WARN_EVERY = 60.0
#: Seconds :meth:`TokenStats.stop` waits for its last write before it gives the counts up.
_STOP_TIMEOUT = 10.0

T = TypeVar("T")


class TokenStats:
    """The token counts of this process, per ``(endpoint, model)``, and their way to the store."""

    def __init__(self) -> None:
        #: ``(endpoint, model)`` -> ``[input_tokens, output_tokens]`` since start-up (this process).
        self.totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.started = time.time()
        #: ``(endpoint, model, minute's start)`` -> ``[input_tokens, output_tokens]`` not yet in the store.
        self.pending: dict[tuple[str, str, int], list[int]] = {}
        self.store: Any = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing_since: float | None = None
        self._warned_at = 0.0

    def record(self, endpoint: str, model: str, input_tokens: int | None, output_tokens: int | None) -> None:
        """Count one answer's usage (``None`` counts as 0; negative or non-int values are ignored).
        Synchronous and cheap: it only adds to :attr:`totals` and the buffer."""
        counts = [value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
                  for value in (input_tokens, output_tokens)]
        if not any(counts):
            return
        total = self.totals[(endpoint, model)]
        key = (endpoint, model, int(time.time()) // MINUTE * MINUTE)
        waiting = self.pending.setdefault(key, [0, 0])
        for i, value in enumerate(counts):
            total[i] += value
            waiting[i] += value

    # ── the way to the store ──────────────────────────────────────────────────
    def start(self, store: Any, interval: float = FLUSH_INTERVAL) -> None:
        """Write the counts to ``store`` (``add_token_counts``) every ``interval`` seconds from now
        on, in a task of the running loop, until :meth:`stop`."""
        self.store = store
        self._stopping.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(interval), name="token stats")

    async def _run(self, interval: float) -> None:
        """Write every ``interval`` seconds; once more when stopped (even before the first round)."""
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), interval)
            except TimeoutError:
                pass
            await self.flush()
            if self._stopping.is_set():
                return

    async def stop(self) -> None:
        """Stop the task after one last write (at most :data:`_STOP_TIMEOUT` seconds; what the store
        did not take by then is logged as lost). Idempotent; never raises."""
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:  # its last round writes what is left
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT)
            except TimeoutError:
                task.cancel()
                await asyncio.wait([task], timeout=1.0)
            except Exception:  # the task never raises; this is only a guard
                log.exception("the token statistics task failed")
        if self.pending:
            lost = sum(i + o for i, o in self.pending.values())
            log.error("%d token(s) of %d endpoint/model/minute count(s) could not be stored and are lost",
                      lost, len(self.pending))

    def pending_rows(self) -> list[TokenRow]:
        """What is counted but not in the store yet, as the store's rows."""
        return [(endpoint, model, minute, i, o) for (endpoint, model, minute), (i, o) in self.pending.items()]

    async def flush(self) -> bool:
        """Write the buffer to the store now (one transaction); whether it was taken (True when
        there was nothing to write). A store that refuses it keeps its counts in the buffer for
        the next write, with a warning (once a minute while it goes on). Never raises but a
        cancellation."""
        async with self._lock:
            return await self._flush()

    async def _flush(self) -> bool:
        if not self.pending or self.store is None:
            return True
        batch, self.pending = self.pending, {}
        try:
            await self.store.add_token_counts([(e, m, ts, i, o) for (e, m, ts), (i, o) in batch.items()])
        except BaseException as exc:
            self._give_back(batch)
            if not isinstance(exc, Exception):
                raise
            self._refused(exc)
            return False
        if self._failing_since is not None:
            log.info("token statistics are stored again (the store refused them for %.0f s)",
                     time.time() - self._failing_since)
            self._failing_since, self._warned_at = None, 0.0
        return True

    def _give_back(self, batch: dict[tuple[str, str, int], list[int]]) -> None:
        """Put ``batch`` back in the buffer, added to what was counted meanwhile."""
        for key, (i, o) in batch.items():
            counts = self.pending.setdefault(key, [0, 0])
            counts[0] += i
            counts[1] += o

    def _refused(self, exc: Exception) -> None:
        now = time.time()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning("the store refused the token statistics (kept for the next try, %d count(s) waiting): "
                        "%s: %s", len(self.pending), type(exc).__name__, exc)

    async def read(self, read: Callable[[Any], Awaitable[T]]) -> tuple[T, list[TokenRow]]:
        """``await read(store)`` once everything counted so far was offered to the store (no write is
        under way while it runs), with :meth:`pending_rows`: what the store did not take (empty
        when it took everything). Raises what ``read`` raises."""
        async with self._lock:
            await self._flush()
            return await read(self.store), self.pending_rows()
