"""The gateway's process state, in one place: built at start-up, passed to every layer.

:func:`open_gateway` opens the response store (failing responses a previous
process left unfinished), the endpoint registry with its first discovery, the
LLM cache and the background jobs; :meth:`Gateway.close` closes them in reverse.
Nothing here is a module global: the HTTP layer keeps the :class:`Gateway` on
its app.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from backends import Registry
from cache import LLMCache, open_llm_cache
from config import Settings
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

    def __post_init__(self) -> None:
        self.jobs = JobManager(self)

    @property
    def chain_bounds(self) -> ChainBounds:
        """What one request may load of its chain (``max_chain_bytes``, ``max_chain_items``)."""
        return ChainBounds(self.settings.max_chain_bytes, self.settings.max_chain_items)

    async def close(self) -> None:
        """Stop the jobs (stored as failed), then close the registry, cache and store."""
        try:
            await self.jobs.shutdown()
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
