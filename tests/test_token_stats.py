"""Token statistics (NOMYO Router's): the store's tables on both stores (``any_store``), two
replicas adding into one PostgreSQL store, folding old minutes into days, the buffer of
``engine.token_stats`` that a refusing store never empties, and the routes ``/api/token_counts``,
``/api/stats`` and ``/api/aggregate_time_series_days`` through the app over the scripted
Ollama-protocol server."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from db_postgres import PostgresStore
from db_token_stats import DAY, MINUTE, fold_cutoff
from engine.token_stats import TokenStats
from tests.e2e.ollama_server import DEFAULT_TEXT
from tests.reliability.helpers import assert_openai_error, wait_for

import router

EP_A, EP_B = "http://127.0.0.1:11434", "http://127.0.0.1:11435"
#: What the scripted server counts for the input "Say hi" and its default answer (a word a token).
PROMPT_TOKENS, COMPLETION_TOKENS = 2, len(DEFAULT_TEXT.split())


def _minute(seconds_ago: float = 0) -> int:
    return int(time.time() - seconds_ago) // MINUTE * MINUTE


def _total(series: list[dict]) -> tuple[int, int, int]:
    return (sum(e["input_tokens"] for e in series), sum(e["output_tokens"] for e in series),
            sum(e["total_tokens"] for e in series))


async def _sql(store, statement: str) -> None:
    """Run ``statement`` on the store's own database (to break and mend it)."""
    if isinstance(store, PostgresStore):
        await store.pool.execute(statement)
    else:
        await store.conn.execute(statement)


# ── the store ────────────────────────────────────────────────────────────────
async def test_counts_add_up_per_endpoint_and_model(any_store):
    store = any_store
    now = _minute()
    await store.add_token_counts([(EP_A, "m1", now, 10, 5), (EP_B, "m1", now, 1, 2)])
    await store.add_token_counts([(EP_A, "m1", now, 3, 4), (EP_A, "m2", now - 60, 7, 0)])
    assert await store.token_counts() == [
        {"endpoint": EP_A, "model": "m1", "input_tokens": 13, "output_tokens": 9, "total_tokens": 22},
        {"endpoint": EP_A, "model": "m2", "input_tokens": 7, "output_tokens": 0, "total_tokens": 7},
        {"endpoint": EP_B, "model": "m1", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3}]
    assert await store.token_counts_for_model("m1") == {"input_tokens": 14, "output_tokens": 11, "total_tokens": 25}
    assert await store.token_endpoint_distribution("m1") == {EP_A: 22, EP_B: 3}
    assert await store.token_counts_for_model("nope") is None
    assert await store.token_endpoint_distribution("nope") == {}
    await store.add_token_counts([])  # nothing to add is no error
    assert len(await store.token_counts()) == 3


async def test_time_series_is_a_row_per_minute_newest_first(any_store):
    store = any_store
    now = _minute()
    await store.add_token_counts([(EP_A, "m", now - 120, 1, 1), (EP_A, "m", now, 2, 3), (EP_B, "m", now + 5, 4, 0)])
    await store.add_token_counts([(EP_A, "m", now + 30, 10, 10), (EP_A, "other", now, 100, 100)])
    assert await store.token_time_series("m") == [   # timestamps in a minute go to its start
        {"endpoint": EP_A, "input_tokens": 12, "output_tokens": 13, "total_tokens": 25, "timestamp": now},
        {"endpoint": EP_B, "input_tokens": 4, "output_tokens": 0, "total_tokens": 4, "timestamp": now},
        {"endpoint": EP_A, "input_tokens": 1, "output_tokens": 1, "total_tokens": 2, "timestamp": now - 120}]
    assert len(await store.token_time_series("m", limit=2)) == 2
    assert await store.token_time_series("nope") == []


