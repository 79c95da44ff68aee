"""The LLM response cache: whole answers, opt-in per request, matched exactly or by meaning.

A key covers the route, the model, the full message list and every option that changes
the answer; values are the serialized answer (bytes). With ``cache_similarity`` below 1 a
request that has no exact entry may take the answer of a similar one of its namespace
(``cache_semantic.py``: same route, model, system prompt and options; the embedding model
in ``embedding.py``). Models named ``moe-*`` are never cached (NOMYO Router's rule: their
answers are not meant to repeat).

Three backends: a bounded in-memory LRU, SQLite (aiosqlite) for a cache that survives
restarts, and Redis for one cache every replica shares; each keeps an entry's namespace
and vector beside it, so a search reads its own namespace only. Entries live ``ttl``
seconds (None: until evicted) and at most ``max_entries`` are kept.
``open_llm_cache(settings)`` makes the one the configuration asks for; the gateway keeps
it. A cache never fails a request: the Redis one answers a miss, and stores nothing, while
its Redis cannot be reached, and a failing encoder makes a lookup exact-only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson
from redis.exceptions import RedisError

from config import Settings
from embedding import EncoderUnavailable, install_hint, missing
from slots import redis_client, safe_redis_url

if TYPE_CHECKING:
    from cache_semantic import Probe, SemanticIndex

__all__ = ["MemoryCache", "SQLiteCache", "RedisCache", "LLMCache", "CacheUnavailable", "cache_key", "bypasses",
           "open_llm_cache", "get_llm_cache"]

log = logging.getLogger("nomyo_router.cache")

#: Semantic candidates tried, best first, when the best ones have expired meanwhile.
_CANDIDATES = 3


class CacheUnavailable(RuntimeError):
    """The cache's store cannot be cleared now (its Redis is down): raised by ``invalidate()``
    only; lookups and writes never raise."""


def cache_key(route: str, model: str, messages: list, options: dict | None = None) -> str:
    """SHA-256 hex digest of the canonical JSON of ``[route, model, messages, options]``.

    ``options`` None and ``{}`` give the same key, so a plain request keeps the key
    NOMYO Router gave it.
    """
    blob = orjson.dumps([route, model, messages, options or {}], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def bypasses(model: str) -> bool:
    """Whether ``model`` is never cached: NOMYO Router's ``moe-*`` models."""
    return isinstance(model, str) and model.startswith("moe-")


