"""Conversations and their items in the store: the same tests on SQLite and PostgreSQL
(``any_store``), and the SQLite store's restart rule."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from db import MIGRATIONS, ResponseStore
from db_conversations import BUSY, CLAIMED, MISSING
from store import STORE_ERRORS


def _msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "id": f"msg_{text}", "role": role, "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


@pytest.fixture
async def store(any_store):
    return any_store


async def test_one_turn_holds_a_conversation_until_it_ends(store):
    await store.create_conversation("conv_1", "alice", {}, [_msg("a")])
    assert await store.claim_conversation("conv_1", "alice", "resp_1") == CLAIMED
    assert await store.claim_conversation("conv_1", "alice", "resp_2") == BUSY
    assert await store.claim_conversation("conv_1", "bob", "resp_2") == MISSING
    assert await store.claim_conversation("conv_1", "alice", "resp_1") == CLAIMED   # its holder, again
    assert await store.conversation_holder("conv_1") == "resp_1"
    assert not await store.finish_conversation_turn("conv_1", "resp_2", [_msg("never")])
    assert await store.finish_conversation_turn("conv_1", "resp_1", [_msg("b"), _msg("c", "assistant")])
    assert not await store.finish_conversation_turn("conv_1", "resp_1", [_msg("twice")])
    items, complete = await store.conversation_history("conv_1", "alice", max_bytes=10**6, max_items=100)
    assert complete and [i["id"] for i in items] == ["msg_a", "msg_b", "msg_c"]
    assert await store.claim_conversation("conv_1", "alice", "resp_3") == CLAIMED


async def test_claims_race_and_exactly_one_wins(store):
    await store.create_conversation("conv_1", None, {}, [])
    results = await asyncio.gather(*(store.claim_conversation("conv_1", None, f"resp_{n}") for n in range(20)))
    assert results.count(CLAIMED) == 1 and results.count(BUSY) == 19


async def test_a_restart_frees_what_dead_turns_held_but_not_queued_jobs(tmp_path):
    path = str(tmp_path / "s.db")
    store = await ResponseStore(path).open()
    for cid, rid, status, background in (("conv_a", "resp_a", "in_progress", False),
                                         ("conv_b", "resp_b", "queued", True)):
        await store.create_conversation(cid, None, {}, [])
        await store.store_response(rid, previous_response_id=None, model="m", status=status, created_at=1,
                                   input_messages=[], response={"id": rid, "status": status, "output": []},
                                   request={"model": "m"}, background=background)
        assert await store.claim_conversation(cid, None, rid) == CLAIMED
    await store.create_conversation("conv_c", None, {}, [])
    assert await store.claim_conversation("conv_c", None, "resp_store_false") == CLAIMED  # no row at all
    await store.close()

    store = await ResponseStore(path).open()
    try:
        await store.fail_orphaned_responses()
        assert await store.free_stale_conversations() == 2
        assert await store.conversation_holder("conv_a") is None
        assert await store.conversation_holder("conv_c") is None
        assert await store.conversation_holder("conv_b") == "resp_b"      # it runs again and finishes
    finally:
        await store.close()


async def test_history_keeps_the_newest_items_within_bounds(store):
    await store.create_conversation("conv_1", None, {}, [_msg(f"m{n}") for n in range(10)])
    items, complete = await store.conversation_history("conv_1", None, max_bytes=10**6, max_items=4)
    assert not complete and [i["id"] for i in items] == ["msg_m6", "msg_m7", "msg_m8", "msg_m9"]
    items, complete = await store.conversation_history("conv_1", None, max_bytes=250, max_items=100)
    assert not complete and 0 < len(items) < 10 and items[-1]["id"] == "msg_m9"
    assert await store.conversation_history("conv_nope", None, max_bytes=1, max_items=1) is None


async def test_items_are_found_by_reference_only_by_their_owner(store):
    await store.create_conversation("conv_1", "alice", {}, [_msg("a")])
    assert set(await store.find_items(["msg_a"], "alice")) == {"msg_a"}
    assert await store.find_items(["msg_a"], "bob") == {}


async def test_deleting_a_conversation_deletes_its_items(store):
    await store.create_conversation("conv_1", None, {"k": "v"}, [_msg("a"), _msg("b")])
    assert await store.delete_conversation_item("conv_1", None, "msg_a")
    assert not await store.delete_conversation_item("conv_1", None, "msg_a")
    assert await store.delete_conversation("conv_1", None)
    assert await store.get_conversation("conv_1", None) is None
    assert await store.find_items(["msg_b"], None) == {}           # its items went with it


async def test_reassigned_owners_take_their_conversations(store):
    await store.create_conversation("conv_1", "key-tag", {}, [_msg("a")])
    assert await store.reassign_owners({"key-tag": "tenant:team"}) == 1
    assert await store.get_conversation("conv_1", "tenant:team") is not None
    assert await store.get_conversation("conv_1", "key-tag") is None


async def test_a_failed_transaction_leaves_nothing(store):
    await store.create_conversation("conv_1", None, {}, [])
    with pytest.raises(STORE_ERRORS):
        await store.create_conversation("conv_1", None, {}, [_msg("dup")])   # the id is taken
    assert await store.list_conversation_items("conv_1", None, limit=10, order="asc") is not None
    page = await store.list_conversation_items("conv_1", None, limit=10, order="asc")
    assert page.items == []
    await store.create_conversation("conv_2", None, {}, [_msg("next")])   # no transaction was left open
    assert [i["id"] for i in (await store.list_conversation_items("conv_2", None, limit=5, order="asc")).items] \
        == ["msg_next"]


async def test_a_version_4_store_gains_the_conversation_tables(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for step in MIGRATIONS[:4]:
        conn.executescript(step)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    conn.close()
    store = await ResponseStore(str(path)).open()
    try:
        made = await store.create_conversation("conv_1", None, {}, [_msg("a")])
        assert made["object"] == "conversation"
    finally:
        await store.close()
