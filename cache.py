"""The LLM response cache: exact-match, whole responses, opt-in per request.

A key covers the route, the model, the full message list and every option
that changes the answer; values are the serialized Response object (bytes).
Three backends: a bounded in-memory LRU with TTL, SQLite (aiosqlite) for a
cache that survives restarts, and Redis for one cache every replica shares.
``open_llm_cache(settings)`` makes the one the configuration asks for; the
gateway keeps it. A cache never fails a request: the Redis one answers a miss,
and stores nothing, while its Redis cannot be reached.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import aiosqlite
import orjson
from redis.exceptions import RedisError

from config import Settings
from slots import redis_client, safe_redis_url

__all__ = ["MemoryCache", "SQLiteCache", "RedisCache", "LLMCache", "cache_key", "open_llm_cache",
           "get_llm_cache"]

log = logging.getLogger("nomyo_router.cache")


def cache_key(route: str, model: str, messages: list, options: dict | None = None) -> str:
    """SHA-256 hex digest of the canonical JSON of ``[route, model, messages, options]``.

    ``options`` None and ``{}`` give the same key, so a plain request keeps the key
    NOMYO Router gave it.
    """
    blob = orjson.dumps([route, model, messages, options or {}], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class MemoryCache:
    """In-process LRU cache: at most ``max_entries`` values, each for ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int):
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get_chat(self, route: str, model: str, messages: list, options: dict | None = None) -> bytes | None:
        """The cached value for this request, or None (expired entries are dropped)."""
        key = cache_key(route, model, messages, options)
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            if entry is not None:
                del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[1]

    async def set_chat(self, route: str, model: str, messages: list, value: bytes,
                       options: dict | None = None) -> None:
        """Store ``value``; evicts the least recently used entry past ``max_entries``."""
        key = cache_key(route, model, messages, options)
        self._data[key] = (time.monotonic() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release."""


class SQLiteCache:
    """Cache in a SQLite file; entries expire after ``ttl`` seconds (wall clock)."""

    def __init__(self, path: str, ttl: float, max_entries: int):
        self.path = path
        self.ttl = ttl
        self.max_entries = max_entries
        self.conn: aiosqlite.Connection | None = None
        self.hits = 0
        self.misses = 0

    async def open(self) -> "SQLiteCache":
        """Open the file, create the table, drop expired entries."""
        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self.conn.execute("CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, "
                                "expires_at REAL NOT NULL, value BLOB NOT NULL)")
        await self.conn.execute("DELETE FROM llm_cache WHERE expires_at < ?", (time.time(),))
        return self

    async def get_chat(self, route: str, model: str, messages: list, options: dict | None = None) -> bytes | None:
        """The cached value for this request, or None."""
        key = cache_key(route, model, messages, options)
        row = await (await self.conn.execute("SELECT value FROM llm_cache WHERE key=? AND expires_at>=?",
                                             (key, time.time()))).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return bytes(row[0])

    async def set_chat(self, route: str, model: str, messages: list, value: bytes,
                       options: dict | None = None) -> None:
        """Store ``value``; past ``max_entries`` the entries nearest expiry go first."""
        key = cache_key(route, model, messages, options)
        await self.conn.execute("INSERT OR REPLACE INTO llm_cache VALUES (?,?,?)",
                                (key, time.time() + self.ttl, value))
        await self.conn.execute(
            "DELETE FROM llm_cache WHERE key IN (SELECT key FROM llm_cache ORDER BY expires_at DESC "
            "LIMIT -1 OFFSET ?)", (self.max_entries,))

    async def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


# KEYS[1] the entry, KEYS[2] the index (entry keys by write time: the Redis server's clock, in µs);
# ARGV value, ttl ms, max entries. Past max entries the oldest writes are deleted.
_REDIS_SET = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, most = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - most
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  for _, key in ipairs(old) do redis.call('DEL', key) end
end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return excess
"""


class RedisCache:
    """Cache in Redis, shared by every replica: entries expire after ``ttl`` seconds (Redis
    ``PX``), at most ``max_entries`` are kept (the oldest writes go first).

    Keys are ``prefix + cache_key(...)``; the sorted set ``prefix + "index"`` orders them by
    write time. ``timeout`` bounds each Redis command, in seconds. While Redis cannot be
    reached, ``get_chat`` answers a miss and ``set_chat`` stores nothing; neither raises (the
    first failure of an outage is logged as a warning, its recovery as info).
    """

    def __init__(self, url: str, ttl: float, max_entries: int, prefix: str = "nomyo-router:cache:",
                 timeout: float = 5.0):
        self.url, self.ttl, self.max_entries, self.prefix = url, ttl, max_entries, prefix
        self._redis = redis_client(url, timeout)
        self._set = self._redis.register_script(_REDIS_SET)
        self._failing = False
        self.hits = 0
        self.misses = 0

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

    async def get_chat(self, route: str, model: str, messages: list, options: dict | None = None) -> bytes | None:
        """The cached value for this request, or None (also when Redis cannot be asked)."""
        try:
            value = await self._redis.get(self.prefix + cache_key(route, model, messages, options))
        except (RedisError, OSError) as exc:
            self._failed("cannot be read", exc)
            value = None
        else:
            self._ok()
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return bytes(value)

    async def set_chat(self, route: str, model: str, messages: list, value: bytes,
                       options: dict | None = None) -> None:
        """Store ``value`` for ``ttl`` s; past ``max_entries`` the oldest writes are deleted
        (one atomic script). Nothing is stored, and nothing raised, when Redis cannot be asked."""
        key = self.prefix + cache_key(route, model, messages, options)
        try:
            await self._set(keys=[key, self.prefix + "index"],
                            args=[value, max(1, round(self.ttl * 1000)), self.max_entries])
        except (RedisError, OSError) as exc:
            self._failed("cannot be written", exc)
        else:
            self._ok()

    async def close(self) -> None:
        """Close the connections."""
        await self._redis.aclose()


LLMCache = MemoryCache | SQLiteCache | RedisCache


async def open_llm_cache(settings: Settings) -> LLMCache | None:
    """The cache ``settings`` ask for (None when ``cache_enabled`` is false); close it with ``close()``."""
    if not settings.cache_enabled:
        return None
    if settings.cache_backend == "sqlite":
        return await SQLiteCache(settings.cache_db_path, settings.cache_ttl, settings.cache_max_entries).open()
    if settings.cache_backend == "redis":
        return await RedisCache(settings.cache_redis, settings.cache_ttl, settings.cache_max_entries).open()
    return MemoryCache(settings.cache_ttl, settings.cache_max_entries)


def get_llm_cache(gateway: Any) -> LLMCache | None:
    """The LLM cache of ``gateway`` (its ``cache``), or None when caching is off."""
    return gateway.cache