async def test_two_replicas_add_into_one_postgresql_store(postgres_url):
    one, two = await PostgresStore(postgres_url).open(), await PostgresStore(postgres_url).open()
    try:
        now = _minute()
        rows = [(EP_A, "m", now, 3, 2), (EP_B, "m", now, 1, 1)]
        await asyncio.gather(*[store.add_token_counts(rows) for _ in range(20) for store in (one, two)])
        assert await one.token_counts() == await two.token_counts() == [
            {"endpoint": EP_A, "model": "m", "input_tokens": 120, "output_tokens": 80, "total_tokens": 200},
            {"endpoint": EP_B, "model": "m", "input_tokens": 40, "output_tokens": 40, "total_tokens": 80}]
        assert await two.token_time_series("m") == [   # one minute row each, both replicas' tokens in it
            {"endpoint": EP_A, "input_tokens": 120, "output_tokens": 80, "total_tokens": 200, "timestamp": now},
            {"endpoint": EP_B, "input_tokens": 40, "output_tokens": 40, "total_tokens": 80, "timestamp": now}]
    finally:
        await one.close()
        await two.close()


async def _old_and_new(store) -> tuple[int, int]:
    """Rows 40 days old (two minutes of one day on EP_A, one on EP_B) and one of now; returns
    (the old day's start, now's minute)."""
    old = (int(time.time()) - 40 * DAY) // DAY * DAY + 3600
    now = _minute()
    await store.add_token_counts([(EP_A, "m", old, 1, 2), (EP_A, "m", old + 600, 3, 4), (EP_B, "m", old, 5, 6),
                                  (EP_A, "m", now, 7, 8), (EP_A, "m", _minute(20 * DAY), 1, 1)])
    return old - 3600, now


async def test_folding_keeps_the_minutes_without_trim_old(any_store):
    store = any_store
    day, now = await _old_and_new(store)
    before = await store.token_time_series("m")
    assert await store.aggregate_time_series_older_than(30, trim_old=False) == 2   # EP_A's and EP_B's day
    assert await store.token_time_series("m") == before                           # minutes kept, no day twice
    assert await store.aggregate_time_series_older_than(30) == 0                  # folded once only
    # A late minute of the folded day (a count the store refused for weeks) is a minute of its own...
    await store.add_token_counts([(EP_A, "m", day + 3600, 100, 0)])
    series = await store.token_time_series("m")
    assert _total(series) == (117, 21, 138)
    assert await store.aggregate_time_series_older_than(30) == 1                  # ...folded next time
    assert _total(await store.token_time_series("m")) == (117, 21, 138)
    assert (await store.token_counts_for_model("m"))["total_tokens"] == 138


async def test_folding_with_trim_old_leaves_a_row_per_day(any_store):
    store = any_store
    day, now = await _old_and_new(store)
    totals = await store.token_counts()
    assert await store.aggregate_time_series_older_than(30, trim_old=True) == 2
    series = await store.token_time_series("m")
    assert series == [
        {"endpoint": EP_A, "input_tokens": 7, "output_tokens": 8, "total_tokens": 15, "timestamp": now},
        {"endpoint": EP_A, "input_tokens": 1, "output_tokens": 1, "total_tokens": 2, "timestamp": _minute(20 * DAY)},
        {"endpoint": EP_A, "input_tokens": 4, "output_tokens": 6, "total_tokens": 10, "timestamp": day},
        {"endpoint": EP_B, "input_tokens": 5, "output_tokens": 6, "total_tokens": 11, "timestamp": day}]
    assert await store.token_counts() == totals                                   # totals are never folded
    assert await store.aggregate_time_series_older_than(30, trim_old=True) == 0
    assert await store.aggregate_time_series_older_than(10, trim_old=True) == 1   # the 20-day-old minute now
    assert _total(await store.token_time_series("m")) == (17, 21, 38)


async def test_folding_after_kept_minutes_then_trimming_counts_each_token_once(any_store):
    store = any_store
    day, _ = await _old_and_new(store)
    assert await store.aggregate_time_series_older_than(30) == 2
    assert await store.aggregate_time_series_older_than(30, trim_old=True) == 0   # nothing new: only trimmed
    series = await store.token_time_series("m")
    assert [e for e in series if e["timestamp"] < fold_cutoff(30)] == [
        {"endpoint": EP_A, "input_tokens": 4, "output_tokens": 6, "total_tokens": 10, "timestamp": day},
        {"endpoint": EP_B, "input_tokens": 5, "output_tokens": 6, "total_tokens": 11, "timestamp": day}]
    assert _total(series) == (17, 21, 38)


