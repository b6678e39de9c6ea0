"""Webhooks: signed deliveries per second from the outbox to a local receiver.

For 1, 10 and 100 endpoints (all subscribed to everything), events are published on the
bus; the dispatcher writes the outbox rows (SQLite), delivers them lane by lane (one
request at a time per endpoint, endpoints concurrently), and records every attempt. The
figure is deliveries recorded as successful per second, from the first publish to the
last recorded success. The receiver is a bare asyncio HTTP server in its own process.

The limit measured alongside is the same number of signed POSTs to the same receiver by
a bare httpx loop per endpoint (same concurrency, same client settings), with no
database: what is left is the cost of the outbox, the leases and the attempt log.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from bench._common import console, emit, migrated, parser, remove_sqlite, run, settle, stopwatch
from bench._servers import ServerProcess, free_port, python_module
from unity.components import build_webhooks
from unity.config import Settings
from unity.core.clock import SystemClock
from unity.core.events import MemoryEventBus
from unity.webhooks.schemas import WebhookCreate
from unity.webhooks.sender import Sender, new_client
from unity.webhooks.service import body_of, new_message_id
from unity.webhooks.signing import generate_secret

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


async def _unity_run(workdir: Path, url: str, endpoints: int, events: int) -> tuple[float, int]:
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
        with stopwatch() as elapsed:
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
        return elapsed[0], succeeded
    finally:
        await dispatcher.stop()
        await database.dispose()


async def _bare_run(url: str, endpoints: int, events: int) -> float:
    """The same signed POSTs, one sequential loop per endpoint, no database."""
    secrets = [generate_secret()]
    body = body_of("api_key.created", SystemClock().now(), _payload(0)).encode()
    sender = Sender(new_client(15.0, max(64, endpoints)), clock=SystemClock(), timeout_s=15.0)
    semaphore = asyncio.Semaphore(max(64, endpoints))

    async def lane(index: int) -> None:
        async with semaphore:
            for _ in range(events):
                result = await sender.send(f"{url}/e{index}", secrets, new_message_id(), body)
                if not result.success:
                    raise RuntimeError(f"bare delivery failed: {result.error}")

    try:
        with stopwatch() as elapsed:
            await asyncio.gather(*(lane(i) for i in range(endpoints)))
        return elapsed[0]
    finally:
        await sender.aclose()


async def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--deliveries", type=int, default=6000, help="deliveries per endpoint count (total)"
    )
    args = p.parse_args()
    total = 600 if args.quick else args.deliveries
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
                console.print(f"{endpoints} endpoints x {events} events")
                seconds, delivered = await _unity_run(workdir, url, endpoints, events)
                bare = await _bare_run(url, endpoints, events)
                rate = delivered / seconds
                bare_rate = endpoints * events / bare
                sizes.append(
                    {
                        "endpoints": endpoints,
                        "deliveries": delivered,
                        "deliveries_per_s": round(rate, 1),
                        "bare_per_s": round(bare_rate, 1),
                        "ratio": round(rate / bare_rate, 3),
                    }
                )
    at_10 = next(s for s in sizes if s["endpoints"] == 10)["deliveries_per_s"]
    emit(
        {
            "scenario": "webhooks",
            "sizes": sizes,
            "deliveries_per_s_at_10": at_10,
            "cores": os.cpu_count(),
            "targets": TARGETS,
            "met": {"deliveries_per_s_at_10": at_10 >= TARGETS["deliveries_per_s_at_10"]},
            "quick": args.quick,
        }
    )


if __name__ == "__main__":
    run(main)
