"""Usage slots shared by replicas through the real Redis (127.0.0.1:6379): two Registry
instances are two replicas; the endpoints are fake (never called), their models set by hand.
Every test has its own key prefix, its keys deleted afterwards."""

from __future__ import annotations

import asyncio
import functools
import random

import pytest

import backends
from backends import Registry
from config import Settings
from tests.conftest import REDIS
from errors import APIError
from slots import SharedSlots

A, B = "http://127.0.0.1:9", "http://127.0.0.1:10"


async def _no_discovery() -> None:
    """Stands in for ``Registry.refresh_all``: the fake endpoints are never asked."""


@pytest.fixture
async def replicas(redis_prefix, monkeypatch):
    """``await make(*urls, limit=2, queue_timeout=30, lease=5, redis_url=REDIS)``: a started
    registry (a replica) whose endpoints serve ``tiny``; all share this test's key prefix."""
    prefix = redis_prefix
    monkeypatch.setattr(backends, "SharedSlots", functools.partial(SharedSlots, prefix=prefix))
    made: list[Registry] = []

    async def make(*urls: str, limit: int = 2, queue_timeout: float = 30, lease: float = 5,
                   redis_url: str = REDIS) -> Registry:
        reg = Registry(Settings(endpoints=list(urls or [A]), redis_url=redis_url, max_concurrent_connections=limit,
                                queue_timeout=queue_timeout, replica_lease=lease))
        for ep in reg.endpoints.values():
            ep.models = ep.loaded = {"tiny"}
            ep.reachable, ep.refreshed_at = True, float("inf")
        reg.refresh_all = _no_discovery
        made.append(reg)
        await reg.start()
        return reg
    make.prefix = prefix
    yield make
    for reg in made:
        await reg.close()


