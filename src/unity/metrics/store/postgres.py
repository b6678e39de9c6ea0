"""The PostgreSQL metric store: array inserts on asyncpg, TimescaleDB when available.

A batch travels as one array per column and is expanded server-side with ``unnest``:
one statement and one round trip per table, whatever the batch size. The hot paths
use the asyncpg connection under SQLAlchemy's pool directly, in an asyncpg
transaction; the catalog goes through SQLAlchemy Core (:mod:`.base`).

Rewritten samples are handled as on SQLite: ``ON CONFLICT DO NOTHING`` first; when the
server inserted fewer rows than sent, that transaction is rolled back and a second one
upserts the de-duplicated batch (last row wins) and rebuilds the touched rollup buckets
from stored data, under a table lock so concurrent writers cannot interleave.
Everything is written in ``(series_id, ts)`` order, so writers lock rows in one order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import asyncpg
import structlog
from sqlalchemy import ColumnElement, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from unity.core.clock import Clock
from unity.core.db import Database
from unity.metrics.models import Series
from unity.metrics.store.abc import BUCKET_MS, Point, Resolution, SnapshotWrite
from unity.metrics.store.base import SqlMetricStore, latest_per_instance, snapshot_json
from unity.metrics.store.rollups import (
    HOUR_MS,
    MINUTE_MS,
    RollupRow,
    Row,
    prepare_batch,
    rollup_hours,
)

_INSERT_NEW = """
INSERT INTO samples (series_id, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::float8[])
ON CONFLICT DO NOTHING
"""
_UPSERT = """
INSERT INTO samples (series_id, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::float8[])
ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value
"""
_ADD_ROLLUP = """
INSERT INTO {table} AS r (series_id, ts, count, sum, min, max, last, last_ts)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::float8[], $5::float8[],
                     $6::float8[], $7::float8[], $8::bigint[])
ON CONFLICT (series_id, ts) DO UPDATE SET
    count = r.count + excluded.count,
    sum = r.sum + excluded.sum,
    min = LEAST(r.min, excluded.min),
    max = GREATEST(r.max, excluded.max),
    last = CASE WHEN excluded.last_ts >= r.last_ts THEN excluded.last ELSE r.last END,
    last_ts = GREATEST(r.last_ts, excluded.last_ts)
"""
_REBUILD = """
INSERT INTO {table} (series_id, ts, count, sum, min, max, last, last_ts)
SELECT b.series_id, b.ts, a.count, a.sum, a.min, a.max, l.last, a.last_ts
FROM unnest($1::bigint[], $2::bigint[]) AS b (series_id, ts)
CROSS JOIN LATERAL (
    SELECT {count} AS count, sum({sum}) AS sum, min({min}) AS min, max({max}) AS max,
           max({last_ts}) AS last_ts
    FROM {source} s WHERE s.series_id = b.series_id AND s.ts >= b.ts AND s.ts < b.ts + {width}
) AS a
CROSS JOIN LATERAL (
    SELECT {last} AS last FROM {source} s
    WHERE s.series_id = b.series_id AND s.ts >= b.ts AND s.ts < b.ts + {width}
    ORDER BY {last_ts} DESC LIMIT 1
) AS l
ON CONFLICT (series_id, ts) DO UPDATE SET
    count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
    last = excluded.last, last_ts = excluded.last_ts
"""
_REBUILD_1M = _REBUILD.format(
    table="samples_1m",
    source="samples",
    width=MINUTE_MS,
    count="count(*)",
    sum="s.value",
    min="s.value",
    max="s.value",
    last="s.value",
    last_ts="s.ts",
)
_REBUILD_1H = _REBUILD.format(
    table="samples_1h",
    source="samples_1m",
    width=HOUR_MS,
    count="sum(s.count)",
    sum="s.sum",
    min="s.min",
    max="s.max",
    last="s.last",
    last_ts="s.last_ts",
)
_LOCK_FOR_REWRITE = "LOCK TABLE samples, samples_1m, samples_1h IN SHARE ROW EXCLUSIVE MODE"
# FOR KEY SHARE keeps the instance from being deleted between the check and the insert.
_SNAPSHOT = """
INSERT INTO snapshots AS s (instance_id, plugin_id, ts, data)
SELECT $1::uuid, $2::text, $3::timestamptz, $4::jsonb
WHERE EXISTS (SELECT 1 FROM plugin_instances WHERE id = $1::uuid FOR KEY SHARE)
ON CONFLICT (instance_id) DO UPDATE SET
    plugin_id = excluded.plugin_id, ts = excluded.ts, data = excluded.data
