"""Time source. Code asks a ``Clock`` for the time so tests can move it without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall time (UTC) and a monotonic counter for durations."""

    def now(self) -> datetime:
        """The current UTC time, timezone-aware."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch (how samples store time)."""
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Inverse of :func:`to_ms`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