async def _until(check, timeout: float = 30, every: float = 0.05) -> None:
    """Poll ``check()`` (sync or async) until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(every)


async def test_two_replicas_never_hold_more_than_the_limit(replicas, redis_db):
    one, two = await replicas(limit=2), await replicas(limit=2)
    rng = random.Random(5)
    held = peak = 0

    async def user(reg: Registry):
        nonlocal held, peak
        key = await reg.choose("tiny")
        held += 1
        peak = max(peak, held)
        try:
            await asyncio.sleep(rng.random() * 0.02)
        finally:
            held -= 1
            await reg.release(*key)
    await asyncio.wait_for(asyncio.gather(*(user(reg) for reg in [one, two] * 15)), 90)
    assert 1 <= peak <= 2
    assert one.usage == two.usage == {} and one.queued == two.queued == {}
    assert await one.slots.counts([(A, "tiny")]) == {(A, "tiny"): 0}
    assert one.slots.held() == two.slots.held() == {}


async def test_a_replica_sees_the_slots_the_other_holds(replicas):
    one, two = await replicas(limit=2), await replicas(limit=2, queue_timeout=0.3)
    first, second = await one.choose("tiny"), await one.choose("tiny")
    assert first == second == (A, "tiny") and one.usage == {(A, "tiny"): 2}
    with pytest.raises(APIError) as caught:
        await two.choose("tiny")
    assert caught.value.status == 429 and caught.value.code == "all_endpoints_busy"
    assert two.usage == {} and two.queued == {}
    await one.release(A, "tiny")
    assert await asyncio.wait_for(two.choose("tiny"), 10) == (A, "tiny")
    assert two.usage == {(A, "tiny"): 1} and one.usage == {(A, "tiny"): 1}


async def test_a_waiter_on_one_replica_is_woken_by_a_release_on_the_other(replicas, monkeypatch):
    monkeypatch.setattr(backends, "SHARED_POLL_SECONDS", 120)   # only the wake can serve it in time
    one, two = await replicas(limit=1), await replicas(limit=1)
    held = await one.choose("tiny")
    waiter = asyncio.create_task(two.choose("tiny"))
    await _until(lambda: two.queued == {"tiny": 1})
    assert not waiter.done()
    await one.release(*held)
    assert await asyncio.wait_for(waiter, 20) == held
    assert two.usage == {held: 1} and two.queued == {} and one.usage == {}


async def test_a_dead_replicas_slots_come_back_after_its_lease(replicas, redis_db):
    one, two = await replicas(limit=2, lease=1), await replicas(limit=2, lease=1)
    await one.choose("tiny")
    await one.choose("tiny")
    key = one.slots.key((A, "tiny"))
    scores = dict(await redis_db.zrange(key, 0, -1, withscores=True))
    assert len(scores) == 2

    async def renewed():
        now = dict(await redis_db.zrange(key, 0, -1, withscores=True))
        return now.keys() == scores.keys() and all(now[t] > scores[t] for t in now)
    await _until(renewed)                                       # alive: the leases move on
    for task in one.slots._tasks:                               # dies: no renewal, no release
        task.cancel()
    await asyncio.gather(*one.slots._tasks, return_exceptions=True)
    got = await asyncio.wait_for(two.choose("tiny"), 60)        # waits for the leases to run out
    assert got == (A, "tiny")
    assert await asyncio.wait_for(two.choose("tiny"), 30) == (A, "tiny")
    assert await two.slots.counts([(A, "tiny")]) == {(A, "tiny"): 2}


async def test_a_closing_replica_gives_its_slots_back(replicas):
    one, two = await replicas(limit=1), await replicas(limit=1, queue_timeout=0)
    await one.choose("tiny")
    with pytest.raises(APIError):
        await two.choose("tiny")
    await one.close()
    assert await two.choose("tiny") == (A, "tiny")


async def test_a_replica_routes_to_the_endpoint_the_other_is_not_busy_on(replicas):
    one, two = await replicas(A, B, limit=2), await replicas(A, B, limit=2)
    assert await one.choose("tiny") == (A, "tiny")              # both idle: the first endpoint
    assert await two.choose("tiny") == (B, "tiny")              # its own usage is 0 on both; A is busier
    assert await one.choose("tiny") == (A, "tiny")              # 1 and 1: the first again
    assert await one.slots.counts([(A, "tiny"), (B, "tiny")]) == {(A, "tiny"): 2, (B, "tiny"): 1}
    assert await two.choose("tiny") == (B, "tiny")
    assert one.usage == {(A, "tiny"): 2} and two.usage == {(B, "tiny"): 2}


async def test_loaded_still_comes_before_less_busy(replicas):
    one, two = await replicas(A, B, limit=3), await replicas(A, B, limit=3)
    for reg in (one, two):
        reg.endpoints[B].loaded = set()
    assert await one.choose("tiny") == (A, "tiny")
    assert await two.choose("tiny") == (A, "tiny")


async def test_an_unreachable_redis_is_503_slots_unavailable(replicas):
    reg = await replicas(redis_url="redis://127.0.0.1:1", queue_timeout=5)
    with pytest.raises(APIError) as caught:
        await asyncio.wait_for(reg.choose("tiny"), 30)
    error = caught.value
    assert (error.status, error.code, error.type) == (503, "slots_unavailable", "server_error")
    assert "127.0.0.1:1" in error.message
    assert reg.usage == {} and reg.queued == {}
    await reg.release(A, "tiny")                                # nothing held: no error either


async def test_without_redis_url_the_slots_stay_local():
    reg = Registry(Settings(endpoints=[A], max_concurrent_connections=1, queue_timeout=0))
    ep = reg.endpoints[A]
    ep.models = ep.loaded = {"tiny"}
    ep.reachable, ep.refreshed_at = True, float("inf")
    reg.refresh_all = _no_discovery
    await reg.start()
    try:
        assert reg.slots is None
        assert await reg.choose("tiny") == (A, "tiny")
        with pytest.raises(APIError):
            await reg.choose("tiny")
    finally:
        await reg.close()


async def test_cancelled_waiters_and_users_leave_no_slot_behind(replicas):
    one, two = await replicas(limit=2), await replicas(limit=2)
    rng = random.Random(17)

    async def user(reg: Registry):
        key = await reg.choose("tiny")
        try:
            await asyncio.sleep(rng.random() * 0.01)
        finally:
            await reg.release(*key)
    tasks = [asyncio.create_task(user(reg)) for reg in [one, two] * 20]
    for _ in range(12):
        await asyncio.sleep(rng.random() * 0.01)
        rng.choice(tasks).cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 90)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    assert one.usage == two.usage == {} and one.queued == two.queued == {}
    assert one.slots.held() == two.slots.held() == {}
    await _until(lambda: _none_held(one))                       # a cancelled acquire's cleanup may still run


async def _none_held(reg: Registry) -> bool:
    return await reg.slots.counts([(A, "tiny")]) == {(A, "tiny"): 0}


async def test_shared_slots_api(redis_prefix):
    prefix = redis_prefix
    woken = asyncio.Event()

    async def wake():
        woken.set()
    one = SharedSlots(REDIS, lease=5, prefix=prefix, wake=wake)
    two = SharedSlots(REDIS, lease=5, prefix=prefix)
    pair = (A, "tiny")
    try:
        await one.start()
        await two.start()
        woken.clear()
        assert one.key(pair) == f"{prefix}{A}|tiny"
        first = await one.acquire(pair, 2)
        second = await two.acquire(pair, 2)
        assert first and second and first != second and first.startswith(one.replica)
        assert await one.acquire(pair, 2) is None
        assert await one.counts([pair, (B, "tiny")]) == {pair: 2, (B, "tiny"): 0}
        assert one.held() == {pair: 1} and two.held() == {pair: 1}
        assert await one.renew() == 0
        await two.release(pair, second)
        await asyncio.wait_for(woken.wait(), 20)                # the other replica heard of it
        await two.release(pair)                                 # nothing held: nothing happens
        assert await two.counts([pair]) == {pair: 1}
        await one.close()                                       # gives its slot back
        assert await two.counts([pair]) == {pair: 0}
    finally:
        await one.close()
        await two.close()


async def test_many_requests_at_once_wait_for_a_redis_connection_instead_of_failing(redis_prefix):
    """More requests at once than the client has connections to Redis: they take turns (a
    pool that refused past its size answered 503 slots_unavailable under load)."""
    slots = SharedSlots(REDIS, lease=5, prefix=redis_prefix)
    await slots.start()
    pair = (A, "tiny")

    async def one() -> None:
        token = await slots.acquire(pair, 10_000)
        assert token is not None
        await slots.release(pair, token, limit=10_000)
    try:
        await asyncio.gather(*(one() for _ in range(400)))
        assert await slots.counts([pair]) == {pair: 0}
    finally:
        await slots.close()
