"""The token statistics tables of the PostgreSQL store (see ``db_token_stats`` for the model).

The same tables, methods and rules as :class:`db_token_stats.TokenTables`. Replicas that
share the store add into the same rows (``INSERT .. ON CONFLICT DO UPDATE`` takes the row's
lock, so two adds never lose one another); the totals and the minute buckets are written in
one transaction, in a fixed order of keys, so two replicas' flushes never deadlock. Folding
takes the store's advisory lock, so two replicas folding at once do it one after the other
(the second finds nothing left to fold).
"""

from __future__ import annotations

import asyncpg

from db_token_stats import (DAY, MINUTE, TIME_SERIES_LIMIT, TokenRow, count_dict, fold_cutoff, pair_totals,
                            series_entry)

__all__ = ["PostgresTokenTables", "PG_TOKEN_STATS_MIGRATION"]

#: Held (a transaction-level advisory lock) while folding the time series.
_FOLD_LOCK_KEY = 0x6E6F7473

PG_TOKEN_STATS_MIGRATION = """
CREATE TABLE token_counts (
    endpoint      text NOT NULL,
    model         text NOT NULL,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    total_tokens  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint, model)
);
CREATE TABLE token_time_series (
    model         text NOT NULL,
    endpoint      text NOT NULL,
    timestamp     bigint NOT NULL,
    folded        boolean NOT NULL DEFAULT false,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    total_tokens  bigint NOT NULL,
    PRIMARY KEY (model, endpoint, timestamp, folded)
);
CREATE INDEX token_time_series_by_time ON token_time_series (timestamp);
CREATE TABLE token_time_series_daily (
    model         text NOT NULL,
    endpoint      text NOT NULL,
    day           bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    total_tokens  bigint NOT NULL,
    PRIMARY KEY (model, endpoint, day)
);
"""

_ADD_TOTALS_SQL = """
INSERT INTO token_counts AS t (endpoint, model, input_tokens, output_tokens, total_tokens)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
ON CONFLICT (endpoint, model) DO UPDATE SET input_tokens = t.input_tokens + EXCLUDED.input_tokens,
    output_tokens = t.output_tokens + EXCLUDED.output_tokens, total_tokens = t.total_tokens + EXCLUDED.total_tokens
"""

_ADD_SERIES_SQL = """
INSERT INTO token_time_series AS s (model, endpoint, timestamp, input_tokens, output_tokens, total_tokens)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
ON CONFLICT (model, endpoint, timestamp, folded) DO UPDATE SET input_tokens = s.input_tokens + EXCLUDED.input_tokens,
    output_tokens = s.output_tokens + EXCLUDED.output_tokens, total_tokens = s.total_tokens + EXCLUDED.total_tokens
"""

#: A model's series ($1 model, $2 limit), as ``db_token_stats._SERIES_SQL``.
_SERIES_SQL = f"""
SELECT endpoint, input_tokens, output_tokens, total_tokens, timestamp FROM token_time_series WHERE model = $1
UNION ALL
SELECT d.endpoint, d.input_tokens - coalesce(f.i, 0), d.output_tokens - coalesce(f.o, 0),
       d.total_tokens - coalesce(f.t, 0), d.day
FROM token_time_series_daily d LEFT JOIN (
    SELECT endpoint, timestamp / {DAY} * {DAY} AS day, sum(input_tokens) AS i, sum(output_tokens) AS o,
           sum(total_tokens) AS t
    FROM token_time_series WHERE model = $1 AND folded GROUP BY endpoint, day
) f ON f.endpoint = d.endpoint AND f.day = d.day
WHERE d.model = $1 AND (d.input_tokens - coalesce(f.i, 0) > 0 OR d.output_tokens - coalesce(f.o, 0) > 0)
ORDER BY timestamp DESC, endpoint LIMIT $2
"""

#: The minute rows not yet folded before $1 summed per model, endpoint and day, added to the daily rows.
_FOLD_SQL = f"""
WITH groups AS (
    SELECT model, endpoint, timestamp / {DAY} * {DAY} AS day, sum(input_tokens) AS i, sum(output_tokens) AS o,
           sum(total_tokens) AS t
    FROM token_time_series WHERE NOT folded AND timestamp < $1 GROUP BY model, endpoint, day
), added AS (
    INSERT INTO token_time_series_daily AS d (model, endpoint, day, input_tokens, output_tokens, total_tokens)
    SELECT model, endpoint, day, i, o, t FROM groups
    ON CONFLICT (model, endpoint, day) DO UPDATE SET input_tokens = d.input_tokens + EXCLUDED.input_tokens,
        output_tokens = d.output_tokens + EXCLUDED.output_tokens, total_tokens = d.total_tokens + EXCLUDED.total_tokens
    RETURNING 1
)
SELECT count(*) FROM added
"""

