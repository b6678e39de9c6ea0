"""The limit of the ``rest`` benchmark: one FastAPI route answering a small JSON object.

    python -m bench._bare_http --port 8123

It runs under uvicorn with the options ``unity serve`` uses, so the difference to Unity's
endpoints is what Unity does per request (routing, dependencies, cache, database,
response models), not the server.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

from bench._servers import SERVE_OPTIONS

PATH = "/bare"


def create_bare_app() -> FastAPI:
    """A FastAPI app with one route, ``GET /bare``."""
    app = FastAPI()

    @app.get(PATH)
    async def bare() -> dict[str, Any]:
        return {"status": "ok", "plugins": 3, "enabled": True}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(create_bare_app(), host="127.0.0.1", port=args.port, **SERVE_OPTIONS)


if __name__ == "__main__":
    main()
