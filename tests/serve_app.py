"""Run the real Unity app under uvicorn with the test plugins added to the built-ins.

    python -m tests.serve_app --port 8123 --data-dir /tmp/x [--enable firehose:{"collection_interval":1}]

Used by tests that need a real server process (kill -9, WebSocket clients). Settings come
from the environment like ``unity serve``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI

from tests.collection.plugins import make_registry
from unity.app import create_app
from unity.config import load_settings
from unity.core.logs import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--enable", action="append", default=[], help='plugin_id:{"json": "config"}'
    )
    args = parser.parse_args()
    settings = load_settings(None, port=args.port, data_dir=args.data_dir)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings, registry=make_registry(with_builtins=True))
    enable = [item.split(":", 1) for item in args.enable]

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            for plugin_id, config in enable:
                await a.state.components.plugins.set_enabled(
                    plugin_id,
                    tenant_id="default",
                    enabled=True,
                    config=orjson.loads(config or "{}"),
                )
            yield state

    app.router.lifespan_context = lifespan

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
    )


if __name__ == "__main__":
    main()
