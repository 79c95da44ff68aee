"""What only the PostgreSQL store has: replicas, leases and take-over, notifications, shared
secrets, migrations that replicas starting at once do not race (a real server, a schema per test)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from db_postgres import EVENTS_CHANNEL, PG_SCHEMA_VERSION, PostgresStore
from db_conversations import CLAIMED
from engine.eventlog import closing_events


def _msg(text: str) -> dict:
    return {"type": "message", "id": f"msg_{text}", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def _row(store: PostgresStore, rid: str, status: str, *, background: bool = False, request: dict | None = None):
    await store.store_response(rid, previous_response_id=None, model="m", status=status, created_at=1,
                               input_messages=[_msg(rid)], response={"id": rid, "status": status, "output": []},
                               request=request, background=background)


async def _age(store: PostgresStore, replica: str, seconds: float) -> None:
    await store.pool.execute("UPDATE replicas SET seen_at = clock_timestamp() - make_interval(secs => $1)"
                             " WHERE id = $2", seconds, replica)


@pytest.fixture
async def two(postgres_url):
    """Two replicas on one store."""
    a = await PostgresStore(postgres_url, "replica-a").open()
    b = await PostgresStore(postgres_url, "replica-b").open()
    yield a, b
    await a.close()
    await b.close()


async def test_a_dead_replicas_turns_are_taken_over_once(two):
    a, b = two
    await _row(a, "resp_running", "in_progress", background=True, request={"model": "m"})
    await a.append_events("resp_running", [{"type": "response.created", "sequence_number": 0},
                                           {"type": "response.in_progress", "sequence_number": 1}])
    await _row(a, "resp_foreground", "in_progress")
    await _row(a, "resp_queued", "queued", background=True, request={"model": "m", "input": "hi"})
    await _row(b, "resp_alive", "in_progress")                      # b's own: never touched
    await a.create_conversation("conv_1", None, {}, [])
    assert await a.claim_conversation("conv_1", None, "resp_foreground") == CLAIMED
    await a.create_conversation("conv_2", None, {}, [])
    assert await a.claim_conversation("conv_2", None, "resp_queued") == CLAIMED

    assert (await b.take_over(5, closing_events)).replicas == []     # a's lease is good: nothing
    await _age(b, "replica-a", 10)
    first, second = await asyncio.gather(b.take_over(5, closing_events), b.take_over(5, closing_events))
    taken = first if first.replicas else second
    assert (first.replicas or second.replicas) == ["replica-a"] and not (first.replicas and second.replicas)
    assert sorted(taken.failed) == ["resp_foreground", "resp_running"]
    assert [row["id"] for row in taken.adopted] == ["resp_queued"] and taken.adopted[0]["request"]["input"] == "hi"
    assert taken.freed == 1

    for rid in taken.failed:
        row = await b.get_response(rid)
        assert row["status"] == "failed" and row["response"]["error"]["code"] == "server_error"
    assert [e["type"] for e in await b.get_events("resp_running")] == [
        "response.created", "response.in_progress", "error", "response.failed"]
    assert await b.get_events("resp_foreground") == []            # it had no log: none made
    assert (await b.get_response("resp_alive"))["status"] == "in_progress"
    assert (await b.get_response("resp_queued"))["replica"] == "replica-b"
    assert await b.conversation_holder("conv_1") is None
    assert await b.conversation_holder("conv_2") == "resp_queued"   # it runs again on b
    assert (await b.take_over(5, closing_events)).adopted == []    # b's now, and b is alive


async def test_a_replica_taken_for_dead_learns_it_at_its_next_heartbeat(two):
    a, b = two
    await _age(b, "replica-a", 10)
    await b.take_over(5, closing_events)
    assert not await a.heartbeat()              # its row was gone: told so, and made again
    assert await a.heartbeat()
    assert await b.replica_alive("replica-a", 5)
    assert not await b.replica_alive("replica-gone", 5) and not await b.replica_alive(None, 5)


async def test_a_closed_replica_leaves_its_queued_responses_to_the_next_sweep(two):
    a, b = two
    await _row(a, "resp_queued", "queued", background=True, request={"model": "m"})
    await a.close()
    assert [row["id"] for row in (await b.take_over(5, closing_events)).adopted] == ["resp_queued"]


async def test_replicas_share_one_secret(two):
    a, b = two
    first = await a.shared_secret("reasoning_key", lambda: b"\x01" * 32)
    assert first == await b.shared_secret("reasoning_key", lambda: b"\x02" * 32) == b"\x01" * 32


async def test_notifications_reach_every_replica(two):
    a, b = two
    got: list[str] = []
    arrived = asyncio.Event()

    def heard(payload: str) -> None:
        got.append(payload)
        arrived.set()
    listener = await b.listen({EVENTS_CHANNEL: heard})
    try:
        await _row(a, "resp_1", "in_progress")
        await a.append_events("resp_1", [{"type": "response.created", "sequence_number": 0}])
        await asyncio.wait_for(arrived.wait(), 10)
        assert got == ["resp_1"]
        arrived.clear()
        await a.update_response("resp_1", {"id": "resp_1", "status": "completed", "output": []})
        await asyncio.wait_for(arrived.wait(), 10)           # a final state wakes followers too
        assert got == ["resp_1", "resp_1"]
    finally:
        await listener.close()


async def test_replicas_starting_at_once_migrate_once(postgres_url):
    stores = await asyncio.gather(*(PostgresStore(postgres_url, f"replica-{n}").open() for n in range(4)))
    try:
        version = await stores[0].pool.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version == str(PG_SCHEMA_VERSION)
        assert await stores[0].pool.fetchval("SELECT count(*) FROM replicas") == 4
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(postgres_url):
    store = await PostgresStore(postgres_url).open()
    await store.pool.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    await store.close()
    with pytest.raises(RuntimeError, match="newer"):
        await PostgresStore(postgres_url).open()


async def test_an_unreachable_server_is_an_error_not_a_hang():
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncio.wait_for(PostgresStore("postgresql://nobody@127.0.0.1:1/none").open(), 30)


def test_the_password_is_not_shown_in_logs():
    assert PostgresStore("postgresql://u:secret@db:5432/x").describe() == "postgresql://u:***@db:5432/x"
    assert PostgresStore("postgresql://u@db/x").describe() == "postgresql://u@db/x"
