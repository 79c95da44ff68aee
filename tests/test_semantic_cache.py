"""The semantic cache (``cache_similarity`` below 1): the real all-MiniLM-L6-v2 encoder in numpy
(``embedding.py``), the matching rules (``cache_semantic.py``) on the three backends, and
through the gateway over the scripted Ollama server, with the cache's management routes.

Without the weights package these tests skip, saying what to install, unless
``NOMYO_E2E_REQUIRED=1`` (``scripts/test.sh``), where they fail instead."""

from __future__ import annotations

import asyncio
import math
import os
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from cache import MemoryCache, RedisCache, SQLiteCache, cache_key
from embedding import install_hint, missing
from tests.conftest import REDIS

CAPITAL = "What is the capital of France?"
PARAPHRASE = "Can you tell me the capital city of France?"
UNRELATED = "How do I bake sourdough bread?"
#: The first components of CAPITAL's embedding as Hugging Face transformers' BertModel computes
#: them (torch, float32) from the same weights, mean pooled over the mask and normalised.
CAPITAL_REFERENCE = [0.082048, 0.036055, -0.003893, -0.004881, 0.025651, -0.057143]
#: A Redis database the other tests leave alone, for gateways whose cache has the default prefix.
GATEWAY_REDIS = REDIS.rsplit("/", 1)[0] + "/13"


def requires_encoder() -> None:
    """Skip (or, with ``NOMYO_E2E_REQUIRED=1``, fail) when the encoder is not installed."""
    absent = missing()
    if absent:
        message = f"the semantic cache's encoder is not installed (missing: {', '.join(absent)}): {install_hint()}"
        if os.environ.get("NOMYO_E2E_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _encoder_installed():
    requires_encoder()


@pytest.fixture(scope="module")
def encoder():
    requires_encoder()
    from embedding import load_encoder
    return load_encoder()


def index(similarity: float = 0.9, history_weight: float = 0.3):
    from cache_semantic import SemanticIndex
    from embedding import load_encoder
    return SemanticIndex(load_encoder(), similarity, history_weight)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def answer(text: str) -> bytes:
    return ('{"object": "response", "output": [{"type": "message", "content": [{"type": "output_text", '
            f'"text": "{text}"}}]}}]}}').encode()


# ── the encoder ─────────────────────────────────────────────────────────────────
def test_the_encoder_matches_the_reference_implementation(encoder):
    vector = encoder.encode([CAPITAL])[0]
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert np.allclose(vector[:6], CAPITAL_REFERENCE, atol=1e-4)
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)


def test_similarities_of_the_known_sentences(encoder):
    capital, paraphrase, unrelated, again = encoder.encode([CAPITAL, PARAPHRASE, UNRELATED, CAPITAL])
    assert float(capital @ again) == pytest.approx(1.0, abs=1e-5)
    assert 0.88 < float(capital @ paraphrase) < 0.96          # measured: 0.918
    assert float(capital @ unrelated) < 0.3                    # measured: 0.133
    assert float(paraphrase @ unrelated) < 0.3                 # measured: 0.118


