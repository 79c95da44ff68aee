"""The LLM response cache: exact-match, whole responses, opt-in per request.

A key covers the route, the model, the full message list and every option
that changes the answer; values are the serialized Response object (bytes).
Two backends: a bounded in-memory LRU with TTL, and SQLite (aiosqlite) for a
cache that survives restarts. ``open_llm_cache(settings)`` makes the one the
configuration asks for; the gateway keeps it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

import aiosqlite
import orjson

from config import Settings

__all__ = ["MemoryCache", "SQLiteCache", "LLMCache", "cache_key", "open_llm_cache", "get_llm_cache"]


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


LLMCache = MemoryCache | SQLiteCache


async def open_llm_cache(settings: Settings) -> LLMCache | None:
    """The cache ``settings`` ask for (None when ``cache_enabled`` is false); close it with ``close()``."""
    if not settings.cache_enabled:
        return None
    if settings.cache_backend == "sqlite":
        return await SQLiteCache(settings.cache_db_path, settings.cache_ttl, settings.cache_max_entries).open()
    return MemoryCache(settings.cache_ttl, settings.cache_max_entries)


def get_llm_cache(gateway: Any) -> LLMCache | None:
    """The LLM cache of ``gateway`` (its ``cache``), or None when caching is off."""
    return gateway.cache
