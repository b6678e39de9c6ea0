"""The health state machine of a plugin instance, as pure functions.

    unknown ──success──▶ healthy ◀──────── success (from any state)
       │                   │
       └──── 2 consecutive errors ──▶ degraded ── 5 consecutive errors ──▶ failing
    healthy/unknown ── no samples for 3 intervals ──▶ stale

Errors below the degraded threshold keep the current state: one failed check out of
many successes is not news. ``stale`` only replaces ``healthy`` or ``unknown``: when the
instance is erroring, ``degraded``/``failing`` already say more than "no data".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Health(StrEnum):
    """Health of a plugin instance."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds of the state machine (settings ``degraded_after_errors`` and friends)."""

    degraded_after: int = 2
    failing_after: int = 5
    stale_after_intervals: int = 3

    def after_success(self, current: Health, *, produced_samples: bool) -> Health:
        """State after a successful execution.

        A success that produced no samples does not end staleness: data is what is missing.
        """
        if not produced_samples and current is Health.STALE:
            return Health.STALE
        return Health.HEALTHY

    def after_failure(self, current: Health, consecutive_errors: int) -> Health:
        """State after a failed execution, given the error streak including this one."""
        if consecutive_errors >= self.failing_after:
            return Health.FAILING
        if consecutive_errors >= self.degraded_after:
            return Health.DEGRADED
        return current

    def is_stale(
        self, current: Health, *, last_data: datetime, interval_s: float, now: datetime
    ) -> bool:
        """Whether an instance whose newest data is from ``last_data`` is now stale."""
        if current not in (Health.HEALTHY, Health.UNKNOWN):
            return False
        return now - last_data > timedelta(seconds=interval_s * self.stale_after_intervals)


#: Worst first: the health shown for a plugin is that of its worst enabled instance.
SEVERITY = (Health.FAILING, Health.DEGRADED, Health.STALE, Health.UNKNOWN, Health.HEALTHY)


def worst(healths: Iterable[Health]) -> Health | None:
    """The most severe of ``healths`` (``None`` for none)."""
    present = set(healths)
    return next((level for level in SEVERITY if level in present), None)
