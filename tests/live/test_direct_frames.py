"""``/ws/metrics`` events written as prebuilt frames, or through the ASGI send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from tests.live.rawws import RawWebSocket
from tests.live.test_ws_metrics import run
from tests.live_server import LiveServer, live_server
from unity.live.frames import text_frame


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(tmp_path, ws_heartbeat_s=3600) as s:
        yield s


async def texts(ws: ClientConnection, count: int) -> list[str]:
    """The next ``count`` non-heartbeat text messages, as received."""
    received: list[str] = []
    while len(received) < count:
        message = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(message, str)
        if json.loads(message)["type"] != "heartbeat":
            received.append(message)
    return received


async def wait_for_clients(server: LiveServer, count: int) -> None:
    """Until the hub delivers to ``count`` clients (they connect in their own tasks)."""
    hub = server.components.hub
    deadline = asyncio.get_running_loop().time() + 10
    while sum(len(c) for c in hub._direct.values()) < count:
        assert asyncio.get_running_loop().time() < deadline, "the clients did not connect"
        await asyncio.sleep(0.01)


def parse(data: bytes) -> Frame:
    """``data`` read back as one server frame by ``websockets``' own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert reader.at_eof()
    return frame


@pytest.mark.parametrize("text", ['{"é": 1}', "x" * 200, "y" * 70_000])
def test_text_frame_is_one_unmasked_text_frame(text: str) -> None:
    frame = parse(text_frame(text))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)
    assert bytes(frame.data).decode() == text


async def test_uncompressed_client_gets_prebuilt_frames(server: LiveServer) -> None:
    hub = server.components.hub
    async with websockets.connect(server.ws_url("/ws/metrics"), compression=None) as ws:
        await wait_for_clients(server, 1)
        await run(server, "steady")
        update, complete = (json.loads(t) for t in await texts(ws, 2))
    assert update["type"] == "metrics_update"
    assert update["plugin_id"] == "steady"
    assert update["metrics"]["steady_value"] == 1.0
    assert complete["type"] == "execution_complete"
    assert complete["seq"] > update["seq"]
    assert (hub.frames_written, hub.sends) == (2, 0)


async def test_compressing_client_keeps_the_asgi_send(server: LiveServer) -> None:
    hub = server.components.hub
    # The websockets client offers permessage-deflate by default and uvicorn accepts it.
    async with websockets.connect(server.ws_url("/ws/metrics")) as ws:
        assert ws.protocol.extensions, "expected permessage-deflate to be negotiated"
        await wait_for_clients(server, 1)
        await run(server, "steady")
        update, complete = (json.loads(t) for t in await texts(ws, 2))
    assert update["type"] == "metrics_update"
    assert update["metrics"]["steady_value"] == 1.0
    assert complete["type"] == "execution_complete"
    assert (hub.frames_written, hub.sends) == (0, 2)


async def test_both_paths_carry_identical_messages(server: LiveServer) -> None:
    hub = server.components.hub
    raw = await RawWebSocket.connect(server.port, f"/ws/metrics?token={server.key}")
    try:
        async with (
            websockets.connect(server.ws_url("/ws/metrics"), compression=None) as plain,
            websockets.connect(server.ws_url("/ws/metrics")) as deflated,
        ):
            await wait_for_clients(server, 3)
            await run(server, "steady", times=3)
            from_plain = await texts(plain, 6)
            from_deflated = await texts(deflated, 6)
            from_raw = [await asyncio.wait_for(raw.recv(), 10) for _ in range(6)]
    finally:
        await raw.close()
    assert from_plain == from_deflated
    assert [json.loads(t) for t in from_plain] == from_raw
    seqs = [json.loads(t)["seq"] for t in from_plain]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 6
    # The plain and the raw client got frames, the compressing one the ASGI send.
    assert (hub.frames_written, hub.sends) == (12, 6)
