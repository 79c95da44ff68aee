"""The response store: every stored response, its chain, background jobs and stream events.

SQLite through aiosqlite, WAL journal, one connection for writes and one for reads.
Each response is one row:
its turn's input items, the whole Response object (JSON text) and bookkeeping
columns. Chains are walked in one recursive query. Conversations have tables of their own
(``db_conversations``), and so do token statistics (``db_token_stats``). A ``meta`` table keeps the
schema version; :data:`MIGRATIONS` upgrades older stores in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

try:
    import fcntl
except ImportError:  # not on this platform: no lock
    fcntl = None  # type: ignore[assignment]

import aiosqlite
import orjson

from db_conversations import ConversationTables
from db_token_stats import TOKEN_STATS_MIGRATION, TokenTables, import_legacy_tables, set_legacy_tables_aside

__all__ = ["ResponseStore", "StoreInUse", "Chain", "SCHEMA_VERSION", "ACTIVE"]

log = logging.getLogger("nomyo_router.store")

#: The statuses of a response that has not ended yet.
ACTIVE = ("queued", "in_progress")


class StoreInUse(RuntimeError):
    """Another process holds the SQLite store."""

#: Schema migrations; entry ``n`` upgrades version ``n`` to ``n + 1``.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id                   TEXT PRIMARY KEY,
        owner                TEXT,
        previous_response_id TEXT,
        model                TEXT NOT NULL,
        status               TEXT NOT NULL,
        background           INTEGER NOT NULL DEFAULT 0,
        created_at           INTEGER NOT NULL,
        updated_at           REAL NOT NULL,
        input_items          TEXT NOT NULL,
        response             TEXT,
        request              TEXT
    );
    CREATE INDEX responses_active ON responses(status) WHERE status IN ('queued', 'in_progress');
    CREATE TABLE response_events (
        response_id     TEXT NOT NULL,
        sequence_number INTEGER NOT NULL,
        event           TEXT NOT NULL,
        PRIMARY KEY (response_id, sequence_number)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TRIGGER responses_delete_events AFTER DELETE ON responses
    BEGIN
        DELETE FROM response_events WHERE response_id = OLD.id;
    END;
    """,
    # The output items apart, so a chain is read without parsing every Response object.
    """
    ALTER TABLE responses ADD COLUMN output_items TEXT;
    """,
    # Each row's size (bytes and items, so a chain is bounded before its text is read) and
    # the ids of its items, indexed (so an item_reference is found without a scan).
    """
    ALTER TABLE responses ADD COLUMN input_item_ids TEXT;
    ALTER TABLE responses ADD COLUMN output_item_ids TEXT;
    ALTER TABLE responses ADD COLUMN item_bytes INTEGER;
    ALTER TABLE responses ADD COLUMN item_count INTEGER;
    UPDATE responses SET output_items = coalesce(output_items, json_extract(response, '$.output'), '[]');
    UPDATE responses SET
        item_bytes = length(CAST(input_items AS BLOB)) + length(CAST(output_items AS BLOB)),
        item_count = json_array_length(input_items) + json_array_length(output_items),
        input_item_ids = (SELECT json_group_array(json_extract(value, '$.id')) FROM json_each(input_items)
                          WHERE json_extract(value, '$.id') IS NOT NULL),
        output_item_ids = (SELECT json_group_array(json_extract(value, '$.id')) FROM json_each(output_items)
                           WHERE json_extract(value, '$.id') IS NOT NULL);
    CREATE TABLE item_index (
        item_id     TEXT NOT NULL,
        response_id TEXT NOT NULL,
        PRIMARY KEY (item_id, response_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO item_index
        SELECT value, responses.id FROM responses, json_each(responses.input_item_ids) UNION ALL
        SELECT value, responses.id FROM responses, json_each(responses.output_item_ids);
    CREATE TRIGGER responses_index_items AFTER INSERT ON responses
    BEGIN
        INSERT OR IGNORE INTO item_index
            SELECT value, NEW.id FROM json_each(NEW.input_item_ids) UNION ALL
            SELECT value, NEW.id FROM json_each(NEW.output_item_ids);
    END;
    CREATE TRIGGER responses_index_outputs AFTER UPDATE OF output_item_ids ON responses
    BEGIN
        INSERT OR IGNORE INTO item_index SELECT value, NEW.id FROM json_each(NEW.output_item_ids);
    END;
    CREATE TRIGGER responses_unindex_items AFTER DELETE ON responses
    BEGIN
        DELETE FROM item_index WHERE response_id = OLD.id AND item_id IN (
            SELECT value FROM json_each(OLD.input_item_ids) UNION ALL
            SELECT value FROM json_each(OLD.output_item_ids));
    END;
    """,
    # Conversations (``db_conversations``): each one's items in order, and the turn that holds it.
    """
    CREATE TABLE conversations (
        id              TEXT PRIMARY KEY,
        owner           TEXT,
        created_at      INTEGER NOT NULL,
        metadata        TEXT NOT NULL,
        active_response TEXT
    );
    CREATE TABLE conversation_items (
        conversation_id TEXT NOT NULL,
        position        INTEGER NOT NULL,
        item_id         TEXT NOT NULL,
        item            TEXT NOT NULL,
        bytes           INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, position)
    ) WITHOUT ROWID;
    CREATE INDEX conversation_items_by_id ON conversation_items(item_id);
    CREATE TRIGGER conversations_delete_items AFTER DELETE ON conversations
    BEGIN
        DELETE FROM conversation_items WHERE conversation_id = OLD.id;
    END;
    """,
    # Token statistics (``db_token_stats``): totals per endpoint and model, and their time series.
    TOKEN_STATS_MIGRATION,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: The chain ending at a response, newest first, its sizes summed on the way, the walk
