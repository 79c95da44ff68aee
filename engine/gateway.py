"""The gateway's process state, in one place: built at start-up, passed to every layer.

:func:`open_gateway` opens the response store (failing responses a previous
process left unfinished; on a shared store, joining the other replicas:
``engine.cluster``), the endpoint registry with its first discovery, the
LLM cache and the background jobs; :meth:`Gateway.close` closes them in reverse.
Nothing here is a module global: the HTTP layer keeps the :class:`Gateway` on
its app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

from backends import Registry
from cache import LLMCache, open_llm_cache
from config import Settings, key_tag
from engine.cluster import Cluster
from engine.eventlog import closing_events
from engine.files import FileFetcher
from engine.jobs import JobManager
from engine.token_stats import TokenStats
from engine.turn import ChainBounds
from engine.upstream import BackendCalls
from logs import configure_logging
from metrics import watch_gateway
from reasoning_seal import ReasoningSeal, load_or_create_key, make_key
from store import STORE_ERRORS, Store, open_store, sqlite_path

__all__ = ["Gateway", "open_gateway"]

log = logging.getLogger("nomyo_router")


@dataclass
class Gateway:
    """What one running gateway holds: its settings, store, endpoint registry,
    LLM cache (None when off), the backend functions turns run with, the seal of
    reasoning carried by clients, and jobs."""

    settings: Settings
    store: Store
    registry: Registry
    cache: LLMCache | None
    calls: BackendCalls
    seal: ReasoningSeal
    jobs: JobManager = field(init=False)
    #: Fetches ``file_url`` files for Chat backends, where ``file_url_allowed_hosts`` allows.
    files: FileFetcher = field(init=False)
    #: Store writes that failed and are tried again, by response id.
    retrying: dict[str, asyncio.Task] = field(init=False, default_factory=dict)
    #: Turns running now (``engine.runner.TurnRun``), foreground and background.
    runs: set = field(init=False, default_factory=set)
    #: Open WebSocket sessions (``api.websocket.SocketSession``) and dashboard streams
    #: (``api.dashboard.UsageStream``): drained before the server closes them.
    sockets: set = field(init=False, default_factory=set)
    #: This replica among the others (a shared store), else None.
    cluster: Cluster | None = field(init=False, default=None)
    #: Prompt and completion tokens per endpoint and model (``engine.token_stats``).
    token_stats: TokenStats = field(init=False, default_factory=TokenStats)

    def __post_init__(self) -> None:
        self.jobs = JobManager(self)
        self.files = FileFetcher(*_file_settings(self.settings))

    def gauges(self) -> dict:
        """What the metrics' gauges show now: slots in use, requests queued, background jobs."""
        background = {"queued": 0, "in_progress": 0}
        for job in self.jobs.jobs.values():
            background["in_progress" if job.run.slot_taken else "queued"] += 1
        return {"in_flight": dict(self.registry.usage), "queued": dict(self.registry.queued),
                "background": background}

    def stop_runs(self) -> int:
        """End every running turn now (the gateway is stopping): streams end with ``error`` +
        ``response.failed``, whole answers with a 503, each stored as failed. Returns how many."""
        runs = list(self.runs)
        for run in runs:
            run.stop()
        return len(runs)

    def abandon_runs(self) -> int:
        """End every turn whose row another replica has failed (this one lost its lease): the
        background jobs and the stored streams, storing nothing more of them (their followers
        get ``error`` + ``response.failed``, as the store says). Turns not yet in the store go
        on. Returns how many were ended."""
        ended = self.jobs.abandon()
        for run in list(self.runs):
            if run.row_written and not run.turn.background:
                run.stop(abandon=True)
                ended += 1
        return ended

    async def close_sockets(self, timeout: float) -> None:
        """Let each open WebSocket finish its turn (they end by ``stop_runs`` after the grace), then
        close it as going away; at most ``timeout`` seconds."""
        sessions = list(self.sockets)
        if sessions:
            await asyncio.wait([asyncio.ensure_future(session.drain()) for session in sessions], timeout=timeout)

    async def reload(self, settings: Settings) -> None:
        """Take new ``settings`` without dropping requests in flight: keys, tenants, hosts,
        origins, endpoints, limits, aliases and logging apply from the next request on. What
        the running process cannot change (the store, the cache, the reasoning key) keeps its
        old value, with a warning."""
        fixed = [key for key in RESTART_ONLY if getattr(settings, key) != getattr(self.settings, key)]
        if fixed:
            log.warning("reload: %s need(s) a restart; the old value is kept", ", ".join(fixed))
            settings = settings.model_copy(update={key: getattr(self.settings, key) for key in fixed})
        await self.registry.reconfigure(settings)
        self.files.configure(*_file_settings(settings))
        self.settings = settings
        configure_logging(settings.log_level, settings.log_format)
        log.info("reload: configuration taken (%d endpoint(s), %d key(s))", len(self.registry.endpoints),
                 len(settings.router_api_keys))

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

    def waiter(self) -> Callable[[str], Any] | None:
        """What wakes followers of stored events (``engine.eventlog.follow_stored``): the
        cluster's notifications on a shared store, else nothing (they poll)."""
        return self.cluster.waiter if self.cluster is not None else None

    async def cancel_elsewhere(self, row: dict) -> None:
        """Cancel ``row``'s response, which no job of this process runs: the replica that runs it
        stops it (a shared store), else (it has none, or that replica is gone or does not answer
        within twice the lease and 5 s) it is stored ``cancelled`` here."""
        if self.cluster is not None and await self.cluster.cancel(row, 2 * self.settings.replica_lease + 5):
            return
        response = dict(row["response"] or {"id": row["id"], "object": "response", "output": []})
        response.update(status="cancelled", completed_at=None)
        await self.store.update_response(row["id"], response, only_if_active=True)

    @property
    def chain_bounds(self) -> ChainBounds:
        """What one request may load of its chain (``max_chain_bytes``, ``max_chain_items``)."""
        return ChainBounds(self.settings.max_chain_bytes, self.settings.max_chain_items)

    async def close(self) -> None:
        """Stop the jobs (stored as failed), then close the registry, cache, token statistics (their
        last write) and store. Writes still being retried are given up (the next start marks their
        rows failed)."""
        try:
            await self.jobs.shutdown()
            if self.cluster is not None:
                await self.cluster.close()
            for response_id, task in list(self.retrying.items()):
                task.cancel()
                log.error("response %s: its final state was never stored; the next start marks it failed",
                          response_id)
            self.retrying.clear()
        finally:
            try:
                await self.registry.close()
                await self.files.close()
                if self.cache is not None:
                    await self.cache.close()
            finally:
                try:
                    await self.token_stats.stop()  # its last write, before the store closes
                finally:
                    await self.store.close()


