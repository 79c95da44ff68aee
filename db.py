"""The response store: every stored response, its chain, background jobs and stream events.

SQLite through aiosqlite, WAL journal, one connection. Each response is one row:
its turn's input items, the whole Response object (JSON text) and bookkeeping
columns. Chains are walked in one recursive query. A ``meta`` table keeps the
schema version; :data:`MIGRATIONS` upgrades older stores in order.
"""

from __future__ import annotations

import time
from typing import Any

try:
    import fcntl
except ImportError:  # not on this platform: no lock
    fcntl = None  # type: ignore[assignment]

import aiosqlite
import orjson

__all__ = ["ResponseStore", "StoreInUse", "SCHEMA_VERSION"]


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
]
SCHEMA_VERSION = len(MIGRATIONS)

_CHAIN_SQL = """
WITH RECURSIVE chain(id, prev, depth) AS (
    SELECT id, previous_response_id, 0 FROM responses WHERE id = ? AND owner IS ?
    UNION ALL
    SELECT r.id, r.previous_response_id, chain.depth + 1
    FROM responses r JOIN chain ON r.id = chain.prev
    WHERE chain.depth < ?
)
SELECT r.input_items, coalesce(r.output_items, json_extract(r.response, '$.output')), r.status
FROM chain JOIN responses r ON r.id = chain.id
ORDER BY chain.depth DESC
"""


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class ResponseStore:
    """Async access to the store. Open with :meth:`open`, close with :meth:`close`.

    ``owner`` is an opaque tenant tag (None without authentication); a row is
    visible only to the owner it was stored with.
    """

    def __init__(self, path: str):
        self.path = path
        self.conn: aiosqlite.Connection | None = None
        self._lock: Any = None

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
            raise StoreInUse(f"another gateway process already uses the store {self.path}; run one process "
                             "(one uvicorn worker) per SQLite store") from None
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
        for step in range(version, SCHEMA_VERSION):
            await self.conn.executescript(f"BEGIN; {MIGRATIONS[step]}; "
                                          f"INSERT OR REPLACE INTO meta VALUES ('schema_version', '{step + 1}'); "
                                          "COMMIT;")

    async def close(self) -> None:
        """Close the connection and give the store's lock back (idempotent)."""
        try:
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
        await self.conn.execute(
            "INSERT OR REPLACE INTO responses (id, owner, previous_response_id, model, status, background,"
            " created_at, updated_at, input_items, response, request, output_items)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (id, owner, previous_response_id, model, status, int(background), int(created_at), time.time(),
             _dumps(input_messages), None if response is None else _dumps(response),
             None if request is None else _dumps(request),
             None if response is None else _dumps(response.get("output") or [])))

    async def update_response(self, id: str, response: dict, *, only_if_active: bool = False) -> bool:
        """Replace the Response object and its status. With ``only_if_active`` the
        row changes only while queued or in progress. Returns whether it changed."""
        sql = "UPDATE responses SET status=?, response=?, output_items=?, updated_at=? WHERE id=?"
        if only_if_active:
            sql += " AND status IN ('queued', 'in_progress')"
        cursor = await self.conn.execute(sql, (response["status"], _dumps(response),
                                               _dumps(response.get("output") or []), time.time(), id))
        return cursor.rowcount > 0

    async def append_events(self, id: str, events: list[dict]) -> None:
        """Store stream events of a response (for ``starting_after`` replays)."""
        if events:
            await self.conn.executemany(
                "INSERT OR REPLACE INTO response_events VALUES (?,?,?)",
                [(id, e["sequence_number"], _dumps(e)) for e in events])

    async def delete_response(self, id: str, owner: str | None = None) -> bool:
        """Delete a response (its events go with it, by trigger, in the same statement).
        Returns False when not found for ``owner``."""
        cursor = await self.conn.execute("DELETE FROM responses WHERE id=? AND owner IS ?", (id, owner))
        return cursor.rowcount > 0

    async def fail_orphaned_responses(self) -> int:
        """Mark responses left queued or in progress by a dead process as failed.

        Their Response objects get ``status: "failed"`` and a ``server_error``.
        Returns how many rows changed. Run at start-up, before serving.
        """
        rows = await (await self.conn.execute(
            "SELECT id, response FROM responses WHERE status IN ('queued', 'in_progress')")).fetchall()
        if not rows:
            return 0
        error = {"code": "server_error", "message": "The gateway stopped before this response finished."}
        updates = []
        for rid, text in rows:
            obj = orjson.loads(text) if text else None
            if obj is not None:
                obj.update(status="failed", error=error, completed_at=None)
            updates.append(("failed", None if obj is None else _dumps(obj), time.time(), rid))
        await self.conn.executemany(
            "UPDATE responses SET status=?, response=COALESCE(?, response), updated_at=? WHERE id=?", updates)
        return len(rows)

    # reads -------------------------------------------------------------------
    async def get_response(self, id: str, owner: Any = ...) -> dict | None:
        """The stored row as a dict (``id``, ``status``, ``model``, ``previous_response_id``,
        ``created_at``, ``background``, ``owner``, ``input_items``, ``response``,
        ``request``), or None. Given an ``owner``, rows of other owners are None."""
        cursor = await self.conn.execute(
            "SELECT id, owner, previous_response_id, model, status, background, created_at, input_items,"
            " response, request FROM responses WHERE id=?", (id,))
        row = await cursor.fetchone()
        if row is None or (owner is not ... and row[1] != owner):
            return None
        return {"id": row[0], "owner": row[1], "previous_response_id": row[2], "model": row[3],
                "status": row[4], "background": bool(row[5]), "created_at": row[6],
                "input_items": orjson.loads(row[7]),
                "response": orjson.loads(row[8]) if row[8] else None,
                "request": orjson.loads(row[9]) if row[9] else None}

    async def get_chain_items(self, id: str, owner: str | None = None, max_depth: int = 10_000) -> list[dict] | None:
        """All items of the chain ending at ``id``, oldest turn first: each turn's
        input items then its output items. One query. None when ``id`` is not
        stored for ``owner``."""
        rows = await (await self.conn.execute(_CHAIN_SQL, (id, owner, max_depth))).fetchall()
        if not rows:
            return None
        # Every column is a JSON array: their insides joined make the chain's one array, parsed once.
        parts = [array[1:-1] for input_items, output, _status in rows for array in (input_items, output)
                 if array and len(array) > 2]
        return orjson.loads("[" + ",".join(parts) + "]")

    async def find_items(self, ids: list[str], owner: str | None = None) -> dict[str, dict]:
        """Look up stored input or output items by item id (for ``item_reference``)."""
        wanted = set(ids)
        found: dict[str, dict] = {}
        sql = ("SELECT value FROM responses, json_each(responses.input_items) WHERE owner IS ? "
               "AND json_extract(value, '$.id') IN (SELECT value FROM json_each(?)) UNION ALL "
               "SELECT value FROM responses, json_each(responses.response, '$.output') WHERE owner IS ? "
               "AND json_extract(value, '$.id') IN (SELECT value FROM json_each(?))")
        ids_json = _dumps(sorted(wanted))
        for (value,) in await (await self.conn.execute(sql, (owner, ids_json, owner, ids_json))).fetchall():
            item = orjson.loads(value)
            found[item["id"]] = item
        return found

    async def get_events(self, id: str, after: int = -1) -> list[dict]:
        """Stored stream events of ``id`` with ``sequence_number > after``, in order."""
        rows = await (await self.conn.execute(
            "SELECT event FROM response_events WHERE response_id=? AND sequence_number>? "
            "ORDER BY sequence_number", (id, after))).fetchall()
        return [orjson.loads(r[0]) for r in rows]
