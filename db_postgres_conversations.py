"""The conversation tables of the PostgreSQL store (see ``db_conversations`` for the model).

The same methods and rules as :class:`db_conversations.ConversationTables`. Appends lock
the conversation's row (``FOR UPDATE``), so two appends on two replicas never take the
same positions; the one turn that may run on a conversation is marked with its response
id and its replica (``active_response``, ``active_replica``), so a survivor frees what a
dead replica's turns held (``db_postgres.PostgresStore.take_over``).
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson

from db_conversations import BUSY, CLAIMED, MISSING, ItemPage

__all__ = ["PostgresConversations"]

#: The items newest first with running sizes (as ``db_conversations._HISTORY_SQL``): $1 id, $2 bytes, $3 items.
_HISTORY_SQL = """
WITH sized AS (
    SELECT position, item, sum(bytes) OVER w AS total, row_number() OVER w AS n
    FROM conversation_items WHERE conversation_id = $1 WINDOW w AS (ORDER BY position DESC)
)
SELECT total <= $2 AND n <= $3, CASE WHEN total <= $2 AND n <= $3 THEN item END
FROM sized ORDER BY position
"""


def _conversation(row: asyncpg.Record) -> dict:
    return {"id": row[0], "object": "conversation", "created_at": row[1], "metadata": orjson.loads(row[2])}


async def _append(conn: asyncpg.Connection, id: str, items: list[dict], now: int) -> None:
    """Insert ``items`` after the conversation's last position (its row is locked by the caller)."""
    if not items:
        return
    last = await conn.fetchval("SELECT coalesce(max(position), 0) FROM conversation_items WHERE conversation_id = $1",
                               id)
    rows = []
    for offset, item in enumerate(items, 1):
        text = orjson.dumps(item)
        rows.append((id, last + offset, item["id"], text.decode(), len(text), now))
    await conn.executemany("INSERT INTO conversation_items VALUES ($1, $2, $3, $4, $5, $6)", rows)


