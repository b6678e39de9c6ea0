"""Unity's side of the ``ws_fanout`` benchmark: the app plus a publisher on its event bus.

    python -m bench._fanout_server --port 8123 --data-dir /tmp/x [--rate 10]

Unity's app, built and served as ``unity serve`` does (settings from the environment,
the same uvicorn options) on the given data dir with no plugin enabled, plus a
bench-only background task publishing ``metrics.updated`` events on Unity's event bus
``rate`` times a second. The live hub turns each into a ``metrics_update`` message for
every ``/ws/metrics`` client. Payload, schedule and the wall-clock ``timestamp`` are the
bare server's (``bench._bare_ws``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from bench._bare_ws import INSTANCE_ID, METRICS, PLUGIN_ID, publish_forever, wall_clock
from bench._servers import SERVE_OPTIONS, raise_fd_limit
from unity.app import create_app
from unity.components import Components
from unity.config import load_settings
from unity.core.logs import configure_logging

TENANT_ID = "default"


def unity_app(port: int, data_dir: Path, rate: float) -> FastAPI:
    """Unity's app with the bench-only publisher running while the app is up."""
    settings = load_settings(None, port=port, data_dir=data_dir, autoenable_plugins=[])
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            components: Components = a.state.components

            async def publish() -> None:
                await components.bus.publish(
                    "metrics.updated",
                    {
                        "tenant_id": TENANT_ID,
                        "plugin_id": PLUGIN_ID,
                        "instance_id": INSTANCE_ID,
                        "timestamp": wall_clock(),
                        "metrics": METRICS,
                    },
                    tenant_id=TENANT_ID,
                )

            task = asyncio.create_task(publish_forever(publish, rate))
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--rate", type=float, default=10.0, help="messages per second")
    args = p.parse_args()
    raise_fd_limit()
    app = unity_app(args.port, args.data_dir, args.rate)
    uvicorn.run(app, host="127.0.0.1", port=args.port, **SERVE_OPTIONS)


if __name__ == "__main__":
    main()
