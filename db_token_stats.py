"""The token statistics tables of the store: NOMYO Router's token counts and their time series.

Three tables (the schema is :data:`TOKEN_STATS_MIGRATION`, one of ``db.MIGRATIONS``):

* ``token_counts``: one row per ``(endpoint, model)`` with its ``input_tokens``,
  ``output_tokens`` and ``total_tokens`` since the store was made. Every write adds to it
  (``INSERT .. ON CONFLICT DO UPDATE``), so replicas sharing a store add up.
* ``token_time_series``: one row per ``(endpoint, model, minute)``: the tokens counted in
  that minute (``timestamp``: the minute's start, Unix seconds, UTC), added to like the totals.
  NOMYO Router writes a row per request; a minute bucket keeps at most 1,440 rows a day per
  pair however busy the gateway is, and a chart drawn from it looks the same.
* ``token_time_series_daily``: the minutes of whole UTC days folded into one row per
  ``(endpoint, model, day)`` by :meth:`TokenTables.aggregate_time_series_older_than` (as
  NOMYO Router's ``token_time_series_daily``). A minute row, once folded, is marked
  ``folded`` (or deleted, with ``trim_old``) and never folded twice.

Reads of a model's time series give every minute row still kept and, for each folded day,
what of it is no longer kept as minutes (a point at the day's start), so each token is in
the series exactly once whether old rows were trimmed or not.

:class:`db.ResponseStore` mixes :class:`TokenTables` in (it gives ``conn``, ``reader`` and
``transaction``); the pure helpers here are shared with ``db_postgres_token_stats``.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable, Iterable

import aiosqlite

__all__ = ["TokenTables", "TOKEN_STATS_MIGRATION", "LEGACY_TABLES", "set_legacy_tables_aside", "import_legacy_tables", "DAY", "MINUTE", "TIME_SERIES_LIMIT", "TokenRow",
           "pair_totals", "fold_cutoff", "count_dict", "series_entry"]

#: Seconds in a time-series bucket and in a folded day.
MINUTE, DAY = 60, 86400
#: How many time-series entries a model's read gives at most, newest first (NOMYO Router's limit).
TIME_SERIES_LIMIT = 50_000

#: ``(endpoint, model, timestamp, input_tokens, output_tokens)``: tokens counted in the minute
#: starting at ``timestamp`` (Unix seconds).
TokenRow = tuple[str, str, int, int, int]

TOKEN_STATS_MIGRATION = """
CREATE TABLE token_counts (
    endpoint      TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint, model)
) WITHOUT ROWID;
CREATE TABLE token_time_series (
    model         TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    timestamp     INTEGER NOT NULL,
    folded        INTEGER NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens  INTEGER NOT NULL,
    PRIMARY KEY (model, endpoint, timestamp, folded)
) WITHOUT ROWID;
CREATE INDEX token_time_series_by_time ON token_time_series(timestamp);
CREATE TABLE token_time_series_daily (
    model         TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    day           INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens  INTEGER NOT NULL,
    PRIMARY KEY (model, endpoint, day)
) WITHOUT ROWID;
"""

# ── NOMYO Router's own token database ─────────────────────────────────────────
#: NOMYO Router's tables (its ``db_path``, ``token_counts.db``), as a store pointed at that file finds
#: them, and the names they are kept under until they are imported.
LEGACY_TABLES = {"token_counts": "legacy_token_counts", "token_time_series": "legacy_token_time_series",
                 "token_time_series_daily": "legacy_token_time_series_daily"}

_LEGACY_IMPORT = {
    "legacy_token_counts": """
INSERT INTO token_counts (endpoint, model, input_tokens, output_tokens, total_tokens)
SELECT endpoint, model, sum(coalesce(input_tokens, 0)), sum(coalesce(output_tokens, 0)), sum(coalesce(total_tokens, 0))
FROM legacy_token_counts WHERE endpoint IS NOT NULL AND model IS NOT NULL GROUP BY endpoint, model;""",
    # its per-request rows, in minutes
    "legacy_token_time_series": f"""
