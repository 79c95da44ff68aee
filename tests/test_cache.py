"""cache.py: keys, the memory LRU with TTL, the SQLite cache across reopening, and the Redis
cache two replicas share (against the real Redis at 127.0.0.1:6379, each test under its own
key prefix, deleted afterwards)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from cache import MemoryCache, RedisCache, SQLiteCache, cache_key, open_llm_cache
from config import Settings
from tests.conftest import REDIS


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


async def test_redis_cache_is_shared_by_replicas(redis_prefix):
    one = await RedisCache(REDIS, ttl=60, max_entries=10, prefix=redis_prefix).open()
    two = await RedisCache(REDIS, ttl=60, max_entries=10, prefix=redis_prefix).open()
    try:
        assert await two.get_chat("r", "m", MSGS) is None
        await one.set_chat("r", "m", MSGS, b"answer", {"temperature": 0})
        assert await two.get_chat("r", "m", MSGS, {"temperature": 0}) == b"answer"
        assert await two.get_chat("r", "m", MSGS) is None              # other options: another key
        assert (two.hits, two.misses) == (1, 2) and (one.hits, one.misses) == (0, 0)
    finally:
        await one.close()
        await two.close()


async def test_redis_cache_entries_expire_after_ttl(redis_prefix):
    cache = RedisCache(REDIS, ttl=1.5, max_entries=10, prefix=redis_prefix)
    client = aioredis.Redis.from_url(REDIS)
    try:
        await cache.set_chat("r", "m", MSGS, b"soon gone")
        pttl = await client.pttl(redis_prefix + cache_key("r", "m", MSGS))
        assert 0 < pttl <= 1500                                         # a float ttl, in ms
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await cache.get_chat("r", "m", MSGS) is not None:
            assert loop.time() < deadline, "the entry never expired"
            await asyncio.sleep(0.1)
    finally:
        await cache.close()
        await client.aclose()


async def test_redis_cache_drops_the_oldest_past_max_entries(redis_prefix):
    one = RedisCache(REDIS, ttl=60, max_entries=2, prefix=redis_prefix)
    two = RedisCache(REDIS, ttl=60, max_entries=2, prefix=redis_prefix)
    try:
        await one.set_chat("r", "m", [0], b"v0")
        await two.set_chat("r", "m", [1], b"v1")
        await one.set_chat("r", "m", [0], b"v0 again")                  # a rewrite is the newest
        await two.set_chat("r", "m", [2], b"v2")                        # drops [1], the oldest write
        assert await one.get_chat("r", "m", [1]) is None
        assert await one.get_chat("r", "m", [0]) == b"v0 again"
        assert await one.get_chat("r", "m", [2]) == b"v2"
        client = aioredis.Redis.from_url(REDIS)
        try:
            assert await client.zcard(redis_prefix + "index") == 2
        finally:
            await client.aclose()
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_redis_cache_misses_and_never_raises(caplog):
    cache = await RedisCache("redis://127.0.0.1:1", ttl=60, max_entries=10).open()
    try:
        await cache.set_chat("r", "m", MSGS, b"lost")
        assert await cache.get_chat("r", "m", MSGS) is None
        assert await cache.get_chat("r", "m", MSGS) is None
        assert (cache.hits, cache.misses) == (0, 2)
    finally:
        await cache.close()
    assert any("127.0.0.1:1" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


async def test_open_llm_cache_makes_the_redis_cache():
    settings = Settings(cache_enabled=True, cache_backend="redis", redis_url="redis://127.0.0.1:6379/1",
                        cache_ttl=5, cache_max_entries=3)
    cache = await open_llm_cache(settings)
    try:
        assert isinstance(cache, RedisCache)
        assert (cache.url, cache.ttl, cache.max_entries) == ("redis://127.0.0.1:6379/1", 5, 3)
    finally:
        await cache.close()
    cache = await open_llm_cache(settings.model_copy(update={"cache_redis_url": REDIS}))
    try:
        assert isinstance(cache, RedisCache) and cache.url == REDIS        # cache_redis_url comes first
    finally:
        await cache.close()
