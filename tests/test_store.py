"""The response store: the same tests on a real SQLite file and a real PostgreSQL server
(``any_store``), and what only the SQLite store has."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from db import SCHEMA_VERSION, ResponseStore


@pytest.fixture
async def store(any_store):
    return any_store


@pytest.fixture
async def sqlite_store(tmp_path):
    s = await ResponseStore(str(tmp_path / "s.db")).open()
    yield s
    await s.close()


def _msg(text, role="user"):
    return {"type": "message", "id": f"msg_{text}", "role": role, "status": "completed",
            "content": [{"type": "input_text", "text": text}]}


async def _turn(store, rid, prev, text, owner=None, status="completed"):
    response = {"id": rid, "status": status, "output": [_msg(f"{text}-answer", "assistant")]}
    await store.store_response(rid, previous_response_id=prev, model="m", status=status, created_at=1,
                               input_messages=[_msg(text)], response=response, owner=owner)


async def test_schema_is_versioned_and_wal(sqlite_store, tmp_path):
    store = sqlite_store
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    await store.close()
    again = await ResponseStore(str(tmp_path / "s.db")).open()  # reopening migrates nothing twice
    await again.close()


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await ResponseStore(str(path)).open()


async def test_chain_is_oldest_first_in_one_query(store):
    await _turn(store, "r1", None, "a")
    await _turn(store, "r2", "r1", "b")
    await _turn(store, "r3", "r2", "c")
    chain = await store.get_chain("r3")
    assert chain.complete
    assert [i["id"] for i in chain.items] == ["msg_a", "msg_a-answer", "msg_b", "msg_b-answer", "msg_c", "msg_c-answer"]
    assert await store.get_chain("nope") is None


async def test_deep_chain(store):
    prev = None
    for n in range(300):
        await _turn(store, f"r{n}", prev, str(n))
        prev = f"r{n}"
    chain = await store.get_chain("r299")
    assert chain.complete
    assert len(chain.items) == 600 and chain.items[0]["id"] == "msg_0" and chain.items[-1]["id"] == "msg_299-answer"


async def test_a_chain_past_its_item_bound_keeps_the_newest_turns_and_says_so(store):
    prev = None
    for n in range(30):
        await _turn(store, f"r{n}", prev, str(n))
        prev = f"r{n}"
    chain = await store.get_chain("r29", max_items=10)
    assert not chain.complete
    assert [i["id"] for i in chain.items] == [f"msg_{n}{s}" for n in range(25, 30) for s in ("", "-answer")]
    exact = await store.get_chain("r29", max_items=60)               # exactly at the bound: all of it
    assert exact.complete and len(exact.items) == 60
    assert not (await store.get_chain("r29", max_items=59)).complete


async def test_a_chain_past_its_byte_bound_reads_only_what_fits(store):
    await _turn(store, "big", None, "x" * 50_000)
    await _turn(store, "r1", "big", "a")
    await _turn(store, "r2", "r1", "b")
    chain = await store.get_chain("r2", max_bytes=2_000)
    assert not chain.complete and [i["id"] for i in chain.items] == ["msg_a", "msg_a-answer", "msg_b", "msg_b-answer"]
    assert (await store.get_chain("r2", max_bytes=1_000_000)).complete


async def test_item_index_follows_updates_and_deletes(store, tmp_path):
    await store.store_response("r1", previous_response_id=None, model="m", status="in_progress", created_at=1,
                               input_messages=[_msg("q")], response={"id": "r1", "status": "in_progress",
                                                                     "output": []})
    assert set(await store.find_items(["msg_q", "msg_late"])) == {"msg_q"}
    await store.update_response("r1", {"id": "r1", "status": "completed", "output": [_msg("late", "assistant")]})
    assert set(await store.find_items(["msg_q", "msg_late"])) == {"msg_q", "msg_late"}
    chain = await store.get_chain("r1", max_items=2)              # the sizes followed the update
    assert chain.complete and len(chain.items) == 2
    assert not (await store.get_chain("r1", max_items=1)).complete
    await store.delete_response("r1")
    assert await store.find_items(["msg_q", "msg_late"]) == {}
    if store.shared:
        return
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT count(*) FROM item_index").fetchone() == (0,)
    plan = " ".join(str(row) for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT response_id FROM item_index WHERE item_id IN ('a', 'b')"))
    conn.close()
    assert "USING PRIMARY KEY" in plan or "USING COVERING INDEX" in plan, plan


async def test_a_version_3_store_is_migrated_with_sizes_and_index(tmp_path):
    """Rows written before the item index and the sizes are found and bounded like new ones."""
    from db import MIGRATIONS
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for step in MIGRATIONS[:3]:
        conn.executescript(step)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    for rid, prev, text in (("r1", None, "a"), ("r2", "r1", "b")):
        output = [_msg(f"{text}-answer", "assistant")]
        conn.execute("INSERT INTO responses (id, owner, previous_response_id, model, status, created_at, "
                     "updated_at, input_items, response, output_items) VALUES (?,NULL,?,'m','completed',1,1,?,?,?)",
                     (rid, prev, orjson.dumps([_msg(text)]).decode(),
                      orjson.dumps({"id": rid, "output": output}).decode(),
                      None if rid == "r1" else orjson.dumps(output).decode()))
    conn.close()
    store = await ResponseStore(str(path)).open()
    try:
        assert set(await store.find_items(["msg_a-answer", "msg_b"])) == {"msg_a-answer", "msg_b"}
        chain = await store.get_chain("r2")
        assert chain.complete and [i["id"] for i in chain.items] == ["msg_a", "msg_a-answer", "msg_b", "msg_b-answer"]
        assert not (await store.get_chain("r2", max_items=3)).complete
    finally:
        await store.close()


async def test_ownership(store):
    await _turn(store, "r1", None, "a", owner="alice")
    assert await store.get_response("r1", "bob") is None
    assert await store.get_chain("r1", "bob") is None
    assert (await store.get_response("r1", "alice"))["status"] == "completed"
    assert await store.find_items(["msg_a"], "bob") == {}
    assert not await store.delete_response("r1", "bob")
    assert await store.delete_response("r1", "alice")
    assert await store.get_response("r1") is None


async def test_find_items_in_inputs_and_outputs(store):
    await _turn(store, "r1", None, "a")
    found = await store.find_items(["msg_a", "msg_a-answer", "msg_zzz"])
    assert set(found) == {"msg_a", "msg_a-answer"}


async def test_orphans_are_failed(sqlite_store):
    store = sqlite_store
    await _turn(store, "r1", None, "a", status="in_progress")
    await _turn(store, "r2", None, "b", status="queued")
    await _turn(store, "r3", None, "c", status="completed")
    assert await store.fail_orphaned_responses() == 2
    for rid in ("r1", "r2"):
        row = await store.get_response(rid)
        assert row["status"] == "failed" and row["response"]["status"] == "failed"
        assert row["response"]["error"]["code"] == "server_error"
    assert (await store.get_response("r3"))["status"] == "completed"
    assert await store.fail_orphaned_responses() == 0


async def test_an_orphaned_stream_gets_its_closing_events(sqlite_store):
    """A background stream whose process died ends in the log as its followers would have seen it."""
    store = sqlite_store
    await _turn(store, "r1", None, "a", status="in_progress")
    await store.append_events("r1", [{"type": "response.created", "sequence_number": 0},
                                     {"type": "response.output_text.delta", "sequence_number": 1}])
    await _turn(store, "r2", None, "b", status="in_progress")             # no events: nothing appended

    def closing(failed, last):
        return [{"type": "response.failed", "sequence_number": last + 1, "response": failed}]
    assert await store.fail_orphaned_responses(closing) == 2
    events = await store.get_events("r1")
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert events[-1]["response"]["status"] == "failed"
    assert await store.get_events("r2") == []


async def test_update_only_if_active(store):
    await _turn(store, "r1", None, "a", status="completed")
    assert not await store.update_response("r1", {"status": "cancelled"}, only_if_active=True)
    assert (await store.get_response("r1"))["status"] == "completed"


async def test_events_round_trip(store):
    await _turn(store, "r1", None, "a")
    events = [{"type": "t", "sequence_number": n} for n in range(5)]
    await store.append_events("r1", events)
    assert await store.get_events("r1", 2) == events[3:]
    await store.delete_response("r1")
    assert await store.get_events("r1") == []


async def test_one_process_per_sqlite_store(tmp_path):
    """A second gateway process on the same store is refused with a clear sentence (background
    jobs and cancels are process-local); the store is free again once the first one closes."""
    import subprocess
    import sys
    from pathlib import Path
    path = str(tmp_path / "store.db")
    first = await ResponseStore(path).open()
    code = ("import asyncio, sys; from db import ResponseStore, StoreInUse\n"
            "async def main():\n"
            "    try:\n        await ResponseStore(sys.argv[1]).open()\n"
            "    except StoreInUse as exc:\n        print(exc); sys.exit(3)\n"
            "asyncio.run(main())")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code, path], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "another gateway process already uses the SQLite store" in done.stdout
    assert "postgresql://" in done.stdout                     # it says how to run more than one
    await first.close()
    again = subprocess.run([sys.executable, "-c", code, path], cwd=root, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
