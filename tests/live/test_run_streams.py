"""``/ws/tasks/{id}``, ``/ws/runs/{id}`` and ``/ws/stream`` through a real server and client.

Events are published on the running app's own bus. "Receives nothing of X" is checked by
publishing X's events first and then one the client must receive: a client gets events in
``seq`` order, so the first message it reads proves what it was not sent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.live.rawws import RawWebSocket
from tests.live_server import LiveServer, live_server
from tests.runs.server import run_server
from unity.auth.principal import ALL_SCOPES
from unity.core.events import CATALOG, CATEGORIES, Event
from unity.live.streams import CATEGORY_SCOPES, SHORT_NAMES, StreamHub

STATUS = {
    "run.created": "pending",
    "run.analysis_started": "analyzing",
    "run.plan_ready": "analyzing",
    "run.approval_required": "awaiting_approval",
    "run.approved": "approved",
    "run.rejected": "rejected",
    "run.progress": "running",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.timed_out": "timed_out",
}
EXTRAS: dict[str, dict[str, Any]] = {
    "run.created": {"action": "file_cleanup"},
    "run.analysis_started": {},
    "run.plan_ready": {"plan": {"delete": ["/tmp/a.log"]}, "plan_hash": "sha256:ab"},
    "run.approval_required": {"plan_hash": "sha256:ab", "expires_at": None},
    "run.approved": {"feedback": "go", "decided_by": None},
    "run.rejected": {"feedback": None, "decided_by": None},
    "run.progress": {"step": 1, "total": 2, "percent": 50.0, "message": "deleted /tmp/a.log"},
    "run.completed": {"result": {"deleted": 1}},
    "run.failed": {"error": "boom"},
    "run.cancelled": {"reason": None},
    "run.timed_out": {"on_timeout": "reject"},
}


def run_data(
    event_type: str, run_id: str, task_id: str, tenant: str = "default", **extra: Any
) -> dict[str, Any]:
    data = {
        "run_id": run_id,
        "task_id": task_id,
        "tenant_id": tenant,
        "status": STATUS[event_type],
        **EXTRAS[event_type],
        **extra,
    }
    CATALOG[event_type].validate(data)  # what the run engine publishes
    return data


def alert_data(tenant: str | None = "default") -> dict[str, Any]:
    data = {
        "rule_id": "r1",
        "rule_name": "disk full",
        "tenant_id": tenant,
        "severity": "critical",
        "metric_name": "disk_percent",
        "plugin_id": "system_info",
        "instance_id": None,
        "labels": {"mount": "/"},
        "operator": ">",
        "threshold": 90.0,
        "value": 97.5,
        "message": "disk_percent > 90",
        "timestamp": "2026-11-23T19:40:30+00:00",
    }
    CATALOG["alert.triggered"].validate(data)
    return data


def metrics_data() -> dict[str, Any]:
    return {
        "plugin_id": "steady",
        "instance_id": str(uuid.uuid4()),
        "tenant_id": "default",
        "timestamp": "2026-11-23T19:40:30+00:00",
        "metrics": {"steady_value": 1.0},
    }


async def publish_run(
    server: LiveServer,
    event_type: str,
    run_id: str,
    task_id: str,
    tenant: str = "default",
    **extra: Any,
) -> Event:
    data = run_data(event_type, run_id, task_id, tenant, **extra)
    return await server.components.bus.publish(event_type, data, tenant_id=tenant)


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(tmp_path, ws_heartbeat_s=3600) as s:
        yield s


async def key(server: LiveServer, *scopes: str, tenant: str = "default") -> str:
    _, secret = await server.components.keys.create(
        tenant_id=tenant, name=f"{tenant} {' '.join(scopes)}", scopes=list(scopes)
    )
    return secret


async def recv(
    ws: ClientConnection, *, within: float = 10.0, skip_heartbeats: bool = True
) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), within))
        if not (skip_heartbeats and message.get("type") == "heartbeat"):
            return dict(message)


async def ready(ws: ClientConnection) -> None:
    """Return once the server serves ``ws`` (it answers commands only after subscribing it)."""
    await ws.send(json.dumps({"action": "ping"}))
    assert (await recv(ws))["type"] == "pong"


async def events(ws: ClientConnection, count: int) -> list[tuple[str, str | None]]:
    out = []
    for _ in range(count):
        message = await recv(ws)
        out.append((message["event_type"], message["run_id"]))
    return out


def test_tables_cover_the_catalog() -> None:
    assert set(SHORT_NAMES) == {name for name in CATALOG if name.startswith("run.")}
    assert set(CATEGORY_SCOPES) == set(CATEGORIES)
    assert set(CATEGORY_SCOPES.values()) <= set(ALL_SCOPES)


async def test_message_shape_and_short_names(server: LiveServer) -> None:
    run_id, task_id = new_ids()
    # any spelling of the UUID
    async with websockets.connect(server.ws_url(f"/ws/runs/{run_id.upper()}")) as ws:
        await ready(ws)
        published = [await publish_run(server, t, run_id, task_id) for t in SHORT_NAMES]
        received = [await recv(ws) for _ in published]
    first = published[0]
    assert received[0] == {
        "event_type": "created",
        "task_id": task_id,
        "run_id": run_id,
        "data": run_data("run.created", run_id, task_id),
        "timestamp": first.timestamp.isoformat(),
        "seq": first.seq,
    }
    assert [m["event_type"] for m in received] == [
        "created",
        "analysis_start",
        "plan_ready",
        "approval_required",
        "approved",
        "rejected",
        "progress",
        "completion",
        "failure",
        "cancelled",
        "timeout",
    ]
    assert [m["seq"] for m in received] == [e.seq for e in published]
    assert received[6]["data"]["percent"] == 50.0


async def test_task_and_run_streams_take_only_their_events(server: LiveServer) -> None:
    (r1, t1), (r2, _), (r3, t2) = new_ids(), new_ids(), new_ids()
    async with (
        websockets.connect(server.ws_url(f"/ws/tasks/{t1}")) as task,
        websockets.connect(server.ws_url(f"/ws/runs/{r1}")) as run,
        websockets.connect(server.ws_url("/ws/stream")) as stream,
    ):
        for ws in (task, run, stream):
            await ready(ws)
        await publish_run(server, "run.created", r1, t1)
        await publish_run(server, "run.created", r2, t1)
        await publish_run(server, "run.created", r3, t2)
        await publish_run(server, "run.progress", r1, t1)
        await publish_run(server, "run.progress", r3, t2)
        await publish_run(server, "run.completed", r1, t1)
        assert await events(task, 4) == [
            ("created", r1),
            ("created", r2),
            ("progress", r1),
            ("completion", r1),
        ]
        assert await events(run, 3) == [("created", r1), ("progress", r1), ("completion", r1)]
        assert [m[1] for m in await events(stream, 6)] == [r1, r2, r3, r1, r3, r1]
        assert server.components.streams.clients == 3


async def test_a_tenant_sees_nothing_of_another(server: LiveServer) -> None:
    c = server.components
    await c.tenants.create(tenant_id="beta", name="Beta")
    beta = await key(server, "runs:read", "alerts:read", "metrics:read", tenant="beta")
    run_id, task_id = new_ids()  # a run of the default tenant
    async with (
        websockets.connect(server.ws_url("/ws/stream", key=beta)) as stream,
        websockets.connect(server.ws_url(f"/ws/runs/{run_id}", key=beta)) as run,
        websockets.connect(server.ws_url(f"/ws/tasks/{task_id}", key=beta)) as task,
        websockets.connect(server.ws_url("/ws/stream", tenant="beta")) as admin,
    ):
        for ws in (stream, run, task, admin):
            await ready(ws)
        await publish_run(server, "run.created", run_id, task_id)
        await publish_run(server, "run.completed", run_id, task_id)
        await c.bus.publish("alert.triggered", alert_data(), tenant_id="default")
        await c.bus.publish("metrics.updated", metrics_data(), tenant_id="default")
        # the same ids in beta (ids are not secrets: isolation must not rely on them)
        mine = await publish_run(server, "run.failed", run_id, task_id, tenant="beta")
        for ws in (stream, run, task, admin):
            message = await recv(ws)
            assert (message["seq"], message["data"]["tenant_id"]) == (mine.seq, "beta")
    # a beta key may not ask for another tenant
    assert await close_code(server.ws_url("/ws/stream", key=beta, tenant="default")) == 4403


async def test_stream_sends_each_category_to_keys_with_its_scope(server: LiveServer) -> None:
    c = server.components
    runs_only = await key(server, "runs:read")
    with_alerts = await key(server, "runs:read", "alerts:read")
    with_plugins = await key(server, "runs:read", "plugins:read")
    run_id, task_id = new_ids()
    async with (
        websockets.connect(server.ws_url("/ws/stream", key=runs_only)) as runs_ws,
        websockets.connect(server.ws_url("/ws/stream", key=with_alerts)) as alerts_ws,
        websockets.connect(server.ws_url("/ws/stream", key=with_plugins)) as plugins_ws,
        websockets.connect(server.ws_url("/ws/stream")) as admin_ws,
    ):
        for ws in (runs_ws, alerts_ws, plugins_ws, admin_ws):
            await ready(ws)
        alert = await c.bus.publish("alert.triggered", alert_data(), tenant_id="default")
        await c.bus.publish("metrics.updated", metrics_data(), tenant_id="default")
        # without a tenant: a shared catalog change reaches every tenant's keys that may
        # read plugins; any other tenant-less event reaches nobody
        await c.bus.publish(
            "plugin.installed",
            {
                "plugin_id": "steady",
                "name": "Steady",
                "version": "1.0.0",
                "kind": "collector",
                "category": "test",
                "source": "builtin",
                "verified": True,
            },
        )
        await c.bus.publish("alert.triggered", alert_data(tenant=None))
        await publish_run(server, "run.created", run_id, task_id)
        assert await events(runs_ws, 1) == [("created", run_id)]
        message = await recv(alerts_ws)
        assert message == {
            "event_type": "alert.triggered",
            "task_id": None,
            "run_id": None,
            "data": alert_data(),
            "timestamp": alert.timestamp.isoformat(),
            "seq": alert.seq,
        }
        assert await events(alerts_ws, 1) == [("created", run_id)]
        assert await events(plugins_ws, 2) == [("plugin.installed", None), ("created", run_id)]
        assert await events(admin_ws, 4) == [
            ("alert.triggered", None),
            ("metrics.updated", None),
            ("plugin.installed", None),
            ("created", run_id),
        ]


async def test_subscribe_narrows_the_stream(server: LiveServer) -> None:
    c = server.components
    run_id, task_id = new_ids()
    runs_only = await key(server, "runs:read")
    async with (
        websockets.connect(server.ws_url("/ws/stream")) as ws,
        websockets.connect(server.ws_url("/ws/stream", event_types="run.*")) as by_query,
        websockets.connect(server.ws_url("/ws/stream", key=runs_only)) as weak,
        websockets.connect(server.ws_url(f"/ws/runs/{run_id}")) as run,
    ):
        await ws.send(json.dumps({"action": "subscribe", "event_types": ["completion", "alert.*"]}))
        assert await recv(ws) == {
            "type": "subscribed",
            "event_types": ["run.completed", "alert.*"],
        }
        await ready(by_query)
        for sent, detail in [
            ({"action": "subscribe", "event_types": ["alert.*"]}, "'alert.*' events do not come"),
            ({"action": "subscribe", "event_types": ["runs.*"]}, "unknown event type"),
            ({"action": "subscribe", "event_types": "run.*"}, '"event_types" must be a'),
        ]:
            await weak.send(json.dumps(sent))
            error = await recv(weak)
            assert error["type"] == "error"
            assert detail in error["detail"]
        await run.send(json.dumps({"action": "subscribe", "event_types": ["metrics.updated"]}))
        assert (await recv(run))["type"] == "error"

        await publish_run(server, "run.created", run_id, task_id)
        await c.bus.publish("alert.triggered", alert_data(), tenant_id="default")
        await publish_run(server, "run.completed", run_id, task_id)
        assert await events(ws, 2) == [("alert.triggered", None), ("completion", run_id)]
        assert await events(by_query, 2) == [("created", run_id), ("completion", run_id)]

        await ws.send(json.dumps({"action": "subscribe", "event_types": "*"}))
        assert (await recv(ws))["event_types"] == "*"
        await publish_run(server, "run.created", run_id, task_id)
        assert await events(ws, 1) == [("created", run_id)]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.external_service)])
async def any_bus_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LiveServer]:
    """A server on the in-memory bus, and one on the Redis bus."""
    redis = request.getfixturevalue("redis_url") if request.param == "redis" else None
    async with live_server(tmp_path, ws_heartbeat_s=3600, redis_url=redis) as s:
        yield s


async def test_replay_with_since_and_resume(any_bus_server: LiveServer) -> None:
    server = any_bus_server
    (run_id, task_id), (other, _) = new_ids(), new_ids()
    async with websockets.connect(server.ws_url(f"/ws/runs/{run_id}")) as ws:
        await ready(ws)
        await publish_run(server, "run.created", run_id, task_id)
        last = (await recv(ws))["seq"]
    # missed while disconnected
    progress = await publish_run(server, "run.progress", run_id, task_id)
    await publish_run(server, "run.created", other, task_id)
    completed = await publish_run(server, "run.completed", run_id, task_id)
    async with websockets.connect(server.ws_url(f"/ws/runs/{run_id}", since=last)) as ws:
        assert [(await recv(ws))["seq"] for _ in range(2)] == [progress.seq, completed.seq]
        live = await publish_run(server, "run.failed", run_id, task_id)
        assert (await recv(ws))["seq"] == live.seq  # no duplicate, no gap
        await ws.send(json.dumps({"action": "resume", "since": last}))
        again = [(await recv(ws))["seq"] for _ in range(3)]
        assert again == [progress.seq, completed.seq, live.seq]
        await ready(ws)  # nothing more came before the pong


async def test_resync_when_history_is_gone(tmp_path: Path) -> None:
    async with live_server(tmp_path, event_history_size=100, ws_heartbeat_s=3600) as server:
        bus = server.components.bus
        run_id, task_id = new_ids()
        for _ in range(150):
            await bus.publish("metrics.updated", metrics_data(), tenant_id="default")
        last = bus.last_seq
        for since in (last - 140, 3, last + 1000):  # trimmed, another history, ahead of it
            url = server.ws_url("/ws/stream", since=since)
            async with websockets.connect(url) as ws:
                assert await recv(ws) == {"type": "resync", "since": since, "oldest": None}
                await ready(ws)
                event = await publish_run(server, "run.created", run_id, task_id)
                assert (await recv(ws))["seq"] == event.seq  # live after the resync
        async with websockets.connect(server.ws_url(f"/ws/runs/{run_id}")) as ws:
            await ws.send(json.dumps({"action": "resume", "since": 3}))
            assert (await recv(ws))["type"] == "resync"


async def test_heartbeat(tmp_path: Path) -> None:
    async with (
        live_server(tmp_path, ws_heartbeat_s=0.2) as server,
        websockets.connect(server.ws_url("/ws/stream")) as ws,
    ):
        beat = await recv(ws, skip_heartbeats=False)
    assert beat["type"] == "heartbeat"
    assert beat["active_connections"] == 1
    assert "timestamp" in beat


async def test_bad_messages_get_an_error_and_the_connection_stays(server: LiveServer) -> None:
    run_id, task_id = new_ids()
    async with websockets.connect(server.ws_url(f"/ws/tasks/{task_id}", since="abc")) as ws:
        assert (await recv(ws))["detail"].startswith("since must be a non-negative integer")
        bad: list[tuple[str | bytes, str]] = [
            ("not json", "messages must be JSON"),
            (b"\xff\xfe", "messages must be JSON"),
            ("[1, 2]", "messages must be objects"),
            ('{"action": "dance"}', "unknown action 'dance'"),
            ('{"action": "resume", "since": -1}', "since must be a non-negative integer"),
            ('{"action": "resume", "since": true}', "since must be a non-negative integer"),
            ('{"action": "resume", "since": 18446744073709551615}', "since must be a non-"),
            ('{"action": "auth", "token": "x"}', "unknown action 'auth'"),
        ]
        for sent, detail in bad:
            await ws.send(sent)
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["detail"].startswith(detail), (sent, error)
        await ready(ws)
        await publish_run(server, "run.created", run_id, task_id)
        assert (await recv(ws))["event_type"] == "created"


async def drain(ws: ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def close_code(url: str, first: str | None = None) -> int:
    async with websockets.connect(url) as ws:
        if first is not None:
            await ws.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            await drain(ws)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize("path", ["/ws/tasks/t1", "/ws/runs/r1", "/ws/stream"])
async def test_authentication(server: LiveServer, path: str) -> None:
    weak = await key(server, "metrics:read", "plugins:read", "alerts:read")
    good = await key(server, "runs:read")
    assert await close_code(f"{server.ws}{path}", '{"action": "ping"}') == 4401
    assert await close_code(f"{server.ws}{path}?token=unity_wrong") == 4401
    assert await close_code(server.ws_url(path, key=weak)) == 4403
    async with websockets.connect(f"{server.ws}{path}") as ws:
        await ws.send(json.dumps({"action": "auth", "token": good}))
        await ready(ws)


async def test_slow_client_lags_without_delaying_others(tmp_path: Path) -> None:
    async with live_server(tmp_path, ws_queue_size=20, ws_heartbeat_s=3600) as server:
        run_id, task_id = new_ids()
        # 60 MB in all: far more than the slow peer's socket buffers can hold
        big = "x" * 200_000
        slow = await RawWebSocket.connect(server.port, f"/ws/runs/{run_id}?token={server.key}")
        try:
            async with websockets.connect(server.ws_url("/ws/stream")) as fast:
                await ready(fast)
                received: list[int] = []
                # In steps the fast client keeps up with; the slow one never reads.
                for _ in range(30):
                    for _ in range(10):
                        await publish_run(server, "run.progress", run_id, task_id, message=big)
                    received += [(await recv(fast))["seq"] for _ in range(10)]
                assert received == list(range(received[0], received[0] + 300))
            kinds = []
            while "lag" not in kinds:
                message = await asyncio.wait_for(slow.recv(), 10)
                kinds.append(message.get("type") or message["event_type"])
            assert set(kinds) == {"progress", "lag"}
            assert len(kinds) < 300
        finally:
            await slow.close()


async def replace_hub(server: LiveServer, *, start: bool, **options: Any) -> StreamHub:
    """Swap the app's stream hub for one built with ``options`` (started or not)."""
    c = server.components
    await c.streams.stop()
    c.streams = StreamHub(
        bus=c.bus,
        clock=c.clock,
        heartbeat_s=3600,
        queue_size=1000,
        authenticate=c.keys.authenticate,
        **options,
    )
    if start:
        await c.streams.start()
    return c.streams