WHERE excluded.ts >= s.ts
"""
_RAW = "SELECT ts, value FROM samples WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4"
_ROLLUP = (
    "SELECT ts, count, sum, min, max, last FROM {table} "
    "WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4"
)
_ROLLUP_TABLE: dict[Resolution, str] = {"1m": "samples_1m", "1h": "samples_1h"}
_LATEST = """
SELECT i.id, s.ts, s.value FROM unnest($1::bigint[]) AS i (id)
CROSS JOIN LATERAL (
    SELECT ts, value FROM samples WHERE series_id = i.id ORDER BY ts DESC LIMIT 1
) AS s
"""
_LAST_OF_SOURCE = """
SELECT max(l.ts) FROM series
CROSS JOIN LATERAL (
    SELECT ts FROM samples WHERE series_id = series.id ORDER BY ts DESC LIMIT 1
) AS l
WHERE series.source_kind = $1 AND series.source_id = $2
"""
# Below this size an exact count(*) is cheap; above it the planner's estimate is used.
_EXACT_COUNT_BYTES = 64 * 1024 * 1024
_SIZE = """
SELECT pg_relation_size(c.oid), c.reltuples, c.relpages,
       current_setting('block_size')::int
FROM pg_class c WHERE c.oid = 'samples'::regclass
"""


class _Rewrites(Exception):
    """The batch rewrites stored samples: roll back and take the rewrite path."""


class PostgresMetricStore(SqlMetricStore):
    """Metric store on PostgreSQL; ``samples`` becomes a hypertable with TimescaleDB."""

    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        *SqlMetricStore.transient_errors,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now, cancel
        asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
        asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
        asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby during failover
        asyncpg.exceptions.LockNotAvailableError,
    )

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        super().__init__(database, clock=clock, log=log)
        self.timescale = False

    async def setup(self) -> None:
        """Use TimescaleDB for ``samples`` when the server offers it; carry on without."""
        with self._translated("checking for TimescaleDB"):
            async with self._db.engine.begin() as conn:
                available = await conn.scalar(
                    text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
                )
                if not available:
                    self._log.info("TimescaleDB not available; samples stay a plain table")
                    return
                try:
                    async with conn.begin_nested():
                        await conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
                        await conn.execute(
                            text(
                                "SELECT create_hypertable('samples', 'ts', "
                                "chunk_time_interval => 86400000, migrate_data => true, "
                                "if_not_exists => true)"
                            )
                        )
                except SQLAlchemyError as exc:
                    if self.is_transient(exc):
                        raise
                    self._log.warning(
                        "TimescaleDB could not be enabled; samples stay a plain table",
                        error=str(exc).splitlines()[0],
                    )
                    return
        self.timescale = True
        self._log.info("TimescaleDB hypertable in use for samples")

    # -- connections ---------------------------------------------------------------------

    @asynccontextmanager
    async def _write_connection(self) -> AsyncIterator[AsyncConnection]:
        async with self._db.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _driver(self, action: str) -> AsyncIterator[asyncpg.Connection]:
        """The asyncpg connection of a pooled connection, translated errors."""
        with self._translated(action):
            async with self._db.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                try:
                    yield driver
                except BaseException as exc:
                    if isinstance(exc, Exception) and self.is_transient(exc):
                        await conn.invalidate()  # never pool a connection that just broke
                    raise

    async def close(self) -> None:
        """Nothing to release: every connection goes back to the engine's pool."""

    def _labels_clause(self, labels: Mapping[str, str]) -> ColumnElement[bool]:
        # JSONB containment: answered by the GIN index on series.labels.
        pairs = {str(k): str(v) for k, v in labels.items()}
        return type_coerce(Series.labels, JSONB).contains(pairs)

    async def _insert_series(self, conn: AsyncConnection, values: list[dict[str, Any]]) -> None:
        await conn.execute(
            pg_insert(Series).on_conflict_do_nothing(index_elements=[Series.hash]), values
        )

    # -- writes --------------------------------------------------------------------------

    async def write(
        self,
        rows: Sequence[tuple[int, int, float]],
        snapshots: Sequence[SnapshotWrite] = (),
    ) -> int:
        rows, batch, minutes = prepare_batch(rows)
        if not batch and not snapshots:
            return 0
        hours = rollup_hours(minutes)
        async with self._driver("writing samples") as pg:
            try:
                async with pg.transaction():
                    if batch:
                        await self._add_new_samples(pg, batch, minutes, hours)
                    await self._write_snapshots(pg, snapshots)
            except _Rewrites:
                async with pg.transaction():
                    await self._rewrite_samples(pg, rows, minutes, hours)
                    await self._write_snapshots(pg, snapshots)
        return len(batch)

    async def _add_new_samples(
        self,
        pg: asyncpg.Connection,
        batch: list[Row],
        minutes: list[RollupRow],
        hours: list[RollupRow],
    ) -> None:
        """Insert new samples and add them to their buckets; raise _Rewrites if some existed."""
        status = await pg.execute(_INSERT_NEW, *zip(*batch, strict=True))
        if int(status.rsplit(" ", 1)[-1]) != len(batch):
            raise _Rewrites
        await pg.execute(_ADD_ROLLUP.format(table="samples_1m"), *zip(*minutes, strict=True))
        await pg.execute(_ADD_ROLLUP.format(table="samples_1h"), *zip(*hours, strict=True))

    async def _rewrite_samples(
        self,
        pg: asyncpg.Connection,
        rows: Sequence[Row],
        minutes: list[RollupRow],
        hours: list[RollupRow],
    ) -> None:
        """Upsert a batch that rewrites samples, and rebuild the buckets it touched.

        Rebuilding reads the stored samples; another process adding to the same buckets
        meanwhile would be overwritten. The lock lets running writers finish and holds
        new ones back (this path is rare), so the rebuild sees everything committed and
        nothing changes under it. It is taken first thing: a lock wanted while holding
        row locks could deadlock with a writer waiting on those rows.
        """
        await pg.execute(_LOCK_FOR_REWRITE)
        # One statement may not update a row twice: keep the last row of each key.
        last = {(sid, ts): value for sid, ts, value in rows}
        keys = sorted(last)  # the order every writer locks rows in
        await pg.execute(
            _UPSERT, [k[0] for k in keys], [k[1] for k in keys], [last[k] for k in keys]
        )
        await pg.execute(_REBUILD_1M, [m[0] for m in minutes], [m[1] for m in minutes])
        await pg.execute(_REBUILD_1H, [h[0] for h in hours], [h[1] for h in hours])

    async def _write_snapshots(
        self, pg: asyncpg.Connection, snapshots: Sequence[SnapshotWrite]
    ) -> None:
        if snapshots:
            await pg.executemany(
                _SNAPSHOT,
                [
                    (s.instance_id, s.plugin_id, s.ts, snapshot_json(s.data))
                    for _, s in sorted(latest_per_instance(snapshots).items())
                ],
            )

    # -- reads ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async with self._driver("reading metrics") as pg:
            return list(await pg.fetch(sql, *params))

    async def query(
        self,
        series_id: int,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = "raw",
        limit: int | None = None,
    ) -> list[Point]:
        if end_ms <= start_ms or (limit is not None and limit <= 0):
            return []
        params = (series_id, start_ms, end_ms, limit)  # LIMIT NULL means no limit
        if resolution == "raw":
            return [Point(ts, value) for ts, value in await self._fetch(_RAW, *params)]
        # Buckets overlapping the range: the one holding start_ms starts before it.
        params = (series_id, start_ms - BUCKET_MS[resolution] + 1, *params[2:])
        sql = _ROLLUP.format(table=_ROLLUP_TABLE[resolution])
        return [
            Point(ts, total / count, count, total, low, high, last)
            for ts, count, total, low, high, last in await self._fetch(sql, *params)
        ]

    async def latest(self, series_ids: Sequence[int]) -> dict[int, Point]:
        ids = sorted({int(i) for i in series_ids})
        if not ids:
            return {}
        rows = await self._fetch(_LATEST, ids)
        return {series_id: Point(ts, value) for series_id, ts, value in rows}

    async def count_samples(self) -> int:
        """Exact below 64 MiB of samples; above, the planner's estimate scaled to the size now."""
        async with self._driver("counting samples") as pg:
            if self.timescale:
                return int(await pg.fetchval("SELECT approximate_row_count('samples')") or 0)
            size, tuples, pages, block = await pg.fetchrow(_SIZE)
            if size < _EXACT_COUNT_BYTES or pages <= 0 or tuples < 0:
                return int(await pg.fetchval("SELECT count(*) FROM samples"))
            return int(tuples / pages * (size / block))

    async def last_sample_ms(self, source_kind: str, source_id: str) -> int | None:
        rows = await self._fetch(_LAST_OF_SOURCE, source_kind, source_id)
        return None if rows[0][0] is None else int(rows[0][0])
