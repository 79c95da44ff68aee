"""engine.eventlog: background streams written to the store as produced, and followed from it
(on a real SQLite store; the PostgreSQL one has the same methods)."""

from __future__ import annotations

import asyncio

import pytest

from db import ResponseStore
from engine.eventlog import EventLog, closing_events, follow_stored


@pytest.fixture
async def store(tmp_path):
    s = await ResponseStore(str(tmp_path / "s.db")).open()
    yield s
    await s.close()


def _response(status: str) -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status, "model": "m", "output": [],
            "error": None, "incomplete_details": None, "background": True}


def _delta(n: int) -> dict:
    return {"type": "response.output_text.delta", "sequence_number": n, "delta": f"w{n}", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "logprobs": []}


async def _row(store: ResponseStore, status: str) -> None:
    await store.store_response("resp_1", previous_response_id=None, model="m", status=status, created_at=1,
                               input_messages=[], response=_response(status), request={"model": "m"}, background=True)


async def _collect(follower) -> list[dict]:
    return [event async for batch in follower for event in batch]


async def test_a_follower_reads_what_is_stored_then_what_comes(store):
    await _row(store, "in_progress")
    await store.append_events("resp_1", [_delta(0), _delta(1)])
    follower = asyncio.ensure_future(_collect(follow_stored(store, "resp_1", after=0)))
    await asyncio.sleep(0.1)
    await store.append_events("resp_1", [_delta(2)])
    await store.update_response("resp_1", _response("cancelled"))
    await store.append_events("resp_1", closing_events({**_response("failed"), "error": {
        "code": "server_error", "message": "gone"}}, 2))
    events = await asyncio.wait_for(follower, 30)
    assert [e["sequence_number"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]


class _LateStore:
    """The store, as if the events after ``late`` were stored just after the follower asked for
    them (and before it looked at the row): hidden until then, and that read comes back empty."""

    def __init__(self, store: ResponseStore, late: int):
        self.store, self.late, self.missed = store, late, False

    async def get_events(self, id: str, after: int = -1) -> list[dict]:
        events = await self.store.get_events(id, after)
        if self.missed:
            return events
        if after == self.late:
            self.missed = True
            return []
        return [e for e in events if e["sequence_number"] <= self.late]

    async def get_response(self, id: str) -> dict | None:
        return await self.store.get_response(id)


async def test_events_stored_while_the_follower_looked_at_the_ended_row_are_not_lost(store):
    await _row(store, "in_progress")
    await store.append_events("resp_1", [_delta(0), _delta(1)])
    await store.update_response("resp_1", _response("cancelled"))
    await store.append_events("resp_1", [{"type": "response.failed", "sequence_number": 2,
                                          "response": _response("cancelled")}])
    events = await asyncio.wait_for(_collect(follow_stored(_LateStore(store, 1), "resp_1", after=0)), 30)
    assert [(e["sequence_number"], e["type"]) for e in events] == [(1, "response.output_text.delta"),
                                                                    (2, "response.failed")]


async def test_a_log_that_stops_short_ends_with_the_stored_final_state(store):
    """The writer died after the final state was stored: the follower gets the terminal event
    made from the Response object, numbered after the last stored event."""
    await _row(store, "in_progress")
    await store.append_events("resp_1", [_delta(0), _delta(1)])
    await store.update_response("resp_1", _response("completed"))
    events = await asyncio.wait_for(_collect(follow_stored(store, "resp_1")), 30)
    assert [e["sequence_number"] for e in events] == [0, 1, 2]
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["status"] == "completed"


async def test_a_response_without_a_log_is_replayed_from_its_object(store):
    await _row(store, "completed")
    events = await asyncio.wait_for(_collect(follow_stored(store, "resp_1")), 30)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert await _collect(follow_stored(store, "resp_nope")) == []


class _RefusingStore:
    """Refuses ``refusals`` writes, then stores them in ``events``."""

    def __init__(self, refusals: int):
        self.refusals, self.events = refusals, []

    async def append_events(self, id: str, events: list[dict]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise OSError("disk gone")
        self.events += events


async def test_followers_get_only_what_is_stored_in_order_through_refusals():
    store, delivered = _RefusingStore(2), []
    log = EventLog(store, "resp_1", delivered.extend)
    log.add([_delta(0)])
    log.add([_delta(1), _delta(2)])
    await asyncio.sleep(0)
    assert delivered == []                                   # nothing delivered before it is stored
    await log.close()
    assert delivered == store.events == [_delta(0), _delta(1), _delta(2)]


async def test_a_closing_log_gives_a_refusing_store_a_few_tries_then_delivers():
    store, delivered = _RefusingStore(100), []
    log = EventLog(store, "resp_1", delivered.extend)
    log.add([_delta(0)])
    await asyncio.wait_for(log.close(), 30)
    assert delivered == [_delta(0)] and store.events == []   # the followers still get the end