#: stopped at the first turn past a bound; that turn's text is not read.
_CHAIN_SQL = """
WITH RECURSIVE chain(id, prev, depth, bytes, items) AS (
    SELECT id, previous_response_id, 1, item_bytes, item_count FROM responses WHERE id = :id AND owner IS :owner
    UNION ALL
    SELECT r.id, r.previous_response_id, chain.depth + 1, chain.bytes + r.item_bytes, chain.items + r.item_count
    FROM responses r JOIN chain ON r.id = chain.prev
    WHERE chain.bytes <= :max_bytes AND chain.items <= :max_items AND chain.depth <= :max_items
)
SELECT chain.bytes <= :max_bytes AND chain.items <= :max_items AND chain.depth <= :max_items AS fits,
       CASE WHEN chain.bytes <= :max_bytes AND chain.items <= :max_items THEN r.input_items END,
       CASE WHEN chain.bytes <= :max_bytes AND chain.items <= :max_items THEN r.output_items END
FROM chain JOIN responses r ON r.id = chain.id
ORDER BY chain.depth DESC
"""

#: Items by id, through the index: only the rows that hold them are opened.
_FIND_ITEMS_SQL = """
SELECT j.value FROM item_index ix JOIN responses r ON r.id = ix.response_id, json_each(r.input_items) j
WHERE ix.item_id IN (SELECT value FROM json_each(:ids)) AND r.owner IS :owner
  AND json_extract(j.value, '$.id') = ix.item_id
UNION ALL
SELECT j.value FROM item_index ix JOIN responses r ON r.id = ix.response_id, json_each(r.output_items) j
WHERE ix.item_id IN (SELECT value FROM json_each(:ids)) AND r.owner IS :owner
  AND json_extract(j.value, '$.id') = ix.item_id
UNION ALL
SELECT ci.item FROM conversation_items ci JOIN conversations c ON c.id = ci.conversation_id
WHERE ci.item_id IN (SELECT value FROM json_each(:ids)) AND c.owner IS :owner
"""


@dataclass
class Chain:
    """The items of a stored chain, oldest turn first: each turn's input items, then its output items."""

    items: list[dict]
    #: False when older turns were left out: the whole chain is past ``max_bytes`` or ``max_items``.
    complete: bool


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def chain_of(rows: list) -> Chain | None:
    """The :class:`Chain` of a chain query's rows, oldest turn first: ``(fits, input_items JSON,
    output_items JSON)``, the texts None for turns past the bounds. None for no rows."""
    if not rows:
        return None
    items: list[dict] = []
    complete = True
    for fits, input_items, output_items in rows:
        if not fits:
            complete = False
        if input_items is not None:  # each column parsed in place: the chain's text is never joined
            items += orjson.loads(input_items)
            items += orjson.loads(output_items)
    return Chain(items, complete)


