"""Usage slots shared by every replica through Redis, with leases.

Each ``max_concurrent_connections`` counter of an (endpoint url, model name at endpoint) pair
is one Redis sorted set, ``prefix + endpoint + "|" + model``. Its members are the slots held
now, one token each (the replica's id and a random part); a member's score is the moment its
lease runs out, in milliseconds of the Redis server's clock (so the replicas' own clocks never
matter). Taking a slot is one Lua script (drop the expired members; add a token when fewer than
the limit are left), so two replicas never both take the last slot. A replica renews the
leases of the tokens it holds every fifth of the lease; one that dies stops renewing, and its
slots come back once their leases have run out. A release is published on a channel, so
waiters on every replica try again at once rather than at their next poll.

A Redis that cannot be reached is never a free slot: :meth:`SharedSlots.acquire` and
:meth:`SharedSlots.counts` raise :class:`SlotsUnavailable` (the registry answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["SharedSlots", "SlotsUnavailable", "Pair", "redis_client", "safe_redis_url"]

log = logging.getLogger("nomyo_router.slots")

#: ``(endpoint url, model name at that endpoint)``.
Pair = tuple[str, str]

#: Seconds between two attempts of the wake subscriber to reach Redis again.
RESUBSCRIBE_SECONDS = 1.0

# The Redis server's clock in ms, for every script below. ``replicate_commands`` lets a script
# of Redis < 5 write after TIME (later versions always replicate effects; the call is a no-op).
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS[1] the pair's set; ARGV token, limit, lease ms. 1 when the token holds a slot now. A token
# already there (a retried call whose first answer was lost) keeps its slot: no slot leaks.
_ACQUIRE = _PRELUDE + """
local key, token = KEYS[1], ARGV[1]
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, token) or redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now + lease, token)
  keep(key, 2 * lease)
  return 1
end
return 0
"""

# KEYS[i] the set of token ARGV[i + 1]; ARGV[1] lease ms. The (1-based) indexes of the tokens
# that are gone (taken back, or Redis lost them): those are not added again.
_RENEW = _PRELUDE + """
local lease = tonumber(ARGV[1])
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, now + lease, ARGV[i + 1])
    keep(key, 2 * lease)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS[1] the pair's set, KEYS[2] the wake channel; ARGV token, limit (0: unknown). The token is
# removed; the release is published only when the pair was full (nobody waits for a pair with
# room, so replicas are not woken for nothing).
_RELEASE = _PRELUDE + """
local key, token, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local full = limit == 0 or redis.call('ZCOUNT', key, '(' .. now, '+inf') >= limit
if redis.call('ZREM', key, token) == 1 and full then
  redis.call('PUBLISH', KEYS[2], key)
end
return 0
"""

