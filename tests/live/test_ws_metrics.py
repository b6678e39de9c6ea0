"""``/ws/metrics`` through a real server and a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.live.rawws import RawWebSocket
from tests.live_server import LiveServer, live_server
from unity.live.hub import METRIC_EVENTS


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(tmp_path, ws_heartbeat_s=3600) as s:
        yield s


async def recv(
    ws: ClientConnection, *, within: float = 10.0, skip_heartbeats: bool = True
) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), within))
        if not (skip_heartbeats and message["type"] == "heartbeat"):
            return dict(message)


async def run(server: LiveServer, plugin_id: str, times: int = 1, **config: Any) -> None:
    c = server.components
    await c.plugins.set_enabled(
        plugin_id, tenant_id="default", enabled=True, config={"collection_interval": 3600, **config}
    )
    instance = await c.plugins.default_instance(plugin_id)
    for _ in range(times):
        await c.pipeline.execute(instance)


async def test_message_shapes_after_an_execution(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        await asyncio.sleep(0.1)  # let the server subscribe before the execution
        await run(server, "steady")
        update = await recv(ws)
        complete = await recv(ws)
    instance = await server.components.plugins.default_instance("steady")
    assert update == {
        "type": "metrics_update",
        "plugin_id": "steady",
        "instance_id": str(instance.id),
        "metrics": {
            "steady_value": 1.0,
            "steady_part": [
                {"labels": {"part": "a"}, "value": 1.0},
                {"labels": {"part": "b"}, "value": 2.0},
            ],
        },
        "timestamp": update["timestamp"],
        "seq": update["seq"],
    }
    assert complete["type"] == "execution_complete"
    assert complete["plugin_id"] == "steady"
    assert complete["seq"] == update["seq"] + 1
    execution = complete["execution"]
    assert execution["success"] is True
    assert execution["metrics_count"] == 3
    assert execution["duration_ms"] >= 0


async def test_failed_execution_is_reported(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        await asyncio.sleep(0.1)
        await run(server, "boom")
        message = await recv(ws)
    assert message["type"] == "execution_complete"
    assert message["execution"]["success"] is False
    assert message["execution"]["error"] == "RuntimeError: boom"


async def test_subscribe_filters_by_plugin(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        await ws.send(json.dumps({"action": "subscribe", "plugin_ids": ["boom"]}))
        assert (await recv(ws))["type"] == "subscribed"
        await run(server, "steady")
        await run(server, "boom")
        message = await recv(ws)
        assert (message["type"], message["plugin_id"]) == ("execution_complete", "boom")

        await ws.send(json.dumps({"action": "unsubscribe", "plugin_ids": ["boom"]}))
        assert (await recv(ws))["plugin_ids"] == []
        await run(server, "boom")
        await ws.send(json.dumps({"action": "subscribe", "plugin_ids": "*"}))
        assert (await recv(ws))["plugin_ids"] == "*"
        await run(server, "steady")
        message = await recv(ws)
        assert message["plugin_id"] == "steady"  # the unsubscribed boom run never arrived


async def test_replay_after_reconnect_with_since(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        await asyncio.sleep(0.1)
        await run(server, "steady")
        await recv(ws)
        last = (await recv(ws))["seq"]
    await run(server, "steady", times=2)  # missed while disconnected
    async with websockets.connect(server.ws_url("/ws/metrics", since=last)) as ws:
        replayed = [await recv(ws) for _ in range(4)]
    history = await server.components.bus.history(last)
    assert history is not None
    expected = [e.seq for e in history if e.type in METRIC_EVENTS]
    assert [m["seq"] for m in replayed] == expected
    assert replayed[0]["seq"] == last + 1 or history[0].type == "plugin.health_changed"
    assert [m["type"] for m in replayed] == ["metrics_update", "execution_complete"] * 2


async def test_resume_message_and_resync_when_history_is_gone(tmp_path: Path) -> None:
    async with live_server(tmp_path, event_history_size=100, ws_heartbeat_s=3600) as server:
        bus = server.components.bus
        for i in range(150):
            await bus.publish(
                "metrics.updated",
                {
                    "plugin_id": "steady",
                    "instance_id": "x",
                    "tenant_id": "default",
                    "timestamp": "t",
                    "metrics": {"n": i},
                },
                tenant_id="default",
            )
        async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
            # a position from before this process started (or trimmed away)
            await ws.send(json.dumps({"action": "resume", "since": 3}))
            message = await recv(ws)
            assert message["type"] == "resync"
            last = bus.last_seq
            await ws.send(json.dumps({"action": "resume", "since": last - 10}))
            message = await recv(ws)
            assert (message["type"], message["seq"]) == ("metrics_update", last - 9)


async def test_heartbeat(tmp_path: Path) -> None:
    async with (
        live_server(tmp_path, ws_heartbeat_s=0.2) as server,
        websockets.connect(server.ws_url("/ws/metrics")) as ws,
    ):
        beat = await recv(ws, within=5, skip_heartbeats=False)
    assert beat["type"] == "heartbeat"
    assert beat["active_connections"] == 1
    assert "timestamp" in beat


@pytest.mark.parametrize(
    ("sent", "detail"),
    [
        ("not json", "messages must be JSON"),
        ("[1, 2]", "messages must be objects"),
        ('{"action": "dance"}', "unknown action 'dance'"),
        ('{"action": "subscribe", "plugin_ids": 5}', '"plugin_ids" must be a list'),
        ('{"action": "resume", "since": "x"}', "resume needs a non-negative integer"),
    ],
)
async def test_bad_client_messages_get_an_error_and_the_connection_stays(
    server: LiveServer, sent: str, detail: str
) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        await ws.send(sent)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["detail"].startswith(detail)
        await ws.send(json.dumps({"action": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_bad_since_parameter_is_reported_and_live_continues(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url("/ws/metrics", since="abc")) as ws:
        assert (await recv(ws))["type"] == "error"
        await run(server, "steady")
        assert (await recv(ws))["type"] == "metrics_update"


async def test_slow_client_lags_without_delaying_others(tmp_path: Path) -> None:
    async with live_server(tmp_path, ws_queue_size=20, ws_heartbeat_s=3600) as server:
        bus = server.components.bus
        # 60 MB in all: far more than the slow peer's socket buffers can hold
        payload = {"blob": "x" * 200_000}
        slow = await RawWebSocket.connect(server.port, f"/ws/metrics?token={server.key}")
        try:
            async with websockets.connect(server.ws_url("/ws/metrics")) as fast:
                await asyncio.sleep(0.1)
                received: list[int] = []
                # Publish in steps of 10, each once the fast client has read the last step:
                # the never-reading slow client overflows its queue, the fast one never does.
                for _ in range(30):
                    for _ in range(10):
                        await bus.publish(
                            "metrics.updated",
                            {
                                "plugin_id": "p",
                                "instance_id": "i",
                                "tenant_id": "default",
                                "timestamp": "t",
                                "metrics": payload,
                            },
                            tenant_id="default",
                        )
                    for _ in range(10):
                        message = await recv(fast)
                        assert message["type"] == "metrics_update", message
                        received.append(message["seq"])
                assert received == list(range(received[0], received[0] + 300))  # all, in order
            kinds = []
            while "lag" not in kinds:
                kinds.append((await asyncio.wait_for(slow.recv(), 10))["type"])
            assert set(kinds) == {"metrics_update", "lag"}
            assert len(kinds) < 300
        finally:
            await slow.close()
    assert bus.stats["dropped"] > 0


async def test_active_connections_and_prometheus_gauge(server: LiveServer) -> None:
    async with (
        websockets.connect(server.ws_url("/ws/metrics")),
        websockets.connect(server.ws_url("/ws/metrics")),
    ):
        await asyncio.sleep(0.1)
        assert server.components.hub.clients == 2
    await asyncio.sleep(0.1)
    assert server.components.hub.clients == 0
