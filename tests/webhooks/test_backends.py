"""The outbox and dispatcher on SQLite and PostgreSQL, including two processes sharing one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.webhooks.conftest import Receiver, Reply, key_event, wait_until
from unity.components import build_webhooks
from unity.config import Settings
from unity.core.clock import SystemClock
from unity.core.db import Database
from unity.core.events import MemoryEventBus
from unity.webhooks.dispatcher import WebhookDispatcher
from unity.webhooks.schemas import WebhookCreate
from unity.webhooks.service import OutboxEvent, WebhookService


@asynccontextmanager
async def dispatching(
    database: Database, data_dir: Path, bus: MemoryEventBus | None = None, **settings: Any
) -> AsyncIterator[tuple[WebhookService, WebhookDispatcher, MemoryEventBus]]:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "webhook_retry_schedule_s": [0] + [0.05] * 20,
        "webhook_poll_interval_s": 0.05,
        **settings,
    }
    bus = bus or MemoryEventBus()
    service, dispatcher = build_webhooks(Settings(**values), database, bus, SystemClock())
    await dispatcher.start()
    try:
        yield service, dispatcher, bus
    finally:
        await dispatcher.stop()


async def test_events_flow_from_the_bus_to_the_receiver_in_order(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with dispatching(database, tmp_path) as (service, _, bus):
        webhook, _ = await service.create(
            "default", WebhookCreate(name="rx", url=receiver.url(), events=["api_key.*"])
        )
        receiver.reply(Reply(status=500), Reply(status=500))
        names = [f"n{i}" for i in range(30)]
        for name in names:
            await bus.publish("api_key.created", key_event(name), tenant_id="default")
        await wait_until(lambda: len(receiver.received()) >= 32, "every delivery", within=20)
        assert [b["data"]["name"] for b in receiver.bodies()][2:] == names

        async def recorded() -> bool:  # attempts are committed in batches after the answer
            return (await service.stats(webhook.id, "default")).attempts == 32

        await wait_until(recorded, "every attempt to be recorded")
        stats = await service.stats(webhook.id, "default")
        assert stats.by_status["success"] == 30
        assert stats.attempts == 32
        assert await service.load_cursor() == bus.last_seq


async def test_two_processes_sharing_a_database_deliver_each_row_once(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    async with (
        dispatching(database, tmp_path) as (service, _, _),
        dispatching(database, tmp_path) as (_, _, _),
    ):
        webhooks = [
            (
                await service.create(
                    "default", WebhookCreate(name=f"rx{i}", url=receiver.url(f"/{i}"), events=["*"])
                )
            )[0]
            for i in range(3)
        ]
        names = [f"n{i}" for i in range(40)]
        now = SystemClock().now()
        async with database.session() as session:
            await service.enqueue(
                session,
                [OutboxEvent("api_key.created", key_event(n), "default", now) for n in names],
            )
        service.notify()
        await wait_until(lambda: len(receiver.received()) >= 120, "every delivery", within=20)
        for i in range(len(webhooks)):
            received = [b["data"]["name"] for b in receiver.bodies(f"/{i}")]
            assert received == names  # once each, in order, whichever process sent it


async def test_a_lane_slower_than_its_lease_renews_it_and_keeps_the_endpoint(
    database: Database, tmp_path: Path, receiver: Receiver
) -> None:
    # Six answers of 0.15 s outlast a 0.3 s lease; the other process must not take over.
    receiver.default = Reply(delay_s=0.15)
    async with (
        dispatching(database, tmp_path, webhook_lease_s=0.3) as (service, _, _),
        dispatching(database, tmp_path, webhook_lease_s=0.3) as (_, _, _),
    ):
        await service.create(
            "default", WebhookCreate(name="slow", url=receiver.url(), events=["*"])
        )
        names = [f"n{i}" for i in range(6)]
        now = SystemClock().now()
        async with database.session() as session:
            await service.enqueue(
                session,
                [OutboxEvent("api_key.created", key_event(n), "default", now) for n in names],
            )
        service.notify()
        await wait_until(lambda: len(receiver.received()) >= 6, "every delivery", within=20)
        await asyncio.sleep(0.5)  # time for a second process's duplicate, were there one
        assert [b["data"]["name"] for b in receiver.bodies()] == names
