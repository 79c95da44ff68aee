"""The conversation tables of the store: conversations, their items, and the one turn each may run.

A conversation (OpenAI's Conversations API, ``openai.types.conversations``) is a
row of ``conversations`` and an ordered list of ``conversation_items`` (each item's
JSON, its byte size, its position). One turn at a time may use a conversation:
:meth:`ConversationTables.claim_conversation` marks it with that turn's response id
(``active_response``), atomically, so two turns can never read the same history and
both append to it; :meth:`ConversationTables.finish_conversation_turn` appends the
turn's items and frees it in one transaction. Being a store column, the mark holds
across processes that share a store.

The schema is in ``db.MIGRATIONS``; :class:`db.ResponseStore` mixes this class in
(it gives ``conn``, ``reader`` and ``transaction``).
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiosqlite
import orjson

__all__ = ["ConversationTables", "ItemPage", "CLAIMED", "MISSING", "BUSY"]

#: What :meth:`ConversationTables.claim_conversation` found.
CLAIMED, MISSING, BUSY = "claimed", "missing", "busy"

#: The items of a conversation newest first with their running sizes; an item's text is
#: read only while the newest items up to it fit the bounds.
_HISTORY_SQL = """
WITH sized AS (
    SELECT position, sum(bytes) OVER w AS total, row_number() OVER w AS n
    FROM conversation_items WHERE conversation_id = :id WINDOW w AS (ORDER BY position DESC)
)
SELECT sized.total <= :max_bytes AND sized.n <= :max_items AS fits,
       CASE WHEN sized.total <= :max_bytes AND sized.n <= :max_items THEN ci.item END
FROM sized JOIN conversation_items ci ON ci.conversation_id = :id AND ci.position = sized.position
ORDER BY sized.position
"""

_INSERT_ITEM_SQL = (
    "INSERT INTO conversation_items (conversation_id, position, item_id, item, bytes, created_at)"
    " VALUES (?, (SELECT coalesce(max(position), 0) + 1 FROM conversation_items WHERE conversation_id = ?),"
    " ?, ?, ?, ?)")


@dataclass
class ItemPage:
    """One page of a conversation's items (the ``data`` of a ``ConversationItemList``)."""

    items: list[dict]
    has_more: bool


def _item_rows(conversation_id: str, items: list[dict], now: int) -> list[tuple]:
    rows = []
    for item in items:
        text = orjson.dumps(item)
        rows.append((conversation_id, conversation_id, item["id"], text.decode(), len(text), now))
    return rows


def _conversation(row: tuple) -> dict:
    """A ``conversations`` row (id, created_at, metadata) as ``openai.types.conversations.Conversation``."""
    return {"id": row[0], "object": "conversation", "created_at": row[1], "metadata": orjson.loads(row[2])}


