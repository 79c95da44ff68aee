"""Usage slots under churn, at the registry: the per endpoint-model limit holds, waiters
are served as slots free, cancelled or timed-out waiters take nothing with them."""

from __future__ import annotations

import asyncio
import random

import pytest

from backends import Registry
from config import Settings
from errors import APIError

URL = "http://127.0.0.1:9"


@pytest.fixture
async def registry():
    """``make(limit, queue_timeout)``: a registry whose one endpoint serves ``tiny`` (no network)."""
    made: list[Registry] = []

    def make(limit: int = 1, queue_timeout: float = 5) -> Registry:
        reg = Registry(Settings(endpoints=[URL], max_concurrent_connections=limit, queue_timeout=queue_timeout))
        ep = reg.endpoints[URL]
        ep.models = ep.loaded = {"tiny"}
        ep.reachable, ep.refreshed_at = True, float("inf")
        made.append(reg)
        return reg
    yield make
    for reg in made:
        await reg.close()


async def test_limit_holds_and_every_waiter_is_served(registry):
    reg = registry(limit=2)
    peak = 0
    rng = random.Random(3)

    async def user():
        nonlocal peak
        key = await reg.choose("tiny")
        peak = max(peak, reg.usage[key])
        await asyncio.sleep(rng.random() * 0.01)
        await reg.release(*key)
    await asyncio.wait_for(asyncio.gather(*(user() for _ in range(200))), 10)
    assert peak == 2 and reg.usage == {}


async def test_queue_timeout_is_429_and_takes_no_slot(registry):
    reg = registry(limit=1, queue_timeout=0.2)
    held = await reg.choose("tiny")
    with pytest.raises(APIError) as caught:
        await reg.choose("tiny")
    assert caught.value.status == 429 and caught.value.code == "all_endpoints_busy"
    assert reg.usage == {held: 1}
    await reg.release(*held)
    await reg.release(*held)                            # one release too many never goes below zero
    assert reg.usage == {}
    assert await asyncio.wait_for(reg.choose("tiny"), 1) == held


async def test_cancelled_waiters_take_no_slot(registry):
    reg = registry(limit=1)
    held = await reg.choose("tiny")
    waiters = [asyncio.create_task(reg.choose("tiny")) for _ in range(10)]
    await asyncio.sleep(0.05)
    for task in waiters[::2]:
        task.cancel()
    await asyncio.sleep(0.05)
    await reg.release(*held)
    served = 0
    for task in waiters[1::2]:
        key = await asyncio.wait_for(task, 2)
        served += 1
        assert reg.usage == {key: 1}
        await reg.release(*key)
    assert served == 5 and reg.usage == {}
    assert all(task.cancelled() for task in waiters[::2])


async def test_a_waiter_cancelled_as_the_slot_frees_takes_nothing_and_strands_nobody(registry):
    reg = registry(limit=1)
    held = await reg.choose("tiny")
    first = asyncio.create_task(reg.choose("tiny"))
    second = asyncio.create_task(reg.choose("tiny"))
    await asyncio.sleep(0.05)
    await reg.release(*held)             # wakes the first waiter ...
    first.cancel()                       # ... which is cancelled before it runs
    outcome = (await asyncio.gather(first, return_exceptions=True))[0]
    assert isinstance(outcome, asyncio.CancelledError), f"the cancelled waiter got {outcome!r}"
    key = await asyncio.wait_for(second, 1)    # the slot is free: the next waiter gets it now
    assert reg.usage == {key: 1}


async def test_cancellation_storm_leaves_usage_at_zero(registry):
    reg = registry(limit=3)
    rng = random.Random(11)
    peak = 0

    async def user():
        nonlocal peak
        key = await reg.choose("tiny")
        peak = max(peak, reg.usage[key])
        try:
            await asyncio.sleep(rng.random() * 0.005)
        finally:
            await reg.release(*key)

    tasks = [asyncio.create_task(user()) for _ in range(300)]
    for _ in range(60):
        await asyncio.sleep(0.002)
        rng.choice(tasks).cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    assert reg.usage == {} and peak == 3
    served = sum(r is None for r in results)
    assert served >= 240 and all(r is None or isinstance(r, asyncio.CancelledError) for r in results)


async def test_a_freed_slot_reaches_the_waiter_that_can_use_it(registry):
    """Waiters for two models share one queue: a slot freed for one model must not be lost on a
    waiter of the other (which would then sleep its whole queue_timeout)."""
    reg = registry(limit=1, queue_timeout=5)
    reg.endpoints[URL].models = reg.endpoints[URL].loaded = {"a", "b"}
    await reg.choose("a")
    await reg.choose("b")
    wait_a = asyncio.create_task(reg.choose("a"))
    await asyncio.sleep(0.05)
    wait_b = asyncio.create_task(reg.choose("b"))
    await asyncio.sleep(0.05)
    await reg.release(URL, "b")
    assert await asyncio.wait_for(wait_b, 1) == (URL, "b")
    assert not wait_a.done()
    await reg.release(URL, "a")
    assert await asyncio.wait_for(wait_a, 1) == (URL, "a")