#: The minute rows just folded (before $1), marked so, merged into a row folded before with the same key.
_MARK_FOLDED_SQL = """
WITH taken AS (
    DELETE FROM token_time_series WHERE NOT folded AND timestamp < $1
    RETURNING model, endpoint, timestamp, input_tokens, output_tokens, total_tokens
)
INSERT INTO token_time_series AS s (model, endpoint, timestamp, folded, input_tokens, output_tokens, total_tokens)
SELECT model, endpoint, timestamp, true, input_tokens, output_tokens, total_tokens FROM taken
ON CONFLICT (model, endpoint, timestamp, folded) DO UPDATE SET input_tokens = s.input_tokens + EXCLUDED.input_tokens,
    output_tokens = s.output_tokens + EXCLUDED.output_tokens, total_tokens = s.total_tokens + EXCLUDED.total_tokens
"""


def _columns(rows: list[tuple]) -> list[list]:
    """``rows`` as one list per column (what ``unnest`` takes)."""
    return [list(column) for column in zip(*rows)]


class PostgresTokenTables:
    """Token statistics reads and writes on ``pool`` (see :class:`db_token_stats.TokenTables`)."""

    pool: asyncpg.Pool

    async def add_token_counts(self, rows: list[TokenRow]) -> None:
        """Add ``rows`` (tokens per endpoint, model and minute) to the totals and the time series,
        in one transaction (all or none); what other replicas add meanwhile is added to, not replaced."""
        if not rows:
            return
        buckets: dict[tuple[str, str, int], list[int]] = {}
        for endpoint, model, timestamp, i, o in rows:
            counts = buckets.setdefault((model, endpoint, timestamp // MINUTE * MINUTE), [0, 0])
            counts[0] += i
            counts[1] += o
        totals = sorted(pair_totals(rows))
        series = [(*key, i, o, i + o) for key, (i, o) in sorted(buckets.items())]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_ADD_TOTALS_SQL, *_columns(totals))
            await conn.execute(_ADD_SERIES_SQL, *_columns(series))

    async def token_counts(self) -> list[dict]:
        """Every ``(endpoint, model)``'s totals, by endpoint then model."""
        rows = await self.pool.fetch("SELECT endpoint, model, input_tokens, output_tokens, total_tokens"
                                     " FROM token_counts ORDER BY endpoint, model")
        return [count_dict(*row) for row in rows]

    async def token_counts_for_model(self, model: str) -> dict | None:
        """``model``'s totals summed over its endpoints, or None when it has none."""
        found, i, o, t = await self.pool.fetchrow(
            "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(total_tokens) FROM token_counts"
            " WHERE model = $1", model)
        return {"input_tokens": int(i), "output_tokens": int(o), "total_tokens": int(t)} if found else None

    async def token_endpoint_distribution(self, model: str) -> dict[str, int]:
        """``model``'s ``total_tokens`` per endpoint."""
        rows = await self.pool.fetch(
            "SELECT endpoint, total_tokens FROM token_counts WHERE model = $1 ORDER BY endpoint", model)
        return {endpoint: int(total) for endpoint, total in rows}

    async def token_time_series(self, model: str, limit: int = TIME_SERIES_LIMIT) -> list[dict]:
        """``model``'s time series, newest first, at most ``limit`` entries (see
        :meth:`db_token_stats.TokenTables.token_time_series`)."""
        return [series_entry(*row) for row in await self.pool.fetch(_SERIES_SQL, model, limit)]

    async def aggregate_time_series_older_than(self, days: int, trim_old: bool = False) -> int:
        """Fold the minute rows of whole UTC days older than ``days`` days into daily rows (see
        :meth:`db_token_stats.TokenTables.aggregate_time_series_older_than`); the number of groups
        folded now. Raises ValueError unless ``days`` is a positive int."""
        cutoff = fold_cutoff(days)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FOLD_LOCK_KEY)
            groups = await conn.fetchval(_FOLD_SQL, cutoff)
            if trim_old:
                await conn.execute("DELETE FROM token_time_series WHERE timestamp < $1", cutoff)
            else:
                await conn.execute(_MARK_FOLDED_SQL, cutoff)
        return int(groups)