INSERT INTO token_time_series (model, endpoint, timestamp, folded, input_tokens, output_tokens, total_tokens)
SELECT model, endpoint, timestamp / {MINUTE} * {MINUTE}, 0, sum(coalesce(input_tokens, 0)),
       sum(coalesce(output_tokens, 0)), sum(coalesce(total_tokens, 0))
FROM legacy_token_time_series WHERE model IS NOT NULL AND endpoint IS NOT NULL AND timestamp IS NOT NULL
GROUP BY model, endpoint, timestamp / {MINUTE} * {MINUTE};""",
    # its folded days, where their rows were trimmed (a day whose rows it kept is in them already)
    "legacy_token_time_series_daily": f"""
INSERT INTO token_time_series_daily (model, endpoint, day, input_tokens, output_tokens, total_tokens)
SELECT d.model, d.endpoint, CAST(strftime('%s', d.date) AS INTEGER) AS start, sum(coalesce(d.input_tokens, 0)),
       sum(coalesce(d.output_tokens, 0)), sum(coalesce(d.total_tokens, 0))
FROM legacy_token_time_series_daily d
WHERE d.model IS NOT NULL AND d.endpoint IS NOT NULL AND strftime('%s', d.date) IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM token_time_series s WHERE s.model = d.model AND s.endpoint = d.endpoint
                  AND s.timestamp / {DAY} = CAST(strftime('%s', d.date) AS INTEGER) / {DAY})
GROUP BY d.model, d.endpoint, start;""",
}


async def set_legacy_tables_aside(conn: aiosqlite.Connection) -> bool:
    """In a file that is NOMYO Router's token database (a ``token_counts`` table and no schema
    version of this store's), rename its tables (:data:`LEGACY_TABLES`) so this store's can be
    made; one transaction. Whether it was such a file."""
    names = {row[0] for row in await (await conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
             .fetchall()}
    if "token_counts" not in names:
        return False
    await conn.executescript("BEGIN; " + " ".join(f"ALTER TABLE {old} RENAME TO {new};" for old, new in
                                                  LEGACY_TABLES.items() if old in names) + " COMMIT;")
    return True


async def import_legacy_tables(conn: aiosqlite.Connection) -> bool:
    """Add what NOMYO Router's tables set aside by :func:`set_legacy_tables_aside` hold to this
    store's token statistics, and drop them; one transaction, so an import cut short is done
    again at the next start. Whether there was anything to import."""
    names = {row[0] for row in await (await conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
             .fetchall()}
    present = [name for name in LEGACY_TABLES.values() if name in names]
    if not present:
        return False
    script = "".join(_LEGACY_IMPORT[name] for name in present) + "".join(f"DROP TABLE {name};" for name in
                                                                          reversed(present))
    await conn.executescript(f"BEGIN; {script} COMMIT;")
    return True


_ADD_TOTALS_SQL = (
    "INSERT INTO token_counts (endpoint, model, input_tokens, output_tokens, total_tokens) VALUES (?,?,?,?,?)"
    " ON CONFLICT (endpoint, model) DO UPDATE SET input_tokens = input_tokens + excluded.input_tokens,"
    " output_tokens = output_tokens + excluded.output_tokens, total_tokens = total_tokens + excluded.total_tokens")

_ADD_SERIES_SQL = (
    "INSERT INTO token_time_series (model, endpoint, timestamp, folded, input_tokens, output_tokens, total_tokens)"
    " VALUES (?,?,?,0,?,?,?) ON CONFLICT (model, endpoint, timestamp, folded) DO UPDATE SET"
    " input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,"
    " total_tokens = total_tokens + excluded.total_tokens")

#: A model's series: the minute rows kept, and each folded day's part no longer kept as minutes.
_SERIES_SQL = f"""
SELECT endpoint, input_tokens, output_tokens, total_tokens, timestamp FROM token_time_series WHERE model = :model
UNION ALL
SELECT d.endpoint, d.input_tokens - coalesce(f.i, 0), d.output_tokens - coalesce(f.o, 0),
       d.total_tokens - coalesce(f.t, 0), d.day