async def test_a_process_falling_behind_the_bus_replays_from_history(server: LiveServer) -> None:
    # A shared queue of 5: publishing 50 events without yielding overflows it.
    await replace_hub(server, start=True, shared_queue_size=5)
    run_id, task_id = new_ids()
    async with websockets.connect(server.ws_url(f"/ws/runs/{run_id}")) as ws:
        await ready(ws)
        published = [
            await publish_run(server, "run.progress", run_id, task_id, step=i) for i in range(50)
        ]
        await publish_run(server, "run.completed", run_id, task_id)
        received = [await recv(ws) for _ in range(51)]
    assert [m["seq"] for m in received[:50]] == [e.seq for e in published]
    assert received[-1]["event_type"] == "completion"
    assert server.components.bus.stats["dropped"] >= 45


async def test_replay_and_live_events_join_without_duplicates(server: LiveServer) -> None:
    # No pump: the test hands events to the hub itself, late, as a busy process would.
    hub = await replace_hub(server, start=False)
    run_id, task_id = new_ids()
    async with websockets.connect(server.ws_url(f"/ws/runs/{run_id}")) as ws:
        await ready(ws)
        since = server.components.bus.last_seq
        early = [await publish_run(server, "run.progress", run_id, task_id) for _ in range(2)]
        await ws.send(json.dumps({"action": "resume", "since": since}))
        await ws.send(json.dumps({"action": "ping"}))
        assert [(await recv(ws)).get("seq") for _ in range(3)] == [e.seq for e in early] + [None]
        for event in early:  # they reach the hub live after the replay sent them
            hub.fan_out(event)
        late = await publish_run(server, "run.completed", run_id, task_id)
        hub.fan_out(late)
        assert (await recv(ws))["seq"] == late.seq