def _file_settings(settings: Settings) -> tuple[list[str], int, float]:
    return settings.file_url_allowed_hosts, settings.file_url_max_bytes, settings.file_url_timeout


#: Settings a running gateway keeps until it restarts (from ``header_timeout`` on: the HTTP server's).
RESTART_ONLY = ("db_path", "store_url", "redis_url", "cache_redis_url", "replica_lease", "cache_enabled",
                "cache_backend", "cache_db_path", "cache_ttl", "cache_max_entries", "cache_similarity",
                "cache_history_weight", "reasoning_encryption_key",
                "header_timeout", "max_connections", "keep_alive_timeout", "websocket_ping_interval",
                "websocket_ping_timeout")


class StartupError(RuntimeError):
    """The gateway cannot start; the message names the file or key at fault."""


@contextmanager
def _naming(what: str) -> Iterator[None]:
    """Turn an OS or store failure inside into a :class:`StartupError` naming ``what``."""
    try:
        yield
    except (OSError, *STORE_ERRORS) as exc:
        raise StartupError(f"cannot open {what}: {exc}") from None


async def open_gateway(settings: Settings, calls: BackendCalls) -> Gateway:
    """Open everything a gateway needs for ``settings``, its store at ``settings.store_location``.

    Raises :class:`StoreInUse` (another process has the SQLite store), :class:`StartupError`
    naming the store, cache or key file that cannot be opened (what was opened is closed
    again); the registry's first discovery never raises (unreachable endpoints are recorded).
    """
    url = settings.store_location
    path = sqlite_path(url)
    with _naming(f"the store {path} (db_path)" if path is not None else "the PostgreSQL store (store_url)"):
        store = await open_store(url)
    registry: Registry | None = None
    try:
        with _naming(f"the reasoning key beside the store {path}" if path is not None else "the reasoning key"):
            seal = ReasoningSeal(await _reasoning_key(settings, store, path))
        moved = await store.reassign_owners({key_tag(key): tag for key, tag in settings.key_owners.items()
                                             if tag.startswith("tenant:")})
        if moved:
            log.info("%d stored response(s) of keys now in tenants belong to those tenants", moved)
        if not store.shared:
            await _end_previous_process(store)
        registry = Registry(settings)
        await registry.start()
        with _naming(f"the response cache {settings.cache_db_path} (cache_db_path)"
                     if settings.cache_backend == "sqlite" else "the response cache"):
            cache = await open_llm_cache(settings)
        _log_summary(settings, store, registry, cache)
    except BaseException:
        if registry is not None:
            await registry.close()
        await store.close()
        raise
    gateway = Gateway(settings=settings, store=store, registry=registry, cache=cache, calls=calls, seal=seal)
    gateway.token_stats.start(store)
    watch_gateway(gateway.gauges)
    try:
        if store.shared:
            gateway.cluster = Cluster(gateway)
            with _naming("the PostgreSQL store (store_url)"):
                await gateway.cluster.start()  # takes over dead replicas, runs their queued jobs
        resumed = await gateway.jobs.resume_queued()
    except BaseException:
        await gateway.close()
        raise
    if resumed:
        log.info("resumed %d background response(s) left queued by the previous process", resumed)
    return gateway