class PostgresConversations:
    """Conversation reads and writes on ``pool``; ``owner`` is the tenant tag."""

    pool: asyncpg.Pool
    replica: str

    async def create_conversation(self, id: str, owner: str | None, metadata: dict, items: list[dict]) -> dict:
        """Store a new conversation with its first ``items``; returns its Conversation object."""
        now = int(time.time())
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO conversations (id, owner, created_at, metadata) VALUES ($1, $2, $3, $4)",
                               id, owner, now, orjson.dumps(metadata).decode())
            await _append(conn, id, items, now)
        return {"id": id, "object": "conversation", "created_at": now, "metadata": metadata}

    async def get_conversation(self, id: str, owner: str | None) -> dict | None:
        """The Conversation object, or None when ``owner`` has none by that id."""
        row = await self.pool.fetchrow("SELECT id, created_at, metadata FROM conversations WHERE id = $1"
                                       " AND owner IS NOT DISTINCT FROM $2", id, owner)
        return _conversation(row) if row else None

    async def update_conversation(self, id: str, owner: str | None, metadata: dict) -> dict | None:
        """Replace the conversation's ``metadata``; its Conversation object, or None when not found."""
        row = await self.pool.fetchrow("UPDATE conversations SET metadata = $1 WHERE id = $2 AND owner IS NOT"
                                       " DISTINCT FROM $3 RETURNING id, created_at, metadata",
                                       orjson.dumps(metadata).decode(), id, owner)
        return _conversation(row) if row else None

    async def delete_conversation(self, id: str, owner: str | None) -> bool:
        """Delete the conversation and its items; False when not found."""
        status = await self.pool.execute("DELETE FROM conversations WHERE id = $1 AND owner IS NOT DISTINCT FROM $2",
                                         id, owner)
        return status != "DELETE 0"

    async def add_conversation_items(self, id: str, owner: str | None, items: list[dict]) -> bool:
        """Append ``items`` in order; False when the conversation is not found."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT true FROM conversations WHERE id = $1 AND owner IS NOT DISTINCT FROM $2"
                                       " FOR UPDATE", id, owner):
                return False
            await _append(conn, id, items, int(time.time()))
        return True

    async def list_conversation_items(self, id: str, owner: str | None, *, limit: int, order: str,
                                      after: str | None = None) -> ItemPage | None:
        """Up to ``limit`` items in ``order`` after the item ``after`` (see the SQLite store);
        raises KeyError when ``after`` is not one of its items."""
        if await self.get_conversation(id, owner) is None:
            return None
        params: list[Any] = [id, limit + 1]
        where = ""
        if after is not None:
            position = await self.pool.fetchval("SELECT min(position) FROM conversation_items WHERE"
                                                " conversation_id = $1 AND item_id = $2", id, after)
            if position is None:
                raise KeyError(after)
            where = f" AND position {'>' if order == 'asc' else '<'} $3"
            params.append(position)
        direction = "ASC" if order == "asc" else "DESC"
        rows = await self.pool.fetch(f"SELECT item FROM conversation_items WHERE conversation_id = $1{where}"
                                     f" ORDER BY position {direction} LIMIT $2", *params)
        items = [orjson.loads(row[0]) for row in rows]
        return ItemPage(items[:limit], len(items) > limit)

    async def get_conversation_item(self, id: str, owner: str | None, item_id: str) -> dict | None:
        """One item of the conversation by its id (the first, should two share it), or None."""
        text = await self.pool.fetchval(
            "SELECT ci.item FROM conversation_items ci JOIN conversations c ON c.id = ci.conversation_id"
            " WHERE ci.conversation_id = $1 AND c.owner IS NOT DISTINCT FROM $2 AND ci.item_id = $3"
            " ORDER BY ci.position LIMIT 1", id, owner, item_id)
        return orjson.loads(text) if text else None

    async def delete_conversation_item(self, id: str, owner: str | None, item_id: str) -> bool:
        """Remove the item (every copy of its id) from the conversation; False when not found."""
        status = await self.pool.execute(
            "DELETE FROM conversation_items WHERE conversation_id = $1 AND item_id = $2 AND EXISTS"
            " (SELECT 1 FROM conversations WHERE id = $1 AND owner IS NOT DISTINCT FROM $3)", id, item_id, owner)
        return status != "DELETE 0"

    async def conversation_history(self, id: str, owner: str | None, *, max_bytes: int,
                                   max_items: int) -> tuple[list[dict], bool] | None:
        """The conversation's items, oldest first, newest kept within the bounds, and whether
        they are all of them. None when not found."""
        if await self.get_conversation(id, owner) is None:
            return None
        rows = await self.pool.fetch(_HISTORY_SQL, id, max_bytes, max_items)
        items = [orjson.loads(text) for fits, text in rows if fits]
        return items, len(items) == len(rows)

    # ── one turn at a time ────────────────────────────────────────────────────
    async def claim_conversation(self, id: str, owner: str | None, response_id: str) -> str:
        """Mark the conversation as used by ``response_id`` on this replica: :data:`CLAIMED`,
        :data:`MISSING` or :data:`BUSY` (see the SQLite store)."""
        status = await self.pool.execute(
            "UPDATE conversations SET active_response = $1, active_replica = $4 WHERE id = $2 AND owner IS NOT"
            " DISTINCT FROM $3 AND (active_response IS NULL OR active_response = $1)", response_id, id, owner,
            self.replica)
        if status != "UPDATE 0":
            return CLAIMED
        return BUSY if await self.get_conversation(id, owner) is not None else MISSING

    async def conversation_holder(self, id: str) -> str | None:
        """The response id of the turn that holds the conversation, if one does."""
        return await self.pool.fetchval("SELECT active_response FROM conversations WHERE id = $1", id)

    async def finish_conversation_turn(self, id: str, response_id: str, items: list[dict] | None) -> bool:
        """Append the turn's ``items`` (None: nothing) and free the conversation, in one
        transaction, only while ``response_id`` still holds it. Returns whether it did."""
        async with self.pool.acquire() as conn, conn.transaction():
            freed = await conn.fetchval(
                "UPDATE conversations SET active_response = NULL, active_replica = NULL WHERE id = $1 AND"
                " active_response = $2 RETURNING true", id, response_id)
            if not freed:
                return False
            await _append(conn, id, items or [], int(time.time()))
        return True

    async def free_stale_conversations(self) -> int:
        """Nothing on a shared store: what dead replicas held is freed by ``take_over``."""
        return 0