def test_a_batch_gives_what_one_text_at_a_time_gives(encoder):
    texts = [CAPITAL, "hi", UNRELATED * 5, PARAPHRASE, "naïve café, 東京"]
    batch = encoder.encode(texts)
    for text, vector in zip(texts, batch):
        assert np.allclose(encoder.encode([text])[0], vector, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_texts_are_cut_at_256_word_pieces(encoder):
    long = " ".join(f"word{n}" for n in range(400))
    cut, longer = encoder.encode([long, long + " and a different ending entirely"])
    assert np.allclose(cut, longer, atol=1e-6)                 # the ending is past the cut
    short, short_longer = encoder.encode(["a short text", "a short text and a different ending entirely"])
    assert float(short @ short_longer) < 0.99


# ── the matching rules ──────────────────────────────────────────────────────────
def test_only_plain_text_conversations_are_matched_by_meaning():
    from cache_semantic import conversation
    talk = conversation([{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use French."},
                         {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                         {"role": "user", "content": [{"type": "input_text", "text": "three"}]}])
    assert (talk.system, talk.history, talk.question) == ("Be brief.\nUse French.", ["one", "two"], "three")
    assert conversation([{"instructions": "Be brief."}, {"type": "message", "role": "user", "content": "q"}]).system \
        == "Be brief."
    assert conversation([{"prompt": "complete me"}]).question == "complete me"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    for refused in ([{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}],
                    user("q") + [{"role": "assistant", "content": "a"}],
                    [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, *user("q")],
                    [{"role": "tool", "content": "42", "tool_call_id": "c"}, *user("q")],
                    [{"type": "function_call_output", "call_id": "c", "output": "42"}, *user("q")],
                    user("   "), [], [{"prompt": ["token", "list"]}]):
        assert conversation(refused) is None, refused


def test_personal_data_is_recognised_in_answers():
    from cache_semantic import holds_personal_data
    for text in ("Write to jane.doe@example.org.", "Your id is 123e4567-e89b-12d3-a456-426614174000.",
                 "Account 1234567890 is open.", "abc." * 20_000 + " then mail jane@example.org"):
        assert holds_personal_data(answer(text)), text
    for text in ("Paris is the capital of France.", "Call 112 in an emergency.", "It costs 1234567.89 euros."):
        assert not holds_personal_data(answer(text)), text
    # numbers outside the answer's text (timestamps, ids) do not count
    assert not holds_personal_data(b'{"created_at": 1767225600000, "id": "resp_0123456789", "output": []}')
    assert holds_personal_data(b"not json")


async def test_history_weighs_into_the_query_vector():
    alone = index(history_weight=0.3)
    none = index(history_weight=0.0)
    try:
        bare = np.frombuffer((await alone.probe("r", "m", user(CAPITAL), None)).vector, dtype=np.float32)
        about_wine = user("Which wines come from Bordeaux?") + [{"role": "assistant", "content": "Many reds."}]
        about_code = user("Fix my Rust borrow checker error.") + [{"role": "assistant", "content": "Use a clone."}]
        wine = np.frombuffer((await alone.probe("r", "m", about_wine + user(CAPITAL), None)).vector, np.float32)
        code = np.frombuffer((await alone.probe("r", "m", about_code + user(CAPITAL), None)).vector, np.float32)
        assert float(wine @ bare) < 0.97 and float(code @ bare) < 0.97
        assert float(wine @ code) < float(wine @ bare)
        ignored = np.frombuffer((await none.probe("r", "m", about_wine + user(CAPITAL), None)).vector, np.float32)
        assert np.allclose(ignored, bare, atol=1e-6)               # history_weight 0: the question alone
        unit = np.eye(3, dtype=np.float32)
        weights = alone.query_vector(unit[0], unit[1:])
        assert weights[2] > weights[1] > 0                         # the newer earlier message weighs more
    finally:
        alone.close()
        none.close()


# ── the three backends ──────────────────────────────────────────────────────────
@pytest.fixture(params=["memory", "sqlite", "redis"])
async def semantic_cache(request, tmp_path):
    """``make(ttl, max_entries, similarity)``: a semantic cache of each backend in turn, each
    one its own (a file, a Redis key prefix of its own); closed and deleted afterwards."""
    made = []

    async def make(ttl: float | None = 60, max_entries: int = 100, similarity: float = 0.9):
        if request.param == "memory":
            cache = MemoryCache(ttl, max_entries, index(similarity))
        elif request.param == "sqlite":
            cache = await SQLiteCache(str(tmp_path / f"c{len(made)}.db"), ttl, max_entries, index(similarity)).open()
        else:
            cache = await RedisCache(REDIS, ttl, max_entries, prefix=f"{prefix}{len(made)}:",
                                     semantic=index(similarity)).open()
        made.append(cache)
        return cache

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    if request.param == "redis":
        client = aioredis.Redis.from_url(REDIS)
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            from tests.conftest import _unreachable
            _unreachable(f"Redis at {REDIS}", exc)
    yield make
    for cache in made:
        await cache.close()
    if request.param == "redis":
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_paraphrase_is_a_semantic_hit_on_every_backend(semantic_cache):
    cache = await semantic_cache()
    await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) == answer("Paris.")
    assert await cache.get_chat("r", "m", user(UNRELATED)) is None
    assert await cache.get_chat("r", "m", user(CAPITAL)) == answer("Paris.")      # exact
    stats = await cache.stats()
    assert (stats["hits"], stats["misses"], stats["semantic_hits"], stats["entries"]) == (2, 1, 1, 1)
    assert stats["semantic"] is True and stats["similarity_threshold"] == 0.9 and stats["history_weight"] == 0.3


async def test_a_semantic_hit_stays_in_its_namespace(semantic_cache):
    cache = await semantic_cache()
    system = [{"role": "system", "content": "You answer in one word."}]
    await cache.set_chat("r", "m", system + user(CAPITAL), answer("Paris."), {"temperature": 0})
    assert await cache.get_chat("r", "m", system + user(PARAPHRASE), {"temperature": 0}) == answer("Paris.")
    other_system = [{"role": "system", "content": "You are a travel agent."}]
    assert await cache.get_chat("r", "m", other_system + user(PARAPHRASE), {"temperature": 0}) is None
    assert await cache.get_chat("r", "m", user(PARAPHRASE), {"temperature": 0}) is None          # no system prompt
    assert await cache.get_chat("r", "m", system + user(PARAPHRASE), {"temperature": 1}) is None  # other options
    assert await cache.get_chat("r", "m2", system + user(PARAPHRASE), {"temperature": 0}) is None
    assert await cache.get_chat("r2", "m", system + user(PARAPHRASE), {"temperature": 0}) is None
    owner = {"temperature": 0, "owner": "tenant:b"}
    assert await cache.get_chat("r", "m", system + user(PARAPHRASE), owner) is None             # other tenant


async def test_the_best_match_wins_and_the_threshold_holds(semantic_cache):
    cache = await semantic_cache(similarity=0.95)
    await cache.set_chat("r", "m", user("What is the capital of Germany?"), answer("Berlin."))
    await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    assert await cache.get_chat("r", "m", user("What's the capital of France?")) == answer("Paris.")
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) is None               # 0.918 < 0.95


async def test_an_answer_with_personal_data_is_found_only_by_its_own_request(semantic_cache):
    cache = await semantic_cache()
    await cache.set_chat("r", "m", user(CAPITAL), answer("Mail jane.doe@example.org about Paris."))
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) is None
    assert await cache.get_chat("r", "m", user(CAPITAL)) is not None


