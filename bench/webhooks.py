"""Webhooks: signed deliveries per second from the outbox to a local receiver.

For 1, 10 and 100 endpoints (all subscribed to everything), events are published on the
bus; the dispatcher writes the outbox rows (SQLite), delivers them lane by lane (one
request at a time per endpoint, endpoints concurrently), and records every attempt. The
figure is deliveries recorded as successful per second, from the first publish to the
last recorded success: the median of ``--repeat`` runs (3 by default, 1 with ``--quick``),
with their range, since the machine may be shared. ``cpu_us_per_delivery`` is the bench
process's CPU time (all its threads) per delivery over the same span, steadier than the
rate when other work competes for the cores. The receiver is a bare asyncio HTTP server in
its own process.

The process runs on uvloop, as ``unity serve`` does (uvicorn picks uvloop when it is
installed, and Unity depends on ``uvicorn[standard]``).

The reference measured alongside (``bare_per_s``) is the same number of signed POSTs to the
same receiver through the same :class:`Sender` (aiohttp, same connection limit), one
sequential loop per endpoint, with no database: the ratio says what the outbox, the leases
and the attempt log cost on top of the HTTP requests themselves. The issue's target is
absolute (``deliveries_per_s_at_10`` >= 1,000 on this machine), so the JSON reports both.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench._common import console, emit, median, migrated, parser, remove_sqlite, settle
from bench._servers import ServerProcess, free_port, python_module
from unity.components import build_webhooks
from unity.config import Settings
from unity.core.clock import SystemClock
from unity.core.events import MemoryEventBus
from unity.webhooks.schemas import WebhookCreate
from unity.webhooks.sender import Sender
from unity.webhooks.service import body_of, new_message_id
from unity.webhooks.signing import generate_secret, secret_key
from unity.webhooks.urls import UrlPolicy

TARGETS = {"deliveries_per_s_at_10": 1000}
ENDPOINTS = (1, 10, 100)


def _payload(i: int) -> dict[str, Any]:
    return {
        "key_id": f"00000000-0000-0000-0000-{i:012d}",
        "name": f"bench-{i}",
        "prefix": "unity_ab",
        "tenant_id": "default",
        "scopes": ["metrics:read"],
    }


@dataclass
class _Span:
    seconds: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def _measured() -> Iterator[_Span]:
    """Wall-clock and process CPU time (every thread) spent in the block."""
    span = _Span()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield span
    finally:
        span.seconds = time.perf_counter() - wall
        span.cpu_s = time.process_time() - cpu


async def _unity_run(workdir: Path, url: str, endpoints: int, events: int) -> _Span:
    path = workdir / "webhooks.db"
    remove_sqlite(path)
    database = await migrated(path)
    settings = Settings(data_dir=workdir, webhook_concurrency=max(64, endpoints))
    bus = MemoryEventBus()
    service, dispatcher = build_webhooks(settings, database, bus, SystemClock())
    try:
        for i in range(endpoints):
            await service.create(
                "default", WebhookCreate(name=f"e{i}", url=f"{url}/e{i}", events=["*"])
            )
        await dispatcher.start()
        expected = endpoints * events
        settle()
        with _measured() as span:
            for i in range(events):
                await bus.publish("api_key.created", _payload(i), tenant_id="default")
                if i % 50 == 0:
                    await asyncio.sleep(0)
            while dispatcher.recorded < expected:  # noqa: ASYNC110 - polls a counter, cheap
                await asyncio.sleep(0.005)
        stats = [
            await service.stats(w.id, "default")
            for w in (await service.list_webhooks("default", skip=0, limit=100))[0]
        ]
        succeeded = sum(s.by_status["success"] for s in stats)
        if succeeded != expected:
            raise RuntimeError(f"{succeeded} deliveries succeeded, expected {expected}")
        return span
    finally:
        await dispatcher.stop()
        await database.dispose()


async def _bare_run(url: str, endpoints: int, events: int) -> _Span:
    """The same signed POSTs, one sequential loop per endpoint, no database."""
    keys = (secret_key(generate_secret()),)
    body = body_of("api_key.created", SystemClock().now(), _payload(0)).encode()
    sender = Sender(
        clock=SystemClock(),
        policy=UrlPolicy(),
        timeout_s=15.0,
        max_connections=max(64, endpoints),
    )
    semaphore = asyncio.Semaphore(max(64, endpoints))

    async def lane(index: int) -> None:
        async with semaphore:
            for _ in range(events):
                result = await sender.send(f"{url}/e{index}", keys, new_message_id(), body)
                if not result.success:
                    raise RuntimeError(f"bare delivery failed: {result.error}")

    try:
        with _measured() as span:
            await asyncio.gather(*(lane(i) for i in range(endpoints)))
        return span
    finally:
        await sender.aclose()


def _summary(count: int, spans: list[_Span]) -> dict[str, Any]:
    rates = [count / s.seconds for s in spans]
    return {
        "per_s": round(median(rates), 1),
        "range": [round(min(rates), 1), round(max(rates), 1)],
        "cpu_us": round(median([s.cpu_s / count * 1e6 for s in spans]), 1),
    }


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--deliveries", type=int, default=6000, help="deliveries per endpoint count (total)"
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per size (default 3; quick 1)")
    args = p.parse_args()
    total = 600 if args.quick else args.deliveries
    repeat = args.repeat or (1 if args.quick else 3)
    port = free_port()
    sizes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unity-bench-webhooks-") as tmp:
        workdir = Path(tmp)
        receiver = ServerProcess(
            "webhook-receiver",
            python_module("bench._webhook_receiver", "--port", str(port)),
            port=port,
            log_dir=workdir,
        )
        with receiver:
            url = f"http://127.0.0.1:{port}"
            for endpoints in ENDPOINTS:
                events = max(1, total // endpoints)
                count = endpoints * events
                console.print(f"{endpoints} endpoints x {events} events, {repeat} runs")
                unity_spans: list[_Span] = []
                bare_spans: list[_Span] = []
                for _ in range(repeat):  # interleaved, so both see the same background load
                    unity_spans.append(await _unity_run(workdir, url, endpoints, events))
                    bare_spans.append(await _bare_run(url, endpoints, events))
                unity, bare = _summary(count, unity_spans), _summary(count, bare_spans)
                sizes.append(
                    {
                        "endpoints": endpoints,
                        "deliveries": count,
                        "deliveries_per_s": unity["per_s"],
                        "deliveries_per_s_range": unity["range"],
                        "cpu_us_per_delivery": unity["cpu_us"],
                        "bare_per_s": bare["per_s"],
                        "bare_per_s_range": bare["range"],
                        "bare_cpu_us_per_request": bare["cpu_us"],
                        "ratio": round(unity["per_s"] / bare["per_s"], 3),
                    }
                )
    at_10 = next(s for s in sizes if s["endpoints"] == 10)["deliveries_per_s"]
    emit(
        {
            "scenario": "webhooks",
            "sizes": sizes,
            "deliveries_per_s_at_10": at_10,
            "target_ratio": round(at_10 / TARGETS["deliveries_per_s_at_10"], 3),
            "bare": "the same signed POSTs through the same Sender (aiohttp), one loop per "
            "endpoint, no database",
            "event_loop": "uvloop",
            "runs_per_size": repeat,
            "cores": os.cpu_count(),
            "targets": TARGETS,
            "met": {"deliveries_per_s_at_10": at_10 >= TARGETS["deliveries_per_s_at_10"]},
            "quick": args.quick,
        }
    )


if __name__ == "__main__":
    uvloop.run(main())
