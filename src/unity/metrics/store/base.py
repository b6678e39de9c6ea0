"""What both SQL backends share: the series catalog, snapshots and error translation.

The hot paths (sample writes, range reads) are backend code on the raw driver; the
catalog is low-volume and goes through SQLAlchemy Core so column types (JSON, UUID,
UTC datetimes) are encoded the same way as everywhere else in Unity.
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import orjson
import structlog
from sqlalchemy import ColumnElement, Select, delete, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection

from unity.core.clock import Clock, SystemClock
from unity.core.db import Database
from unity.errors import DatabaseError
from unity.metrics.models import Series, Snapshot, samples, samples_1h, samples_1m
from unity.metrics.store.abc import (
    MetricStore,
    SeriesInfo,
    SeriesKey,
    SeriesSummary,
    SnapshotWrite,
)
from unity.plugins.models import PluginInstance

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])

#: Ids per ``IN (...)`` list: well under every backend's bound-parameter limit.
CHUNK = 500


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqlMetricStore(MetricStore):
    """A metric store on a :class:`Database`; subclasses own the write and read paths."""

    #: Exceptions meaning "the database is unavailable for now" (translated to DatabaseError).
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        OperationalError,
        PoolTimeoutError,
        OSError,
        TimeoutError,
    )

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._db = database
        self._clock = clock or SystemClock()
        self._log = log or structlog.stdlib.get_logger("unity.metrics.store")
        # series hash -> (id, unit); an id never changes once given.
        self._ids: dict[str, tuple[int, str | None]] = {}

    # -- hooks -------------------------------------------------------------------------

    @abstractmethod
    def _labels_clause(self, labels: Mapping[str, str]) -> ColumnElement[bool]:
        """A WHERE clause: the series' labels contain every pair of ``labels``."""

    @abstractmethod
    async def _insert_series(self, conn: AsyncConnection, values: list[dict[str, Any]]) -> None:
        """Insert series rows, silently skipping hashes that exist already."""

    @abstractmethod
    def _write_connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside a write transaction, committed when the block ends."""

    def _forget_counts(self) -> None:
        """Drop cached sample counts (rows were deleted)."""

    # -- errors ------------------------------------------------------------------------

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the database is unavailable rather than the input is bad.

        SQLAlchemy wraps driver errors (an asyncpg shutdown error arrives as a generic
        ``DBAPIError``), so the whole chain of causes is looked at.
        """
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, self.transient_errors):
                return True
            if isinstance(current, DBAPIError):
                if current.connection_invalidated:
                    return True
                current = current.orig
            else:
                current = current.__cause__
        return False

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Turn an outage into :class:`DatabaseError`; let input errors through."""
        try:
            yield
        except DatabaseError:
            raise
        except Exception as exc:
            if self.is_transient(exc):
                raise DatabaseError(f"{action} failed: {_first_line(exc)}") from exc
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with self._translated("reading metrics"):
            async with self._db.engine.connect() as conn:
                yield conn

    # -- series --------------------------------------------------------------------------

    async def resolve_series(self, keys: Sequence[SeriesKey]) -> list[int]:
        hashes = [key.hash for key in keys]
        missing: dict[str, SeriesKey] = {}
        for digest, key in zip(hashes, keys, strict=True):
            known = self._ids.get(digest)
            if known is None or (key.unit is not None and key.unit != known[1]):
                missing[digest] = key
        if missing:
            with self._translated("creating series"):
                async with self._write_connection() as conn:
                    await self._get_or_create(conn, missing)
        return [self._ids[digest][0] for digest in hashes]

    async def _get_or_create(self, conn: AsyncConnection, keys: dict[str, SeriesKey]) -> None:
        # Hash order everywhere: two transactions creating overlapping sets of series
        # then take the unique index's row locks in the same order and cannot deadlock.
        digests = sorted(keys)
        found = await self._select_ids(conn, digests)
        absent = [d for d in digests if d not in found]
        if absent:
            now = self._clock.now()
            await self._insert_series(conn, [_series_values(keys[d], d, now) for d in absent])
            found.update(await self._select_ids(conn, absent))
        for digest, (series_id, unit) in sorted(found.items()):
            wanted = keys[digest].unit
            if wanted is not None and wanted != unit:
                await conn.execute(update(Series).where(Series.id == series_id).values(unit=wanted))
                unit = wanted
            self._ids[digest] = (series_id, unit)

    async def _select_ids(
        self, conn: AsyncConnection, digests: Sequence[str]
    ) -> dict[str, tuple[int, str | None]]:
        found: dict[str, tuple[int, str | None]] = {}
        for part in chunks(digests):
            result = await conn.execute(
                select(Series.hash, Series.id, Series.unit).where(Series.hash.in_(part))
            )
            for digest, series_id, unit in result:
                found[digest] = (int(series_id), unit)
        return found

    def _filtered(
        self,
        query: _Query,
        *,
        name: str | None,
        source_kind: str | None,
        source_id: str | None,
        plugin_id: str | None,
        labels: Mapping[str, str] | None,
    ) -> _Query:
        if name is not None:
            query = query.where(Series.name == name)
        if source_kind is not None:
            query = query.where(Series.source_kind == source_kind)
        if source_id is not None:
            query = query.where(Series.source_id == source_id)
        if plugin_id is not None:
            query = query.where(Series.plugin_id == plugin_id)
        if labels:
            query = query.where(self._labels_clause(labels))
        return query

    async def find_series(
        self,
        *,
        name: str | None = None,
        source_kind: str | None = None,
        source_id: str | None = None,
        plugin_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        skip: int = 0,
        limit: int = 100,
    ) -> list[SeriesInfo]:
        query = self._filtered(
            select(
                Series.id,
                Series.name,
                Series.source_kind,
                Series.source_id,
                Series.plugin_id,
                Series.labels,
                Series.unit,
            ),
            name=name,
            source_kind=source_kind,
            source_id=source_id,
            plugin_id=plugin_id,
            labels=labels,
        )
        query = query.order_by(Series.id).offset(max(skip, 0)).limit(max(limit, 0))
        async with self._read() as conn:
            result = await conn.execute(query)
            return [
                SeriesInfo(
                    id=int(row.id),
                    name=row.name,
                    source_kind=row.source_kind,
                    source_id=row.source_id,
                    plugin_id=row.plugin_id,
                    labels=dict(row.labels or {}),
                    unit=row.unit,
                )
                for row in result
            ]

    async def count_series(
        self,
        *,
        name: str | None = None,
        source_kind: str | None = None,
        source_id: str | None = None,
        plugin_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> int:
        query = self._filtered(
            select(func.count()).select_from(Series),
            name=name,
            source_kind=source_kind,
            source_id=source_id,
            plugin_id=plugin_id,
            labels=labels,
        )
        async with self._read() as conn:
            return int(await conn.scalar(query) or 0)

    async def summarize(self, series_ids: Sequence[int]) -> dict[int, SeriesSummary]:
        ids = sorted({int(i) for i in series_ids})
        out: dict[int, SeriesSummary] = {}
        async with self._read() as conn:
            for part in chunks(ids):
                result = await conn.execute(
                    select(
                        samples_1h.c.series_id,
                        func.sum(samples_1h.c.count),
                        func.sum(samples_1h.c.sum),
                        func.min(samples_1h.c.min),
                        func.max(samples_1h.c.max),
                    )
                    .where(samples_1h.c.series_id.in_(part))
                    .group_by(samples_1h.c.series_id)
                )
                for series_id, count, total, low, high in result:
                    out[int(series_id)] = SeriesSummary(
                        int(count), float(total), float(low), float(high)
                    )
        return out

    async def delete_series(self, series_ids: Sequence[int]) -> None:
        ids = sorted(set(series_ids))
        if not ids:
            return
        with self._translated("deleting series"):
            async with self._write_connection() as conn:
                for part in chunks(ids):
                    for table in (samples, samples_1m, samples_1h):
                        await conn.execute(delete(table).where(table.c.series_id.in_(part)))
                    await conn.execute(delete(Series).where(Series.id.in_(part)))
        self.series_generation += 1
        self._forget_counts()
        gone = set(ids)
        for digest in [d for d, (i, _) in self._ids.items() if i in gone]:
            del self._ids[digest]

    # -- snapshots -----------------------------------------------------------------------

    async def latest_snapshot(
        self, instance_id: uuid.UUID
    ) -> tuple[datetime, dict[str, Any]] | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(Snapshot.ts, Snapshot.data).where(Snapshot.instance_id == instance_id)
                )
            ).first()
        if row is None:
            return None
        return row.ts, dict(row.data or {})


def latest_per_instance(snapshots: Sequence[SnapshotWrite]) -> dict[uuid.UUID, SnapshotWrite]:
    """One snapshot per instance, the newest (the later one on a tie)."""
    newest: dict[uuid.UUID, SnapshotWrite] = {}
    for snapshot in snapshots:
        seen = newest.get(snapshot.instance_id)
        if seen is None or snapshot.ts >= seen.ts:
            newest[snapshot.instance_id] = snapshot
    return newest


async def existing_instances(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` are plugin instances (a snapshot of a deleted one is dropped)."""
    found: set[uuid.UUID] = set()
    for part in chunks(ids):
        result = await conn.execute(select(PluginInstance.id).where(PluginInstance.id.in_(part)))
        found.update(result.scalars())
    return found


def snapshot_json(data: dict[str, Any]) -> str:
    """``data`` as JSON text; what JSON cannot hold (datetimes, UUIDs, sets) becomes a string.

    A plugin's odd payload must not fail the batch of samples it travels with.
    """
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _series_values(key: SeriesKey, digest: str, now: datetime) -> dict[str, Any]:
    return {
        "name": key.name,
        "source_kind": key.source_kind,
        "source_id": key.source_id,
        "plugin_id": key.plugin_id,
        "labels": key.labels_dict,
        "unit": key.unit,
        "hash": digest,
        "created_at": now,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
