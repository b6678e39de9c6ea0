"""Pre-aggregation of a write batch into 1-minute and 1-hour rollup rows.

The store sorts a batch by ``(series_id, ts)``; a bucket is then a run of consecutive
rows, so one pass builds the 1-minute rows without a dictionary lookup per sample, and
the 1-hour rows are merged from the 1-minute ones (far fewer). The database then adds
each rollup row to what the bucket already holds (see the upsert statements).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: ``(series_id, ts_ms, value)``
Row = tuple[int, int, float]
#: ``(series_id, bucket_start_ms, count, sum, min, max, last, last_ts)``
RollupRow = tuple[int, int, int, float, float, float, float, int]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000


def prepare_batch(rows: Sequence[Row]) -> tuple[Sequence[Row], list[Row], list[RollupRow]]:
    """``rows`` without NaN or infinite values, the same sorted, and their 1-minute rollups.

    Such values have no place in a sum or an average (and SQLite would turn NaN into a
    NULL its NOT NULL columns refuse). A bad value makes its bucket's sum non-finite, so
    the check runs over the buckets, far fewer than the rows.
    """
    batch = sorted(rows)
    minutes = rollup_minutes(batch)
    if not all(math.isfinite(m[3]) for m in minutes):
        rows = [row for row in rows if math.isfinite(row[2])]
        batch = sorted(rows)
        minutes = rollup_minutes(batch)
    return rows, batch, minutes


def rollup_minutes(rows: Sequence[Row]) -> list[RollupRow]:
    """1-minute rollup rows of ``rows``, which must be sorted by (series_id, ts)."""
    out: list[RollupRow] = []
    if not rows:
        return out
    append = out.append
    it = iter(rows)
    series, last_ts, last = next(it)
    start = last_ts - last_ts % MINUTE_MS
    end = start + MINUTE_MS
    count, total, low, high = 1, last, last, last
    for sid, ts, value in it:
        if sid == series and ts < end:
            count += 1
            total += value
            if value < low:
                low = value
            elif value > high:
                high = value
        else:
            append((series, start, count, total, low, high, last, last_ts))
            series = sid
            start = ts - ts % MINUTE_MS
            end = start + MINUTE_MS
            count, total, low, high = 1, value, value, value
        last, last_ts = value, ts
    append((series, start, count, total, low, high, last, last_ts))
    return out


def rollup_hours(minutes: Sequence[RollupRow]) -> list[RollupRow]:
    """1-hour rollup rows merged from sorted 1-minute rows."""
    out: list[RollupRow] = []
    if not minutes:
        return out
    append = out.append
    it = iter(minutes)
    series, bucket, count, total, low, high, last, last_ts = next(it)
    start = bucket - bucket % HOUR_MS
    end = start + HOUR_MS
    for sid, b, n, s, lo, hi, lv, lts in it:
        if sid == series and b < end:
            count += n
            total += s
            if lo < low:
                low = lo
            if hi > high:
                high = hi
            if lts >= last_ts:
                last, last_ts = lv, lts
        else:
            append((series, start, count, total, low, high, last, last_ts))
            series = sid
            start = b - b % HOUR_MS
            end = start + HOUR_MS
            count, total, low, high, last, last_ts = n, s, lo, hi, lv, lts
    append((series, start, count, total, low, high, last, last_ts))
    return out
