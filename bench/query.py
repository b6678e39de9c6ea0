"""Query: one series' last 24 hours, raw and at 1-minute resolution, from 10 million samples.

The data set (default 1,000 series x 10,000 samples at a 10-second interval, about 27.8
hours per series) is written straight into Unity's schema with sqlite3, rollups
included, and cached under ``bench/.cache/`` keyed by the schema revision, so later runs
start timing at once. Queries go through ``SqliteMetricStore.query`` (pool connection,
driver, Point objects), each for a random series; p50 and p99 over ``--runs`` runs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench._common import (
    CACHE_DIR,
    bare_connection,
    console,
    emit,
    median,
    migrated,
    parser,
    percentile,
    progress,
    remove_sqlite,
    run,
    settle,
    unity_pragmas,
)
from unity.core.db import Database
from unity.core.migrations import head_revision
from unity.metrics.store import SeriesKey, SqliteMetricStore
from unity.metrics.store.abc import Resolution
from unity.metrics.store.rollups import rollup_hours, rollup_minutes

TARGETS = {"m1_24h_p50_ms": 5}
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
#: Bump when the generated data changes; the schema revision is part of the key too.
DATA_VERSION = 1


def _key(index: int) -> SeriesKey:
    return SeriesKey.of(
        f"bench_metric_{index % 10}",
        source_kind="instance",
        source_id=f"bench-instance-{index // 10}",
        plugin_id="bench",
        unit="ms",
    )


async def _build(path: Path, series: int, samples: int, interval_ms: int, seed: int) -> None:
    """Write the data set to ``path`` (through a temporary file, so a crash leaves none)."""
    partial = path.with_suffix(".partial")
    remove_sqlite(partial)
    database = await migrated(partial)
    try:
        store = SqliteMetricStore(database)
        ids = await store.resolve_series([_key(i) for i in range(series)])
        await store.close()
        pragmas = await unity_pragmas(database)
    finally:
        await database.dispose()
    rnd = random.Random(seed)
    conn = bare_connection(partial, pragmas)
    try:
        with progress() as bar:
            task = bar.add_task("building the data set", total=series)
            for series_id in ids:
                level = rnd.uniform(10, 90)
                rows = [
                    (series_id, START_MS + i * interval_ms, level + rnd.random() * 10)
                    for i in range(samples)
                ]
                minutes = rollup_minutes(rows)  # rows are sorted: one series, rising ts
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO samples VALUES (?, ?, ?)", rows)
                conn.executemany("INSERT INTO samples_1m VALUES (?, ?, ?, ?, ?, ?, ?, ?)", minutes)
                conn.executemany(
                    "INSERT INTO samples_1h VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rollup_hours(minutes),
                )
                conn.execute("COMMIT")
                bar.advance(task)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    remove_sqlite(path)
    partial.rename(path)
    remove_sqlite(partial)


async def _time_queries(
    store: SqliteMetricStore,
    ids: list[int],
    start: int,
    end: int,
    resolution: Resolution,
    runs: int,
    rnd: random.Random,
) -> tuple[list[float], int]:
    for series_id in ids[:5]:  # warm the page cache and the connection pool
        await store.query(series_id, start, end, resolution)
    timings: list[float] = []
    points = 0
    for _ in range(runs):
        series_id = rnd.choice(ids)
        began = time.perf_counter()
        result = await store.query(series_id, start, end, resolution)
        timings.append((time.perf_counter() - began) * 1000)
        points = len(result)
    return timings, points


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--samples", type=int, default=10_000, help="samples per series")
    p.add_argument("--interval-s", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--rebuild", action="store_true", help="ignore the cached data set")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where data sets are kept")
    args = p.parse_args()
    if args.quick:
        args.series, args.samples, args.runs = 50, 9_000, 50

    interval_ms = int(args.interval_s * 1000)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    name = (
        f"query-r{head_revision()}-d{DATA_VERSION}-{args.series}x{args.samples}"
        f"-{interval_ms}ms-s{args.seed}.db"
    )
    path = args.cache_dir / name
    built = False
    if args.rebuild or not path.exists():
        console.log(f"building {args.series * args.samples:,} samples into {path}")
        began = time.perf_counter()
        await _build(path, args.series, args.samples, interval_ms, args.seed)
        built = True
        console.log(f"built in {time.perf_counter() - began:.1f}s")
    else:
        console.log(f"using cached {path}")

    database = Database(f"sqlite+aiosqlite:///{path}")
    store = SqliteMetricStore(database)
    try:
        ids = [s.id for s in await store.find_series(limit=args.series)]
        settle()
        end = START_MS + args.samples * interval_ms
        start = end - DAY_MS
        rnd = random.Random(args.seed)
        raw, raw_points = await _time_queries(store, ids, start, end, "raw", args.runs, rnd)
        m1, m1_points = await _time_queries(store, ids, start, end, "1m", args.runs, rnd)
        began = time.perf_counter()
        total = await store.count_samples()
        count_ms = (time.perf_counter() - began) * 1000
    finally:
        await store.close()
        await database.dispose()

    result: dict[str, Any] = {
        "scenario": "query",
        "samples": total,
        "series": len(ids),
        "runs": args.runs,
        "raw_24h_points": raw_points,
        "raw_24h_p50_ms": round(median(raw), 3),
        "raw_24h_p99_ms": round(percentile(raw, 99), 3),
        "m1_24h_points": m1_points,
        "m1_24h_p50_ms": round(median(m1), 3),
        "m1_24h_p99_ms": round(percentile(m1, 99), 3),
        "count_samples_ms": round(count_ms, 3),
        "cached_data_set": not built,
        "targets": TARGETS,
    }
    result["met"] = {"m1_24h_p50_ms": result["m1_24h_p50_ms"] <= TARGETS["m1_24h_p50_ms"]}
    emit(result)


if __name__ == "__main__":
    run(main)
