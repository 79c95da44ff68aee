"""The gateway's process state, in one place: built at start-up, passed to every layer.

:func:`open_gateway` opens the response store (failing responses a previous
process left unfinished), the endpoint registry with its first discovery, the
LLM cache and the background jobs; :meth:`Gateway.close` closes them in reverse.
Nothing here is a module global: the HTTP layer keeps the :class:`Gateway` on
its app.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from backends import Registry
from cache import LLMCache, open_llm_cache
from config import Settings, key_tag
from db import ResponseStore
from engine.jobs import JobManager
from engine.turn import ChainBounds
from engine.upstream import BackendCalls
from metrics import watch_in_flight
from reasoning_seal import ReasoningSeal, load_or_create_key

__all__ = ["Gateway", "open_gateway"]

log = logging.getLogger("nomyo_router")


@dataclass
class Gateway:
    """What one running gateway holds: its settings, store, endpoint registry,
    LLM cache (None when off), the backend functions turns run with, the seal of
    reasoning carried by clients, and jobs."""

    settings: Settings
    store: ResponseStore
    registry: Registry
    cache: LLMCache | None
    calls: BackendCalls
    seal: ReasoningSeal
    jobs: JobManager = field(init=False)
    #: Store writes that failed and are tried again, by response id.
    retrying: dict[str, asyncio.Task] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.jobs = JobManager(self)

    def retry_later(self, response_id: str, write: Callable[[], Awaitable[Any]]) -> None:
        """Try ``write`` again (after 0.5 s, then twice as long each time, at most 30 s apart)
        until the store takes it or the gateway closes. A newer write for the same response
        replaces an older one."""
        old = self.retrying.pop(response_id, None)
        if old is not None:
            old.cancel()

        async def retry() -> None:
            delay = 0.5
            while True:
                await asyncio.sleep(delay)
                try:
                    await write()
                except Exception as exc:
                    log.warning("response %s: the store still refuses its final state: %s: %s", response_id,
                                type(exc).__name__, exc)
                    delay = min(delay * 2, 30.0)
                    continue
                log.info("response %s: its final state is stored now", response_id)
                self.retrying.pop(response_id, None)
                return

        self.retrying[response_id] = asyncio.get_running_loop().create_task(retry(), name=f"store {response_id}")

    @property
    def chain_bounds(self) -> ChainBounds:
        """What one request may load of its chain (``max_chain_bytes``, ``max_chain_items``)."""
        return ChainBounds(self.settings.max_chain_bytes, self.settings.max_chain_items)

    async def close(self) -> None:
        """Stop the jobs (stored as failed), then close the registry, cache and store. Writes
        still being retried are given up (the next start marks their rows failed)."""
        try:
            await self.jobs.shutdown()
            for response_id, task in list(self.retrying.items()):
                task.cancel()
                log.error("response %s: its final state was never stored; the next start marks it failed",
                          response_id)
            self.retrying.clear()
        finally:
            try:
                await self.registry.close()
                if self.cache is not None:
                    await self.cache.close()
            finally:
                await self.store.close()


async def open_gateway(settings: Settings, db_path: str, calls: BackendCalls) -> Gateway:
    """Open everything a gateway needs for ``settings``, its store at ``db_path``.

    Raises what opening the store raises (the store closes itself then), or
    OSError when the reasoning key file can be neither read nor made; the
    registry's first discovery never raises (unreachable endpoints are recorded).
    """
    seal = ReasoningSeal(load_or_create_key(settings.reasoning_encryption_key, db_path))
    store = await ResponseStore(db_path).open()
    registry: Registry | None = None
    try:
        moved = await store.reassign_owners({key_tag(key): tag for key, tag in settings.key_owners.items()
                                             if tag.startswith("tenant:")})
        if moved:
            log.info("%d stored response(s) of keys now in tenants belong to those tenants", moved)
        orphans = await store.fail_orphaned_responses()
        if orphans:
            log.warning("marked %d response(s) left unfinished by a previous process as failed", orphans)
        registry = Registry(settings)
        watch_in_flight(lambda: dict(registry.usage))
        await registry.start()
        cache = await open_llm_cache(settings)
    except BaseException:
        if registry is not None:
            await registry.close()
        await store.close()
        raise
    return Gateway(settings=settings, store=store, registry=registry, cache=cache, calls=calls, seal=seal)
