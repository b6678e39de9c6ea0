"""Resolution choice for a time range, and thinning points to a step."""

from __future__ import annotations

import pytest

from unity.metrics.query import downsample, pick_resolution
from unity.metrics.store import Point

HOUR = 3_600_000


@pytest.mark.parametrize(
    ("hours", "expected"),
    [(0.5, "raw"), (5, "raw"), (6, "1m"), (24, "1m"), (33, "1m"), (34, "1h"), (24 * 7, "1h")],
)
def test_resolution_follows_the_span(hours: float, expected: str) -> None:
    assert pick_resolution(0, int(hours * HOUR)) == expected


def test_resolution_takes_the_point_budget_and_raw_interval_into_account() -> None:
    assert pick_resolution(0, 24 * HOUR, max_points=100_000) == "raw"
    assert pick_resolution(0, 24 * HOUR, raw_interval_ms=60_000) == "raw"
    assert pick_resolution(0, 24 * HOUR, raw_interval_ms=30_000) == "1m"
    assert pick_resolution(0, 2 * HOUR, max_points=10) == "1h"
    assert pick_resolution(5, 5) == "raw"


def test_downsample_merges_raw_points_into_steps() -> None:
    raw = [Point(ts, v) for ts, v in [(0, 1.0), (10, 3.0), (59_999, 2.0), (60_000, 7.0)]]
    merged = downsample(raw, 60_000)
    assert merged == [
        Point(0, 2.0, count=3, sum=6.0, min=1.0, max=3.0, last=2.0),
        Point(60_000, 7.0, count=1, sum=7.0, min=7.0, max=7.0, last=7.0),
    ]


def test_downsample_weights_rollup_points_by_count() -> None:
    buckets = [
        Point(0, 2.0, count=2, sum=4.0, min=1.0, max=3.0, last=3.0),
        Point(60_000, 10.0, count=6, sum=60.0, min=0.0, max=20.0, last=5.0),
        Point(300_000, 1.0, count=1, sum=1.0, min=1.0, max=1.0, last=1.0),
    ]
    merged = downsample(buckets, 300_000)
    assert merged == [
        Point(0, 8.0, count=8, sum=64.0, min=0.0, max=20.0, last=5.0),
        Point(300_000, 1.0, count=1, sum=1.0, min=1.0, max=1.0, last=1.0),
    ]


def test_downsample_without_a_step_returns_the_points() -> None:
    points = [Point(0, 1.0), Point(5, 2.0)]
    assert downsample(points, 0) == points
    assert downsample([], 60_000) == []
