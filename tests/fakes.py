"""Test doubles for time only; every database and server in the suite is real."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A clock the test moves by hand; ``monotonic`` follows it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


class WallClockFrom:
    """Real elapsed time, shifted: lets a test stand at a given date while APScheduler runs in real time."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s
