"""db.py: the response store on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest

from db import SCHEMA_VERSION, ResponseStore


@pytest.fixture
async def store(tmp_path):
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


async def test_schema_is_versioned_and_wal(store, tmp_path):
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
    items = await store.get_chain_items("r3")
    assert [i["id"] for i in items] == ["msg_a", "msg_a-answer", "msg_b", "msg_b-answer", "msg_c", "msg_c-answer"]
    assert await store.get_chain_items("nope") is None


async def test_deep_chain(store):
    prev = None
    for n in range(300):
        await _turn(store, f"r{n}", prev, str(n))
        prev = f"r{n}"
    items = await store.get_chain_items("r299")
    assert len(items) == 600 and items[0]["id"] == "msg_0" and items[-1]["id"] == "msg_299-answer"


async def test_ownership(store):
    await _turn(store, "r1", None, "a", owner="alice")
    assert await store.get_response("r1", "bob") is None
    assert await store.get_chain_items("r1", "bob") is None
    assert (await store.get_response("r1", "alice"))["status"] == "completed"
    assert await store.find_items(["msg_a"], "bob") == {}
    assert not await store.delete_response("r1", "bob")
    assert await store.delete_response("r1", "alice")
    assert await store.get_response("r1") is None


async def test_find_items_in_inputs_and_outputs(store):
    await _turn(store, "r1", None, "a")
    found = await store.find_items(["msg_a", "msg_a-answer", "msg_zzz"])
    assert set(found) == {"msg_a", "msg_a-answer"}


async def test_orphans_are_failed(store):
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
    assert done.returncode == 3 and "another gateway process already uses the store" in done.stdout
    await first.close()
    again = subprocess.run([sys.executable, "-c", code, path], cwd=root, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
