"""``/api/webhooks`` against a real receiver: catalog, CRUD, test, deliveries, stats, secrets."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook as StandardWebhook

from tests.webhooks.conftest import Api, Receiver, Reply, create_webhook, key_event, wait_until
from unity.core.events.catalog import CATALOG
from unity.webhooks.models import Webhook


async def test_the_catalog_lists_every_event_with_its_schema(api: Api) -> None:
    client, _ = api
    response = await client.get("/api/webhooks/events")
    assert response.status_code == 200
    catalog = response.json()
    assert catalog["total"] == len(CATALOG) >= 20
    assert len(catalog["categories"]) >= 5
    by_type = {item["type"]: item for item in catalog["items"]}
    assert set(by_type) == set(CATALOG)
    alert = by_type["alert.triggered"]
    assert alert["category"] == "alert"
    assert alert["description"]
    assert "rule_id" in alert["schema"]["properties"]
    runs = next(c for c in catalog["categories"] if c["name"] == "run")
    assert runs["pattern"] == "run.*"
    assert "run.plan_ready" in runs["events"]


async def test_create_shows_a_standard_secret_once_and_stores_it_encrypted(api: Api) -> None:
    client, c = api
    created = await create_webhook(
        client, "http://127.0.0.1:9/hook", events=["alert.triggered", "run", "run.*"]
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert StandardWebhook(secret)  # the reference library accepts it
    assert created["events"] == ["alert.triggered", "run.*"]  # bare category -> pattern
    assert created["active"] is True
    shown = await client.get(f"/api/webhooks/{created['id']}")
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    async with c.database.sessions() as session:
        stored = (await session.scalars(select(Webhook))).one()
    assert secret not in stored.secret_encrypted
    key_file = c.settings.data_dir / "webhooks.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_a_given_secret_is_kept(api: Api) -> None:
    client, _ = api
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    created = await create_webhook(client, "https://example.net/hook", secret=secret)
    assert created["secret"] == secret


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "ftp://example.net/x"),
        ("url", "http://169.254.169.254/latest/meta-data"),
        ("url", "http://[fe80::1]/hook"),
        ("url", "http://metadata.google.internal/computeMetadata"),
        ("url", "not a url"),
        ("events", ["runs.*"]),
        ("events", []),
        ("secret", "plainsecret"),
        ("secret", "whsec_c2hvcnQ="),
    ],
)
async def test_bad_webhooks_are_refused_with_422(api: Api, field: str, value: object) -> None:
    client, _ = api
    body = {"name": "x", "url": "https://example.net/hook", "events": ["*"], field: value}
    response = await client.post("/api/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_list_update_and_delete(api: Api) -> None:
    client, _ = api
    first = await create_webhook(client, "https://example.net/a", name="a")
    await create_webhook(client, "https://example.net/b", name="b", active=False)
    listed = (await client.get("/api/webhooks")).json()
    assert listed["total"] == 2
    assert {w["name"] for w in listed["items"]} == {"a", "b"}
    active = (await client.get("/api/webhooks", params={"active": True})).json()
    assert [w["name"] for w in active["items"]] == ["a"]

    updated = await client.put(
        f"/api/webhooks/{first['id']}",
        json={"name": "renamed", "events": ["alert.*"], "description": "alerts only"},
    )
    assert updated.status_code == 200
    assert updated.json()["name"] == "renamed"
    assert updated.json()["events"] == ["alert.*"]
    assert updated.json()["url"] == "https://example.net/a"
    bad = await client.put(f"/api/webhooks/{first['id']}", json={"url": "gopher://x"})
    assert bad.status_code == 422
    null = await client.put(f"/api/webhooks/{first['id']}", json={"name": None})
    assert null.status_code == 422

    assert (await client.delete(f"/api/webhooks/{first['id']}")).status_code == 204
    assert (await client.get(f"/api/webhooks/{first['id']}")).status_code == 404
    assert (await client.delete(f"/api/webhooks/{first['id']}")).status_code == 404


async def test_another_tenants_webhook_is_not_found(api: Api) -> None:
    client, c = api
    await c.tenants.create(tenant_id="beta", name="Beta")
    _, beta_key = await c.keys.create(
        tenant_id="beta", name="beta", scopes=["webhooks:read", "webhooks:write"]
    )
    mine = await create_webhook(client, "https://example.net/default")
    beta = {"authorization": f"Bearer {beta_key}"}
    assert (await client.get(f"/api/webhooks/{mine['id']}", headers=beta)).status_code == 404
    assert (await client.delete(f"/api/webhooks/{mine['id']}", headers=beta)).status_code == 404
    assert (await client.get("/api/webhooks", headers=beta)).json()["total"] == 0
    theirs = await client.post(
        "/api/webhooks",
        headers=beta,
        json={"name": "b", "url": "https://example.net/beta", "events": ["*"]},
    )
    assert theirs.json()["tenant_id"] == "beta"
    # an admin key reaches it with ?tenant=
    admin_view = await client.get(f"/api/webhooks/{theirs.json()['id']}?tenant=beta")
    assert admin_view.status_code == 200


async def test_the_test_endpoint_sends_a_verifiable_event_and_reports_the_outcome(
    api: Api, receiver: Receiver
) -> None:
    client, _ = api
    created = await create_webhook(client, receiver.url(), events=["alert.*"])
    receiver.reply(Reply(status=202, body=b"thanks"))
    response = await client.post(f"/api/webhooks/{created['id']}/test")
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["success"] is True
    assert outcome["status_code"] == 202
    assert outcome["response_body"] == "thanks"
    assert outcome["response_ms"] > 0
    assert outcome["delivery"]["status"] == "success"
    assert outcome["delivery"]["event_type"] == "webhook.test"

    (request,) = receiver.received()
    payload = StandardWebhook(created["secret"]).verify(request.body, request.headers)
    assert payload["type"] == "webhook.test"
    assert payload["data"]["webhook_id"] == created["id"]
    CATALOG["webhook.test"].validate(payload["data"])
    assert request.headers["webhook-id"] == outcome["delivery"]["message_id"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Unity-Webhooks/")


async def test_a_failed_test_reports_why(api: Api, receiver: Receiver) -> None:
    client, _ = api
    created = await create_webhook(client, receiver.url())
    receiver.reply(Reply(status=301, headers={"location": "/elsewhere"}))
    outcome = (await client.post(f"/api/webhooks/{created['id']}/test")).json()
    assert outcome["success"] is False
    assert outcome["status_code"] == 301
    assert "redirect" in outcome["error"]
    receiver.stop()
    outcome = (await client.post(f"/api/webhooks/{created['id']}/test")).json()
    assert outcome["success"] is False
    assert outcome["status_code"] is None
    assert outcome["error"]


async def test_deliveries_stats_retry_and_recover(api: Api, receiver: Receiver) -> None:
    client, c = api
    created = await create_webhook(client, receiver.url(), events=["api_key.*"])
    hook = f"/api/webhooks/{created['id']}"
    receiver.default = Reply(status=500, body=b"x" * 5000)
    await c.bus.publish("api_key.created", key_event("doomed"), tenant_id="default")

    async def exhausted() -> bool:
        page = (await client.get(f"{hook}/deliveries", params={"status": "exhausted"})).json()
        return bool(page["total"] == 1)

    await wait_until(exhausted, "the delivery to be exhausted")
    (delivery,) = (await client.get(f"{hook}/deliveries")).json()["items"]
    assert delivery["attempts"] == len(c.settings.webhook_retry_schedule_s)
    assert len(delivery["attempt_log"]) == delivery["attempts"]
    first = delivery["attempt_log"][0]
    assert first["status_code"] == 500
    assert first["success"] is False
    assert len(first["response_body"]) == 2048  # the first 2 KB only
    assert first["response_ms"] is not None
    assert first["error"] == "HTTP 500"
    assert delivery["payload"]["type"] == "api_key.created"
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 1

    filtered = await client.get(f"{hook}/deliveries", params={"event_type": "alert.*"})
    assert filtered.json()["total"] == 0
    assert (
        await client.get(f"{hook}/deliveries", params={"event_type": "nope"})
    ).status_code == 400
    assert (await client.get(f"{hook}/deliveries", params={"status": "nope"})).status_code == 422

    stats = (await client.get(f"{hook}/stats")).json()
    assert stats["by_status"]["exhausted"] == 1
    assert stats["success_rate"] == 0
    assert stats["last_success_at"] is None
    assert stats["last_failure_error"] == "HTTP 500"
    assert stats["p95_response_ms"] is not None

    # a manual retry, same webhook-id, now succeeding
    receiver.default = Reply(status=200)
    retried = await client.post(f"{hook}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "pending"

    async def succeeded() -> bool:
        one = (await client.get(f"{hook}/deliveries/{delivery['id']}")).json()
        return bool(one["status"] == "success")

    await wait_until(succeeded, "the retried delivery to succeed")
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 1
    stats = (await client.get(f"{hook}/stats")).json()
    assert stats["by_status"] == {"pending": 0, "success": 1, "exhausted": 0, "failed": 0}
    assert stats["last_success_at"] is not None
    assert 0 < stats["success_rate"] < 1

    # recover: resend failed deliveries from a time
    receiver.default = Reply(status=500)
    for name in ("one", "two"):
        await c.bus.publish("api_key.created", key_event(name), tenant_id="default")

    async def two_exhausted() -> bool:
        page = (await client.get(f"{hook}/deliveries", params={"status": "exhausted"})).json()
        return bool(page["total"] == 2)

    await wait_until(two_exhausted, "two exhausted deliveries")
    receiver.default = Reply(status=204)
    before = len(receiver.received())
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    recovered = await client.post(f"{hook}/recover", json={"since": since})
    assert recovered.json() == {"requeued": 2}
    await wait_until(lambda: len(receiver.received()) == before + 2, "the recovered deliveries")
    names = [b["data"]["name"] for b in receiver.bodies()[before:]]
    assert names == ["one", "two"]  # oldest first
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await client.post(f"{hook}/recover", json={"since": future})).status_code == 400
    assert (await client.post(f"{hook}/recover", json={"since": "yesterday"})).status_code == 422
    missing = await client.post(f"{hook}/deliveries/999999/retry")
    assert missing.status_code == 404


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    api: Api, receiver: Receiver
) -> None:
    client, _ = api
    created = await create_webhook(client, receiver.url())
    rotated = await client.post(f"/api/webhooks/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"]
    expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)

    assert (await client.post(f"/api/webhooks/{created['id']}/test")).json()["success"]
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (created["secret"], new_secret):
        StandardWebhook(secret).verify(request.body, request.headers)

    given = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    again = await client.post(
        f"/api/webhooks/{created['id']}/rotate-secret", json={"secret": given}
    )
    assert again.json()["secret"] == given
    bad = await client.post(f"/api/webhooks/{created['id']}/rotate-secret", json={"secret": "x"})
    assert bad.status_code == 422