async def test_a_real_run_seen_on_its_task_stream(tmp_path: Path) -> None:
    """The run engine's own events, from creation through approval to completion."""
    async with run_server(tmp_path / "data", ws_heartbeat_s=3600) as server:
        http = server.client
        task = await http.post(
            "/api/tasks/", json={"name": "w", "action": "write_files", "params": {"names": ["a"]}}
        )
        task_id = task.json()["id"]
        url = f"{server.url.replace('http', 'ws', 1)}/ws/tasks/{task_id}?token={server.key}"
        async with websockets.connect(url) as ws:
            await ready(ws)
            run_id = (await http.post("/api/runs/", json={"task_id": task_id})).json()["id"]
            seen: list[str] = []
            while not seen or seen[-1] not in ("completion", "failure"):
                message = await recv(ws)
                assert (message["task_id"], message["run_id"]) == (task_id, run_id)
                seen.append(message["event_type"])
                if seen[-1] == "approval_required":
                    decision = {"approved": True}
                    assert (
                        await http.post(f"/api/runs/{run_id}/approve", json=decision)
                    ).is_success
    assert seen[:5] == ["created", "analysis_start", "plan_ready", "approval_required", "approved"]
    assert seen[-1] == "completion"
    assert set(seen[5:-1]) == {"progress"}