@pytest.mark.parametrize("days", [0, -1, 1.5, "30", True, None])
async def test_folding_refuses_days_that_are_not_a_positive_integer(any_store, days):
    with pytest.raises(ValueError):
        await any_store.aggregate_time_series_older_than(days)


# ── the buffer ───────────────────────────────────────────────────────────────
async def test_record_counts_only_real_token_numbers():
    stats = TokenStats()
    stats.record(EP_A, "m", 3, None)
    stats.record(EP_A, "m", -5, 2)
    stats.record(EP_A, "m", True, "7")
    stats.record(EP_A, "m", 0, 0)
    assert stats.totals == {(EP_A, "m"): [3, 2]}
    assert [row[3:] for row in stats.pending_rows()] == [(3, 2)]


async def test_a_refused_write_loses_nothing(any_store, caplog):
    store = any_store
    stats = TokenStats()
    stats.start(store, interval=3600)   # written only when asked here
    try:
        stats.record(EP_A, "m", 5, 1)
        await _sql(store, "ALTER TABLE token_counts RENAME TO token_counts_away")
        with caplog.at_level(logging.WARNING, logger="nomyo_router.token_stats"):
            assert await stats.flush() is False
        assert "refused the token statistics" in caplog.text
        stats.record(EP_A, "m", 2, 2)               # counted while the store refuses
        assert await stats.flush() is False
        assert [row[3:] for row in stats.pending_rows()] == [(7, 3)]
        await _sql(store, "ALTER TABLE token_counts_away RENAME TO token_counts")
        assert await stats.flush() is True
        assert stats.pending_rows() == []
        assert await store.token_counts() == [
            {"endpoint": EP_A, "model": "m", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}]
        assert _total(await store.token_time_series("m")) == (7, 3, 10)   # the series took all or nothing too
    finally:
        await stats.stop()


async def test_a_closed_store_keeps_the_counts_for_the_next(tmp_path):
    from store import open_store
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = await open_store(url)
    stats = TokenStats()
    stats.start(first, interval=3600)
    stats.record(EP_A, "m", 4, 4)
    await first.close()
    assert await stats.flush() is False
    second = await open_store(url)
    try:
        stats.store = second
        assert await stats.flush() is True
        assert (await second.token_counts())[0]["total_tokens"] == 8
    finally:
        await stats.stop()
        await second.close()


async def test_the_flusher_writes_by_itself_and_once_more_at_stop(any_store):
    store = any_store
    stats = TokenStats()
    stats.start(store, interval=0.05)
    stats.record(EP_A, "m", 1, 1)

    async def written():
        return await store.token_counts()
    await wait_for(written, timeout=30)
    await stats.stop()
    slow = TokenStats()
    slow.start(store, interval=3600)
    slow.record(EP_A, "m", 10, 0)
    await slow.stop()                                 # the last write happens at stop
    assert (await store.token_counts())[0]["input_tokens"] == 11
    assert slow.totals == {(EP_A, "m"): [10, 0]}      # this process's own since start-up


# ── the routes ───────────────────────────────────────────────────────────────
async def _create(http, **body) -> dict:
    reply = await http.post("/v1/responses", json={"model": "tiny", "input": "Say hi", **body})
    assert reply.status_code == 200, reply.text
    return reply


