"""Which response store a gateway runs on: the one place that knows both.

``store_url`` names it: ``sqlite:///path`` (the default, from ``db_path``; one process,
``db.ResponseStore``) or ``postgresql://...`` (shared by replicas,
``db_postgres.PostgresStore``). Both have the same methods; the engine asks
``store.shared`` where one process and many differ (who fails unfinished turns, who
runs queued jobs, how a cancel reaches the turn).
"""

from __future__ import annotations

import sqlite3

import asyncpg

from db import ResponseStore, StoreInUse
from db_postgres import PostgresStore

__all__ = ["Store", "StoreInUse", "open_store", "STORE_ERRORS", "sqlite_path"]

Store = ResponseStore | PostgresStore

#: What a store raises when it cannot do what was asked now (a 503 for the client): a
#: PostgreSQL server that cannot be reached is a ``ConnectionError`` (refused, reset) from asyncpg.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, asyncpg.PostgresError,
                                                 asyncpg.InterfaceError, ConnectionError)


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL (``sqlite:///./a.db`` -> ``./a.db``,
    ``sqlite:////abs/a.db`` -> ``/abs/a.db``), or None for another kind of store."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


async def open_store(url: str) -> Store:
    """Open the store ``url`` names (creating or migrating its schema).

    Raises :class:`StoreInUse` when another process holds a SQLite store, RuntimeError
    for a store of a newer schema, ``sqlite3.Error``/OSError/asyncpg errors when it
    cannot be opened, ValueError for a URL of neither kind.
    """
    path = sqlite_path(url)
    if path is not None:
        return await ResponseStore(path).open()
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore(url).open()
    raise ValueError(f"store_url {url!r} is neither sqlite:///path nor postgresql://...")
