"""``create_app(settings)``: the Unity ASGI application.

The lifespan builds every component (:mod:`unity.components`) and closes them in reverse
order; routers reach them through the aliases in :mod:`unity.deps`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from unity import __version__
from unity.components import Components, build_components, close_components
from unity.config import Settings
from unity.core.clock import Clock
from unity.errors import DatabaseError, install_error_handlers
from unity.metrics import prometheus
from unity.plugins import api as plugins_api
from unity.plugins.registry import PluginRegistry

log = structlog.stdlib.get_logger("unity")


def create_app(
    settings: Settings, *, clock: Clock | None = None, registry: PluginRegistry | None = None
) -> FastAPI:
    """The Unity ASGI application for ``settings``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        components = await build_components(settings, clock=clock, registry=registry)
        app.state.components = components
        log.info(
            "unity started",
            version=__version__,
            database=components.database.dialect,
            role=settings.role,
        )
        try:
            yield
        finally:
            await close_components(components)
            log.info("unity stopped")

    app = FastAPI(
        title="Unity",
        version=__version__,
        summary="Self-hosted monitoring and automation hub.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(plugins_api.router)
    app.include_router(prometheus.router)

    @app.get("/health", tags=["system"], summary="Liveness and readiness")
    async def health(request: Request) -> JSONResponse:
        """``healthy`` when the database answers and (where this process schedules) the scheduler runs."""
        components: Components = request.app.state.components
        body: dict[str, Any] = {"status": "healthy", "version": __version__}
        problems: list[str] = []
        try:
            await components.database.ping()
            body["database"] = "ok"
        except DatabaseError as exc:
            body["database"] = "error"
            problems.append(exc.detail)
        if components.scheduler is None:
            body["scheduler"] = "disabled"
        else:
            body["scheduler"] = components.scheduler.state
            if components.scheduler.state != "running":
                problems.append("scheduler is not running")
        if problems:
            body["status"] = "unhealthy"
            body["reason"] = "; ".join(problems)
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    return app