async def test_a_turn_shows_in_token_counts_and_stats(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        usage = (await _create(http)).json()["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        counts = (await http.get("/api/token_counts")).json()
        total = PROMPT_TOKENS + COMPLETION_TOKENS
        assert counts == {"total_tokens": total, "breakdown": [
            {"endpoint": ollama.url, "model": "tiny:latest", "input_tokens": PROMPT_TOKENS,
             "output_tokens": COMPLETION_TOKENS, "total_tokens": total}]}
        stats = (await http.post("/api/stats", json={"model": "tiny:latest"})).json()
        assert {k: stats[k] for k in ("model", "input_tokens", "output_tokens", "total_tokens")} == {
            "model": "tiny:latest", "input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS,
            "total_tokens": total}
        assert stats["endpoint_distribution"] == {ollama.url: total}
        [entry] = stats["time_series"]
        assert entry["endpoint"] == ollama.url and entry["total_tokens"] == total
        assert abs(entry["timestamp"] - time.time()) < 3600
        assert (await http.post("/api/stats?model=tiny:latest")).json() == stats

        assert (await router.db.token_counts())[0]["total_tokens"] == total   # read after it was written

        # what no route asks for is written by the gateway's own flusher
        router.app.state.gateway.token_stats.record(EP_B, "other", 1, 2)

        async def stored():
            return [row for row in await router.db.token_counts() if row["endpoint"] == EP_B]
        assert (await wait_for(stored, timeout=30))[0]["total_tokens"] == 3


async def test_streamed_and_tool_turns_each_count_their_one_upstream_call(gateway_factory, ollama):
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    async with gateway_factory(endpoints=[ollama.url]) as http:
        streamed = await http.post("/v1/responses", json={"model": "tiny", "input": "Say hi", "stream": True})
        assert streamed.status_code == 200 and "response.completed" in streamed.text
        called = (await _create(http, tools=[tool])).json()
        [call] = [item for item in called["output"] if item["type"] == "function_call"]
        answered = (await _create(http, previous_response_id=called["id"], tools=[tool], input=[
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}])).json()
        assert ollama.requests_total == 3
        expected = PROMPT_TOKENS + COMPLETION_TOKENS + called["usage"]["total_tokens"] + \
            answered["usage"]["total_tokens"]
        counts = (await http.get("/api/token_counts")).json()
        assert counts["total_tokens"] == expected
        assert [(row["model"], row["total_tokens"]) for row in counts["breakdown"]] == [("tiny:latest", expected)]


async def test_a_cached_answer_counts_nothing(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], cache_enabled=True) as http:
        body = {"nomyo": {"cache": True}}
        await _create(http, **body)
        await _create(http, **body)
        assert ollama.requests_total == 1
        counts = (await http.get("/api/token_counts")).json()
        assert counts["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS


async def test_stats_bad_requests_are_named(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        assert_openai_error(await http.post("/api/stats", json={}), 400, "missing_required_parameter")
        assert_openai_error(await http.post("/api/stats"), 400, "missing_required_parameter")
        assert_openai_error(await http.post("/api/stats", json={"model": 5}), 400, "invalid_type")
        assert_openai_error(await http.post("/api/stats", json={"model": "m", "extra": 1}), 400, "unknown_parameter")
        assert_openai_error(await http.post("/api/stats", json=["m"]), 400, "invalid_json")
        error = assert_openai_error(await http.post("/api/stats?model=a", json={"model": "b"}), 400)
        assert error["param"] == "model"
        assert_openai_error(await http.get("/api/token_counts?since=1"), 400, "unknown_parameter")
        assert_openai_error(await http.post("/api/stats", json={"model": "tiny:latest"}), 404, "no_token_data")


async def test_aggregate_route(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/api/aggregate_time_series_days")
        assert reply.json() == {"status": "ok", "days": 30, "trim_old": False, "aggregated_groups": 0}
        old = (int(time.time()) - 3 * DAY) // DAY * DAY
        await router.db.add_token_counts([(ollama.url, "tiny:latest", old, 4, 5)])
        await _create(http)
        reply = await http.post("/api/aggregate_time_series_days", json={"days": 2, "trim_old": True})
        assert reply.json() == {"status": "ok", "days": 2, "trim_old": True, "aggregated_groups": 1}
        stats = (await http.post("/api/stats", json={"model": "tiny:latest"})).json()
        assert [(e["timestamp"], e["total_tokens"]) for e in stats["time_series"]][-1] == (old, 9)
        assert stats["total_tokens"] == 9 + PROMPT_TOKENS + COMPLETION_TOKENS
        for bad in ({"days": 0}, {"days": "30"}, {"days": True}, {"days": 1.5}, {"days": 10**9}):
            error = assert_openai_error(await http.post("/api/aggregate_time_series_days", json=bad), 400)
            assert error["param"] == "days"
        error = assert_openai_error(await http.post("/api/aggregate_time_series_days", json={"trim_old": "yes"}), 400)
        assert error["param"] == "trim_old"
        assert_openai_error(await http.post("/api/aggregate_time_series_days", json={"day": 3}), 400,
                            "unknown_parameter")


async def test_counts_not_yet_stored_are_shown(gateway_factory, ollama):
    """A store that refuses the counts for now: the routes still show them (and the store gets
    them once it takes writes again)."""
    async with gateway_factory(endpoints=[ollama.url]) as http:
        gateway = router.app.state.gateway
        await _sql(gateway.store, "ALTER TABLE token_time_series RENAME TO token_time_series_away")
        await _create(http)
        counts = (await http.get("/api/token_counts")).json()
        assert counts["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
        assert gateway.token_stats.pending_rows()            # the store did not take them
        assert await router.db.token_counts() == []
        await _sql(gateway.store, "ALTER TABLE token_time_series_away RENAME TO token_time_series")

        async def stored():
            return await router.db.token_counts()
        assert (await wait_for(stored, timeout=30))[0]["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
        assert (await http.get("/api/token_counts")).json() == counts


async def test_the_routes_need_the_admin_key(gateway_factory, ollama):
    async with gateway_factory(endpoints=[ollama.url], admin_api_key="admin-secret") as http:
        await _create(http)
        assert_openai_error(await http.get("/api/token_counts"), 401)
        assert_openai_error(await http.post("/api/stats", json={"model": "tiny:latest"}), 401)
        assert_openai_error(await http.post("/api/aggregate_time_series_days"), 401)
        assert_openai_error(await http.get("/api/token_counts", headers={"Authorization": "Bearer wrong"}), 401,
                            "invalid_api_key")
        admin = {"Authorization": "Bearer admin-secret"}
        assert (await http.get("/api/token_counts", headers=admin)).json()["total_tokens"] == \
            PROMPT_TOKENS + COMPLETION_TOKENS
        assert (await http.post("/api/stats", json={"model": "tiny:latest"}, headers=admin)).status_code == 200
        assert (await http.post("/api/aggregate_time_series_days", headers=admin)).status_code == 200


async def test_counts_are_written_at_shutdown(gateway_factory, ollama, config_path):
    from config import load_settings
    from store import open_store
    async with gateway_factory(endpoints=[ollama.url]):
        gateway = router.app.state.gateway
        gateway.token_stats.record(ollama.url, "tiny:latest", 11, 12)  # closed before a timed write, mostly
    store = await open_store(load_settings().store_location)
    try:
        assert await store.token_counts() == [
            {"endpoint": ollama.url, "model": "tiny:latest", "input_tokens": 11, "output_tokens": 12,
             "total_tokens": 23}]
    finally:
        await store.close()


async def test_compaction_calls_are_counted(gateway_factory, ollama):
    """The summary call of ``/v1/responses/compact`` and of ``context_management`` on create is
    counted beside the turn's own call (each as the scripted server counts: a word a token)."""
    from tests.e2e.ollama_server import _text_of

    def sent_tokens() -> int:
        return sum(len(_text_of(m.get("content")).split()) for r in ollama.requests for m in r["messages"]) + \
            COMPLETION_TOKENS * len(ollama.requests)
    async with gateway_factory(endpoints=[ollama.url]) as http:
        compacted = (await http.post("/v1/responses/compact", json={"model": "tiny", "input": [
            {"role": "user", "content": "I am planning a trip to Lisbon."}, {"role": "user", "content": "Go."}]}))
        assert compacted.status_code == 200, compacted.text
        assert (await http.get("/api/token_counts")).json()["total_tokens"] == \
            compacted.json()["usage"]["total_tokens"] == sent_tokens()
        first = (await _create(http, input="I am planning a trip to Lisbon.")).json()
        second = (await _create(http, input="Book nothing yet.", previous_response_id=first["id"],
                                context_management=[{"type": "compaction", "compact_threshold": 5}])).json()
        assert [item["type"] for item in second["output"]] == ["compaction", "message"]
        assert ollama.requests_total == 4
        assert (await http.get("/api/token_counts")).json()["total_tokens"] == sent_tokens()


async def test_nomyo_routers_own_token_database_is_imported(tmp_path):
    """A store opened on NOMYO Router's ``token_counts.db`` (its ``db_path``) takes its totals,
    its per-request series (in minutes) and the days it folded and trimmed, then drops its tables."""
    import sqlite3

    from db import ResponseStore

    path = tmp_path / "token_counts.db"
    day = 20_000 * DAY                       # a UTC midnight, long ago
    with sqlite3.connect(path) as legacy:    # NOMYO Router's tables, as it makes them
        legacy.executescript("""
            CREATE TABLE token_counts (endpoint TEXT, model TEXT, input_tokens INTEGER DEFAULT 0,
                output_tokens INTEGER DEFAULT 0, total_tokens INTEGER DEFAULT 0, PRIMARY KEY(endpoint, model));
            CREATE TABLE token_time_series (id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT, model TEXT,
                input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER, timestamp INTEGER,
                FOREIGN KEY(endpoint, model) REFERENCES token_counts(endpoint, model));
            CREATE INDEX idx_token_time_series_timestamp ON token_time_series(timestamp);
            CREATE TABLE token_time_series_daily (id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT, model TEXT,
                date TEXT, input_tokens INTEGER DEFAULT 0, output_tokens INTEGER DEFAULT 0,
                total_tokens INTEGER DEFAULT 0, UNIQUE(endpoint, model, date));""")
        legacy.execute("INSERT INTO token_counts VALUES (?, 'm1', 110, 55, 165)", (EP_A,))
        rows = [(EP_A, "m1", 10, 5, 15, day + 3 * DAY + 60), (EP_A, "m1", 20, 10, 30, day + 3 * DAY + 90)]
        legacy.executemany("INSERT INTO token_time_series (endpoint, model, input_tokens, output_tokens, total_tokens,"
                           " timestamp) VALUES (?,?,?,?,?,?)", rows)
        legacy.executemany("INSERT INTO token_time_series_daily (endpoint, model, date, input_tokens, output_tokens,"
                           " total_tokens) VALUES (?,?,?,?,?,?)",
                           [(EP_A, "m1", "2024-10-04", 80, 40, 120),          # trimmed: only here now
                            (EP_A, "m1", "2024-10-07", 30, 15, 45)])          # its rows were kept: counted once
    assert time.strftime("%Y-%m-%d", time.gmtime(day)) == "2024-10-04"
    store = await ResponseStore(str(path)).open()
    try:
        assert await store.token_counts() == [
            {"endpoint": EP_A, "model": "m1", "input_tokens": 110, "output_tokens": 55, "total_tokens": 165}]
        series = await store.token_time_series("m1")
        assert [(e["timestamp"], e["total_tokens"]) for e in series] == [(day + 3 * DAY + 60, 45), (day, 120)]
        tables = {row[0] for row in await (await store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")).fetchall()}
        assert not {name for name in tables if name.startswith("legacy_")}
        await store.add_token_counts([(EP_A, "m1", _minute(), 1, 1)])
        assert (await store.token_counts_for_model("m1"))["total_tokens"] == 167
    finally:
        await store.close()
    again = await ResponseStore(str(path)).open()                          # opened again: nothing more to import
    try:
        assert (await again.token_counts_for_model("m1"))["total_tokens"] == 167
    finally:
        await again.close()