class _Cache:
    """What every backend shares: lookups (exact, then by meaning), writes, counters, stats.

    ``ttl`` seconds an entry is served (None: until evicted), ``max_entries`` kept,
    ``semantic`` the matching rules when ``cache_similarity`` is below 1 (None: exact only).
    A backend supplies the storage: ``_get``, ``_put``, ``_candidates``, ``_count``, ``_clear``.
    """

    backend = ""

    def __init__(self, ttl: float | None, max_entries: int, semantic: SemanticIndex | None = None):
        self.ttl = ttl
        self.max_entries = max_entries
        self.semantic = semantic
        self.hits = 0
        self.misses = 0
        self.semantic_hits = 0
        self._encoder_failing = False

    def _expires(self, now: float) -> float:
        return math.inf if self.ttl is None else now + self.ttl

    async def get_chat(self, route: str, model: str, messages: list, options: dict | None = None) -> bytes | None:
        """The cached value for this request, or None: its exact entry, else (semantic) the
        most similar entry of its namespace at ``cache_similarity`` or above. ``moe-*``
        models are not looked up (and not counted)."""
        if bypasses(model):
            return None
        value = await self._get(cache_key(route, model, messages, options))
        if value is None and self.semantic is not None:
            value = await self._nearest(route, model, messages, options)
            if value is not None:
                self.semantic_hits += 1
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value

    async def set_chat(self, route: str, model: str, messages: list, value: bytes,
                       options: dict | None = None) -> None:
        """Store ``value`` for this request; with semantic matching, also its namespace and
        vector, unless the answer holds personal data (``cache_semantic``). Past
        ``max_entries`` the oldest go first. ``moe-*`` models are not stored."""
        if bypasses(model):
            return
        probe = None
        if self.semantic is not None and await self.semantic.shareable_answer(value):
            probe = await self._probe(route, model, messages, options)
        await self._put(cache_key(route, model, messages, options), value, probe)

    def _semantic_failed(self, exc: Exception) -> None:
        (log.debug if self._encoder_failing else log.warning)(
            "the semantic cache's encoder failed (%s: %s): exact matching only meanwhile", type(exc).__name__, exc)
        self._encoder_failing = True

    async def _probe(self, route: str, model: str, messages: list, options: dict | None) -> Probe | None:
        try:
            probe = await self.semantic.probe(route, model, messages, options)
        except Exception as exc:  # the encoder must never fail a request: match exactly meanwhile
            self._semantic_failed(exc)
            return None
        self._encoder_failing = False
        return probe

    async def _nearest(self, route: str, model: str, messages: list, options: dict | None) -> bytes | None:
        probe = await self._probe(route, model, messages, options)
        if probe is None:
            return None
        candidates = await self._candidates(probe.namespace)
        try:
            ranked = await self.semantic.ranked(candidates, probe.vector)
        except Exception as exc:
            self._semantic_failed(exc)
            return None
        for key, similarity in ranked[:_CANDIDATES]:
            value = await self._get(key)
            if value is not None:
                log.debug("semantic cache hit (similarity %.3f) for model %s", similarity, model)
                return value
            await self._forget(probe.namespace, key)
        return None

    async def stats(self) -> dict:
        """Counters and settings, close to NOMYO Router's ``/api/cache/stats``: ``hits``
        (semantic ones included), ``misses``, ``hit_rate`` (0..1, 3 places), ``semantic_hits``,
        ``semantic`` (whether matching by meaning is on), ``similarity_threshold``,
        ``history_weight``, ``backend``, ``entries`` (held now; None when the store cannot be
        asked), ``max_entries``, ``ttl`` (seconds, None: no expiry). Counters are this process's."""
        total = self.hits + self.misses
        return {"backend": self.backend, "hits": self.hits, "misses": self.misses,
                "hit_rate": round(self.hits / total, 3) if total else 0.0, "semantic_hits": self.semantic_hits,
                "semantic": self.semantic is not None,
                "similarity_threshold": self.semantic.similarity if self.semantic is not None else 1.0,
                "history_weight": self.semantic.history_weight if self.semantic is not None else None,
                "entries": await self._count(), "max_entries": self.max_entries, "ttl": self.ttl}

    async def invalidate(self) -> int | None:
        """Drop every entry and zero the counters; returns how many entries there were (None:
        not known). Raises :class:`CacheUnavailable` when the store cannot be asked."""
        entries = await self._count()
        await self._clear()
        self.hits = self.misses = self.semantic_hits = 0
        return entries

    async def close(self) -> None:
        """Release the store and the encoder's thread."""
        if self.semantic is not None:
            self.semantic.close()
        await self._close()

    # ── storage, per backend ───────────────────────────────────────────────────
    async def _get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def _put(self, key: str, value: bytes, probe: Probe | None) -> None:
        raise NotImplementedError

    async def _candidates(self, namespace: str) -> list[tuple[str, bytes]]:
        raise NotImplementedError

    async def _forget(self, namespace: str, key: str) -> None:
        """Drop the vector of ``key`` (its entry is gone)."""

    async def _count(self) -> int | None:
        raise NotImplementedError

    async def _clear(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Nothing to release."""


class MemoryCache(_Cache):
    """In-process LRU cache: at most ``max_entries`` values, each for ``ttl`` seconds (None: no
    expiry), vectors kept per namespace beside them."""

    backend = "memory"

    def __init__(self, ttl: float | None, max_entries: int, semantic: SemanticIndex | None = None):
        super().__init__(ttl, max_entries, semantic)
        #: key -> (expires at, on the monotonic clock; value; namespace or None)
        self._data: OrderedDict[str, tuple[float, bytes, str | None]] = OrderedDict()
        self._spaces: dict[str, dict[str, bytes]] = {}

    def _remove(self, key: str) -> None:
        _, _, namespace = self._data.pop(key)
        if namespace is not None:
            space = self._spaces.get(namespace, {})
            space.pop(key, None)
            if not space:
                self._spaces.pop(namespace, None)

    async def _get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return entry[1]

    async def _put(self, key: str, value: bytes, probe: Probe | None) -> None:
        if key in self._data:
            self._remove(key)
        self._data[key] = (self._expires(time.monotonic()), value, probe.namespace if probe else None)
        if probe is not None:
            self._spaces.setdefault(probe.namespace, {})[key] = probe.vector
        while len(self._data) > self.max_entries:
            self._remove(next(iter(self._data)))

    async def _candidates(self, namespace: str) -> list[tuple[str, bytes]]:
        return list(self._spaces.get(namespace, {}).items())

    async def _count(self) -> int:
        now = time.monotonic()
        for key in [key for key, entry in self._data.items() if entry[0] < now]:
            self._remove(key)
        return len(self._data)

    async def _clear(self) -> None:
        self._data.clear()
        self._spaces.clear()


class SQLiteCache(_Cache):
    """Cache in a SQLite file; entries expire after ``ttl`` seconds (wall clock; None: never).
    Each row keeps its namespace and vector (columns), indexed by namespace."""

    backend = "sqlite"

    def __init__(self, path: str, ttl: float | None, max_entries: int, semantic: SemanticIndex | None = None):
        super().__init__(ttl, max_entries, semantic)
        self.path = path
        self.conn: aiosqlite.Connection | None = None

    async def open(self) -> "SQLiteCache":
        """Open the file, create (or extend) the table, drop expired entries."""
        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self.conn.execute("CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, "
                                "expires_at REAL NOT NULL, value BLOB NOT NULL)")
        columns = {row[1] for row in await (await self.conn.execute("PRAGMA table_info(llm_cache)")).fetchall()}
        for column, kind in (("namespace", "TEXT"), ("vector", "BLOB"), ("written_at", "REAL")):
            if column not in columns:  # a file written before semantic matching
                await self.conn.execute(f"ALTER TABLE llm_cache ADD COLUMN {column} {kind}")
        await self.conn.execute("CREATE INDEX IF NOT EXISTS llm_cache_namespace ON llm_cache (namespace) "
                                "WHERE namespace IS NOT NULL")
        await self.conn.execute("CREATE INDEX IF NOT EXISTS llm_cache_written_at ON llm_cache (written_at)")
        await self.conn.execute("DELETE FROM llm_cache WHERE expires_at < ?", (time.time(),))
        return self

    async def _get(self, key: str) -> bytes | None:
        row = await (await self.conn.execute("SELECT value FROM llm_cache WHERE key=? AND expires_at>=?",
                                             (key, time.time()))).fetchone()
        return None if row is None else bytes(row[0])

    async def _put(self, key: str, value: bytes, probe: Probe | None) -> None:
        now = time.time()
        await self.conn.execute(
            "INSERT OR REPLACE INTO llm_cache (key, expires_at, value, namespace, vector, written_at) "
            "VALUES (?,?,?,?,?,?)", (key, self._expires(now), value, probe.namespace if probe else None,
                                     probe.vector if probe else None, now))
        # Rows written before semantic matching have no written_at: they sort last, and go first.
        await self.conn.execute(
            "DELETE FROM llm_cache WHERE key IN (SELECT key FROM llm_cache ORDER BY written_at DESC "
            "LIMIT -1 OFFSET ?)", (self.max_entries,))

    async def _candidates(self, namespace: str) -> list[tuple[str, bytes]]:
        rows = await (await self.conn.execute(
            "SELECT key, vector FROM llm_cache WHERE namespace=? AND vector IS NOT NULL AND expires_at>=?",
            (namespace, time.time()))).fetchall()
        return [(key, bytes(vector)) for key, vector in rows]

    async def _count(self) -> int:
        await self.conn.execute("DELETE FROM llm_cache WHERE expires_at < ?", (time.time(),))
        return (await (await self.conn.execute("SELECT COUNT(*) FROM llm_cache")).fetchone())[0]

    async def _clear(self) -> None:
        await self.conn.execute("DELETE FROM llm_cache")

    async def _close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

# KEYS: [1] the entry, [2] the index (entry keys by write time: the Redis server's clock, in µs),
# [3] each entry's namespace (a hash), [4] the namespace's vectors (a hash; unused without one).
# ARGV: value, ttl ms (0: no expiry), max entries, namespace ('' for none), vector, the key prefix.
# Entries written more than ttl ago have expired (PX): their vectors go (100 at most a write).
# Past max entries the oldest writes are deleted with their vectors.
_REDIS_SET = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, most, namespace, prefix = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[6]
local function forget(key)
  local ns = redis.call('HGET', KEYS[3], key)
  if ns then
    redis.call('HDEL', prefix .. 'ns:' .. ns, key)
    redis.call('HDEL', KEYS[3], key)
  end
end
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000, 'LIMIT', 0, 100)
  for _, key in ipairs(gone) do
    forget(key)
    redis.call('ZREM', KEYS[2], key)
  end
else
  redis.call('SET', KEYS[1], ARGV[1])
end
forget(KEYS[1])
if namespace ~= '' then
  redis.call('HSET', KEYS[4], KEYS[1], ARGV[5])
  redis.call('HSET', KEYS[3], KEYS[1], namespace)
end
redis.call('ZADD', KEYS[2], now, KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - most
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  for _, key in ipairs(old) do
    redis.call('DEL', key)
    forget(key)
  end
end
return excess
"""


class RedisCache(_Cache):
    """Cache in Redis, shared by every replica: entries expire after ``ttl`` seconds (Redis
    ``PX``; None: no expiry), at most ``max_entries`` are kept (the oldest writes go first).

    Keys are ``prefix + cache_key(...)``; the sorted set ``prefix + "index"`` orders them by
    write time; with semantic matching the hash ``prefix + "ns:" + namespace`` holds the
    vectors of a namespace's entries and ``prefix + "namespaces"`` each entry's namespace.
    ``timeout`` bounds each Redis command, in seconds. While Redis cannot be reached,
    ``get_chat`` answers a miss and ``set_chat`` stores nothing; neither raises (the first
    failure of an outage is logged as a warning, its recovery as info). Counters are this
    replica's; the entries are every replica's.
    """

    backend = "redis"

    def __init__(self, url: str, ttl: float | None, max_entries: int, prefix: str = "nomyo-router:cache:",
                 timeout: float = 5.0, semantic: SemanticIndex | None = None):
        super().__init__(ttl, max_entries, semantic)
        self.url, self.prefix = url, prefix
        self._redis = redis_client(url, timeout)
        self._set = self._redis.register_script(_REDIS_SET)
        self._failing = False

    async def open(self) -> "RedisCache":
        """Check that Redis answers (a warning when not: the cache then misses until it does)."""
        try:
            await self._redis.ping()
            self._failing = False
        except (RedisError, OSError) as exc:
            self._failed("cannot be reached", exc)
        return self

    def _failed(self, what: str, exc: BaseException) -> None:
        (log.debug if self._failing else log.warning)(
            "the response cache's Redis %s %s (%s: %s): the cache misses meanwhile",
            safe_redis_url(self.url), what, type(exc).__name__, exc)
        self._failing = True

    def _ok(self) -> None:
        if self._failing:
            log.info("the response cache's Redis %s answers again", safe_redis_url(self.url))
            self._failing = False

    async def _get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._failed("cannot be read", exc)
            return None
        self._ok()
        return None if value is None else bytes(value)

    async def _put(self, key: str, value: bytes, probe: Probe | None) -> None:
        """One atomic script (see ``_REDIS_SET``); nothing stored, nothing raised, when Redis cannot be asked."""
        key = self.prefix + key
        space = self.prefix + "ns:" + probe.namespace if probe else self.prefix + "ns:"
        ttl = 0 if self.ttl is None else max(1, round(self.ttl * 1000))
        try:
            await self._set(keys=[key, self.prefix + "index", self.prefix + "namespaces", space],
                            args=[value, ttl, self.max_entries, probe.namespace if probe else "",
                                  probe.vector if probe else b"", self.prefix])
        except (RedisError, OSError) as exc:
            self._failed("cannot be written", exc)
        else:
            self._ok()

    async def _candidates(self, namespace: str) -> list[tuple[str, bytes]]:
        try:
            rows = await self._redis.hgetall(self.prefix + "ns:" + namespace)
        except (RedisError, OSError) as exc:
            self._failed("cannot be read", exc)
            return []
        found = []
        for field, vector in rows.items():  # the fields are whole entry keys: prefix + cache_key
            key = field.decode() if isinstance(field, bytes) else field
            found.append((key[len(self.prefix):], bytes(vector)))
        return found

    async def _forget(self, namespace: str, key: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                key = self.prefix + key
                await pipe.hdel(self.prefix + "ns:" + namespace, key).hdel(self.prefix + "namespaces", key).execute()
        except (RedisError, OSError) as exc:
            self._failed("cannot be written", exc)

    async def _count(self) -> int | None:
        try:
            seconds, micros = await self._redis.time()
            low = "-inf" if self.ttl is None else (seconds * 1_000_000 + micros) - self.ttl * 1_000_000
            return await self._redis.zcount(self.prefix + "index", low, "+inf")
        except (RedisError, OSError) as exc:
            self._failed("cannot be read", exc)
            return None

    async def _clear(self) -> None:
        try:
            batch = []
            async for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self._redis.unlink(*batch)
                    batch = []
            if batch:
                await self._redis.unlink(*batch)
        except (RedisError, OSError) as exc:
            self._failed("cannot be cleared", exc)
            raise CacheUnavailable(f"the response cache's Redis {safe_redis_url(self.url)} cannot be cleared: "
                                   f"{type(exc).__name__}: {exc}") from None

    async def _close(self) -> None:
        await self._redis.aclose()

LLMCache = MemoryCache | SQLiteCache | RedisCache


async def _semantic_index(settings: Settings) -> SemanticIndex | None:
    """The semantic matching rules of ``settings`` (None with ``cache_similarity`` 1), the
    encoder loaded on a thread. Raises :class:`embedding.EncoderUnavailable` saying what to install."""
    if settings.cache_similarity >= 1:
        return None
    absent = missing()
    if absent:
        raise EncoderUnavailable(f"cache_similarity {settings.cache_similarity} needs the semantic cache's "
                                 f"encoder (missing: {', '.join(absent)}): {install_hint()}")
    from cache_semantic import SemanticIndex
    from embedding import load_encoder
    encoder = await asyncio.to_thread(load_encoder)
    log.info("cache: matching by meaning at similarity %g or above, history weight %g (all-MiniLM-L6-v2, "
             "%d dimensions, on the CPU)", settings.cache_similarity, settings.cache_history_weight, encoder.dimensions)
    return SemanticIndex(encoder, settings.cache_similarity, settings.cache_history_weight)


async def open_llm_cache(settings: Settings) -> LLMCache | None:
    """The cache ``settings`` ask for (None when ``cache_enabled`` is false); close it with
    ``close()``. Raises :class:`embedding.EncoderUnavailable` (an ``OSError``) when semantic
    matching is asked and its encoder is not installed, and what opening SQLite raises."""
    if not settings.cache_enabled:
        return None
    semantic = await _semantic_index(settings)
    ttl, most = settings.cache_ttl, settings.cache_max_entries
    try:
        if settings.cache_backend == "sqlite":
            return await SQLiteCache(settings.cache_db_path, ttl, most, semantic).open()
        if settings.cache_backend == "redis":
            return await RedisCache(settings.cache_redis, ttl, most, semantic=semantic).open()
        return MemoryCache(ttl, most, semantic)
    except BaseException:
        if semantic is not None:
            semantic.close()
        raise


def get_llm_cache(gateway: Any) -> LLMCache | None:
    """The LLM cache of ``gateway`` (its ``cache``), or None when caching is off."""
    return gateway.cache
