"""Choosing a resolution for a time range, and thinning points to a step.

The rule: take the finest table whose points over the range fit in ``max_points``,
assuming raw samples every ``raw_interval_ms`` (10 s, a typical collection interval).
With the defaults that is raw up to about 5.5 hours, 1-minute rollups up to about
33 hours (a 24-hour chart is 1,440 points), and 1-hour rollups beyond. A chart never
needs more points than it has pixels; fewer, coarser points also keep responses small.
"""

from __future__ import annotations

from collections.abc import Sequence

from unity.metrics.store.abc import BUCKET_MS, Point, Resolution

#: Assumed spacing of raw samples when sizing a raw read.
RAW_INTERVAL_MS = 10_000


def pick_resolution(
    start_ms: int,
    end_ms: int,
    max_points: int = 2000,
    *,
    raw_interval_ms: int = RAW_INTERVAL_MS,
) -> Resolution:
    """The finest resolution whose expected point count over the range is ``<= max_points``."""
    span = max(end_ms - start_ms, 0)
    if span <= max_points * raw_interval_ms:
        return "raw"
    if span <= max_points * BUCKET_MS["1m"]:
        return "1m"
    return "1h"


def downsample(points: Sequence[Point], step_ms: int) -> list[Point]:
    """Merge points into buckets of ``step_ms`` (aligned to the epoch), oldest first.

    A merged point's ``value`` is the average of the samples it covers (weighted by
    ``count`` for rollup points), with ``count``, ``sum``, ``min``, ``max`` and ``last``
    combined. ``step_ms <= 0`` returns the points unchanged.
    """
    if step_ms <= 0 or not points:
        return list(points)
    out: list[Point] = []
    bucket: int | None = None
    count = 0
    total = low = high = last = 0.0
    for point in points:
        start = point.ts - point.ts % step_ms
        n = point.count
        s = point.sum if point.sum is not None else point.value * n
        lo = point.min if point.min is not None else point.value
        hi = point.max if point.max is not None else point.value
        lv = point.last if point.last is not None else point.value
        if start != bucket:
            if bucket is not None:
                out.append(Point(bucket, total / count, count, total, low, high, last))
            bucket, count, total, low, high = start, n, s, lo, hi
        else:
            count += n
            total += s
            low = min(low, lo)
            high = max(high, hi)
        last = lv
    assert bucket is not None
    out.append(Point(bucket, total / count, count, total, low, high, last))
    return out