# KEYS the pairs' sets: how many live (unexpired) members each has.
_COUNTS = _PRELUDE + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return out
"""


class SlotsUnavailable(Exception):
    """Redis could not be asked (unreachable, timed out, or it answered an error): no slot is
    known to be free. The message names the Redis (without its password) and the cause."""


def safe_redis_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


#: Connections one client keeps to Redis at most; a command finding all busy waits for one.
REDIS_CONNECTIONS = 64


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A ``redis.asyncio`` client of ``url`` whose every command (its connecting included) takes
    at most ``timeout`` seconds, tried at most twice: an unreachable Redis is known at once,
    not after redis-py's default ten retries. At most :data:`REDIS_CONNECTIONS` connections;
    a command waits (within ``timeout``) for a free one rather than failing, as redis-py's
    default pool does past its 100."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))
    return aioredis.Redis.from_pool(pool)


class SharedSlots:
    """The usage slots of every endpoint-model pair, counted by all replicas together.

    ``url`` is the Redis (``redis://host:6379/0``); ``lease`` the seconds a slot stays held
    without renewal (this replica renews every ``lease / 5`` s while :meth:`start` runs);
    ``prefix`` begins every key and the wake channel; ``wake`` is awaited (with no argument)
    whenever a slot was released on any replica, and when the subscription (re)starts;
    ``timeout`` bounds each Redis command, in seconds. Use: ``await start()`` ... ``await close()``.
    """

    def __init__(self, url: str, lease: float, *, prefix: str = "nomyo-router:slots:",
                 wake: Callable[[], Awaitable[None]] | None = None, timeout: float = 5.0,
                 replica: str | None = None):
        self.url, self.lease, self.prefix, self.timeout = url, lease, prefix, timeout
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.channel = f"{prefix}released"
        self._wake = wake
        self._redis = redis_client(url, timeout)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._counts = self._redis.register_script(_COUNTS)
        self._release = self._redis.register_script(_RELEASE)
        self._held: dict[Pair, list[str]] = {}
        self._pending: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._listening = asyncio.Event()

    def key(self, pair: Pair) -> str:
        """The Redis key of ``pair``'s sorted set: ``prefix + endpoint + "|" + model``."""
        return f"{self.prefix}{pair[0]}|{pair[1]}"

    @property
    def lease_ms(self) -> int:
        """The lease in whole milliseconds (at least 1)."""
        return max(1, round(self.lease * 1000))

    def held(self) -> dict[Pair, int]:
        """How many slots this replica holds now, by pair (pairs with none left out)."""
        return {pair: len(tokens) for pair, tokens in self._held.items() if tokens}

    def _unavailable(self, exc: BaseException) -> SlotsUnavailable:
        return SlotsUnavailable(f"Redis {safe_redis_url(self.url)} cannot be asked for slots: "
                                f"{type(exc).__name__}: {exc}")

    # lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Start renewing this replica's leases and listening for releases. Waits (at most
        ``timeout`` s) for the first subscription attempt, so a release published right after
        wakes this replica; never raises (an unreachable Redis is logged, and retried)."""
        self._tasks = [asyncio.create_task(self._renew_forever(), name="slots-renew"),
                       asyncio.create_task(self._listen_forever(), name="slots-listen")]
        try:
            await asyncio.wait_for(self._listening.wait(), self.timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Stop renewing and listening, give back every slot this replica still holds (waking
        the other replicas), close the connections. Never raises for Redis errors: slots that
        could not be given back come back when their leases run out."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._pending, return_exceptions=True)
        self._tasks = []
        held = [(pair, token) for pair, tokens in self._held.items() for token in tokens]
        self._held.clear()
        try:
            if held:
                await self._remove(held)
        finally:
            await self._redis.aclose()

    # slots ---------------------------------------------------------------------
    async def acquire(self, pair: Pair, limit: int) -> str | None:
        """Take one slot of ``pair`` when fewer than ``limit`` are held by all replicas together.

        Returns the slot's token (this replica renews it until :meth:`release`), or None when
        all ``limit`` are taken. Raises :class:`SlotsUnavailable` when Redis cannot be asked. A
        call cancelled or failed midway takes nothing (a token it may have left is removed).
        """
        token = f"{self.replica}:{secrets.token_hex(6)}"
        try:
            taken = await self._acquire(keys=[self.key(pair)], args=[token, limit, self.lease_ms])
        except BaseException as exc:
            self._spawn(self._remove([(pair, token)], cleanup=True))
            if isinstance(exc, (RedisError, OSError)):
                raise self._unavailable(exc) from exc
            raise
        if not taken:
            return None
        self._held.setdefault(pair, []).append(token)
        return token

    async def release(self, pair: Pair, token: str | None = None, limit: int = 0) -> None:
        """Give back the slot ``token`` of ``pair`` (None: any one this replica holds of
        ``pair``; none held: nothing happens) and wake the waiters of every replica: only when
        the pair was full at its ``limit`` (0: always), since nobody waits for a pair with room.

        Never raises for Redis errors (logged): the slot then comes back when its lease runs
        out, since this replica renews it no more. A cancelled caller still gives it back.
        """
        tokens = self._held.get(pair) or []
        if token is None:
            token = tokens[-1] if tokens else None
        if token is None or token not in tokens:
            return
        tokens.remove(token)
        if not tokens:
            del self._held[pair]
        await asyncio.shield(self._spawn(self._give_back(pair, token, limit)))

    async def _give_back(self, pair: Pair, token: str, limit: int) -> None:
        try:
            await self._release(keys=[self.key(pair), self.channel], args=[token, limit])
        except (RedisError, OSError) as exc:
            log.warning("a slot was not given back (%s); its lease runs out in %g s", self._unavailable(exc),
                        self.lease)

    async def counts(self, pairs: list[Pair]) -> dict[Pair, int]:
        """The slots held now by all replicas together, of each of ``pairs`` (one round trip).
        Raises :class:`SlotsUnavailable` when Redis cannot be asked."""
        if not pairs:
            return {}
        try:
            live = await self._counts(keys=[self.key(pair) for pair in pairs])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return {pair: int(n) for pair, n in zip(pairs, live)}

    async def renew(self) -> int:
        """Extend the lease of every slot this replica holds to ``lease`` s from now. Slots whose
        lease had already run out and were taken back (or that Redis lost) are dropped, logged;
        returns how many. Raises :class:`SlotsUnavailable` when Redis cannot be asked."""
        held = [(pair, token) for pair, tokens in self._held.items() for token in tokens]
        if not held:
            return 0
        try:
            lost = await self._renew(keys=[self.key(pair) for pair, _ in held],
                                     args=[self.lease_ms, *(token for _, token in held)])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        for index in lost:
            pair, token = held[int(index) - 1]
            tokens = self._held.get(pair, [])
            if token in tokens:
                tokens.remove(token)
                if not tokens:
                    del self._held[pair]
        if lost:
            log.warning("%d slot lease(s) of this replica ran out before their renewal (a pause longer "
                        "than replica_lease, or Redis lost them): those requests count no more", len(lost))
        return len(lost)

    # background ----------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _remove(self, slots: list[tuple[Pair, str]], *, cleanup: bool = False) -> None:
        """ZREM the tokens and publish the release; Redis errors are logged only. ``cleanup``:
        tokens a failed acquire may have left, which nobody waits for (no publish, no warning)."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for pair, token in slots:
                pipe.zrem(self.key(pair), token)
            if not cleanup:
                pipe.publish(self.channel, self.key(slots[0][0]))
            await pipe.execute()
        except (RedisError, OSError) as exc:
            (log.debug if cleanup else log.warning)(
                "%d slot(s) not given back (%s); their leases run out in %g s",
                len(slots), self._unavailable(exc), self.lease)

    async def _renew_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.lease / 5)
            try:
                await self.renew()
            except SlotsUnavailable as exc:
                if not failing:
                    log.warning("renewing this replica's slot leases failed: %s", exc)
                failing = True
                continue
            if failing:
                log.info("renewing slot leases works again (Redis %s)", safe_redis_url(self.url))
            failing = False

    async def _listen_forever(self) -> None:
        """Subscribe to the wake channel and await ``wake`` for every message; resubscribe
        (every :data:`RESUBSCRIBE_SECONDS`) when Redis goes away."""
        failing = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._listening.set()
                if failing:
                    log.info("listening for slot releases again (Redis %s)", safe_redis_url(self.url))
                failing = False
                await self._call_wake()              # releases missed while away
                while True:
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0) is not None:
                        await self._call_wake()
            except (RedisError, OSError) as exc:
                self._listening.set()
                if not failing:
                    log.warning("not listening for slot releases (waiters poll instead): %s",
                                self._unavailable(exc))
                failing = True
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _call_wake(self) -> None:
        if self._wake is None:
            return
        try:
            await self._wake()
        except Exception:  # a failing callback must not stop the listener
            log.exception("the slot wake callback failed")
