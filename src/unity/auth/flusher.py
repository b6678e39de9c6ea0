"""A background task that writes batched bookkeeping (key usage, the audit log) periodically."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from unity.errors import DatabaseError

log = structlog.stdlib.get_logger("unity.auth")


class Flusher:
    """Runs ``flush`` every ``interval_s`` seconds while started, and once more on stop.

    A flush that raises :class:`DatabaseError` is retried at the next tick; the failure is
    logged once when it starts and once when writes recover, not at every tick.
    """

    def __init__(self, name: str, interval_s: float, flush: Callable[[], Awaitable[None]]):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.name = name
        self._interval = interval_s
        self._flush = flush
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        """Start the loop (idempotent)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop the loop, then flush one last time (failures are logged, not raised)."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        await self._once()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
            if not self._stopping.is_set():
                await self._once()

    async def _once(self) -> None:
        try:
            await self._flush()
        except DatabaseError as exc:
            if not self._failing:
                log.warning("batched write failed; will retry", task=self.name, error=exc.detail)
            self._failing = True
        else:
            if self._failing:
                log.info("batched writes recovered", task=self.name)
            self._failing = False