async def test_moe_models_are_never_cached(semantic_cache):
    cache = await semantic_cache()
    await cache.set_chat("r", "moe-mixtral", user(CAPITAL), answer("Paris."))
    assert await cache.get_chat("r", "moe-mixtral", user(CAPITAL)) is None
    assert (await cache.stats())["entries"] == 0 and (cache.hits, cache.misses) == (0, 0)


async def test_invalidate_drops_every_entry_and_zeroes_the_counters(semantic_cache):
    cache = await semantic_cache()
    await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    await cache.set_chat("r", "m", user(UNRELATED), answer("Knead."))
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) is not None
    assert await cache.invalidate() == 2
    stats = await cache.stats()
    assert (stats["entries"], stats["hits"], stats["misses"], stats["semantic_hits"]) == (0, 0, 0, 0)
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) is None
    assert await cache.get_chat("r", "m", user(CAPITAL)) is None


async def test_entries_stay_bounded_with_their_vectors(semantic_cache):
    cache = await semantic_cache(max_entries=2)
    await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    await cache.set_chat("r", "m", user(UNRELATED), answer("Knead."))
    await cache.set_chat("r", "m", user("Which river runs through Paris?"), answer("The Seine."))
    assert await cache.get_chat("r", "m", user(PARAPHRASE)) is None                # the oldest went
    assert await cache.get_chat("r", "m", user("How do I bake a sourdough loaf?")) == answer("Knead.")
    assert (await cache.stats())["entries"] == 2


async def test_a_ttl_of_none_never_expires(semantic_cache):
    forever = await semantic_cache(ttl=None)
    brief = await semantic_cache(ttl=0.3)
    for cache in (forever, brief):
        await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await brief.get_chat("r", "m", user(CAPITAL)) is not None:
        assert loop.time() < deadline, "the entry with a ttl never expired"
        await asyncio.sleep(0.1)
    assert await brief.get_chat("r", "m", user(PARAPHRASE)) is None
    assert await forever.get_chat("r", "m", user(CAPITAL)) == answer("Paris.")
    assert await forever.get_chat("r", "m", user(PARAPHRASE)) == answer("Paris.")
    assert (await forever.stats())["ttl"] is None
    if isinstance(forever, RedisCache):                       # no PX on the entry: Redis keeps it
        client = aioredis.Redis.from_url(REDIS)
        try:
            assert await client.pttl(forever.prefix + cache_key("r", "m", user(CAPITAL))) == -1
        finally:
            await client.aclose()


async def test_a_sqlite_cache_keeps_its_vectors_across_reopening(tmp_path):
    path = str(tmp_path / "c.db")
    cache = await SQLiteCache(path, None, 10, index()).open()
    await cache.set_chat("r", "m", user(CAPITAL), answer("Paris."))
    await cache.close()
    cache = await SQLiteCache(path, None, 10, index()).open()
    try:
        assert await cache.get_chat("r", "m", user(PARAPHRASE)) == answer("Paris.")
    finally:
        await cache.close()
    exact = await SQLiteCache(path, None, 10).open()                    # the same file, exact only
    try:
        assert await exact.get_chat("r", "m", user(PARAPHRASE)) is None
        assert await exact.get_chat("r", "m", user(CAPITAL)) == answer("Paris.")
    finally:
        await exact.close()


