"""A minimal webhook receiver for the ``webhooks`` benchmark: answers every POST with 204.

    python -m bench._webhook_receiver --port 8123

Plain asyncio protocol code (HTTP/1.1 keep-alive, ``content-length`` bodies), so the
receiver costs as little CPU as possible and the figure is Unity's, not the peer's.
"""

from __future__ import annotations

import argparse
import asyncio

REPLY = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self._buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            self._buffer = self._buffer[total:]
            assert self._transport is not None
            self._transport.write(REPLY)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        import uvloop  # optional speed-up, as uvicorn uses it when present
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