class ConversationTables:
    """Conversation reads and writes; ``owner`` is the tenant tag, as for responses."""

    conn: aiosqlite.Connection
    reader: aiosqlite.Connection
    transaction: Callable[[], AbstractAsyncContextManager[Any]]
    _execute: Callable[..., Awaitable[aiosqlite.Cursor]]

    async def create_conversation(self, id: str, owner: str | None, metadata: dict, items: list[dict]) -> dict:
        """Store a new conversation with its first ``items`` (normalized, each with an ``id``);
        returns its Conversation object."""
        now = int(time.time())
        async with self.transaction():
            await self.conn.execute(
                "INSERT INTO conversations (id, owner, created_at, metadata) VALUES (?,?,?,?)",
                (id, owner, now, orjson.dumps(metadata).decode()))
            await self.conn.executemany(_INSERT_ITEM_SQL, _item_rows(id, items, now))
        return {"id": id, "object": "conversation", "created_at": now, "metadata": metadata}

    async def get_conversation(self, id: str, owner: str | None) -> dict | None:
        """The Conversation object, or None when ``owner`` has none by that id."""
        rows = await self.reader.execute_fetchall(
            "SELECT id, created_at, metadata FROM conversations WHERE id = ? AND owner IS ?", (id, owner))
        return _conversation(rows[0]) if rows else None

    async def update_conversation(self, id: str, owner: str | None, metadata: dict) -> dict | None:
        """Replace the conversation's ``metadata``; its Conversation object, or None when not found."""
        cursor = await self._execute("UPDATE conversations SET metadata = ? WHERE id = ? AND owner IS ?",
                                         (orjson.dumps(metadata).decode(), id, owner))
        if cursor.rowcount == 0:
            return None
        rows = await self.conn.execute_fetchall(
            "SELECT id, created_at, metadata FROM conversations WHERE id = ?", (id,))
        return _conversation(rows[0])

    async def delete_conversation(self, id: str, owner: str | None) -> bool:
        """Delete the conversation and its items (by trigger, in the same statement); False when
        not found. A response made on it keeps its own items."""
        cursor = await self._execute("DELETE FROM conversations WHERE id = ? AND owner IS ?", (id, owner))
        return cursor.rowcount > 0

    async def add_conversation_items(self, id: str, owner: str | None, items: list[dict]) -> bool:
        """Append ``items`` (normalized, each with an ``id``) in order; False when the
        conversation is not found."""
        async with self.transaction():
            if not await self._owns(id, owner):
                return False
            await self.conn.executemany(_INSERT_ITEM_SQL, _item_rows(id, items, int(time.time())))
        return True

    async def _owns(self, id: str, owner: str | None) -> bool:
        rows = await self.conn.execute_fetchall("SELECT 1 FROM conversations WHERE id = ? AND owner IS ?",
                                                (id, owner))
        return bool(rows)

    async def list_conversation_items(self, id: str, owner: str | None, *, limit: int, order: str,
                                      after: str | None = None) -> ItemPage | None:
        """Up to ``limit`` items in ``order`` (``asc``: oldest first), after the item ``after``;
        None when the conversation is not found. Raises KeyError when ``after`` is not one of its items."""
        if await self.get_conversation(id, owner) is None:
            return None
        params: list[Any] = [id]
        where = ""
        if after is not None:
            rows = await self.reader.execute_fetchall(
                "SELECT position FROM conversation_items WHERE conversation_id = ? AND item_id = ?"
                " ORDER BY position LIMIT 1", (id, after))
            if not rows:
                raise KeyError(after)
            where = f" AND position {'>' if order == 'asc' else '<'} ?"
            params.append(rows[0][0])
        direction = "ASC" if order == "asc" else "DESC"
        rows = await self.reader.execute_fetchall(
            f"SELECT item FROM conversation_items WHERE conversation_id = ?{where}"
            f" ORDER BY position {direction} LIMIT ?", (*params, limit + 1))
        items = [orjson.loads(row[0]) for row in rows]
        return ItemPage(items[:limit], len(items) > limit)

    async def get_conversation_item(self, id: str, owner: str | None, item_id: str) -> dict | None:
        """One item of the conversation by its id (the first, should two share it), or None."""
        rows = await self.reader.execute_fetchall(
            "SELECT ci.item FROM conversation_items ci JOIN conversations c ON c.id = ci.conversation_id"
            " WHERE ci.conversation_id = ? AND c.owner IS ? AND ci.item_id = ? ORDER BY ci.position LIMIT 1",
            (id, owner, item_id))
        return orjson.loads(rows[0][0]) if rows else None

    async def delete_conversation_item(self, id: str, owner: str | None, item_id: str) -> bool:
        """Remove the item (every copy of its id) from the conversation; False when not found."""
        cursor = await self._execute(
            "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?"
            " AND EXISTS (SELECT 1 FROM conversations WHERE id = ? AND owner IS ?)", (id, item_id, id, owner))
        return cursor.rowcount > 0

    async def conversation_history(self, id: str, owner: str | None, *, max_bytes: int,
                                   max_items: int) -> tuple[list[dict], bool] | None:
        """The conversation's items, oldest first, and whether they are all of them: the newest
        are kept while they fit ``max_bytes`` (item JSON) and ``max_items``. None when not found."""
        if await self.get_conversation(id, owner) is None:
            return None
        rows = await self.reader.execute_fetchall(_HISTORY_SQL, {"id": id, "max_bytes": max_bytes,
                                                                 "max_items": max_items})
        items = [orjson.loads(text) for fits, text in rows if fits]
        return items, len(items) == len(rows)

    # ── one turn at a time ────────────────────────────────────────────────────
    async def claim_conversation(self, id: str, owner: str | None, response_id: str) -> str:
        """Mark the conversation as used by the turn ``response_id`` (which may hold it already: a
        queued turn run again): :data:`CLAIMED`, or
        :data:`MISSING` (not found for ``owner``), or :data:`BUSY` (another turn holds it)."""
        cursor = await self._execute(
            "UPDATE conversations SET active_response = ? WHERE id = ? AND owner IS ?"
            " AND (active_response IS NULL OR active_response = ?)", (response_id, id, owner, response_id))
        if cursor.rowcount:
            return CLAIMED
        return BUSY if await self._owns(id, owner) else MISSING

    async def conversation_holder(self, id: str) -> str | None:
        """The response id of the turn that holds the conversation, if one does."""
        rows = await self.conn.execute_fetchall("SELECT active_response FROM conversations WHERE id = ?", (id,))
        return rows[0][0] if rows else None

    async def finish_conversation_turn(self, id: str, response_id: str, items: list[dict] | None) -> bool:
        """Append the turn's ``items`` (None: nothing, the turn failed) and free the conversation,
        in one transaction, only while ``response_id`` still holds it. Returns whether it did."""
        async with self.transaction():
            cursor = await self.conn.execute(
                "UPDATE conversations SET active_response = NULL WHERE id = ? AND active_response = ?",
                (id, response_id))
            if cursor.rowcount == 0:
                return False
            if items:
                await self.conn.executemany(_INSERT_ITEM_SQL, _item_rows(id, items, int(time.time())))
        return True

    async def free_stale_conversations(self) -> int:
        """Free the conversations held by turns that are not queued to run again (their process
        stopped); returns how many. Run at start-up, after orphaned responses are failed."""
        cursor = await self._execute(
            "UPDATE conversations SET active_response = NULL WHERE active_response IS NOT NULL"
            " AND active_response NOT IN (SELECT id FROM responses WHERE status = 'queued' AND background = 1)")
        return cursor.rowcount