#: The columns :func:`_row_dict` makes a row of.
_ROW_COLUMNS = ("id, owner, previous_response_id, model, status, background, created_at, input_items, response,"
                " request")


def _row_dict(row: tuple) -> dict:
    """A stored row (:data:`_ROW_COLUMNS`) as the dict :meth:`ResponseStore.get_response` gives."""
    return {"id": row[0], "owner": row[1], "previous_response_id": row[2], "model": row[3],
            "status": row[4], "background": bool(row[5]), "created_at": row[6],
            "input_items": orjson.loads(row[7]),
            "response": orjson.loads(row[8]) if row[8] else None,
            "request": orjson.loads(row[9]) if row[9] else None, "replica": None}


def _item_ids(items: list) -> str:
    """The ids of ``items`` as a JSON array (what the item index is kept from)."""
    return _dumps([item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)])


class ResponseStore(ConversationTables, TokenTables):
    """Async access to the store. Open with :meth:`open`, close with :meth:`close`.

    ``owner`` is an opaque tenant tag (None without authentication); a row is
    visible only to the owner it was stored with.
    """

    #: One process only (``db_postgres.PostgresStore`` is the store replicas share).
    shared = False
    #: The process's name among replicas: none here, there is one.
    replica = None

    def __init__(self, path: str):
        self.path = path
        self.conn: aiosqlite.Connection | None = None
        #: Reads go through a connection of their own, so a write waiting for the store's lock
        #: (``busy_timeout``) never holds a retrieve up behind it (WAL lets readers run alongside).
        self.reader: aiosqlite.Connection | None = None
        self._lock: Any = None
        #: Held for each multi-statement transaction: statements of other writers on the one
        #: write connection never fall inside it, and two never nest.
        self._transaction = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``; rolled back on an error)."""
        async with self._transaction:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def _execute(self, sql: str, params: Any = ()) -> aiosqlite.Cursor:
        """One write statement, never inside another writer's :meth:`transaction`."""
        async with self._transaction:
            return await self.conn.execute(sql, params)

    async def _executemany(self, sql: str, rows: list) -> None:
        async with self._transaction:
            await self.conn.executemany(sql, rows)

    def _take_lock(self) -> None:
        """Hold ``<path>.lock`` exclusively for the life of this store: one gateway process per
        SQLite store (background jobs and cancels are process-local). Raises StoreInUse."""
        if self.path == ":memory:" or fcntl is None:
            return
        lock = open(f"{self.path}.lock", "a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StoreInUse(f"another gateway process already uses the SQLite store {self.path}; run one "
                             "process (one uvicorn worker) per SQLite store, or share a PostgreSQL store "
                             "(store_url: postgresql://...) to run several") from None
        self._lock = lock

    async def open(self) -> "ResponseStore":
        """Open (creating or migrating) the database in WAL mode.

        Raises :class:`StoreInUse` when another process holds the store, RuntimeError for a
        store written by a newer schema (and stays closed then).
        """
        self._take_lock()
        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._prepare()
            if self.path == ":memory:":
                self.reader = self.conn
            else:
                self.reader = await aiosqlite.connect(self.path, isolation_level=None)
                await self.reader.execute("PRAGMA query_only=1")
        except BaseException:
            await self.close()
            raise
        return self

    async def _prepare(self) -> None:
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self.conn.execute("PRAGMA busy_timeout=5000")
        await self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = await (await self.conn.execute("SELECT value FROM meta WHERE key='schema_version'")).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"store {self.path} has schema version {version}, newer than "
                               f"this gateway's {SCHEMA_VERSION}")
        if version == 0 and await set_legacy_tables_aside(self.conn):
            log.info("%s is NOMYO Router's token database: its token statistics are imported", self.path)
        for step in range(version, SCHEMA_VERSION):
            await self.conn.executescript(f"BEGIN; {MIGRATIONS[step]}; "
                                          f"INSERT OR REPLACE INTO meta VALUES ('schema_version', '{step + 1}'); "
                                          "COMMIT;")
        if await import_legacy_tables(self.conn):
            log.info("imported NOMYO Router's token statistics into %s", self.path)

    def describe(self) -> str:
        """The store's file, for logs."""
        return self.path

    async def close(self) -> None:
        """Close the connection and give the store's lock back (idempotent)."""
        try:
            if self.reader is not None and self.reader is not self.conn:
                await self.reader.close()
            self.reader = None
            if self.conn is not None:
                await self.conn.close()
                self.conn = None
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    async def check(self) -> None:
        """Prove the store can be written now (take the write lock, give it back at once);
        raises ``sqlite3.Error`` when it cannot (locked by another writer, read-only, full)."""
        # One call, so no other statement on this connection can fall inside the probe.
        async with self._transaction:
            await self.conn.executescript("BEGIN IMMEDIATE; ROLLBACK;")

    # writes ------------------------------------------------------------------
    async def store_response(self, id: str, *, previous_response_id: str | None, model: str, status: str,
                             created_at: int, input_messages: list, response: dict | None = None,
                             owner: str | None = None, request: dict | None = None,
                             background: bool = False) -> None:
        """Insert or replace a response row in one statement.

        ``input_messages`` is the turn's input items (Responses item dicts),
        ``response`` the Response object, ``request`` the create body (kept for
        background jobs). ``created_at`` is Unix seconds.
        """
        outputs = [] if response is None else (response.get("output") or [])
        inputs_json, outputs_json = orjson.dumps(input_messages), orjson.dumps(outputs)
        await self._execute(
            "INSERT OR REPLACE INTO responses (id, owner, previous_response_id, model, status, background,"
            " created_at, updated_at, input_items, response, request, output_items, input_item_ids,"
            " output_item_ids, item_bytes, item_count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (id, owner, previous_response_id, model, status, int(background), int(created_at), time.time(),
             inputs_json.decode(), None if response is None else _dumps(response),
             None if request is None else _dumps(request), outputs_json.decode(), _item_ids(input_messages),
             _item_ids(outputs), len(inputs_json) + len(outputs_json), len(input_messages) + len(outputs)))

    async def update_response(self, id: str, response: dict, *, only_if_active: bool = False) -> bool:
        """Replace the Response object and its status (the row's input items stay). With
        ``only_if_active`` the row changes only while queued or in progress. Returns whether it changed."""
        outputs = response.get("output") or []
        outputs_json = orjson.dumps(outputs)
        # In SET, output_items is still the old value: the sizes swap the old output for the new.
        sql = ("UPDATE responses SET status=?, response=?, output_items=?, output_item_ids=?, updated_at=?,"
               " item_bytes=item_bytes - length(CAST(output_items AS BLOB)) + ?,"
               " item_count=item_count - json_array_length(output_items) + ? WHERE id=?")
        if only_if_active:
            sql += " AND status IN ('queued', 'in_progress')"
        cursor = await self._execute(sql, (response["status"], _dumps(response), outputs_json.decode(),
                                               _item_ids(outputs), time.time(), len(outputs_json), len(outputs), id))
        return cursor.rowcount > 0

    async def append_events(self, id: str, events: list[dict]) -> None:
        """Store stream events of a response (for ``starting_after`` replays)."""
        if events:
            await self._executemany(
                "INSERT OR REPLACE INTO response_events VALUES (?,?,?)",
                [(id, e["sequence_number"], _dumps(e)) for e in events])

    async def delete_response(self, id: str, owner: str | None = None) -> bool:
        """Delete a response (its events go with it, by trigger, in the same statement).
        Returns False when not found for ``owner``."""
        cursor = await self._execute("DELETE FROM responses WHERE id=? AND owner IS ?", (id, owner))
        return cursor.rowcount > 0

    async def reassign_owners(self, owners: dict[str, str]) -> int:
        """Give the rows of each old owner tag (key) to its new one (value), events and items
        with them, and their conversations; returns how many rows moved. Run at start-up (keys moved into tenants)."""
        if not owners:
            return 0
        cursor = await self._execute(
            "UPDATE responses SET owner = (SELECT value FROM json_each(:owners) WHERE key = responses.owner)"
            " WHERE owner IN (SELECT key FROM json_each(:owners))", {"owners": _dumps(owners)})
        moved = cursor.rowcount
        cursor = await self._execute(
            "UPDATE conversations SET owner = (SELECT value FROM json_each(:owners) WHERE key = conversations.owner)"
            " WHERE owner IN (SELECT key FROM json_each(:owners))", {"owners": _dumps(owners)})
        return moved + cursor.rowcount

    async def queued_background(self) -> list[dict]:
        """The background responses stored ``queued`` with their create body (left by a gateway
        that stopped before they reached a backend), oldest first, as :meth:`get_response` rows."""
        rows = await self.conn.execute_fetchall(
            f"SELECT {_ROW_COLUMNS} FROM responses WHERE status = 'queued' AND background = 1"
            " AND request IS NOT NULL ORDER BY created_at, rowid")
        return [_row_dict(row) for row in rows]

    async def fail_orphaned_responses(self, closing: Callable[[dict, int], list[dict]] | None = None) -> int:
        """Mark responses left in progress by a dead process as failed (and queued ones that
        cannot be run again: not background, or without their create body).

        Their Response objects get ``status: "failed"`` and a ``server_error``; where one has
        stored events (a background stream), ``closing(failed response, last sequence number)``
        events are appended, so a replay ends as its followers would have seen it end.
        Returns how many rows changed. Run at start-up, before serving.
        """
        rows = await (await self._execute(
            "SELECT id, response, (SELECT max(sequence_number) FROM response_events e WHERE e.response_id"
            " = responses.id) FROM responses WHERE status = 'in_progress'"
            " OR (status = 'queued' AND (background = 0 OR request IS NULL))")).fetchall()
        if not rows:
            return 0
        error = {"code": "server_error", "message": "The gateway stopped before this response finished."}
        updates, events = [], []
        for rid, text, last in rows:
            obj = orjson.loads(text) if text else None
            if obj is not None:
                obj.update(status="failed", error=error, completed_at=None)
                if last is not None and closing is not None:
                    events += [(rid, e["sequence_number"], _dumps(e)) for e in closing(obj, last)]
            updates.append(("failed", None if obj is None else _dumps(obj), time.time(), rid))
        await self._executemany(
            "UPDATE responses SET status=?, response=COALESCE(?, response), updated_at=? WHERE id=?", updates)
        if events:
            await self._executemany("INSERT OR IGNORE INTO response_events VALUES (?,?,?)", events)
        return len(rows)

    # reads -------------------------------------------------------------------
    async def get_response(self, id: str, owner: Any = ...) -> dict | None:
        """The stored row as a dict (``id``, ``status``, ``model``, ``previous_response_id``,
        ``created_at``, ``background``, ``owner``, ``input_items``, ``response``,
        ``request``), or None. Given an ``owner``, rows of other owners are None."""
        rows = await self.reader.execute_fetchall(f"SELECT {_ROW_COLUMNS} FROM responses WHERE id=?", (id,))
        row = rows[0] if rows else None  # each read is one call: a statement never stays open
        if row is None or (owner is not ... and row[1] != owner):
            return None
        return _row_dict(row)

    async def get_chain(self, id: str, owner: str | None = None, *, max_bytes: int = 16 * 1024 * 1024,
                        max_items: int = 10_000) -> Chain | None:
        """The chain ending at ``id`` (one query), or None when ``id`` is not stored for ``owner``.

        The newest turns are kept while their items (JSON bytes, count) stay within
        ``max_bytes`` and ``max_items``; the turns before are left out, unread, and the
        :class:`Chain` says it is not ``complete``.
        """
        rows = await self.reader.execute_fetchall(_CHAIN_SQL, {"id": id, "owner": owner, "max_bytes": max_bytes,
                                                               "max_items": max_items})
        return chain_of(rows)

    async def find_items(self, ids: list[str], owner: str | None = None) -> dict[str, dict]:
        """Stored input or output items of ``owner`` by item id (for ``item_reference``), through
        the item index. Ids not found are absent from the result."""
        found: dict[str, dict] = {}
        rows = await self.reader.execute_fetchall(_FIND_ITEMS_SQL, {"ids": _dumps(sorted(set(ids))),
                                                                    "owner": owner})
        for (value,) in rows:
            item = orjson.loads(value)
            found[item["id"]] = item
        return found

    async def get_events(self, id: str, after: int = -1) -> list[dict]:
        """Stored stream events of ``id`` with ``sequence_number > after``, in order."""
        rows = await self.reader.execute_fetchall(
            "SELECT event FROM response_events WHERE response_id=? AND sequence_number>? "
            "ORDER BY sequence_number", (id, after))
        return [orjson.loads(r[0]) for r in rows]
