"""Ingest: samples through the BatchWriter into SQLite, against bare sqlite3.executemany.

N series x M samples (default 1,000 x 200 at a 10-second interval) are submitted one
collection tick at a time (N samples per submit) and awaited until committed. The
limit is the same rows, in the same order, inserted into the same schema with the same
connection settings by ``sqlite3.executemany`` alone, in transactions of the same size
as the writer's batches; it maintains no rollups and resolves no series. The writer's
run includes the rollup upserts. Series are created before timing (steady state).

Each side runs ``--repeats`` times, alternating, and the best run of each is kept.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from bench._common import (
    bare_connection,
    console,
    emit,
    migrated,
    parser,
    progress,
    remove_sqlite,
    run,
    settle,
    stopwatch,
    unity_pragmas,
)
from unity.metrics.store import SeriesKey, SqliteMetricStore
from unity.metrics.writer import BatchWriter, PendingSample

TARGETS = {"ratio": 0.7, "samples_per_s": 100_000}
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _key(index: int) -> SeriesKey:
    # 10 metrics per instance, like a plugin instance reporting several values.
    return SeriesKey.of(
        f"bench_metric_{index % 10}",
        source_kind="instance",
        source_id=f"bench-instance-{index // 10}",
        plugin_id="bench",
        labels={"slot": str(index % 4)},
        unit="ms",
    )


def _ticks(series: int, samples: int, interval_ms: int, seed: int) -> list[list[PendingSample]]:
    """One list per collection tick; keys are rebuilt per sample as the pipeline does."""
    rnd = random.Random(seed)
    return [
        [
            PendingSample(_key(i), START_MS + t * interval_ms, rnd.random() * 100)
            for i in range(series)
        ]
        for t in range(samples)
    ]


async def _writer_run(
    path: Path, ticks: list[list[PendingSample]], batch: int
) -> tuple[float, list[int], dict[str, Any]]:
    remove_sqlite(path)
    database = await migrated(path)
    store = SqliteMetricStore(database)
    writer = BatchWriter(store, max_batch=batch, flush_interval_s=0.1)
    try:
        ids = await store.resolve_series([s.key for s in ticks[0]])
        await writer.start()
        with stopwatch() as elapsed:
            futures = [await writer.submit(tick) for tick in ticks]
            await asyncio.gather(*futures)
        stats = writer.stats
        await writer.stop()
        stored = await store.count_samples()
        expected = sum(len(t) for t in ticks)
        if stored != expected:
            raise RuntimeError(f"writer stored {stored} samples, expected {expected}")
        return elapsed[0], ids, stats
    finally:
        await store.close()
        await database.dispose()


async def _baseline_run(
    path: Path, rows: list[tuple[int, int, float]], batch: int | None, pragmas: dict[str, Any]
) -> float:
    remove_sqlite(path)
    database = await migrated(path)
    await database.dispose()
    conn = bare_connection(path, pragmas)
    try:
        size = batch or len(rows)
        with stopwatch() as elapsed:
            for start in range(0, len(rows), size):
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO samples (series_id, ts, value) VALUES (?, ?, ?)",
                    rows[start : start + size],
                )
                conn.execute("COMMIT")
        (stored,) = conn.execute("SELECT count(*) FROM samples").fetchone()
        if stored != len(rows):
            raise RuntimeError(f"baseline stored {stored} samples, expected {len(rows)}")
        return elapsed[0]
    finally:
        conn.close()


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--samples", type=int, default=200, help="samples per series")
    p.add_argument("--interval-s", type=float, default=10.0, help="time between samples")
    p.add_argument("--batch", type=int, default=10_000, help="writer max_batch")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.series, args.samples, args.repeats = 200, 100, 1

    total = args.series * args.samples
    console.log(f"ingest: {args.series} series x {args.samples} samples = {total:,}")
    ticks = _ticks(args.series, args.samples, int(args.interval_s * 1000), args.seed)
    settle()
    writer_times: list[float] = []
    limit_times: list[float] = []
    single_tx_times: list[float] = []
    no_checkpoint_times: list[float] = []
    stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="unity-bench-") as tmp:
        folder = Path(tmp)
        probe = await migrated(folder / "probe.db")
        pragmas = await unity_pragmas(probe)
        await probe.dispose()
        with progress() as bar:
            task = bar.add_task("writer vs executemany", total=args.repeats * 4)
            rows: list[tuple[int, int, float]] = []
            for _ in range(args.repeats):
                elapsed, ids, stats = await _writer_run(folder / "writer.db", ticks, args.batch)
                writer_times.append(elapsed)
                bar.advance(task)
                if not rows:
                    rows = [(ids[i], s.ts_ms, s.value) for t in ticks for i, s in enumerate(t)]
                limit_times.append(
                    await _baseline_run(folder / "limit.db", rows, args.batch, pragmas)
                )
                bar.advance(task)
                single_tx_times.append(
                    await _baseline_run(folder / "limit1.db", rows, None, pragmas)
                )
                bar.advance(task)
                no_checkpoint_times.append(
                    await _baseline_run(
                        folder / "limit0.db", rows, args.batch, {**pragmas, "wal_autocheckpoint": 0}
                    )
                )
                bar.advance(task)

    rate = total / min(writer_times)
    limit = total / min(limit_times)
    ratio = rate / limit
    emit(
        {
            "scenario": "ingest",
            "series": args.series,
            "samples": total,
            "batch": args.batch,
            "samples_per_s": round(rate),
            "limit_samples_per_s": round(limit),
            "ratio": round(ratio, 3),
            "limit": (
                f"sqlite3.executemany of the same rows, {args.batch} per transaction, "
                "same schema and connection pragmas, no rollups"
            ),
            "limit_single_tx_samples_per_s": round(total / min(single_tx_times)),
            # The store's writer connection checkpoints the WAL beside the writer instead
            # of inside its commits; this limit never checkpoints at all.
            "limit_no_checkpoint_samples_per_s": round(total / min(no_checkpoint_times)),
            "ratio_no_checkpoint": round(rate / (total / min(no_checkpoint_times)), 3),
            "writer_flushes": stats.get("flushes"),
            "repeats": args.repeats,
            "pragmas": pragmas,
            "targets": TARGETS,
            "met": {
                "ratio": ratio >= TARGETS["ratio"],
                "samples_per_s": rate >= TARGETS["samples_per_s"],
            },
        }
    )


if __name__ == "__main__":
    run(main)
