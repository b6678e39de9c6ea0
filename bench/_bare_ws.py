"""The limit of the ``ws_fanout`` benchmark: a plain WebSocket server broadcasting metrics.

    python -m bench._bare_ws --port 8124 [--rate 10]

A ``websockets`` server on uvloop whose one loop sends the same JSON to every connected
client with ``broadcast``, ``rate`` times a second: no event bus, no per-client queue,
filter, heartbeat or task. The message, and the schedule it is published on, are the
ones Unity's side of the benchmark (``bench._fanout_server``) publishes through its bus.

Every message is stamped with the wall-clock time it was published (``timestamp``, ISO
8601 like every Unity message), so a client on the same machine measures its delivery
latency as receive time minus ``timestamp``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench._servers import START_SIGNAL, raise_fd_limit

PLUGIN_ID = "system_info"
INSTANCE_ID = "0d7c1f0e-5b7a-4a53-9d0e-3f1f6b2d9a41"
#: A ``system_info``-sized payload: a dozen host figures and a few labelled series.
METRICS: dict[str, Any] = {
    "cpu_percent": 12.5,
    "load_1m": 0.42,
    "load_5m": 0.37,
    "load_15m": 0.31,
    "memory_percent": 48.2,
    "memory_used_bytes": 8_123_456_512.0,
    "memory_available_bytes": 8_651_001_856.0,
    "swap_percent": 0.0,
    "uptime_seconds": 86_400.0,
    "process_count": 312.0,
    "cpu_core_percent": [
        {"labels": {"core": "0"}, "value": 14.0},
        {"labels": {"core": "1"}, "value": 11.0},
    ],
    "disk_percent": [{"labels": {"mountpoint": "/"}, "value": 61.3}],
    "network_rx_bytes_per_s": [{"labels": {"interface": "eth0"}, "value": 10_240.5}],
    "network_tx_bytes_per_s": [{"labels": {"interface": "eth0"}, "value": 5_120.25}],
}

Publish = Callable[[], Awaitable[None]]


def wall_clock() -> str:
    """Now, as the ISO 8601 UTC timestamp a client turns back into epoch seconds."""
    return datetime.now(UTC).isoformat()


async def publish_forever(publish: Publish, rate: float) -> None:
    """Once :data:`START_SIGNAL` arrives, call ``publish`` ``rate`` times a second.

    Publishing waits for the load generator to have connected every client: what is
    measured is fan-out to a steady set of clients (connecting thousands while a
    saturated server fans out to those already there can take minutes). A publish that
    comes late (a busy loop) is not made up for with a burst: the next one is due an
    interval later, so the rate only ever drops.
    """
    loop = asyncio.get_running_loop()
    start = asyncio.Event()
    loop.add_signal_handler(START_SIGNAL, start.set)
    await start.wait()
    loop.remove_signal_handler(START_SIGNAL)
    interval = 1 / rate
    due = loop.time()
    while True:
        due = max(due + interval, loop.time())
        await asyncio.sleep(due - loop.time())
        await publish()


async def bare_server(port: int, rate: float) -> None:
    """Serve on ``127.0.0.1:port`` and broadcast until SIGTERM or SIGINT."""

    async def handler(connection: ServerConnection) -> None:
        await connection.wait_closed()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    seq = 0
    async with serve(handler, "127.0.0.1", port) as server:

        async def publish() -> None:
            nonlocal seq
            seq += 1
            message = {
                "type": "metrics_update",
                "plugin_id": PLUGIN_ID,
                "instance_id": INSTANCE_ID,
                "metrics": METRICS,
                "timestamp": wall_clock(),
                "seq": seq,
            }
            broadcast(server.connections, orjson.dumps(message).decode())

        publisher = asyncio.create_task(publish_forever(publish, rate))
        await stop.wait()
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=10.0, help="messages per second")
    args = p.parse_args()
    raise_fd_limit()
    uvloop.run(bare_server(args.port, args.rate))


if __name__ == "__main__":
    main()
