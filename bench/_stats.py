"""Order statistics of timings, without the heavier imports of ``bench._common``.

The load generator runs in a process of its own, started once per measurement, and
keeps its start-up short by importing only what it uses.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