async def test_a_sqlite_file_of_the_exact_cache_is_taken_over(tmp_path):
    import aiosqlite
    path = str(tmp_path / "old.db")
    async with aiosqlite.connect(path) as conn:  # the table as the exact-only cache wrote it
        await conn.execute("CREATE TABLE llm_cache (key TEXT PRIMARY KEY, expires_at REAL NOT NULL, "
                           "value BLOB NOT NULL)")
        await conn.execute("INSERT INTO llm_cache VALUES (?, 9e18, ?)", (cache_key("r", "m", user(CAPITAL)), b"old"))
        await conn.commit()
    cache = await SQLiteCache(path, 60, 2, index()).open()
    try:
        assert await cache.get_chat("r", "m", user(CAPITAL)) == b"old"
        await cache.set_chat("r", "m", user(UNRELATED), answer("Knead."))
        await cache.set_chat("r", "m", user("Which river runs through Paris?"), answer("The Seine."))
        assert await cache.get_chat("r", "m", user(CAPITAL)) is None            # the old row went first
        assert await cache.get_chat("r", "m", user("How do I bake a sourdough loaf?")) == answer("Knead.")
    finally:
        await cache.close()


async def test_the_encoder_runs_off_the_event_loop():
    semantic = index()
    try:
        beats = 0

        async def heartbeat():
            nonlocal beats
            while True:
                await asyncio.sleep(0)
                beats += 1

        beating = asyncio.create_task(heartbeat())
        await semantic.embed([f"sentence number {n} about something else" for n in range(64)])
        beating.cancel()
        assert beats > 10                                   # the loop ran while the batch was encoded
    finally:
        semantic.close()


# ── through the gateway ─────────────────────────────────────────────────────────
async def _respond(http, text: str, **body) -> dict:
    reply = await http.post("/v1/responses", json={"model": "tiny", "input": text, "nomyo": {"cache": True}, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def cache_backend(request, tmp_path):
    """The config keys of each cache backend in turn; for Redis, :data:`GATEWAY_REDIS`, whose
    cache keys are deleted afterwards."""
    if request.param == "memory":
        yield {"cache_backend": "memory"}
    elif request.param == "sqlite":
        yield {"cache_backend": "sqlite", "cache_db_path": str(tmp_path / "cache.db")}
    else:
        client = aioredis.Redis.from_url(GATEWAY_REDIS)
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            from tests.conftest import _unreachable
            _unreachable(f"Redis at {GATEWAY_REDIS}", exc)
        await clear_gateway_redis(client)
        yield {"cache_backend": "redis", "cache_redis_url": GATEWAY_REDIS}
        await clear_gateway_redis(client)
        await client.aclose()


async def clear_gateway_redis(client) -> None:
    """Delete the gateway cache's keys (the default prefix) in :data:`GATEWAY_REDIS`."""
    keys = [key async for key in client.scan_iter(match="nomyo-router:cache:*")]
    if keys:
        await client.delete(*keys)


async def test_a_paraphrased_request_is_served_from_the_cache(gateway_factory, ollama, cache_backend):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True, cache_similarity=0.9,
                               **cache_backend) as http:
        first = await _respond(http, CAPITAL)
        second = await _respond(http, PARAPHRASE)
        assert ollama.requests_total == 1
        assert second["output_text"] == first["output_text"] and second["id"] != first["id"]
        assert second["status"] == "completed"
        await _respond(http, UNRELATED)
        assert ollama.requests_total == 2
        await _respond(http, PARAPHRASE, instructions="You are a travel agent.")     # another system prompt
        assert ollama.requests_total == 3
        stats = (await http.get("/api/cache/stats")).json()
        assert stats["enabled"] is True and stats["backend"] == cache_backend["cache_backend"]
        assert (stats["hits"], stats["misses"], stats["semantic_hits"], stats["entries"]) == (1, 3, 1, 3)


async def test_the_cache_routes(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True, cache_similarity=0.9,
                               cache_ttl=None) as http:
        await _respond(http, CAPITAL)
        await _respond(http, PARAPHRASE)
        stats = (await http.get("/api/cache/stats")).json()
        assert stats == {"enabled": True, "backend": "memory", "hits": 1, "misses": 1, "hit_rate": 0.5,
                         "semantic_hits": 1, "semantic": True, "similarity_threshold": 0.9, "history_weight": 0.3,
                         "entries": 1, "max_entries": 10_000, "ttl": None}
        cleared = await http.post("/api/cache/invalidate")
        assert cleared.status_code == 200 and cleared.json() == {"enabled": True, "cleared": True,
                                                                 "entries_removed": 1}
        stats = (await http.get("/api/cache/stats")).json()
        assert (stats["hits"], stats["misses"], stats["entries"]) == (0, 0, 0)
        await _respond(http, PARAPHRASE)
        assert ollama.requests_total == 2                       # cleared: asked again
        bad = await http.post("/api/cache/invalidate", json={"model": "tiny"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
        assert (await http.post("/api/cache/invalidate", json={})).status_code == 200