FROM token_time_series_daily d LEFT JOIN (
    SELECT endpoint, timestamp / {DAY} * {DAY} AS day, sum(input_tokens) AS i, sum(output_tokens) AS o,
           sum(total_tokens) AS t
    FROM token_time_series WHERE model = :model AND folded = 1 GROUP BY endpoint, day
) f ON f.endpoint = d.endpoint AND f.day = d.day
WHERE d.model = :model AND (d.input_tokens - coalesce(f.i, 0) > 0 OR d.output_tokens - coalesce(f.o, 0) > 0)
ORDER BY timestamp DESC, endpoint LIMIT :limit
"""

#: The minute rows not yet folded before :cutoff, summed per endpoint, model and day.
_FOLD_SQL = f"""
SELECT model, endpoint, timestamp / {DAY} * {DAY} AS day, sum(input_tokens), sum(output_tokens), sum(total_tokens)
FROM token_time_series WHERE folded = 0 AND timestamp < ? GROUP BY model, endpoint, day
"""

_ADD_DAILY_SQL = (
    "INSERT INTO token_time_series_daily (model, endpoint, day, input_tokens, output_tokens, total_tokens)"
    " VALUES (?,?,?,?,?,?) ON CONFLICT (model, endpoint, day) DO UPDATE SET"
    " input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,"
    " total_tokens = total_tokens + excluded.total_tokens")

#: The minute rows just folded, marked so (merged into a row folded before, if one has the same key).
_MARK_FOLDED_SQL = """
INSERT INTO token_time_series (model, endpoint, timestamp, folded, input_tokens, output_tokens, total_tokens)
SELECT model, endpoint, timestamp, 1, input_tokens, output_tokens, total_tokens FROM token_time_series
WHERE folded = 0 AND timestamp < ?
ON CONFLICT (model, endpoint, timestamp, folded) DO UPDATE SET
    input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
    total_tokens = total_tokens + excluded.total_tokens
