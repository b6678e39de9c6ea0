"""The MetricStore contract, run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.metrics.conftest import key, make_instance
from unity.core.db import Database
from unity.core.migrations import upgrade
from unity.metrics.store import MetricStore, SnapshotWrite, SqliteMetricStore, create_store
from unity.metrics.store.abc import SeriesKey
from unity.metrics.store.postgres import PostgresMetricStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on a whole hour
MIN = 60_000
HOUR = 3_600_000


def expected_buckets(samples: dict[int, float], width: int) -> dict[int, tuple[Any, ...]]:
    """(count, sum, min, max, last) per bucket start, computed the slow, obvious way."""
    out: dict[int, tuple[Any, ...]] = {}
    for start in sorted({ts - ts % width for ts in samples}):
        inside = sorted((ts, v) for ts, v in samples.items() if start <= ts < start + width)
        values = [v for _, v in inside]
        out[start] = (len(values), sum(values), min(values), max(values), inside[-1][1])
    return out


async def stored_buckets(
    store: MetricStore, series_id: int, resolution: Any
) -> dict[int, tuple[Any, ...]]:
    points = await store.query(series_id, 0, 2**62, resolution)
    return {p.ts: (p.count, p.sum, p.min, p.max, p.last) for p in points}


def assert_buckets_equal(got: dict[int, tuple[Any, ...]], want: dict[int, tuple[Any, ...]]) -> None:
    assert got.keys() == want.keys()
    for ts, (count, total, low, high, last) in want.items():
        g_count, g_total, g_low, g_high, g_last = got[ts]
        assert (g_count, g_low, g_high, g_last) == (count, low, high, last), ts
        assert math.isclose(g_total, total, rel_tol=1e-9), ts


# -- series -----------------------------------------------------------------------------


async def test_resolve_series_is_idempotent_and_keeps_order(store: MetricStore) -> None:
    keys = [key("cpu"), key("mem"), key("disk", mount="/"), key("disk", mount="/data")]
    first = await store.resolve_series(keys)
    assert len(set(first)) == 4
    assert await store.resolve_series(list(reversed(keys))) == list(reversed(first))
    assert await store.count_series() == 4


async def test_ids_survive_a_new_store_instance(database: Database, store: MetricStore) -> None:
    ids = await store.resolve_series([key("cpu"), key("mem")])
    other = create_store(database)
    try:
        assert await other.resolve_series([key("mem"), key("cpu")]) == ids[::-1]
    finally:
        await other.close()


async def test_unit_is_not_identity_but_is_kept_up_to_date(store: MetricStore) -> None:
    plain = SeriesKey.of("lat", source_kind="instance", source_id="a", unit="ms")
    (first,) = await store.resolve_series([plain])
    renamed = SeriesKey.of("lat", source_kind="instance", source_id="a", unit="s")
    assert renamed == plain
    assert await store.resolve_series([renamed]) == [first]
    (info,) = await store.find_series(name="lat")
    assert info.unit == "s"


async def test_label_order_does_not_make_a_new_series(store: MetricStore) -> None:
    one = SeriesKey.of("x", source_kind="i", source_id="a", labels={"a": "1", "b": "2"})
    two = SeriesKey.of("x", source_kind="i", source_id="a", labels={"b": "2", "a": "1"})
    assert await store.resolve_series([one]) == await store.resolve_series([two])


async def test_concurrent_creation_from_two_stores_makes_each_series_once(
    database: Database,
) -> None:
    # Two stores with their own engines stand for two processes racing on one database.
    other_db = Database(database.url)
    stores = [create_store(database), create_store(other_db)]
    keys = [key(f"m{i}", source_id=f"s{i % 7}") for i in range(60)]
    # Each call asks for the keys in a different order; all race to create them.
    orders = [keys[0::2] + keys, keys[1::2] + keys, keys[::-1], keys[::-1]]
    callers = [stores[0], stores[1], stores[0], stores[1]]
    try:
        results = await asyncio.gather(
            *(store.resolve_series(order) for store, order in zip(callers, orders, strict=True))
        )
        mappings = [dict(zip(o, r, strict=True)) for o, r in zip(orders, results, strict=True)]
        assert all(mapping == mappings[0] for mapping in mappings)
        assert len(set(mappings[0].values())) == 60
        assert await stores[0].count_series() == 60
    finally:
        for s in stores:
            await s.close()
        await other_db.dispose()


async def test_find_series_filters_and_pages(store: MetricStore) -> None:
    await store.resolve_series(
        [
            key("disk", "a", mount="/", device="sda"),
            key("disk", "a", mount="/data", device="sdb"),
            key("disk", "b", mount="/", device="nvme"),
            key("cpu", "a"),
            SeriesKey.of("cpu", source_kind="run", source_id="r1", plugin_id="other"),
        ]
    )
    assert [s.labels for s in await store.find_series(labels={"mount": "/"})] == [
        {"mount": "/", "device": "sda"},
        {"mount": "/", "device": "nvme"},
    ]
    assert len(await store.find_series(labels={"mount": "/", "device": "nvme"})) == 1
    assert await store.find_series(labels={"mount": "/", "device": "sdb"}) == []
    assert await store.find_series(labels={"nope": "x"}) == []
    assert await store.count_series(name="disk", source_id="a") == 2
    assert await store.count_series(source_kind="run") == 1
    assert await store.count_series(plugin_id="sys") == 4
    assert await store.count_series(name="cpu", labels={"mount": "/"}) == 0

    everything = await store.find_series()
    assert [s.id for s in everything] == sorted(s.id for s in everything)
    page = await store.find_series(skip=1, limit=2)
    assert [s.id for s in page] == [s.id for s in everything[1:3]]
    (run_series,) = await store.find_series(source_kind="run")
    assert (run_series.name, run_series.source_id, run_series.plugin_id) == ("cpu", "r1", "other")


# -- raw samples -----------------------------------------------------------------------------


async def test_raw_query_is_half_open_ordered_and_limited(store: MetricStore) -> None:
    a, b = await store.resolve_series([key("a"), key("b")])
    await store.write([(a, T0 + i * 1000, float(i)) for i in reversed(range(10))])
    await store.write([(b, T0 + 5000, 99.0)])
    points = await store.query(a, T0 + 2000, T0 + 5000)
    assert [(p.ts, p.value) for p in points] == [
        (T0 + 2000, 2.0),
        (T0 + 3000, 3.0),
        (T0 + 4000, 4.0),
    ]
    assert [p.ts for p in await store.query(a, T0, T0 + 10_000, limit=2)] == [T0, T0 + 1000]
    assert await store.query(a, T0 + 5000, T0 + 5000) == []
    assert await store.query(a, T0 + 9000, T0) == []
    assert [p.value for p in await store.query(b, T0, T0 + 10_000)] == [99.0]


async def test_write_reports_rows_and_ignores_empty_batches(store: MetricStore) -> None:
    (sid,) = await store.resolve_series([key()])
    assert await store.write([]) == 0
    assert await store.write([(sid, T0, 1.0), (sid, T0 + 1, 2.0)]) == 2
    assert await store.count_samples() == 2


async def test_duplicate_timestamp_keeps_the_newest_value_and_counts_once(
    store: MetricStore,
) -> None:
    (sid,) = await store.resolve_series([key()])
    await store.write([(sid, T0, 1.0), (sid, T0 + 10_000, 5.0)])
    # Rewritten across batches, and twice within one batch: the last value wins.
    await store.write([(sid, T0, 7.0), (sid, T0 + 20_000, 3.0), (sid, T0, 2.0)])
    assert [(p.ts, p.value) for p in await store.query(sid, T0, T0 + MIN)] == [
        (T0, 2.0),
        (T0 + 10_000, 5.0),
        (T0 + 20_000, 3.0),
    ]
    want = expected_buckets({T0: 2.0, T0 + 10_000: 5.0, T0 + 20_000: 3.0}, MIN)
    assert_buckets_equal(await stored_buckets(store, sid, "1m"), want)
    assert_buckets_equal(
        await stored_buckets(store, sid, "1h"),
        expected_buckets({T0: 2.0, T0 + 10_000: 5.0, T0 + 20_000: 3.0}, HOUR),
    )
    assert await store.count_samples() == 3


async def test_nan_and_infinite_values_are_skipped(store: MetricStore) -> None:
    (sid,) = await store.resolve_series([key()])
    rows = [(sid, T0, 1.0), (sid, T0 + 1, math.nan), (sid, T0 + 2, 3.0), (sid, T0 + 3, -math.inf)]
    assert await store.write(rows) == 2
    assert [p.value for p in await store.query(sid, T0, T0 + 10)] == [1.0, 3.0]
    (bucket,) = await store.query(sid, T0, T0 + 10, "1m")
    assert (bucket.count, bucket.sum) == (2, 4.0)


# -- rollups ---------------------------------------------------------------------------------


async def test_rollups_match_the_raw_data_across_out_of_order_batches(store: MetricStore) -> None:
    a, b = await store.resolve_series([key("a"), key("b")])
    rnd = random.Random(7)
    truth: dict[int, dict[int, float]] = {a: {}, b: {}}
    rows = []
    for sid in (a, b):
        for i in range(400):  # every 13 s over ~87 minutes: buckets straddle batches
            ts = T0 - 30 * MIN + i * 13_000
            value = round(rnd.uniform(-50, 50), 3)
            truth[sid][ts] = value
            rows.append((sid, ts, value))
    rnd.shuffle(rows)
    for start in range(0, len(rows), 97):
        await store.write(rows[start : start + 97])

    for sid in (a, b):
        assert_buckets_equal(
            await stored_buckets(store, sid, "1m"), expected_buckets(truth[sid], MIN)
        )
        assert_buckets_equal(
            await stored_buckets(store, sid, "1h"), expected_buckets(truth[sid], HOUR)
        )


async def test_concurrent_overlapping_writers_keep_rollups_exact(database: Database) -> None:
    # Two stores (two processes) write overlapping timestamps of one series at once.
    other_db = Database(database.url)
    first, second = create_store(database), create_store(other_db)
    try:
        (sid,) = await first.resolve_series([key()])
        rows_a = [(sid, T0 + i * 7000, 1.0 + i) for i in range(300)]
        rows_b = [(sid, T0 + i * 7000, -1.0 - i) for i in range(150, 450)]
        await asyncio.gather(
            *(first.write(rows_a[i : i + 50]) for i in range(0, 300, 50)),
            *(second.write(rows_b[i : i + 50]) for i in range(0, 300, 50)),
        )
        raw = {p.ts: p.value for p in await first.query(sid, 0, 2**62)}
        assert len(raw) == 450
        assert_buckets_equal(await stored_buckets(first, sid, "1m"), expected_buckets(raw, MIN))
        assert_buckets_equal(await stored_buckets(first, sid, "1h"), expected_buckets(raw, HOUR))
    finally:
        await first.close()
        await second.close()
        await other_db.dispose()


async def test_late_sample_does_not_replace_the_bucket_last_value(store: MetricStore) -> None:
    (sid,) = await store.resolve_series([key()])
    await store.write([(sid, T0 + 50_000, 5.0)])
    await store.write([(sid, T0 + 10_000, -1.0)])  # older, arrives later
    (bucket,) = await store.query(sid, T0, T0 + MIN, "1m")
    assert (bucket.count, bucket.sum, bucket.min, bucket.max, bucket.last) == (
        2,
        4.0,
        -1.0,
        5.0,
        5.0,
    )
    assert bucket.value == 2.0  # the average
    (hour,) = await store.query(sid, T0, T0 + HOUR, "1h")
    assert (hour.count, hour.last) == (2, 5.0)


async def test_rollup_query_includes_the_bucket_the_range_starts_in(store: MetricStore) -> None:
    (sid,) = await store.resolve_series([key()])
    await store.write([(sid, T0 + i * MIN + 30_000, float(i)) for i in range(5)])
    points = await store.query(sid, T0 + MIN + 45_000, T0 + 3 * MIN, "1m")
    assert [p.ts for p in points] == [T0 + MIN, T0 + 2 * MIN]
    assert [p.ts for p in await store.query(sid, T0 + HOUR - 1, T0 + HOUR, "1h")] == [T0]
    assert await store.query(sid, T0 + HOUR, T0 + 2 * HOUR, "1h") == []


# -- latest and staleness -------------------------------------------------------------------


async def test_latest_is_the_newest_raw_sample_per_series(store: MetricStore) -> None:
    a, b, empty = await store.resolve_series([key("a"), key("b"), key("empty")])
    await store.write([(a, T0 + 2000, 2.0), (a, T0 + 1000, 1.0), (b, T0, 9.0)])
    await store.write([(a, T0 + 500, 0.5)])  # older than what is there
    latest = await store.latest([a, b, empty, 424242])
    assert {sid: (p.ts, p.value) for sid, p in latest.items()} == {
        a: (T0 + 2000, 2.0),
        b: (T0, 9.0),
    }
    assert await store.latest([]) == {}


async def test_last_sample_ms_of_a_source(store: MetricStore) -> None:
    a1, a2, b1 = await store.resolve_series([key("x", "a"), key("y", "a"), key("x", "b")])
    await store.write([(a1, T0, 1.0), (a2, T0 + 5000, 1.0), (b1, T0 + 9000, 1.0)])
    assert await store.last_sample_ms("instance", "a") == T0 + 5000
    assert await store.last_sample_ms("instance", "b") == T0 + 9000
    assert await store.last_sample_ms("instance", "nobody") is None
    await store.resolve_series([key("z", "c")])
    assert await store.last_sample_ms("instance", "c") is None


# -- snapshots -------------------------------------------------------------------------------


async def test_snapshots_are_upserted_newest_first(database: Database, store: MetricStore) -> None:
    instance = await make_instance(database)
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert await store.latest_snapshot(instance) is None
    await store.write([], [SnapshotWrite(instance, "docker", when, {"containers": ["a"]})])
    await store.write(
        [],
        [
            SnapshotWrite(
                instance, "docker", when + timedelta(minutes=1), {"containers": ["a", "b"]}
            )
        ],
    )
    await store.write(
        [], [SnapshotWrite(instance, "docker", when - timedelta(minutes=5), {"containers": []})]
    )
    assert await store.latest_snapshot(instance) == (
        when + timedelta(minutes=1),
        {"containers": ["a", "b"]},
    )


async def test_snapshot_of_an_unknown_instance_does_not_fail_its_samples(
    database: Database, store: MetricStore
) -> None:
    (sid,) = await store.resolve_series([key()])
    gone = uuid.uuid4()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert await store.write([(sid, T0, 1.0)], [SnapshotWrite(gone, "docker", when, {"a": 1})]) == 1
    assert await store.latest_snapshot(gone) is None
    assert await store.count_samples() == 1


async def test_snapshot_values_json_cannot_hold_are_stored_as_text(
    database: Database, store: MetricStore
) -> None:
    instance = await make_instance(database)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    await store.write([], [SnapshotWrite(instance, "p", when, {"at": when, "id": instance})])
    stored = await store.latest_snapshot(instance)
    assert stored is not None
    assert stored[1] == {"at": "2026-01-01T00:00:00+00:00", "id": str(instance)}


# -- deletion and counting ------------------------------------------------------------------


async def test_delete_series_removes_samples_rollups_and_the_series(store: MetricStore) -> None:
    keep, drop = await store.resolve_series([key("keep"), key("drop")])
    await store.write([(keep, T0, 1.0), (drop, T0, 2.0), (drop, T0 + HOUR, 3.0)])
    generation = store.series_generation
    await store.delete_series([drop])
    assert store.series_generation > generation
    assert [s.name for s in await store.find_series()] == ["keep"]
    assert await store.query(drop, 0, 2**62) == []
    assert await store.query(drop, 0, 2**62, "1m") == []
    assert await store.query(drop, 0, 2**62, "1h") == []
    assert await store.count_samples() == 1
    assert len(await store.query(keep, 0, 2**62, "1h")) == 1
    # The same key makes a fresh, empty series again.
    (again,) = await store.resolve_series([key("drop")])
    assert await store.query(again, 0, 2**62) == []
    assert await store.count_series() == 2
    await store.delete_series([])


async def test_count_samples_counts_rows_not_writes(store: MetricStore) -> None:
    assert await store.count_samples() == 0
    a, b = await store.resolve_series([key("a"), key("b")])
    await store.write([(a, T0 + i, 1.0) for i in range(250)] + [(b, T0, 1.0)])
    await store.write([(a, T0, 5.0)])
    assert await store.count_samples() == 251


# -- backend specifics -----------------------------------------------------------------------


async def test_create_store_picks_the_backend(database: Database) -> None:
    store = create_store(database)
    try:
        assert isinstance(store, SqliteMetricStore) == database.is_sqlite
    finally:
        await store.close()


@pytest.mark.external_service
async def test_postgres_runs_without_timescaledb(postgres_url: str) -> None:
    db = Database(postgres_url)
    await upgrade(db)
    store = PostgresMetricStore(db)
    try:
        await store.setup()  # the extension is not installed here: a plain table it is
        assert store.timescale is False
        (sid,) = await store.resolve_series([key()])
        await store.write([(sid, T0, 1.0)])
        assert await store.count_samples() == 1
    finally:
        await store.close()
        await db.dispose()
