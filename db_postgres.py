"""The response store on PostgreSQL (asyncpg): what several gateway replicas share.

The same interface as :class:`db.ResponseStore` (the SQLite store): the same methods,
arguments, results and rules, so the engine does not know which one it has; the tests
of the store run against both. On top, what replicas need to share:

* **Replicas and leases**: each process is a row of ``replicas``, stamped by
  :meth:`PostgresStore.heartbeat`. A response that runs carries the replica that runs it;
  when that replica's stamp is older than the lease, :meth:`PostgresStore.take_over`
  (any survivor) fails its running turns, adopts its queued background jobs and frees
  its conversations, in one transaction.
* **Notifications**: ``LISTEN/NOTIFY`` on :data:`EVENTS_CHANNEL` (events appended, a
  response finished) and :data:`CANCEL_CHANNEL` (cancel this response, whoever runs it).

Times the database compares (leases) are its own clock, so replicas' clocks may differ.
Rows hold JSON as text (parsed by orjson, as in SQLite); item ids are ``text[]`` with
GIN indexes, so an ``item_reference`` is found without a scan.
"""

from __future__ import annotations

import os
import socket
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import asyncpg
import orjson

from db import ACTIVE, Chain, chain_of
from db_postgres_conversations import PostgresConversations
from db_postgres_token_stats import PG_TOKEN_STATS_MIGRATION, PostgresTokenTables

__all__ = ["PostgresStore", "TakeOver", "EVENTS_CHANNEL", "CANCEL_CHANNEL", "PG_SCHEMA_VERSION"]

#: Payload: a response id whose events or state changed.
EVENTS_CHANNEL = "nomyo_router_events"
#: Payload: a response id that a client asked to cancel.
CANCEL_CHANNEL = "nomyo_router_cancel"
#: Held (as a transaction-level advisory lock) by whoever migrates or takes over, so two
#: replicas starting or sweeping at once do it one after the other.
_LOCK_KEY = 0x6E6F6D79

MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id                   text PRIMARY KEY,
        owner                text,
        previous_response_id text,
        model                text NOT NULL,
        status               text NOT NULL,
        background           boolean NOT NULL DEFAULT false,
        created_at           bigint NOT NULL,
        updated_at           double precision NOT NULL,
        input_items          text NOT NULL,
        output_items         text NOT NULL,
        response             text,
        request              text,
        input_item_ids       text[] NOT NULL,
        output_item_ids      text[] NOT NULL,
        input_bytes          bigint NOT NULL,
        output_bytes         bigint NOT NULL,
        input_count          integer NOT NULL,
        output_count         integer NOT NULL,
        replica              text
    );
    CREATE INDEX responses_active ON responses (replica) WHERE status IN ('queued', 'in_progress');
    CREATE INDEX responses_input_ids ON responses USING gin (input_item_ids);
    CREATE INDEX responses_output_ids ON responses USING gin (output_item_ids);
    CREATE TABLE response_events (
        response_id     text NOT NULL,
        sequence_number integer NOT NULL,
        event           text NOT NULL,
        PRIMARY KEY (response_id, sequence_number)
    );
    CREATE TABLE conversations (
        id              text PRIMARY KEY,
        owner           text,
        created_at      bigint NOT NULL,
        metadata        text NOT NULL,
        active_response text,
        active_replica  text
    );
    CREATE TABLE conversation_items (
        conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        position        integer NOT NULL,
        item_id         text NOT NULL,
        item            text NOT NULL,
        bytes           integer NOT NULL,
        created_at      bigint NOT NULL,
        PRIMARY KEY (conversation_id, position)
    );
    CREATE INDEX conversation_items_by_id ON conversation_items (item_id);
    CREATE INDEX conversations_active ON conversations (active_replica) WHERE active_response IS NOT NULL;
    CREATE TABLE replicas (
        id         text PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        seen_at    timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    """,
    # Token statistics (``db_postgres_token_stats``): totals per endpoint and model, and their time series.
    PG_TOKEN_STATS_MIGRATION,
]
PG_SCHEMA_VERSION = len(MIGRATIONS)

_ROW_COLUMNS = ("id, owner, previous_response_id, model, status, background, created_at, input_items, response,"
                " request, replica")

#: The chain ending at a response, newest first (as ``db._CHAIN_SQL``): $1 id, $2 owner, $3 max bytes, $4 max items.
_CHAIN_SQL = """
WITH RECURSIVE chain(id, prev, depth, bytes, items) AS (
    SELECT id, previous_response_id, 1, input_bytes + output_bytes, (input_count + output_count)::bigint
    FROM responses WHERE id = $1 AND owner IS NOT DISTINCT FROM $2
    UNION ALL
    SELECT r.id, r.previous_response_id, c.depth + 1, c.bytes + r.input_bytes + r.output_bytes,
           c.items + r.input_count + r.output_count
    FROM responses r JOIN chain c ON r.id = c.prev
    WHERE c.bytes <= $3 AND c.items <= $4 AND c.depth <= $4
)
SELECT c.bytes <= $3 AND c.items <= $4 AND c.depth <= $4,
       CASE WHEN c.bytes <= $3 AND c.items <= $4 THEN r.input_items END,
       CASE WHEN c.bytes <= $3 AND c.items <= $4 THEN r.output_items END
FROM chain c JOIN responses r ON r.id = c.id
ORDER BY c.depth DESC
"""

_UPSERT_SQL = """
INSERT INTO responses (id, owner, previous_response_id, model, status, background, created_at, updated_at,
    input_items, output_items, response, request, input_item_ids, output_item_ids, input_bytes, output_bytes,
    input_count, output_count, replica)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, previous_response_id = EXCLUDED.previous_response_id,
    model = EXCLUDED.model, status = EXCLUDED.status, background = EXCLUDED.background,
    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, input_items = EXCLUDED.input_items,
    output_items = EXCLUDED.output_items, response = EXCLUDED.response, request = EXCLUDED.request,
    input_item_ids = EXCLUDED.input_item_ids, output_item_ids = EXCLUDED.output_item_ids,
    input_bytes = EXCLUDED.input_bytes, output_bytes = EXCLUDED.output_bytes, input_count = EXCLUDED.input_count,
    output_count = EXCLUDED.output_count, replica = EXCLUDED.replica
"""

#: Responses that cannot end by themselves any more (running, or queued but not to be run again)
#: whose ``{runner}`` condition holds, locked, with the last sequence number of their event log.
_UNFINISHED_SQL = (
    "SELECT r.id, r.response, (SELECT max(sequence_number) FROM response_events e WHERE e.response_id = r.id)"
    " FROM responses r WHERE (r.status = 'in_progress' OR (r.status = 'queued' AND (NOT r.background"
    " OR r.request IS NULL))) AND (r.replica IS NULL OR {runner}) FOR UPDATE OF r")

#: Replicas whose lease ($1 seconds) is still good.
_LIVE = "SELECT id FROM replicas WHERE seen_at >= clock_timestamp() - make_interval(secs => $1)"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ids(items: list) -> list[str]:
    return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _row_dict(row: asyncpg.Record) -> dict:
    """A stored row (:data:`_ROW_COLUMNS`) as :meth:`db.ResponseStore.get_response` gives it, with ``replica``."""
    return {"id": row[0], "owner": row[1], "previous_response_id": row[2], "model": row[3],
            "status": row[4], "background": row[5], "created_at": row[6],
            "input_items": orjson.loads(row[7]),
            "response": orjson.loads(row[8]) if row[8] else None,
            "request": orjson.loads(row[9]) if row[9] else None, "replica": row[10]}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection going back to the pool needs reset: nothing. The store leaves no session
    state (its locks are transaction locks, it listens on connections of its own), so asyncpg's
    default reset, a round trip per statement, is skipped; an open transaction is still rolled
    back by the pool."""


def _count(status: str) -> int:
    """The row count of a command tag (``UPDATE 3`` -> 3)."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0


def new_replica_id() -> str:
    """A name for this process among the replicas: host, process id and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class TakeOver:
    """What :meth:`PostgresStore.take_over` did for replicas whose lease ran out."""

    #: Replicas found dead (their ``replicas`` rows are gone).
    replicas: list[str]
    #: Responses that were running there, now ``failed``.
    failed: list[str]
    #: Their queued background responses, now this replica's to run, as :meth:`get_response` rows.
    adopted: list[dict]
    #: Conversations freed (held by turns that died).
    freed: int


class PostgresStore(PostgresConversations, PostgresTokenTables):
    """The store on PostgreSQL. ``url`` is a ``postgresql://`` DSN (asyncpg takes extra query
    parameters as server settings, e.g. ``?search_path=nomyo``); ``replica`` names this
    process (made when not given). Open with :meth:`open`, close with :meth:`close`."""

    #: Several processes may share it.
    shared = True

    def __init__(self, url: str, replica: str | None = None, *, pool_size: int = 10, connect_timeout: float = 10):
        self.url = url
        self.replica = replica or new_replica_id()
        self.pool: asyncpg.Pool | None = None
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout

    async def open(self) -> "PostgresStore":
        """Connect (each connection within ``connect_timeout`` seconds), create or migrate the
        schema (one replica at a time), register this replica. Raises RuntimeError for a schema
        newer than this gateway's, asyncpg/OS errors (TimeoutError included) when the server
        cannot be reached."""
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size, command_timeout=30,
                                              timeout=self._connect_timeout, reset=_keep_session)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                await conn.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
                version = int(await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") or 0)
                if version > PG_SCHEMA_VERSION:
                    raise RuntimeError(f"store {self.describe()} has schema version {version}, newer than this "
                                       f"gateway's {PG_SCHEMA_VERSION}")
                for step in range(version, PG_SCHEMA_VERSION):
                    await conn.execute(MIGRATIONS[step])
                    await conn.execute("INSERT INTO meta VALUES ('schema_version', $1) ON CONFLICT (key)"
                                       " DO UPDATE SET value = EXCLUDED.value", str(step + 1))
                await conn.execute("INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", self.replica)
        except BaseException:
            await self.close()
            raise
        return self

    def describe(self) -> str:
        """The store's URL without its password, for logs."""
        head, sep, tail = self.url.partition("@")
        if not sep or ":" not in head.split("//", 1)[-1]:
            return self.url
        scheme, _, creds = head.partition("//")
        return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"

    async def close(self) -> None:
        """Deregister this replica and close the pool (idempotent). A replica that closes hands
        nothing over: its turns were ended (stored) before, its queued jobs stay queued under its
        name until a survivor's :meth:`take_over`, at once, since its row is gone."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await pool.execute("DELETE FROM replicas WHERE id = $1", self.replica)
        except (asyncpg.PostgresError, OSError):
            pass
        finally:
            await pool.close()

    async def check(self) -> None:
        """Prove the store can be written now (a primary, answering). Raises asyncpg/OS errors,
        RuntimeError for a read-only server."""
        if await self.pool.fetchval("SELECT pg_is_in_recovery()"):
            raise RuntimeError("the PostgreSQL server is read-only (in recovery)")

    async def shared_secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret ``name`` every replica shares: the one stored, else ``make()`` stored now
        (the first replica's wins a race)."""
        value = make().hex()
        await self.pool.execute("INSERT INTO meta VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", f"secret:{name}",
                                value)
        return bytes.fromhex(await self.pool.fetchval("SELECT value FROM meta WHERE key = $1", f"secret:{name}"))

    # writes ------------------------------------------------------------------
    async def store_response(self, id: str, *, previous_response_id: str | None, model: str, status: str,
                             created_at: int, input_messages: list, response: dict | None = None,
                             owner: str | None = None, request: dict | None = None,
                             background: bool = False) -> None:
        """Insert or replace a response row (see :meth:`db.ResponseStore.store_response`), run by this replica."""
        outputs = [] if response is None else (response.get("output") or [])
        inputs_json, outputs_json = orjson.dumps(input_messages), orjson.dumps(outputs)
        await self.pool.execute(
            _UPSERT_SQL, id, owner, previous_response_id, model, status, background, int(created_at), time.time(),
            inputs_json.decode(), outputs_json.decode(), None if response is None else _dumps(response),
            None if request is None else _dumps(request), _ids(input_messages), _ids(outputs), len(inputs_json),
            len(outputs_json), len(input_messages), len(outputs), self.replica)

    async def update_response(self, id: str, response: dict, *, only_if_active: bool = False) -> bool:
        """Replace the Response object and its status (see :meth:`db.ResponseStore.update_response`);
        a final state also tells followers on every replica (:data:`EVENTS_CHANNEL`)."""
        outputs = response.get("output") or []
        outputs_json = orjson.dumps(outputs)
        where = " AND status IN ('queued', 'in_progress')" if only_if_active else ""
        # One statement: the notification goes out with the update's commit, only if it changed a row.
        sql = ("WITH changed AS (UPDATE responses SET status = $1, response = $2, output_items = $3,"
               " output_item_ids = $4, updated_at = $5, output_bytes = $6, output_count = $7, replica = $9"
               f" WHERE id = $8{where} RETURNING id)"
               " SELECT count(*), max(CASE WHEN $10::boolean THEN pg_notify($11, id)::text END) FROM changed")
        changed, _ = await self.pool.fetchrow(
            sql, response["status"], _dumps(response), outputs_json.decode(), _ids(outputs), time.time(),
            len(outputs_json), len(outputs), id, self.replica, response["status"] not in ACTIVE, EVENTS_CHANNEL)
        return changed > 0

    async def append_events(self, id: str, events: list[dict]) -> None:
        """Store stream events of a response and tell followers on every replica (one statement)."""
        if not events:
            return
        await self.pool.execute(
            "WITH stored AS (INSERT INTO response_events SELECT $1, n, e FROM unnest($2::integer[], $3::text[])"
            " AS batch(n, e) ON CONFLICT (response_id, sequence_number) DO UPDATE SET event = EXCLUDED.event"
            " RETURNING 1) SELECT pg_notify($4, $1) WHERE EXISTS (SELECT 1 FROM stored)",
            id, [e["sequence_number"] for e in events], [_dumps(e) for e in events], EVENTS_CHANNEL)

    async def delete_response(self, id: str, owner: str | None = None) -> bool:
        """Delete a response and its events; False when not found for ``owner``."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = _count(await conn.execute(
                "DELETE FROM responses WHERE id = $1 AND owner IS NOT DISTINCT FROM $2", id, owner))
            if deleted:
                await conn.execute("DELETE FROM response_events WHERE response_id = $1", id)
        return deleted > 0

    async def reassign_owners(self, owners: dict[str, str]) -> int:
        """Give each old owner tag's rows and conversations to its new one; how many moved."""
        if not owners:
            return 0
        old, new = list(owners), list(owners.values())
        async with self.pool.acquire() as conn, conn.transaction():
            moved = 0
            for table in ("responses", "conversations"):
                moved += _count(await conn.execute(
                    f"UPDATE {table} t SET owner = m.new FROM unnest($1::text[], $2::text[]) AS m(old, new)"
                    " WHERE t.owner = m.old", old, new))
        return moved

    async def queued_background(self) -> list[dict]:
        """This replica's queued background responses with their create body, oldest first (a
        replica's own are adopted by :meth:`take_over`; a new process has none)."""
        rows = await self.pool.fetch(
            f"SELECT {_ROW_COLUMNS} FROM responses WHERE status = 'queued' AND background AND request IS NOT NULL"
            " AND replica = $1 ORDER BY created_at, id", self.replica)
        return [_row_dict(row) for row in rows]

    # replicas ----------------------------------------------------------------
    async def heartbeat(self) -> bool:
        """Stamp this replica as alive now. False when its row was gone (another replica took its
        turns over: it was thought dead); the row is made again then."""
        if _count(await self.pool.execute("UPDATE replicas SET seen_at = clock_timestamp() WHERE id = $1",
                                          self.replica)):
            return True
        await self.pool.execute("INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", self.replica)
        return False

    async def replica_alive(self, replica: str | None, lease: float) -> bool:
        """Whether ``replica`` holds its lease (stamped within ``lease`` seconds)."""
        if replica is None:
            return False
        return bool(await self.pool.fetchval(f"SELECT EXISTS ({_LIVE} AND id = $2)", lease, replica))

    async def take_over(self, lease: float, closing: Callable[[dict, int], list[dict]]) -> TakeOver:
        """Take over the replicas whose lease (``lease`` seconds) ran out, in one transaction:
        their running responses are stored ``failed`` (``server_error``) and, where they have
        stored events (a background stream), ``closing(failed response, last sequence number)``
        events are appended; their queued background responses become this replica's (returned,
        to be run); the conversations their turns held are freed. Survivors that sweep at once
        do it one after the other; the second finds nothing."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            dead = [r[0] for r in await conn.fetch(
                "DELETE FROM replicas WHERE seen_at < clock_timestamp() - make_interval(secs => $1) RETURNING id",
                lease)]
            live = f"NOT IN ({_LIVE})"
            rows = await conn.fetch(
                _UNFINISHED_SQL.format(runner=f"r.replica {live}"), lease)
            failed = await self._fail_rows(conn, rows, closing)
            adopted = [_row_dict(row) for row in await conn.fetch(
                f"UPDATE responses SET replica = $2 WHERE status = 'queued' AND background AND request IS NOT NULL"
                f" AND (replica IS NULL OR replica {live}) RETURNING {_ROW_COLUMNS}", lease, self.replica)]
            adopted.sort(key=lambda row: row["created_at"])
            await conn.execute(
                f"UPDATE conversations SET active_replica = $2 WHERE active_response = ANY($3::text[])"
                f" AND (active_replica IS NULL OR active_replica {live})", lease, self.replica,
                [row["id"] for row in adopted])
            freed = _count(await conn.execute(
                f"UPDATE conversations SET active_response = NULL, active_replica = NULL WHERE active_response IS"
                f" NOT NULL AND (active_replica IS NULL OR active_replica {live})", lease))
        return TakeOver(dead, failed, adopted, freed)

    async def fail_orphaned_responses(self, closing: Callable[[dict, int], list[dict]] | None = None,
                                      lease: float = 5.0) -> int:
        """Mark failed the unfinished responses no live process runs: those of replicas without a
        lease of ``lease`` seconds, and this replica's own (call it before this process runs a
        turn, as at start-up), as :meth:`db.ResponseStore.fail_orphaned_responses` does for its one
        process. Queued background responses of dead replicas are left to :meth:`take_over`.
        Returns how many rows changed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _UNFINISHED_SQL.format(runner=f"r.replica = $2 OR r.replica NOT IN ({_LIVE})"), lease, self.replica)
            return len(await self._fail_rows(conn, rows, closing or (lambda failed, last: [])))

    async def _fail_rows(self, conn: asyncpg.Connection, rows: list, closing: Callable[[dict, int], list[dict]]
                         ) -> list[str]:
        error = {"code": "server_error", "message": "The gateway replica running this response stopped before it "
                                                    "finished."}
        updates, events = [], []
        for rid, text, last in rows:
            obj = orjson.loads(text) if text else None
            if obj is not None:
                obj.update(status="failed", error=error, completed_at=None)
                if last is not None:
                    events += [(rid, e["sequence_number"], _dumps(e)) for e in closing(obj, last)]
            updates.append((rid, None if obj is None else _dumps(obj), time.time(), self.replica))
        if updates:
            await conn.executemany("UPDATE responses SET status = 'failed', response = COALESCE($2, response),"
                                   " updated_at = $3, replica = $4 WHERE id = $1", updates)
        if events:
            await conn.executemany("INSERT INTO response_events VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", events)
        for rid, *_ in rows:
            await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, rid)
        return [row[0] for row in rows]

    async def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY channel, payload`` (every replica's listener gets it)."""
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channels: dict[str, Callable[[str], None]]) -> asyncpg.Connection:
        """A connection of its own that calls ``channels[name](payload)`` for each notification;
        the caller closes it (and makes a new one when it is lost: ``is_closed()``)."""
        conn = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        for channel, callback in channels.items():
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
        return conn

    # reads -------------------------------------------------------------------
    async def get_response(self, id: str, owner: Any = ...) -> dict | None:
        """The stored row as a dict (see :meth:`db.ResponseStore.get_response`), with ``replica``."""
        row = await self.pool.fetchrow(f"SELECT {_ROW_COLUMNS} FROM responses WHERE id = $1", id)
        if row is None or (owner is not ... and row[1] != owner):
            return None
        return _row_dict(row)

    async def get_chain(self, id: str, owner: str | None = None, *, max_bytes: int = 16 * 1024 * 1024,
                        max_items: int = 10_000) -> Chain | None:
        """The chain ending at ``id`` in one query, bounded as :meth:`db.ResponseStore.get_chain`."""
        return chain_of(await self.pool.fetch(_CHAIN_SQL, id, owner, max_bytes, max_items))

    async def find_items(self, ids: list[str], owner: str | None = None) -> dict[str, dict]:
        """Stored input, output or conversation items of ``owner`` by id (for ``item_reference``)."""
        wanted = sorted(set(ids))
        found: dict[str, dict] = {}
        rows = await self.pool.fetch(
            "SELECT input_items, output_items FROM responses WHERE (input_item_ids && $1::text[]"
            " OR output_item_ids && $1::text[]) AND owner IS NOT DISTINCT FROM $2", wanted, owner)
        want = set(wanted)
        for input_items, output_items in rows:
            for item in (*orjson.loads(input_items), *orjson.loads(output_items)):
                if isinstance(item, dict) and item.get("id") in want:
                    found[item["id"]] = item
        for (text,) in await self.pool.fetch(
                "SELECT ci.item FROM conversation_items ci JOIN conversations c ON c.id = ci.conversation_id"
                " WHERE ci.item_id = ANY($1::text[]) AND c.owner IS NOT DISTINCT FROM $2", wanted, owner):
            item = orjson.loads(text)
            found[item["id"]] = item
        return found

    async def get_events(self, id: str, after: int = -1) -> list[dict]:
        """Stored stream events of ``id`` with ``sequence_number > after``, in order."""
        rows = await self.pool.fetch("SELECT event FROM response_events WHERE response_id = $1 AND"
                                     " sequence_number > $2 ORDER BY sequence_number", id, after)
        return [orjson.loads(r[0]) for r in rows]
