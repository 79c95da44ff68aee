"""PostgreSQL and Redis for the PostgreSQL phases: reachability, a schema, and their CPU.

CPU is read the way :mod:`bench.procs` reads it (the process CPU clock), for the
processes that serve the gateway replicas, when they run on this machine:

* PostgreSQL: the backends of the replicas' connections, found in ``pg_stat_activity`` by
  the ``application_name`` the replicas' ``store_url`` sets (:func:`with_settings`);
* Redis: the server process (``INFO server``'s ``process_id``).

The server's own background processes (WAL writer, checkpointer ...) are not counted.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from bench.procs import cpu_seconds
from slots import safe_redis_url as safe_url  # noqa: F401  (any URL: its password hidden)

_TICKS = os.sysconf("SC_CLK_TCK")
_LOCAL = ("", "127.0.0.1", "localhost", "::1")


def with_settings(url: str, **settings: str) -> str:
    """``url`` with ``settings`` added to its query (asyncpg passes them as server settings:
    ``search_path``, ``application_name``)."""
    query = "&".join(f"{key}={value}" for key, value in settings.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def is_local(url: str) -> bool:
    """Whether ``url``'s server runs on this machine (loopback, or no host: a Unix socket)."""
    return (urlsplit(url).hostname or "") in _LOCAL


async def probe(postgres: str, redis_url: str, timeout: float = 5.0) -> str | None:
    """None when both PostgreSQL and Redis answer, else why not (one line)."""
    try:
        import asyncpg
        conn = await asyncpg.connect(postgres, timeout=timeout)
        await conn.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip, and say why
        return f"cannot connect to PostgreSQL {safe_url(postgres)}: {type(exc).__name__}: {exc}"
    try:
        import redis.asyncio as aioredis
        client = aioredis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            await client.ping()
        finally:
            await client.aclose()
    except Exception as exc:  # noqa: BLE001
        return f"cannot reach Redis {safe_url(redis_url)}: {type(exc).__name__}: {exc}"
    return None


async def run_sql(url: str, statement: str) -> None:
    """Run one SQL statement on a fresh connection to ``url``."""
    import asyncpg
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy so far (``/proc/stat``: user, nice,
    system, irq, softirq, steal; idle and iowait left out)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / _TICKS


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


class ServiceCpu:
    """CPU seconds of the PostgreSQL backends named ``application_name`` and of the Redis server.
    Use: ``await open()``, :meth:`read` before and after, :meth:`spent`, ``await close()``.
    A server not on this machine (or not readable) gives None."""

    def __init__(self, postgres: str, redis_url: str, application_name: str):
        self.postgres, self.redis_url, self.application_name = postgres, redis_url, application_name
        self._conn = None
        self.redis_pid: int | None = None

    async def open(self) -> "ServiceCpu":
        """Connect to PostgreSQL (to read ``pg_stat_activity``) and find the Redis server's pid."""
        if is_local(self.postgres):
            import asyncpg
            self._conn = await asyncpg.connect(self.postgres, timeout=10)
        if is_local(self.redis_url):
            import redis.asyncio as aioredis
            client = aioredis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)
            try:
                pid = int((await client.info("server"))["process_id"])
            finally:
                await client.aclose()
            if _cpu(pid) is not None:
                self.redis_pid = pid
        return self

    async def read(self) -> dict:
        """``{"postgres": {backend pid: CPU s} or None, "redis": CPU s or None}``, cumulative."""
        backends = None
        if self._conn is not None:
            rows = await self._conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                          self.application_name)
            backends = {r["pid"]: c for r in rows if (c := _cpu(r["pid"])) is not None}
        return {"postgres": backends, "redis": _cpu(self.redis_pid) if self.redis_pid else None}

    @staticmethod
    def spent(before: dict, after: dict) -> dict[str, float | None]:
        """CPU seconds between two :meth:`read` results: ``postgres`` (a backend that appeared
        in between counts whole, one that ended is lost) and ``redis``."""
        pg = None
        if after["postgres"] is not None and before["postgres"] is not None:
            pg = sum(cpu - before["postgres"].get(pid, 0.0) for pid, cpu in after["postgres"].items())
        redis = None if after["redis"] is None or before["redis"] is None else after["redis"] - before["redis"]
        return {"postgres": pg, "redis": redis}

    async def close(self) -> None:
        """Close the PostgreSQL connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - a connection that cannot close cleanly is dropped
                conn.terminate()