async def _reasoning_key(settings: Settings, store: Store, path: str | None) -> bytes:
    """The reasoning key: from the setting, else the file beside a SQLite store, else the one
    every replica of a shared store reads from it."""
    if settings.reasoning_encryption_key or path is not None:
        return load_or_create_key(settings.reasoning_encryption_key, path or "")
    return await store.shared_secret("reasoning_key", make_key)


async def _end_previous_process(store: Store) -> None:
    """What a stopped process left of its turns (one process per SQLite store): running ones
    failed, their conversations freed (its queued background jobs are resumed)."""
    orphans = await store.fail_orphaned_responses(closing_events)
    if orphans:
        log.warning("marked %d response(s) left unfinished by a previous process as failed", orphans)
    freed = await store.free_stale_conversations()
    if freed:
        log.warning("freed %d conversation(s) held by turns of a previous process", freed)


def _log_summary(settings: Settings, store: Store, registry: Registry, cache: LLMCache | None) -> None:
    """What was loaded, one line each: the config file, every endpoint (reachable or why not,
    and its models), the store, the cache, authentication and the main limits."""
    log.info("config: %s", os.environ.get("NOMYO_ROUTER_CONFIG_PATH") or "config.yaml (or defaults)")
    for ep in registry.endpoints.values():
        if ep.reachable:
            log.info("endpoint %s (%s): reachable, models: %s", ep.url, ep.kind, ", ".join(sorted(ep.models)) or "none")
        else:
            log.warning("endpoint %s (%s): NOT reachable: %s", ep.url, ep.kind, ep.last_error)
    if not registry.endpoints:
        log.warning("no endpoints are configured: every model request will be a 404")
    log.info("store: %s%s", store.describe(), f" (shared; this replica: {store.replica})" if store.shared else "")
    if store.shared and not settings.redis_url:
        log.warning("redis_url is not set: each replica counts its own max_concurrent_connections slots")
    log.info("cache: %s", f"{settings.cache_backend} ({settings.cache_db_path})" if cache is not None and
             settings.cache_backend == "sqlite" else settings.cache_backend if cache is not None else "off")
    tenants = len(settings.tenants)
    keys = len(settings.router_api_keys)
    log.info("auth: %s; admin key %s", f"{keys} key(s), {tenants} named tenant(s)" if keys else
             "OFF (no router key: anyone who reaches the port is served)",
             "set" if settings.admin_api_key else "not set")
    log.info("limits: max_concurrent_connections %d per endpoint and model, queue_timeout %gs, "
             "request_timeout %gs, max_body_bytes %d, max_background_jobs %d", settings.max_concurrent_connections,
             settings.queue_timeout, settings.request_timeout, settings.max_body_bytes, settings.max_background_jobs)
