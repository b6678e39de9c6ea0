"""Two ``unity serve`` processes sharing one Redis: live data crosses between them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from tests.server import UnityProcess

pytestmark = [pytest.mark.slow, pytest.mark.external_service]


async def test_collection_in_one_reaches_websocket_client_of_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    env = {"UNITY_REDIS_URL": redis_url, "UNITY_AUTOENABLE_PLUGINS": "[]"}
    a = UnityProcess(tmp_path / "a", env=env, enable={"steady": '{"collection_interval": 1}'})
    b = UnityProcess(tmp_path / "b", env=env)
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        async with websockets.connect(f"ws://127.0.0.1:{b.port}/ws/metrics?token={b.key}") as ws:
            await ws.send(json.dumps({"action": "subscribe", "plugin_ids": ["steady"]}))
            seen: list[dict[str, object]] = []
            while len(seen) < 4:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message["type"] in ("metrics_update", "execution_complete"):
                    seen.append(message)
        assert {m["plugin_id"] for m in seen} == {"steady"}
        seqs = [m["seq"] for m in seen]
        assert seqs == sorted(seqs)
        assert any(m["type"] == "metrics_update" for m in seen)
    finally:
        a.stop()
        b.stop()
