"""The batch writer: the only writer of samples.

Producers (the collection pipeline, line-protocol ingest) ``submit`` samples and get a
future that resolves once those samples are committed. The writer flushes when the
oldest pending sample is ``flush_interval_s`` old or ``max_batch`` samples are pending,
whichever comes first, so the database sees few large transactions. Bigger backlogs are
written ``max_batch`` samples per transaction.

Nothing accepted is dropped because the database is away: a flush that fails with
:class:`~unity.errors.DatabaseError` keeps its samples and is retried with exponential
backoff; futures stay pending until their samples are committed. Any other error
means the batch itself cannot be written (say a timestamp beyond 64 bits): retrying
would block everything behind it, so the submissions in that batch fail with the error
and the writer moves on. A full buffer
(``max_pending`` samples) makes ``submit`` wait instead of growing without bound. The
writer logs once when writes start failing and once when they recover.

Timers run on the event loop's clock; the injected :class:`~unity.core.clock.Clock`
only dates samples for :attr:`BatchWriter.lag_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from unity.core.clock import Clock, SystemClock
from unity.errors import DatabaseError
from unity.metrics.store.abc import MetricStore, SeriesKey, SnapshotWrite


@dataclass(frozen=True, slots=True)
class PendingSample:
    """A sample waiting to be written: its series, time (ms since the epoch) and value."""

    key: SeriesKey
    ts_ms: int
    value: float


@dataclass(slots=True, eq=False)
class _Submission:
    samples: Sequence[PendingSample]
    snapshot: SnapshotWrite | None
    future: asyncio.Future[int]
    queued_at: float  # event-loop time, for the flush timer
    queued_mono: float  # injected clock, for lag_s
    written: int = 0  # samples committed so far (a prefix)
    settled: bool = False  # committed, rejected or given up
    flushers: list[asyncio.Future[None]] | None = None  # flush() calls waiting on it

    def settle(self) -> None:
        self.settled = True
        for waiter in self.flushers or ():
            if not waiter.done():
                waiter.set_result(None)


class WriterStopped(DatabaseError):
    """The writer is stopping or stopped (or was never started): nothing more is accepted.

    A :class:`DatabaseError` so that an API route submitting during shutdown answers 503.
    """


class BatchWriter:
    """Buffers samples and writes them to a :class:`MetricStore` in large transactions."""

    def __init__(
        self,
        store: MetricStore,
        *,
        flush_interval_s: float = 0.1,
        max_batch: int = 10_000,
        max_pending: int = 1_000_000,
        clock: Clock | None = None,
        retry_backoff_s: float = 0.5,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or flush_interval_s <= 0 or retry_backoff_s <= 0:
            raise ValueError(
                "max_batch, max_pending, flush_interval_s and retry_backoff_s must be > 0"
            )
        self._store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._clock = clock or SystemClock()
        self._backoff = retry_backoff_s
        self._max_backoff = retry_backoff_s * 16
        self._log = log or structlog.stdlib.get_logger("unity.metrics.writer")

        self._queue: deque[_Submission] = deque()
        self._pending = 0
        # Keyed on SeriesKey.identity (a plain tuple): one C-level lookup per sample.
        self._ids: dict[tuple[Any, ...], int] = {}
        self._generation = store.series_generation
        self._wakeup = asyncio.Event()  # something to do: data, flush request, stop
        self._nudge = asyncio.Event()  # cut one retry backoff short (stop)
        self._space = asyncio.Condition()  # backpressure: signalled after each commit
        self._flush_until: _Submission | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._failing_since: float | None = None
        self._attempts = 0
        self._stats: dict[str, Any] = {
            "flushes": 0,
            "samples_written": 0,
            "failures": 0,
            "rejected": 0,
            "last_flush_ms": 0.0,
        }

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flush loop (idempotent)."""
        if self._stopped or self._stopping:
            raise WriterStopped("a stopped batch writer cannot be restarted")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="unity-batch-writer")

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Write everything accepted so far, then stop.

        If the database stays unavailable for ``timeout_s``, the samples still pending
        are given up: their futures fail with :class:`DatabaseError` and it is logged.
        """
        if self._stopped:
            return
        self._stopping = True
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="unity-batch-writer")
        self._wakeup.set()
        self._nudge.set()
        async with self._space:
            self._space.notify_all()  # blocked submitters find the writer stopping
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._abandon()
        elif not self._task.cancelled() and (exc := self._task.exception()) is not None:
            self._abandon()
            self._stopped = True
            raise exc
        self._stopped = True

    def _abandon(self) -> None:
        lost = self._pending
        error = DatabaseError("the metric store stayed unavailable; samples were not written")
        while self._queue:
            sub = self._queue.popleft()
            _fail(sub.future, error)
            sub.settle()
        self._pending = 0
        if lost:
            self._log.error("batch writer stopped with unwritten samples", samples=lost)

    # -- producers -----------------------------------------------------------------------

    async def submit(
        self, samples: Sequence[PendingSample], snapshot: SnapshotWrite | None = None
    ) -> asyncio.Future[int]:
        """Queue samples (and the instance snapshot that goes with them).

        Returns a future resolved with ``len(samples)`` once they are committed. Waits
        while the buffer is full. Raises :class:`WriterStopped` once :meth:`stop` began.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        count = len(samples)
        if count == 0 and snapshot is None:
            future.set_result(0)
            return future
        if self._stopping:
            raise WriterStopped("the batch writer is stopping")
        if self._pending and self._pending + count > self._max_pending:
            async with self._space:
                await self._space.wait_for(
                    lambda: (
                        self._stopping
                        or not self._pending
                        or self._pending + count <= self._max_pending
                    )
                )
            if self._stopping:
                raise WriterStopped("the batch writer is stopping")
        self._queue.append(
            _Submission(samples, snapshot, future, loop.time(), self._clock.monotonic())
        )
        self._pending += count
        self._wakeup.set()
        return future

    async def flush(self) -> None:
        """Write everything submitted so far now, and wait until it is committed."""
        if not self._queue:
            return
        if self._task is None:
            raise WriterStopped("the batch writer was not started")
        # Submissions are written in order: once the newest is settled, all are.
        target = self._queue[-1]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if target.flushers is None:
            target.flushers = []
        target.flushers.append(done)
        self._flush_until = target
        self._wakeup.set()
        waits: set[asyncio.Future[Any]] = {done, self._task}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)

    # -- introspection -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Samples accepted and not yet committed."""
        return self._pending

    @property
    def lag_s(self) -> float:
        """Age of the oldest uncommitted sample in seconds (0 when nothing is pending)."""
        if not self._queue:
            return 0.0
        return max(self._clock.monotonic() - self._queue[0].queued_mono, 0.0)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: flushes, samples_written, failures, rejected, last_flush_ms, and state."""
        return {
            **self._stats,
            "pending": self._pending,
            "lag_s": self.lag_s,
            "failing": self._failing_since is not None,
        }

    # -- the loop ------------------------------------------------------------------------

    def _due(self) -> bool:
        if self._pending >= self._max_batch or self._stopping:
            return True
        target = self._flush_until
        return target is not None and not target.settled

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._due():
                delay = self._queue[0].queued_at + self._interval - loop.time()
                if delay > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                    continue
            if not await self._flush_once():
                await self._wait_before_retry()

    async def _wait_before_retry(self) -> None:
        delay = min(self._backoff * 2 ** (self._attempts - 1), self._max_backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nudge.wait(), delay)
        self._nudge.clear()

    def _plan(self) -> list[tuple[_Submission, int, int]]:
        plan: list[tuple[_Submission, int, int]] = []
        budget = self._max_batch
        for sub in self._queue:
            end = min(len(sub.samples), sub.written + budget)
            plan.append((sub, sub.written, end))
            budget -= end - sub.written
            if budget <= 0:
                break
        return plan

    async def _rows(self, plan: list[tuple[_Submission, int, int]]) -> list[tuple[int, int, float]]:
        if self._store.series_generation != self._generation:
            self._ids.clear()  # series were deleted: cached ids may be gone
            self._generation = self._store.series_generation
        ids = self._ids
        rows: list[tuple[int, int, float]] = []
        for sub, start, end in plan:
            part = sub.samples if start == 0 and end == len(sub.samples) else sub.samples[start:end]
            try:
                rows += [(ids[s.key.identity], s.ts_ms, s.value) for s in part]
            except KeyError:
                missing = list({s.key: None for s in part if s.key.identity not in ids})
                resolved = await self._store.resolve_series(missing)
                ids.update((key.identity, i) for key, i in zip(missing, resolved, strict=True))
                rows += [(ids[s.key.identity], s.ts_ms, s.value) for s in part]
        return rows

    async def _flush_once(self) -> bool:
        """Write one batch; False when the database is unavailable (retry later)."""
        plan = self._plan()
        snapshots = [
            sub.snapshot
            for sub, _, end in plan
            if sub.snapshot is not None and end == len(sub.samples)
        ]
        started = asyncio.get_running_loop().time()
        try:
            rows = await self._rows(plan)
            await self._store.write(rows, snapshots)
        except DatabaseError as exc:
            self._stats["failures"] += 1
            self._attempts += 1
            if self._failing_since is None:
                self._failing_since = started
                self._log.warning(
                    "metric writes failing; keeping samples and retrying",
                    error=exc.detail,
                    pending=self._pending,
                )
            return False
        except Exception as exc:
            # Not an outage: this batch itself is unwritable. Retrying would block all
            # data behind it, so its submissions fail (their callers see why).
            self._log.exception("metric batch rejected", samples=sum(e - s for _, s, e in plan))
            self._reject(plan, exc)
            await self._signal_space()
            return True
        self._committed(plan, started)
        await self._signal_space()
        return True

    def _committed(self, plan: list[tuple[_Submission, int, int]], started: float) -> None:
        written = 0
        for sub, start, end in plan:
            sub.written = end
            written += end - start
            if end == len(sub.samples):
                self._queue.popleft()  # plans start at the head and go in order
                if not sub.future.done():  # a caller may have cancelled its future
                    sub.future.set_result(len(sub.samples))
                sub.settle()
        self._pending -= written
        elapsed_ms = (asyncio.get_running_loop().time() - started) * 1000
        self._stats["flushes"] += 1
        self._stats["samples_written"] += written
        self._stats["last_flush_ms"] = round(elapsed_ms, 3)
        if self._failing_since is not None:
            down_s = asyncio.get_running_loop().time() - self._failing_since
            self._log.info(
                "metric writes recovered", failed_attempts=self._attempts, down_s=round(down_s, 3)
            )
            self._failing_since = None
        self._attempts = 0

    def _reject(self, plan: list[tuple[_Submission, int, int]], exc: Exception) -> None:
        for sub, _, _ in plan:
            self._queue.popleft()
            self._pending -= len(sub.samples) - sub.written
            self._stats["rejected"] += len(sub.samples) - sub.written
            _fail(sub.future, exc)
            sub.settle()

    async def _signal_space(self) -> None:
        async with self._space:
            self._space.notify_all()


def _fail(future: asyncio.Future[int], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # logged here already: no "never retrieved" noise if unawaited
