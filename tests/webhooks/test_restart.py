"""Deliveries survive ``kill -9``: after a restart each is delivered, always under its own id."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.server import UnityProcess, wait_for
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.slow

ENV = {
    "UNITY_WEBHOOK_RETRY_SCHEDULE_S": json.dumps([0] + [0.2] * 200),
    "UNITY_WEBHOOK_POLL_INTERVAL_S": "0.1",
}


def test_pending_deliveries_survive_kill_9(tmp_path: Path, receiver: Receiver) -> None:
    data_dir = tmp_path / "data"
    first = UnityProcess(data_dir, env=ENV)
    first.start()
    second: UnityProcess | None = None
    try:
        with httpx.Client(base_url=first.url, headers=first.headers, timeout=10) as client:
            created = client.post(
                "/api/webhooks",
                json={"name": "rx", "url": receiver.url(), "events": ["api_key.created"]},
            )
            assert created.status_code == 201, created.text
            hook = f"/api/webhooks/{created.json()['id']}"
            receiver.stop()  # the receiver is down: deliveries pile up, retrying
            names = [f"key-{i}" for i in range(8)]
            for name in names:
                made = client.post("/api/keys", json={"name": name, "scopes": ["metrics:read"]})
                assert made.status_code == 201, made.text

            def queued_and_retrying() -> bool:
                page = client.get(f"{hook}/deliveries", params={"limit": 100}).json()
                # the oldest (the head) is retrying; the others wait behind it, in order
                return bool(page["total"] == len(names) and page["items"][-1]["attempts"] >= 2)

            wait_for(queued_and_retrying, 20, "every delivery queued, the first one retrying")
            before = client.get(f"{hook}/deliveries", params={"limit": 100}).json()["items"]
            ids_before = {d["payload"]["data"]["name"]: d["message_id"] for d in before}
        first.kill9()

        receiver.start()
        second = UnityProcess(data_dir, env=ENV)
        second.start()

        def everything_arrived() -> bool:
            return {b["data"]["name"] for b in receiver.bodies()} == set(names)

        wait_for(everything_arrived, 30, "every delivery after the restart")
        ids_seen: dict[str, set[str]] = defaultdict(set)
        for request in receiver.received():
            ids_seen[request.json["data"]["name"]].add(request.headers["webhook-id"])
        assert {name: ids.pop() for name, ids in ids_seen.items() if len(ids) == 1} == ids_before
        # in the order the keys were created
        order = [b["data"]["name"] for b in receiver.bodies()]
        assert sorted(set(order), key=order.index) == names
    finally:
        first.stop()
        if second is not None:
            second.stop()
