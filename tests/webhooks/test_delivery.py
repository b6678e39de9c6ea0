"""Events reach real receivers: signed, retried, in order, isolated per tenant, disabled on 410."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from standardwebhooks import Webhook as StandardWebhook

from tests.api_client import app_client
from tests.webhooks.conftest import (
    Api,
    Receiver,
    Reply,
    create_webhook,
    key_event,
    wait_until,
)
from unity.core.events.catalog import CATALOG


async def test_an_event_is_delivered_signed_with_the_standard_headers(
    api: Api, receiver: Receiver
) -> None:
    client, c = api
    created = await create_webhook(client, receiver.url(), events=["api_key.created"])
    event = await c.bus.publish("api_key.created", key_event("k1"), tenant_id="default")
    await c.bus.publish("api_key.revoked", key_event("k1"), tenant_id="default")  # not subscribed
    await wait_until(lambda: len(receiver.received()) == 1, "the delivery")
    (request,) = receiver.received()
    payload = StandardWebhook(created["secret"]).verify(request.body, request.headers)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "api_key.created"
    assert datetime.fromisoformat(payload["timestamp"]) == event.timestamp
    CATALOG["api_key.created"].validate(payload["data"])
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["user-agent"].startswith("Unity-Webhooks/")


async def test_a_500_is_retried_with_the_same_id_until_it_succeeds(
    api: Api, receiver: Receiver
) -> None:
    client, c = api
    created = await create_webhook(client, receiver.url())
    receiver.reply(Reply(status=500), Reply(status=503, headers={"retry-after": "1"}))
    await c.bus.publish("api_key.created", key_event("retried"), tenant_id="default")
    await wait_until(lambda: len(receiver.received()) == 3, "three attempts", within=15)
    requests = receiver.received()
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        StandardWebhook(created["secret"]).verify(request.body, request.headers)
    page = (await client.get(f"/api/webhooks/{created['id']}/deliveries")).json()
    (delivery,) = page["items"]

    async def settled() -> bool:
        d = (await client.get(f"/api/webhooks/{created['id']}/deliveries")).json()["items"][0]
        return bool(d["status"] == "success")

    await wait_until(settled, "the success to be recorded")
    log = (await client.get(f"/api/webhooks/{created['id']}/deliveries")).json()["items"][0]
    codes = [a["status_code"] for a in log["attempt_log"]]
    assert codes == [500, 503, 204]
    # Retry-After: 1 was honoured although the schedule said 0.05 s
    second = datetime.fromisoformat(log["attempt_log"][1]["started_at"])
    third = datetime.fromisoformat(log["attempt_log"][2]["started_at"])
    assert (third - second).total_seconds() >= 0.9
    assert delivery["message_id"] == requests[0].headers["webhook-id"]


async def test_a_receiver_that_is_down_for_a_while_gets_everything_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Enough retries to outlast the outage.
    async with app_client(
        tmp_path, webhook_retry_schedule_s=[0] + [0.1] * 40, webhook_poll_interval_s=0.05
    ) as (client, c):
        await create_webhook(client, receiver.url())
        receiver.stop()
        names = [f"event-{i}" for i in range(20)]
        for name in names[:10]:
            await c.bus.publish("api_key.created", key_event(name), tenant_id="default")

        async def retrying() -> bool:
            stats = await c.webhooks.stats(
                (await c.webhooks.list_webhooks("default", skip=0, limit=1))[0][0].id, "default"
            )
            return stats.attempts >= 3

        await wait_until(retrying, "failed attempts while the receiver is down")
        for name in names[10:]:
            await c.bus.publish("api_key.created", key_event(name), tenant_id="default")
        receiver.start()
        await wait_until(lambda: len(receiver.received()) >= 20, "every event", within=20)
        received = [b["data"]["name"] for b in receiver.bodies()]
        assert received == names  # nothing lost, nothing twice, in order


async def test_a_410_disables_the_endpoint_and_tells_the_other_webhooks(
    api: Api, receivers: Callable[[], Receiver]
) -> None:
    client, c = api
    gone, watcher = receivers(), receivers()
    doomed = await create_webhook(client, gone.url(), name="doomed")
    await create_webhook(client, watcher.url(), name="watcher", events=["webhook.disabled"])
    gone.default = Reply(status=410)
    await c.bus.publish("api_key.created", key_event("first"), tenant_id="default")
    await wait_until(lambda: len(watcher.received()) == 1, "webhook.disabled at the watcher")
    (notice,) = watcher.bodies()
    assert notice["type"] == "webhook.disabled"
    assert notice["data"]["webhook_id"] == doomed["id"]
    assert "410" in notice["data"]["reason"]
    CATALOG["webhook.disabled"].validate(notice["data"])
    shown = (await client.get(f"/api/webhooks/{doomed['id']}")).json()
    assert shown["active"] is False
    assert "410" in shown["disabled_reason"]
    deliveries = (await client.get(f"/api/webhooks/{doomed['id']}/deliveries")).json()
    assert [d["status"] for d in deliveries["items"]] == ["failed"]

    await c.bus.publish("api_key.created", key_event("second"), tenant_id="default")
    await wait_until(lambda: len(watcher.received()) == 1, "nothing more")
    assert len(gone.received()) == 1  # a disabled endpoint receives nothing new

    # re-enabling resumes delivery
    gone.default = Reply(status=204)
    await client.put(f"/api/webhooks/{doomed['id']}", json={"active": True})
    await c.bus.publish("api_key.created", key_event("third"), tenant_id="default")
    await wait_until(lambda: len(gone.received()) == 2, "delivery after re-enabling")


async def test_an_endpoint_failing_past_the_window_is_disabled(
    tmp_path: Path, receivers: Callable[[], Receiver]
) -> None:
    async with app_client(
        tmp_path,
        webhook_retry_schedule_s=[0] + [0.1] * 50,
        webhook_poll_interval_s=0.05,
        webhook_disable_after_s=0.5,
    ) as (client, c):
        failing, watcher = receivers(), receivers()
        failing.default = Reply(status=500)
        hook = await create_webhook(client, failing.url())
        await create_webhook(client, watcher.url(), events=["webhook.*"])
        await c.bus.publish("api_key.created", key_event("x"), tenant_id="default")
        await wait_until(lambda: len(watcher.received()) == 1, "webhook.disabled")
        reason = watcher.bodies()[0]["data"]["reason"]
        assert "failed for" in reason
        shown = (await client.get(f"/api/webhooks/{hook['id']}")).json()
        assert shown["active"] is False
        # its delivery is kept pending, to resume if the endpoint is re-enabled
        pending = (await client.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["items"]
        assert [d["status"] for d in pending] == ["pending"]


async def test_a_slow_endpoint_does_not_hold_back_the_others(
    api: Api, receivers: Callable[[], Receiver]
) -> None:
    client, c = api
    slow, fast = receivers(), receivers()
    slow.default = Reply(delay_s=1.5)
    await create_webhook(client, slow.url(), name="slow")
    await create_webhook(client, fast.url(), name="fast")
    for i in range(5):
        await c.bus.publish("api_key.created", key_event(f"e{i}"), tenant_id="default")
    await wait_until(lambda: len(fast.received()) == 5, "the fast endpoint's five", within=5)
    assert len(slow.received()) <= 1  # the slow one is still on its first


async def test_a_tenants_webhook_never_receives_another_tenants_events(
    api: Api, receivers: Callable[[], Receiver]
) -> None:
    client, c = api
    await c.tenants.create(tenant_id="beta", name="Beta")
    default_rx, beta_rx = receivers(), receivers()
    await create_webhook(client, default_rx.url())
    beta = await client.post(
        "/api/webhooks?tenant=beta",
        json={"name": "beta", "url": beta_rx.url(), "events": ["*"]},
    )
    assert beta.status_code == 201
    await c.bus.publish("api_key.created", key_event("for-default"), tenant_id="default")
    await c.bus.publish("api_key.created", key_event("for-beta", "beta"), tenant_id="beta")
    # system-wide events (no tenant) go to the default tenant
    await c.bus.publish(
        "plugin.enabled", {"plugin_id": "system_info", "name": "System"}, tenant_id=None
    )
    await wait_until(lambda: len(default_rx.received()) == 2, "the default tenant's two")
    await wait_until(lambda: len(beta_rx.received()) == 1, "beta's one")
    assert [b["data"].get("name") for b in default_rx.bodies()] == ["for-default", "System"]
    assert [b["data"]["name"] for b in beta_rx.bodies()] == ["for-beta"]


async def test_many_deliveries_arrive_once_each_in_order_across_windows(
    api: Api, receiver: Receiver
) -> None:
    client, c = api
    created = await create_webhook(client, receiver.url())
    # The 121st request (in the lane's second window of rows) fails once and is retried.
    receiver.reply(*[Reply()] * 120, Reply(status=500))
    names = [f"n{i}" for i in range(250)]
    for name in names:
        await c.bus.publish("api_key.created", key_event(name), tenant_id="default")
    await wait_until(lambda: len(receiver.received()) >= 251, "every delivery", within=20)

    async def recorded() -> bool:
        stats = (await client.get(f"/api/webhooks/{created['id']}/stats")).json()
        return bool(stats["attempts"] == 251)

    await wait_until(recorded, "every attempt to be recorded")
    sent = [b["data"]["name"] for b in receiver.bodies()]
    assert sent == names[:121] + names[120:]  # the failed one again, then the rest in order
    stats = (await client.get(f"/api/webhooks/{created['id']}/stats")).json()
    assert stats["by_status"]["success"] == 250
    assert len(receiver.received()) == 251  # nothing was sent twice after it succeeded


async def test_a_host_name_resolving_to_a_denied_network_is_refused_when_connecting(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with app_client(
        tmp_path, webhook_deny_networks=["127.0.0.0/8", "::1/128"], webhook_timeout_s=2.0
    ) as (client, _):
        # A name is accepted when saved; its addresses are checked when it is reached.
        created = await create_webhook(client, f"http://localhost:{receiver.port}/hook")
        outcome = (await client.post(f"/api/webhooks/{created['id']}/test")).json()
        assert outcome["success"] is False
        assert outcome["status_code"] is None
        assert outcome["error"].startswith("refused: localhost: ")
        assert "webhook_deny_networks" in outcome["error"]
        assert receiver.received() == []


async def test_an_endpoint_that_answers_too_late_is_a_failed_attempt(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with app_client(tmp_path, webhook_timeout_s=0.3) as (client, _):
        created = await create_webhook(client, receiver.url())
        receiver.reply(Reply(delay_s=1.0))
        outcome = (await client.post(f"/api/webhooks/{created['id']}/test")).json()
        assert outcome["success"] is False
        assert outcome["error"] == "no answer within 0.3 s"
        assert len(receiver.received()) == 1
