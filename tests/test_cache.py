"""cache.py: keys, the memory LRU with TTL, and the SQLite cache across reopening."""

from __future__ import annotations

import asyncio

from cache import MemoryCache, SQLiteCache, cache_key

MSGS = [{"role": "user", "content": "hi"}]


def test_key_covers_route_model_messages_and_options():
    base = cache_key("r", "m", MSGS)
    assert base == cache_key("r", "m", MSGS, {})
    assert base != cache_key("r2", "m", MSGS)
    assert base != cache_key("r", "m2", MSGS)
    assert base != cache_key("r", "m", MSGS + [{"role": "user", "content": "more"}])
    assert base != cache_key("r", "m", MSGS, {"temperature": 0.1})
    assert cache_key("r", "m", MSGS, {"a": 1, "b": 2}) == cache_key("r", "m", MSGS, {"b": 2, "a": 1})


async def test_memory_lru_and_ttl():
    cache = MemoryCache(ttl=0.2, max_entries=2)
    await cache.set_chat("r", "m", [1], b"one")
    await cache.set_chat("r", "m", [2], b"two")
    assert await cache.get_chat("r", "m", [1]) == b"one"       # 1 is now the most recent
    await cache.set_chat("r", "m", [3], b"three")              # evicts 2
    assert await cache.get_chat("r", "m", [2]) is None
    assert await cache.get_chat("r", "m", [1]) == b"one"
    await asyncio.sleep(0.25)
    assert await cache.get_chat("r", "m", [1]) is None
    assert cache.hits == 2 and cache.misses == 2


async def test_sqlite_cache_survives_reopening(tmp_path):
    path = str(tmp_path / "c.db")
    cache = await SQLiteCache(path, ttl=60, max_entries=2).open()
    for n in range(3):
        await cache.set_chat("r", "m", [n], f"v{n}".encode())
    await cache.close()
    cache = await SQLiteCache(path, ttl=60, max_entries=2).open()
    assert await cache.get_chat("r", "m", [2]) == b"v2"
    assert await cache.get_chat("r", "m", [0]) is None         # past max_entries
    await cache.close()
    expired = await SQLiteCache(path, ttl=-1, max_entries=5).open()
    await expired.set_chat("r", "m", [9], b"x")
    assert await expired.get_chat("r", "m", [9]) is None
    await expired.close()