"""


def pair_totals(rows: Iterable[TokenRow]) -> list[tuple[str, str, int, int, int]]:
    """``rows`` summed per ``(endpoint, model)``: ``(endpoint, model, input, output, total)`` each."""
    sums: dict[tuple[str, str], list[int]] = {}
    for endpoint, model, _, input_tokens, output_tokens in rows:
        counts = sums.setdefault((endpoint, model), [0, 0])
        counts[0] += input_tokens
        counts[1] += output_tokens
    return [(endpoint, model, i, o, i + o) for (endpoint, model), (i, o) in sums.items()]


def fold_cutoff(days: int, now: float | None = None) -> int:
    """Where folding stops (Unix seconds): the start of the UTC day ``days`` days before ``now``.
    Every row before it is older than ``days`` days, and whole days are folded, never part of one.
    Raises ValueError unless ``days`` is a positive int."""
    if type(days) is not int or days < 1:
        raise ValueError(f"days must be a positive integer, not {days!r}")
    moment = int(time.time() if now is None else now) - days * DAY
    return moment // DAY * DAY


def count_dict(endpoint: str, model: str, input_tokens: int, output_tokens: int, total_tokens: int) -> dict:
    """One ``breakdown`` entry of ``/api/token_counts`` (NOMYO Router's keys)."""
    return {"endpoint": endpoint, "model": model, "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens), "total_tokens": int(total_tokens)}


def series_entry(endpoint: str, input_tokens: int, output_tokens: int, total_tokens: int, timestamp: int) -> dict:
    """One ``time_series`` entry of ``/api/stats`` (NOMYO Router's keys; ``timestamp`` Unix seconds)."""
    return {"endpoint": endpoint, "input_tokens": int(input_tokens), "output_tokens": int(output_tokens),
            "total_tokens": int(total_tokens), "timestamp": int(timestamp)}


class TokenTables:
    """Token statistics reads and writes on the SQLite store (see the module's docstring)."""

    conn: aiosqlite.Connection
    reader: aiosqlite.Connection
    transaction: Callable[[], AbstractAsyncContextManager[Any]]

    async def add_token_counts(self, rows: list[TokenRow]) -> None:
        """Add ``rows`` (:data:`TokenRow`: tokens per endpoint, model and minute) to the totals and
        the time series, in one transaction: all of them are added, or none."""
        if not rows:
            return
        series = [(model, endpoint, timestamp // MINUTE * MINUTE, i, o, i + o)
                  for endpoint, model, timestamp, i, o in rows]
        async with self.transaction():
            await self.conn.executemany(_ADD_TOTALS_SQL, pair_totals(rows))
            await self.conn.executemany(_ADD_SERIES_SQL, series)

    async def token_counts(self) -> list[dict]:
        """Every ``(endpoint, model)``'s totals (:func:`count_dict`), by endpoint then model."""
        rows = await self.reader.execute_fetchall(
            "SELECT endpoint, model, input_tokens, output_tokens, total_tokens FROM token_counts"
            " ORDER BY endpoint, model")
        return [count_dict(*row) for row in rows]

    async def token_counts_for_model(self, model: str) -> dict | None:
        """``model``'s totals summed over its endpoints (``input_tokens``, ``output_tokens``,
        ``total_tokens``), or None when it has none."""
        rows = await self.reader.execute_fetchall(
            "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(total_tokens) FROM token_counts"
            " WHERE model = ?", (model,))
        found, i, o, t = rows[0]
        return {"input_tokens": i, "output_tokens": o, "total_tokens": t} if found else None

    async def token_endpoint_distribution(self, model: str) -> dict[str, int]:
        """``model``'s ``total_tokens`` per endpoint (what NOMYO Router's ``endpoint_distribution`` gives)."""
        rows = await self.reader.execute_fetchall(
            "SELECT endpoint, total_tokens FROM token_counts WHERE model = ? ORDER BY endpoint", (model,))
        return {endpoint: int(total) for endpoint, total in rows}

    async def token_time_series(self, model: str, limit: int = TIME_SERIES_LIMIT) -> list[dict]:
        """``model``'s time series, newest first, at most ``limit`` entries (:func:`series_entry`):
        a minute each, and a day each for what was folded and trimmed (see the module's docstring)."""
        rows = await self.reader.execute_fetchall(_SERIES_SQL, {"model": model, "limit": limit})
        return [series_entry(*row) for row in rows]

    async def aggregate_time_series_older_than(self, days: int, trim_old: bool = False) -> int:
        """Fold the minute rows of whole UTC days older than ``days`` days (:func:`fold_cutoff`) into
        one ``token_time_series_daily`` row per endpoint, model and day, as NOMYO Router does; with
        ``trim_old`` the minute rows are deleted then, else kept (marked folded). One transaction.
        Returns the number of ``(endpoint, model, day)`` groups folded now (rows folded before are
        not folded again). Raises ValueError unless ``days`` is a positive int."""
        cutoff = fold_cutoff(days)
        async with self.transaction():
            groups = await self.conn.execute_fetchall(_FOLD_SQL, (cutoff,))
            await self.conn.executemany(_ADD_DAILY_SQL, groups)
            if trim_old:
                await self.conn.execute("DELETE FROM token_time_series WHERE timestamp < ?", (cutoff,))
            else:
                await self.conn.execute(_MARK_FOLDED_SQL, (cutoff,))
                await self.conn.execute("DELETE FROM token_time_series WHERE timestamp < ? AND folded = 0",
                                        (cutoff,))
        return len(groups)
